//! Channel lifecycle through the admin API of the real binary: stop refuses new MLLP
//! connections and holds the queue, start delivers everything in order; pause refuses new
//! messages while a backlog drains to a destination that came back; deploy applies an edited
//! configuration file without a restart while other channels keep flowing, adds a channel new
//! in the file, and refuses a broken file with its error and no change; undeploy removes a
//! channel and a later deploy resumes its queue. Every change is in the audit trail.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    Ferry, adt, audit_records, config_with_channels, ferry_bin, plain, reserve_port, send,
    toml_path,
};
use ferry_connectors::mllp::MllpConnection;
use ferry_testkit::mllp_peer::{MllpPeer, control_id};
use serde_json::Value;

const PASSWORD: &str = "correct horse battery";

/// `ferry user add NAME --role operator` on the store of `config` (before Ferry starts).
fn add_operator(config: &Path, name: &str) {
    use std::io::Write as _;
    let mut child = Command::new(ferry_bin())
        .args(["user", "add", name, "--role", "operator", "--config"])
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry user add");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .expect("password");
    let out = child.wait_with_output().expect("ferry user add");
    assert!(out.status.success(), "ferry user add: {out:?}");
}

/// An operator's session on the admin API.
struct Operator {
    base: String,
    http: reqwest::Client,
    session: String,
}

impl Operator {
    async fn login(ferry: &Ferry, user: &str) -> Operator {
        let base = format!("http://{}", ferry.admin);
        let http = reqwest::Client::new();
        let r = http
            .post(format!("{base}/api/v1/session"))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "user": user, "password": PASSWORD }).to_string())
            .send()
            .await
            .expect("login");
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = serde_json::from_str(&r.text().await.expect("body")).expect("json");
        let session = v["session"].as_str().expect("session").to_owned();
        Operator {
            base,
            http,
            session,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.session))
            .send()
            .await
            .expect("admin request");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `POST /api/v1/channels/{channel}/{action}`.
    async fn lifecycle(&self, channel: &str, action: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/channels/{channel}/{action}"),
        )
        .await
    }

    /// Like [`lifecycle`](Self::lifecycle), which must answer 200 with `state`.
    async fn change(&self, channel: &str, action: &str, state: &str) -> Value {
        let (status, v) = self.lifecycle(channel, action).await;
        assert_eq!(status, 200, "{action} {channel}: {v}");
        assert_eq!(v["state"], state, "{action} {channel}: {v}");
        v
    }

    /// The state the channel list shows for `channel` (`None`: not listed).
    async fn listed_state(&self, channel: &str) -> Option<String> {
        let (status, list) = self.call(reqwest::Method::GET, "/api/v1/channels").await;
        assert_eq!(status, 200);
        list.as_array()?
            .iter()
            .find(|c| c["name"] == channel)
            .and_then(|c| c["state"].as_str().map(str::to_owned))
    }
}

/// Whether a new MLLP connection to `addr` is refused.
async fn refused(addr: SocketAddr) -> bool {
    MllpConnection::connect(&plain(addr)).await.is_err()
}

/// An ADT with another trigger event.
fn adt_event(control_id: &str, event: &str) -> Vec<u8> {
    String::from_utf8_lossy(&adt(control_id))
        .replace("ADT^A01^ADT_A01", &format!("ADT^{event}^ADT_A01"))
        .into_bytes()
}

