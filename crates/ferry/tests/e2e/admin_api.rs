//! End-to-end tests of the admin REST API over a real loopback admin listener of the real
//! binary: login, MFA, identical failures, lockout, session expiry, logout, disabling, API
//! token scope, CSRF, body limits and the route × role matrix from the OpenAPI document.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Ferry, adt, ferry_bin, send, toml_path, write_config};
use ferry_admin::policy::{self, Access, Role};
use reqwest::Method;
use serde_json::{Value, json};

pub(crate) const PASSWORD: &str = "correct horse battery";

/// A config with one MLLP channel `in` (file destination) and extra `[admin]` keys.
pub(crate) fn config(dir: &Path, admin_extra: &str) -> PathBuf {
    let out = dir.join("out");
    std::fs::create_dir_all(&out).expect("out dir");
    write_config(
        dir,
        &format!(
            "[store]\npath = {}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n\n\
             [[channel]]\nname = \"in\"\nsource = {{ type = \"mllp\", listen = \"127.0.0.1:0\" }}\n\n\
             [[channel.destination]]\nname = \"d\"\ntype = \"file\"\ndirectory = {}\n",
            toml_path(&dir.join("ferry.db")),
            toml_path(&out)
        ),
    )
}

/// `ferry user add` with [`PASSWORD`]; returns the TOTP secret it printed (admins).
pub(crate) fn add_user(config: &Path, name: &str, role: &str) -> Option<String> {
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
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ferry user add failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("TOTP secret (shown once): "))
        .map(str::to_owned)
}

pub(crate) fn totp_now(secret: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    ferry_admin::auth::totp_code(secret, now).expect("totp")
}

/// How a request authenticates.
#[derive(Clone, Copy)]
pub(crate) enum Auth<'a> {
    None,
    Bearer(&'a str),
    /// Session cookie, with the CSRF header when given.
    Cookie(&'a str, Option<&'a str>),
}

pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

impl Response {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
}

