//! Secrets and patient data never reach the logs or the answers to senders (SECURITY.md T22,
//! T23), even at TRACE.
//!
//! The real binary runs with `FERRY_LOG=trace` on a configuration whose HTTP destination
//! header, poller header and script `configMap` values are canary secrets from `${env:…}` and
//! `${file:…}`, and whose TLS listener's private key lines are canaries as well. Messages
//! whose PID-5 holds a canary patient name go in over MLLP, HTTP and the poller (and as
//! plaintext to the TLS listener), including every way a message can fail: the destination
//! answers 500 then 400, a filter rejects, a script throws with the name in its message, an
//! oversized frame or body, malformed input; the scripts also `logger.info` the name. Then the complete stdout/stderr, every ACK and HTTP body returned to a
//! sender, and `/metrics` are searched for the canaries. A second run with the explicit
//! opt-in `FERRY_LOG_PHI=1` proves the search can find them (the name does appear then).

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Ferry, config_with_channels, plain, toml_path};
use ferry_connectors::mllp::MllpConnection;
use ferry_testkit::http_peer::HttpPeer;
use ferry_testkit::{CertFiles, TestPki};

/// Canary secrets: from the environment and from a file.
const SECRET_ENV: &str = "CanarySecretEnv7f3a9c";
const SECRET_FILE: &str = "CanarySecretFile2b8d1e";
/// Canary patient name: family and given name in PID-5.
const FAMILY: &str = "Zqcanaryfamily";
const GIVEN: &str = "Xwcanarygiven";

fn message(control_id: &str, extra: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|HIS|GENERAL|FERRY|CLOUD|20261125083000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r\
         EVN|A01|20261125083000\r\
         PID|1||MRN{control_id}^^^GH^MR||{FAMILY}^{GIVEN}||19800101|F\r\
         PV1|1|I|W^101^1\r{extra}"
    )
    .into_bytes()
}

/// A config with three channels that all see canary names: MLLP in → HTTP out (with a secret
/// header), HTTP in → file, HTTP poll (with a secret header) → file. Each runs a script that
/// reads the secret `configMap` values and throws with the patient's name on `THROW*`.
fn config(dir: &Path, api: &HttpPeer, poll: &HttpPeer, tls: &CertFiles) -> std::path::PathBuf {
    std::fs::write(dir.join("secret.txt"), SECRET_FILE).expect("secret file");
    let script = r#"
      [channel.scripts]
      config = { env_key = "${env:FERRY_CANARY_SECRET}", file_key = "${file:secret.txt}" }

      [[channel.filter]]
      field = "MSH-10"
      regex = "^FILT"
      not = true

      [[channel.transform]]
      js_inline = '''
    if (configMap.get("env_key").length + configMap.get("file_key").length === 0) throw new Error("no config");
    logger.info("admitting", msg.get("PID-5.1"), msg.get("PID-5.2"));
    if (msg.get("MSH-10").indexOf("THROW") === 0) {
      throw new Error("cannot admit " + msg.get("PID-5.1") + " " + msg.get("PID-5.2"));
    }
    '''
"#;
    config_with_channels(
        dir,
        &format!(
            r#"
[[channel]]
name = "mllp_in"
source = {{ type = "mllp", listen = "127.0.0.1:0", max_frame_size = "4KiB" }}
response = "after-transform"
reject_filtered = true
{script}
  [[channel.destination]]
  name = "api"
  type = "http"
  url = "http://{api}/adt"
  headers = {{ Authorization = "Bearer ${{env:FERRY_CANARY_SECRET}}", X-Other = "${{file:secret.txt}}" }}
  retry = {{ initial = "50ms", max = "100ms" }}

[[channel]]
name = "http_in"
source = {{ type = "http", listen = "127.0.0.1:0", path = "/hl7", max_body_size = "4KiB" }}
response = "after-transform"
reject_filtered = true
{script}
  [[channel.destination]]
  name = "files"
  type = "file"
  directory = {files}

[[channel]]
name = "tls_in"
source = {{ type = "mllp", listen = "127.0.0.1:0", tls = {{ cert = {cert}, key = {key} }} }}

  [[channel.destination]]
  name = "files"
  type = "file"
  directory = {files}

[[channel]]
name = "poll_in"
source = {{ type = "http-poll", url = "http://{poll}/events", interval = "100ms", headers = {{ X-Api-Key = "${{file:secret.txt}}", Authorization = "Token ${{env:FERRY_CANARY_SECRET}}" }} }}
{script}
  [[channel.destination]]
  name = "files"
  type = "file"
  directory = {polled}
"#,
            api = api.addr(),
            poll = poll.addr(),
            files = toml_path(&dir.join("files")),
            polled = toml_path(&dir.join("polled")),
            cert = toml_path(&tls.cert),
            key = toml_path(&tls.key),
        ),
    )
}

