//! Source filters (`[[channel.filter]]`): a message that fails a rule is acknowledged AA,
//! stored as FILTERED and sent nowhere; the others flow as before. Destination filters
//! (`[[channel.destination.filter]]`) keep a message out of one destination's queue only.
//! Bad rules are refused by `ferry check` with the channel and the filter's number.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{Ferry, adt, config_with_channels, ferry_bin, send, toml_path};

/// An ADT with a chosen trigger event and patient class (PV1-2).
fn adt_event(control_id: &str, event: &str, class: &str) -> Vec<u8> {
    String::from_utf8_lossy(&adt(control_id))
        .replace("ADT^A01^ADT_A01", &format!("ADT^{event}^ADT_A01"))
        .replace("PV1|1|I|", &format!("PV1|1|{class}|"))
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn filtered_messages_are_acknowledged_stored_and_not_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.filter]]
  field = "MSH-9.2"
  in = ["A01", "A04"]

  [[channel.filter]]
  any = [{{ field = "PV1-2", equals = "I" }}, {{ field = "PV1-2", regex = "^E$" }}]

  [[channel.filter]]
  field = "PID-3.1"
  exists = true

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
    let cases = [
        ("KEEP1", "A01", "I"),
        ("DROP-EVENT", "A08", "I"),
        ("KEEP2", "A04", "E"),
        ("DROP-CLASS", "A01", "O"),
    ];
    for (id, event, class) in cases {
        let ack = send(&mut conn, &adt_event(id, event, class)).await;
        assert_eq!(ack.code.as_str(), "AA", "{id}");
        assert_eq!(ack.control_id, id);
    }
    let filtered = "ferry_messages_filtered_total{channel=\"adt\"}";
    assert_eq!(
        ferry.wait_metric(filtered, 2, Duration::from_secs(5)).await,
        Some(2),
        "{}",
        ferry.output()
    );
    let sent = "ferry_messages_sent_total{channel=\"adt\",destination=\"files\"}";
    assert_eq!(
        ferry.wait_metric(sent, 2, Duration::from_secs(5)).await,
        Some(2)
    );
    assert_eq!(delivered_ids(&out), ["KEEP1", "KEEP2"]);
    let received = "ferry_messages_received_total{channel=\"adt\"}";
    assert_eq!(ferry.metric(received).await, Some(4));
}

/// MSH-10 of every message a file destination wrote, sorted.
fn delivered_ids(dir: &std::path::Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .expect("out dir")
        .flatten()
        .map(|e| std::fs::read(e.path()).expect("read"))
        .map(|m| {
            ferry_hl7::Message::parse(&m)
                .expect("parse")
                .control_id()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn destination_filters_keep_a_message_out_of_one_queue_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (all, inpatients) = (dir.path().join("all"), dir.path().join("inpatients"));
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "all"
  type = "file"
  directory = {}

  [[channel.destination]]
  name = "inpatients"
  type = "file"
  directory = {}

    [[channel.destination.filter]]
    field = "PV1-2"
    equals = "I"
"#,
            toml_path(&all),
            toml_path(&inpatients)
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let mut conn = ferry.connect("adt").await;
    for (id, class) in [("IN1", "I"), ("OUT1", "O"), ("IN2", "I")] {
        assert_eq!(
            send(&mut conn, &adt_event(id, "A01", class))
                .await
                .code
                .as_str(),
            "AA"
        );
    }
    let labels = |d: &str| format!("{{channel=\"adt\",destination=\"{d}\"}}");
    let sent = |d: &str| format!("ferry_messages_sent_total{}", labels(d));
    assert_eq!(
        ferry
            .wait_metric(&sent("all"), 3, Duration::from_secs(5))
            .await,
        Some(3)
    );
    assert_eq!(
        ferry
            .wait_metric(&sent("inpatients"), 2, Duration::from_secs(5))
            .await,
        Some(2),
        "{}",
        ferry.output()
    );
    let filtered = format!("ferry_destination_filtered_total{}", labels("inpatients"));
    assert_eq!(ferry.metric(&filtered).await, Some(1));
    // The filtered message never entered the queue: nothing waits there.
    let depth = format!("ferry_queue_depth{}", labels("inpatients"));
    assert_eq!(ferry.metric(&depth).await, Some(0));
    assert_eq!(
        ferry
            .metric("ferry_messages_filtered_total{channel=\"adt\"}")
            .await,
        Some(0)
    );
    assert_eq!(delivered_ids(&all), ["IN1", "IN2", "OUT1"]);
    assert_eq!(delivered_ids(&inpatients), ["IN1", "IN2"]);
}

/// Run `ferry check`, which must fail with status 1; its standard error.
fn check_fails(config: &std::path::Path) -> String {
    let out = Command::new(ferry_bin())
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("ferry check");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

const DESTINATION: &str =
    "\n  [[channel.destination]]\n  name = \"files\"\n  type = \"file\"\n  directory = \"out\"\n";

#[test]
fn check_refuses_bad_rules_naming_channel_and_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (rule, expected) in [
        (
            "field = \"PID-0\"\nequals = \"x\"",
            "filter 1: invalid HL7 path `PID-0`",
        ),
        (
            "field = \"PID-5\"\nequals = \"x\"\ncontains = \"y\"",
            "exactly one of `equals`, `in`, `contains`, `regex`, `exists`, `any` (2 given)",
        ),
        ("field = \"PID-5\"\nregex = \"([a-z\"", "filter 1: `regex`:"),
        (
            "equals = \"x\"",
            "`field` (an HL7 path such as \"MSH-9.2\") is required",
        ),
        ("any = []", "`any` needs at least one rule"),
    ] {
        let config = config_with_channels(
            dir.path(),
            &format!(
                "[[channel]]\nname = \"c\"\nsource = {{ type = \"mllp\", listen = \"127.0.0.1:0\" }}\n\n  [[channel.filter]]\n  {rule}\n{DESTINATION}"
            ),
        );
        let stderr = check_fails(&config);
        assert!(stderr.contains("channel `c`"), "{rule}: {stderr}");
        assert!(stderr.contains(expected), "{rule}: {stderr}");
    }
    // A destination's bad rule names the destination.
    let config = config_with_channels(
        dir.path(),
        &format!(
            "[[channel]]\nname = \"c\"\nsource = {{ type = \"mllp\", listen = \"127.0.0.1:0\" }}\n{DESTINATION}\n    [[channel.destination.filter]]\n    field = \"PID\"\n    exists = true\n"
        ),
    );
    let stderr = check_fails(&config);
    assert!(
        stderr.contains("destination files, filter 1: invalid HL7 path `PID`"),
        "{stderr}"
    );

    // A typo in a rule's key is a config error with a position, like every other key.
    let config = config_with_channels(
        dir.path(),
        &format!(
            "[[channel]]\nname = \"c\"\nsource = {{ type = \"mllp\", listen = \"127.0.0.1:0\" }}\n\n  [[channel.filter]]\n  field = \"PID-5\"\n  equal = \"x\"\n{DESTINATION}"
        ),
    );
    let stderr = check_fails(&config);
    assert!(stderr.contains("equal"), "{stderr}");
}
