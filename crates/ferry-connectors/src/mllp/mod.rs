//! MLLP (Minimal Lower Layer Protocol) over TCP or TLS: HL7 v2's native transport.

pub mod client;
pub mod destination;
pub mod source;

pub use client::{MllpClientError, MllpConnection, MllpEndpoint};
pub use destination::{MllpDestination, NakPolicy};
pub use source::{MllpSource, MllpSourceSettings};
