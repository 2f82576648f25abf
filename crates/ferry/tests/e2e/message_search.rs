//! Message search and export through the real binary: messages sent over MLLP are found by
//! MRN (the channel's indexed metadata), MSH-10, status, time, type and text, page by page;
//! the export streams their raw content as NDJSON; both are audited without the PHI they were
//! asked for; a viewer is refused. With encryption at rest, the MRN is searchable while the
//! store file holds no plaintext of it.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Ferry, ferry_bin, send, toml_path, write_config};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

/// One channel `adt` indexing the MRN and the visit number, with a file destination that
/// takes everything (`archive`) and one that takes inpatients only (`inpatient`).
fn config(dir: &Path, store_extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"[store]
path = {db}
{store_extra}

[admin]
listen = "127.0.0.1:0"

[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}
index = {{ mrn = "PID-3.1", visit = "PV1-19" }}

  [[channel.destination]]
  name = "archive"
  type = "file"
  directory = {archive}

  [[channel.destination]]
  name = "inpatient"
  type = "file"
  directory = {inpatient}

    [[channel.destination.filter]]
    field = "PV1-2"
    equals = "I"
"#,
            db = toml_path(&dir.join("ferry.db")),
            archive = toml_path(&dir.join("archive")),
            inpatient = toml_path(&dir.join("inpatient")),
        ),
    )
}

fn hl7(control_id: &str, mrn: &str, name: &str, class: &str, visit: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|HIS|GENERAL|FERRY|CLOUD|20261125083000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r\
         PID|1||{mrn}^^^GH^MR||{name}^JANE||19800101|F\r\
         PV1|1|{class}|W^101^1||||||||||||||||{visit}\r"
    )
    .into_bytes()
}