impl Api {
    pub(crate) fn new(ferry: &Ferry) -> Api {
        Api {
            base: format!("http://{}", ferry.admin),
            http: reqwest::Client::new(),
        }
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<Value>,
    ) -> Response {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        match auth {
            Auth::None => {}
            Auth::Bearer(t) => rb = rb.header("authorization", format!("Bearer {t}")),
            Auth::Cookie(c, csrf) => {
                rb = rb.header("cookie", format!("ferry_session={c}"));
                if let Some(csrf) = csrf {
                    rb = rb.header("x-ferry-csrf", csrf);
                }
            }
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = rb.send().await.expect("admin request");
        Response {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.text().await.expect("body"),
        }
    }

    pub(crate) async fn login(&self, user: &str, password: &str, totp: Option<String>) -> Response {
        let mut body = json!({ "user": user, "password": password });
        if let Some(t) = totp {
            body["totp"] = json!(t);
        }
        self.call(Method::POST, "/api/v1/session", Auth::None, Some(body))
            .await
    }

    /// Log in and return (session id, csrf token).
    pub(crate) async fn session(&self, user: &str, totp: Option<String>) -> (String, String) {
        let r = self.login(user, PASSWORD, totp).await;
        assert_eq!(r.status, 200, "login {user}: {}", r.body);
        let v = r.json();
        (
            v["session"].as_str().expect("session").to_owned(),
            v["csrf"].as_str().expect("csrf").to_owned(),
        )
    }

    pub(crate) async fn token(&self, admin_session: &str, role: &str) -> String {
        let r = self
            .call(
                Method::POST,
                "/api/v1/tokens",
                Auth::Bearer(admin_session),
                Some(json!({ "name": format!("{role}-token"), "role": role })),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["token"].as_str().expect("token").to_owned()
    }
}

fn assert_security_headers(r: &Response) {
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(
            r.headers.get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "header {name}"
        );
    }
}

#[tokio::test]
async fn login_me_csrf_and_logout_kills_the_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "");
    assert_eq!(
        add_user(&cfg, "olga", "operator"),
        None,
        "no TOTP for operators"
    );
    let ferry = Ferry::start(&cfg, &[]);
    let api = Api::new(&ferry);

    let health = api.call(Method::GET, "/health", Auth::None, None).await;
    assert_eq!(health.status, 200);
    assert_security_headers(&health);
    assert!(
        health.headers.get("strict-transport-security").is_none(),
        "no HSTS over plain HTTP"
    );

    let r = api.login("olga", PASSWORD, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_security_headers(&r);
    let cookie = r.headers["set-cookie"].to_str().expect("cookie").to_owned();
    let v = r.json();
    let session = v["session"].as_str().expect("session").to_owned();
    let csrf = v["csrf"].as_str().expect("csrf").to_owned();
    assert_eq!(session.len(), 64, "256-bit id");
    assert!(
        cookie.starts_with(&format!("ferry_session={session};")),
        "{cookie}"
    );
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "no Secure flag over plain HTTP");

    let me = api
        .call(
            Method::GET,
            "/api/v1/session",
            Auth::Cookie(&session, None),
            None,
        )
        .await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["role"], "operator");
    let me = api
        .call(Method::GET, "/api/v1/session", Auth::Bearer(&session), None)
        .await;
    assert_eq!(me.json()["user"], "olga");

    // A second login rotates: a new id, and the old one (sent as the cookie) is gone.
    let r2 = api
        .http
        .post(format!("{}/api/v1/session", api.base))
        .header("cookie", format!("ferry_session={session}"))
        .header("content-type", "application/json")
        .body(json!({"user": "olga", "password": PASSWORD}).to_string())
        .send()
        .await
        .expect("login");
    assert_eq!(r2.status().as_u16(), 200);
    let v2: Value = serde_json::from_str(&r2.text().await.expect("body")).expect("json");
    let session2 = v2["session"].as_str().expect("session").to_owned();
    let csrf2 = v2["csrf"].as_str().expect("csrf").to_owned();
    assert_ne!(session2, session);
    let old = api
        .call(Method::GET, "/api/v1/session", Auth::Bearer(&session), None)
        .await;
    assert_eq!(old.status, 401, "the session a login came with is ended");

    // CSRF: a cookie-authenticated DELETE without (or with a wrong) X-Ferry-CSRF is refused.
    let no_csrf = api
        .call(
            Method::DELETE,
            "/api/v1/session",
            Auth::Cookie(&session2, None),
            None,
        )
        .await;
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.body);
    let wrong = api
        .call(
            Method::DELETE,
            "/api/v1/session",
            Auth::Cookie(&session2, Some(&csrf)),
            None,
        )
        .await;
    assert_eq!(wrong.status, 403, "another session's CSRF token");
    let out = api
        .call(
            Method::DELETE,
            "/api/v1/session",
            Auth::Cookie(&session2, Some(&csrf2)),
            None,
        )
        .await;
    assert_eq!(out.status, 204, "{}", out.body);
    let after = api
        .call(
            Method::GET,
            "/api/v1/session",
            Auth::Cookie(&session2, None),
            None,
        )
        .await;
    assert_eq!(after.status, 401, "logout ended the session server-side");
    let after = api
        .call(
            Method::GET,
            "/api/v1/session",
            Auth::Bearer(&session2),
            None,
        )
        .await;
    assert_eq!(after.status, 401);
}

#[tokio::test]
async fn admins_need_a_fresh_totp_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "");
    let secret = add_user(&cfg, "root", "admin").expect("admins get a TOTP secret");
    let ferry = Ferry::start(&cfg, &[]);
    let api = Api::new(&ferry);
    assert_eq!(
        api.login("root", PASSWORD, None).await.status,
        401,
        "no code"
    );
    assert_eq!(
        api.login("root", PASSWORD, Some("000000".into()))
            .await
            .status,
        401
    );
    let code = totp_now(&secret);
    let wrong = if code == "123456" { "654321" } else { "123456" };
    assert_eq!(
        api.login("root", PASSWORD, Some(wrong.into())).await.status,
        401
    );
    assert_eq!(
        api.login("root", PASSWORD, Some(code.clone())).await.status,
        200
    );
    assert_eq!(
        api.login("root", PASSWORD, Some(code)).await.status,
        401,
        "a code works once"
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn unknown_user_and_wrong_password_are_indistinguishable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "lockout_threshold = 1000");
    add_user(&cfg, "olga", "operator");
    let ferry = Ferry::start(&cfg, &[]);
    let api = Api::new(&ferry);
    let (mut unknown, mut wrong) = (Vec::new(), Vec::new());
    let mut bodies = std::collections::BTreeSet::new();
    for i in 0..20 {
        let t = Instant::now();
        let a = api.login(&format!("nobody{i}"), PASSWORD, None).await;
        unknown.push(t.elapsed());
        let t = Instant::now();
        let b = api.login("olga", "wrong password!!", None).await;
        wrong.push(t.elapsed());
        assert_eq!(a.status, 401);
        assert_eq!(b.status, 401);
        bodies.insert(a.body);
        bodies.insert(b.body);
    }
    assert_eq!(bodies.len(), 1, "one body for both failures: {bodies:?}");
    let (u, w) = (median(unknown), median(wrong));
    assert!(
        u * 2 >= w && w * 2 >= u,
        "medians differ by more than 2x: unknown {u:?}, wrong password {w:?}"
    );
}

