//! A throw-away certificate authority for tests: a fresh CA per [`TestPki`], leaf
//! certificates on demand, every PEM written into a temporary directory that lives exactly as
//! long as the `TestPki`.
//!
//! Everything is generated in-process with rcgen (ECDSA P-256 keys), so tests need no fixture
//! files and no network. Validity dates are fixed (valid certificates run from 2020-01-01 to
//! 2100-01-01, expired ones from 2000-01-01 to 2001-01-01), so a test behaves the same whatever
//! day it runs.
//!
//! ```
//! use ferry_testkit::TestPki;
//!
//! let pki = TestPki::new("hospital");
//! let server = pki.server(&["localhost", "127.0.0.1"]);
//! let client = pki.client("his01", &["his01.hospital.local"]);
//! assert!(server.cert.exists() && client.key.exists());
//! assert!(pki.ca_cert_path().starts_with(pki.dir()));
//! // A CRL of this CA that revokes the client (PEM; `crl_der` writes DER).
//! let crl = pki.crl(&[&client]);
//! assert!(std::fs::read_to_string(crl).unwrap().starts_with("-----BEGIN X509 CRL-----"));
//! ```
//!
//! Every certificate gets a serial number unique within its `TestPki`, so [`TestPki::crl`]
//! can revoke it by its files. CRLs are valid from 2020-01-01 to 2100-01-01
//! ([`TestPki::expired_crl`]: `nextUpdate` 2001-01-01).
//!
//! The helpers panic on failure (with a message saying what failed): they only run in tests,
//! where a panic is the failure report.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};
use rustls_pki_types::CertificateDer;
use tempfile::TempDir;

/// The two PEM files of an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate (PEM, one `CERTIFICATE` block).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8 `PRIVATE KEY`).
    pub key: PathBuf,
}

/// A test certificate authority and the directory holding its files.
pub struct TestPki {
    name: String,
    dir: TempDir,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    ca_cert_path: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    issued: AtomicUsize,
    /// Serial number of every certificate issued, by its certificate file.
    serials: Mutex<HashMap<PathBuf, u64>>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("name", &self.name)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// How long a certificate is valid.
#[derive(Clone, Copy)]
enum Validity {
    Current,
    Expired,
}

#[derive(Clone, Copy)]
enum Role {
    Server,
    Client,
}

impl TestPki {
    /// A fresh CA with subject `CN=<name> Test CA, O=Ferry tests`, its certificate written to
    /// `<dir>/ca.pem` (and its key to `<dir>/ca.key`).
    ///
    /// # Panics
    /// If key generation, signing or writing to the temporary directory fails.
    pub fn new(name: &str) -> TestPki {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ferry-pki-{}-", file_stem(name)))
            .tempdir()
            .expect("create the TestPki temporary directory");
        let key = KeyPair::generate().expect("generate the CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} Test CA"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Ferry tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, Validity::Current);
        let cert = params
            .self_signed(&key)
            .expect("self-sign the CA certificate");
        let ca_pem = cert.pem();
        let ca_cert_path = dir.path().join("ca.pem");
        write(&ca_cert_path, &ca_pem);
        write(&dir.path().join("ca.key"), &key.serialize_pem());
        TestPki {
            name: name.to_owned(),
            ca_der: cert.der().clone(),
            dir,
            ca_pem,
            ca_cert_path,
            issuer: Issuer::new(params, key),
            issued: AtomicUsize::new(0),
            serials: Mutex::new(HashMap::new()),
        }
    }

    /// The name given to [`TestPki::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The temporary directory holding every PEM file of this PKI. It is deleted when the
    /// `TestPki` is dropped.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate file: use it as `ca` (clients) or `client_ca` (listeners). Owned, so
    /// it drops straight into `Some(pki.ca_cert_path())`.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.ca_cert_path.clone()
    }

