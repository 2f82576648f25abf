//! What certificates a TLS configuration loads, for the expiry gauge
//! (`ferry_tls_certificate_expiry_days`) and the certificate inventory.
//!
//! [`certificates`] reads a PEM file the way the loaders do and describes every certificate in
//! it: its role ([`CertificateKind`]), subject, serial and `notAfter`. An identity file
//! (`cert`) starts with the end-entity certificate (a server's or a client's own) and may go
//! on with intermediates, which are CA certificates; every certificate of a trust bundle
//! (`ca`, `client_ca`) is a CA certificate.

use std::path::Path;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{TlsError, load_certs};

/// The role of a loaded certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertificateKind {
    /// A listener's own certificate.
    Server,
    /// A client's own certificate (mTLS to a partner).
    Client,
    /// A CA certificate: an intermediate sent with an identity, or a trust anchor.
    Ca,
}

impl CertificateKind {
    /// `server`, `client` or `ca`: the value of the gauge's `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateKind::Server => "server",
            CertificateKind::Client => "client",
            CertificateKind::Ca => "ca",
        }
    }
}

/// One certificate of a PEM file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Its role.
    pub kind: CertificateKind,
    /// The subject, as X.509 text (`CN=his01, O=Hospital`).
    pub subject: String,
    /// The serial number in hex, colon-separated (`1a:2b:…`).
    pub serial: String,
    /// `notAfter`, in seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertificateInfo {
    /// Whole days from `now` (Unix seconds) until `notAfter`, rounded down: negative once the
    /// certificate has expired.
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }
}

/// Describe one DER certificate; `None` if it is not X.509.
pub fn certificate_info(
    cert: &CertificateDer<'_>,
    kind: CertificateKind,
) -> Option<CertificateInfo> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    Some(CertificateInfo {
        kind,
        subject: parsed.subject().to_string(),
        serial: parsed.raw_serial_as_string(),
        not_after: parsed.validity().not_after.timestamp(),
    })
}

/// Every certificate of a PEM file: the first as `first` (the identity's own role, or
/// [`CertificateKind::Ca`] for a trust bundle), the rest as CA certificates. Certificates
/// that are not X.509 are left out (the TLS loaders refuse those anyway).
///
/// # Errors
/// As [`load_certs`].
pub fn certificates(
    path: impl AsRef<Path>,
    first: CertificateKind,
) -> Result<Vec<CertificateInfo>, TlsError> {
    Ok(load_certs(path)?
        .iter()
        .enumerate()
        .filter_map(|(i, cert)| {
            certificate_info(cert, if i == 0 { first } else { CertificateKind::Ca })
        })
        .collect())
}
