//! Zero loss across `kill -9`: every message Ferry acknowledged is delivered after a restart.
//!
//! The engine is killed twice: once while its destination is down and the queue only grows,
//! once while it is delivering and still receiving from four concurrent senders. After each
//! restart the oracle checks that every acknowledged MSH-10 reached the destination; duplicates
//! (allowed: delivery is at-least-once) are counted and reported.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Ferry, adt, config_with_channels, free_port, plain};
use ferry_connectors::mllp::MllpConnection;
use ferry_testkit::http_peer::HttpPeer;
use ferry_testkit::mllp_peer::control_id;

fn config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    config_with_channels(
        dir,
        &format!(
            r#"
[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "api"
  type = "http"
  url = "http://127.0.0.1:{port}/adt"
  retry = {{ initial = "20ms", max = "200ms" }}
"#,
        ),
    )
}

/// Send from `senders` concurrent connections until told to stop or the target count is
/// reached; returns the acknowledged control ids.
async fn send_load(
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
                        let ok = ferry_hl7::ack::parse_ack(&ack)
                            .is_ok_and(|a| a.code.is_positive() && a.control_id == id);
                        if ok {
                            acked.lock().expect("lock").insert(id);
                        }
                    }
                    Err(_) => return, // the engine was killed: unacknowledged, not counted
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = config(dir.path(), port);
    let acked = Arc::new(Mutex::new(BTreeSet::new()));

    // Round 1: destination down, queue grows, SIGKILL.
    let mut ferry = Ferry::start(&config, &[]);
    send_load(ferry.listener("adt"), "A", 4, 50, acked.clone()).await;
    assert_eq!(acked.lock().expect("lock").len(), 200);
    ferry.kill9();

    // Round 2: destination up and slow-ish; kill in the middle of receiving and delivering.
    let api = HttpPeer::start_on(format!("127.0.0.1:{port}").parse().expect("addr"), None)
        .await
        .expect("api");
    let mut ferry = Ferry::start(&config, &[]);
    let load = tokio::spawn(send_load(
        ferry.listener("adt"),
        "B",
        4,
        2_000,
        acked.clone(),
    ));
    // Let some delivery and some intake happen, then pull the plug.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while api.requests().len() < 250 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ferry.kill9();
    let _ = load.await;
    let acked: BTreeSet<String> = acked.lock().expect("lock").clone();
    assert!(acked.len() > 200, "some round-2 messages were acknowledged");

    // Round 3: restart; everything acknowledged must arrive.
    let ferry = Ferry::start(&config, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (lost, duplicates, delivered) = loop {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for r in api.requests() {
            *counts.entry(control_id(&r.body)).or_default() += 1;
        }
        let lost: Vec<&String> = acked
            .iter()
            .filter(|id| !counts.contains_key(*id))
            .collect();
        let duplicates: usize = counts.values().map(|c| c - 1).sum();
        if lost.is_empty() || std::time::Instant::now() > deadline {
            break (lost.len(), duplicates, counts.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "crash oracle: {} acknowledged, {delivered} distinct delivered, {lost} lost, {duplicates} duplicates",
        acked.len()
    );
    assert_eq!(
        lost,
        0,
        "acknowledged messages lost after kill -9\n{}",
        ferry.output()
    );

    // Per-sender order: each sender's messages were delivered in the order it sent them
    // (first deliveries; a resend after the crash may repeat an earlier one).
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for r in api.requests() {
        let id = control_id(&r.body);
        if !seen.insert(id.clone()) {
            continue;
        }
        let (sender, _) = id.split_at(id.find('-').unwrap_or(0));
        if let Some(prev) = last.insert(sender.to_owned(), id.clone()) {
            assert!(prev < id, "order violated: {prev} delivered before {id}");
        }
    }
}

/// The harness of `ferry bench crash` (PRODUCT.md §3): 20 SIGKILLs at random moments under
/// four concurrent senders that resend until acknowledged; the oracle must find nothing
/// acknowledged missing downstream and no order broken.
#[test]
fn twenty_random_kills_lose_no_acknowledged_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(common::ferry_bin())
        .args(["bench", "crash", "--kills", "20", "--senders", "4"])
        .args([
            "--min-interval",
            "100ms",
            "--max-interval",
            "300ms",
            "--json",
        ])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run ferry bench crash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("{report}");
    assert_eq!(report["kills"], 20);
    assert!(
        report["acknowledged"].as_u64().unwrap_or(0) > 100,
        "{report}"
    );
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["order_violations"], 0, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert!(out.status.success(), "{report}");
}