fn add_user(config: &Path, name: &str, role: &str) {
    use std::io::Write as _;
    let mut child = Command::new(ferry_bin())
        .args(["user", "add", name, "--role", role, "--config"])
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

struct Api {
    base: String,
    http: reqwest::Client,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The ids of a search answer, newest first.
    fn ids(&self) -> Vec<i64> {
        assert_eq!(self.status, 200, "{}", self.body);
        self.json()["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["id"].as_i64().expect("id"))
            .collect()
    }
}

impl Api {
    fn new(ferry: &Ferry) -> Api {
        Api {
            base: format!("http://{}", ferry.admin),
            http: reqwest::Client::new(),
        }
    }

    async fn login(&self, user: &str) -> String {
        let r = self
            .http
            .post(format!("{}/api/v1/session", self.base))
            .header("content-type", "application/json")
            .body(json!({ "user": user, "password": PASSWORD }).to_string())
            .send()
            .await
            .expect("login");
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = serde_json::from_str(&r.text().await.expect("body")).expect("json");
        v["session"].as_str().expect("session").to_owned()
    }

    /// GET `path` with query `params` (encoded here), as `token` (or nobody).
    async fn get(&self, path: &str, params: &[(&str, &str)], token: Option<&str>) -> Answer {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let url = format!("{}{path}?{}", self.base, query.join("&"));
        let mut rb = self.http.get(url);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let r = rb.send().await.expect("request");
        Answer {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.text().await.expect("body"),
        }
    }

    async fn search(&self, token: &str, params: &[(&str, &str)]) -> Answer {
        self.get("/api/v1/channels/adt/messages", params, Some(token))
            .await
    }
}

/// Percent-encode everything but the unreserved characters (RFC 3986).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .expect("clock")
}

fn audit_records(config: &Path) -> Vec<Value> {
    let out = Command::new(ferry_bin())
        .args(["audit", "list", "--json", "--config"])
        .arg(config)
        .output()
        .expect("ferry audit list");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
        .collect()
}

/// The audit records of `action`, once there are at least `n` (they are written
/// asynchronously); fails after 15 s.
fn wait_audit(config: &Path, action: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found: Vec<Value> = audit_records(config)
            .into_iter()
            .filter(|r| r["action"] == action)
            .collect();
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} {action} records",
            found.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn search_by_every_criterion_export_audit_and_roles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "");
    add_user(&cfg, "olga", "operator");
    add_user(&cfg, "vera", "viewer");
    let ferry = Ferry::start(&cfg, &[]);
    let api = Api::new(&ferry);
    let olga = api.login("olga").await;
    let vera = api.login("vera").await;

    let mut conn = ferry.connect("adt").await;
    let m1 = hl7("CTL-1", "MRN-1001", "ALPHA", "I", "V-1");
    let m2 = hl7("CTL-2", "MRN-2002", "BRAVO", "O", "V-2");
    assert_eq!(send(&mut conn, &m1).await.code.as_str(), "AA");
    assert_eq!(send(&mut conn, &m2).await.code.as_str(), "AA");
    // Everything after `later` was received after it: the clock has moved past it before
    // the next message is sent.
    let later = now_ms() + 1;
    while now_ms() <= later {
        std::thread::yield_now();
    }
    let m3 = hl7("CTL-3", "MRN-1001", "ZEBRAFISH", "O", "V-3");
    assert_eq!(send(&mut conn, &m3).await.code.as_str(), "AA");
    // No MSH-9: rejected and stored as ERROR, still indexed by its MRN.
    let bad = b"MSH|^~\\&|HIS|GENERAL|FERRY|CLOUD|20261125083000|||CTL-4|P|2.5.1\rPID|1||MRN-1001^^^GH^MR||DOE^JANE\r";
    assert_eq!(send(&mut conn, bad).await.code.as_str(), "AR");

    // Wait until the archive has sent 1 to 3.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = api
            .search(&olga, &[("status", "SENT"), ("connector", "archive")])
            .await;
        assert_eq!(r.status, 200, "{}\n{}", r.body, ferry.output());
        let sent = r.ids();
        if sent == [3, 2, 1] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sent: {sent:?}\n{}",
            ferry.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let by_mrn = api.search(&olga, &[("meta", "mrn:MRN-1001")]).await;
    assert_eq!(by_mrn.ids(), [4, 3, 1]);
    let v = by_mrn.json();
    assert_eq!(v["next_before_id"], Value::Null);
    assert_eq!(v["examined"], 3);
    let first = &v["messages"][1];
    assert_eq!(first["control_id"], "CTL-3");
    assert_eq!(first["message_type"], "ADT^A01^ADT_A01");
    assert_eq!(
        first["connectors"],
        json!([
            {"name": "source", "status": "TRANSFORMED"},
            {"name": "archive", "status": "SENT"},
            {"name": "inpatient", "status": "FILTERED"}
        ])
    );
    assert!(!by_mrn.body.contains("ZEBRAFISH"), "no content in a search");
    assert_eq!(api.search(&olga, &[("meta", "visit:V-2")]).await.ids(), [2]);
    assert_eq!(
        api.search(&olga, &[("control_id", "CTL-2")]).await.ids(),
        [2]
    );
    assert_eq!(
        api.search(&olga, &[("status", "FILTERED"), ("connector", "inpatient")])
            .await
            .ids(),
        [3, 2]
    );
    assert_eq!(api.search(&olga, &[("status", "ERROR")]).await.ids(), [4]);
    let since = later.to_string();
    assert_eq!(
        api.search(&olga, &[("since_ms", &since)]).await.ids(),
        [4, 3]
    );
    assert_eq!(
        api.search(&olga, &[("until_ms", &since)]).await.ids(),
        [2, 1]
    );
    assert_eq!(api.search(&olga, &[("text", "ZEBRAFISH")]).await.ids(), [3]);
    assert_eq!(
        api.search(&olga, &[("type", "ADT^A01")]).await.ids(),
        [3, 2, 1]
    );
    assert_eq!(
        api.search(&olga, &[("meta", "mrn:MRN-1001"), ("text", "ALPHA")])
            .await
            .ids(),
        [1]
    );

    // Keyset pages, newest first.
    let page = api.search(&olga, &[("limit", "2")]).await;
    assert_eq!(page.ids(), [4, 3]);
    let cursor = page.json()["next_before_id"].to_string();
    assert_eq!(cursor, "3");
    let page = api
        .search(&olga, &[("limit", "2"), ("before_id", &cursor)])
        .await;
    assert_eq!(page.ids(), [2, 1]);
    // The bounded scan reports how far it got.
    let scan = api
        .search(&olga, &[("text", "NOWHERE"), ("max_examined", "3")])
        .await;
    assert_eq!(scan.ids(), Vec::<i64>::new());
    assert_eq!(scan.json()["examined"], 3);
    assert_eq!(scan.json()["next_before_id"], 2);

    // Bad requests.
    for params in [
        vec![("mrn", "MRN-1001")],
        vec![("status", "LOST")],
        vec![("connector", "archive")],
        vec![("limit", "0")],
        vec![("limit", "1001")],
        vec![("meta", "MRN-1001")],
        vec![("since_ms", "yesterday")],
        vec![("max_examined", "100001")],
    ] {
        let r = api.search(&olga, &params).await;
        assert_eq!(r.status, 400, "{params:?}: {}", r.body);
        assert!(r.json()["error"].is_string(), "{}", r.body);
    }
    assert_eq!(
        api.get("/api/v1/channels/nope/messages", &[], Some(&olga))
            .await
            .status,
        404
    );

    // Export: the raw messages, as received, one JSON object per line.
    let export = api
        .get(
            "/api/v1/channels/adt/messages/export",
            &[("meta", "mrn:MRN-1001")],
            Some(&olga),
        )
        .await;
    assert_eq!(export.status, 200, "{}", export.body);
    assert_eq!(export.headers["content-type"], "application/x-ndjson");
    assert_eq!(
        export.headers["content-disposition"],
        "attachment; filename=\"adt-messages.ndjson\""
    );
    let lines: Vec<Value> = export
        .body
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let raws: Vec<&str> = lines
        .iter()
        .map(|l| l["raw"].as_str().expect("raw"))
        .collect();
    let expected = [bad.to_vec(), m3.clone(), m1.clone()];
    assert_eq!(
        raws,
        expected
            .iter()
            .map(|m| std::str::from_utf8(m).expect("utf8"))
            .collect::<Vec<_>>()
    );
    assert_eq!(lines[1]["id"], 3);
    let all = api
        .get(
            "/api/v1/channels/adt/messages/export",
            &[("limit", "3")],
            Some(&olga),
        )
        .await;
    assert_eq!(all.body.lines().count(), 3, "limit caps the export");
    let r = api
        .get(
            "/api/v1/channels/adt/messages/export",
            &[("max_examined", "5")],
            Some(&olga),
        )
        .await;
    assert_eq!(r.status, 400);

    // Roles: PHI access is for admins and operators only.
    for path in [
        "/api/v1/channels/adt/messages",
        "/api/v1/channels/adt/messages/export",
    ] {
        assert_eq!(api.get(path, &[], Some(&vera)).await.status, 403, "{path}");
        assert_eq!(api.get(path, &[], None).await.status, 401, "{path}");
    }

    // Audit: who searched and exported what, without the values searched for.
    // 13 answered searches above, and at least one while waiting for the archive.
    let searches = wait_audit(&cfg, "message_search", 14);
    let mrn_search = searches
        .iter()
        .find(|r| r["details"]["criteria"] == json!(["meta:mrn"]))
        .expect("the MRN search is audited");
    assert_eq!(mrn_search["actor"], "olga");
    assert_eq!(mrn_search["target"], "channel/adt/messages");
    assert_eq!(mrn_search["details"]["results"], 3);
    assert_eq!(mrn_search["details"]["newest_id"], 4);
    assert_eq!(mrn_search["details"]["oldest_id"], 1);
    assert!(
        mrn_search["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.1"))
    );
    let status_search = searches
        .iter()
        .find(|r| r["details"]["criteria"] == json!(["status", "connector"]))
        .expect("the status search is audited");
    assert_eq!(
        status_search["details"]["filters"],
        json!({"status": "SENT", "connector": "archive"}),
        "values that identify no one are kept"
    );
    let exports = wait_audit(&cfg, "message_export", 2);
    let mrn_export = exports
        .iter()
        .find(|r| r["details"]["criteria"] == json!(["meta:mrn"]))
        .expect("the export is audited");
    assert_eq!(mrn_export["details"]["exported"], 3);
    assert_eq!(mrn_export["details"]["complete"], true);
    assert_eq!(mrn_export["outcome"], "success");
    let trail = serde_json::to_string(&audit_records(&cfg)).expect("json");
    for phi in ["MRN-1001", "ZEBRAFISH", "ALPHA", "CTL-2", "V-2"] {
        assert!(!trail.contains(phi), "the audit trail holds `{phi}`");
    }
}

