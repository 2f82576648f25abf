//! The engine: deploys channels on a store, runs their destination workers, shuts down cleanly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_store::{Store, StoreError};
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::destination::{Destination, Worker};
use crate::index::MetadataIndex;
use crate::ingest::{ChannelIngest, ChannelShared, ResponseMode};
use crate::pipeline::{DestinationProcessing, Pipeline};
use crate::retry::RetryPolicy;
use crate::router::Router;
use crate::stats::{ChannelStats, Stats};

/// One destination of a channel, ready to run.
pub struct DestinationSpec {
    /// Destination name, unique within its channel; its queue is keyed by it.
    pub name: String,
    /// The connector that delivers.
    pub sender: Arc<dyn Destination>,
    /// Retry policy for retryable failures.
    pub retry: RetryPolicy,
    /// The destination's filters, transformer and encoder (`processing.name` is ignored:
    /// `name` is used). A message its filters refuse gets a `FILTERED` row and never enters
    /// its queue.
    pub processing: DestinationProcessing,
    /// Response transformer: steps run on each final HL7 response (an ACK) before it is
    /// stored and, in after-delivery mode, relayed.
    pub response_transform: Vec<Arc<dyn crate::TransformStep>>,
    /// Delivery lanes. 1 (and 0): one message in flight, the whole queue in message-id order.
    /// More: messages with the same [`order_by`](Self::order_by) value are delivered in order,
    /// one at a time; different values concurrently on up to this many lanes; a message being
    /// retried holds up only its lane.
    pub workers: usize,
    /// The HL7 path whose value keys the lanes when `workers > 1`; `None` means
    /// [`DEFAULT_ORDER_BY`]. A payload that does not parse, or has no value there, goes to
    /// lane 0.
    pub order_by: Option<ferry_hl7::Path>,
}

impl DestinationSpec {
    /// A destination with the defaults: no filters or steps, default retry, one ordered worker.
    pub fn new(name: &str, sender: Arc<dyn Destination>) -> DestinationSpec {
        DestinationSpec {
            name: name.to_owned(),
            sender,
            retry: RetryPolicy::default(),
            processing: DestinationProcessing {
                name: name.to_owned(),
                wait_for_previous: true,
                ..DestinationProcessing::default()
            },
            response_transform: Vec::new(),
            workers: 1,
            order_by: None,
        }
    }
}

/// The lane key of keyed destinations unless configured: the first identifier of the patient.
pub const DEFAULT_ORDER_BY: &str = "PID-3.1";

/// One channel, ready to run. The source is started separately by its connector with the
/// [`ChannelIngest`] the engine hands out.
pub struct ChannelSpec {
    /// Channel name, unique in the engine.
    pub name: String,
    /// Destinations in order.
    pub destinations: Vec<DestinationSpec>,
    /// The source side of processing: preprocessor, inbound conversion, source filters and
    /// transformer. Its `destinations` are ignored: each [`DestinationSpec`] brings its own.
    pub source: Pipeline,
    /// When the sender is answered.
    pub response: ResponseMode,
    /// Duplicate detection: a message whose MSH-3, MSH-4 and MSH-10 were accepted on this
    /// channel less than this long ago is answered with the original ACK and not dispatched.
    /// `None`: off.
    pub dedupe_window: Option<std::time::Duration>,
    /// The values extracted from each received message and stored with it for search.
    pub index: MetadataIndex,
}

impl ChannelSpec {
    /// A channel with the defaults: no source processing, `on-receive`, no dedupe, the MRN
    /// indexed ([`MetadataIndex::default`]).
    pub fn new(name: &str, destinations: Vec<DestinationSpec>) -> ChannelSpec {
        ChannelSpec {
            name: name.to_owned(),
            destinations,
            source: Pipeline::default(),
            response: ResponseMode::OnReceive,
            dedupe_window: None,
            index: MetadataIndex::default(),
        }
    }

