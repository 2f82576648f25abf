//! CRL checking on mTLS listeners over real loopback handshakes: a revoked client certificate
//! is refused inside the handshake (PEM and DER CRLs), a valid one is served; an expired CRL
//! and a certificate no CRL speaks for are refused (fail closed); a replaced CRL file revokes
//! a certificate that was accepted before, without a new configuration; bad files are
//! reported with their path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_testkit::{CertFiles, TestPki};
use ferry_tls::{ClientTlsSettings, ServerTlsSettings, TlsError, client_config, server_name};
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn listener(pki: &TestPki, server: &CertFiles, crl: &[PathBuf]) -> ServerTlsSettings {
    ServerTlsSettings {
        client_ca: Some(pki.ca_cert_path()),
        crl: crl.to_vec(),
        ..ServerTlsSettings::new(&server.cert, &server.key)
    }
}

/// One connection from a client presenting `identity`: `Ok(())` when the server accepted the
/// handshake and echoed a byte, else the server's handshake error.
async fn connect(
    server: &Arc<ServerConfig>,
    pki: &TestPki,
    identity: &CertFiles,
) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::from(server.clone());
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        // A refused client ends here, before the server reads an application byte.
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        tls.write_all(&byte).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    });
    let client = client_config(&ClientTlsSettings {
        ca: Some(pki.ca_cert_path()),
        cert: Some(identity.cert.clone()),
        key: Some(identity.key.clone()),
    })
    .expect("client tls");
    let client_side = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = TlsConnector::from(client)
            .connect(server_name("localhost").expect("name"), tcp)
            .await?;
        tls.write_all(b"x").await?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        Ok::<_, std::io::Error>(())
    };
    let client_result = tokio::time::timeout(Duration::from_secs(10), client_side)
        .await
        .expect("client side in time");
    let server_result = tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .expect("server side in time")
        .expect("server task");
    match server_result {
        Ok(()) => {
            client_result.map_err(|e| format!("server accepted but client failed: {e}"))?;
            Ok(())
        }
        Err(e) => {
            assert!(
                client_result.is_err(),
                "client got an answer from a refused handshake"
            );
            Err(e)
        }
    }
}

#[tokio::test]
async fn a_revoked_client_is_refused_in_the_handshake_and_a_valid_one_served() {
    let pki = TestPki::new("crl");
    let server = pki.server(&["localhost"]);
    let good = pki.client("his01", &[]);
    let revoked = pki.client("stolen-laptop", &[]);
    for crl in [pki.crl(&[&revoked]), pki.crl_der(&[&revoked])] {
        let config = ferry_tls::server_config(&listener(&pki, &server, std::slice::from_ref(&crl)))
            .expect("listener with CRL");
        assert_eq!(
            connect(&config, &pki, &good).await,
            Ok(()),
            "{}",
            crl.display()
        );
        let error = connect(&config, &pki, &revoked)
            .await
            .expect_err("revoked client refused");
        assert!(error.contains("Revoked"), "{}: {error}", crl.display());
    }
    // Without `crl`, the same revoked certificate is just a valid certificate of the CA.
    let config = ferry_tls::server_config(&listener(&pki, &server, &[])).expect("listener");
    assert_eq!(connect(&config, &pki, &revoked).await, Ok(()));
}

#[tokio::test]
async fn an_expired_crl_and_an_unknown_status_are_refused() {
    let pki = TestPki::new("crl policy");
    let other = TestPki::new("other ca");
    let server = pki.server(&["localhost"]);
    let good = pki.client("his01", &[]);

    // nextUpdate passed: a stale list cannot vouch for anyone, revoked or not.
    let config = ferry_tls::server_config(&listener(&pki, &server, &[pki.expired_crl(&[])]))
        .expect("an expired CRL still loads");
    let error = connect(&config, &pki, &good)
        .await
        .expect_err("expired CRL");
    assert!(error.contains("revocation list expired"), "{error}");

    // Only another CA's CRL: nothing speaks for this CA's certificates.
    let config =
        ferry_tls::server_config(&listener(&pki, &server, &[other.crl(&[])])).expect("listener");
    let error = connect(&config, &pki, &good)
        .await
        .expect_err("unknown status");
    assert!(error.contains("UnknownRevocationStatus"), "{error}");

    // Both CRLs: the right one decides.
    let config =
        ferry_tls::server_config(&listener(&pki, &server, &[other.crl(&[]), pki.crl(&[])]))
            .expect("listener");
    assert_eq!(connect(&config, &pki, &good).await, Ok(()));
}

