//! Certificates the node loaded, for `ferry_tls_certificate_expiry_days` on `/metrics`.
//!
//! The engine knows nothing of TLS: whoever loads a certificate (deploy, the admin listener,
//! a hot reload) describes it as a [`CertificateGauge`] and puts it here with
//! [`Certificates::replace`], which swaps every entry of one connector at once. The gauge is
//! computed when `/metrics` is read, so the days left go down without anyone updating them.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// One loaded certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateGauge {
    /// Channel name (empty for the admin listener).
    pub channel: String,
    /// `source`, the destination's name, or `admin`.
    pub connector: String,
    /// `server`, `client`, `ca`, or `crl` for a certificate revocation list (subject: its
    /// issuer, serial: its CRL number, `not_after`: its `nextUpdate`).
    pub kind: String,
    /// Subject, as X.509 text.
    pub subject: String,
    /// Serial number (hex).
    pub serial: String,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
}

/// Every certificate the node loaded.
#[derive(Debug, Default)]
pub struct Certificates {
    entries: Mutex<Vec<CertificateGauge>>,
}

impl Certificates {
    /// Replace the certificates of one connector (`channel`, `connector`) with `certs`.
    pub fn replace(&self, channel: &str, connector: &str, certs: Vec<CertificateGauge>) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|e| !(e.channel == channel && e.connector == connector));
            entries.extend(certs);
        }
    }

    /// Forget every certificate of an undeployed (or redeployed) channel.
    pub fn remove_channel(&self, channel: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|e| e.channel != channel);
        }
    }

    /// A copy of every entry.
    pub fn all(&self) -> Vec<CertificateGauge> {
        self.entries.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Append the gauge family to a Prometheus text exposition, days counted from `now`
    /// (Unix seconds).
    pub fn render(&self, out: &mut String, now: i64) {
        let entries = self.all();
        let name = "ferry_tls_certificate_expiry_days";
        let _ = writeln!(
            out,
            "# HELP {name} Whole days until a loaded certificate expires, or a loaded CRL's \
             nextUpdate passes (kind=\"crl\"); negative once expired."
        );
        let _ = writeln!(out, "# TYPE {name} gauge");
        for e in &entries {
            crate::stats::sample(
                out,
                name,
                &[
                    ("channel", &e.channel),
                    ("connector", &e.connector),
                    ("kind", &e.kind),
                    ("subject", &e.subject),
                    ("serial", &e.serial),
                ],
                (e.not_after - now).div_euclid(86_400),
            );
        }
    }
}

/// Now, in Unix seconds.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(connector: &str, serial: &str, not_after: i64) -> CertificateGauge {
        CertificateGauge {
            channel: "adt".into(),
            connector: connector.into(),
            kind: "server".into(),
            subject: "CN=localhost".into(),
            serial: serial.into(),
            not_after,
        }
    }

    #[test]
    fn replace_swaps_one_connector_and_days_round_down() {
        let certs = Certificates::default();
        certs.replace(
            "adt",
            "source",
            vec![gauge("source", "01", 10 * 86_400 + 5)],
        );
        certs.replace("adt", "api", vec![gauge("api", "02", -1)]);
        certs.replace("adt", "source", vec![gauge("source", "03", 2 * 86_400)]);
        let mut out = String::new();
        certs.render(&mut out, 0);
        assert!(!out.contains("serial=\"01\""), "{out}");
        assert!(
            out.contains(
                "connector=\"source\",kind=\"server\",subject=\"CN=localhost\",serial=\"03\"} 2"
            ),
            "{out}"
        );
        assert!(out.contains("serial=\"02\"} -1"), "{out}");
    }
}
