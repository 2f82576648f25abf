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
