//! Error messages: every file problem names the file and says what is wrong with it.

use std::path::{Path, PathBuf};

use ferry_testkit::TestPki;
use ferry_tls::{
    ClientTlsSettings, ServerTlsSettings, TlsError, client_config, load_certs, load_private_key,
    load_roots, server_config, server_name,
};

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write test file");
    path
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read test file")
}

#[test]
fn missing_file_names_the_path() {
    let pki = TestPki::new("errors");
    let missing = pki.dir().join("certs/client.pem");
    let error = load_certs(&missing).expect_err("missing file");
    assert!(matches!(error, TlsError::Read { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("{}: cannot read file: ", missing.display())),
        "{message}"
    );

    let error = server_config(&ServerTlsSettings::new(&missing, pki.dir().join("k.pem")))
        .expect_err("missing cert");
    assert!(
        error
            .to_string()
            .starts_with(&missing.display().to_string())
    );
}

#[test]
fn file_without_certificate() {
    let pki = TestPki::new("errors");
    let files = pki.client("his01", &[]);
    // A key file where a certificate is expected.
    let error = load_certs(&files.key).expect_err("no cert");
    assert_eq!(
        error.to_string(),
        format!(
            "{}: no certificate found in PEM file (expected a `-----BEGIN CERTIFICATE-----` block)",
            files.key.display()
        )
    );
    // Not PEM at all (e.g. DER or a stray text file).
    let text = write(pki.dir(), "notes.txt", "this is not a certificate\n");
    assert!(matches!(
        load_certs(&text),
        Err(TlsError::NoCertificate { path }) if path == text
    ));
    // The same file as a listener's `client_ca`: the error names the CA file.
    let server = pki.server(&["localhost"]);
    let error = server_config(&ServerTlsSettings {
        client_ca: Some(text.clone()),
        ..ServerTlsSettings::new(&server.cert, &server.key)
    })
    .expect_err("bad client_ca");
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}: no certificate found", text.display())),
        "{error}"
    );
}

#[test]
fn file_without_private_key() {
    let pki = TestPki::new("errors");
    let files = pki.client("his01", &[]);
    let error = load_private_key(&files.cert).expect_err("no key");
    assert!(
        error.to_string().starts_with(&format!(
            "{}: no private key found in PEM file",
            files.cert.display()
        )),
        "{error}"
    );
}

