//! Certificate revocation lists (CRLs) for mTLS listeners: loading, the revocation policy, and
//! reloading when the files change.
//!
//! A listener with `client_ca` and `crl = [...]` checks every client certificate against the
//! CRLs inside the handshake (rustls' webpki verifier does the work): a revoked certificate
//! fails the handshake with `invalid peer certificate: Revoked`, so a revoked partner never
//! sends a byte of HL7.
//!
//! # The policy (fail closed)
//!
//! - **The whole chain is checked.** Every certificate below the trust anchor (the client's
//!   own and any intermediate it sends) must be covered by a CRL of its issuer. Give one CRL
//!   per issuing CA, the root's included when it issues intermediates.
//! - **Unknown status is refused.** Once `crl` is set, a certificate that no loaded CRL
//!   speaks for (its issuer published none, or the wrong CRL was installed) fails the
//!   handshake with `UnknownRevocationStatus`. Allowing it would make a missing CRL file look
//!   exactly like "nothing is revoked".
//! - **An expired CRL is refused.** Once a CRL's `nextUpdate` has passed, every certificate
//!   it covers fails the handshake (`certificate revocation list expired`) until a fresh CRL
//!   is installed. A stale CRL cannot tell about a certificate revoked after it was issued,
//!   and a partner whose key was stolen is exactly the one that would profit. The cost is
//!   availability when the CA stops publishing; that is made visible ahead of time instead of
//!   accepted silently: every loaded CRL is on the expiry gauge (`kind="crl"`, days until
//!   `nextUpdate`), an already expired CRL is logged at load, and a fresh file is picked up
//!   without a restart.
//!
//! Without `crl`, no revocation check is done (short-lived certificates are the other
//! revocation, SECURITY.md §7); OCSP is not checked (rustls does not, and CAs are retiring it).
//!
//! # Files
//!
//! Each `crl` file holds PEM (`-----BEGIN X509 CRL-----`, one or several) or one DER CRL.
//! Every CRL is parsed when loaded, and an error names the file.
//!
//! # Reload
//!
//! The listener's verifier is built once with the `client_ca` trust anchors; the CRLs inside
//! it are swapped when a file changes ([`crate::ReloadingCert::reload_crls_if_changed`]):
//! handshakes from then on use the new lists, established connections are not touched. A set
//! of files that does not load is reported and the previous lists stay in force. The
//! `client_ca` bundle itself changes with a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rustls::RootCertStore;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::UnixTime;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::TlsError;
use crate::reload::{Stamp, stamp};

/// What a loaded CRL says about itself, for the expiry gauge and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    /// The issuing CA, as X.509 text (`CN=Hospital CA, O=Hospital`).
    pub issuer: String,
    /// The CRL number (decimal), if the CRL carries one.
    pub number: Option<String>,
    /// `thisUpdate`, Unix seconds.
    pub this_update: i64,
    /// `nextUpdate`, Unix seconds: after it the CRL is expired and refused. `None` if the CRL
    /// names no next update (then it never expires).
    pub next_update: Option<i64>,
}

/// Every CRL of a file: PEM (`X509 CRL` blocks) or a single DER CRL.
///
/// # Errors
/// [`TlsError::Read`], [`TlsError::Pem`], [`TlsError::NoCrl`] when a PEM file holds no CRL
/// block, [`TlsError::BadCrl`] when a CRL does not parse.
pub fn load_crls(
    path: impl AsRef<Path>,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let crls = if is_pem(&bytes) {
        let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem {
                path: path.to_path_buf(),
                source,
            })?;
        if crls.is_empty() {
            return Err(TlsError::NoCrl {
                path: path.to_path_buf(),
            });
        }
        crls
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    for (i, crl) in crls.iter().enumerate() {
        if let Err(e) = CertificateRevocationList::from_der(crl.as_ref()) {
            return Err(TlsError::BadCrl {
                path: path.to_path_buf(),
                index: i + 1,
                reason: e.to_string(),
            });
        }
    }
    Ok(crls)
}

/// Describe every CRL of a file (see [`load_crls`] for the formats).
///
/// # Errors
/// As [`load_crls`].
pub fn crl_info(path: impl AsRef<Path>) -> Result<Vec<CrlInfo>, TlsError> {
    Ok(load_crls(path)?.iter().filter_map(describe).collect())
}

