//! Ferry on PostgreSQL end to end: `ferry run` with `[store] url` (a private schema of the
//! test server) receives MLLP, delivers over HTTP, is killed with SIGKILL mid-traffic and
//! restarted, and every acknowledged message still arrives; `ferry audit verify` then checks
//! the chain in the database. Two engines on the same database share it as two nodes.

use crate::common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Ferry, adt, ferry_bin, plain, write_config};
use ferry_connectors::mllp::MllpConnection;
use ferry_testkit::http_peer::HttpPeer;
use ferry_testkit::mllp_peer::control_id;
use ferry_testkit::postgres::TestDb;

fn test_db() -> TestDb {
    std::thread::spawn(TestDb::new).join().expect("test schema")
}

fn config(dir: &std::path::Path, url: &str, port: u16) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            r#"[store]
url = {url:?}

[admin]
listen = "127.0.0.1:0"

[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "api"
  type = "http"
  url = "http://127.0.0.1:{port}/adt"
  retry = {{ initial = "20ms", max = "200ms" }}
"#
        ),
    )
}

/// Send `per_sender` messages on each of `senders` connections; the acknowledged ids.
async fn send(
    addr: std::net::SocketAddr,
    prefix: &'static str,
    senders: usize,
    per_sender: usize,
    acked: Arc<Mutex<BTreeSet<String>>>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..senders {
        let acked = acked.clone();
        tasks.spawn(async move {
            let Ok(mut conn) = MllpConnection::connect(&plain(addr)).await else {
                return;
            };
            for i in 0..per_sender {
                let id = format!("{prefix}{s}-{i:05}");
                match conn.exchange(&adt(&id), Duration::from_secs(5)).await {
                    Ok(ack) => {
                        if ferry_hl7::ack::parse_ack(&ack)
                            .is_ok_and(|a| a.code.is_positive() && a.control_id == id)
                        {
                            acked.lock().expect("lock").insert(id);
                        }
                    }
                    Err(_) => return,
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Wait until every acknowledged id reached the peer; the ones still missing.
async fn missing(api: &HttpPeer, acked: &BTreeSet<String>, timeout: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let got: BTreeSet<String> = api.requests().iter().map(|r| control_id(&r.body)).collect();
        let lost: Vec<String> = acked.difference(&got).cloned().collect();
        if lost.is_empty() || std::time::Instant::now() > deadline {
            return lost;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn delivers_survives_kill_9_and_verifies_its_audit_trail_on_postgres() {
    let db = test_db();
    let dir = tempfile::tempdir().expect("tempdir");
    let api = HttpPeer::start(None).await.expect("api");
    let config = config(dir.path(), db.url(), api.addr().port());
    let acked = Arc::new(Mutex::new(BTreeSet::new()));

    let mut ferry = Ferry::start(&config, &[]);
    assert!(
        ferry
            .output()
            .contains("ferry: store postgres://postgres@127.0.0.1:5432/test"),
        "{}",
        ferry.output()
    );
    send(ferry.listener("adt"), "A", 2, 50, acked.clone()).await;
    let first: BTreeSet<String> = acked.lock().expect("lock").clone();
    assert_eq!(first.len(), 100);
    let lost = missing(&api, &first, Duration::from_secs(30)).await;
    assert!(
        lost.is_empty(),
        "not delivered: {lost:?}\n{}",
        ferry.output()
    );

    // Kill mid-traffic: receiving and delivering at once.
    let load = tokio::spawn(send(ferry.listener("adt"), "B", 4, 1_000, acked.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while api.requests().len() < 250 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ferry.kill9();
    let _ = load.await;
    let acked: BTreeSet<String> = acked.lock().expect("lock").clone();
    assert!(
        acked.len() > 100,
        "some messages acknowledged before the kill"
    );

    let mut ferry = Ferry::start(&config, &[]);
    let lost = missing(&api, &acked, Duration::from_secs(60)).await;
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost after kill -9: {:?}\n{}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>(),
        ferry.output()
    );
    assert!(ferry.terminate(), "clean stop\n{}", ferry.output());

    let out = std::process::Command::new(ferry_bin())
        .args(["audit", "verify", "--config"])
        .arg(&config)
        .output()
        .expect("ferry audit verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("audit log OK"), "{text}");
    assert!(!text.contains("password"), "{text}");
    drop(db);
}