#[tokio::test]
async fn lockout_engages_after_repeated_failures_and_releases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        "lockout_threshold = 3\nlockout_base = \"1s\"\nlockout_max = \"4s\"",
    );
    add_user(&cfg, "olga", "operator");
    let ferry = Ferry::start(&cfg, &[]);
    let api = Api::new(&ferry);
    for _ in 0..3 {
        assert_eq!(
            api.login("olga", "wrong password!!", None).await.status,
            401
        );
        assert_eq!(
            api.login("ghost", "wrong password!!", None).await.status,
            401
        );
    }
    let locked = api.login("olga", PASSWORD, None).await;
    assert_eq!(locked.status, 429, "locked even with the right password");
    assert!(locked.headers.get("retry-after").is_some());
    let ghost = api.login("ghost", PASSWORD, None).await;
    assert_eq!(
        (ghost.status, ghost.body),
        (429, locked.body.clone()),
        "unknown names lock alike"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        api.login("olga", PASSWORD, None).await.status,
        200,
        "released after the backoff"
    );

    // The second lock lasts twice as long (2 s).
    for _ in 0..3 {
        api.login("ghost", "wrong password!!", None).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        api.login("ghost", PASSWORD, None).await.status,
        429,
        "doubled backoff"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        api.login("ghost", PASSWORD, None).await.status,
        401,
        "released, still unknown"
    );
}

#[tokio::test]
async fn sessions_expire_when_idle_and_after_the_absolute_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        "session_idle_timeout = \"1s\"\nsession_absolute_timeout = \"3s\"",
    );
    add_user(&cfg, "olga", "operator");
    let ferry = Ferry::start(&cfg, &[]);
    let api = Api::new(&ferry);

    let (idle, _) = api.session("olga", None).await;
    let me = |s: String| {
        let api = &api;
        async move {
            api.call(Method::GET, "/api/v1/session", Auth::Bearer(&s), None)
                .await
                .status
        }
    };
    assert_eq!(me(idle.clone()).await, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(me(idle).await, 401, "idle timeout");

    let started = Instant::now();
    let (busy, _) = api.session("olga", None).await;
    while started.elapsed() < Duration::from_millis(2500) {
        assert_eq!(me(busy.clone()).await, 200, "activity keeps it alive");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    while started.elapsed() < Duration::from_millis(3300) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = me(busy.clone()).await;
    }
    assert_eq!(me(busy).await, 401, "absolute timeout despite activity");
}

