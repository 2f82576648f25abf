//! From the configuration's `tls` tables to loaded rustls configurations.

use std::sync::Arc;

use ferry_config::TlsConfig;
use ferry_tls::{CertificateKind, ClientTlsSettings, ReloadingCert, ServerTlsSettings, TlsError};

/// A listener's TLS (cert and key required; `client_ca` turns on mTLS).
pub(crate) fn server(
    tls: &TlsConfig,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_reloadable(tls, alpn).map(|(config, _)| config)
}

/// A listener's TLS and the handle that reloads its certificate and key.
pub(crate) fn server_reloadable(
    tls: &TlsConfig,
    alpn: &[&[u8]],
) -> Result<(Arc<rustls::ServerConfig>, Arc<ReloadingCert>), TlsError> {
    let settings = ServerTlsSettings {
        cert: tls.cert.clone().unwrap_or_default(),
        key: tls.key.clone().unwrap_or_default(),
        client_ca: tls.client_ca.clone(),
        allowed_clients: tls.allowed_clients.clone(),
        crl: tls.crl.clone(),
    };
    ferry_tls::reloadable_server_config(&settings, alpn)
}

/// How often listeners look at their certificate, key and CRL files for a change.
pub const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// A listener certificate to watch: who owns it (for logs and the gauge), its TLS table
/// (for the gauge) and the handle that reloads it.
pub(crate) struct Watched {
    pub(crate) channel: String,
    pub(crate) connector: String,
    pub(crate) tls: TlsConfig,
    pub(crate) cert: Arc<ReloadingCert>,
}

/// Every [`RELOAD_INTERVAL`] until `stop`: reload each watched certificate and each set of
/// CRLs whose files changed, update the expiry gauge, and log the outcome (files that do not
/// load are reported and the previous certificate or lists kept).
pub(crate) async fn watch(
    watched: Vec<Watched>,
    certificates: Arc<ferry_engine::Stats>,
    stop: ferry_engine::Shutdown,
) {
    if watched.is_empty() {
        return;
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RELOAD_INTERVAL) => {}
        }
        for w in &watched {
            let cert = w.cert.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                (cert.reload_if_changed(), cert.reload_crls_if_changed())
            })
            .await;
            let Ok((cert, crls)) = outcome else {
                tracing::error!(channel = %w.channel, connector = %w.connector,
                    "certificate reload task failed");
                continue;
            };
            let mut changed = false;
            match cert {
                Ok(true) => {
                    tracing::info!(channel = %w.channel, connector = %w.connector,
                        cert = %w.cert.cert_path().display(),
                        "TLS certificate reloaded; new handshakes use it");
                    changed = true;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(channel = %w.channel, connector = %w.connector, %error,
                        "new TLS certificate or key does not load; still serving the previous one");
                }
            }
            match crls {
                Ok(true) => {
                    tracing::info!(channel = %w.channel, connector = %w.connector,
                        "certificate revocation lists reloaded; new handshakes are checked against them");
                    changed = true;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(channel = %w.channel, connector = %w.connector, %error,
                        "new certificate revocation list does not load; the previous lists stay in force");
                }
            }
            if changed {
                certificates.certificates().replace(
                    &w.channel,
                    &w.connector,
                    server_certificates(&w.channel, &w.connector, &w.tls),
                );
            }
        }
    }
}

/// A client's TLS: trust from `ca` (else the OS store), identity from `cert` and `key`.
pub(crate) fn client(tls: Option<&TlsConfig>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let settings = match tls {
        Some(t) => ClientTlsSettings {
            ca: t.ca.clone(),
            cert: t.cert.clone(),
            key: t.key.clone(),
        },
        None => ClientTlsSettings {
            ca: None,
            cert: None,
            key: None,
        },
    };
    ferry_tls::client_config(&settings)
}

/// The certificates a listener's TLS table loads (its own chain, its client CA bundle) and
/// its CRLs (`kind = "crl"`, subject the issuer, serial the CRL number, "expiry" the
/// `nextUpdate`), for the expiry gauge. Files that cannot be read are left out: loading the
/// configuration has already reported them.
pub fn server_certificates(
    channel: &str,
    connector: &str,
    tls: &TlsConfig,
) -> Vec<ferry_engine::CertificateGauge> {
    let mut out = gauges(
        channel,
        connector,
        tls.cert.as_deref(),
        CertificateKind::Server,
    );
    out.extend(gauges(
        channel,
        connector,
        tls.client_ca.as_deref(),
        CertificateKind::Ca,
    ));
    for path in &tls.crl {
        out.extend(
            ferry_tls::crl_info(path)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|crl| {
                    Some(ferry_engine::CertificateGauge {
                        channel: channel.to_owned(),
                        connector: connector.to_owned(),
                        kind: "crl".to_owned(),
                        subject: crl.issuer,
                        serial: crl.number.unwrap_or_default(),
                        // A CRL without nextUpdate never goes stale: nothing to count down.
                        not_after: crl.next_update?,
                    })
                }),
        );
    }
    out
}

/// The certificates a client's TLS table loads (its own chain, its `ca` bundle; not the
/// operating system's store), for the expiry gauge.
pub fn client_certificates(
    channel: &str,
    connector: &str,
    tls: Option<&TlsConfig>,
) -> Vec<ferry_engine::CertificateGauge> {
    let Some(tls) = tls else {
        return Vec::new();
    };
    let mut out = gauges(
        channel,
        connector,
        tls.cert.as_deref(),
        CertificateKind::Client,
    );
    out.extend(gauges(
        channel,
        connector,
        tls.ca.as_deref(),
        CertificateKind::Ca,
    ));
    out
}

pub(crate) fn gauges(
    channel: &str,
    connector: &str,
    path: Option<&std::path::Path>,
    kind: CertificateKind,
) -> Vec<ferry_engine::CertificateGauge> {
    let Some(path) = path else {
        return Vec::new();
    };
    ferry_tls::certificates(path, kind)
        .unwrap_or_default()
        .into_iter()
        .map(|c| ferry_engine::CertificateGauge {
            channel: channel.to_owned(),
            connector: connector.to_owned(),
            kind: c.kind.as_str().to_owned(),
            subject: c.subject,
            serial: c.serial,
            not_after: c.not_after,
        })
        .collect()
}
