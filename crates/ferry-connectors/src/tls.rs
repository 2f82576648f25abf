//! From the configuration's `tls` tables to loaded rustls configurations.

use std::sync::Arc;

use ferry_config::TlsConfig;
use ferry_tls::{ClientTlsSettings, ServerTlsSettings, TlsError};

/// A listener's TLS (cert and key required; `client_ca` turns on mTLS).
pub(crate) fn server(
    tls: &TlsConfig,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let settings = ServerTlsSettings {
        cert: tls.cert.clone().unwrap_or_default(),
        key: tls.key.clone().unwrap_or_default(),
        client_ca: tls.client_ca.clone(),
        allowed_clients: tls.allowed_clients.clone(),
    };
    ferry_tls::server_config_with_alpn(&settings, alpn)
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
