//! mTLS listeners refuse clients that are not allowed, before any HL7 byte is read.

use crate::common;

use std::time::Duration;

use common::{Ferry, adt, config_with_channels, plain, toml_path};
use ferry_connectors::mllp::{MllpConnection, MllpEndpoint};
use ferry_testkit::TestPki;
use ferry_tls::ClientTlsSettings;

fn endpoint(
    ferry: &Ferry,
    pki: &TestPki,
    identity: Option<&ferry_testkit::CertFiles>,
) -> MllpEndpoint {
    let tls = ferry_tls::client_config(&ClientTlsSettings {
        ca: Some(pki.ca_cert_path()),
        cert: identity.map(|i| i.cert.clone()),
        key: identity.map(|i| i.key.clone()),
    })
    .expect("client tls");
    MllpEndpoint {
        tls: Some((tls, ferry_tls::server_name("localhost").expect("name"))),
        ..plain(ferry.listener("secure"))
    }
}

/// Try to deliver one message; `Ok(code)` if an ACK came back.
async fn attempt(endpoint: &MllpEndpoint) -> Result<String, String> {
    let mut conn = MllpConnection::connect(endpoint)
        .await
        .map_err(|e| e.to_string())?;
    let ack = conn
        .exchange(&adt("X1"), Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    ferry_hl7::ack::parse_ack(&ack)
        .map(|a| a.code.as_str().to_owned())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_listener_refuses_clients_that_are_not_allowed() {
    let pki = TestPki::new("secure");
    let other_ca = TestPki::new("intruder");
    let server = pki.server(&["localhost", "127.0.0.1"]);
    let allowed = pki.client("his.hospital.local", &[]);
    let allowed_by_san = pki.client("lab-system", &["lab.hospital.local"]);
    let not_allowed = pki.client("kiosk", &[]);
    let foreign = other_ca.client("his.hospital.local", &[]);
    let expired = pki.expired_client("his.hospital.local");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "secure"
source = {{ type = "mllp", listen = "127.0.0.1:0", tls = {{ cert = {cert}, key = {key}, client_ca = {ca}, allowed_clients = ["his.hospital.local", "lab.hospital.local"] }} }}

  [[channel.destination]]
  name = "archive"
  type = "file"
  directory = {out}
"#,
            cert = toml_path(&server.cert),
            key = toml_path(&server.key),
            ca = toml_path(&pki.ca_cert_path()),
            out = toml_path(&dir.path().join("out")),
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let received = "ferry_messages_received_total{channel=\"secure\"}";

    for (who, identity) in [
        ("no client certificate", None),
        ("a certificate not on the allow-list", Some(&not_allowed)),
        ("a certificate from another CA", Some(&foreign)),
        ("an expired certificate", Some(&expired)),
    ] {
        let result = attempt(&endpoint(&ferry, &pki, identity)).await;
        assert!(result.is_err(), "client with {who} got an ACK: {result:?}");
        assert_eq!(
            ferry.metric(received).await,
            Some(0),
            "{who}: a message was read"
        );
    }
    assert_eq!(
        attempt(&endpoint(&ferry, &pki, Some(&allowed))).await,
        Ok("AA".into())
    );
    assert_eq!(
        attempt(&endpoint(&ferry, &pki, Some(&allowed_by_san))).await,
        Ok("AA".into())
    );
    assert_eq!(ferry.metric(received).await, Some(2));
    assert!(
        ferry.output().contains("TLS handshake refused"),
        "{}",
        ferry.output()
    );
}
