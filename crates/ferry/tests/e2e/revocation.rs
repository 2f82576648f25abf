//! CRL checking on the real binary (SECURITY.md T9 "revoked (CRL)", T28 CRL reload): mTLS
//! MLLP and HTTPS listeners with `crl` refuse a revoked client certificate in the handshake
//! and serve a valid one; a refusal is recorded as `tls_rejected` with the reason; replacing
//! the CRL file revokes a certificate that was accepted before, without a restart; the CRL's
//! `nextUpdate` is on the expiry gauge.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    Ferry, client_tls, config_with_channels, exchange_code, https_attempt, mllp_tls_attempt,
    tls_endpoint, toml_path,
};
use ferry_connectors::mllp::MllpConnection;
use ferry_testkit::TestPki;

/// Replace a file the way tooling does: write aside, rename over.
fn install(from: &Path, to: &Path) {
    let aside = to.with_extension("new");
    std::fs::copy(from, &aside).expect("copy");
    std::fs::rename(&aside, to).expect("rename");
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
    let result = mllp_tls_attempt(mllps, client_tls(&pki, Some(&revoked)), "R1").await;
    assert!(
        result.is_err(),
        "MLLP: a revoked client got an ACK: {result:?}"
    );
    let result = https_attempt(https, client_tls(&pki, Some(&revoked)), "R2").await;
    assert!(
        result.is_err(),
        "HTTPS: a revoked client got a response: {result:?}"
    );
    for channel in ["mllps", "https"] {
        assert_eq!(ferry.metric(&received(channel)).await, Some(0), "{channel}");
    }
    // Valid certificates of the same CA are served.
    assert_eq!(
        mllp_tls_attempt(mllps, client_tls(&pki, Some(&good)), "R1").await,
        Ok("AA".into())
    );
    assert_eq!(
        https_attempt(https, client_tls(&pki, Some(&good)), "R2").await,
        Ok(200)
    );
    let mut open = MllpConnection::connect(&tls_endpoint(mllps, client_tls(&pki, Some(&later))))
        .await
        .expect("lab connects before its certificate is revoked");
    assert_eq!(exchange_code(&mut open, "L1").await, Ok("AA".into()));
    assert_eq!(
        https_attempt(https, client_tls(&pki, Some(&later)), "R2").await,
        Ok(200)
    );

    // The CA revokes `later` too: the new CRL file is in force within seconds, no restart.
    install(&pki.crl(&[&revoked, &later]), &crl);
    let deadline = Instant::now() + Duration::from_secs(15);
    while mllp_tls_attempt(mllps, client_tls(&pki, Some(&later)), "R1")
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the new CRL was not applied\n{}",
            ferry.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = https_attempt(https, client_tls(&pki, Some(&later)), "R2").await;
    assert!(
        result.is_err(),
        "HTTPS: the newly revoked client got a response: {result:?}"
    );
    // Only revocation changed: valid clients are still served on both listeners.
    assert_eq!(
        mllp_tls_attempt(mllps, client_tls(&pki, Some(&good)), "R1").await,
        Ok("AA".into())
    );
    assert_eq!(
        https_attempt(https, client_tls(&pki, Some(&good)), "R2").await,
        Ok(200)
    );
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
    let rejected: Vec<serde_json::Value> = common::audit_records(&config)
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
