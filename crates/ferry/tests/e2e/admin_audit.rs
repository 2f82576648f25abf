//! The admin API's audit trail end to end, over the real binary's loopback admin listener:
//! every admin event (logins and their failures, lockout, logout, session expiry, user and
//! token changes, PHI access, permission denials, audit reads) is recorded with actor, peer
//! address and outcome; auditors search and verify the log through `/api/v1/audit`, viewers
//! are refused it (and the refusal is recorded); `ferry audit verify` passes afterwards; and
//! three bad logins deliver the `failed_logins` alert to a real webhook listener.

use crate::admin_api::{Api, Auth, PASSWORD, add_user, config, totp_now};
use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Ferry, adt, ferry_bin, send};
use ferry_testkit::http_peer::HttpPeer;
use reqwest::Method;
use serde_json::{Value, json};

const WRONG: &str = "wrong password!!";

/// `GET /api/v1/audit?{query}` with `token`; the records (asserting a 200).
async fn audit(api: &Api, token: &str, query: &str) -> (Vec<Value>, Value) {
    let r = api
        .call(
            Method::GET,
            &format!("/api/v1/audit?{query}"),
            Auth::Bearer(token),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "audit?{query}: {}", r.body);
    let v = r.json();
    let records = v["records"].as_array().expect("records").clone();
    (records, v["next_after_seq"].clone())
}

/// Poll `audit?{query}` until it holds at least `n` records (the API's audit sink appends
/// asynchronously); fails after 20 s.
async fn wait_audit(api: &Api, token: &str, query: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (records, _) = audit(api, token, query).await;
        if records.len() >= n {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "audit?{query}: {} of {n} records: {records:?}",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn from_loopback(record: &Value) -> bool {
    record["source"]
        .as_str()
        .is_some_and(|s| s.starts_with("127.0.0.1:"))
}

fn field<'a>(records: &'a [Value], key: &str) -> Vec<&'a str> {
    records
        .iter()
        .map(|r| r[key].as_str().unwrap_or("?"))
        .collect()
}