    /// The channel's whole processing pipeline, source and destinations (what `ferry test`
    /// runs offline).
    pub fn pipeline(&self) -> Pipeline {
        Pipeline {
            channel: self.name.clone(),
            destinations: self
                .destinations
                .iter()
                .map(|d| DestinationProcessing {
                    name: d.name.clone(),
                    ..d.processing.clone()
                })
                .collect(),
            ..self.source.clone()
        }
    }
}

/// Errors starting or stopping the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Two channels share a name.
    #[error("channel `{0}` is defined twice")]
    DuplicateChannel(String),
    /// The router given to [`Engine::start_with_router`] already serves another engine.
    #[error("the router is already in use by another engine")]
    RouterInUse,
    /// A destination worker stopped abnormally.
    #[error("destination worker `{channel}/{destination}` stopped: {reason}")]
    Worker {
        /// Channel name.
        channel: String,
        /// Destination name.
        destination: String,
        /// What happened.
        reason: String,
    },
}

/// Health as reported by `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Every channel's source is listening and its workers are running.
    pub all_deployed: bool,
    /// The store accepts writes (false after a failed commit: nothing is acknowledged then).
    pub store_ok: bool,
}

impl Health {
    /// Healthy overall.
    pub fn is_ok(&self) -> bool {
        self.all_deployed && self.store_ok
    }
}

/// A running engine.
pub struct Engine {
    store: Store,
    channels: Vec<ChannelIngest>,
    stats: Arc<Stats>,
    workers: JoinSet<(String, String, Result<(), StoreError>)>,
    shutdown: CancellationToken,
    store_failed: Arc<AtomicBool>,
    router: Router,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Deploy the channels: count each destination's queue, then start one worker per
    /// destination. Messages left queued by an earlier run (or a crash) are delivered first,
    /// in order.
    pub async fn start(store: Store, specs: Vec<ChannelSpec>) -> Result<Engine, EngineError> {
        Engine::start_with_router(store, specs, Router::new()).await
    }

    /// [`start`](Self::start), filling `router` with the channels before any destination
    /// worker runs, so connectors built with a clone of it (channel destinations) can route to
    /// any channel of this engine from their first delivery on.
    pub async fn start_with_router(
        store: Store,
        specs: Vec<ChannelSpec>,
        router: Router,
    ) -> Result<Engine, EngineError> {
        let shutdown = CancellationToken::new();
        let store_failed = Arc::new(AtomicBool::new(false));
        let mut workers = JoinSet::new();
        let mut ready = Vec::new();
        let mut channels = Vec::with_capacity(specs.len());
        let mut all_stats = Vec::with_capacity(specs.len());
        for spec in specs {
            if channels
                .iter()
                .any(|c: &ChannelIngest| c.channel() == spec.name)
            {
                return Err(EngineError::DuplicateChannel(spec.name));
            }
            let names: Vec<String> = spec.destinations.iter().map(|d| d.name.clone()).collect();
            let stats = Arc::new(ChannelStats::new(&spec.name, &names));
            let pipeline = Arc::new(spec.pipeline());
            let mut wakes = Vec::with_capacity(spec.destinations.len());
            let mut outcomes = Vec::with_capacity(spec.destinations.len());
            for (index, dest) in spec.destinations.into_iter().enumerate() {
                let relayed = matches!(spec.response,
                    ResponseMode::AfterDelivery { destination, .. } if destination == index);
                let outcome = relayed.then(|| broadcast::channel(1024).0);
                outcomes.push(outcome.clone());
                let depth = store.queue_depth(&spec.name, &dest.name).await?;
                let dest_stats = stats.destination(&dest.name).cloned().unwrap_or_default();
                dest_stats
                    .queue_depth
                    .store(i64::try_from(depth).unwrap_or(i64::MAX), Ordering::Relaxed);
                if depth > 0 {
                    tracing::info!(channel = %spec.name, destination = %dest.name, depth,
                        "resuming queued messages");
                }
                let wake = Arc::new(Notify::new());
                wakes.push(wake.clone());
                let worker = Worker {
                    channel: spec.name.clone(),
                    destination: dest.name.clone(),
                    sender: dest.sender,
                    retry: dest.retry,
                    store: store.clone(),
                    wake,
                    stats: dest_stats,
                    shutdown: shutdown.child_token(),
                    outcomes: outcome,
                    response_transform: dest.response_transform,
                    workers: dest.workers.max(1),
                    order_by: dest
                        .order_by
                        .or_else(|| ferry_hl7::Path::parse(DEFAULT_ORDER_BY).ok()),
                };
                ready.push(worker);
            }
            all_stats.push(stats.clone());
            channels.push(ChannelIngest {
                shared: Arc::new(ChannelShared {
                    name: spec.name,
                    store: store.clone(),
                    destinations: names,
                    wakes,
                    stats,
                    store_failed: store_failed.clone(),
                    pipeline,
                    response: spec.response,
                    outcomes,
                    dedupe_window: spec.dedupe_window,
                    index: spec.index,
                    router: router.downgrade(),
                }),
            });
        }
        if !router.fill(channels.clone()) {
            return Err(EngineError::RouterInUse);
        }
        for worker in ready {
            let (c, d) = (worker.channel.clone(), worker.destination.clone());
            let failed = store_failed.clone();
            workers.spawn(async move {
                let result = worker.run().await;
                if let Err(error) = &result {
                    // The queue can no longer be worked: report unhealthy at once rather
                    // than at shutdown.
                    tracing::error!(channel = %c, destination = %d, %error,
                        "destination worker stopped: the store failed");
                    failed.store(true, Ordering::Relaxed);
                }
                (c, d, result)
            });
        }
        Ok(Engine {
            router,
            store,
            channels,
            stats: Arc::new(Stats::new(all_stats)),
            workers,
            shutdown,
            store_failed,
        })
    }

