//! The TLS negative matrix (SECURITY.md T9) against the real binary.
//!
//! Ferry as a server: an mTLS MLLP listener and an mTLS HTTPS listener, both with
//! `client_ca`, `allowed_clients` and a `crl`, refuse a client without a certificate, with a
//! certificate from an unknown CA, with an expired certificate, with a revoked certificate,
//! with a valid certificate that is not on the allow-list, and a client that speaks only
//! TLS 1.1. Each refusal happens in
//! the handshake: nothing is received or stored, and a good client is served right after.
//!
//! TLS 1.1 cannot be spoken by rustls, so the test writes a TLS 1.1 ClientHello by hand
//! (record version 3.2, client_version 3.2, RSA/CBC suites, no `supported_versions`
//! extension) on a raw TCP socket and expects a fatal `protocol_version` alert (or a close)
//! and never a ServerHello. When `openssl` is installed, `openssl s_client -tls1_1` is run
//! as well and must fail.
//!
//! Ferry as a client: MLLP and HTTPS destinations refuse a server whose certificate names
//! another host, was issued by an unknown CA, or has expired: nothing is delivered (the
//! servers never see a request or a frame), the attempts are counted as retries, and the same
//! engine delivers to a correct server.

use crate::common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{
    Ferry, adt, client_tls, config_with_channels, https_attempt, mllp_tls_attempt, send, toml_path,
};
use ferry_testkit::http_peer::HttpPeer;
use ferry_testkit::mllp_peer::MllpPeer;
use ferry_testkit::{CertFiles, TestPki};
use ferry_tls::ServerTlsSettings;

const ALLOWED: &str = "his.hospital.local";

/// A TLS 1.1 ClientHello, byte by byte: no `supported_versions` extension, so the highest
/// version offered is the `client_version` field, 3.2 (TLS 1.1).
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[0x5a; 32]); // random
    body.push(0); // session id: empty
    // Cipher suites of the TLS 1.1 era (RSA key exchange, CBC), and the TLS 1.2 ECDHE-GCM
    // suites Ferry does speak, so that the version is the only thing wrong with this hello.
    let suites: [u16; 6] = [0xc02b, 0xc02f, 0x002f, 0x0035, 0x000a, 0xc013];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null only
    // Extensions: server_name "localhost" only.
    let name = b"localhost";
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut extensions = Vec::new();
    let mut extension = |kind: u16, data: &[u8]| {
        extensions.extend_from_slice(&kind.to_be_bytes());
        extensions.extend_from_slice(&(data.len() as u16).to_be_bytes());
        extensions.extend_from_slice(data);
    };
    extension(0x0000, &sni);
    // signature_algorithms (ECDSA P-256 SHA-256, RSA-PSS, RSA PKCS#1) and supported_groups
    // (x25519, P-256): what a TLS 1.2 server needs to pick a certificate, so the server gets
    // as far as choosing the version.
    extension(0x000d, &[0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01]);
    extension(0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);

    let mut handshake = vec![0x01]; // ClientHello
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x02]; // handshake record, TLS 1.1
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// Send the TLS 1.1 ClientHello and read what comes back until the server closes.
fn tls11_answer(addr: SocketAddr) -> Vec<u8> {
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    tcp.write_all(&tls11_client_hello()).expect("write hello");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the server neither answered nor closed: {e}"),
        }
    }
    answer
}

/// The TLS 1.1 hello is refused: a fatal `protocol_version` alert (70) or a bare close,
/// never a ServerHello (a handshake record).
fn assert_tls11_refused(addr: SocketAddr, what: &str) {
    let answer = tls11_answer(addr);
    assert!(
        answer.first() != Some(&0x16),
        "{what}: the server answered a TLS 1.1 hello with a handshake: {answer:02x?}"
    );
    if !answer.is_empty() {
        assert_eq!(answer[0], 0x15, "{what}: an alert record: {answer:02x?}");
        assert_eq!(
            answer.get(5..7),
            Some(&[2u8, 70][..]),
            "{what}: fatal protocol_version: {answer:02x?}"
        );
    }
}