/// Replace a file the way tooling does: write aside, rename over.
fn install(from: &Path, to: &Path) {
    let aside = to.with_extension("new");
    std::fs::copy(from, &aside).expect("copy");
    std::fs::rename(&aside, to).expect("rename");
}

#[tokio::test]
async fn a_replaced_crl_revokes_a_client_that_was_accepted_before() {
    let pki = TestPki::new("crl reload");
    let server = pki.server(&["localhost"]);
    let client = pki.client("lab", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let crl = dir.path().join("clients.crl");
    install(&pki.crl(&[]), &crl);
    let (config, handle) = ferry_tls::reloadable_server_config(
        &listener(&pki, &server, std::slice::from_ref(&crl)),
        &[],
    )
    .expect("listener");
    assert_eq!(handle.crl_paths(), std::slice::from_ref(&crl));
    assert_eq!(connect(&config, &pki, &client).await, Ok(()));
    assert!(!handle.reload_crls_if_changed().expect("unchanged"));

    install(&pki.crl(&[&client]), &crl);
    assert!(handle.reload_crls_if_changed().expect("reloaded"));
    let error = connect(&config, &pki, &client)
        .await
        .expect_err("revoked now");
    assert!(error.contains("Revoked"), "{error}");

    // A broken file is reported and the last good lists stay in force.
    std::fs::write(&crl, "-----BEGIN X509 CRL-----\nnot base64 at all\n").expect("break");
    let error = handle.reload_crls_if_changed().expect_err("broken CRL");
    assert!(
        error.to_string().starts_with(&crl.display().to_string()),
        "{error}"
    );
    let error = connect(&config, &pki, &client)
        .await
        .expect_err("still revoked");
    assert!(error.contains("Revoked"), "{error}");

    // A listener without `crl` has nothing to reload.
    let (_, plain) =
        ferry_tls::reloadable_server_config(&listener(&pki, &server, &[]), &[]).expect("listener");
    assert!(plain.crl_paths().is_empty());
    assert!(!plain.reload_crls_if_changed().expect("no CRLs"));
}

#[test]
fn bad_crl_settings_and_files_name_the_problem() {
    let pki = TestPki::new("crl errors");
    let server = pki.server(&["localhost"]);
    let dir = tempfile::tempdir().expect("tempdir");

    let error = ferry_tls::server_config(&ServerTlsSettings {
        crl: vec![pki.crl(&[])],
        ..ServerTlsSettings::new(&server.cert, &server.key)
    })
    .expect_err("crl without client_ca");
    assert!(matches!(error, TlsError::CrlWithoutClientCa), "{error:?}");

    let missing = dir.path().join("missing.crl");
    let error = ferry_tls::server_config(&listener(&pki, &server, std::slice::from_ref(&missing)))
        .expect_err("missing file");
    assert!(matches!(error, TlsError::Read { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with(&missing.display().to_string())
    );

    // A PEM file without a CRL block (a certificate given by mistake).
    let error = ferry_tls::server_config(&listener(&pki, &server, &[pki.ca_cert_path()]))
        .expect_err("a certificate is not a CRL");
    assert!(matches!(error, TlsError::NoCrl { .. }), "{error:?}");
    assert!(error.to_string().contains("X509 CRL"), "{error}");

    // DER that is not a CRL.
    let garbage = dir.path().join("garbage.der");
    std::fs::write(&garbage, [0x30, 0x03, 0x02, 0x01, 0x05]).expect("write");
    let error = ferry_tls::server_config(&listener(&pki, &server, std::slice::from_ref(&garbage)))
        .expect_err("not a CRL");
    assert!(
        matches!(error, TlsError::BadCrl { index: 1, .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with(&garbage.display().to_string()),
        "{error}"
    );
}

#[test]
fn crl_info_reads_issuer_and_next_update() {
    let pki = TestPki::new("crl info");
    let infos = ferry_tls::crl_info(pki.crl(&[])).expect("info");
    assert_eq!(infos.len(), 1);
    assert!(
        infos[0].issuer.contains("CN=crl info Test CA"),
        "{:?}",
        infos[0]
    );
    assert_eq!(infos[0].this_update, 1_577_836_800, "2020-01-01");
    assert_eq!(infos[0].next_update, Some(4_102_444_800), "2100-01-01");
    assert!(infos[0].number.is_some());
    let expired = ferry_tls::crl_info(pki.expired_crl(&[])).expect("info");
    assert_eq!(expired[0].next_update, Some(978_307_200), "2001-01-01");
}
