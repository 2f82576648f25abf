//! The command line: `ferry check` on good and bad configurations, `ferry send` against a
//! running engine.

use crate::common;

use std::process::Command;

use common::{Ferry, ferry_bin, toml_path, write_config};
use ferry_testkit::TestPki;

/// PRODUCT.md §6's minimal configuration, verbatim.
const PRODUCT_EXAMPLE: &str = r#"[store]
path = "data/ferry.db"              # SQLite, the default; `url = "postgres://…"` for PostgreSQL

[admin]
listen = "127.0.0.1:8480"           # health, metrics, REST API, web console

[[channel]]
name = "adt-to-cloud"
source = { type = "mllp", listen = "0.0.0.0:2575" }

  [[channel.destination]]
  name = "cloud"
  type = "http"
  url = "https://api.example.com/hl7"
  tls = { ca = "certs/ca.pem", cert = "certs/client.pem", key = "certs/client.key" }
  headers = { Authorization = "Bearer ${env:CLOUD_TOKEN}" }
"#;

#[test]
fn check_accepts_the_product_example_verbatim() {
    let pki = TestPki::new("check");
    let client = pki.client("ferry", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("certs")).expect("certs dir");
    std::fs::copy(pki.ca_cert_path(), dir.path().join("certs/ca.pem")).expect("ca");
    std::fs::copy(&client.cert, dir.path().join("certs/client.pem")).expect("cert");
    std::fs::copy(&client.key, dir.path().join("certs/client.key")).expect("key");
    let config = write_config(dir.path(), PRODUCT_EXAMPLE);
    let out = Command::new(ferry_bin())
        .args(["check", "--config"])
        .arg(&config)
        .env("CLOUD_TOKEN", "t0k3n")
        .output()
        .expect("run ferry check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("ok (1 channel)"), "{stdout}");
    assert!(!stdout.contains("t0k3n") && !stderr.contains("t0k3n"));

    // Without the secret in the environment the same file is an error naming the variable.
    let out = Command::new(ferry_bin())
        .args(["check", "--config"])
        .arg(&config)
        .env_remove("CLOUD_TOKEN")
        .output()
        .expect("run ferry check");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CLOUD_TOKEN"), "{stderr}");
    assert!(
        stderr.contains("ferry.toml:16"),
        "error names file and line: {stderr}"
    );
}

#[test]
fn check_reports_a_typo_with_line_and_suggestion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "[store]\npath = \"x.db\"\n\n[[channel]]\nname = \"a\"\nsource = { type = \"mllp\", listn = \"127.0.0.1:2575\" }\n\n  [[channel.destination]]\n  name = \"d\"\n  type = \"file\"\n  directory = \"out\"\n",
    );
    let out = Command::new(ferry_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("run ferry check");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ferry.toml:6"), "{stderr}");
    assert!(stderr.contains("listn"), "{stderr}");
    assert!(stderr.contains("did you mean `listen`"), "{stderr}");
}

#[test]
fn check_reports_a_missing_certificate_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "[[channel]]\nname = \"a\"\nsource = { type = \"mllp\", listen = \"127.0.0.1:2575\", tls = { cert = \"nope.pem\", key = \"nope.key\" } }\n\n  [[channel.destination]]\n  name = \"d\"\n  type = \"file\"\n  directory = \"out\"\n",
    );
    let out = Command::new(ferry_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("run ferry check");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nope.pem"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn send_prints_acks_and_fails_on_a_negative_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &format!(
            "[store]\npath = {db}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[channel]]\nname = \"in\"\nsource = {{ type = \"mllp\", listen = \"127.0.0.1:0\" }}\n\n  [[channel.destination]]\n  name = \"d\"\n  type = \"file\"\n  directory = {out}\n",
            db = toml_path(&dir.path().join("ferry.db")),
            out = toml_path(&dir.path().join("out")),
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let target = format!("mllp://{}", ferry.listener("in"));
    let good = dir.path().join("two.hl7");
    let mut two = common::adt("S1");
    two.extend_from_slice(&common::adt("S2"));
    std::fs::write(&good, &two).expect("write");
    let out = Command::new(ferry_bin())
        .arg("send")
        .arg(&target)
        .arg(&good)
        .output()
        .expect("ferry send");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("MSA|AA|S1") && stdout.contains("MSA|AA|S2"),
        "{stdout}"
    );

    let bad = dir.path().join("bad.hl7");
    std::fs::write(&bad, b"garbage").expect("write");
    let out = Command::new(ferry_bin())
        .arg("send")
        .arg(&target)
        .arg(&bad)
        .output()
        .expect("ferry send");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("MSA|AR"));
}
