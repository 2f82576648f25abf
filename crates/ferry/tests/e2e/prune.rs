//! Retention pruning end to end: the background pruner of `ferry run` deletes expired
//! messages, counts them in `/metrics` and audits the run; `ferry prune` does the same on
//! demand, `--dry-run` only counts.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{Ferry, adt, audit_records, config_with_channels, ferry_bin, toml_path};

fn channel(out: &std::path::Path, interval: &str) -> String {
    format!(
        r#"
[retention]
interval = "{interval}"
batch = 7

[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}
retention = {{ metadata = "1s" }}

  [[channel.destination]]
  name = "files"
  type = "file"
  directory = {}
"#,
        toml_path(out)
    )
}

fn prune_records(config: &std::path::Path) -> Vec<serde_json::Value> {
    audit_records(config)
        .into_iter()
        .filter(|r| r["action"] == "retention_prune")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_background_pruner_deletes_expired_messages_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let config = config_with_channels(dir.path(), &channel(&out, "1s"));
    let mut ferry = Ferry::start(&config, &[]);
    assert!(
        ferry.output().contains("retention pruning every 1 s"),
        "{}",
        ferry.output()
    );
    let mut conn = ferry.connect("adt").await;
    for n in 0..20 {
        let ack = common::send(&mut conn, &adt(&format!("PR{n}"))).await;
        assert_eq!(ack.code.as_str(), "AA");
    }
    let sent = "ferry_messages_sent_total{channel=\"adt\",destination=\"files\"}";
    assert_eq!(
        ferry.wait_metric(sent, 20, Duration::from_secs(10)).await,
        Some(20)
    );
    // One second old, then the next run (every second) deletes them, 7 per batch.
    let pruned = "ferry_pruned_messages_total{channel=\"adt\"}";
    assert_eq!(
        ferry.wait_metric(pruned, 20, Duration::from_secs(15)).await,
        Some(20),
        "{}",
        ferry.output()
    );
    let (status, body) = ferry.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("ferry_pruned_content_total{channel=\"adt\"} 0"),
        "{body}"
    );
    assert!(ferry.terminate(), "{}", ferry.output());
    let records = prune_records(&config);
    let deleted: u64 = records
        .iter()
        .map(|r| r["details"]["messages_deleted"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(deleted, 20, "{records:?}");
    assert!(
        records
            .iter()
            .all(|r| r["target"] == "channel/adt" && r["actor"] == "system")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ferry_prune_counts_with_dry_run_and_prunes_on_demand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    // The background pruner would only run after an hour.
    let config = config_with_channels(dir.path(), &channel(&out, "1h"));
    let mut ferry = Ferry::start(&config, &[]);
    let mut conn = ferry.connect("adt").await;
    for n in 0..10 {
        let ack = common::send(&mut conn, &adt(&format!("CLI{n}"))).await;
        assert_eq!(ack.code.as_str(), "AA");
    }
    let sent = "ferry_messages_sent_total{channel=\"adt\",destination=\"files\"}";
    assert_eq!(
        ferry.wait_metric(sent, 10, Duration::from_secs(10)).await,
        Some(10)
    );
    assert!(ferry.terminate(), "{}", ferry.output());
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let prune = |extra: &[&str]| {
        let output = Command::new(ferry_bin())
            .arg("prune")
            .arg("--config")
            .arg(&config)
            .args(extra)
            .output()
            .expect("ferry prune");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let dry = prune(&["--dry-run", "adt"]);
    assert!(
        dry.contains("channel adt: would delete 10 messages and the content of 0 more"),
        "{dry}"
    );
    assert!(
        prune_records(&config).is_empty(),
        "a dry run changes nothing"
    );
    let done = prune(&[]);
    assert!(done.contains("channel adt: deleted 10 messages"), "{done}");
    let again = prune(&["--vacuum"]);
    assert!(again.contains("channel adt: deleted 0 messages"), "{again}");
    assert!(again.contains("VACUUM:"), "{again}");
    let records = prune_records(&config);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["actor"], "cli");
    assert_eq!(records[0]["details"]["messages_deleted"], 10);
}