#[tokio::test]
async fn disabling_a_user_kills_their_sessions_and_tokens_keep_their_scope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "");
    let secret = add_user(&cfg, "root", "admin").expect("totp");
    add_user(&cfg, "olga", "operator");
    let ferry = Ferry::start(&cfg, &[]);
    let api = Api::new(&ferry);
    let (admin, _) = api.session("root", Some(totp_now(&secret))).await;
    let (olga, _) = api.session("olga", None).await;

    let r = api
        .call(
            Method::POST,
            "/api/v1/users/olga/disable",
            Auth::Bearer(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let me = api
        .call(Method::GET, "/api/v1/session", Auth::Bearer(&olga), None)
        .await;
    assert_eq!(me.status, 401, "the disabled user's session is dead");
    assert_eq!(api.login("olga", PASSWORD, None).await.status, 401);
    let users = api
        .call(Method::GET, "/api/v1/users", Auth::Bearer(&admin), None)
        .await;
    let olga_row = users
        .json()
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["name"] == "olga")
        .cloned();
    assert_eq!(olga_row.expect("olga")["disabled"], true);

    // Users created through the API.
    let created = api
        .call(
            Method::POST,
            "/api/v1/users",
            Auth::Bearer(&admin),
            Some(json!({"name": "vera", "role": "viewer", "password": PASSWORD})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.json()["totp_secret"], Value::Null);
    let short = api
        .call(
            Method::POST,
            "/api/v1/users",
            Auth::Bearer(&admin),
            Some(json!({"name": "x", "role": "viewer", "password": "short"})),
        )
        .await;
    assert_eq!(short.status, 400);
    let extra = api
        .call(
            Method::POST,
            "/api/v1/users",
            Auth::Bearer(&admin),
            Some(json!({"name": "y", "role": "viewer", "password": PASSWORD, "admin": true})),
        )
        .await;
    assert_eq!(extra.status, 400, "unknown fields are refused");
    let (vera, _) = api.session("vera", None).await;
    let r = api
        .call(Method::GET, "/api/v1/channels", Auth::Bearer(&vera), None)
        .await;
    assert_eq!(r.status, 200);

    // A viewer token sees statistics, nothing else; revoked, it sees nothing.
    let token = api.token(&admin, "viewer").await;
    let r = api
        .call(Method::GET, "/api/v1/channels", Auth::Bearer(&token), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()[0]["name"], "in");
    let r = api
        .call(
            Method::GET,
            "/api/v1/channels/in/messages/1",
            Auth::Bearer(&token),
            None,
        )
        .await;
    assert_eq!(r.status, 403, "viewers see no PHI");
    let r = api
        .call(Method::GET, "/api/v1/users", Auth::Bearer(&token), None)
        .await;
    assert_eq!(r.status, 403);
    let list = api
        .call(Method::GET, "/api/v1/tokens", Auth::Bearer(&admin), None)
        .await;
    assert!(!list.body.contains(&token), "token values are never listed");
    let id = list.json()[0]["id"].as_i64().expect("id");
    let r = api
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            Auth::Bearer(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = api
        .call(Method::GET, "/api/v1/channels", Auth::Bearer(&token), None)
        .await;
    assert_eq!(r.status, 401, "revoked");

    // The CLI sees the same store.
    let out = Command::new(ferry_bin())
        .args(["user", "list", "--config"])
        .arg(&cfg)
        .output()
        .expect("ferry user list");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("olga") && l.ends_with("disabled")),
        "{text}"
    );
}

#[tokio::test]
async fn operators_view_and_reprocess_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "");
    let secret = add_user(&cfg, "root", "admin").expect("totp");
    let ferry = Ferry::start(&cfg, &[]);
    let api = Api::new(&ferry);
    let mut conn = ferry.connect("in").await;
    assert_eq!(send(&mut conn, &adt("MSG001")).await.code.as_str(), "AA");
    let (admin, _) = api.session("root", Some(totp_now(&secret))).await;
    let operator = api.token(&admin, "operator").await;

    let r = api
        .call(
            Method::GET,
            "/api/v1/channels/in/messages/1",
            Auth::Bearer(&operator),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert!(v["raw"].as_str().expect("raw").contains("MSG001"));
    assert_eq!(v["connectors"][0]["name"], "source");
    let r = api
        .call(
            Method::GET,
            "/api/v1/channels/in",
            Auth::Bearer(&operator),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let c = r.json();
    assert_eq!(c["state"], "started", "{c}");
    assert!(
        c["listener"]
            .as_str()
            .is_some_and(|l| l.starts_with("mllp://127.0.0.1:")),
        "{c}"
    );
    assert_eq!(c["destinations"], json!(["d"]), "{c}");
    assert!(
        c["config"]
            .as_str()
            .is_some_and(|t| t.contains("name = \"in\"")),
        "{c}"
    );
    let r = api
        .call(
            Method::GET,
            "/api/v1/channels/nope",
            Auth::Bearer(&operator),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    let r = api
        .call(
            Method::GET,
            "/api/v1/channels/in/messages/99",
            Auth::Bearer(&operator),
            None,
        )
        .await;
    assert_eq!(r.status, 404);

    let r = api
        .call(
            Method::POST,
            "/api/v1/channels/in/messages/1/reprocess",
            Auth::Bearer(&operator),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["message_id"], 2);
    let r = api
        .call(
            Method::POST,
            "/api/v1/channels/in/messages/1/reprocess",
            Auth::Bearer(&operator),
            Some(json!({"destinations": ["nope"]})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let stats = api
        .call(
            Method::GET,
            "/api/v1/channels/in/stats",
            Auth::Bearer(&operator),
            None,
        )
        .await;
    assert_eq!(stats.json()["received"], 1, "{}", stats.body);
    assert_eq!(stats.json()["destinations"][0]["name"], "d");
    let metrics = api.call(Method::GET, "/metrics", Auth::None, None).await;
    assert_eq!(metrics.status, 200);
    assert!(!metrics.body.contains("MSG001"), "metrics carry no PHI");
}

#[tokio::test]
async fn bodies_are_limited_and_unauthenticated_bodies_are_not_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "");
    let secret = add_user(&cfg, "root", "admin").expect("totp");
    let ferry = Ferry::start(&cfg, &[]);
    let api = Api::new(&ferry);
    let big = "x".repeat(10 * 1024 * 1024);
    let r = api
        .http
        .post(format!("{}/api/v1/users", api.base))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await;
    assert_refused(r, 401, "authentication comes before the body");
    let (admin, _) = api.session("root", Some(totp_now(&secret))).await;
    let r = api
        .http
        .post(format!("{}/api/v1/users", api.base))
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "application/json")
        .body("y".repeat(100 * 1024))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 413);
    let login = api
        .http
        .post(format!("{}/api/v1/session", api.base))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await;
    assert_refused(login, 413, "the public login is limited too");
}

