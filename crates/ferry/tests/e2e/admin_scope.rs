//! Per-channel scope, the one-time bootstrap token and TOTP secrets at rest, end to end over
//! the real binary's loopback admin listener:
//!
//! - a user limited to channel `a` sees only `a` in the channel list, gets the same `404` as
//!   an unknown channel on `b`'s statistics, messages, reprocess, search, export and
//!   lifecycle (and nothing happens to `b`), cannot mint a token or create a user reaching `b`, sees and touches only accounts
//!   within its scope, is refused the audit log, and every refusal is audited;
//! - `ferry run` on a store without users prints a bootstrap token, a new one at each start
//!   until the first admin exists; the token creates that admin once, is refused afterwards,
//!   and failures lock out like logins; a store with users prints none;
//! - with `[store] encryption`, TOTP secrets are not in the store file, logins with TOTP
//!   still work, and `ferry keys rotate` moves them to a new key.

use crate::admin_api::{Api, Auth, PASSWORD, totp_now};
use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Ferry, adt, ferry_bin, send, toml_path, write_config};
use reqwest::Method;
use serde_json::{Value, json};

/// A config with channels `a` and `b` (MLLP in, file out), `[admin]` extras and a `[store]`
/// `encryption = …` line when given.
fn config(dir: &Path, admin_extra: &str, encryption: Option<&str>) -> PathBuf {
    let mut channels = String::new();
    for name in ["a", "b"] {
        let out = dir.join(format!("out-{name}"));
        std::fs::create_dir_all(&out).expect("out dir");
        channels.push_str(&format!(
            "[[channel]]\nname = \"{name}\"\nsource = {{ type = \"mllp\", listen = \"127.0.0.1:0\" }}\n\n\
             [[channel.destination]]\nname = \"d\"\ntype = \"file\"\ndirectory = {}\n\n",
            toml_path(&out)
        ));
    }
    let encryption = encryption
        .map(|e| format!("encryption = {e}\n"))
        .unwrap_or_default();
    write_config(
        dir,
        &format!(
            "[store]\npath = {}\n{encryption}\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n\n{channels}",
            toml_path(&dir.join("ferry.db"))
        ),
    )
}

/// `ferry user add NAME --role ROLE [--channels LIST]`; returns the TOTP secret it printed
/// (admins) and its whole output.
fn add_user(
    config: &Path,
    name: &str,
    role: &str,
    channels: Option<&str>,
    env: &[(&str, &str)],
) -> (Option<String>, String) {
    use std::io::Write as _;
    let mut command = Command::new(ferry_bin());
    command.args(["user", "add", name, "--role", role]);
    if let Some(c) = channels {
        command.args(["--channels", c]);
    }
    let mut child = command
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
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
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ferry user add failed: {text}");
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("TOTP secret (shown once): "))
        .map(str::to_owned);
    (secret, text)
}