    /// The CA certificate as PEM text.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate as DER, e.g. for a `rustls::RootCertStore`.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// A server certificate for `names` (at least one), valid now. Each name becomes a SAN:
    /// an IP SAN when it parses as an IP address (`127.0.0.1`, `::1`), else a DNS SAN
    /// (`localhost`). The subject CN is the first name. Extended key usage: server auth.
    ///
    /// # Panics
    /// If `names` is empty or a name is not a valid DNS name or IP address.
    pub fn server(&self, names: &[&str]) -> CertFiles {
        let first = names
            .first()
            .expect("TestPki::server needs at least one name");
        self.issue("server", first, names, Role::Server, Validity::Current)
    }

    /// A client certificate with subject `CN=<common_name>` and the given SANs, valid now.
    /// SAN kinds are detected: IP address, URI (contains `://` or starts with `urn:`),
    /// e-mail (contains `@`), else DNS name. Extended key usage: client auth.
    ///
    /// # Panics
    /// If a SAN is not valid for its detected kind.
    pub fn client(&self, common_name: &str, sans: &[&str]) -> CertFiles {
        self.issue("client", common_name, sans, Role::Client, Validity::Current)
    }

    /// A client certificate like [`TestPki::client`] (no SANs) whose validity ended on
    /// 2001-01-01.
    pub fn expired_client(&self, common_name: &str) -> CertFiles {
        self.issue(
            "expired-client",
            common_name,
            &[],
            Role::Client,
            Validity::Expired,
        )
    }

    /// A server certificate like [`TestPki::server`] whose validity ended on 2001-01-01: what
    /// a client must refuse.
    ///
    /// # Panics
    /// As [`TestPki::server`].
    pub fn expired_server(&self, names: &[&str]) -> CertFiles {
        let first = names
            .first()
            .expect("TestPki::expired_server needs at least one name");
        self.issue(
            "expired-server",
            first,
            names,
            Role::Server,
            Validity::Expired,
        )
    }

    /// A CRL of this CA, valid now (thisUpdate 2020-01-01, nextUpdate 2100-01-01), that
    /// revokes `revoked` (none: a CRL that revokes nothing), written as PEM; returns its path.
    ///
    /// # Panics
    /// If a certificate of `revoked` was not issued by this `TestPki`, or signing fails.
    pub fn crl(&self, revoked: &[&CertFiles]) -> PathBuf {
        self.write_crl("crl.pem", revoked, Validity::Current, true)
    }

    /// As [`TestPki::crl`], written as DER.
    pub fn crl_der(&self, revoked: &[&CertFiles]) -> PathBuf {
        self.write_crl("crl.der", revoked, Validity::Current, false)
    }

    /// As [`TestPki::crl`], but expired: its nextUpdate was 2001-01-01.
    pub fn expired_crl(&self, revoked: &[&CertFiles]) -> PathBuf {
        self.write_crl("expired-crl.pem", revoked, Validity::Expired, true)
    }