/// A request with a body the server will not read: the answer is `status`, or, when the
/// server answered and closed while the client was still writing the body, the client sees
/// the connection end mid-body (which also proves the body was not read).
fn assert_refused(result: reqwest::Result<reqwest::Response>, status: u16, why: &str) {
    match result {
        Ok(r) => assert_eq!(r.status().as_u16(), status, "{why}"),
        Err(e) => assert!(
            e.is_request() && !e.is_timeout() && !e.is_connect(),
            "{why}: {e:?}"
        ),
    }
}

/// Every route of the OpenAPI document × every role (by API token) and no credential: allowed
/// exactly as the policy table says (401 without credentials, 403 for a role not allowed).
#[tokio::test]
async fn route_role_matrix_matches_the_policy_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "");
    let secret = add_user(&cfg, "root", "admin").expect("totp");
    let ferry = Ferry::start(&cfg, &[]);
    let api = Api::new(&ferry);
    let (admin, _) = api.session("root", Some(totp_now(&secret))).await;
    let mut tokens = Vec::new();
    for role in Role::ALL {
        tokens.push((role, api.token(&admin, role.as_str()).await));
    }
    let doc = api
        .call(
            Method::GET,
            "/api/v1/openapi.json",
            Auth::Bearer(&admin),
            None,
        )
        .await;
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 10, "{paths:?}");
    let mut checked = 0;
    for (pattern, ops) in paths {
        for method in ops.as_object().expect("operations").keys() {
            let method =
                Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("method");
            let entry = policy::lookup(&method, pattern).unwrap_or_else(|| {
                panic!("{method} {pattern} is documented but has no policy entry")
            });
            let path = pattern
                .replace("{name}", "nobody")
                .replace("{id}", "999999")
                .replace("{channel}", "in");
            let body = (method != Method::GET).then(|| json!({}));
            let anon = api
                .call(method.clone(), &path, Auth::None, body.clone())
                .await;
            if entry.access == Access::Public {
                assert!(
                    anon.status != 401 && anon.status != 403,
                    "{method} {pattern} is public but answered {} unauthenticated",
                    anon.status
                );
            } else {
                assert_eq!(
                    anon.status, 401,
                    "{method} {pattern} unauthenticated: {}",
                    anon.body
                );
            }
            for (role, token) in &tokens {
                let r = api
                    .call(method.clone(), &path, Auth::Bearer(token), body.clone())
                    .await;
                if entry.access.allows(*role) {
                    assert!(
                        r.status != 401 && r.status != 403,
                        "{method} {pattern} as {role:?} should be allowed, got {}: {}",
                        r.status,
                        r.body
                    );
                } else {
                    assert_eq!(r.status, 403, "{method} {pattern} as {role:?}: {}", r.body);
                }
                checked += 1;
            }
        }
    }
    assert_eq!(
        checked,
        policy::ROUTES.len() * Role::ALL.len(),
        "every policy route is documented"
    );
    // A route that is in neither is refused without a credential check leaking anything.
    let r = api
        .call(Method::GET, "/api/v1/secret", Auth::Bearer(&admin), None)
        .await;
    assert_eq!(r.status, 404);
}