    /// The ingest handle of a channel, for its source connector.
    pub fn ingest(&self, channel: &str) -> Option<ChannelIngest> {
        self.channels
            .iter()
            .find(|c| c.channel() == channel)
            .cloned()
    }

    /// A handle that routes messages to this engine's channels (for scripts).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The store the engine runs on.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A view of health that stays valid after the engine is moved (for the admin server).
    pub fn health_probe(&self) -> HealthProbe {
        HealthProbe {
            stats: self.stats.clone(),
            store_failed: self.store_failed.clone(),
        }
    }

    /// Current health.
    pub fn health(&self) -> Health {
        self.health_probe().health()
    }

    /// Stop: workers finish the attempt in flight (its outcome is recorded), pending completion
    /// records are flushed, and the store is closed.
    pub async fn shutdown(mut self) -> Result<(), EngineError> {
        for c in &self.channels {
            c.set_deployed(false);
        }
        self.shutdown.cancel();
        let mut first_error = None;
        while let Some(joined) = self.workers.join_next().await {
            let error = match joined {
                Ok((_, _, Ok(()))) => None,
                Ok((channel, destination, Err(e))) => Some(EngineError::Worker {
                    channel,
                    destination,
                    reason: e.to_string(),
                }),
                Err(join) => Some(EngineError::Worker {
                    channel: String::new(),
                    destination: String::new(),
                    reason: join.to_string(),
                }),
            };
            if let Some(e) = error {
                tracing::error!(error = %e, "worker stopped with an error");
                first_error.get_or_insert(e);
            }
        }
        self.store.close().await?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Cheap, cloneable health view of an engine.
#[derive(Clone, Debug)]
pub struct HealthProbe {
    stats: Arc<Stats>,
    store_failed: Arc<AtomicBool>,
}

impl HealthProbe {
    /// Current health.
    pub fn health(&self) -> Health {
        Health {
            all_deployed: self
                .stats
                .channels()
                .iter()
                .all(|c| c.deployed.load(Ordering::Relaxed)),
            store_ok: !self.store_failed.load(Ordering::Relaxed),
        }
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}
