//! Certificate hot reload (SECURITY.md T28): replacing a listener's certificate and key
//! files makes new handshakes present the new certificate within a few seconds, a connection
//! opened before keeps working, the expiry gauge follows, and a broken new file is reported
//! while the previous certificate stays in service.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Ferry, adt, config_with_channels, toml_path};
use ferry_testkit::{CertFiles, TestPki};
use ferry_tls::ClientTlsSettings;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

type Tls = TlsStream<TcpStream>;

async fn connect(addr: std::net::SocketAddr, pki: &TestPki) -> Tls {
    let config = ferry_tls::client_config(&ClientTlsSettings {
        ca: Some(pki.ca_cert_path()),
        cert: None,
        key: None,
    })
    .expect("client tls");
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    TlsConnector::from(Arc::clone(&config))
        .connect(ferry_tls::server_name("localhost").expect("name"), tcp)
        .await
        .expect("handshake")
}

/// The certificate the server presented on this connection.
fn presented(tls: &Tls) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("peer certificate")
        .clone()
        .into_owned()
}

fn der_of(path: &Path) -> CertificateDer<'static> {
    ferry_tls::load_certs(path).expect("load")[0].clone()
}

fn serial(cert: &CertificateDer<'_>) -> String {
    ferry_tls::certificate_info(cert, ferry_tls::CertificateKind::Server)
        .expect("x509")
        .serial
}

/// One MLLP exchange on an open TLS connection; the ACK's MSA-1.
async fn exchange(tls: &mut Tls, message: &[u8]) -> String {
    let mut frame = vec![0x0b];
    frame.extend_from_slice(message);
    frame.extend_from_slice(&[0x1c, 0x0d]);
    tls.write_all(&frame).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(&[0x1c, 0x0d]) {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .expect("ACK in time")
            .expect("read");
        assert!(n > 0, "connection closed before the ACK");
        got.extend_from_slice(&buf[..n]);
    }
    let ack = &got[1..got.len() - 2];
    ferry_hl7::ack::parse_ack(ack)
        .expect("ACK")
        .code
        .as_str()
        .to_owned()
}

/// Replace the listener's files the way an operator's tooling does: write aside, rename
/// over (key first, then certificate: the half-way state is a mismatched pair).
fn install(files: &CertFiles, cert: &Path, key: &Path) {
    for (from, to) in [(&files.key, key), (&files.cert, cert)] {
        let aside = to.with_extension("new");
        std::fs::copy(from, &aside).expect("copy");
        std::fs::rename(&aside, to).expect("rename");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replaced_certificate_files_are_served_to_new_connections_without_dropping_old_ones() {
    let pki = TestPki::new("reload");
    let first = pki.server(&["localhost", "127.0.0.1"]);
    let second = pki.server(&["localhost", "127.0.0.1"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    install(&first, &cert, &key);
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "secure"
source = {{ type = "mllp", listen = "127.0.0.1:0", tls = {{ cert = {cert}, key = {key} }} }}

  [[channel.destination]]
  name = "archive"
  type = "file"
  directory = {out}
"#,
            cert = toml_path(&cert),
            key = toml_path(&key),
            out = toml_path(&dir.path().join("out")),
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let addr = ferry.listener("secure");
    let mut open = connect(addr, &pki).await;
    assert_eq!(presented(&open), der_of(&first.cert));
    assert_eq!(exchange(&mut open, &adt("R1")).await, "AA");

    install(&second, &cert, &key);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let fresh = connect(addr, &pki).await;
        if presented(&fresh) == der_of(&second.cert) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new connections still get the old certificate\n{}",
            ferry.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The connection opened before the swap is untouched.
    assert_eq!(exchange(&mut open, &adt("R2")).await, "AA");
    let (_, metrics) = ferry.admin_get("/metrics").await;
    let new_serial = serial(&der_of(&second.cert));
    assert!(
        metrics.contains(&format!("serial=\"{new_serial}\"")),
        "the gauge shows the new certificate {new_serial}:\n{metrics}"
    );
    assert!(
        !metrics.contains(&format!("serial=\"{}\"", serial(&der_of(&first.cert)))),
        "the old certificate left the gauge"
    );

    // A broken certificate file: reported, and the second certificate is still served.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("break");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ferry.output().contains("still serving the previous one") {
        assert!(
            Instant::now() < deadline,
            "the broken file was not reported\n{}",
            ferry.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut fresh = connect(addr, &pki).await;
    assert_eq!(presented(&fresh), der_of(&second.cert));
    assert_eq!(exchange(&mut fresh, &adt("R3")).await, "AA");
    assert_eq!(exchange(&mut open, &adt("R4")).await, "AA");
}

/// One HTTP/1.1 GET on an open (keep-alive) connection; (status, body).
async fn http_get(tls: &mut Tls, path: &str) -> (u16, String) {
    tls.write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("write request");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("content-length");
            if got.len() >= end + 4 + length {
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("status");
                let body = String::from_utf8_lossy(&got[end + 4..end + 4 + length]).into_owned();
                return (status, body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "connection closed before the response");
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_reloads_its_certificate_like_the_channel_listeners() {
    let pki = TestPki::new("admin reload");
    let first = pki.server(&["localhost", "127.0.0.1"]);
    let second = pki.server(&["localhost", "127.0.0.1"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("admin.pem"), dir.path().join("admin.key"));
    install(&first, &cert, &key);
    let config = common::write_config(
        dir.path(),
        &format!(
            "[store]\npath = {}\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntls = {{ cert = {}, key = {} }}\n",
            toml_path(&dir.path().join("ferry.db")),
            toml_path(&cert),
            toml_path(&key),
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let mut open = connect(ferry.admin, &pki).await;
    assert_eq!(presented(&open), der_of(&first.cert));
    assert_eq!(http_get(&mut open, "/health").await.0, 200);

    install(&second, &cert, &key);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut fresh = loop {
        let fresh = connect(ferry.admin, &pki).await;
        if presented(&fresh) == der_of(&second.cert) {
            break fresh;
        }
        assert!(
            Instant::now() < deadline,
            "new admin connections still get the old certificate\n{}",
            ferry.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The connection opened before the swap still works, on the old certificate.
    assert_eq!(presented(&open), der_of(&first.cert));
    assert_eq!(http_get(&mut open, "/health").await.0, 200);
    // The expiry gauge follows the admin certificate too.
    let (status, metrics) = http_get(&mut fresh, "/metrics").await;
    assert_eq!(status, 200);
    let new_serial = serial(&der_of(&second.cert));
    assert!(
        metrics.contains(&format!(
            "connector=\"admin\",kind=\"server\",subject=\"CN=localhost\",serial=\"{new_serial}\""
        )),
        "the gauge shows the new admin certificate {new_serial}:\n{metrics}"
    );
    assert!(
        !metrics.contains(&format!("serial=\"{}\"", serial(&der_of(&first.cert)))),
        "the old admin certificate left the gauge:\n{metrics}"
    );
    assert!(
        ferry.output().contains("TLS certificate reloaded"),
        "{}",
        ferry.output()
    );
}
