//! Test helpers shared by Ferry's test suites. Not shipped: only `[dev-dependencies]` use it.
//!
//! - [`TestPki`]: a throw-away certificate authority that writes CA, server and client
//!   certificates (valid or expired) as PEM files into a temporary directory, so TLS and mTLS
//!   tests run against real certificates over real loopback sockets without fixture files.
//!
//! Helpers favour short tests over error handling: they panic with a message saying what
//! failed, because in a test a panic is the failure report.

mod pki;

pub use pki::{CertFiles, TestPki};
