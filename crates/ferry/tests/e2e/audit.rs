//! The audit trail end to end: `ferry run` records engine_start, deploy, refused TLS
//! handshakes and engine_stop; `ferry audit verify` says OK, and exits 1 once the store file
//! has been edited behind its back.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Ferry, adt, config_with_channels, ferry_bin, plain, toml_path};
use ferry_connectors::mllp::{MllpConnection, MllpEndpoint};
use ferry_testkit::TestPki;
use ferry_tls::ClientTlsSettings;

fn ferry_audit(args: &[&str], config: &Path) -> Output {
    Command::new(ferry_bin())
        .arg("audit")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run ferry audit")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn run_records_a_verifiable_trail_and_verify_finds_tampering() {
    let pki = TestPki::new("secure");
    let server = pki.server(&["localhost", "127.0.0.1"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "plain"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "archive"
  type = "file"
  directory = {out}

[[channel]]
name = "secure"
source = {{ type = "mllp", listen = "127.0.0.1:0", tls = {{ cert = {cert}, key = {key}, client_ca = {ca} }} }}

  [[channel.destination]]
  name = "archive"
  type = "file"
  directory = {out}

[[channel]]
name = "web"
source = {{ type = "http", listen = "127.0.0.1:0", tls = {{ cert = {cert}, key = {key}, client_ca = {ca} }} }}

  [[channel.destination]]
  name = "archive"
  type = "file"
  directory = {out}
"#,
            cert = toml_path(&server.cert),
            key = toml_path(&server.key),
            ca = toml_path(&pki.ca_cert_path()),
            out = toml_path(&dir.path().join("out")),
        ),
    );
    let mut ferry = Ferry::start(&config, &[]);
    let mut conn = ferry.connect("plain").await;
    let ack = conn
        .exchange(&adt("A1"), Duration::from_secs(5))
        .await
        .expect("ack");
    assert!(ack.windows(2).any(|w| w == b"AA"));
    // Clients without a certificate: both listeners refuse the handshake.
    let no_cert = ferry_tls::client_config(&ClientTlsSettings {
        ca: Some(pki.ca_cert_path()),
        cert: None,
        key: None,
    })
    .expect("client tls");
    let endpoint = MllpEndpoint {
        tls: Some((
            no_cert.clone(),
            ferry_tls::server_name("localhost").expect("name"),
        )),
        ..plain(ferry.listener("secure"))
    };
    let refused = match MllpConnection::connect(&endpoint).await {
        Ok(mut c) => c
            .exchange(&adt("X1"), Duration::from_secs(5))
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate got an ACK");
    let tcp = tokio::net::TcpStream::connect(ferry.listener("web"))
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(no_cert)
        .connect(ferry_tls::server_name("localhost").expect("name"), tcp)
        .await;
    if let Ok(mut stream) = tls {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = stream
            .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
        assert!(
            !buf.starts_with(b"HTTP/1.1 2"),
            "answered without a certificate"
        );
    }
    // Give the handshake tasks a moment to log the refusals before stopping.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ferry.metric("ferry_audit_events_dropped_total").await,
        Some(0),
        "the audit drop counter is exported"
    );
    assert!(ferry.terminate(), "{}", ferry.output());

    // The trail: engine_start (with the configuration's hash), a deploy per channel, the two
    // refusals, engine_stop last.
    let trail = common::audit_records(&config);
    let actions: Vec<&str> = trail
        .iter()
        .map(|r| r["action"].as_str().expect("action"))
        .collect();
    assert_eq!(actions.first(), Some(&"engine_start"), "{actions:?}");
    assert_eq!(actions.last(), Some(&"engine_stop"), "{actions:?}");
    let config_hash = ferry_store::audit::sha256_hex(&std::fs::read(&config).expect("read config"));
    assert_eq!(trail[0]["details"]["config_sha256"], config_hash.as_str());
    assert_eq!(trail[0]["actor"], "system");
    let deployed: Vec<&str> = trail
        .iter()
        .filter(|r| r["action"] == "deploy")
        .map(|r| r["target"].as_str().expect("target"))
        .collect();
    assert_eq!(deployed, ["channel/plain", "channel/secure", "channel/web"]);
    let rejected: Vec<&serde_json::Value> = trail
        .iter()
        .filter(|r| r["action"] == "tls_rejected")
        .collect();
    let mut targets: Vec<&str> = rejected
        .iter()
        .map(|r| r["target"].as_str().expect("target"))
        .collect();
    // Each listener records its refusal from its own handshake task: the two may land in
    // either order.
    targets.sort_unstable();
    assert_eq!(targets, ["channel/secure", "channel/web"], "{trail:?}");
    for r in &rejected {
        assert_eq!(r["outcome"], "failure");
        assert!(
            r["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("127.0.0.1:")),
            "{r}"
        );
    }
    let seqs: Vec<i64> = trail
        .iter()
        .map(|r| r["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=trail.len() as i64).collect::<Vec<_>>());

    // Verify: OK, with the count and the head.
    let output = ferry_audit(&["verify"], &config);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains(&format!("audit log OK: {} records", trail.len())),
        "{text}"
    );
    let head = trail.last().expect("last")["hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    assert!(text.contains(&head), "{text}");
    let output = ferry_audit(&["verify", "--expect-head", &head], &config);
    assert!(output.status.success(), "{}", stdout(&output));

    // Tamper with the file behind Ferry's back: hide who deployed channel `secure`.
    let store = dir.path().join("ferry.db");
    let sql = rusqlite::Connection::open(&store).expect("open the file directly");
    sql.execute("UPDATE audit_log SET actor = 'nobody' WHERE seq = 3", [])
        .expect("tamper");
    drop(sql);
    let output = ferry_audit(&["verify"], &config);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("BROKEN"), "{text}");
    assert!(text.contains("record 3"), "{text}");
    let output = ferry_audit(&["verify", "--json"], &config);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("json report");
    assert_eq!(report["ok"], false);
    assert_eq!(report["problems"][0]["seq"], 3);
    assert_eq!(report["problems"][0]["kind"], "edited");

    // Truncation is found too (after restoring nothing: a second, independent break).
    let sql = rusqlite::Connection::open(&store).expect("open the file directly");
    sql.execute(
        "DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)",
        [],
    )
    .expect("truncate");
    drop(sql);
    let output = ferry_audit(&["verify"], &config);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("truncated"), "{text}");
}

#[test]
fn verify_of_a_missing_store_is_an_error_not_ok() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(dir.path(), "");
    let output = ferry_audit(&["verify"], &config);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        !dir.path().join("ferry.db").exists(),
        "verify created a store"
    );
}

