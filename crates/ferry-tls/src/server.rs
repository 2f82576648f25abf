//! TLS for listeners (MLLP over TLS, HTTPS, the admin server): own identity, optional mTLS,
//! optional allow-list of client identities.
//!
//! The keys of a listener's TLS table map one to one onto [`ServerTlsSettings`]:
//!
//! | key               | meaning                                                           |
//! |-------------------|-------------------------------------------------------------------|
//! | `cert`            | PEM: the listener's certificate, then its intermediates           |
//! | `key`             | PEM: the private key of that certificate                          |
//! | `client_ca`       | PEM bundle: turns on mTLS; clients must present a cert it issued  |
//! | `allowed_clients` | list: only clients whose CN or a SAN is listed are accepted        |
//! | `crl`             | list of PEM/DER CRLs: revoked client certificates are refused      |
//!
//! Without `client_ca` any client may connect (server-only TLS). With it, a client that sends
//! no certificate, a certificate from another CA, or an expired one fails the handshake. With
//! `allowed_clients` as well, a valid client that is not listed also fails the handshake (see
//! [`crate::identity_allowed`] for the matching rule). With `crl`, a client certificate that
//! a CRL revokes fails too, and so does one whose status no CRL gives or whose CRL has expired
//! ([`crate::revocation`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;

use crate::reload::ReloadingCert;
use crate::revocation::ClientChainVerifier;
use crate::verifier::AllowListVerifier;
use crate::{PROTOCOL_VERSIONS, TlsError, crypto_provider, load_roots};

/// The TLS table of a listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerTlsSettings {
    /// PEM file with the listener's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM file with the private key of `cert`.
    pub key: PathBuf,
    /// PEM bundle of the CA(s) that issue client certificates. Setting it requires every
    /// client to present a certificate issued by one of them (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Client identities allowed to connect, each compared with the client certificate's
    /// subject CN and SANs. Empty: every client with a valid certificate. Requires `client_ca`.
    pub allowed_clients: Vec<String>,
    /// Certificate revocation lists (PEM or DER files) that client certificates are checked
    /// against, fail closed ([`crate::revocation`]). Empty: no revocation check. Requires
    /// `client_ca`.
    pub crl: Vec<PathBuf>,
}

impl ServerTlsSettings {
    /// Server-only TLS with this certificate and key (no client certificates).
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        ServerTlsSettings {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            allowed_clients: Vec::new(),
            crl: Vec::new(),
        }
    }
}

/// The rustls configuration of a listener, without ALPN (MLLP over TLS).
///
/// # Errors
/// Any [`TlsError`] from loading the files, a key that does not match the certificate, or
/// `allowed_clients` or `crl` without `client_ca`.
pub fn server_config(settings: &ServerTlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_alpn(settings, &[])
}

/// The rustls configuration of a listener that negotiates an application protocol, e.g.
/// `&[b"http/1.1"]` for an HTTPS listener. Protocols are in preference order.
///
/// # Errors
/// As [`server_config`].
pub fn server_config_with_alpn(
    settings: &ServerTlsSettings,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    reloadable_server_config(settings, alpn).map(|(config, _)| config)
}

/// As [`server_config_with_alpn`], with the handle that reloads the certificate and key when
/// their files change ([`ReloadingCert::reload_if_changed`]), and the CRLs when theirs do
/// ([`ReloadingCert::reload_crls_if_changed`]); the configuration serves whatever the handle
/// holds at each handshake.
///
/// # Errors
/// As [`server_config`].
pub fn reloadable_server_config(
    settings: &ServerTlsSettings,
    alpn: &[&[u8]],
) -> Result<(Arc<ServerConfig>, Arc<ReloadingCert>), TlsError> {
    let allowed = allow_list(settings)?;
    if !settings.crl.is_empty() && settings.client_ca.is_none() {
        return Err(TlsError::CrlWithoutClientCa);
    }
    let cert = required(
        &settings.cert,
        "cert",
        "the listener's certificate PEM file",
    )?;
    let key = required(&settings.key, "key", "the private key PEM file of `cert`")?;
    let provider = crypto_provider();
    let mut resolver = ReloadingCert::load(cert, key)?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|source| TlsError::Config { source })?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = load_roots(ca)?;
            let chain = Arc::new(ClientChainVerifier::new(
                ca,
                roots,
                &settings.crl,
                provider,
            )?);
            resolver = resolver.with_revocation(chain.clone());
            builder.with_client_cert_verifier(Arc::new(AllowListVerifier::new(chain, allowed)))
        }
    };
    let resolver = Arc::new(resolver);
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((Arc::new(config), resolver))
}

/// The validated allow-list: `None` when empty (any client of the CA).
fn allow_list(settings: &ServerTlsSettings) -> Result<Option<Vec<String>>, TlsError> {
    if settings.allowed_clients.is_empty() {
        return Ok(None);
    }
    if settings.client_ca.is_none() {
        return Err(TlsError::AllowListWithoutClientCa);
    }
    settings
        .allowed_clients
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let entry = entry.trim();
            if entry.is_empty() {
                Err(TlsError::EmptyAllowedClient { index: i + 1 })
            } else {
                Ok(entry.to_owned())
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

pub(crate) fn required<'a>(
    path: &'a Path,
    setting: &'static str,
    what: &'static str,
) -> Result<&'a Path, TlsError> {
    if path.as_os_str().is_empty() {
        Err(TlsError::MissingSetting { setting, what })
    } else {
        Ok(path)
    }
}