fn describe(crl: &CertificateRevocationListDer<'_>) -> Option<CrlInfo> {
    let (_, parsed) = CertificateRevocationList::from_der(crl.as_ref()).ok()?;
    Some(CrlInfo {
        issuer: parsed.issuer().to_string(),
        number: parsed.crl_number().map(|n| n.to_string()),
        this_update: parsed.last_update().timestamp(),
        next_update: parsed.next_update().map(|t| t.timestamp()),
    })
}

fn is_pem(bytes: &[u8]) -> bool {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    bytes[start..].starts_with(b"-----BEGIN")
}

/// The webpki verifier of an mTLS listener, rebuilt with new CRLs when their files change.
///
/// The trust anchors (and so the CA names hinted to clients) are fixed at construction.
pub(crate) struct ClientChainVerifier {
    client_ca: PathBuf,
    roots: Arc<RootCertStore>,
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
    crls: Vec<PathBuf>,
    current: RwLock<Arc<dyn ClientCertVerifier>>,
    seen: Mutex<Vec<Stamp>>,
}

impl std::fmt::Debug for ClientChainVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientChainVerifier")
            .field("crls", &self.crls)
            .finish_non_exhaustive()
    }
}

impl ClientChainVerifier {
    /// The verifier for `client_ca` (already loaded into `roots`) and the CRL files.
    pub(crate) fn new(
        client_ca: &Path,
        roots: RootCertStore,
        crls: &[PathBuf],
        provider: Arc<CryptoProvider>,
    ) -> Result<ClientChainVerifier, TlsError> {
        let roots = Arc::new(roots);
        let seen = crls.iter().map(|p| stamp(p)).collect();
        let verifier = build(client_ca, &roots, crls, &provider)?;
        Ok(ClientChainVerifier {
            client_ca: client_ca.to_path_buf(),
            hints: roots.subjects(),
            roots,
            provider,
            crls: crls.to_vec(),
            current: RwLock::new(verifier),
            seen: Mutex::new(seen),
        })
    }

    /// The CRL files.
    pub(crate) fn crl_paths(&self) -> &[PathBuf] {
        &self.crls
    }

    /// Re-read the CRLs if any file changed since the last attempt; `Ok(true)` when the new
    /// lists are in force.
    pub(crate) fn reload_if_changed(&self) -> Result<bool, TlsError> {
        if self.crls.is_empty() {
            return Ok(false);
        }
        let now: Vec<Stamp> = self.crls.iter().map(|p| stamp(p)).collect();
        {
            let Ok(mut seen) = self.seen.lock() else {
                return Ok(false);
            };
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        // The trust anchors are already loaded; only the CRLs are new.
        let verifier = build(&self.client_ca, &self.roots, &self.crls, &self.provider)?;
        if let Ok(mut current) = self.current.write() {
            *current = verifier;
        }
        Ok(true)
    }

    /// The verifier in force (the lock is only poisoned if a reload panicked).
    fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.current
            .read()
            .map(|v| v.clone())
            .map_err(|_| rustls::Error::General("client verifier unavailable".into()))
    }
}

/// A webpki verifier over `roots` with every CRL of `crls`, on the policy of this module.
fn build(
    client_ca: &Path,
    roots: &Arc<RootCertStore>,
    crls: &[PathBuf],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut lists = Vec::new();
    for path in crls {
        let loaded = load_crls(path)?;
        // Each file on its own first, so an error names the file.
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls(loaded.iter().cloned())
            .build()
            .map_err(|source| TlsError::BadCrl {
                path: path.clone(),
                index: 1,
                reason: source.to_string(),
            })?;
        for info in loaded.iter().filter_map(describe) {
            if info.next_update.is_some_and(|t| t < now_secs()) {
                tracing::error!(crl = %path.display(), issuer = %info.issuer,
                    "certificate revocation list has expired (nextUpdate passed): every client \
                     certificate it covers is refused until a fresh CRL is installed");
            }
        }
        lists.extend(loaded);
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
    if !lists.is_empty() {
        // Chain depth and `UnknownStatusPolicy::Deny` are rustls' defaults; expiry is not.
        builder = builder.with_crls(lists).enforce_revocation_expiration();
    }
    builder.build().map_err(|source| TlsError::ClientCa {
        path: client_ca.to_path_buf(),
        source,
    })
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl ClientCertVerifier for ClientChainVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
