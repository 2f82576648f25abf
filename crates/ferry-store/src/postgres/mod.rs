//! The PostgreSQL backend: several Ferry nodes share one database.
//!
//! [`conn`] opens connections (plain on loopback, TLS with hostname verification otherwise).
//! The SQL for each concern lives beside its SQLite counterpart's name: `postgres/<concern>.rs`
//! mirrors `<concern>.rs`.

pub(crate) mod accounts;
pub mod conn;

pub use conn::{PgOptions, connect};
pub(crate) mod cluster;