/// Wait until the trail holds a record by `olga` of `action` on `target` with `outcome`;
/// returns it. (API records go through a buffer: they are written shortly after the answer.)
fn wait_audit(config: &Path, action: &str, target: &str, outcome: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = audit_records(config).into_iter().find(|r| {
            r["action"] == action
                && r["target"] == target
                && r["outcome"] == outcome
                && r["actor"] == "olga"
        });
        if let Some(r) = found {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no {outcome} {action} record for {target}: {:?}",
            audit_records(config)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A record the operator `olga` made from the loopback.
fn assert_by_olga(record: &Value) {
    assert_eq!(record["actor"], "olga", "{record}");
    assert!(
        record["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.1:")),
        "{record}"
    );
}

/// Poll until the file destination `dir` holds `n` files, then return their MSH-10s.
fn delivered_ids(ferry: &Ferry, dir: &Path, n: usize) -> Vec<String> {
    ferry
        .wait_files(dir, n)
        .iter()
        .map(|f| control_id(f))
        .collect()
}

/// A channel `name`: MLLP source, MLLP destination `out` to `peer` retried every 100-200 ms.
fn mllp_to_peer(name: &str, peer: SocketAddr) -> String {
    format!(
        r#"
[[channel]]
name = "{name}"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "out"
  type = "mllp"
  address = "{peer}"
  connect_timeout = "1s"
  retry = {{ initial = "100ms", max = "200ms" }}
"#
    )
}

/// A channel `name`: MLLP source, file destination `files` into `dir`.
fn mllp_to_files(name: &str, dir: &Path) -> String {
    format!(
        r#"
[[channel]]
name = "{name}"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "files"
  type = "file"
  directory = {}
"#,
        toml_path(dir)
    )
}

fn peer_ids(peer: &MllpPeer) -> Vec<String> {
    peer.received().iter().map(|m| control_id(m)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_refuses_and_holds_the_queue_and_start_delivers_everything_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (peer_addr, reserved) = reserve_port();
    let config = config_with_channels(dir.path(), &mllp_to_peer("in", peer_addr));
    add_operator(&config, "olga");
    let ferry = Ferry::start(&config, &[]);
    let api = Operator::login(&ferry, "olga").await;
    let listener = ferry.listener("in");
    let mut conn = ferry.connect("in").await;
    for i in 1..=5 {
        assert_eq!(
            send(&mut conn, &adt(&format!("M{i}"))).await.code.as_str(),
            "AA"
        );
    }
    let depth = "ferry_queue_depth{channel=\"in\",destination=\"out\"}";
    assert_eq!(
        ferry.wait_metric(depth, 5, Duration::from_secs(10)).await,
        Some(5)
    );

    let v = api.change("in", "stop", "stopped").await;
    assert_eq!(
        (v["previous"].as_str(), v["changed"].as_bool()),
        (Some("started"), Some(true))
    );
    // The kept-alive connection was closed and new ones are refused: nothing can be
    // acknowledged.
    assert!(
        conn.exchange(&adt("LATE"), Duration::from_secs(5))
            .await
            .is_err()
    );
    assert!(
        refused(listener).await,
        "a stopped channel refuses connections"
    );
    assert_eq!(api.listed_state("in").await.as_deref(), Some("stopped"));
    assert_eq!(
        ferry
            .metric("ferry_channel_state{channel=\"in\",state=\"stopped\"}")
            .await,
        Some(1)
    );
    // Health stays green: stopped on purpose.
    assert_eq!(ferry.admin_get("/health").await.0, 200);

    // The destination comes up, but a stopped channel delivers nothing.
    let peer = MllpPeer::start_with(reserved.listen(64).expect("listen"), None).expect("peer");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(peer.received().is_empty(), "delivered while stopped");
    assert_eq!(ferry.metric(depth).await, Some(5), "the queue is intact");
    // Stopping again changes nothing.
    let (status, again) = api.lifecycle("in", "stop").await;
    assert_eq!((status, again["changed"].as_bool()), (200, Some(false)));

    let v = api.change("in", "start", "started").await;
    assert_eq!(v["previous"], "stopped");
    peer.wait_for(5, Duration::from_secs(15)).await;
    assert_eq!(
        peer_ids(&peer),
        ["M1", "M2", "M3", "M4", "M5"],
        "in order, nothing lost"
    );
    // The listener is back on the same address.
    let mut conn = ferry.connect("in").await;
    assert_eq!(send(&mut conn, &adt("M6")).await.code.as_str(), "AA");
    peer.wait_for(6, Duration::from_secs(15)).await;
    assert_eq!(peer_ids(&peer).last().map(String::as_str), Some("M6"));
    assert_eq!(
        ferry.wait_metric(depth, 0, Duration::from_secs(10)).await,
        Some(0)
    );
    assert_eq!(
        ferry
            .metric("ferry_channel_state{channel=\"in\",state=\"started\"}")
            .await,
        Some(1)
    );

    let stop = wait_audit(&config, "stop", "channel/in", "success");
    assert_by_olga(&stop);
    assert_eq!(stop["details"]["from"], "started");
    assert_eq!(stop["details"]["to"], "stopped");
    let start = wait_audit(&config, "start", "channel/in", "success");
    assert_by_olga(&start);
    assert!(start["seq"].as_i64() > stop["seq"].as_i64());

    // A channel that does not exist: 404, and the attempt is recorded.
    let (status, v) = api.lifecycle("nope", "start").await;
    assert_eq!(status, 404, "{v}");
    wait_audit(&config, "start", "channel/nope", "failure");
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_refuses_new_messages_while_a_backlog_drains_to_a_destination_back_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (peer_addr, reserved) = reserve_port();
    let web_out = dir.path().join("web");
    let config = config_with_channels(
        dir.path(),
        &format!(
            "{}\n{}",
            mllp_to_peer("in", peer_addr),
            format_args!(
                r#"
[[channel]]
name = "web"
source = {{ type = "http", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "files"
  type = "file"
  directory = {}
"#,
                toml_path(&web_out)
            )
        ),
    );
    add_operator(&config, "olga");
    let ferry = Ferry::start(&config, &[]);
    let api = Operator::login(&ferry, "olga").await;
    let mut conn = ferry.connect("in").await;
    for i in 1..=3 {
        assert_eq!(
            send(&mut conn, &adt(&format!("B{i}"))).await.code.as_str(),
            "AA"
        );
    }
    let depth = "ferry_queue_depth{channel=\"in\",destination=\"out\"}";
    assert_eq!(
        ferry.wait_metric(depth, 3, Duration::from_secs(10)).await,
        Some(3)
    );
    api.change("in", "pause", "paused").await;
    assert!(
        refused(ferry.listener("in")).await,
        "a paused channel refuses connections"
    );
    assert!(
        conn.exchange(&adt("LATE"), Duration::from_secs(5))
            .await
            .is_err()
    );

    // The destination comes back: the backlog drains while the channel stays paused.
    let peer = MllpPeer::start_with(reserved.listen(64).expect("listen"), None).expect("peer");
    peer.wait_for(3, Duration::from_secs(15)).await;
    assert_eq!(peer_ids(&peer), ["B1", "B2", "B3"]);
    assert_eq!(
        ferry.wait_metric(depth, 0, Duration::from_secs(10)).await,
        Some(0)
    );
    assert_eq!(api.listed_state("in").await.as_deref(), Some("paused"));
    let (status, stats) = api
        .call(reqwest::Method::GET, "/api/v1/channels/in/stats")
        .await;
    assert_eq!((status, stats["state"].as_str()), (200, Some("paused")));
    assert!(refused(ferry.listener("in")).await);

    api.change("in", "start", "started").await;
    let mut conn = ferry.connect("in").await;
    assert_eq!(send(&mut conn, &adt("B4")).await.code.as_str(), "AA");
    peer.wait_for(4, Duration::from_secs(15)).await;
    assert_eq!(peer_ids(&peer), ["B1", "B2", "B3", "B4"]);

    // An HTTP listener refuses connections while paused, too.
    let url = format!("http://{}/", ferry.listener("web"));
    let post = || {
        reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/hl7-v2")
            .body(adt("W1"))
            .send()
    };
    api.change("web", "pause", "paused").await;
    let err = post().await.expect_err("a paused HTTP listener answered");
    assert!(err.is_connect(), "{err:?}");
    api.change("web", "start", "started").await;
    assert_eq!(post().await.expect("posted").status().as_u16(), 200);
    assert_eq!(delivered_ids(&ferry, &web_out, 1), ["W1"]);

    let pause = wait_audit(&config, "pause", "channel/in", "success");
    assert_by_olga(&pause);
    wait_audit(&config, "pause", "channel/web", "success");
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_applies_the_edited_file_without_a_restart_while_other_channels_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_dir, copy_dir, b_dir, c_dir) = (
        dir.path().join("a"),
        dir.path().join("copy"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let channels = format!(
        "{}{}",
        mllp_to_files("a", &a_dir),
        mllp_to_files("b", &b_dir)
    );
    let config = config_with_channels(dir.path(), &channels);
    add_operator(&config, "olga");
    let ferry = Ferry::start(&config, &[]);
    let api = Operator::login(&ferry, "olga").await;
    let a_listener = ferry.listener("a");
    let mut a = ferry.connect("a").await;
    assert_eq!(send(&mut a, &adt("A1")).await.code.as_str(), "AA");
    assert_eq!(delivered_ids(&ferry, &a_dir, 1), ["A1"]);

    // Channel `b` sends all the time on one kept-alive connection, deploys or not.
    let stop_b = Arc::new(AtomicBool::new(false));
    let mut b = ferry.connect("b").await;
    let sender = tokio::spawn({
        let stop_b = stop_b.clone();
        async move {
            let mut codes = Vec::new();
            let mut i = 0;
            // At least a few messages after the deploys, on the same connection.
            let mut after = 0;
            while after < 3 {
                if stop_b.load(Ordering::SeqCst) {
                    after += 1;
                }
                i += 1;
                let ack = send(&mut b, &adt(&format!("B{i}"))).await;
                codes.push(ack.code.as_str().to_owned());
                // A steady trickle, not a flood of files for the machine to write.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            codes
        }
    });

    // Add a destination `copy` that takes A01s only.
    let with_copy = channels.replacen(
        "[[channel]]\nname = \"b\"",
        &format!(
            r#"  [[channel.destination]]
  name = "copy"
  type = "file"
  directory = {}

    [[channel.destination.filter]]
    field = "MSH-9.2"
    equals = "A01"

[[channel]]
name = "b""#,
            toml_path(&copy_dir)
        ),
        1,
    );
    assert_ne!(with_copy, channels);
    std::fs::write(&config, config_text(dir.path(), &with_copy)).expect("edit the config");
    let v = api.change("a", "deploy", "started").await;
    assert_eq!(v["previous"], "started");
    assert_eq!(v["config_changed"], true);
    let diff = v["diff"].as_str().expect("diff");
    assert!(diff.contains("+name = \"copy\""), "{diff}");
    assert!(diff.contains("+equals = \"A01\""), "{diff}");
    assert_eq!(
        v["listener"].as_str(),
        Some(format!("mllp://{a_listener}").as_str()),
        "a `:0` listener keeps its port"
    );
    let mut a = ferry.connect("a").await;
    assert_eq!(send(&mut a, &adt("A2")).await.code.as_str(), "AA");
    assert_eq!(
        send(&mut a, &adt_event("A3", "A04")).await.code.as_str(),
        "AA"
    );
    assert_eq!(delivered_ids(&ferry, &a_dir, 3), ["A1", "A2", "A3"]);
    assert_eq!(
        delivered_ids(&ferry, &copy_dir, 1),
        ["A2"],
        "A04 filtered out"
    );

    // Change the filter: now A04s only; and add a channel `c` to the file.
    let changed = format!(
        "{}{}",
        with_copy.replace("equals = \"A01\"", "equals = \"A04\""),
        mllp_to_files("c", &c_dir)
    );
    std::fs::write(&config, config_text(dir.path(), &changed)).expect("edit the config");
    let v = api.change("a", "deploy", "started").await;
    let diff = v["diff"].as_str().expect("diff");
    assert!(
        diff.contains("-equals = \"A01\"") && diff.contains("+equals = \"A04\""),
        "{diff}"
    );
    // A redeploy closed the old connections (each after the message in hand): reconnect.
    let mut a = ferry.connect("a").await;
    assert_eq!(
        send(&mut a, &adt_event("A4", "A04")).await.code.as_str(),
        "AA"
    );
    assert_eq!(send(&mut a, &adt("A5")).await.code.as_str(), "AA");
    assert_eq!(
        delivered_ids(&ferry, &a_dir, 5),
        ["A1", "A2", "A3", "A4", "A5"]
    );
    assert_eq!(delivered_ids(&ferry, &copy_dir, 2), ["A2", "A4"]);

    // A channel new in the file is deployed by its name.
    let v = api.change("c", "deploy", "started").await;
    assert_eq!(v["previous"], "undeployed");
    let listen = v["listener"]
        .as_str()
        .and_then(|l| l.strip_prefix("mllp://"))
        .expect("listener");
    let mut c = MllpConnection::connect(&plain(listen.parse().expect("addr")))
        .await
        .expect("connect c");
    assert_eq!(send(&mut c, &adt("C1")).await.code.as_str(), "AA");
    assert_eq!(delivered_ids(&ferry, &c_dir, 1), ["C1"]);
    let (status, stats) = api
        .call(reqwest::Method::GET, "/api/v1/channels/c/stats")
        .await;
    assert_eq!(
        (status, stats["received"].as_i64()),
        (200, Some(1)),
        "{stats}"
    );
    // The other routes see the new channel: its messages can be reprocessed.
    let (status, again) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/channels/c/messages/1/reprocess",
        )
        .await;
    assert_eq!(
        (status, again["message_id"].as_i64()),
        (200, Some(2)),
        "{again}"
    );
    assert_eq!(delivered_ids(&ferry, &c_dir, 2), ["C1", "C1"]);
    // Redeploying an unchanged channel changes nothing in its configuration.
    let v = api.change("a", "deploy", "started").await;
    assert_eq!(
        (v["config_changed"].as_bool(), v["diff"].as_str()),
        (Some(false), Some(""))
    );

    // Channel `b` never stopped: every message acknowledged on the same connection, and
    // delivered.
    stop_b.store(true, Ordering::SeqCst);
    let codes = sender.await.expect("sender");
    assert!(codes.iter().all(|c| c == "AA"), "{codes:?}");
    assert_eq!(
        delivered_ids(&ferry, &b_dir, codes.len()).len(),
        codes.len()
    );

    // The trail: a config change with the diff, then the deploy, for each; `c` was added.
    let records = audit_records(&config);
    let on_a: Vec<&Value> = records
        .iter()
        .filter(|r| r["target"] == "channel/a" && r["actor"] == "olga")
        .collect();
    let actions: Vec<&str> = on_a.iter().filter_map(|r| r["action"].as_str()).collect();
    assert_eq!(
        actions,
        [
            "config_change",
            "deploy",
            "config_change",
            "deploy",
            "deploy"
        ],
        "{on_a:?}"
    );
    assert!(
        on_a[0]["details"]["diff"]
            .as_str()
            .is_some_and(|d| d.contains("+name = \"copy\"")),
        "{}",
        on_a[0]
    );
    assert_eq!(on_a[0]["details"]["change"], "modified");
    assert_eq!(on_a[4]["details"]["config_changed"], false);
    let sha = ferry_store::audit::sha256_hex(&std::fs::read(&config).expect("read"));
    assert_eq!(on_a[4]["details"]["config_sha256"], sha.as_str());
    for r in &on_a {
        assert_by_olga(r);
        assert_eq!(r["outcome"], "success");
    }
    let added = wait_audit(&config, "config_change", "channel/c", "success");
    assert_eq!(added["details"]["change"], "added");
    wait_audit(&config, "deploy", "channel/c", "success");
}

/// The whole `ferry.toml` `config_with_channels` writes, for `channels`.
fn config_text(dir: &Path, channels: &str) -> String {
    let path: PathBuf = dir.join("ferry.db");
    format!(
        "[store]\npath = {}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{channels}",
        toml_path(&path)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_file_is_refused_with_its_error_and_nothing_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a_dir = dir.path().join("a");
    let channels = mllp_to_files("a", &a_dir);
    let config = config_with_channels(dir.path(), &channels);
    add_operator(&config, "olga");
    let ferry = Ferry::start(&config, &[]);
    let api = Operator::login(&ferry, "olga").await;
    let mut a = ferry.connect("a").await;
    assert_eq!(send(&mut a, &adt("A1")).await.code.as_str(), "AA");

    // A typo: the error names the file, the line and the key it meant.
    let typo = channels.replace("  directory = ", "  directroy = ");
    std::fs::write(&config, config_text(dir.path(), &typo)).expect("edit");
    let (status, v) = api.lifecycle("a", "deploy").await;
    assert_eq!(status, 422, "{v}");
    let error = v["error"].as_str().expect("error");
    assert!(error.contains("ferry.toml:"), "{error}");
    assert!(error.contains("did you mean `directory`"), "{error}");

    // A file that parses but does not build (a script that is not there): refused as
    // `ferry check` refuses it.
    let missing = channels.replace(
        "  [[channel.destination]]",
        "  [[channel.transform]]\n  js = \"missing.js\"\n\n  [[channel.destination]]",
    );
    std::fs::write(&config, config_text(dir.path(), &missing)).expect("edit");
    let (status, v) = api.lifecycle("a", "deploy").await;
    assert_eq!(status, 422, "{v}");
    let error = v["error"].as_str().expect("error");
    assert!(error.contains("missing.js"), "{error}");
    let check = Command::new(ferry_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("ferry check");
    assert!(!check.status.success());
    assert_eq!(
        String::from_utf8_lossy(&check.stderr).trim(),
        error,
        "the same error as ferry check"
    );

    // Nothing changed: the channel still runs as deployed, on the same connection.
    assert_eq!(api.listed_state("a").await.as_deref(), Some("started"));
    assert_eq!(send(&mut a, &adt("A2")).await.code.as_str(), "AA");
    assert_eq!(delivered_ids(&ferry, &a_dir, 2), ["A1", "A2"]);

    // A channel the file does not have: 404.
    std::fs::write(&config, config_text(dir.path(), &channels)).expect("restore");
    let (status, v) = api.lifecycle("zzz", "deploy").await;
    assert_eq!(status, 404, "{v}");

    let failed = wait_audit(&config, "deploy", "channel/a", "failure");
    assert_by_olga(&failed);
    assert!(
        failed["details"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("directroy")),
        "{failed}"
    );
    wait_audit(&config, "deploy", "channel/zzz", "failure");
    let records = audit_records(&config);
    assert!(
        !records.iter().any(|r| r["action"] == "config_change"),
        "no configuration change was made: {records:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn undeploy_removes_the_channel_and_a_deploy_resumes_its_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (peer_addr, reserved) = reserve_port();
    let config = config_with_channels(dir.path(), &mllp_to_peer("in", peer_addr));
    add_operator(&config, "olga");
    let ferry = Ferry::start(&config, &[]);
    let api = Operator::login(&ferry, "olga").await;
    let listener = ferry.listener("in");
    let mut conn = ferry.connect("in").await;
    for i in 1..=2 {
        assert_eq!(
            send(&mut conn, &adt(&format!("U{i}"))).await.code.as_str(),
            "AA"
        );
    }
    let depth = "ferry_queue_depth{channel=\"in\",destination=\"out\"}";
    assert_eq!(
        ferry.wait_metric(depth, 2, Duration::from_secs(10)).await,
        Some(2)
    );
    let v = api.change("in", "undeploy", "undeployed").await;
    assert_eq!(v["previous"], "started");
    assert!(refused(listener).await);
    assert_eq!(api.listed_state("in").await, None, "gone from the list");
    let (status, _) = api
        .call(reqwest::Method::GET, "/api/v1/channels/in/stats")
        .await;
    assert_eq!(status, 404);
    assert_eq!(api.lifecycle("in", "start").await.0, 404);
    let (_, metrics) = ferry.admin_get("/metrics").await;
    assert!(!metrics.contains("channel=\"in\""), "{metrics}");

    // Deployed again (same file): the two queued messages are delivered, then new ones.
    let peer = MllpPeer::start_with(reserved.listen(64).expect("listen"), None).expect("peer");
    let v = api.change("in", "deploy", "started").await;
    assert_eq!(v["previous"], "undeployed");
    assert_eq!(v["config_changed"], false, "the same section as before");
    peer.wait_for(2, Duration::from_secs(15)).await;
    assert_eq!(peer_ids(&peer), ["U1", "U2"]);
    let mut conn = ferry.connect("in").await;
    assert_eq!(send(&mut conn, &adt("U3")).await.code.as_str(), "AA");
    peer.wait_for(3, Duration::from_secs(15)).await;
    assert_eq!(peer_ids(&peer), ["U1", "U2", "U3"]);
    // Its stored messages were kept: message 1 is still there to view.
    let (status, message) = api
        .call(reqwest::Method::GET, "/api/v1/channels/in/messages/1")
        .await;
    assert_eq!(status, 200, "{message}");
    assert!(message["raw"].as_str().is_some_and(|r| r.contains("U1")));

    let undeploy = wait_audit(&config, "undeploy", "channel/in", "success");
    assert_by_olga(&undeploy);
    assert_eq!(undeploy["details"]["to"], "undeployed");
    let deploy = wait_audit(&config, "deploy", "channel/in", "success");
    assert_by_olga(&deploy);
    assert_eq!(deploy["details"]["from"], "undeployed");
}
