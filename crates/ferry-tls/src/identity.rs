//! Who is on the other end of a connection, read from their certificate.
//!
//! A certificate names its holder in two places:
//!
//! - the **subject common name** (`CN=his01`), the historical place, still what most hospital
//!   PKIs fill in for client certificates;
//! - the **subject alternative names** (SANs): DNS names, IP addresses, e-mail addresses and
//!   URIs. Modern clients verify servers by SAN only.
//!
//! [`PeerIdentity`] holds both as text, for logs, the audit trail and authorization.
//! [`identity_allowed`] is the rule the mTLS allow-list (`allowed_clients`) applies; it is
//! public so an HTTP listener can apply the same rule per route.
//!
//! ```
//! use ferry_tls::PeerIdentity;
//!
//! let id = PeerIdentity {
//!     common_name: Some("his01".into()),
//!     sans: vec!["his01.hospital.local".into()],
//! };
//! assert_eq!(id.to_string(), "CN=his01, SAN=[his01.hospital.local]");
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::net::IpAddr;

use rustls::CertificateError;
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The identity a certificate presents: its subject CN and its SANs, as text.
///
/// `Display` renders it for logs and the audit trail as `CN=his01, SAN=[his01.hospital.local]`
/// (missing parts are left out; control characters are escaped so a hostile certificate
/// cannot forge log lines). It never contains secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The first common name (`CN`) of the subject, if any.
    pub common_name: Option<String>,
    /// The subject alternative names in certificate order: DNS names, IP addresses (as
    /// text, e.g. `10.0.0.5`, `::1`), e-mail addresses and URIs. Other kinds are left out.
    pub sans: Vec<String>,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut wrote = false;
        if let Some(cn) = &self.common_name {
            write!(f, "CN={}", Escaped(cn))?;
            wrote = true;
        }
        if !self.sans.is_empty() {
            if wrote {
                f.write_str(", ")?;
            }
            f.write_str("SAN=[")?;
            for (i, san) in self.sans.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{}", Escaped(san))?;
            }
            f.write_str("]")?;
            wrote = true;
        }
        if !wrote {
            f.write_str("(no CN or SAN)")?;
        }
        Ok(())
    }
}

/// Text from a certificate, with control characters escaped.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// The identity of a DER certificate, or `None` if it cannot be parsed as X.509.
///
/// Use it after a handshake on the peer's end-entity certificate:
///
/// ```
/// use ferry_tls::PeerIdentity;
/// use tokio_rustls::server::TlsStream;
/// use tokio::net::TcpStream;
///
/// fn client_of(tls: &TlsStream<TcpStream>) -> Option<PeerIdentity> {
///     tls.get_ref().1.peer_certificates()
///         .and_then(|chain| chain.first())
///         .and_then(ferry_tls::peer_identity)
/// }
/// ```
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
    Names::parse(cert).map(|names| names.to_identity())
}

/// Whether a certificate's identity is on an allow-list.
///
/// An entry matches when it equals:
/// - the subject common name, exactly (case-sensitive);
/// - a DNS SAN, ignoring ASCII case (`HIS01.hospital.local` matches `his01.hospital.local`);
/// - an IP SAN, compared as addresses (`::1` matches `0:0:0:0:0:0:0:1`);
/// - an e-mail or URI SAN, exactly.
///
/// Wildcards are not expanded: an entry is an identity, not a pattern. A certificate that
/// cannot be parsed matches nothing. This function does not verify the certificate; call it
/// only on a certificate the TLS handshake has already verified.
pub fn identity_allowed<S: AsRef<str>>(cert: &CertificateDer<'_>, allowed: &[S]) -> bool {
    Names::parse(cert).is_some_and(|names| names.allowed(allowed))
}

/// The Unix time (seconds) after which a certificate is no longer valid, or `None` if it
/// cannot be parsed. For expiry gauges and alerts.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    X509Certificate::from_der(cert.as_ref())
        .ok()
        .map(|(_, parsed)| parsed.validity().not_after.timestamp())
}

/// Why the allow-list refused a client, carried inside the handshake error.
///
/// The server side of a refused handshake fails with a `rustls::Error` (wrapped in an
/// `std::io::Error` by tokio-rustls) of kind `InvalidCertificate(CertificateError::Other(_))`
/// holding this value; the client receives a `certificate_unknown` alert.
/// [`refused_client`] gets the identity back out of such an error for the audit trail.
///
/// `Debug` prints the same sentence as `Display`, because rustls renders this error with
/// `Debug` inside its own message:
/// `invalid peer certificate: Other(OtherError(client certificate CN=his02 is not in allowed_clients))`.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("client certificate {identity} is not in allowed_clients")]
pub struct ClientNotAllowed {
    /// The identity the client presented.
    pub identity: PeerIdentity,
}

impl fmt::Debug for ClientNotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The identity of a client refused by the allow-list, if `error` (or an error it wraps)
/// is such a refusal.
///
/// Works on the `std::io::Error` returned by `tokio_rustls::TlsAcceptor::accept` as well as on
/// a bare `rustls::Error`. Refusals for other reasons (unknown CA, expired certificate, no
/// certificate) return `None`; their error text says why.
pub fn refused_client(error: &(dyn StdError + 'static)) -> Option<PeerIdentity> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(refusal) = e.downcast_ref::<ClientNotAllowed>() {
            return Some(refusal.identity.clone());
        }
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) =
            e.downcast_ref::<rustls::Error>()
        {
            return other
                .0
                .downcast_ref::<ClientNotAllowed>()
                .map(|refusal| refusal.identity.clone());
        }
        // `io::Error::source` skips the error it wraps, so unwrap it by hand.
        current = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => e.source(),
        };
    }
    None
}

