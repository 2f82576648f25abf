//! Real handshakes over loopback TCP with tokio-rustls, certificates from `ferry_testkit`.
//!
//! Each test starts a one-connection server with a `ferry_tls` server config and dials it
//! with a client config, then exchanges one line of application data. A refused handshake
//! must fail on the server in `accept`, i.e. before the server could read any application
//! byte.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ferry_testkit::{CertFiles, TestPki};
use ferry_tls::{
    ClientTlsSettings, PROTOCOL_VERSIONS, PeerIdentity, ServerTlsSettings, client_config,
    client_config_with_alpn, crypto_provider, peer_identity, refused_client, server_config,
    server_config_with_alpn, server_name,
};
use rustls::{CertificateError, ClientConfig, ProtocolVersion, RootCertStore, ServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// What the server side saw.
#[derive(Debug)]
struct ServerSide {
    identity: Option<PeerIdentity>,
    version: Option<ProtocolVersion>,
    alpn: Option<Vec<u8>>,
    line: String,
}

/// What the client side saw.
#[derive(Debug)]
struct ClientSide {
    version: Option<ProtocolVersion>,
    alpn: Option<Vec<u8>>,
    reply: String,
}

struct Outcome {
    server: Result<ServerSide, std::io::Error>,
    client: Result<ClientSide, std::io::Error>,
}

/// One connection: handshake, client sends `hello`, server answers `ok`.
async fn exchange(server: Arc<ServerConfig>, client: Arc<ClientConfig>, name: &str) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let acceptor = TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        // A refused handshake returns here: the application never gets a stream to read.
        let tls = acceptor.accept(tcp).await?;
        let (_, conn) = tls.get_ref();
        let identity = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(peer_identity);
        let version = conn.protocol_version();
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let mut tls = BufReader::new(tls);
        let mut line = String::new();
        tls.read_line(&mut line).await?;
        tls.get_mut().write_all(b"ok\n").await?;
        tls.get_mut().shutdown().await?;
        Ok::<_, std::io::Error>(ServerSide {
            identity,
            version,
            alpn,
            line: line.trim_end().to_owned(),
        })
    });

    let name = server_name(name).expect("server name");
    let client_result = async {
        let tcp = TcpStream::connect(addr).await?;
        let tls = TlsConnector::from(client).connect(name, tcp).await?;
        let (_, conn) = tls.get_ref();
        let version = conn.protocol_version();
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let mut tls = BufReader::new(tls);
        tls.get_mut().write_all(b"hello\n").await?;
        let mut reply = String::new();
        let n = tls.read_line(&mut reply).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "server closed without answering",
            ));
        }
        Ok(ClientSide {
            version,
            alpn,
            reply: reply.trim_end().to_owned(),
        })
    };
    let client = tokio::time::timeout(Duration::from_secs(10), client_result)
        .await
        .expect("client side timed out");
    let server = tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .expect("server side timed out")
        .expect("server task panicked");
    Outcome { server, client }
}

fn listener(files: &CertFiles) -> ServerTlsSettings {
    ServerTlsSettings::new(&files.cert, &files.key)
}

fn mtls_listener(pki: &TestPki, files: &CertFiles, allowed: &[&str]) -> ServerTlsSettings {
    ServerTlsSettings {
        client_ca: Some(pki.ca_cert_path()),
        allowed_clients: allowed.iter().map(|s| (*s).to_owned()).collect(),
        ..listener(files)
    }
}

fn trusting(pki: &TestPki) -> ClientTlsSettings {
    ClientTlsSettings {
        ca: Some(pki.ca_cert_path()),
        cert: None,
        key: None,
    }
}

fn with_identity(pki: &TestPki, files: &CertFiles) -> ClientTlsSettings {
    ClientTlsSettings {
        cert: Some(files.cert.clone()),
        key: Some(files.key.clone()),
        ..trusting(pki)
    }
}

fn assert_ok(outcome: &Outcome) -> (&ServerSide, &ClientSide) {
    let server = outcome.server.as_ref().expect("server side succeeds");
    let client = outcome.client.as_ref().expect("client side succeeds");
    assert_eq!(server.line, "hello");
    assert_eq!(client.reply, "ok");
    (server, client)
}

/// The rustls error inside a tokio-rustls I/O error.
fn rustls_error(error: &std::io::Error) -> &rustls::Error {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {error:?}"))
}

fn assert_refused_by_server(outcome: &Outcome) -> &rustls::Error {
    let server_error = outcome
        .server
        .as_ref()
        .expect_err("the server must refuse the handshake");
    assert!(
        outcome.client.is_err(),
        "the client must not get an answer from a server that refused it"
    );
    rustls_error(server_error)
}

