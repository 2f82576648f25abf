//! Certificate hot reload for listeners: the certificate and key are re-read when their files
//! change, without a restart and without touching open connections.
//!
//! A listener's `rustls::ServerConfig` asks a [`ReloadingCert`] (its
//! `ResolvesServerCert`) for the certificate at every handshake. [`ReloadingCert::reload_if_changed`]
//! compares the files' modification times and sizes with the last attempt and, when either
//! changed, loads and checks the new pair (PEM, key matches certificate) before swapping it
//! in: handshakes that started before the swap finish with the old certificate, new ones get
//! the new certificate, and established connections never notice. A pair that does not load
//! is reported and the old certificate stays; the next change of either file is tried again
//! (so replacing the two files one after the other works: the half-way state is refused,
//! the complete one is taken).
//!
//! On an mTLS listener with `crl`, the same handle also watches the CRL files
//! ([`ReloadingCert::reload_crls_if_changed`], see [`crate::revocation`]): a new CRL that
//! revokes a certificate refuses that client from the next handshake on.
//!
//! The client CA bundle and the allow-list are not reloaded: they change with a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;

use crate::revocation::ClientChainVerifier;
use crate::{TlsError, crypto_provider, load_identity};

/// What a file looked like at the last attempt: modification time and length.
pub(crate) type Stamp = Option<(SystemTime, u64)>;

pub(crate) fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())))
}

/// A listener's certificate and key, re-read from their files on demand.
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Mutex<(Stamp, Stamp)>,
    /// The listener's client-certificate verifier, when it checks CRLs.
    revocation: Option<Arc<ClientChainVerifier>>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Load the pair now.
    ///
    /// # Errors
    /// As the listener loaders: unreadable or malformed PEM, a key that does not match.
    pub fn load(cert: &Path, key: &Path) -> Result<ReloadingCert, TlsError> {
        let seen = (stamp(cert), stamp(key));
        let certified = certified_key(cert, key)?;
        Ok(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(certified)),
            seen: Mutex::new(seen),
            revocation: None,
        })
    }

    /// Watch the CRLs of this listener's client verifier as well.
    pub(crate) fn with_revocation(mut self, verifier: Arc<ClientChainVerifier>) -> ReloadingCert {
        if !verifier.crl_paths().is_empty() {
            self.revocation = Some(verifier);
        }
        self
    }

    /// The CRL files whose lists this listener enforces (empty without `crl`).
    pub fn crl_paths(&self) -> &[PathBuf] {
        self.revocation
            .as_deref()
            .map(ClientChainVerifier::crl_paths)
            .unwrap_or_default()
    }

    /// Re-read the CRLs if any of their files changed since the last attempt. `Ok(true)`: the
    /// new lists decide from the next handshake on; `Ok(false)`: nothing changed (or the
    /// listener has no `crl`).
    ///
    /// # Errors
    /// A CRL file does not load; the previous lists stay in force.
    pub fn reload_crls_if_changed(&self) -> Result<bool, TlsError> {
        match &self.revocation {
            Some(verifier) => verifier.reload_if_changed(),
            None => Ok(false),
        }
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// The chain served now (end-entity certificate first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current
            .read()
            .map(|c| c.cert.clone())
            .unwrap_or_default()
    }

    /// Re-read the pair if either file changed since the last attempt. `Ok(true)`: the new
    /// certificate is served from the next handshake on; `Ok(false)`: nothing changed.
    ///
    /// # Errors
    /// The new pair does not load; the old certificate is still served.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = (stamp(&self.cert), stamp(&self.key));
        {
            let Ok(mut seen) = self.seen.lock() else {
                return Ok(false);
            };
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let certified = certified_key(&self.cert, &self.key)?;
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(certified);
        }
        Ok(true)
    }
}

fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let provider = crypto_provider();
    let (chain, private_key) = load_identity(cert, key, &provider)?;
    let signing_key = provider
        .key_provider
        .load_private_key(private_key)
        .map_err(|source| TlsError::UnusableKey {
            path: key.to_path_buf(),
            source,
        })?;
    Ok(CertifiedKey::new(chain, signing_key))
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}