fn detail<'a>(records: &'a [Value], key: &str) -> Vec<&'a str> {
    records
        .iter()
        .map(|r| r["details"][key].as_str().unwrap_or("-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_event_is_audited_searchable_by_auditors_and_verifiable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        "lockout_threshold = 3\nsession_idle_timeout = \"3s\"",
    );
    let secret = add_user(&cfg, "root", "admin").expect("totp");
    add_user(&cfg, "olga", "operator");
    let mut ferry = Ferry::start(&cfg, &[]);
    let api = Api::new(&ferry);

    // Failed logins: unknown user and wrong password answer alike; a missing TOTP code; a
    // name locked after three failures.
    let unknown = api.login("ghost", WRONG, None).await;
    let wrong = api.login("olga", WRONG, None).await;
    assert_eq!(unknown.status, 401);
    assert_eq!((wrong.status, &wrong.body), (401, &unknown.body));
    assert_eq!(api.login("root", PASSWORD, None).await.status, 401);
    assert_eq!(api.login("ghost", WRONG, None).await.status, 401);
    assert_eq!(api.login("ghost", WRONG, None).await.status, 401);
    assert_eq!(api.login("ghost", PASSWORD, None).await.status, 429);

    // Logins, then API tokens for the rest (they do not expire with the 3 s idle timeout).
    let (root, _) = api.session("root", Some(totp_now(&secret))).await;
    let admin = api.token(&root, "admin").await;
    let auditor = api.token(&admin, "auditor").await;
    let viewer = api.token(&admin, "viewer").await;

    // User and token changes.
    let created = api
        .call(
            Method::POST,
            "/api/v1/users",
            Auth::Bearer(&admin),
            Some(json!({"name": "vera", "role": "viewer", "password": PASSWORD})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let disabled = api
        .call(
            Method::POST,
            "/api/v1/users/vera/disable",
            Auth::Bearer(&admin),
            None,
        )
        .await;
    assert_eq!(disabled.status, 204);
    let temp = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            Auth::Bearer(&admin),
            Some(json!({"name": "temp", "role": "developer"})),
        )
        .await;
    assert_eq!(temp.status, 201, "{}", temp.body);
    let temp_id = temp.json()["id"].as_i64().expect("id");
    let revoked = api
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{temp_id}"),
            Auth::Bearer(&admin),
            None,
        )
        .await;
    assert_eq!(revoked.status, 204);

    // Logout, and a session left idle past its timeout.
    let (olga, _) = api.session("olga", None).await;
    let out = api
        .call(Method::DELETE, "/api/v1/session", Auth::Bearer(&olga), None)
        .await;
    assert_eq!(out.status, 204);
    let (idle, _) = api.session("olga", None).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for _ in 0..2 {
        let me = api
            .call(Method::GET, "/api/v1/session", Auth::Bearer(&idle), None)
            .await;
        assert_eq!(me.status, 401, "idle for longer than 3 s");
    }

    // PHI: the admin reads a message, the auditor may not; the viewer may not read the log.
    let mut conn = ferry.connect("in").await;
    assert_eq!(send(&mut conn, &adt("AUD001")).await.code.as_str(), "AA");
    let message = "/api/v1/channels/in/messages/1";
    let view = api
        .call(Method::GET, message, Auth::Bearer(&admin), None)
        .await;
    assert_eq!(view.status, 200, "{}", view.body);
    let refused = api
        .call(Method::GET, message, Auth::Bearer(&auditor), None)
        .await;
    assert_eq!(refused.status, 403, "auditors see no message content");
    for path in ["/api/v1/audit", "/api/v1/audit/verify?expect_head=1:ab"] {
        let r = api
            .call(Method::GET, path, Auth::Bearer(&viewer), None)
            .await;
        assert_eq!(r.status, 403, "{path} as viewer: {}", r.body);
    }

    // Every role may read the roles.
    let roles = api
        .call(Method::GET, "/api/v1/roles", Auth::Bearer(&viewer), None)
        .await;
    assert_eq!(roles.status, 200, "{}", roles.body);
    let roles = roles.json();
    let mfa: Vec<(&str, bool)> = roles
        .as_array()
        .expect("roles")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().expect("name"),
                r["mfa_required"].as_bool().expect("mfa"),
            )
        })
        .collect();
    assert_eq!(
        mfa,
        [
            ("admin", true),
            ("developer", false),
            ("operator", false),
            ("auditor", false),
            ("viewer", false)
        ]
    );

    // The auditor searches the log. The denials were recorded, with method and route.
    let denied = wait_audit(&api, &auditor, "action=permission_denied", 3).await;
    assert_eq!(
        field(&denied, "actor"),
        ["auditor-token", "viewer-token", "viewer-token"]
    );
    assert_eq!(
        detail(&denied, "route"),
        [
            "/api/v1/channels/{channel}/messages/{id}",
            "/api/v1/audit",
            "/api/v1/audit/verify"
        ]
    );
    assert_eq!(detail(&denied, "method"), ["GET", "GET", "GET"]);
    assert_eq!(
        field(&denied, "target"),
        [message, "/api/v1/audit", "/api/v1/audit/verify"],
        "the path, never the query string"
    );

    let failed = wait_audit(&api, &auditor, "action=login_failed", 6).await;
    assert_eq!(
        field(&failed, "actor"),
        ["ghost", "olga", "root", "ghost", "ghost", "ghost"]
    );
    assert_eq!(
        detail(&failed, "reason"),
        [
            "bad_credentials",
            "bad_credentials",
            "mfa",
            "bad_credentials",
            "bad_credentials",
            "locked"
        ],
        "unknown user and wrong password are one category"
    );
    assert_eq!(failed[2]["details"]["mfa"], "missing");
    assert_eq!(
        failed[4]["details"]["lockout"], "engaged",
        "{:?}",
        failed[4]
    );
    for r in &failed {
        assert_eq!(r["outcome"], "failure", "{r}");
        assert!(from_loopback(r), "{r}");
    }

    // Comma list and repeated parameter are the same search; actor and outcome narrow it.
    let (comma, _) = audit(&api, &auditor, "action=login,logout&actor=olga").await;
    let (repeated, _) = audit(&api, &auditor, "action=login&action=logout&actor=olga").await;
    assert_eq!(comma, repeated);
    assert_eq!(field(&comma, "action"), ["login", "logout", "login"]);
    let (expired, _) = audit(&api, &auditor, "action=session_expired").await;
    assert_eq!(expired.len(), 1, "an expiry is recorded once: {expired:?}");
    assert_eq!(expired[0]["actor"], "olga");
    assert_eq!(expired[0]["details"]["reason"], "idle");
    assert_eq!(expired[0]["outcome"], "failure");
    assert!(from_loopback(&expired[0]));
    let (logins, _) = audit(&api, &auditor, "action=login&outcome=success").await;
    assert_eq!(field(&logins, "actor"), ["root", "olga", "olga"]);
    let (none, _) = audit(&api, &auditor, "action=login&outcome=failure").await;
    assert!(none.is_empty(), "{none:?}");

    // Target prefixes: the user's changes, and the tokens'.
    let (vera, _) = audit(&api, &auditor, "action=user_change&target=user/vera").await;
    assert_eq!(detail(&vera, "change"), ["created", "disabled"]);
    assert_eq!(field(&vera, "actor"), ["admin-token", "admin-token"]);
    let (tokens, _) = audit(&api, &auditor, "action=user_change&target=token").await;
    assert_eq!(
        detail(&tokens, "change"),
        ["created", "created", "created", "created", "revoked"]
    );
    assert_eq!(detail(&tokens, "kind"), ["token"; 5]);
    assert_eq!(
        detail(&tokens, "name"),
        ["admin-token", "auditor-token", "viewer-token", "temp", "-"]
    );
    assert_eq!(tokens[4]["target"], format!("token/{temp_id}"));
    let (viewed, _) = audit(&api, &auditor, "action=message_view").await;
    assert_eq!(field(&viewed, "actor"), ["admin-token"]);

    // Time bounds, in RFC 3339 and in milliseconds.
    let (all, _) = audit(&api, &auditor, "since=2000-01-01T00:00:00Z&limit=1000").await;
    let (future, _) = audit(&api, &auditor, "since=4102444800000").await;
    let (past, _) = audit(&api, &auditor, "until=2000-01-01T00:00:00%2B01:00").await;
    assert!(all.len() > 20, "{}", all.len());
    assert!(future.is_empty() && past.is_empty());

    // Pages: limit 2 walks the six failures with the cursor.
    let mut seqs = Vec::new();
    let mut query = "action=login_failed&limit=2".to_owned();
    loop {
        let (page, next) = audit(&api, &auditor, &query).await;
        assert!(page.len() <= 2);
        seqs.extend(page.iter().map(|r| r["seq"].as_i64().expect("seq")));
        match next.as_i64() {
            Some(after) => query = format!("action=login_failed&limit=2&after_seq={after}"),
            None => break,
        }
    }
    let want: Vec<i64> = failed
        .iter()
        .map(|r| r["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, want);

    // Bad queries are refused precisely.
    for (bad, says) in [
        ("actr=olga", "actr"),
        ("limit=5000", "limit"),
        ("action=nope", "nope"),
        ("since=yesterday", "since"),
    ] {
        let r = api
            .call(
                Method::GET,
                &format!("/api/v1/audit?{bad}"),
                Auth::Bearer(&auditor),
                None,
            )
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(r.json()["error"].as_str().is_some_and(|e| e.contains(says)));
    }

    // The password never reached the trail, whatever the record.
    let everything = serde_json::to_string(&all).expect("json");
    for secret_text in [PASSWORD, WRONG, &admin, &root] {
        assert!(
            !everything.contains(secret_text),
            "a secret in the audit log"
        );
    }

    // Verification through the API: intact, and an expected head that is not in the chain is
    // reported.
    let v = api
        .call(
            Method::GET,
            "/api/v1/audit/verify",
            Auth::Bearer(&auditor),
            None,
        )
        .await;
    assert_eq!(v.status, 200, "{}", v.body);
    let report = v.json();
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["records"].as_u64().unwrap_or(0) > 20, "{report}");
    assert_eq!(report["problems"], json!([]));
    let v = api
        .call(
            Method::GET,
            &format!("/api/v1/audit/verify?expect_head={}", "0".repeat(64)),
            Auth::Bearer(&admin),
            None,
        )
        .await;
    assert_eq!(v.status, 200, "{}", v.body);
    assert_eq!(v.json()["ok"], false);
    assert_eq!(v.json()["problems"][0]["kind"], "expected_head_missing");
    let views = wait_audit(&api, &auditor, "action=audit_view&actor=admin-token", 1).await;
    assert_eq!(views[0]["details"]["query"], "verify");
    assert_eq!(views[0]["details"]["ok"], false);

    // After the run: the CLI sees every audited action with actor, peer and outcome, and the
    // chain verifies.
    assert!(ferry.terminate(), "{}", ferry.output());
    let trail: Vec<Value> = common::audit_records(&cfg);
    for (action, outcome) in [
        ("login", "success"),
        ("login_failed", "failure"),
        ("logout", "success"),
        ("session_expired", "failure"),
        ("user_change", "success"),
        ("permission_denied", "failure"),
        ("message_view", "success"),
        ("audit_view", "success"),
    ] {
        let found: Vec<&Value> = trail.iter().filter(|r| r["action"] == action).collect();
        assert!(!found.is_empty(), "no {action} in {trail:?}");
        for r in found {
            assert_eq!(r["outcome"], outcome, "{r}");
            assert!(r["actor"].as_str().is_some_and(|a| !a.is_empty()), "{r}");
            assert!(from_loopback(r), "{r}");
            assert!(r["time_ms"].as_i64().is_some_and(|t| t > 0), "{r}");
            assert!(r["node"].as_str().is_some_and(|n| !n.is_empty()), "{r}");
        }
    }
    let verify = Command::new(ferry_bin())
        .args(["audit", "verify", "--config"])
        .arg(&cfg)
        .output()
        .expect("ferry audit verify");
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{text}");
    assert!(
        text.contains(&format!("audit log OK: {} records", trail.len())),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn three_bad_logins_deliver_the_failed_login_alert_to_a_webhook() {
    let hook = HttpPeer::start(None).await.expect("webhook");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        &format!(
            "lockout_threshold = 100\n\n\
             [alerts]\ninterval = \"200ms\"\nnode = \"test-node\"\n\n\
             [alerts.actions.security]\nwebhook = {{ url = \"http://{}/alerts\" }}\n\n\
             [[alert]]\nname = \"admin-brute-force\"\n\
             when = {{ failed_logins = {{ count = 3, within = \"5m\" }} }}\n\
             actions = [\"security\"]\nthrottle = \"1h\"\n",
            hook.addr()
        ),
    );
    add_user(&cfg, "olga", "operator");
    let ferry = Ferry::start(&cfg, &[]);
    let api = Api::new(&ferry);

    assert_eq!(api.login("ghost", WRONG, None).await.status, 401);
    assert_eq!(api.login("olga", WRONG, None).await.status, 401);
    // Two are below the rule's count: several samples (200 ms apart) pass without a POST.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        hook.requests().is_empty(),
        "fired before the third failure:\n{}",
        ferry.output()
    );
    assert_eq!(api.login("olga", WRONG, None).await.status, 401);

    let posts = hook.wait_for("POST", 1, Duration::from_secs(20)).await;
    assert_eq!(posts.len(), 1, "one alert:\n{}", ferry.output());
    assert_eq!(posts[0].path, "/alerts");
    let alert: Value = serde_json::from_slice(&posts[0].body).expect("json");
    assert_eq!(alert["alert"], "admin-brute-force");
    assert_eq!(alert["node"], "test-node");
    let observed = alert["observed"].to_string();
    assert!(observed.contains("3 failed login(s)"), "{observed}");
    let body = String::from_utf8_lossy(&posts[0].body);
    assert!(!body.contains(WRONG), "no password in the alert: {body}");

    // The alert's status over the API: one firing, one notification, what was observed.
    let (olga, _) = api.session("olga", None).await;
    let r = api
        .call(Method::GET, "/api/v1/alerts", Auth::Bearer(&olga), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let alerts = r.json();
    assert_eq!(alerts.as_array().map(Vec::len), Some(1), "{alerts}");
    let a = &alerts[0];
    assert_eq!(a["name"], "admin-brute-force");
    assert_eq!(a["actions"], json!(["security"]));
    assert_eq!(a["throttle_secs"], 3600);
    assert!(a["fired"].as_u64().is_some_and(|n| n >= 1), "{a}");
    assert_eq!(a["notified"], 1, "the throttle holds later firings: {a}");
    assert!(
        a["last_fired_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{a}"
    );
    let seen = a["last_observed"].as_str().unwrap_or_default();
    assert!(seen.contains("failed login(s)"), "{a}");
}
