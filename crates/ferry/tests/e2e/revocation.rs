//! CRL checking on the real binary (SECURITY.md T9 "revoked (CRL)", T28 CRL reload): mTLS
//! MLLP and HTTPS listeners with `crl` refuse a revoked client certificate in the handshake
//! and serve a valid one; a refusal is recorded as `tls_rejected` with the reason; replacing
//! the CRL file revokes a certificate that was accepted before, without a restart; the CRL's
//! `nextUpdate` is on the expiry gauge.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Ferry, adt, config_with_channels, ferry_bin, plain, toml_path};
use ferry_connectors::mllp::{MllpConnection, MllpEndpoint};
use ferry_testkit::{CertFiles, TestPki};
use ferry_tls::ClientTlsSettings;

fn client_tls(pki: &TestPki, identity: &CertFiles) -> Arc<rustls::ClientConfig> {
    ferry_tls::client_config(&ClientTlsSettings {
        ca: Some(pki.ca_cert_path()),
        cert: Some(identity.cert.clone()),
        key: Some(identity.key.clone()),
    })
    .expect("client tls")
}

fn endpoint(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> MllpEndpoint {
    MllpEndpoint {
        tls: Some((tls, ferry_tls::server_name("localhost").expect("name"))),
        ..plain(addr)
    }
}

/// One MLLP exchange on a new connection; `Ok(MSA-1)` if an ACK came back.
async fn mllp_attempt(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<String, String> {
    let mut conn = MllpConnection::connect(&endpoint(addr, tls))
        .await
        .map_err(|e| e.to_string())?;
    exchange(&mut conn, "R1").await
}

async fn exchange(conn: &mut MllpConnection, control_id: &str) -> Result<String, String> {
    let ack = conn
        .exchange(&adt(control_id), Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    ferry_hl7::ack::parse_ack(&ack)
        .map(|a| a.code.as_str().to_owned())
        .map_err(|e| e.to_string())
}

/// One POST over HTTPS; `Ok(status)` if a response came back.
async fn https_attempt(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<u16, String> {
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    client
        .post(format!("https://localhost:{}/hl7", addr.port()))
        .header("content-type", "application/hl7-v2; charset=utf-8")
        .body(adt("R2"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

/// Replace a file the way tooling does: write aside, rename over.
fn install(from: &Path, to: &Path) {
    let aside = to.with_extension("new");
    std::fs::copy(from, &aside).expect("copy");
    std::fs::rename(&aside, to).expect("rename");
}

fn audit_records(config: &Path) -> Vec<serde_json::Value> {
    let output = Command::new(ferry_bin())
        .args(["audit", "list", "--json", "--config"])
        .arg(config)
        .output()
        .expect("ferry audit list");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_clients_are_refused_on_mllp_and_https_and_a_new_crl_takes_effect_live() {
    let pki = TestPki::new("revocation");
    let server = pki.server(&["localhost", "127.0.0.1"]);
    let good = pki.client("his.hospital.local", &[]);
    let revoked = pki.client("stolen.hospital.local", &[]);
    let later = pki.client("lab.hospital.local", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let crl = dir.path().join("clients.crl.pem");
    install(&pki.crl(&[&revoked]), &crl);
    let tls = format!(
        "{{ cert = {}, key = {}, client_ca = {}, crl = [{}] }}",
        toml_path(&server.cert),
        toml_path(&server.key),
        toml_path(&pki.ca_cert_path()),
        toml_path(&crl),
    );
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
    let mut ferry = Ferry::start(&config, &[]);
    let (mllps, https) = (ferry.listener("mllps"), ferry.listener("https"));
    let received =
        |channel: &str| format!("ferry_messages_received_total{{channel=\"{channel}\"}}");

    // The revoked certificate is refused on both listeners, before any message is read.
    let result = mllp_attempt(mllps, client_tls(&pki, &revoked)).await;
    assert!(
        result.is_err(),
        "MLLP: a revoked client got an ACK: {result:?}"
    );
    let result = https_attempt(https, client_tls(&pki, &revoked)).await;
    assert!(
        result.is_err(),
        "HTTPS: a revoked client got a response: {result:?}"
    );
    for channel in ["mllps", "https"] {
        assert_eq!(ferry.metric(&received(channel)).await, Some(0), "{channel}");
    }
    // Valid certificates of the same CA are served.
    assert_eq!(
        mllp_attempt(mllps, client_tls(&pki, &good)).await,
        Ok("AA".into())
    );
    assert_eq!(https_attempt(https, client_tls(&pki, &good)).await, Ok(200));
    let mut open = MllpConnection::connect(&endpoint(mllps, client_tls(&pki, &later)))
        .await
        .expect("lab connects before its certificate is revoked");
    assert_eq!(exchange(&mut open, "L1").await, Ok("AA".into()));
    assert_eq!(
        https_attempt(https, client_tls(&pki, &later)).await,
        Ok(200)
    );

    // The CA revokes `later` too: the new CRL file is in force within seconds, no restart.
    install(&pki.crl(&[&revoked, &later]), &crl);
    let deadline = Instant::now() + Duration::from_secs(15);
    while mllp_attempt(mllps, client_tls(&pki, &later)).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the new CRL was not applied\n{}",
            ferry.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = https_attempt(https, client_tls(&pki, &later)).await;
    assert!(
        result.is_err(),
        "HTTPS: the newly revoked client got a response: {result:?}"
    );
    // Only revocation changed: valid clients are still served on both listeners.
    assert_eq!(
        mllp_attempt(mllps, client_tls(&pki, &good)).await,
        Ok("AA".into())
    );
    assert_eq!(https_attempt(https, client_tls(&pki, &good)).await, Ok(200));
    assert!(
        ferry
            .output()
            .contains("certificate revocation lists reloaded"),
        "{}",
        ferry.output()
    );
    drop(open);

    // The CRL is on the expiry gauge (TestPki CRLs: nextUpdate 2100-01-01).
    let (_, metrics) = ferry.admin_get("/metrics").await;
    let crl_rows: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("ferry_tls_certificate_expiry_days{") && l.contains("kind=\"crl\"")
        })
        .collect();
    assert_eq!(crl_rows.len(), 2, "one CRL row per listener:\n{metrics}");
    assert!(
        crl_rows
            .iter()
            .all(|l| l.contains("subject=\"CN=revocation Test CA")),
        "{crl_rows:?}"
    );

    assert!(ferry.terminate(), "{}", ferry.output());
    // Every refusal is in the audit trail, with the listener and the reason.
    let rejected: Vec<serde_json::Value> = audit_records(&config)
        .into_iter()
        .filter(|r| r["action"] == "tls_rejected")
        .collect();
    for (target, listener) in [("channel/mllps", "mllp"), ("channel/https", "http")] {
        let revocations = rejected
            .iter()
            .filter(|r| {
                r["target"] == target
                    && r["details"]["listener"] == listener
                    && r["outcome"] == "failure"
                    && r["source"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("127.0.0.1:"))
                    && r["details"]["reason"]
                        .as_str()
                        .is_some_and(|reason| reason.contains("Revoked"))
            })
            .count();
        // The stolen certificate, then the lab's after the reload.
        assert!(
            revocations >= 2,
            "{target}: {revocations} revocations in {rejected:#?}"
        );
    }
}
