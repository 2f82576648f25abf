//! File connectors: write each message to a local directory.

pub mod destination;

pub use destination::FileDestination;