/// Everything a sender got back, as text.
#[derive(Default)]
struct Answers(Vec<String>);

impl Answers {
    fn push(&mut self, what: &str, bytes: &[u8]) {
        self.0
            .push(format!("{what}: {}", String::from_utf8_lossy(bytes)));
    }
}

/// Send one frame on a fresh connection; the answer (or the error) is recorded.
async fn mllp(ferry: &Ferry, frame: &[u8], answers: &mut Answers) -> Option<String> {
    let mut conn = MllpConnection::connect(&plain(ferry.listener("mllp_in")))
        .await
        .expect("connect");
    match conn.exchange(frame, Duration::from_secs(10)).await {
        Ok(ack) => {
            answers.push("mllp ack", &ack);
            ferry_hl7::ack::parse_ack(&ack)
                .ok()
                .map(|a| a.code.as_str().to_owned())
        }
        Err(e) => {
            answers.push("mllp error", e.to_string().as_bytes());
            None
        }
    }
}

async fn post(ferry: &Ferry, body: Vec<u8>, answers: &mut Answers) -> u16 {
    let url = format!("http://{}/hl7", ferry.listener("http_in"));
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/hl7-v2; charset=utf-8")
        .body(body)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("body");
    answers.push(&format!("http {status}"), &body);
    status
}

/// Run all the traffic; returns what the senders got back.
async fn traffic(ferry: &Ferry, api: &HttpPeer, poll: &HttpPeer) -> Answers {
    let mut answers = Answers::default();
    let pad = format!("NTE|1||{}\r", "x".repeat(5000));

    // MLLP: delivered (500 → retry, then 400 → ERROR), delivered (200), filtered (AR), a
    // script error (AE), an oversized frame (AR, connection closed), malformed input (AR).
    api.push_statuses(&[500, 400]);
    assert_eq!(
        mllp(ferry, &message("OK1", ""), &mut answers)
            .await
            .as_deref(),
        Some("AA")
    );
    assert_eq!(
        mllp(ferry, &message("OK2", ""), &mut answers)
            .await
            .as_deref(),
        Some("AA")
    );
    assert_eq!(
        mllp(ferry, &message("FILT1", ""), &mut answers)
            .await
            .as_deref(),
        Some("AR")
    );
    assert_eq!(
        mllp(ferry, &message("THROW1", ""), &mut answers)
            .await
            .as_deref(),
        Some("AE")
    );
    assert_eq!(
        mllp(ferry, &message("BIG1", &pad), &mut answers)
            .await
            .as_deref(),
        Some("AR")
    );
    let no_msh = format!("PID|1||1||{FAMILY}^{GIVEN}\r");
    assert_eq!(
        mllp(ferry, no_msh.as_bytes(), &mut answers)
            .await
            .as_deref(),
        Some("AR")
    );
    let no_id =
        format!("MSH|^~\\&|HIS|GH|F|C|2026||ADT^A01|||2.5.1\rPID|1||1||{FAMILY}^{GIVEN}\r{FAMILY}");
    assert_eq!(
        mllp(ferry, no_id.as_bytes(), &mut answers).await.as_deref(),
        Some("AR")
    );

    // HTTP: the same cases; the answers are the HTTP bodies.
    assert_eq!(post(ferry, message("H-OK1", ""), &mut answers).await, 200);
    assert_eq!(post(ferry, message("FILT2", ""), &mut answers).await, 400);
    assert_eq!(post(ferry, message("THROW2", ""), &mut answers).await, 500);
    let big = post(ferry, message("H-BIG", &pad), &mut answers).await;
    assert!(big >= 400, "oversized body answered {big}");
    assert_eq!(post(ferry, no_msh.into_bytes(), &mut answers).await, 400);
    assert_eq!(post(ferry, no_id.into_bytes(), &mut answers).await, 400);

    // The TLS listener: a plaintext client (an HL7 frame with the name) fails the handshake.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(ferry.listener("tls_in"))
            .await
            .expect("connect");
        let mut frame = vec![0x0b];
        frame.extend_from_slice(&message("TLS1", ""));
        frame.extend_from_slice(&[0x1c, 0x0d]);
        let _ = tcp.write_all(&frame).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        answers.push("tls listener", &answer);
    }

    // Poller: a good message and a throwing one in one body.
    let mut body = message("P-OK1", "");
    body.extend_from_slice(&message("THROW3", ""));
    poll.push_get(200, &body);

    // The destination saw 500, 400, then 200; the poller fetched its body.
    let posts = api.wait_for("POST", 3, Duration::from_secs(15)).await;
    assert_eq!(posts.len(), 3, "{}", ferry.output());
    assert_eq!(
        posts[0].header("authorization"),
        Some(format!("Bearer {SECRET_ENV}").as_str()),
        "the secret header was sent"
    );
    assert_eq!(posts[0].header("x-other"), Some(SECRET_FILE));
    let failed = "ferry_messages_failed_total{channel=\"poll_in\"}";
    assert_eq!(
        ferry.wait_metric(failed, 1, Duration::from_secs(10)).await,
        Some(1),
        "{}",
        ferry.output()
    );
    let gets = poll.wait_for("GET", 1, Duration::from_secs(5)).await;
    assert_eq!(gets[0].header("x-api-key"), Some(SECRET_FILE));
    let errored = "ferry_messages_errored_total{channel=\"mllp_in\",destination=\"api\"}";
    assert_eq!(
        ferry.wait_metric(errored, 1, Duration::from_secs(10)).await,
        Some(1)
    );
    // Let the last log lines (delivery outcomes, polls) be written.
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, metrics) = ferry.admin_get("/metrics").await;
    answers.push("metrics", metrics.as_bytes());
    answers
}

