//! TLS for outbound connections (MLLP sender, HTTP sender and poller, `ferry send`).
//!
//! | key    | meaning                                                                      |
//! |--------|------------------------------------------------------------------------------|
//! | `ca`   | PEM bundle trusted for the server; without it, the operating system's store |
//! | `cert` | PEM: own certificate for mTLS (then intermediates); needs `key`              |
//! | `key`  | PEM: private key of `cert`; needs `cert`                                     |
//!
//! The server's certificate must chain to a trusted root **and** name the host the connector
//! dials (hostname verification). There is deliberately no setting to turn hostname
//! verification off: a connector that talks to `10.0.0.5` with a certificate for
//! `his01.hospital.local` should set its server name to `his01.hospital.local` instead (see
//! [`server_name`]), which keeps the check.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;

use crate::server::required;
use crate::{PROTOCOL_VERSIONS, TlsError, crypto_provider, load_identity, load_roots};

/// The TLS table of a client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsSettings {
    /// PEM bundle of the CA(s) trusted to issue the server's certificate. `None`: the
    /// operating system's trust store.
    pub ca: Option<PathBuf>,
    /// PEM file with the client's own certificate (then intermediates), for mTLS.
    pub cert: Option<PathBuf>,
    /// PEM file with the private key of `cert`.
    pub key: Option<PathBuf>,
}

/// The rustls configuration of a client, without ALPN.
///
/// # Errors
/// Any [`TlsError`] from loading the files; [`TlsError::CertWithoutKey`] /
/// [`TlsError::KeyWithoutCert`] when only half an identity is given;
/// [`TlsError::NoNativeRoots`] when no `ca` is set and the OS store is empty.
pub fn client_config(settings: &ClientTlsSettings) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_alpn(settings, &[])
}

/// The rustls configuration of a client that offers application protocols, e.g.
/// `&[b"http/1.1"]`, in preference order.
///
/// # Errors
/// As [`client_config`].
pub fn client_config_with_alpn(
    settings: &ClientTlsSettings,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crypto_provider();
    let identity = match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => {
            let cert = required(cert, "cert", "the client certificate PEM file")?;
            let key = required(key, "key", "the private key PEM file of `cert`")?;
            Some(load_identity(cert, key, &provider)?)
        }
        (Some(cert), None) => return Err(TlsError::CertWithoutKey { cert: cert.clone() }),
        (None, Some(key)) => return Err(TlsError::KeyWithoutCert { key: key.clone() }),
        (None, None) => None,
    };
    let roots = match &settings.ca {
        Some(ca) => load_roots(required(ca, "ca", "the CA bundle PEM file")?)?,
        None => native_roots()?,
    };

    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|source| TlsError::Config { source })?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|source| TlsError::Config { source })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The operating system's trust store (honours `SSL_CERT_FILE` / `SSL_CERT_DIR`).
fn native_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::debug!(%error, "skipping part of the OS trust store");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::debug!(
            ignored,
            "skipped unparsable certificates in the OS trust store"
        );
    }
    if added == 0 {
        let details = if found.errors.is_empty() {
            "the store is empty".to_owned()
        } else {
            found
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(TlsError::NoNativeRoots { details });
    }
    Ok(roots)
}

/// The name a client verifies the server's certificate against: a DNS name
/// (`his01.hospital.local`) or an IP literal (`10.0.0.5`, `::1`, `[::1]`).
///
/// # Errors
/// [`TlsError::InvalidServerName`] if `host` is neither.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let trimmed = host.trim();
    let bare = trimmed
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(trimmed);
    ServerName::try_from(bare.to_owned()).map_err(|_| TlsError::InvalidServerName {
        name: host.to_owned(),
    })
}
