//! The Ferry channel runtime.
//!
//! A channel is one source feeding an ordered list of destinations. This crate owns what happens
//! between "a source read some bytes" and "every destination has the message": it knows nothing
//! about sockets or TLS (that is `ferry-connectors`) and nothing about TOML (that is
//! `ferry-config`).
//!
//! The life of a message through this crate:
//!
//! 1. A source hands the bytes to [`ChannelIngest::receive`]. The HL7 header is parsed, the raw
//!    message and one `QUEUED` row per destination are committed to the [`ferry_store::Store`]
//!    (group commit, fsync'd), and only then is the positive ACK returned to the source. Input
//!    that cannot be parsed is stored too, with status `ERROR`, and answered with `AR`. A
//!    message that fails one of the channel's [`FilterRule`]s is stored as `FILTERED`,
//!    answered `AA`, and queued for no destination.
//! 2. Each destination has one [`worker`](destination) that streams its queue from the store in
//!    batches, in message-id order, and hands each message to a [`Destination`] implementation.
//!    A retryable failure is retried with exponential backoff ([`RetryPolicy`]) while the queue
//!    waits behind it, so order holds; a permanent failure marks the message `ERROR` and the
//!    queue moves on. With [`DestinationSpec::workers`] above 1, order is kept per key instead
//!    (the `order_by` HL7 path, [`DEFAULT_ORDER_BY`] unless set): one lane per hash bucket of
//!    keys, each lane in order, the lanes concurrently.
//! 3. After a crash nothing needs replaying: the queue *is* the set of `QUEUED` rows, so a
//!    restarted worker simply starts again at the head.
//!
//! With a dedupe window ([`ChannelSpec::dedupe_window`]), a message whose MSH-3, MSH-4 and
//! MSH-10 were already accepted on the channel within the window is answered with the original
//! ACK, stored as `FILTERED` (`duplicate of message N`) and dispatched nowhere.
//!
//! A [`Router`] hands messages from one channel to another inside the engine (`channel`
//! destinations, scripts); it exists before the engine starts so connectors can hold it.
//!
//! [`MetadataIndex`] extracts the values a channel indexes for search (its MRN, by default)
//! from each received message; they are stored with it.
//! Each deployed channel is started, paused or stopped ([`ChannelState`], [`lifecycle`]); the
//! engine changes that, and deploys and undeploys channels, while it runs, without losing an
//! acknowledged message.
//!
//! [`Stats`] counts what happened per channel and destination for `/metrics`.
//!
//! [`transform`] holds the declarative steps ([`Step`], [`apply_all`]), code tables, the
//! JSON ↔ HL7 templates and the destination [`Encoder`]s.

mod certs;
pub mod cluster;
mod dedupe;
mod destination;
mod engine;
mod filter;
mod index;
mod ingest;
pub mod lifecycle;
pub mod phi;
mod pipeline;
mod retry;
mod router;
mod stages;
mod stats;
pub mod transform;

pub use certs::{CertificateGauge, Certificates};
pub use destination::{Destination, Outbound, SendFuture, SendOutcome};
pub use engine::{
    ChannelSpec, DEFAULT_ORDER_BY, DestinationSpec, Engine, EngineError, Health, HealthProbe,
};
pub use filter::FilterRule;
pub use index::{DEFAULT_INDEX, MAX_INDEXED_VALUE_BYTES, MetadataIndex};
pub use ingest::{ChannelIngest, IngestReply, ReprocessError, ResponseMode};
pub use lifecycle::{ChannelState, Transition};
pub use pipeline::{
    Accepted, Context, Convert, DestinationProcessing, DestinationResult, Encode, Filter,
    FilterStep, Pipeline, Preprocess, Processed, TransformStep,
};
pub use retry::RetryPolicy;
pub use router::{RouteError, Router};
pub use stages::{ResponseScript, ScriptStep};
pub use stats::{ChannelStats, DestinationStats, Stats};
pub use transform::{
    CodeTable, Encoder, FieldPath, Hl7Template, JsonTemplate, Placement, SegmentRef, SetValue,
    Step, StepError, TemplateError, apply_all,
};

/// Re-exported so connectors and the binary share one cancellation type for graceful shutdown.
pub use tokio_util::sync::CancellationToken as Shutdown;
