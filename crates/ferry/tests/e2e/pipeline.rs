//! Transformers end to end, configured in TOML and run by the real binary: declarative steps
//! with a CSV code table, JavaScript with a library and `configMap`, a JSON template encoder,
//! `router.route` into another channel, JSON → HL7 on an HTTP source, and the script sandbox
//! (an infinite loop and a memory bomb are stopped, the message is ERROR, the next one flows).

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Ferry, adt, config_with_channels, send, toml_path};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn field(message: &[u8], path: &str) -> String {
    ferry_hl7::Message::parse(message)
        .expect("parse")
        .get_str(path)
        .ok()
        .flatten()
        .map(|s| s.into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn declarative_steps_scripts_and_a_json_template_shape_what_each_destination_sends() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        &dir.path().join("tables/class.csv"),
        "from,to\nI,inpatient\nO,outpatient\n",
    );
    write(
        &dir.path().join("lib/names.js"),
        "function shout(s) { return s.toUpperCase(); }\n",
    );
    write(
        &dir.path().join("adt.js"),
        "msg.set(\"PID-5.1\", shout(msg.get(\"PID-5.1\")));\n\
         msg.set(\"MSH-5\", configMap.get(\"receiver\"));\n\
         channelMap.put(\"mrn\", msg.get(\"PID-3.1\"));\n\
         if (msg.get(\"PV1-2\") === \"inpatient\") router.route(\"wards\", msg.toString());\n",
    );
    write(
        &dir.path().join("patient.json"),
        r#"{"mrn": "{{PID-3.1}}", "family": "{{PID-5.1}}", "class": "{{PV1-2}}", "born": "{{PID-7 | date}}"}"#,
    );
    let (hl7_out, json_out, wards) = (
        dir.path().join("hl7"),
        dir.path().join("json"),
        dir.path().join("wards"),
    );
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [channel.scripts]
  libraries = ["lib/names.js"]
  config = {{ receiver = "SCHEDULER" }}

  [[channel.transform]]
  map = {{ field = "PV1-2", table = "tables/class.csv" }}

  [[channel.transform]]
  js = "adt.js"

  [[channel.transform]]
  delete = {{ field = "PV1-3" }}

  [[channel.destination]]
  name = "hl7"
  type = "file"
  directory = {hl7}

    [[channel.destination.transform]]
    js_inline = 'msg.set("PID-2", channelMap.get("mrn"));'

  [[channel.destination]]
  name = "api"
  type = "file"
  directory = {json}
  encode = {{ template = "patient.json" }}

[[channel]]
name = "wards"
source = {{ type = "channel" }}

  [[channel.destination]]
  name = "files"
  type = "file"
  directory = {wards}
"#,
            hl7 = toml_path(&hl7_out),
            json = toml_path(&json_out),
            wards = toml_path(&wards),
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let mut conn = ferry.connect("adt").await;
    assert_eq!(send(&mut conn, &adt("T1")).await.code.as_str(), "AA");
    let hl7 = ferry.wait_files(&hl7_out, 1);
    let sent = &hl7[0];
    assert_eq!(field(sent, "MSH-5"), "SCHEDULER", "configMap");
    assert_eq!(field(sent, "PID-5.1"), "DOE", "library function");
    assert_eq!(field(sent, "PV1-2"), "inpatient", "code table");
    assert_eq!(field(sent, "PV1-3"), "", "deleted");
    assert_eq!(
        field(sent, "PID-2"),
        "T1",
        "the channel map reaches the destination"
    );
    let json = ferry.wait_files(&json_out, 1);
    let json: serde_json::Value = serde_json::from_slice(&json[0]).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"mrn": "T1", "family": "DOE", "class": "inpatient", "born": "1980-01-01"})
    );
    let routed = ferry.wait_files(&wards, 1);
    assert_eq!(
        field(&routed[0], "MSH-10"),
        "T1",
        "router.route reached the other channel"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runaway_script_is_stopped_the_message_is_error_and_the_next_one_flows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [channel.scripts]
  time_limit = "300ms"
  memory_limit = "16MiB"

  [[channel.transform]]
  js_inline = '''
const id = msg.get("MSH-10");
if (id === "LOOP") {{ while (true) {{}} }}
if (id === "BOMB") {{ const a = []; while (true) a.push("x".repeat(1e6)); }}
msg.set("ZFY-1", "seen");
'''

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
    for id in ["LOOP", "BOMB"] {
        let started = Instant::now();
        let ack = send(&mut conn, &adt(id)).await;
        // on-receive: stored (as ERROR), so the sender's job is done.
        assert_eq!(ack.code.as_str(), "AA", "{id}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{id} was stopped"
        );
    }
    assert_eq!(send(&mut conn, &adt("FINE")).await.code.as_str(), "AA");
    let files = ferry.wait_files(&out, 1);
    assert_eq!(files.len(), 1, "only the good message was delivered");
    assert_eq!(field(&files[0], "MSH-10"), "FINE");
    assert_eq!(field(&files[0], "ZFY-1"), "seen");
    let failed = "ferry_messages_failed_total{channel=\"adt\"}";
    assert_eq!(ferry.metric(failed).await, Some(2), "{}", ferry.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn after_transform_answers_ae_with_the_failing_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}
response = "after-transform"

  [[channel.transform]]
  js_inline = 'if (msg.get("PV1-2") === "X") throw new Error("no class X");'

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
    assert_eq!(send(&mut conn, &adt("OK")).await.code.as_str(), "AA");
    let bad = String::from_utf8_lossy(&adt("BAD")).replace("PV1|1|I|", "PV1|1|X|");
    let ack = send(&mut conn, bad.as_bytes()).await;
    assert_eq!(ack.code.as_str(), "AE");
    let text = ack.text.unwrap_or_default();
    // The step, not the script's error text: that may quote the message (it is stored).
    assert_eq!(
        text, "transform 1 (details are stored with the message)",
        "the answer names the failing step"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_posted_to_an_http_source_becomes_hl7_through_a_template() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        &dir.path().join("siu.hl7"),
        "MSH|^~\\&|SCHEDULER|CLOUD|HIS|GH|{{ now }}||SIU^S12^SIU_S12|{{ id }}|P|2.5.1\r\
         SCH|{{ id }}|{{ id }}|||||{{ reason | upper }}\r\
         PID|1||{{ patient.mrn }}^^^GH^MR||{{ patient.family }}^{{ patient.given }}\r",
    );
    let out = dir.path().join("out");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "siu"
source = {{ type = "http", listen = "127.0.0.1:0", path = "/appointments" }}

  [[channel.transform]]
  template = "siu.hl7"

  [[channel.destination]]
  name = "his"
  type = "file"
  directory = {}
"#,
            toml_path(&out)
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let url = format!("http://{}/appointments", ferry.listener("siu"));
    let client = reqwest::Client::new();
    let body = r#"{"id": "APPT-7", "reason": "check-up", "patient": {"mrn": "42", "family": "Doe|Smith", "given": "Jane"}}"#;
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("json answer");
    assert_eq!(answer["code"], "AA");
    assert_eq!(answer["control_id"], "APPT-7");
    let files = ferry.wait_files(&out, 1);
    assert_eq!(field(&files[0], "SCH-7"), "CHECK-UP");
    assert_eq!(
        field(&files[0], "PID-5.1"),
        "Doe|Smith",
        "a delimiter in JSON is escaped in HL7 and reads back"
    );
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 400);
    let answer: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("json answer");
    assert_eq!(answer["code"], "AR");
}