/// `openssl s_client -tls1_1` (when openssl is installed) fails against `addr`.
fn assert_openssl_tls11_refused(addr: SocketAddr, pki: &TestPki, what: &str) {
    let Ok(output) = std::process::Command::new("openssl")
        .args(["s_client", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-servername")
        .arg("localhost")
        .arg("-CAfile")
        .arg(pki.ca_cert_path())
        .stdin(std::process::Stdio::null())
        .output()
    else {
        eprintln!("openssl is not installed: only the hand-written TLS 1.1 hello was tried");
        return;
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !output.status.success(),
        "{what}: openssl -tls1_1 connected:\n{text}"
    );
    // openssl's TLS 1.1 hello gets a fatal alert and no cipher (the alert it reports is
    // handshake_failure: rustls refuses that hello before it gets to the version).
    assert!(
        text.contains("Cipher is (NONE)") && text.contains("alert"),
        "{what}: openssl -tls1_1 was not refused with an alert:\n{text}"
    );
}

fn server_tls_table(server: &CertFiles, pki: &TestPki, crl: &Path) -> String {
    format!(
        "{{ cert = {}, key = {}, client_ca = {}, allowed_clients = [\"{ALLOWED}\"], crl = [{}] }}",
        toml_path(&server.cert),
        toml_path(&server.key),
        toml_path(&pki.ca_cert_path()),
        toml_path(crl)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_listeners_refuse_every_bad_client_in_the_handshake() {
    let pki = TestPki::new("matrix");
    let intruder = TestPki::new("intruder");
    let server = pki.server(&["localhost", "127.0.0.1"]);
    let good = pki.client(ALLOWED, &[]);
    let not_allowed = pki.client("kiosk.hospital.local", &[]);
    let foreign = intruder.client(ALLOWED, &[]);
    let expired = pki.expired_client(ALLOWED);
    // On the allow-list and from the CA, but revoked by its CRL.
    let revoked = pki.client(ALLOWED, &[]);
    let crl = pki.crl(&[&revoked]);
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = server_tls_table(&server, &pki, &crl);
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "mllps"
source = {{ type = "mllp", listen = "127.0.0.1:0", tls = {tls} }}

  [[channel.destination]]
  name = "archive"
  type = "file"
  directory = {out1}

[[channel]]
name = "https"
source = {{ type = "http", listen = "127.0.0.1:0", path = "/hl7", tls = {tls} }}

  [[channel.destination]]
  name = "archive"
  type = "file"
  directory = {out2}
"#,
            out1 = toml_path(&dir.path().join("out1")),
            out2 = toml_path(&dir.path().join("out2")),
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let (mllps, https) = (ferry.listener("mllps"), ferry.listener("https"));
    let received =
        |channel: &str| format!("ferry_messages_received_total{{channel=\"{channel}\"}}");

    let bad_clients: [(&str, Arc<rustls::ClientConfig>); 5] = [
        ("no client certificate", client_tls(&pki, None)),
        (
            "a certificate from an unknown CA",
            client_tls(&pki, Some(&foreign)),
        ),
        ("an expired certificate", client_tls(&pki, Some(&expired))),
        ("a revoked certificate", client_tls(&pki, Some(&revoked))),
        (
            "a certificate not in allowed_clients",
            client_tls(&pki, Some(&not_allowed)),
        ),
    ];
    // `good_sent`: messages from good clients so far (one after each refusal).
    for (good_sent, (who, tls)) in bad_clients.iter().enumerate() {
        let good_sent = good_sent as i64;
        let result = mllp_tls_attempt(mllps, tls.clone(), "TLS1").await;
        assert!(
            result.is_err(),
            "MLLP client with {who} got an ACK: {result:?}"
        );
        let result = https_attempt(https, tls.clone(), "TLS2").await;
        assert!(
            result.is_err(),
            "HTTPS client with {who} got a response: {result:?}"
        );
        for (channel, expected) in [("mllps", good_sent), ("https", 0)] {
            assert_eq!(
                ferry.metric(&received(channel)).await,
                Some(expected),
                "{channel}, {who}: a message was read"
            );
        }
        // The engine keeps serving: a good client right after each refusal.
        assert_eq!(
            mllp_tls_attempt(mllps, client_tls(&pki, Some(&good)), "TLS1").await,
            Ok("AA".into()),
            "after {who}"
        );
    }
    assert_eq!(
        ferry.metric(&received("mllps")).await,
        Some(bad_clients.len() as i64)
    );

    for (addr, what) in [(mllps, "MLLP"), (https, "HTTPS")] {
        assert_tls11_refused(addr, what);
        assert_openssl_tls11_refused(addr, &pki, what);
    }
    // The positive controls: good clients on both listeners after everything above.
    assert_eq!(
        mllp_tls_attempt(mllps, client_tls(&pki, Some(&good)), "TLS1").await,
        Ok("AA".into())
    );
    assert_eq!(
        https_attempt(https, client_tls(&pki, Some(&good)), "TLS2").await,
        Ok(200)
    );
    assert_eq!(ferry.metric(&received("https")).await, Some(1));
    assert_eq!(
        ferry.metric(&received("mllps")).await,
        Some(bad_clients.len() as i64 + 1),
        "only good clients' messages were received"
    );
    let refusals = ferry.output().matches("TLS handshake refused").count();
    assert!(
        refusals >= 2 * bad_clients.len(),
        "every refusal is logged ({refusals}):\n{}",
        ferry.output()
    );
    assert!(
        ferry.output().contains("Revoked"),
        "the log says the certificate was revoked:\n{}",
        ferry.output()
    );
}

fn peer_tls(cert: &CertFiles) -> Arc<rustls::ServerConfig> {
    ferry_tls::server_config(&ServerTlsSettings::new(&cert.cert, &cert.key)).expect("peer tls")
}

/// One channel that sends each message to an MLLP and an HTTPS destination, both trusting
/// `ca` and dialing `localhost`.
fn client_channel(name: &str, ca: &Path, mllp: &MllpPeer, http: &HttpPeer) -> String {
    format!(
        r#"
[[channel]]
name = "{name}"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "mllp"
  type = "mllp"
  address = "localhost:{mllp_port}"
  tls = {{ ca = {ca} }}
  retry = {{ initial = "50ms", max = "100ms" }}

  [[channel.destination]]
  name = "https"
  type = "http"
  url = "https://localhost:{http_port}/adt"
  tls = {{ ca = {ca} }}
  retry = {{ initial = "50ms", max = "100ms" }}
"#,
        ca = toml_path(ca),
        mllp_port = mllp.addr().port(),
        http_port = http.addr().port(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn destinations_refuse_servers_with_a_wrong_name_an_unknown_ca_or_an_expired_cert() {
    let pki = TestPki::new("partners");
    let intruder = TestPki::new("intruder");
    let cases = [
        ("good", pki.server(&["localhost", "127.0.0.1"])),
        ("wrong-name", pki.server(&["api.elsewhere.example"])),
        ("unknown-ca", intruder.server(&["localhost", "127.0.0.1"])),
        ("expired", pki.expired_server(&["localhost", "127.0.0.1"])),
    ];
    let mut peers = Vec::new();
    let mut channels = String::new();
    for (name, cert) in &cases {
        let mllp = MllpPeer::start(Some(peer_tls(cert)))
            .await
            .expect("mllp peer");
        let http = HttpPeer::start(Some(peer_tls(cert)))
            .await
            .expect("http peer");
        channels.push_str(&client_channel(name, &pki.ca_cert_path(), &mllp, &http));
        peers.push((*name, mllp, http));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(dir.path(), &channels);
    let ferry = Ferry::start(&config, &[]);
    for (name, _) in &cases {
        let mut conn = ferry.connect(name).await;
        assert_eq!(
            send(&mut conn, &adt(&format!("C-{name}")))
                .await
                .code
                .as_str(),
            "AA"
        );
    }
    // The good partner gets both deliveries: TLS works, so the refusals below are the checks.
    let (_, good_mllp, good_http) = &peers[0];
    assert_eq!(
        good_mllp.wait_for(1, Duration::from_secs(10)).await.len(),
        1
    );
    assert_eq!(
        good_http
            .wait_for("POST", 1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    for (name, mllp, http) in &peers[1..] {
        for destination in ["mllp", "https"] {
            let retries = format!(
                "ferry_delivery_retries_total{{channel=\"{name}\",destination=\"{destination}\"}}"
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let n = ferry.metric(&retries).await.unwrap_or(0);
                if n >= 2 {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name}/{destination}: {n} attempts refused so far\n{}",
                    ferry.output()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let sent = format!(
                "ferry_messages_sent_total{{channel=\"{name}\",destination=\"{destination}\"}}"
            );
            assert_eq!(ferry.metric(&sent).await, Some(0), "{name}/{destination}");
        }
        assert!(
            mllp.received().is_empty(),
            "{name}: the MLLP server got a frame"
        );
        assert!(
            http.requests().is_empty(),
            "{name}: the HTTPS server got a request"
        );
    }
    // Still serving: another message to the good partner goes through.
    let mut conn = ferry.connect("good").await;
    assert_eq!(send(&mut conn, &adt("C-good-2")).await.code.as_str(), "AA");
    assert_eq!(
        good_mllp.wait_for(2, Duration::from_secs(10)).await.len(),
        2
    );
    let output = ferry.output();
    for needle in ["not valid for name", "UnknownIssuer", "certificate expired"] {
        assert!(
            output.contains(needle),
            "the log says why ({needle}):\n{output}"
        );
    }
}

/// The value of the first sample of `/metrics` whose labels contain every `labels` pair.
fn gauge(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<i64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (labels_text, value) = rest.rsplit_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| labels_text.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

fn days_until(unix: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    (unix - now).div_euclid(86_400)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_days_until_every_loaded_certificate_expires() {
    let pki = TestPki::new("gauges");
    let server = pki.server(&["localhost", "127.0.0.1"]);
    let expired_identity = pki.expired_client("ferry-out");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "secure"
source = {{ type = "mllp", listen = "127.0.0.1:0", tls = {tls} }}

  [[channel.destination]]
  name = "api"
  type = "http"
  url = "https://localhost:9/adt"
  tls = {{ ca = {ca}, cert = {cert}, key = {key} }}
"#,
            tls = server_tls_table(&server, &pki, &pki.crl(&[])),
            ca = toml_path(&pki.ca_cert_path()),
            cert = toml_path(&expired_identity.cert),
            key = toml_path(&expired_identity.key),
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let (_, metrics) = ferry.admin_get("/metrics").await;
    let name = "ferry_tls_certificate_expiry_days";
    assert!(
        metrics.contains(&format!("# TYPE {name} gauge")),
        "{metrics}"
    );
    // TestPki: valid certificates end 2100-01-01T00:00:00Z, expired ones 2001-01-01.
    let valid = days_until(4_102_444_800);
    let expired = days_until(978_307_200);
    let server_days = gauge(
        &metrics,
        name,
        &[
            ("channel", "secure"),
            ("connector", "source"),
            ("kind", "server"),
        ],
    );
    let read = |path: &Path| {
        ferry_tls::certificates(path, ferry_tls::CertificateKind::Server).expect("read")[0]
            .not_after
    };
    assert_eq!(read(&server.cert), 4_102_444_800, "x509 notAfter");
    assert!(
        server_days.is_some_and(|d| (d - valid).abs() <= 1),
        "server: {server_days:?}, expected {valid}\n{metrics}"
    );
    for (connector, kind, expected) in [
        ("source", "ca", valid),
        // The CRL's nextUpdate (TestPki: 2100-01-01 too).
        ("source", "crl", valid),
        ("api", "ca", valid),
        ("api", "client", expired),
    ] {
        let days = gauge(
            &metrics,
            name,
            &[
                ("channel", "secure"),
                ("connector", connector),
                ("kind", kind),
            ],
        );
        assert!(
            days.is_some_and(|d| (d - expected).abs() <= 1),
            "{connector}/{kind}: {days:?}, expected {expected}\n{metrics}"
        );
    }
    assert!(
        expired < -9000,
        "an expired certificate has negative days: {expired}"
    );
}