/// Everything logged at WARN or above by this test binary.
///
/// A global subscriber (installed once) rather than a per-test `set_default`: tracing caches
/// per-callsite interest across threads, which makes scoped subscribers in parallel tests
/// flaky. Tests look for strings unique to themselves.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

static LOGS: OnceLock<Logs> = OnceLock::new();

fn logs() -> &'static Logs {
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("install the log capture");
        logs
    })
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn server_only_tls_by_dns_name_and_by_ip() {
    let pki = TestPki::new("hospital");
    let server =
        server_config(&listener(&pki.server(&["localhost", "127.0.0.1"]))).expect("server config");
    let client = client_config(&trusting(&pki)).expect("client config");

    for name in ["localhost", "127.0.0.1"] {
        let outcome = exchange(server.clone(), client.clone(), name).await;
        let (server_side, client_side) = assert_ok(&outcome);
        assert_eq!(
            server_side.identity, None,
            "no client certificate was asked for"
        );
        assert_eq!(client_side.version, Some(ProtocolVersion::TLSv1_3));
        assert_eq!(client_side.alpn, None);
    }
}

#[tokio::test]
async fn mtls_without_allow_list_accepts_any_client_of_the_ca() {
    let pki = TestPki::new("hospital");
    let server = server_config(&mtls_listener(&pki, &pki.server(&["localhost"]), &[]))
        .expect("server config");
    let client = client_config(&with_identity(
        &pki,
        &pki.client("his01", &["his01.hospital.local"]),
    ))
    .expect("client config");

    let outcome = exchange(server, client, "localhost").await;
    let (server_side, _) = assert_ok(&outcome);
    let identity = server_side.identity.as_ref().expect("client identity");
    assert_eq!(identity.common_name.as_deref(), Some("his01"));
    assert_eq!(identity.sans, vec!["his01.hospital.local".to_owned()]);
    assert_eq!(identity.to_string(), "CN=his01, SAN=[his01.hospital.local]");
}

#[tokio::test]
async fn mtls_allowed_client_by_common_name() {
    let pki = TestPki::new("hospital");
    let server = server_config(&mtls_listener(
        &pki,
        &pki.server(&["localhost"]),
        &["lab01", "his01"],
    ))
    .expect("server config");
    let client =
        client_config(&with_identity(&pki, &pki.client("his01", &[]))).expect("client config");

    let outcome = exchange(server, client, "localhost").await;
    let (server_side, _) = assert_ok(&outcome);
    assert_eq!(
        server_side.identity.as_ref().map(ToString::to_string),
        Some("CN=his01".to_owned())
    );
}

#[tokio::test]
async fn mtls_allowed_client_by_san() {
    let pki = TestPki::new("hospital");
    let server_files = pki.server(&["localhost"]);
    // DNS SANs compare without regard to case; IP, e-mail and URI SANs match as well.
    let cases: [(&[&str], &str); 4] = [
        (&["his01.hospital.local"], "HIS01.Hospital.LOCAL"),
        (&["10.1.2.3"], "10.1.2.3"),
        (&["interfaces@hospital.local"], "interfaces@hospital.local"),
        (&["spiffe://hospital/his01"], "spiffe://hospital/his01"),
    ];
    for (sans, allowed) in cases {
        let server =
            server_config(&mtls_listener(&pki, &server_files, &[allowed])).expect("server config");
        let client = client_config(&with_identity(&pki, &pki.client("gateway", sans)))
            .expect("client config");
        let outcome = exchange(server, client, "localhost").await;
        let (server_side, _) = assert_ok(&outcome);
        let identity = server_side.identity.as_ref().expect("client identity");
        assert_eq!(
            identity.sans,
            vec![sans[0].to_owned()],
            "allowed by {allowed}"
        );
    }
}

#[tokio::test]
async fn refused_client_without_certificate() {
    let pki = TestPki::new("hospital");
    let server = server_config(&mtls_listener(&pki, &pki.server(&["localhost"]), &[]))
        .expect("server config");
    let client = client_config(&trusting(&pki)).expect("client config");

    let outcome = exchange(server, client, "localhost").await;
    let error = assert_refused_by_server(&outcome);
    assert_eq!(error, &rustls::Error::NoCertificatesPresented);
}

