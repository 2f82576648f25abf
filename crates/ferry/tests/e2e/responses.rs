//! Response modes and enhanced acknowledgements, end to end over MLLP:
//! - `after-transform` answers with the outcome of the source side (`AR` for a filtered
//!   message when `reject_filtered` is set);
//! - `after-delivery` relays the chosen destination's ACK as the downstream system sent it, and
//!   answers `AE` when the destination does not finish within `response_timeout`;
//! - enhanced mode (MSH-15/16): `CA` on durable commit, then the application ACK when MSH-16
//!   asks for it.

use crate::common;

use std::time::Duration;

use common::{Ferry, adt, config_with_channels, send, toml_path};
use ferry_hl7::ack::parse_ack;
use ferry_testkit::mllp_peer::{AckBehavior, MllpPeer};

/// `adt(id)` with MSH-15 and MSH-16 set (enhanced acknowledgement mode).
fn enhanced(control_id: &str, accept: &str, application: &str) -> Vec<u8> {
    String::from_utf8_lossy(&adt(control_id))
        .replace(
            &format!("|{control_id}|P|2.5.1\r"),
            &format!("|{control_id}|P|2.5.1|||{accept}|{application}\r"),
        )
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn after_transform_rejects_filtered_messages_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}
response = "after-transform"
reject_filtered = true

  [[channel.filter]]
  field = "PV1-2"
  equals = "I"

  [[channel.destination]]
  name = "files"
  type = "file"
  directory = {}
"#,
            toml_path(&dir.path().join("out"))
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let mut conn = ferry.connect("adt").await;
    let ack = send(&mut conn, &adt("IN")).await;
    assert_eq!(ack.code.as_str(), "AA");
    let outpatient = String::from_utf8_lossy(&adt("OUT")).replace("PV1|1|I|", "PV1|1|O|");
    let ack = send(&mut conn, outpatient.as_bytes()).await;
    assert_eq!(ack.code.as_str(), "AR", "{}", ferry.output());
    assert_eq!(ack.control_id, "OUT");
    assert_eq!(ack.text.as_deref(), Some("filtered out by filter 1"));
    let filtered = "ferry_messages_filtered_total{channel=\"adt\"}";
    assert_eq!(ferry.metric(filtered).await, Some(1), "stored as FILTERED");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_delivery_relays_the_downstream_ack() {
    let peer = MllpPeer::start(None).await.expect("peer");
    peer.push_behaviors(&[AckBehavior::Negative("AE"), AckBehavior::Accept]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "pass"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}
response = "after-delivery"
response_from = "lab"

  [[channel.destination]]
  name = "archive"
  type = "file"
  directory = {}

  [[channel.destination]]
  name = "lab"
  type = "mllp"
  address = "{}"
  on_nak = "error"
"#,
            toml_path(&dir.path().join("out")),
            peer.addr()
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let mut conn = ferry.connect("pass").await;
    let response = conn
        .exchange(&adt("M1"), Duration::from_secs(10))
        .await
        .expect("response");
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("MSH|^~\\&|PEER|PEER|") && text.contains("MSA|AE|M1"),
        "the downstream NAK is relayed as it came: {text}\n{}",
        ferry.output()
    );
    let ack = send(&mut conn, &adt("M2")).await;
    assert_eq!(ack.code.as_str(), "AA");
    assert_eq!(ack.control_id, "M2");
    assert_eq!(peer.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_delivery_answers_ae_when_the_destination_does_not_finish_in_time() {
    let peer = MllpPeer::start(None).await.expect("peer");
    peer.push_behaviors(&[AckBehavior::Silent]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "pass"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}
response = "after-delivery"
response_timeout = "1s"

  [[channel.destination]]
  name = "lab"
  type = "mllp"
  address = "{}"
  response_timeout = "20s"
"#,
            peer.addr()
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let mut conn = ferry.connect("pass").await;
    let started = std::time::Instant::now();
    let ack = send(&mut conn, &adt("SLOW")).await;
    assert_eq!(ack.code.as_str(), "AE");
    assert!(
        ack.text
            .as_deref()
            .is_some_and(|t| t.contains("no response from destination `lab`")),
        "{:?}",
        ack.text
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let depth = "ferry_queue_depth{channel=\"pass\",destination=\"lab\"}";
    assert_eq!(ferry.metric(depth).await, Some(1), "still queued, not lost");
}

#[tokio::test(flavor = "multi_thread")]
async fn enhanced_mode_sends_the_commit_ack_then_the_application_ack_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "files"
  type = "file"
  directory = {}
"#,
            toml_path(&dir.path().join("out"))
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let mut conn = ferry.connect("adt").await;
    let wait = Duration::from_secs(10);
    // MSH-16 = AL: commit ACK, then application ACK.
    conn.send(&enhanced("E1", "AL", "AL")).await.expect("send");
    let commit = parse_ack(&conn.receive(wait).await.expect("commit")).expect("parse");
    assert_eq!(
        (commit.code.as_str(), commit.control_id.as_str()),
        ("CA", "E1")
    );
    let application = parse_ack(&conn.receive(wait).await.expect("application")).expect("parse");
    assert_eq!(
        (application.code.as_str(), application.control_id.as_str()),
        ("AA", "E1")
    );
    // MSH-16 = ER and success: only the commit ACK. The next exchange proves no second frame
    // was queued behind it.
    conn.send(&enhanced("E2", "AL", "ER")).await.expect("send");
    let commit = parse_ack(&conn.receive(wait).await.expect("commit")).expect("parse");
    assert_eq!(
        (commit.code.as_str(), commit.control_id.as_str()),
        ("CA", "E2")
    );
    conn.send(&enhanced("E3", "AL", "NE")).await.expect("send");
    let commit = parse_ack(&conn.receive(wait).await.expect("commit")).expect("parse");
    assert_eq!(
        (commit.code.as_str(), commit.control_id.as_str()),
        ("CA", "E3")
    );
    assert!(
        conn.receive(Duration::from_millis(300)).await.is_err(),
        "no application ACK was asked for"
    );
}
