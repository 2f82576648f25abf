//! `examples/adt-json-bridge` in CI: its `ferry test` cases pass (every case directory on disk
//! is run and reported, so a skipped directory fails), a broken expectation fails with a diff,
//! and the `adt-to-api` channel run for real over MLLP posts the JSON its A01 case expects to
//! an HTTPS API.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Ferry, ferry_bin, free_port, plain, send, toml_path};
use ferry_connectors::mllp::MllpConnection;
use ferry_testkit::TestPki;
use ferry_testkit::http_peer::HttpPeer;
use ferry_tls::ServerTlsSettings;

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/adt-json-bridge"
);

/// The example has at least this many cases; fewer means some were lost.
const AT_LEAST: usize = 15;

/// `ferry test --config <config>`: exit code, and stdout + stderr.
fn ferry_test(config: &Path) -> (i32, String) {
    let out = Command::new(ferry_bin())
        .arg("test")
        .arg("--config")
        .arg(config)
        .output()
        .expect("run ferry test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `channel/case` for every case directory under `tests/`.
fn cases_on_disk(example: &Path) -> BTreeSet<String> {
    let mut cases = BTreeSet::new();
    for channel in std::fs::read_dir(example.join("tests")).expect("tests dir") {
        let channel = channel.expect("entry").path();
        if !channel.is_dir() {
            continue;
        }
        for case in std::fs::read_dir(&channel).expect("channel dir") {
            let case = case.expect("entry").path();
            if case.is_dir() {
                let name = |p: &Path| p.file_name().expect("name").to_string_lossy().into_owned();
                cases.insert(format!("{}/{}", name(&channel), name(&case)));
            }
        }
    }
    cases
}

/// Copy the example (configuration, tables, templates, scripts, cases) into `to`, leaving out
/// what a local run may have left behind (`data/`, `out/`).
fn copy_example(to: &Path) {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            let target = to.join(entry.file_name());
            if path.is_dir() {
                copy_dir(&path, &target);
            } else {
                std::fs::copy(&path, &target).expect("copy");
            }
        }
    }
    for entry in std::fs::read_dir(EXAMPLE).expect("example") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if name == "data" || name == "out" {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(&name));
        } else {
            std::fs::copy(&path, to.join(&name)).expect("copy");
        }
    }
}

#[test]
fn every_case_of_the_example_passes() {
    let example = PathBuf::from(EXAMPLE);
    let (code, out) = ferry_test(&example.join("ferry.toml"));
    assert_eq!(code, 0, "ferry test failed:\n{out}");
    let on_disk = cases_on_disk(&example);
    assert!(
        on_disk.len() >= AT_LEAST,
        "{} cases on disk, expected at least {AT_LEAST}",
        on_disk.len()
    );
    let passed: BTreeSet<String> = out
        .lines()
        .filter_map(|l| l.strip_suffix(" ... ok"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        passed, on_disk,
        "every case directory is run and passes (a directory named after no channel is skipped):\n{out}"
    );
    let n = on_disk.len();
    assert!(
        out.lines()
            .any(|l| l == format!("{n} cases: {n} passed, 0 failed")),
        "summary line for {n} cases:\n{out}"
    );
}

#[test]
fn a_broken_expectation_fails_with_a_diff() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_example(dir.path());
    let expected = dir
        .path()
        .join("tests/adt-to-api/a01-admit/expect/api.json");
    let text = std::fs::read_to_string(&expected).expect("read");
    assert!(text.contains("\"RIVERA\""), "the case names the patient");
    std::fs::write(&expected, text.replacen("\"RIVERA\"", "\"RIVERO\"", 1)).expect("write");
    let (code, out) = ferry_test(&dir.path().join("ferry.toml"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("adt-to-api/a01-admit ... FAILED"), "{out}");
    assert!(
        out.contains("api: expected this JSON, got different JSON"),
        "{out}"
    );
    let diff = |sign: &str, value: &str| {
        out.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with(sign) && l.contains(&format!("\"family\": \"{value}\""))
        })
    };
    assert!(
        diff("- ", "RIVERO") && diff("+ ", "RIVERA"),
        "the diff shows expected (-) and actual (+):\n{out}"
    );
    let total = cases_on_disk(dir.path()).len();
    assert!(
        out.contains(&format!("{total} cases: {} passed, 1 failed", total - 1)),
        "{out}"
    );
}

