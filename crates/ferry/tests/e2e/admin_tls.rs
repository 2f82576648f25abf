//! The admin listener over real HTTPS (SECURITY.md T17/T18, ASVS 3.3.x, 3.4.1): the login
//! cookie carries `Secure; HttpOnly; SameSite=Strict`, every response carries HSTS of at least
//! a year, and plain HTTP to the TLS port gets no HTTP answer at all (no downgrade): the
//! handshake is refused and recorded as `tls_rejected` with target `admin`.

use crate::common;

use std::time::Duration;

use common::{Ferry, toml_path, write_config};
use ferry_testkit::TestPki;
use ferry_tls::ClientTlsSettings;
use reqwest::header::{HeaderMap, SET_COOKIE, STRICT_TRANSPORT_SECURITY};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::admin_api::{PASSWORD, add_user};

fn https_client(pki: &TestPki) -> reqwest::Client {
    let mut tls = (*ferry_tls::client_config(&ClientTlsSettings {
        ca: Some(pki.ca_cert_path()),
        cert: None,
        key: None,
    })
    .expect("client tls"))
    .clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("https client")
}

/// HSTS is present and asks for at least a year (ASVS 3.4.1).
fn assert_hsts(headers: &HeaderMap, what: &str) {
    let hsts = headers
        .get(STRICT_TRANSPORT_SECURITY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{what}: no Strict-Transport-Security header: {headers:?}"));
    let max_age: u64 = hsts
        .split(';')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: HSTS without max-age: {hsts}"));
    assert!(
        max_age >= 31_536_000,
        "{what}: HSTS max-age {max_age} < 1 year"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn https_admin_sets_secure_cookies_and_hsts_and_refuses_plain_http() {
    let pki = TestPki::new("admin https");
    let server = pki.server(&["localhost", "127.0.0.1"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &format!(
            "[store]\npath = {}\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntls = {{ cert = {}, key = {} }}\n",
            toml_path(&dir.path().join("ferry.db")),
            toml_path(&server.cert),
            toml_path(&server.key),
        ),
    );
    assert_eq!(add_user(&config, "olga", "operator"), None);
    let mut ferry = Ferry::start(&config, &[]);
    assert!(
        ferry.output().contains("admin listening on https://"),
        "{}",
        ferry.output()
    );
    let base = format!("https://localhost:{}", ferry.admin.port());
    let http = https_client(&pki);

    let health = http
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status().as_u16(), 200);
    assert_hsts(health.headers(), "/health");

    // A failed login is answered over HTTPS with HSTS too, and sets no cookie.
    let failed = http
        .post(format!("{base}/api/v1/session"))
        .header("content-type", "application/json")
        .body(json!({ "user": "olga", "password": "wrong" }).to_string())
        .send()
        .await
        .expect("login");
    assert_eq!(failed.status().as_u16(), 401);
    assert_hsts(failed.headers(), "failed login");
    assert!(failed.headers().get(SET_COOKIE).is_none());

    let login = http
        .post(format!("{base}/api/v1/session"))
        .header("content-type", "application/json")
        .body(json!({ "user": "olga", "password": PASSWORD }).to_string())
        .send()
        .await
        .expect("login");
    assert_eq!(login.status().as_u16(), 200);
    assert_hsts(login.headers(), "login");
    let cookie = login
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("Set-Cookie on login")
        .to_owned();
    let body: serde_json::Value =
        serde_json::from_str(&login.text().await.expect("login body")).expect("JSON");
    let session = body["session"].as_str().expect("session");
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).collect();
    assert_eq!(
        attributes[0],
        format!("ferry_session={session}"),
        "{cookie}"
    );
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(
            attributes.iter().any(|a| a.eq_ignore_ascii_case(flag)),
            "the session cookie lacks `{flag}`: {cookie}"
        );
    }
    // The cookie is a working session over HTTPS.
    let me = http
        .get(format!("{base}/api/v1/session"))
        .header("cookie", format!("ferry_session={session}"))
        .send()
        .await
        .expect("whoami");
    assert_eq!(me.status().as_u16(), 200);
    assert_hsts(me.headers(), "whoami");

    // Plain HTTP to the TLS port: no HTTP answer, whatever the client.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("plain client")
        .get(format!("http://{}/health", ferry.admin))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
    let mut tcp = tokio::net::TcpStream::connect(ferry.admin)
        .await
        .expect("tcp");
    tcp.write_all(
        b"POST /api/v1/session HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
          content-length: 45\r\n\r\n{\"user\":\"olga\",\"password\":\"correct horse\"}",
    )
    .await
    .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .ok();
    assert!(
        !answer.windows(5).any(|w| w == b"HTTP/"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // At most a TLS alert record (content type 21) comes back.
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "not a TLS alert: {answer:02x?}"
    );

    assert!(ferry.terminate(), "{}", ferry.output());
    let refused = common::audit_records(&config)
        .into_iter()
        .filter(|r| {
            r["action"] == "tls_rejected" && r["target"] == "admin" && r["outcome"] == "failure"
        })
        .count();
    assert!(
        refused >= 2,
        "both plain-HTTP attempts are audited ({refused})"
    );
}