/// `[audit.syslog]` through the real binary: the run's records reach a TLS collector.
#[tokio::test(flavor = "multi_thread")]
async fn run_ships_its_audit_records_to_a_syslog_tls_collector() {
    use tokio::io::AsyncReadExt;
    let pki = TestPki::new("siem");
    let server = pki.server(&["localhost", "127.0.0.1"]);
    let server_tls = ferry_tls::server_config(&ferry_tls::ServerTlsSettings::new(
        &server.cert,
        &server.key,
    ))
    .expect("server tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_tls);
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut stream) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stream.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(space) = buf.iter().position(|b| *b == b' ') {
                    let len: usize = std::str::from_utf8(&buf[..space])
                        .expect("ascii")
                        .parse()
                        .expect("octet count");
                    if buf.len() < space + 1 + len {
                        break;
                    }
                    let msg =
                        String::from_utf8_lossy(&buf[space + 1..space + 1 + len]).into_owned();
                    buf.drain(..space + 1 + len);
                    let _ = tx.send(msg);
                }
            }
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::write_config(
        dir.path(),
        &format!(
            "[store]\npath = {store}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [audit.syslog]\naddress = \"{address}\"\nserver_name = \"localhost\"\n\
             tls = {{ ca = {ca} }}\n\n\
             [[channel]]\nname = \"adt\"\nsource = {{ type = \"mllp\", listen = \"127.0.0.1:0\" }}\n\n\
             [[channel.destination]]\nname = \"out\"\ntype = \"file\"\ndirectory = {out}\n",
            store = toml_path(&dir.path().join("ferry.db")),
            ca = toml_path(&pki.ca_cert_path()),
            out = toml_path(&dir.path().join("out")),
        ),
    );
    let check = Command::new(ferry_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("ferry check");
    assert!(check.status.success(), "{check:?}");
    let mut ferry = Ferry::start(&config, &[]);
    let mut actions = Vec::new();
    for _ in 0..2 {
        let msg = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a syslog message within 10 s")
            .expect("collector");
        assert!(msg.starts_with("<85>1 "), "{msg}");
        let json = msg.split(" ferry-audit - ").nth(1).expect("MSG");
        let record: serde_json::Value = serde_json::from_str(json).expect("JSON record");
        actions.push(record["action"].as_str().expect("action").to_owned());
    }
    assert_eq!(actions, ["engine_start", "deploy"]);
    assert!(ferry.terminate(), "{}", ferry.output());
}
