//! Ferry's connectors: the sources that receive messages and the destinations that deliver them.
//!
//! Every connector lives in a folder named after its protocol with the same inner layout, so a
//! reader who knows one knows them all:
//!
//! - [`mllp`]: `client.rs` (one framed request/response exchange, used by the destination and by
//!   `ferry send`), `source.rs` (listener), `destination.rs` (sender).
//! - [`http`]: `server.rs` (the TCP/TLS accept loop shared by every HTTP listener, the admin
//!   one included), `source.rs` (HL7 over HTTP listener), `poll.rs` (HTTP poller source),
//!   `destination.rs` (HTTPS sender).
//! - [`file`]: `destination.rs` (one file per message, temp file + fsync + rename).
//! - [`channel`]: the `channel` destination (hand the message to another channel of the same
//!   engine through its [`ferry_engine::Router`]); the `channel` source has no connector, it
//!   only receives what is routed to it.
//!
//! [`deploy`] turns a validated [`ferry_config::Config`] into running connectors around a
//! [`ferry_engine::Engine`]: nothing half-configured starts, because every TLS file, address and
//! URL is loaded and checked before the first listener binds. [`runtime`] keeps the running
//! channels and changes their lifecycle while the process runs ([`ChannelControl`]: deploy,
//! undeploy, start, stop, pause).

pub mod channel;
pub mod deploy;
pub mod file;
pub mod http;
pub mod mllp;
pub mod runtime;
pub mod syslog;
pub mod tls;

pub use deploy::{CheckError, DeployError, check_file};
pub use runtime::{ChannelControl, Deployment, LifecycleError, Runtime, deploy, deploy_clustered};