fn ferry_cli(args: &[&str], config: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(ferry_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .expect("run ferry");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Poll the audit log (as `token`) until `query` matches at least `n` records; fails after
/// 20 s. The API's audit sink appends asynchronously.
async fn wait_audit(api: &Api, token: &str, query: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = api
            .call(
                Method::GET,
                &format!("/api/v1/audit?{query}"),
                Auth::Bearer(token),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "audit?{query}: {}", r.body);
        let records = r.json()["records"].as_array().cloned().unwrap_or_default();
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

fn names(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|v| v[key].to_string().trim_matches('"').to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_scoped_to_one_channel_reaches_only_that_channel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "", None);
    let (root_secret, _) = add_user(&cfg, "root", "admin", None, &[]);
    let (ann_secret, out) = add_user(&cfg, "ann", "admin", Some("a"), &[]);
    assert!(out.contains("on channels a"), "{out}");
    let ferry = Ferry::start(&cfg, &[]);
    let api = Api::new(&ferry);
    for channel in ["a", "b"] {
        let mut conn = ferry.connect(channel).await;
        assert_eq!(send(&mut conn, &adt("SCOPE1")).await.code.as_str(), "AA");
    }
    let (root, _) = api
        .session("root", Some(totp_now(&root_secret.expect("totp"))))
        .await;
    let (ann, _) = api
        .session("ann", Some(totp_now(&ann_secret.expect("totp"))))
        .await;
    let get = |path: &'static str, who: &str| {
        let (api, who) = (&api, who.to_owned());
        async move { api.call(Method::GET, path, Auth::Bearer(&who), None).await }
    };

    let me = get("/api/v1/session", &ann).await;
    assert_eq!(me.json()["channels"], json!(["a"]), "{}", me.body);
    let all = get("/api/v1/channels", &root).await;
    assert_eq!(names(&all.json(), "name"), ["a", "b"]);
    let mine = get("/api/v1/channels", &ann).await;
    assert_eq!(mine.status, 200);
    assert_eq!(names(&mine.json(), "name"), ["a"], "only channels in scope");

    // `a` works; `b` answers exactly what an unknown channel answers.
    assert_eq!(get("/api/v1/channels/a/stats", &ann).await.status, 200);
    assert_eq!(get("/api/v1/channels/a/messages/1", &ann).await.status, 200);
    let unknown_stats = get("/api/v1/channels/nope/stats", &root).await;
    let unknown_message = get("/api/v1/channels/nope/messages/1", &root).await;
    assert_eq!(unknown_stats.status, 404);
    for (path, unknown) in [
        ("/api/v1/channels/b/stats", &unknown_stats),
        ("/api/v1/channels/b/messages/1", &unknown_message),
    ] {
        let r = api.call(Method::GET, path, Auth::Bearer(&ann), None).await;
        assert_eq!((r.status, &r.body), (404, &unknown.body), "{path}");
        assert_eq!(
            r.headers.get("content-type"),
            unknown.headers.get("content-type")
        );
    }
    let reprocess_b = api
        .call(
            Method::POST,
            "/api/v1/channels/b/messages/1/reprocess",
            Auth::Bearer(&ann),
            None,
        )
        .await;
    assert_eq!(
        (reprocess_b.status, &reprocess_b.body),
        (404, &unknown_stats.body)
    );
    assert_eq!(
        get("/api/v1/channels/b/messages/2", &root).await.status,
        404,
        "the refused reprocess created nothing in b"
    );
    // Every other route under a channel (search, export, lifecycle) answers a channel outside
    // the scope exactly as it answers a name that is no channel at all.
    for (method, route) in [
        (Method::GET, "messages"),
        (Method::GET, "messages/export"),
        (Method::POST, "stop"),
        (Method::POST, "undeploy"),
    ] {
        let call = |channel: &str| {
            let (api, ann, method) = (&api, ann.clone(), method.clone());
            let path = format!("/api/v1/channels/{channel}/{route}");
            async move { api.call(method, &path, Auth::Bearer(&ann), None).await }
        };
        let (b, nope) = (call("b").await, call("nope").await);
        assert_eq!((b.status, &b.body), (404, &nope.body), "{method} {route}");
    }
    assert_eq!(
        get("/api/v1/channels/b/stats", &root).await.json()["deployed"],
        true,
        "b was not undeployed"
    );
    let reprocess_a = api
        .call(
            Method::POST,
            "/api/v1/channels/a/messages/1/reprocess",
            Auth::Bearer(&ann),
            None,
        )
        .await;
    assert_eq!(reprocess_a.status, 200, "{}", reprocess_a.body);
    assert_eq!(reprocess_a.json()["message_id"], 2);

    // Tokens and users never reach further than their creator.
    let mint = |body: Value| {
        let (api, ann) = (&api, ann.clone());
        async move {
            api.call(
                Method::POST,
                "/api/v1/tokens",
                Auth::Bearer(&ann),
                Some(body),
            )
            .await
        }
    };
    let beyond = mint(json!({"name": "t", "role": "operator", "channels": ["b"]})).await;
    assert_eq!(beyond.status, 403, "{}", beyond.body);
    for body in [
        json!({"name": "t", "role": "operator"}),
        json!({"name": "t", "role": "operator", "channels": ["a", "b"]}),
        json!({"name": "t", "role": "operator", "channels": ["no-such-channel"]}),
    ] {
        let r = mint(body.clone()).await;
        assert_eq!(
            (r.status, &r.body),
            (403, &beyond.body),
            "{body}: the same refusal whether or not the channel exists"
        );
    }
    let empty = mint(json!({"name": "t", "role": "operator", "channels": []})).await;
    assert_eq!(empty.status, 400, "{}", empty.body);
    let minted = mint(json!({"name": "a-ops", "role": "operator", "channels": ["a"]})).await;
    assert_eq!(minted.status, 201, "{}", minted.body);
    assert_eq!(minted.json()["channels"], json!(["a"]));
    let a_ops = minted.json()["token"].as_str().expect("token").to_owned();
    assert_eq!(
        names(&get("/api/v1/channels", &a_ops).await.json(), "name"),
        ["a"]
    );
    assert_eq!(
        get("/api/v1/channels/a/messages/1", &a_ops).await.status,
        200
    );
    assert_eq!(
        get("/api/v1/channels/b/messages/1", &a_ops).await.status,
        404
    );

    let user = |channels: Value| {
        let (api, ann) = (&api, ann.clone());
        async move {
            api.call(
                Method::POST,
                "/api/v1/users",
                Auth::Bearer(&ann),
                Some(
                    json!({"name": "vik", "role": "viewer", "password": PASSWORD,
                            "channels": channels}),
                ),
            )
            .await
        }
    };
    assert_eq!(user(json!(["b"])).await.status, 403);
    assert_eq!(user(Value::Null).await.status, 403, "null is every channel");
    let vik = user(json!(["a"])).await;
    assert_eq!(vik.status, 201, "{}", vik.body);
    assert_eq!(vik.json()["channels"], json!(["a"]));

    // A scoped admin sees and touches only accounts within its scope.
    let users = get("/api/v1/users", &ann).await;
    assert_eq!(
        names(&users.json(), "name"),
        ["ann", "vik"],
        "root is not shown"
    );
    let tokens = get("/api/v1/tokens", &ann).await;
    assert_eq!(names(&tokens.json(), "name"), ["a-ops"]);
    let root_token = api.token(&root, "viewer").await;
    let root_token_id = get("/api/v1/tokens", &root)
        .await
        .json()
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["name"] == "viewer-token")
        .and_then(|t| t["id"].as_i64())
        .expect("id");
    let revoke = api
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{root_token_id}"),
            Auth::Bearer(&ann),
            None,
        )
        .await;
    assert_eq!(revoke.status, 404, "{}", revoke.body);
    assert_eq!(
        get("/api/v1/channels", &root_token).await.status,
        200,
        "still valid"
    );
    let disable = api
        .call(
            Method::POST,
            "/api/v1/users/root/disable",
            Auth::Bearer(&ann),
            None,
        )
        .await;
    assert_eq!(disable.status, 404);
    assert_eq!(
        get("/api/v1/session", &root).await.status,
        200,
        "root untouched"
    );

    // The audit log names every channel: not for scoped callers, admin or not.
    let audit = get("/api/v1/audit", &ann).await;
    assert_eq!(audit.status, 403, "{}", audit.body);

    // The root admin sees the scopes, and the trail has the scope of every change and
    // every refusal.
    let users = get("/api/v1/users", &root).await.json();
    let scope_of = |name: &str| {
        users
            .as_array()
            .expect("users")
            .iter()
            .find(|u| u["name"] == name)
            .map(|u| u["channels"].clone())
    };
    assert_eq!(scope_of("ann"), Some(json!(["a"])));
    assert_eq!(scope_of("root"), Some(Value::Null));
    // Three refusals on b, eight from the search/export/lifecycle loop, one on the audit log
    // (the sink appends asynchronously: wait for all of them).
    let denied = wait_audit(&api, &root, "action=permission_denied&actor=ann", 12).await;
    let targets: Vec<&str> = denied
        .iter()
        .filter(|r| r["details"]["reason"] == "scope")
        .filter_map(|r| r["target"].as_str())
        .collect();
    for path in [
        "/api/v1/channels/b/stats",
        "/api/v1/channels/b/messages/1",
        "/api/v1/channels/b/messages/1/reprocess",
        "/api/v1/audit",
    ] {
        assert!(targets.contains(&path), "{path} in {targets:?}");
    }
    // Six token attempts, three user attempts, the refused revoke and disable.
    let changes = wait_audit(&api, &root, "action=user_change&actor=ann", 11).await;
    let created_token = changes
        .iter()
        .find(|r| r["details"]["kind"] == "token" && r["outcome"] == "success")
        .expect("token created");
    assert_eq!(created_token["details"]["channels"], json!(["a"]));
    assert!(
        changes
            .iter()
            .any(|r| r["outcome"] == "failure" && r["details"]["error"] == "beyond_scope"),
        "{changes:?}"
    );
    let created_user = changes
        .iter()
        .find(|r| r["details"]["kind"] == "user" && r["outcome"] == "success")
        .expect("user created");
    assert_eq!(created_user["details"]["channels"], json!(["a"]));

    let (ok, list) = ferry_cli(&["user", "list"], &cfg, &[]);
    assert!(ok, "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("ann ") && l.split_whitespace().nth(3) == Some("a")),
        "{list}"
    );
}

