//! Routing between channels: channel A (MLLP) → `channel` destination → channel B
//! (`source = { type = "channel" }`) → a destination. The hop is drained from A's durable
//! queue and stored durably in B, so a `kill -9` anywhere loses nothing acknowledged.
//! `ferry check` refuses unknown, disabled and self targets, naming channel and destination.

use crate::common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use common::{Ferry, adt, config_with_channels, ferry_bin, free_port, plain, send, toml_path};
use ferry_connectors::mllp::MllpConnection;
use ferry_testkit::http_peer::HttpPeer;
use ferry_testkit::mllp_peer::control_id;

fn two_channels(b_destination: &str) -> String {
    format!(
        r#"
[[channel]]
name = "a"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "to-b"
  type = "channel"
  channel = "b"
  retry = {{ initial = "20ms", max = "200ms" }}

[[channel]]
name = "b"
source = {{ type = "channel" }}

  [[channel.destination]]
{b_destination}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_routed_through_a_channel_destination_reaches_the_second_channel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let config = config_with_channels(
        dir.path(),
        &two_channels(&format!(
            "  name = \"files\"\n  type = \"file\"\n  directory = {}\n",
            toml_path(&out)
        )),
    );
    let ferry = Ferry::start(&config, &[]);
    // The channel-source channel is deployed without a listener: health is green.
    assert_eq!(ferry.admin_get("/health").await.0, 200);
    assert!(!ferry.listeners.contains_key("b"));
    let mut conn = ferry.connect("a").await;
    for id in ["R1", "R2"] {
        assert_eq!(send(&mut conn, &adt(id)).await.code.as_str(), "AA");
    }
    let sent = "ferry_messages_sent_total{channel=\"b\",destination=\"files\"}";
    assert_eq!(
        ferry.wait_metric(sent, 2, Duration::from_secs(10)).await,
        Some(2),
        "{}",
        ferry.output()
    );
    let hop = "ferry_messages_sent_total{channel=\"a\",destination=\"to-b\"}";
    assert_eq!(ferry.metric(hop).await, Some(2));
    assert_eq!(
        ferry
            .metric("ferry_messages_received_total{channel=\"b\"}")
            .await,
        Some(2)
    );
    // B delivers the bytes A received.
    let delivered = std::fs::read(out.join("b-1.hl7")).expect("b-1.hl7");
    assert_eq!(delivered, adt("R1"));
    assert!(out.join("b-2.hl7").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_between_channels_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = config_with_channels(
        dir.path(),
        &two_channels(&format!(
            "  name = \"api\"\n  type = \"http\"\n  url = \"http://127.0.0.1:{port}/adt\"\n  retry = {{ initial = \"20ms\", max = \"200ms\" }}\n"
        )),
    );
    // Round 1: B's destination is down; kill while senders are still sending, so messages
    // are on both hops (in A's queue to B, and in B's queue).
    let mut ferry = Ferry::start(&config, &[]);
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let addr = ferry.listener("a");
    let mut senders = tokio::task::JoinSet::new();
    for s in 0..4 {
        let acked = acked.clone();
        senders.spawn(async move {
            let Ok(mut conn) = MllpConnection::connect(&plain(addr)).await else {
                return;
            };
            for i in 0..1_000 {
                let id = format!("S{s}-{i:04}");
                let Ok(ack) = conn.exchange(&adt(&id), Duration::from_secs(5)).await else {
                    return; // killed: not acknowledged, not counted
                };
                if ferry_hl7::ack::parse_ack(&ack).is_ok_and(|a| a.code.is_positive()) {
                    acked.lock().expect("lock").insert(id);
                }
            }
        });
    }
    let received_b = "ferry_messages_received_total{channel=\"b\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    while ferry.metric(received_b).await.unwrap_or(0) < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let hop_depth = ferry
        .metric("ferry_queue_depth{channel=\"a\",destination=\"to-b\"}")
        .await;
    ferry.kill9();
    while senders.join_next().await.is_some() {}
    let acked: BTreeSet<String> = acked.lock().expect("lock").clone();
    eprintln!(
        "killed with {} acknowledged, A→B queue depth {hop_depth:?}",
        acked.len()
    );
    assert!(acked.len() >= 200, "B received 200 before the kill");

    // Round 2: B's destination is up; everything acknowledged by A arrives.
    let api = HttpPeer::start_on(format!("127.0.0.1:{port}").parse().expect("addr"), None)
        .await
        .expect("api");
    let ferry = Ferry::start(&config, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let lost = loop {
        let delivered: BTreeSet<String> =
            api.requests().iter().map(|r| control_id(&r.body)).collect();
        let lost: Vec<&String> = acked.iter().filter(|id| !delivered.contains(*id)).collect();
        if lost.is_empty() || Instant::now() > deadline {
            break lost.len();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        lost,
        0,
        "of {} acknowledged, {lost} lost\n{}",
        acked.len(),
        ferry.output()
    );
}

/// `ferry check` on `channels`: must fail; its standard error.
fn check_fails(dir: &std::path::Path, channels: &str) -> String {
    let config = config_with_channels(dir, channels);
    let out = Command::new(ferry_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("ferry check");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

#[test]
fn check_refuses_unknown_disabled_and_own_targets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let channel = |name: &str, extra: &str, target: &str| {
        format!(
            "[[channel]]\nname = \"{name}\"\n{extra}source = {{ type = \"channel\" }}\n\n  [[channel.destination]]\n  name = \"next\"\n  type = \"channel\"\n  channel = \"{target}\"\n\n"
        )
    };
    let stderr = check_fails(dir.path(), &channel("a", "", "nowhere"));
    assert!(
        stderr.contains("channel `a`: destination `next`: unknown channel `nowhere`"),
        "{stderr}"
    );
    let stderr = check_fails(dir.path(), &channel("a", "", "a"));
    assert!(
        stderr.contains("channel `a`: destination `next`: routes to its own channel `a` (a loop)"),
        "{stderr}"
    );
    let both = channel("a", "", "b") + &channel("b", "enabled = false\n", "a");
    let stderr = check_fails(dir.path(), &both);
    assert!(
        stderr.contains("channel `a`: destination `next`: channel `b` is disabled"),
        "{stderr}"
    );
    // A cycle between two channels is allowed (each hop is durable), and checks clean.
    let cycle = channel("a", "", "b") + &channel("b", "", "a");
    let config = config_with_channels(dir.path(), &cycle);
    let out = Command::new(ferry_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("ferry check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The channel source takes no keys.
    let stderr = check_fails(
        dir.path(),
        &(channel("a", "", "b").replace(
            "{ type = \"channel\" }",
            "{ type = \"channel\", listen = \"127.0.0.1:0\" }",
        ) + &channel("b", "", "a")),
    );
    assert!(stderr.contains("listen"), "{stderr}");
}
