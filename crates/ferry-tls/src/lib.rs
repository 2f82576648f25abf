//! The one TLS policy of Ferry: every listener and every client builds its rustls
//! configuration here, so every connection gets the same rules.
//!
//! # The policy
//!
//! - **Protocol versions:** TLS 1.3 and TLS 1.2 only ([`PROTOCOL_VERSIONS`]). SSL 3, TLS 1.0
//!   and TLS 1.1 are not offered and not accepted.
//! - **Crypto:** the aws-lc-rs provider, chosen explicitly for every configuration
//!   ([`crypto_provider`]) rather than through a process-wide default, so no other crate in
//!   the process can change what Ferry negotiates. Its cipher suites are all AEAD
//!   (AES-GCM, ChaCha20-Poly1305) with forward secrecy.
//! - **Clients always verify the server:** the chain must reach a trusted root (`ca`, or the
//!   operating system's store) and the certificate must name the host dialed. There is no
//!   switch to turn that off.
//! - **mTLS is enforced inside the handshake:** with `client_ca`, a client without a valid
//!   certificate from that CA cannot finish the handshake; with `allowed_clients`, neither can
//!   a valid client whose CN or SANs are not listed. An application never sees a byte from a
//!   refused peer.
//! - **Precise errors:** every [`TlsError`] about a file starts with the file's path and says
//!   what is wrong with it (`certs/client.pem: no certificate found in PEM file …`).
//! - **Revocation:** with `crl`, client certificates are checked against certificate
//!   revocation lists in the handshake, failing closed: revoked, unknown status and an
//!   expired CRL are all refused (the policy and its reasons are in [`revocation`]).
//! - **Hot reload:** a listener's certificate is served through a [`ReloadingCert`]
//!   ([`reloadable_server_config`]); [`ReloadingCert::reload_if_changed`] re-reads the pair
//!   when its files change, checks it, and swaps it in for new handshakes only. A pair that
//!   does not load leaves the previous certificate in service.
//!   [`ReloadingCert::reload_crls_if_changed`] does the same for the CRLs.
//! - **Inventory:** [`certificates`] describes every certificate of a PEM file (role, subject,
//!   serial, `notAfter`) for the expiry gauge `ferry_tls_certificate_expiry_days`.
//!
//! # A listener
//!
//! ```no_run
//! use ferry_tls::{ServerTlsSettings, server_config};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = ServerTlsSettings {
//!     cert: "certs/server.pem".into(),
//!     key: "certs/server.key".into(),
//!     client_ca: Some("certs/clients-ca.pem".into()),
//!     allowed_clients: vec!["his01".into(), "lab.hospital.local".into()],
//!     crl: vec!["certs/clients-ca.crl.pem".into()],
//! };
//! let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&settings)?);
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:2575").await?;
//! let (tcp, _) = listener.accept().await?;
//! match acceptor.accept(tcp).await {
//!     Ok(tls) => {
//!         let who = tls.get_ref().1.peer_certificates()
//!             .and_then(|chain| chain.first())
//!             .and_then(ferry_tls::peer_identity);
//!         // … read MLLP frames, log `who` …
//!     }
//!     // Refused clients end here, before any application byte.
//!     Err(e) => eprintln!("refused: {e} (identity: {:?})", ferry_tls::refused_client(&e)),
//! }
//! # Ok(()) }
//! ```
//!
//! # A client
//!
//! ```no_run
//! use ferry_tls::{ClientTlsSettings, client_config, server_name};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = ClientTlsSettings {
//!     ca: Some("certs/ca.pem".into()),
//!     cert: Some("certs/client.pem".into()),
//!     key: Some("certs/client.key".into()),
//! };
//! let connector = tokio_rustls::TlsConnector::from(client_config(&settings)?);
//! let tcp = tokio::net::TcpStream::connect("his01.hospital.local:2575").await?;
//! let tls = connector.connect(server_name("his01.hospital.local")?, tcp).await?;
//! # Ok(()) }
//! ```

mod client;
mod error;
mod identity;
mod inventory;
mod pem;
mod reload;
pub mod revocation;
mod server;
mod verifier;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use client::{ClientTlsSettings, client_config, client_config_with_alpn, server_name};
pub use error::TlsError;
pub use identity::{
    ClientNotAllowed, PeerIdentity, identity_allowed, not_after, peer_identity, refused_client,
};
pub use inventory::{CertificateInfo, CertificateKind, certificate_info, certificates};
pub use pem::{load_certs, load_private_key, load_roots};
pub use reload::ReloadingCert;
pub use revocation::{CrlInfo, crl_info, load_crls};
pub use server::{
    ServerTlsSettings, reloadable_server_config, server_config, server_config_with_alpn,
};

/// The protocol versions Ferry speaks, most preferred first: TLS 1.3, then TLS 1.2.
pub static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The crypto provider of every Ferry configuration: aws-lc-rs with its default (all-AEAD)
/// cipher suites and key-exchange groups.
///
/// Use it when a configuration must be built outside this crate (for example a library that
/// takes a `rustls::ClientConfig` builder), so it stays on the same policy.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate chain and its private key, checked to belong together.
pub(crate) fn load_identity(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = load_certs(cert)?;
    let private_key = load_private_key(key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(private_key.clone_key())
        .map_err(|source| TlsError::UnusableKey {
            path: key.to_path_buf(),
            source,
        })?;
    match CertifiedKey::new(chain.clone(), signing_key).keys_match() {
        // aws-lc-rs always knows the public key, but an unknown answer is not a mismatch.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(TlsError::BadCertificate {
                path: cert.to_path_buf(),
                index: 1,
                source,
            });
        }
    }
    Ok((chain, private_key))
}
