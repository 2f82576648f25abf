//! The SMTP client against a real SMTP server on loopback (`ferry_testkit::smtp_peer`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixtures are known good

use std::time::Duration;

use ferry_alerts::smtp::{self, Mail, SmtpError, SmtpSettings};
use ferry_testkit::TestPki;
use ferry_testkit::smtp_peer::SmtpPeer;
use ferry_tls::{ClientTlsSettings, ServerTlsSettings};

fn mail() -> Mail {
    Mail {
        from: "ferry@example.org".into(),
        to: vec!["a@example.org".into(), "b@example.org".into()],
        subject: "[ferry] ALERT x on n".into(),
        body: "line one\n.starts with a dot\n".into(),
    }
}

fn settings(pki: &TestPki, port: u16, creds: Option<(&str, &str)>) -> SmtpSettings {
    SmtpSettings {
        server: format!("127.0.0.1:{port}"),
        starttls: true,
        tls: Some(
            ferry_tls::client_config(&ClientTlsSettings {
                ca: Some(pki.ca_cert_path()),
                ..ClientTlsSettings::default()
            })
            .expect("client tls"),
        ),
        credentials: creds.map(|(u, p)| (u.to_owned(), p.to_owned())),
        helo: "test-node".into(),
        timeout: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn sends_over_starttls_with_auth_plain() {
    let pki = TestPki::new("smtp");
    let cert = pki.server(&["127.0.0.1"]);
    let tls = ferry_tls::server_config(&ServerTlsSettings::new(cert.cert, cert.key)).unwrap();
    let peer = SmtpPeer::start(Some(tls)).await.unwrap();
    smtp::send(
        &settings(&pki, peer.addr().port(), Some(("user", "pw"))),
        &mail(),
    )
    .await
    .expect("sent");
    let mails = peer.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert!(m.tls);
    assert_eq!(m.auth, Some(("user".into(), "pw".into())));
    assert_eq!(m.to, vec!["a@example.org", "b@example.org"]);
    assert!(
        m.data.contains("Subject: [ferry] ALERT x on n\r\n"),
        "{}",
        m.data
    );
    assert!(
        m.data
            .ends_with("\r\n\r\nline one\r\n.starts with a dot\r\n"),
        "dot-stuffing undone by the server: {:?}",
        m.data
    );
}

#[tokio::test]
async fn refuses_a_server_without_starttls() {
    let pki = TestPki::new("smtp");
    let peer = SmtpPeer::start(None).await.unwrap();
    let err = smtp::send(
        &settings(&pki, peer.addr().port(), Some(("user", "pw"))),
        &mail(),
    )
    .await
    .expect_err("no STARTTLS offered");
    assert!(matches!(err, SmtpError::Policy { .. }), "{err}");
    assert!(err.to_string().contains("STARTTLS"), "{err}");
    assert!(peer.mails().is_empty(), "nothing was sent in plain text");
}

#[tokio::test]
async fn refuses_a_certificate_from_another_ca() {
    let pki = TestPki::new("smtp");
    let other = TestPki::new("other");
    let cert = other.server(&["127.0.0.1"]);
    let tls = ferry_tls::server_config(&ServerTlsSettings::new(cert.cert, cert.key)).unwrap();
    let peer = SmtpPeer::start(Some(tls)).await.unwrap();
    let err = smtp::send(
        &settings(&pki, peer.addr().port(), Some(("user", "pw"))),
        &mail(),
    )
    .await
    .expect_err("untrusted certificate");
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
    assert!(peer.mails().is_empty());
}

#[tokio::test]
async fn plaintext_without_credentials_is_allowed_when_configured() {
    let peer = SmtpPeer::start(None).await.unwrap();
    let plain = SmtpSettings {
        server: peer.addr().to_string(),
        starttls: false,
        tls: None,
        credentials: None,
        helo: "n".into(),
        timeout: Duration::from_secs(5),
    };
    smtp::send(&plain, &mail()).await.expect("sent");
    let mails = peer.wait_for(1, Duration::from_secs(5)).await;
    assert!(!mails[0].tls);
    let with_creds = SmtpSettings {
        credentials: Some(("u".into(), "p".into())),
        ..plain
    };
    let err = smtp::send(&with_creds, &mail())
        .await
        .expect_err("no creds in plain text");
    assert!(err.to_string().contains("without TLS"), "{err}");
}