/// Regression: an HTTP destination sent `Content-Type: application/hl7-v2` whatever it
/// encoded, so a JSON API got its JSON labelled as HL7 (and a strict one answers 415).
#[tokio::test(flavor = "multi_thread")]
async fn an_http_destination_labels_what_it_encodes() {
    let api = ferry_testkit::http_peer::HttpPeer::start(None)
        .await
        .expect("api");
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        &dir.path().join("patient.json"),
        r#"{"mrn": "{{PID-3.1}}"}"#,
    );
    let base = format!("http://{}", api.addr());
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "hl7"
  type = "http"
  url = "{base}/hl7"

  [[channel.destination]]
  name = "lossless"
  type = "http"
  url = "{base}/json"
  encode = "json"

  [[channel.destination]]
  name = "template"
  type = "http"
  url = "{base}/template"
  encode = {{ template = "patient.json" }}

  [[channel.destination]]
  name = "configured"
  type = "http"
  url = "{base}/configured"
  encode = "json"
  headers = {{ Content-Type = "application/fhir+json" }}
"#
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let mut conn = ferry.connect("adt").await;
    assert_eq!(send(&mut conn, &adt("CT1")).await.code.as_str(), "AA");
    let posts = api.wait_for("POST", 4, Duration::from_secs(15)).await;
    assert_eq!(posts.len(), 4, "{}", ferry.output());
    let content_type = |path: &str| {
        posts
            .iter()
            .find(|p| p.path == path)
            .and_then(|p| p.header("content-type"))
            .map(str::to_owned)
    };
    assert_eq!(content_type("/hl7").as_deref(), Some("application/hl7-v2"));
    assert_eq!(content_type("/json").as_deref(), Some("application/json"));
    assert_eq!(
        content_type("/template").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        content_type("/configured").as_deref(),
        Some("application/fhir+json"),
        "a configured header wins"
    );
}