#[tokio::test]
async fn refused_client_certificate_from_another_ca() {
    let pki = TestPki::new("hospital");
    let intruder = TestPki::new("intruder");
    let server = server_config(&mtls_listener(&pki, &pki.server(&["localhost"]), &[]))
        .expect("server config");
    // Trusts the right server CA, but its own certificate comes from another CA, with a
    // name that would be allowed.
    let client = client_config(&ClientTlsSettings {
        ca: Some(pki.ca_cert_path()),
        ..with_identity(&intruder, &intruder.client("intruder01", &[]))
    })
    .expect("client config");

    let logs = logs();
    let outcome = exchange(server, client, "localhost").await;
    let error = assert_refused_by_server(&outcome);
    assert_eq!(
        error,
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    let logs = logs.text();
    let line = logs
        .lines()
        .find(|l| l.contains("CN=intruder01"))
        .unwrap_or_else(|| panic!("the rejection names who tried: {logs}"));
    assert!(
        line.contains("WARN") && line.contains("UnknownIssuer"),
        "{line}"
    );
}

#[tokio::test]
async fn refused_client_not_in_allowed_clients() {
    let pki = TestPki::new("hospital");
    let server = server_config(&mtls_listener(
        &pki,
        &pki.server(&["localhost"]),
        &["his01", "his01.hospital.local"],
    ))
    .expect("server config");
    // Valid certificate from the right CA, but neither its CN nor its SAN is listed.
    let client = client_config(&with_identity(
        &pki,
        &pki.client("his02", &["his02.hospital.local"]),
    ))
    .expect("client config");

    let logs = logs();
    let outcome = exchange(server, client, "localhost").await;
    let error = assert_refused_by_server(&outcome);
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(CertificateError::Other(_))
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(
            "client certificate CN=his02, SAN=[his02.hospital.local] is not in allowed_clients"
        ),
        "{error}"
    );
    let server_error = outcome.server.as_ref().expect_err("refused");
    let identity = refused_client(server_error).expect("the refusal carries the identity");
    assert_eq!(identity.common_name.as_deref(), Some("his02"));

    let logs = logs.text();
    let line = logs
        .lines()
        .find(|l| l.contains("CN=his02, SAN=[his02.hospital.local]"))
        .unwrap_or_else(|| panic!("the rejection names who tried: {logs}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("not in allowed_clients"), "{line}");
    assert!(!logs.contains("PRIVATE KEY"), "{logs}");
}

#[tokio::test]
async fn refused_expired_client_certificate() {
    let pki = TestPki::new("hospital");
    let server = server_config(&mtls_listener(
        &pki,
        &pki.server(&["localhost"]),
        &["his01"],
    ))
    .expect("server config");
    let client =
        client_config(&with_identity(&pki, &pki.expired_client("his01"))).expect("client config");

    let outcome = exchange(server, client, "localhost").await;
    let error = assert_refused_by_server(&outcome);
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{error:?}"
    );
    let server_error = outcome.server.as_ref().expect_err("refused");
    assert_eq!(
        refused_client(server_error),
        None,
        "not an allow-list refusal"
    );
}

#[tokio::test]
async fn client_refuses_server_with_wrong_hostname() {
    let pki = TestPki::new("hospital");
    let server =
        server_config(&listener(&pki.server(&["his01.hospital.local"]))).expect("server config");
    let client = client_config(&trusting(&pki)).expect("client config");

    // The certificate is valid and from the trusted CA, but it does not name `localhost`.
    let outcome = exchange(server, client, "localhost").await;
    let client_error = outcome
        .client
        .as_ref()
        .expect_err("hostname verification must fail");
    assert!(
        matches!(
            rustls_error(client_error),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{client_error:?}"
    );
    assert!(outcome.server.is_err());
}

#[tokio::test]
async fn client_refuses_server_from_untrusted_ca() {
    let pki = TestPki::new("hospital");
    let other = TestPki::new("other");
    let server = server_config(&listener(&other.server(&["localhost"]))).expect("server config");
    let client = client_config(&trusting(&pki)).expect("client config");

    let outcome = exchange(server, client, "localhost").await;
    let client_error = outcome.client.as_ref().expect_err("untrusted server");
    assert_eq!(
        rustls_error(client_error),
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[tokio::test]
async fn ca_bundle_with_several_cas_trusts_each() {
    let a = TestPki::new("site-a");
    let b = TestPki::new("site-b");
    let bundle = a.dir().join("bundle.pem");
    std::fs::write(&bundle, format!("{}{}", a.ca_pem(), b.ca_pem())).expect("write bundle");
    assert_eq!(ferry_tls::load_roots(&bundle).expect("roots").len(), 2);

    let client = client_config(&ClientTlsSettings {
        ca: Some(bundle),
        cert: None,
        key: None,
    })
    .expect("client config");
    for pki in [&a, &b] {
        let server = server_config(&listener(&pki.server(&["localhost"]))).expect("server config");
        let outcome = exchange(server, client.clone(), "localhost").await;
        assert_ok(&outcome);
    }
}

/// A client that only speaks TLS 1.2, with Ferry's provider and trust.
fn tls12_only_client(pki: &TestPki) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca_der().clone()).expect("add CA");
    let config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2 config")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

#[tokio::test]
async fn tls12_client_succeeds_and_policy_is_tls12_and_tls13_only() {
    let pki = TestPki::new("hospital");
    let server = server_config(&listener(&pki.server(&["localhost"]))).expect("server config");

    let outcome = exchange(server.clone(), tls12_only_client(&pki), "localhost").await;
    let (server_side, client_side) = assert_ok(&outcome);
    assert_eq!(client_side.version, Some(ProtocolVersion::TLSv1_2));
    assert_eq!(server_side.version, Some(ProtocolVersion::TLSv1_2));

    let modern = client_config(&trusting(&pki)).expect("client config");
    let outcome = exchange(server, modern, "localhost").await;
    assert_eq!(
        assert_ok(&outcome).1.version,
        Some(ProtocolVersion::TLSv1_3)
    );

    // Nothing older than TLS 1.2 is configured (rustls cannot speak it anyway).
    let versions: Vec<_> = PROTOCOL_VERSIONS.iter().map(|v| v.version).collect();
    assert_eq!(
        versions,
        vec![ProtocolVersion::TLSv1_3, ProtocolVersion::TLSv1_2]
    );
    // Every cipher suite is an AEAD suite.
    for suite in &crypto_provider().cipher_suites {
        let name = format!("{:?}", suite.suite());
        assert!(
            name.contains("_GCM_") || name.contains("CHACHA20_POLY1305"),
            "{name}"
        );
    }
}

#[tokio::test]
async fn mtls_works_over_tls12_too() {
    let pki = TestPki::new("hospital");
    let server = server_config(&mtls_listener(
        &pki,
        &pki.server(&["localhost"]),
        &["his01"],
    ))
    .expect("server config");
    let files = pki.client("his01", &[]);
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca_der().clone()).expect("add CA");
    let client = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2 config")
        .with_root_certificates(roots)
        .with_client_auth_cert(
            ferry_tls::load_certs(&files.cert).expect("certs"),
            ferry_tls::load_private_key(&files.key).expect("key"),
        )
        .expect("client identity");

    let outcome = exchange(server, Arc::new(client), "localhost").await;
    let (server_side, _) = assert_ok(&outcome);
    assert_eq!(server_side.version, Some(ProtocolVersion::TLSv1_2));

    // And a TLS 1.2 client outside the allow-list is refused the same way.
    let server = server_config(&mtls_listener(
        &pki,
        &pki.server(&["localhost"]),
        &["his09"],
    ))
    .expect("server config");
    let client = client_config(&with_identity(&pki, &files)).expect("client config");
    let outcome = exchange(server, client, "localhost").await;
    assert_refused_by_server(&outcome);
}

#[tokio::test]
async fn alpn_is_negotiated_when_configured() {
    let pki = TestPki::new("hospital");
    let files = pki.server(&["localhost"]);
    let server = server_config_with_alpn(&listener(&files), &[b"http/1.1"]).expect("server config");
    let client =
        client_config_with_alpn(&trusting(&pki), &[b"h2", b"http/1.1"]).expect("client config");

    let outcome = exchange(server, client, "localhost").await;
    let (server_side, client_side) = assert_ok(&outcome);
    assert_eq!(server_side.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(client_side.alpn.as_deref(), Some(&b"http/1.1"[..]));

    let plain = server_config(&listener(&files)).expect("server config");
    assert!(plain.alpn_protocols.is_empty());
}

#[test]
fn configs_use_the_aws_lc_rs_provider_explicitly() {
    let pki = TestPki::new("hospital");
    let server = server_config(&listener(&pki.server(&["localhost"]))).expect("server config");
    let client = client_config(&trusting(&pki)).expect("client config");
    let expected = crypto_provider();
    let suites = |p: &rustls::crypto::CryptoProvider| {
        p.cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect::<Vec<_>>()
    };
    assert_eq!(suites(server.crypto_provider()), suites(&expected));
    assert_eq!(suites(client.crypto_provider()), suites(&expected));
    // No process-wide default provider was installed as a side effect.
    assert!(rustls::crypto::CryptoProvider::get_default().is_none());
}