/// The bootstrap token a `ferry run` printed, if it printed one.
fn printed_token(ferry: &Ferry) -> Option<String> {
    ferry.output().lines().find_map(|l| {
        l.split_once("(valid 60 min, shown once): ")
            .map(|(_, t)| t.to_owned())
    })
}

async fn bootstrap(api: &Api, token: &str, password: &str) -> crate::admin_api::Response {
    api.call(
        Method::POST,
        "/api/v1/bootstrap",
        Auth::None,
        Some(json!({"token": token, "name": "first", "password": password})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bootstrap_token_creates_the_first_admin_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "", None);

    // Each start on a store without users prints a new token; the old one dies.
    let mut ferry = Ferry::start(&cfg, &[]);
    let first = printed_token(&ferry).expect("a token at the first start");
    assert!(first.starts_with("ferry_b_"), "{first}");
    assert_eq!(
        ferry.output().matches(&first).count(),
        1,
        "printed once: {}",
        ferry.output()
    );
    assert!(ferry.terminate(), "{}", ferry.output());
    let db = std::fs::read(dir.path().join("ferry.db")).expect("store file");
    assert!(
        !db.windows(first.len()).any(|w| w == first.as_bytes()),
        "only the token's hash is stored"
    );
    let mut ferry = Ferry::start(&cfg, &[]);
    let second = printed_token(&ferry).expect("a new token while there is still no user");
    assert_ne!(first, second);
    let api = Api::new(&ferry);

    let stale = bootstrap(&api, &first, PASSWORD).await;
    assert_eq!(stale.status, 401, "{}", stale.body);
    let wrong = bootstrap(&api, "ferry_b_0000", PASSWORD).await;
    assert_eq!((wrong.status, &wrong.body), (401, &stale.body));
    let short = bootstrap(&api, &second, "short").await;
    assert_eq!(
        short.status, 400,
        "a bad password does not use the token up"
    );
    let extra = api
        .call(
            Method::POST,
            "/api/v1/bootstrap",
            Auth::None,
            Some(json!({"token": second, "name": "x", "password": PASSWORD, "role": "viewer"})),
        )
        .await;
    assert_eq!(extra.status, 400, "unknown fields are refused");

    let created = bootstrap(&api, &second, PASSWORD).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let v = created.json();
    assert_eq!(v["role"], "admin");
    let secret = v["totp_secret"].as_str().expect("totp secret").to_owned();
    assert!(
        v["otpauth_uri"]
            .as_str()
            .is_some_and(|u| u.starts_with("otpauth://totp/")),
        "{v}"
    );
    assert_eq!(
        api.login("first", PASSWORD, None).await.status,
        401,
        "the admin needs its TOTP code"
    );
    let (session, _) = api.session("first", Some(totp_now(&secret))).await;
    let me = api
        .call(Method::GET, "/api/v1/session", Auth::Bearer(&session), None)
        .await;
    assert_eq!(me.json()["role"], "admin");
    assert_eq!(
        me.json()["channels"],
        Value::Null,
        "the first admin reaches every channel"
    );

    let again = bootstrap(&api, &second, PASSWORD).await;
    assert_eq!(
        (again.status, &again.body),
        (401, &stale.body),
        "single use"
    );

    // The refused short password, then the creation.
    let changes = wait_audit(&api, &session, "action=user_change&target=user/first", 2).await;
    assert!(
        changes
            .iter()
            .any(|r| r["details"]["bootstrap"] == true && r["outcome"] == "success"),
        "{changes:?}"
    );
    let issued = wait_audit(&api, &session, "action=user_change&target=bootstrap", 2).await;
    assert!(
        issued
            .iter()
            .all(|r| r["details"]["change"] == "issued" && !r.to_string().contains(&second)),
        "{issued:?}"
    );
    let failed = wait_audit(&api, &session, "action=login_failed&target=bootstrap", 3).await;
    let reasons: Vec<&str> = failed
        .iter()
        .filter_map(|r| r["details"]["bootstrap"].as_str())
        .collect();
    assert_eq!(reasons, ["wrong", "wrong", "no_token"], "{failed:?}");
    assert!(failed.iter().all(|r| r["outcome"] == "failure"));
    assert!(ferry.terminate(), "{}", ferry.output());

    // With a user, no token is printed, and the last one stays dead.
    let ferry = Ferry::start(&cfg, &[]);
    assert_eq!(printed_token(&ferry), None, "{}", ferry.output());
    let api = Api::new(&ferry);
    assert_eq!(bootstrap(&api, &second, PASSWORD).await.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_is_printed_for_a_store_with_users_and_failures_lock_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        "lockout_threshold = 2\nlockout_base = \"1s\"\nlockout_max = \"2s\"",
        None,
    );
    let with_users = tempfile::tempdir().expect("tempdir");
    let cfg_users = config(with_users.path(), "", None);
    add_user(&cfg_users, "olga", "operator", None, &[]);
    let ferry_users = Ferry::start(&cfg_users, &[]);
    assert_eq!(
        printed_token(&ferry_users),
        None,
        "{}",
        ferry_users.output()
    );
    drop(ferry_users);

    let ferry = Ferry::start(&cfg, &[]);
    let token = printed_token(&ferry).expect("token");
    let api = Api::new(&ferry);
    assert_eq!(bootstrap(&api, "ferry_b_1", PASSWORD).await.status, 401);
    assert_eq!(bootstrap(&api, "ferry_b_2", PASSWORD).await.status, 401);
    let locked = bootstrap(&api, &token, PASSWORD).await;
    assert_eq!(locked.status, 429, "locked even with the right token");
    assert!(locked.headers.get("retry-after").is_some());
    // Released after the backoff (polled: a locked attempt neither counts nor consumes).
    let deadline = Instant::now() + Duration::from_secs(20);
    let created = loop {
        let r = bootstrap(&api, &token, PASSWORD).await;
        if r.status != 429 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(created.status, 201, "{}", created.body);
}

/// 32 bytes of 0x05 and 0x06, in hex.
const KEY_OLD: &str = "0505050505050505050505050505050505050505050505050505050505050505";
const KEY_NEW: &str = "0606060606060606060606060606060606060606060606060606060606060606";

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
async fn totp_secrets_are_encrypted_at_rest_and_logins_still_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("OLD_KEY", KEY_OLD), ("NEW_KEY", KEY_NEW)];
    let old_only = config(
        dir.path(),
        "",
        Some(r#"{ key = "${env:OLD_KEY}", key_id = "k-old" }"#),
    );
    let db = dir.path().join("ferry.db");
    let (secret, out) = add_user(&old_only, "root", "admin", None, &env);
    let secret = secret.expect("totp");
    assert!(!out.contains(KEY_OLD));
    let mut ferry = Ferry::start(&old_only, &env);
    let api = Api::new(&ferry);
    let (session, _) = api.session("root", Some(totp_now(&secret))).await;
    // One more admin through the API: the server side seals too.
    let created = api
        .call(
            Method::POST,
            "/api/v1/users",
            Auth::Bearer(&session),
            Some(json!({"name": "second", "role": "admin", "password": PASSWORD})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let second = created.json()["totp_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    for s in [&secret, &second] {
        assert_eq!(
            occurrences(&db, s.as_bytes()),
            0,
            "a TOTP secret in the store file"
        );
        // Nor its first half (a secret split across pages would still leak).
        assert_eq!(occurrences(&db, &s.as_bytes()[..s.len() / 2]), 0);
    }
    assert!(ferry.terminate(), "{}", ferry.output());
    for s in [&secret, &second] {
        assert_eq!(occurrences(&db, s.as_bytes()), 0, "after stopping");
    }

    // Without the key the account tables are refused, not read as garbage.
    let plain = config(dir.path(), "", None);
    let (ok, output) = ferry_cli(&["user", "list"], &plain, &env);
    assert!(!ok, "{output}");
    assert!(
        output.contains("refusing to open the account tables"),
        "{output}"
    );

    // Rotation moves the secrets to the new key; with only the new key, admins still log in.
    let both = config(
        dir.path(),
        "",
        Some(
            r#"{ key = "${env:NEW_KEY}", key_id = "k-new", old_keys = { "k-old" = "${env:OLD_KEY}" } }"#,
        ),
    );
    let (ok, output) = ferry_cli(&["keys", "rotate"], &both, &env);
    assert!(ok, "{output}");
    assert!(
        output.contains("2 records of"),
        "two TOTP secrets to rotate: {output}"
    );
    let new_only = config(
        dir.path(),
        "",
        Some(r#"{ key = "${env:NEW_KEY}", key_id = "k-new" }"#),
    );
    let ferry = Ferry::start(&new_only, &env);
    let api = Api::new(&ferry);
    // A fresh code each: the previous one was used before the restart (a restart forgets the
    // replay guard, but the code may still be the same step).
    let login = api.login("second", PASSWORD, Some(totp_now(&second))).await;
    assert_eq!(login.status, 200, "{}", login.body);
    for s in [&secret, &second] {
        assert_eq!(occurrences(&db, s.as_bytes()), 0, "after rotation");
    }
}