#[test]
fn encrypted_and_duplicate_keys() {
    let pki = TestPki::new("errors");
    let encrypted = write(
        pki.dir(),
        "encrypted.key",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let error = load_private_key(&encrypted).expect_err("encrypted");
    assert!(
        matches!(error, TlsError::EncryptedPrivateKey { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("encrypted with a passphrase"));

    let a = pki.client("a", &[]);
    let b = pki.client("b", &[]);
    let two = write(
        pki.dir(),
        "two.key",
        &format!("{}{}", read(&a.key), read(&b.key)),
    );
    let error = load_private_key(&two).expect_err("two keys");
    assert_eq!(
        error.to_string(),
        format!(
            "{}: found 2 private keys in PEM file, expected exactly one",
            two.display()
        )
    );
}

#[test]
fn malformed_pem() {
    let pki = TestPki::new("errors");
    let bad = write(
        pki.dir(),
        "bad.pem",
        "-----BEGIN CERTIFICATE-----\n!!!! not base64 !!!!\n-----END CERTIFICATE-----\n",
    );
    let error = load_certs(&bad).expect_err("bad base64");
    assert!(matches!(error, TlsError::Pem { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}: malformed PEM: ", bad.display())),
        "{error}"
    );

    let truncated = write(
        pki.dir(),
        "truncated.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n",
    );
    assert!(matches!(load_certs(&truncated), Err(TlsError::Pem { .. })));

    // Valid PEM, but the DER inside is not a certificate.
    let garbage = write(
        pki.dir(),
        "garbage-ca.pem",
        "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
    );
    let error = load_roots(&garbage).expect_err("not a certificate");
    assert!(
        error.to_string().starts_with(&format!(
            "{}: certificate #1 cannot be used",
            garbage.display()
        )),
        "{error}"
    );
}

#[test]
fn key_that_does_not_match_the_certificate() {
    let pki = TestPki::new("errors");
    let server = pki.server(&["localhost"]);
    let other = pki.server(&["localhost"]);
    let error =
        server_config(&ServerTlsSettings::new(&server.cert, &other.key)).expect_err("mismatch");
    assert_eq!(
        error.to_string(),
        format!(
            "{}: private key does not match the certificate in {}",
            other.key.display(),
            server.cert.display()
        )
    );

    let client = pki.client("his01", &[]);
    let error = client_config(&ClientTlsSettings {
        ca: Some(pki.ca_cert_path()),
        cert: Some(client.cert.clone()),
        key: Some(other.key.clone()),
    })
    .expect_err("mismatch");
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");
}

#[test]
fn certificate_and_key_in_one_file() {
    let pki = TestPki::new("errors");
    let server = pki.server(&["localhost"]);
    let both = write(
        pki.dir(),
        "combined.pem",
        &format!("{}{}", read(&server.cert), read(&server.key)),
    );
    server_config(&ServerTlsSettings::new(&both, &both)).expect("one file for cert and key");
}

#[test]
fn listener_settings_errors() {
    let pki = TestPki::new("errors");
    let server = pki.server(&["localhost"]);

    let error = server_config(&ServerTlsSettings {
        allowed_clients: vec!["his01".into()],
        ..ServerTlsSettings::new(&server.cert, &server.key)
    })
    .expect_err("allow-list without client_ca");
    assert!(
        matches!(error, TlsError::AllowListWithoutClientCa),
        "{error:?}"
    );
    assert!(error.to_string().contains("set `client_ca`"));

    let error = server_config(&ServerTlsSettings {
        client_ca: Some(pki.ca_cert_path()),
        allowed_clients: vec!["his01".into(), "  ".into()],
        ..ServerTlsSettings::new(&server.cert, &server.key)
    })
    .expect_err("blank entry");
    assert_eq!(error.to_string(), "`allowed_clients` entry #2 is empty");

    let error = server_config(&ServerTlsSettings {
        cert: PathBuf::new(),
        ..ServerTlsSettings::new(&server.cert, &server.key)
    })
    .expect_err("no cert");
    assert!(
        matches!(
            error,
            TlsError::MissingSetting {
                setting: "cert",
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn client_identity_needs_cert_and_key() {
    let pki = TestPki::new("errors");
    let files = pki.client("his01", &[]);
    let ca = Some(pki.ca_cert_path());

    let error = client_config(&ClientTlsSettings {
        ca: ca.clone(),
        cert: Some(files.cert.clone()),
        key: None,
    })
    .expect_err("cert without key");
    assert_eq!(
        error.to_string(),
        format!(
            "TLS `cert` is set ({}) but `key` is not: a client identity needs both",
            files.cert.display()
        )
    );

    let error = client_config(&ClientTlsSettings {
        ca,
        cert: None,
        key: Some(files.key.clone()),
    })
    .expect_err("key without cert");
    assert!(
        matches!(error, TlsError::KeyWithoutCert { .. }),
        "{error:?}"
    );
}

#[test]
fn client_without_ca_uses_the_os_trust_store() {
    // Machines without any OS roots must get a clear error, never a client that trusts nothing.
    match client_config(&ClientTlsSettings::default()) {
        Ok(config) => assert!(config.alpn_protocols.is_empty()),
        Err(error) => {
            assert!(matches!(error, TlsError::NoNativeRoots { .. }), "{error:?}");
            assert!(error.to_string().contains("set `ca`"));
        }
    }
}

#[test]
fn server_names() {
    for ok in [
        "localhost",
        "his01.hospital.local",
        "127.0.0.1",
        "::1",
        "[::1]",
    ] {
        server_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    assert!(matches!(
        server_name("127.0.0.1"),
        Ok(rustls_pki_types::ServerName::IpAddress(_))
    ));
    for bad in ["", "not a host", "bad_name!.example"] {
        let error = server_name(bad).expect_err(bad);
        assert_eq!(
            error.to_string(),
            format!(
                "`{bad}` is not a valid TLS server name (expected a DNS name or an IP address)"
            )
        );
    }
}