/// A subject alternative name, typed so each kind compares by its own rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum San {
    Dns(String),
    Ip(IpAddr),
    Email(String),
    Uri(String),
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(s) | San::Email(s) | San::Uri(s) => f.write_str(s),
            San::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The names of a parsed certificate.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    common_name: Option<String>,
    sans: Vec<San>,
}

impl Names {
    /// Parse the names of a DER certificate; `None` if it is not X.509.
    pub(crate) fn parse(cert: &CertificateDer<'_>) -> Option<Names> {
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
        let common_name = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut sans = Vec::new();
        // A malformed SAN extension leaves the list empty rather than failing: the
        // certificate already passed (or failed) verification by webpki.
        if let Ok(Some(ext)) = parsed.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(s) => sans.push(San::Dns((*s).to_owned())),
                    GeneralName::RFC822Name(s) => sans.push(San::Email((*s).to_owned())),
                    GeneralName::URI(s) => sans.push(San::Uri((*s).to_owned())),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            sans.push(San::Ip(ip));
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(Names { common_name, sans })
    }

    pub(crate) fn to_identity(&self) -> PeerIdentity {
        PeerIdentity {
            common_name: self.common_name.clone(),
            sans: self.sans.iter().map(San::to_string).collect(),
        }
    }

    /// Whether one entry of an allow-list names this certificate (see [`identity_allowed`]).
    pub(crate) fn matches(&self, entry: &str) -> bool {
        if self.common_name.as_deref() == Some(entry) {
            return true;
        }
        let entry_ip = entry.parse::<IpAddr>().ok();
        self.sans.iter().any(|san| match san {
            San::Dns(name) => name.eq_ignore_ascii_case(entry),
            San::Ip(ip) => entry_ip == Some(*ip),
            San::Email(s) | San::Uri(s) => s == entry,
        })
    }

    pub(crate) fn allowed<S: AsRef<str>>(&self, allowed: &[S]) -> bool {
        allowed.iter().any(|entry| self.matches(entry.as_ref()))
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(cn: Option<&str>, sans: Vec<San>) -> Names {
        Names {
            common_name: cn.map(str::to_owned),
            sans,
        }
    }

    #[test]
    fn matching_rules_per_kind() {
        let n = names(
            Some("his01"),
            vec![
                San::Dns("his01.hospital.local".into()),
                San::Ip("10.0.0.5".parse().expect("ip")),
                San::Ip("::1".parse().expect("ip")),
                San::Email("lab@hospital.local".into()),
                San::Uri("spiffe://hospital/his01".into()),
            ],
        );
        assert!(n.matches("his01"));
        assert!(!n.matches("HIS01"), "CN is exact");
        assert!(n.matches("HIS01.Hospital.LOCAL"), "DNS ignores case");
        assert!(n.matches("10.0.0.5"));
        assert!(n.matches("0:0:0:0:0:0:0:1"), "IPs compare as addresses");
        assert!(n.matches("lab@hospital.local"));
        assert!(n.matches("spiffe://hospital/his01"));
        assert!(!n.matches("SPIFFE://hospital/his01"));
        assert!(!n.matches("his02"));
        assert!(!n.matches("*.hospital.local"));
        assert!(!n.matches(""));
    }

    #[test]
    fn display_forms() {
        let full = PeerIdentity {
            common_name: Some("his01".into()),
            sans: vec!["his01.hospital.local".into(), "10.0.0.5".into()],
        };
        assert_eq!(
            full.to_string(),
            "CN=his01, SAN=[his01.hospital.local, 10.0.0.5]"
        );
        let cn_only = PeerIdentity {
            common_name: Some("his01".into()),
            sans: vec![],
        };
        assert_eq!(cn_only.to_string(), "CN=his01");
        let san_only = PeerIdentity {
            common_name: None,
            sans: vec!["a.example".into()],
        };
        assert_eq!(san_only.to_string(), "SAN=[a.example]");
        assert_eq!(PeerIdentity::default().to_string(), "(no CN or SAN)");
        let hostile = PeerIdentity {
            common_name: Some("evil\nFAKE LOG LINE".into()),
            sans: vec![],
        };
        assert_eq!(hostile.to_string(), "CN=evil\\nFAKE LOG LINE");
    }

    #[test]
    fn garbage_is_no_identity() {
        let garbage = CertificateDer::from(vec![1u8, 2, 3]);
        assert_eq!(peer_identity(&garbage), None);
        assert!(!identity_allowed(&garbage, &["anything"]));
        assert_eq!(not_after(&garbage), None);
    }

    #[test]
    fn refused_client_digs_through_io_and_rustls_errors() {
        let identity = PeerIdentity {
            common_name: Some("his02".into()),
            sans: vec![],
        };
        let refusal = ClientNotAllowed {
            identity: identity.clone(),
        };
        let rustls_error = rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(std::sync::Arc::new(refusal)),
        ));
        assert_eq!(refused_client(&rustls_error), Some(identity.clone()));
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_error);
        assert_eq!(refused_client(&io), Some(identity));
        let other = std::io::Error::other("connection reset");
        assert_eq!(refused_client(&other), None);
    }
}
