//! Test helpers shared by Ferry's test suites. Not shipped: only `[dev-dependencies]` use it.
//!
//! - [`TestPki`]: a throw-away certificate authority that writes CA, server and client
//!   certificates (valid or expired) as PEM files into a temporary directory, so TLS and mTLS
//!   tests run against real certificates over real loopback sockets without fixture files.
//! - [`http_peer::HttpPeer`]: a scripted HTTP(S) server that records requests (a cloud API).
//! - [`mllp_peer::MllpPeer`]: a scripted MLLP receiver that records messages and answers with
//!   correct, mismatched, negative or no ACKs (a hospital system).
//! - [`smtp_peer::SmtpPeer`]: a minimal SMTP server (STARTTLS, AUTH PLAIN) that records mails
//!   (a mail relay, for alerts).
//! - [`postgres::TestDb`]: a private schema on the machine's PostgreSQL server per test.
//!
//! Helpers favour short tests over error handling: they panic with a message saying what
//! failed, because in a test a panic is the failure report.

pub mod http_peer;
pub mod mllp_peer;
mod pki;
pub mod postgres;
pub mod smtp_peer;

pub use pki::{CertFiles, TestPki};
