//! Loading certificates, private keys and CA bundles from PEM files.
//!
//! PEM is the format every operator has: a text file with `-----BEGIN …-----` blocks. A file
//! may hold several blocks of several kinds; each loader picks the blocks it needs and ignores
//! the others, so a single file holding both a certificate chain and its key works for both
//! `cert` and `key`.
//!
//! Files are read whole with [`std::fs::read`] and decoded with
//! [`rustls_pki_types::pem::PemObject`] (the maintained successor of `rustls-pemfile`). Every
//! error names the file; see [`TlsError`].

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(path: &Path) -> impl Fn(rustls_pki_types::pem::Error) -> TlsError + '_ {
    move |source| TlsError::Pem {
        path: path.to_path_buf(),
        source,
    }
}

/// Every certificate of a PEM file, in file order.
///
/// For an identity (`cert`), the first certificate is the end-entity certificate and the
/// following ones are the intermediates sent along with it.
///
/// # Errors
/// [`TlsError::Read`] if the file cannot be read, [`TlsError::Pem`] if a block is malformed,
/// [`TlsError::NoCertificate`] if it holds no `CERTIFICATE` block.
pub fn load_certs(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path = path.as_ref();
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(path))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The one private key of a PEM file (PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY` or SEC1
/// `EC PRIVATE KEY`).
///
/// # Errors
/// [`TlsError::Read`], [`TlsError::Pem`], [`TlsError::NoPrivateKey`],
/// [`TlsError::EncryptedPrivateKey`] for a passphrase-protected key, and
/// [`TlsError::SeveralPrivateKeys`] when the choice would be ambiguous.
pub fn load_private_key(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>, TlsError> {
    let path = path.as_ref();
    let bytes = read(path)?;
    let mut keys = PrivateKeyDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(path))?;
    match keys.len() {
        0 if contains(&bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
            || contains(&bytes, b"Proc-Type: 4,ENCRYPTED") =>
        {
            Err(TlsError::EncryptedPrivateKey {
                path: path.to_path_buf(),
            })
        }
        0 => Err(TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        }),
        1 => keys.pop().ok_or_else(|| TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        }),
        count => Err(TlsError::SeveralPrivateKeys {
            path: path.to_path_buf(),
            count,
        }),
    }
}

/// A trust store made of every certificate of a CA bundle (one or several PEM certificates).
///
/// Every certificate must be usable as a trust anchor; a bundle with one broken certificate
/// is an error rather than a silently smaller trust store.
///
/// # Errors
/// As [`load_certs`], plus [`TlsError::BadCertificate`] naming the position of a certificate
/// that cannot be parsed.
pub fn load_roots(path: impl AsRef<Path>) -> Result<RootCertStore, TlsError> {
    let path = path.as_ref();
    let mut roots = RootCertStore::empty();
    for (i, cert) in load_certs(path)?.into_iter().enumerate() {
        roots.add(cert).map_err(|source| TlsError::BadCertificate {
            path: path.to_path_buf(),
            index: i + 1,
            source,
        })?;
    }
    Ok(roots)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