fn hits(text: &str, canaries: &[&str]) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    canaries
        .iter()
        .filter(|c| lower.contains(&c.to_ascii_lowercase()))
        .map(|c| (*c).to_owned())
        .collect()
}

/// The lines of `text` holding a canary (for the failure message).
fn lines_with(text: &str, canaries: &[&str]) -> String {
    text.lines()
        .filter(|l| !hits(l, canaries).is_empty())
        .take(20)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_secrets_and_patient_names_never_reach_logs_or_answers_at_trace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = HttpPeer::start(None).await.expect("api");
    let poll = HttpPeer::start(None).await.expect("poll");
    let pki = TestPki::new("canary");
    let tls = pki.server(&["localhost", "127.0.0.1"]);
    let config = config(dir.path(), &api, &poll, &tls);
    let mut ferry = Ferry::start(
        &config,
        &[("FERRY_LOG", "trace"), ("FERRY_CANARY_SECRET", SECRET_ENV)],
    );
    let answers = traffic(&ferry, &api, &poll).await;
    assert!(ferry.terminate(), "clean stop:\n{}", ferry.output());
    let logs = ferry.output();
    assert!(
        logs.contains("TRACE") && logs.contains("DEBUG"),
        "TRACE logging was on"
    );
    // The private key's PEM body (each base64 line) is a canary too.
    let key_pem = std::fs::read_to_string(&tls.key).expect("key");
    let key_lines: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect();
    assert!(!key_lines.is_empty());
    let mut canaries = vec![SECRET_ENV, SECRET_FILE, FAMILY, GIVEN];
    canaries.extend(key_lines);
    let leaked = hits(&logs, &canaries);
    assert!(
        leaked.is_empty(),
        "canaries {leaked:?} in the logs:\n{}",
        lines_with(&logs, &canaries)
    );
    for answer in &answers.0 {
        let leaked = hits(answer, &canaries);
        assert!(
            leaked.is_empty(),
            "canaries {leaked:?} in what a sender got back:\n{answer}"
        );
    }
}

/// The positive control: with the explicit opt-in the same traffic does put the patient name
/// in the logs (so the search above can find it), and still never a secret.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_explicit_opt_in_message_content_is_logged_but_secrets_still_are_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = HttpPeer::start(None).await.expect("api");
    let poll = HttpPeer::start(None).await.expect("poll");
    let pki = TestPki::new("canary");
    let tls = pki.server(&["localhost", "127.0.0.1"]);
    let config = config(dir.path(), &api, &poll, &tls);
    let mut ferry = Ferry::start(
        &config,
        &[
            ("FERRY_LOG", "debug"),
            ("FERRY_LOG_PHI", "1"),
            ("FERRY_CANARY_SECRET", SECRET_ENV),
        ],
    );
    let _ = traffic(&ferry, &api, &poll).await;
    assert!(ferry.terminate(), "clean stop:\n{}", ferry.output());
    let logs = ferry.output();
    assert!(
        logs.lines()
            .any(|l| l.contains("message processing failed") && l.contains(FAMILY)),
        "with FERRY_LOG_PHI=1 the failing script's error (with the name) is logged:\n{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("ferry_script") && l.contains(&format!("admitting {FAMILY}"))),
        "with FERRY_LOG_PHI=1 script logger lines are logged:\n{logs}"
    );
    let secrets = [SECRET_ENV, SECRET_FILE];
    assert!(
        hits(&logs, &secrets).is_empty(),
        "{}",
        lines_with(&logs, &secrets)
    );
}
