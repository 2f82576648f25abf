//! `workers` and `order_by` on destinations: a keyed destination delivers everything through
//! the real binary, and `ferry check` refuses a bad path or lane count, naming the channel and
//! the destination.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{Ferry, adt, config_with_channels, ferry_bin, toml_path};

#[tokio::test(flavor = "multi_thread")]
async fn a_keyed_file_destination_delivers_every_message() {
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
  workers = 4
  order_by = "PID-3.1"
"#,
            toml_path(&out)
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let mut conn = ferry.connect("adt").await;
    for i in 0..20 {
        let ack = common::send(&mut conn, &adt(&format!("P{i:02}"))).await;
        assert_eq!(ack.code.as_str(), "AA");
    }
    let sent = "ferry_messages_sent_total{channel=\"adt\",destination=\"files\"}";
    assert_eq!(
        ferry.wait_metric(sent, 20, Duration::from_secs(10)).await,
        Some(20),
        "{}",
        ferry.output()
    );
    assert_eq!(std::fs::read_dir(&out).expect("out").count(), 20);
}

#[test]
fn check_refuses_a_bad_order_by_path_or_lane_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (settings, expected) in [
        (
            "workers = 4\n  order_by = \"PID-0\"",
            "channel `c`, destination `files`: order_by: invalid HL7 path `PID-0`",
        ),
        (
            "workers = 0",
            "channel `c`: destination `files`: workers must be between 1 and 64 (0 given)",
        ),
        ("worker = 2", "worker"),
    ] {
        let config = config_with_channels(
            dir.path(),
            &format!(
                "[[channel]]\nname = \"c\"\nsource = {{ type = \"mllp\", listen = \"127.0.0.1:0\" }}\n\n  [[channel.destination]]\n  name = \"files\"\n  type = \"file\"\n  directory = \"out\"\n  {settings}\n"
            ),
        );
        let out = Command::new(ferry_bin())
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .expect("ferry check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{settings}: {stderr}");
        assert!(stderr.contains(expected), "{settings}: {stderr}");
    }
}