/// The A01 case's input sent over MLLP to the example's `adt-to-api` channel (ports swapped
/// for free ones, the API's URL pointed at an HTTPS stand-in trusting a test CA): the API gets
/// exactly the case's `expect/api.json`, with the bearer token from `API_TOKEN`, and the
/// archive gets `expect/archive.hl7`.
#[tokio::test(flavor = "multi_thread")]
async fn the_adt_channel_posts_what_its_a01_case_expects() {
    let pki = TestPki::new("adt-json-bridge");
    let server = pki.server(&["localhost", "127.0.0.1"]);
    let api_tls = ferry_tls::server_config(&ServerTlsSettings {
        cert: server.cert.clone(),
        key: server.key.clone(),
        client_ca: None,
        allowed_clients: Vec::new(),
        crl: Vec::new(),
    })
    .expect("api tls");
    let api = HttpPeer::start(Some(api_tls)).await.expect("api");

    let dir = tempfile::tempdir().expect("tempdir");
    copy_example(dir.path());
    let mut config = std::fs::read_to_string(dir.path().join("ferry.toml")).expect("config");
    for fixed in ["2575", "8081", "2576", "8480"] {
        let quoted = format!(":{fixed}\"");
        assert!(config.contains(&quoted), "the example listens on {fixed}");
        config = config.replace(&quoted, &format!(":{}\"", free_port()));
    }
    let url = "url = \"https://api.example.com/v1/patient-events\"";
    assert!(config.contains(url), "the example posts to api.example.com");
    config = config.replace(
        url,
        &format!(
            "url = \"https://localhost:{}/v1/patient-events\"\n  tls = {{ ca = {} }}",
            api.addr().port(),
            toml_path(&pki.ca_cert_path())
        ),
    );
    std::fs::write(dir.path().join("ferry.toml"), &config).expect("write config");
    let ferry = Ferry::start(
        &dir.path().join("ferry.toml"),
        &[("API_TOKEN", "example-token-4711")],
    );

    let case = dir.path().join("tests/adt-to-api/a01-admit");
    let input = std::fs::read_to_string(case.join("input.hl7")).expect("input");
    let wire = input.replace("\r\n", "\r").replace('\n', "\r");
    let mut conn = MllpConnection::connect(&plain(ferry.listener("adt-to-api")))
        .await
        .expect("connect");
    let ack = send(&mut conn, wire.as_bytes()).await;
    assert_eq!(
        (ack.code.as_str(), ack.control_id.as_str()),
        ("AA", "ADT20261125083000001")
    );

    let posts = api.wait_for("POST", 1, Duration::from_secs(15)).await;
    assert_eq!(posts.len(), 1, "{}", ferry.output());
    let post = &posts[0];
    assert_eq!(post.path, "/v1/patient-events");
    assert_eq!(post.header("content-type"), Some("application/json"));
    assert_eq!(
        post.header("authorization"),
        Some("Bearer example-token-4711")
    );
    let got: serde_json::Value = serde_json::from_slice(&post.body).expect("JSON body");
    let want: serde_json::Value =
        serde_json::from_slice(&std::fs::read(case.join("expect/api.json")).expect("expect"))
            .expect("expected JSON");
    assert_eq!(got, want);

    // The archive, written by its own queue, holds the transformed HL7 of expect/archive.hl7.
    let archive = dir.path().join("out/archive");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let written = loop {
        let file = std::fs::read_dir(&archive).ok().and_then(|mut d| {
            d.find_map(|e| {
                let e = e.ok()?;
                (!e.file_name().to_string_lossy().starts_with('.')).then(|| e.path())
            })
        });
        if let Some(file) = file {
            break std::fs::read_to_string(file).expect("archive file");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing archived\n{}",
            ferry.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let segments = |text: &str| -> Vec<String> {
        text.split(['\r', '\n'])
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let expected = std::fs::read_to_string(case.join("expect/archive.hl7")).expect("expect");
    assert_eq!(segments(&written), segments(&expected));
    assert!(
        !ferry.output().contains("example-token-4711"),
        "the token is never logged"
    );
}
