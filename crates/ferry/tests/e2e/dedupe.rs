//! Duplicate detection (`dedupe = { window = … }`): the same message sent twice is answered
//! twice with the same ACK, byte for byte, and delivered once; a copy from another sending
//! facility is not a duplicate.

use crate::common;

use std::time::Duration;

use common::{Ferry, adt, config_with_channels, toml_path};

#[tokio::test(flavor = "multi_thread")]
async fn a_resent_message_gets_the_original_ack_and_is_delivered_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}
dedupe = {{ window = "24h" }}

  [[channel.destination]]
  name = "files"
  type = "file"
  directory = {}
"#,
            toml_path(&out)
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let mut conn = ferry.connect("adt").await;
    let timeout = Duration::from_secs(10);
    let message = adt("DUP1");
    let first = conn.exchange(&message, timeout).await.expect("first ACK");
    // The ACK carries a timestamp and a fresh control id: wait so a rebuilt one would differ.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let second = conn.exchange(&message, timeout).await.expect("second ACK");
    assert_eq!(
        String::from_utf8_lossy(&second),
        String::from_utf8_lossy(&first)
    );
    assert_eq!(
        ferry_hl7::ack::parse_ack(&first)
            .expect("ACK")
            .code
            .as_str(),
        "AA"
    );
    // Same control id from another facility: a different message.
    let other = String::from_utf8_lossy(&message)
        .replace("|HIS|GENERAL|", "|HIS|EAST|")
        .into_bytes();
    let third = conn.exchange(&other, timeout).await.expect("third ACK");
    assert_ne!(third, first);

    let sent = "ferry_messages_sent_total{channel=\"adt\",destination=\"files\"}";
    assert_eq!(
        ferry.wait_metric(sent, 2, Duration::from_secs(5)).await,
        Some(2),
        "{}",
        ferry.output()
    );
    let duplicates = "ferry_messages_duplicate_total{channel=\"adt\"}";
    assert_eq!(ferry.metric(duplicates).await, Some(1));
    // Give a wrongly queued duplicate time to arrive, then count the files.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .expect("out dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["adt-1.hl7", "adt-3.hl7"],
        "message 2 is the duplicate"
    );
    let depth = "ferry_queue_depth{channel=\"adt\",destination=\"files\"}";
    assert_eq!(ferry.metric(depth).await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_dedupe_a_resent_message_is_delivered_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
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
            toml_path(&out)
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let mut conn = ferry.connect("adt").await;
    for _ in 0..2 {
        common::send(&mut conn, &adt("DUP1")).await;
    }
    let sent = "ferry_messages_sent_total{channel=\"adt\",destination=\"files\"}";
    assert_eq!(
        ferry.wait_metric(sent, 2, Duration::from_secs(5)).await,
        Some(2)
    );
    let duplicates = "ferry_messages_duplicate_total{channel=\"adt\"}";
    assert_eq!(ferry.metric(duplicates).await, Some(0));
}