/// 32 bytes of 0x07, in hex.
const KEY_HEX: &str = "0707070707070707070707070707070707070707070707070707070707070707";
const CANARY_MRN: &str = "CANARYMRN-5512";

fn occurrences(db: &Path, needle: &[u8]) -> usize {
    ["", "-wal"]
        .iter()
        .filter_map(|suffix| {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            std::fs::read(Path::new(&name)).ok()
        })
        .map(|bytes| bytes.windows(needle.len()).filter(|w| *w == needle).count())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_store_finds_an_mrn_it_does_not_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("store.key"), format!("{KEY_HEX}\n")).expect("key");
    let cfg = config(
        dir.path(),
        r#"encryption = { key = "${file:store.key}", key_id = "k1" }"#,
    );
    add_user(&cfg, "olga", "operator");
    let mut ferry = Ferry::start(&cfg, &[]);
    let api = Api::new(&ferry);
    let olga = api.login("olga").await;
    let mut conn = ferry.connect("adt").await;
    for (i, mrn) in [CANARY_MRN, "OTHER-1", CANARY_MRN].iter().enumerate() {
        let m = hl7(&format!("E{i}"), mrn, "SECRETNAME", "I", "CANARYVISIT-9");
        assert_eq!(send(&mut conn, &m).await.code.as_str(), "AA");
    }
    let mrn = format!("mrn:{CANARY_MRN}");
    assert_eq!(api.search(&olga, &[("meta", &mrn)]).await.ids(), [3, 1]);
    assert_eq!(
        api.search(&olga, &[("meta", "visit:CANARYVISIT-9")])
            .await
            .ids(),
        [3, 2, 1]
    );
    assert_eq!(
        api.search(&olga, &[("text", "OTHER-1")]).await.ids(),
        [2],
        "text search decrypts"
    );
    let export = api
        .get(
            "/api/v1/channels/adt/messages/export",
            &[("meta", &mrn)],
            Some(&olga),
        )
        .await;
    assert_eq!(export.body.lines().count(), 2);
    assert!(export.body.contains(CANARY_MRN), "the export is plaintext");
    let db = dir.path().join("ferry.db");
    for canary in [CANARY_MRN, "CANARYVISIT-9", "SECRETNAME"] {
        assert_eq!(
            occurrences(&db, canary.as_bytes()),
            0,
            "{canary} while running"
        );
    }
    assert!(ferry.terminate(), "{}", ferry.output());
    for canary in [CANARY_MRN, "CANARYVISIT-9", "SECRETNAME"] {
        assert_eq!(
            occurrences(&db, canary.as_bytes()),
            0,
            "{canary} after stopping"
        );
    }
}