    fn write_crl(
        &self,
        name: &str,
        revoked: &[&CertFiles],
        validity: Validity,
        pem: bool,
    ) -> PathBuf {
        let serials = self.serials.lock().expect("serials lock");
        let revoked_certs = revoked
            .iter()
            .map(|files| {
                let serial = serials.get(&files.cert).unwrap_or_else(|| {
                    panic!("{} was not issued by this TestPki", files.cert.display())
                });
                RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: date_time_ymd(2020, 6, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                }
            })
            .collect();
        drop(serials);
        let (this_update, next_update) = match validity {
            Validity::Current => (date_time_ymd(2020, 1, 1), date_time_ymd(2100, 1, 1)),
            Validity::Expired => (date_time_ymd(2000, 1, 1), date_time_ymd(2001, 1, 1)),
        };
        let n = self.issued.fetch_add(1, Ordering::Relaxed) + 1;
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(n as u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).expect("sign the CRL");
        let path = self.dir.path().join(format!("{n:02}-{name}"));
        if pem {
            write(&path, &crl.pem().expect("CRL as PEM"));
        } else {
            std::fs::write(&path, crl.der().as_ref())
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        path
    }

    fn issue(
        &self,
        kind: &str,
        common_name: &str,
        sans: &[&str],
        role: Role,
        validity: Validity,
    ) -> CertFiles {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans.iter().map(|s| san(s)).collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match role {
            Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity);
        let n = self.issued.fetch_add(1, Ordering::Relaxed) + 1;
        params.serial_number = Some(SerialNumber::from(n as u64));

        let key = KeyPair::generate().expect("generate a leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign a leaf certificate");
        let stem = format!("{n:02}-{kind}-{}", file_stem(common_name));
        let files = CertFiles {
            cert: self.dir.path().join(format!("{stem}.pem")),
            key: self.dir.path().join(format!("{stem}.key")),
        };
        write(&files.cert, &cert.pem());
        write(&files.key, &key.serialize_pem());
        self.serials
            .lock()
            .expect("serials lock")
            .insert(files.cert.clone(), n as u64);
        files
    }
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    let (from, to) = match validity {
        Validity::Current => ((2020, 1, 1), (2100, 1, 1)),
        Validity::Expired => ((2000, 1, 1), (2001, 1, 1)),
    };
    params.not_before = date_time_ymd(from.0, from.1, from.2);
    params.not_after = date_time_ymd(to.0, to.1, to.2);
}

fn san(name: &str) -> SanType {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return SanType::IpAddress(ip);
    }
    let ia5 = |s: &str| {
        rcgen::string::Ia5String::try_from(s)
            .unwrap_or_else(|e| panic!("SAN `{s}` is not IA5 (ASCII) text: {e}"))
    };
    if name.contains("://") || name.starts_with("urn:") {
        SanType::URI(ia5(name))
    } else if name.contains('@') {
        SanType::Rfc822Name(ia5(name))
    } else {
        SanType::DnsName(ia5(name))
    }
}

/// A name reduced to characters safe in a file name.
fn file_stem(name: &str) -> String {
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if stem.is_empty() {
        "_".to_owned()
    } else {
        stem
    }
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).expect("read")
    }

    #[test]
    fn files_live_in_the_temp_dir_and_die_with_it() {
        let pki = TestPki::new("unit test");
        let dir = pki.dir().to_path_buf();
        assert_eq!(read(&pki.ca_cert_path()), pki.ca_pem());
        assert!(pki.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!pki.ca_der().as_ref().is_empty());

        let server = pki.server(&["localhost", "127.0.0.1"]);
        let client = pki.client("his01", &["his01.hospital.local"]);
        let expired = pki.expired_client("old");
        let expired_server = pki.expired_server(&["localhost"]);
        for files in [&server, &client, &expired, &expired_server] {
            assert!(files.cert.starts_with(&dir) && files.key.starts_with(&dir));
            assert!(read(&files.cert).starts_with("-----BEGIN CERTIFICATE-----"));
            assert!(read(&files.key).starts_with("-----BEGIN PRIVATE KEY-----"));
        }
        assert_ne!(server.cert, client.cert);
        assert_eq!(
            client.cert.file_name().and_then(|n| n.to_str()),
            Some("02-client-his01.pem")
        );

        drop(pki);
        assert!(!dir.exists(), "the directory is removed with the TestPki");
    }

    #[test]
    fn each_pki_is_a_different_ca() {
        let a = TestPki::new("a");
        let b = TestPki::new("a");
        assert_ne!(a.ca_pem(), b.ca_pem());
        assert_ne!(a.dir(), b.dir());
        assert_eq!(a.name(), "a");
    }

    #[test]
    fn san_kinds_are_detected() {
        assert!(matches!(san("127.0.0.1"), SanType::IpAddress(_)));
        assert!(matches!(san("::1"), SanType::IpAddress(_)));
        assert!(matches!(san("localhost"), SanType::DnsName(_)));
        assert!(matches!(san("a@b.example"), SanType::Rfc822Name(_)));
        assert!(matches!(san("spiffe://h/x"), SanType::URI(_)));
        assert!(matches!(san("urn:oid:1.2.3"), SanType::URI(_)));
    }

    #[test]
    fn file_stems_are_safe() {
        assert_eq!(file_stem("his01.hospital.local"), "his01.hospital.local");
        assert_eq!(file_stem("a/b c"), "a_b_c");
        assert_eq!(file_stem(""), "_");
    }
}
