//! The one error type of this crate.
//!
//! Every variant that comes from a file names that file first, the way a compiler names the
//! source file of a diagnostic, so that an operator reading a log line such as
//!
//! ```text
//! certs/client.pem: no certificate found in PEM file (expected a `-----BEGIN CERTIFICATE-----` block)
//! ```
//!
//! knows which file to fix and what is wrong with it without reading any code.

use std::path::PathBuf;

/// Why a TLS configuration could not be built, or a name not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read: it is missing, unreadable or a directory.
    #[error("{}: cannot read file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },

    /// A file holds a PEM section that cannot be decoded (bad base64, missing end line, …).
    #[error("{}: malformed PEM: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM decoder found.
        #[source]
        source: rustls_pki_types::pem::Error,
    },

    /// A file that should hold certificates holds none (a key only, DER, or not PEM at all).
    #[error(
        "{}: no certificate found in PEM file (expected a `-----BEGIN CERTIFICATE-----` block)",
        path.display()
    )]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },

    /// A file that should hold a private key holds none.
    #[error(
        "{}: no private key found in PEM file (expected a `PRIVATE KEY`, `RSA PRIVATE KEY` or \
         `EC PRIVATE KEY` block)",
        path.display()
    )]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },

    /// The private key is encrypted with a passphrase, which Ferry does not support.
    #[error(
        "{}: the private key is encrypted with a passphrase; Ferry needs an unencrypted key \
         (protect it with file permissions), e.g. `openssl pkey -in KEY -out KEY.plain`",
        path.display()
    )]
    EncryptedPrivateKey {
        /// The file.
        path: PathBuf,
    },

    /// A key file holds more than one private key, so which one to use is ambiguous.
    #[error("{}: found {count} private keys in PEM file, expected exactly one", path.display())]
    SeveralPrivateKeys {
        /// The file.
        path: PathBuf,
        /// How many keys it holds.
        count: usize,
    },

    /// The private key was decoded from PEM but the crypto provider cannot use it.
    #[error("{}: private key cannot be used: {source}", path.display())]
    UnusableKey {
        /// The key file.
        path: PathBuf,
        /// rustls' reason (unsupported algorithm, corrupt key, …).
        #[source]
        source: rustls::Error,
    },

    /// A certificate in a file is not a valid X.509 certificate.
    #[error("{}: certificate #{index} cannot be used: {source}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Position of the certificate in the file, starting at 1.
        index: usize,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },

    /// The private key does not belong to the certificate (its public key differs).
    #[error(
        "{}: private key does not match the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },

    /// A CA bundle cannot be used to verify client certificates.
    #[error("{}: cannot verify client certificates with this CA bundle: {source}", path.display())]
    ClientCa {
        /// The `client_ca` file.
        path: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },

    /// A `crl` file in PEM holds no `X509 CRL` block.
    #[error(
        "{}: no certificate revocation list found in PEM file (expected a \
         `-----BEGIN X509 CRL-----` block, or a DER file)",
        path.display()
    )]
    NoCrl {
        /// The file.
        path: PathBuf,
    },

    /// A `crl` file holds something that is not a usable certificate revocation list.
    #[error("{}: certificate revocation list #{index} cannot be used: {reason}", path.display())]
    BadCrl {
        /// The file.
        path: PathBuf,
        /// Position of the CRL in the file, starting at 1.
        index: usize,
        /// What the parser found.
        reason: String,
    },

    /// `crl` is set on a listener without `client_ca`.
    #[error(
        "`crl` is set but `client_ca` is not: revocation lists are checked for client \
         certificates, so set `client_ca` to the CA bundle that issues them"
    )]
    CrlWithoutClientCa,

    /// A required setting of a TLS table is empty.
    #[error("TLS is configured without `{setting}`: {what}")]
    MissingSetting {
        /// The key of the TLS table (`cert`, `key`).
        setting: &'static str,
        /// What it should name.
        what: &'static str,
    },

    /// `allowed_clients` is set on a listener without `client_ca`.
    #[error(
        "`allowed_clients` is set but `client_ca` is not: an allow-list of client identities \
         needs mTLS, so set `client_ca` to the CA bundle that issues the client certificates"
    )]
    AllowListWithoutClientCa,

    /// `allowed_clients` holds an empty or blank entry, which would match nothing.
    #[error("`allowed_clients` entry #{index} is empty")]
    EmptyAllowedClient {
        /// Position of the entry, starting at 1.
        index: usize,
    },

    /// A client identity has a certificate but no key.
    #[error(
        "TLS `cert` is set ({}) but `key` is not: a client identity needs both",
        cert.display()
    )]
    CertWithoutKey {
        /// The certificate file.
        cert: PathBuf,
    },

    /// A client identity has a key but no certificate.
    #[error(
        "TLS `key` is set ({}) but `cert` is not: a client identity needs both",
        key.display()
    )]
    KeyWithoutCert {
        /// The key file.
        key: PathBuf,
    },

    /// No `ca` was given and the operating system's trust store yielded no usable root.
    #[error(
        "no `ca` is set and the operating system trust store has no usable root certificate \
         ({details}); set `ca` to the PEM bundle of the CA that issued the server's certificate"
    )]
    NoNativeRoots {
        /// What the trust-store loader reported.
        details: String,
    },

    /// A host name is neither a DNS name nor an IP address literal.
    #[error("`{name}` is not a valid TLS server name (expected a DNS name or an IP address)")]
    InvalidServerName {
        /// The name as given.
        name: String,
    },

    /// rustls refused the assembled configuration.
    #[error("cannot build TLS configuration: {source}")]
    Config {
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
}
