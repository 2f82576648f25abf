//! The engine: deploys channels on a store, runs their destination workers, changes their
//! lifecycle state while it runs (see [`crate::lifecycle`]), shuts down cleanly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ferry_store::{Store, StoreError};
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterHandle;
use crate::destination::{Destination, Worker};
use crate::index::MetadataIndex;
use crate::ingest::{ChannelIngest, ChannelShared, ResponseMode};
use crate::lifecycle::{ChannelState, Gate, Transition};
use crate::pipeline::{DestinationProcessing, Pipeline};
use crate::retry::RetryPolicy;
use crate::router::Router;
use crate::stats::{ChannelStats, Stats};
use ferry_store::cluster::destination_resource;

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

/// Errors starting or stopping the engine or one of its channels.
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
    /// No channel of that name is deployed.
    #[error("no channel `{0}` is deployed")]
    UnknownChannel(String),
    /// The engine is shutting down (or has shut down): channels change no more.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Health as reported by `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Every started channel's source is listening and its workers are running (a channel
    /// paused or stopped on purpose does not count against it).
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

/// How long [`Engine::shutdown`] waits for receives in flight (messages routed between
/// channels) before it stops the workers. Sources are stopped before the engine.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// What a destination worker task returns: its channel, its destination, and how it ended.
type WorkerExit = (String, String, Result<(), StoreError>);

/// A running engine: its channels, their destination workers and the store they share.
///
/// Clones are handles to the same engine (the connectors and the admin server share it);
/// [`shutdown`](Self::shutdown) through any of them stops it for all. Channels can be paused,
/// stopped, started, deployed and undeployed while it runs (see [`crate::lifecycle`]).
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    store: Store,
    stats: Arc<Stats>,
    store_failed: Arc<AtomicBool>,
    router: Router,
    /// Parent of every worker's stop token.
    root: CancellationToken,
    /// The cluster this node is part of (`None`: a single node works every queue).
    cluster: Option<ClusterHandle>,
    /// The deployed channels, in deployment order.
    channels: RwLock<Vec<Arc<Deployed>>>,
    /// Held through every lifecycle change, so changes never interleave.
    lifecycle: tokio::sync::Mutex<Lifecycle>,
}

#[derive(Default)]
struct Lifecycle {
    /// Set by shutdown: no change is accepted after it.
    closed: bool,
    /// The first worker that ended with an error, reported by shutdown.
    first_error: Option<EngineError>,
}

/// One deployed channel: its ingest handle and its destination workers.
struct Deployed {
    ingest: ChannelIngest,
    /// One worker per destination, cloned to run each time the channel starts.
    workers: Vec<Worker>,
    /// The running workers (`None` while stopped). Only touched under the lifecycle lock.
    running: Mutex<Option<Running>>,
}

struct Running {
    stop: CancellationToken,
    tasks: JoinSet<WorkerExit>,
}

impl Deployed {
    fn name(&self) -> &str {
        self.ingest.channel()
    }

    fn stats(&self) -> &Arc<ChannelStats> {
        &self.ingest.shared.stats
    }

    fn state(&self) -> ChannelState {
        self.stats().state()
    }

    fn set_state(&self, state: ChannelState) {
        self.stats().set_state(state);
    }

    /// Close the gate (refuse new messages) and wait up to `drain` for those inside.
    async fn close_gate(&self, drain: Duration) -> bool {
        self.ingest.set_deployed(false);
        let drained = self.ingest.shared.gate.close(drain).await;
        if !drained {
            tracing::warn!(channel = %self.name(), drain_ms = drain.as_millis() as u64,
                "messages still being received after the drain time; not waiting for them \
                 (they are stored and answered when they finish)");
        }
        drained
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .deployed()
            .iter()
            .map(|d| d.name().to_owned())
            .collect();
        f.debug_struct("Engine")
            .field("channels", &names)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
        Engine::start_clustered(store, specs, router, None).await
    }

    /// [`start_with_router`](Self::start_with_router) as one node of a cluster: each
    /// destination worker runs only while `cluster` holds its lease (see [`crate::cluster`]).
    /// `None` runs every worker here, as a single node.
    pub async fn start_clustered(
        store: Store,
        specs: Vec<ChannelSpec>,
        router: Router,
        cluster: Option<ClusterHandle>,
    ) -> Result<Engine, EngineError> {
        let store_failed = Arc::new(AtomicBool::new(false));
        let mut channels: Vec<Arc<Deployed>> = Vec::with_capacity(specs.len());
        for spec in specs {
            if channels.iter().any(|c| c.name() == spec.name) {
                return Err(EngineError::DuplicateChannel(spec.name));
            }
            let stats = Arc::new(ChannelStats::new(&spec.name, &destination_names(&spec)));
            channels.push(Arc::new(
                build(&store, spec, stats, &store_failed, &router).await?,
            ));
        }
        if !router.fill(channels.iter().map(|c| c.ingest.clone()).collect()) {
            return Err(EngineError::RouterInUse);
        }
        let engine = Engine {
            shared: Arc::new(Shared {
                stats: Arc::new(Stats::new(
                    channels.iter().map(|c| c.stats().clone()).collect(),
                )),
                store,
                store_failed,
                router,
                root: CancellationToken::new(),
                cluster,
                channels: RwLock::new(channels.clone()),
                lifecycle: tokio::sync::Mutex::new(Lifecycle::default()),
            }),
        };
        if let Some(cluster) = &engine.shared.cluster {
            engine.shared.stats.attach_leases(cluster.gauge());
        }
        for channel in &channels {
            engine.start_workers(channel);
            channel.ingest.shared.gate.open();
            channel.set_state(ChannelState::Started);
        }
        Ok(engine)
    }

    fn deployed(&self) -> Vec<Arc<Deployed>> {
        match self.shared.channels.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn find(&self, channel: &str) -> Option<Arc<Deployed>> {
        self.deployed().into_iter().find(|c| c.name() == channel)
    }

    /// The ingest handle of a deployed channel, for its source connector.
    pub fn ingest(&self, channel: &str) -> Option<ChannelIngest> {
        self.find(channel).map(|c| c.ingest.clone())
    }

    /// The names of the deployed channels, in deployment order.
    pub fn channel_names(&self) -> Vec<String> {
        self.deployed()
            .iter()
            .map(|c| c.name().to_owned())
            .collect()
    }

    /// The lifecycle state of a deployed channel (`None`: not deployed).
    pub fn channel_state(&self, channel: &str) -> Option<ChannelState> {
        self.find(channel).map(|c| c.state())
    }

    /// A handle that routes messages to this engine's channels (for scripts).
    pub fn router(&self) -> Router {
        self.shared.router.clone()
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// The cluster this node is part of, if any (polling sources run under its leases too).
    pub fn cluster(&self) -> Option<&ClusterHandle> {
        self.shared.cluster.as_ref()
    }

    /// The store the engine runs on.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// A view of health that stays valid after the engine is moved (for the admin server).
    pub fn health_probe(&self) -> HealthProbe {
        HealthProbe {
            stats: self.shared.stats.clone(),
            store_failed: self.shared.store_failed.clone(),
        }
    }

    /// Current health.
    pub fn health(&self) -> Health {
        self.health_probe().health()
    }

    /// Run a clone of every worker template of `channel` (no-op when they run).
    fn start_workers(&self, channel: &Deployed) {
        let mut running = lock(&channel.running);
        if running.is_some() {
            return;
        }
        let stop = self.shared.root.child_token();
        let mut tasks = JoinSet::new();
        for template in &channel.workers {
            let mut worker = template.clone();
            worker.shutdown = stop.child_token();
            let (c, d) = (worker.channel.clone(), worker.destination.clone());
            let failed = self.shared.store_failed.clone();
            let cluster = self.shared.cluster.clone();
            tasks.spawn(async move {
                let result = match cluster {
                    None => worker.run().await,
                    Some(cluster) => {
                        let resource = destination_resource(&worker.channel, &worker.destination);
                        let (stop, wake) = (worker.shutdown.clone(), worker.wake.clone());
                        let leased =
                            cluster.run_leased(&resource, stop.clone(), Some(wake), |token| {
                                let mut leased = worker.clone();
                                leased.shutdown = token;
                                leased.run()
                            });
                        // Other nodes receive into and deliver from this queue too: its depth
                        // gauge is recounted from the shared store rather than kept locally.
                        let recount = recount_depth(&worker, stop, cluster.settings().lease_ttl);
                        let (result, ()) = tokio::join!(leased, recount);
                        result
                    }
                };
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
        *running = Some(Running { stop, tasks });
    }

    /// Stop `channel`'s workers and wait for them: a delivery attempt in flight is abandoned
    /// (the message stays `QUEUED` and is sent again after the next start: delivery is
    /// at-least-once) and completion records already made are flushed. Errors are logged and
    /// the first is kept for [`shutdown`](Self::shutdown).
    async fn stop_workers(&self, channel: &Deployed, life: &mut Lifecycle) {
        let Some(mut running) = lock(&channel.running).take() else {
            return;
        };
        running.stop.cancel();
        while let Some(joined) = running.tasks.join_next().await {
            let error = match joined {
                Ok((_, _, Ok(()))) => None,
                Ok((channel, destination, Err(e))) => Some(EngineError::Worker {
                    channel,
                    destination,
                    reason: e.to_string(),
                }),
                Err(join) => Some(EngineError::Worker {
                    channel: channel.name().to_owned(),
                    destination: String::new(),
                    reason: join.to_string(),
                }),
            };
            if let Some(e) = error {
                tracing::error!(error = %e, "worker stopped with an error");
                life.first_error.get_or_insert(e);
            }
        }
    }

    async fn lifecycle(&self) -> Result<tokio::sync::MutexGuard<'_, Lifecycle>, EngineError> {
        let life = self.shared.lifecycle.lock().await;
        if life.closed {
            return Err(EngineError::ShuttingDown);
        }
        Ok(life)
    }

    /// In a cluster, record an operator's lifecycle change in the shared table (shown by
    /// `ferry cluster status`).
    fn record_state(&self, channel: &str, state: ChannelState) {
        if let Some(cluster) = &self.shared.cluster {
            cluster.record_channel_state(channel, state.as_str());
        }
    }

    fn known(&self, channel: &str) -> Result<Arc<Deployed>, EngineError> {
        self.find(channel)
            .ok_or_else(|| EngineError::UnknownChannel(channel.to_owned()))
    }

    /// Pause `channel`: refuse new messages (waiting up to `drain` for the ones being
    /// received to be stored and answered) while its destination workers keep draining the
    /// queues. From `stopped`, this starts the workers without accepting anything. The
    /// channel's source (listener, poller) must be stopped by its owner first.
    pub async fn pause_channel(
        &self,
        channel: &str,
        drain: Duration,
    ) -> Result<Transition, EngineError> {
        let _life = self.lifecycle().await?;
        let c = self.known(channel)?;
        let from = c.state();
        let drained = match from {
            ChannelState::Started => c.close_gate(drain).await,
            ChannelState::Paused => true,
            ChannelState::Stopped => {
                self.start_workers(&c);
                true
            }
        };
        c.set_state(ChannelState::Paused);
        self.record_state(channel, ChannelState::Paused);
        tracing::info!(channel, %from, "channel paused");
        Ok(Transition {
            from: Some(from),
            to: Some(ChannelState::Paused),
            drained,
        })
    }

    /// Stop `channel`: refuse new messages (waiting up to `drain` for the ones being received
    /// to be stored and answered), then stop its destination workers. Queued messages stay
    /// `QUEUED` in the store and are delivered after [`start_channel`](Self::start_channel);
    /// a delivery attempt in flight is abandoned and made again then (at-least-once). The
    /// channel's source must be stopped by its owner first.
    pub async fn stop_channel(
        &self,
        channel: &str,
        drain: Duration,
    ) -> Result<Transition, EngineError> {
        let mut life = self.lifecycle().await?;
        let c = self.known(channel)?;
        let from = c.state();
        let drained = match from {
            ChannelState::Started => c.close_gate(drain).await,
            ChannelState::Paused | ChannelState::Stopped => true,
        };
        self.stop_workers(&c, &mut life).await;
        c.set_state(ChannelState::Stopped);
        self.record_state(channel, ChannelState::Stopped);
        tracing::info!(channel, %from, "channel stopped");
        Ok(Transition {
            from: Some(from),
            to: Some(ChannelState::Stopped),
            drained,
        })
    }

    /// Start `channel`: its destination workers run (from the head of each queue) and it
    /// accepts messages again. The owner of its source starts the source afterwards.
    pub async fn start_channel(&self, channel: &str) -> Result<Transition, EngineError> {
        let _life = self.lifecycle().await?;
        let c = self.known(channel)?;
        let from = c.state();
        self.start_workers(&c);
        c.ingest.shared.gate.open();
        c.set_state(ChannelState::Started);
        self.record_state(channel, ChannelState::Started);
        tracing::info!(channel, %from, "channel started");
        Ok(Transition {
            from: Some(from),
            to: Some(ChannelState::Started),
            drained: true,
        })
    }

    /// Deploy a channel while the engine runs, started. A channel of the same name is
    /// replaced: it stops accepting (waiting up to `drain` for messages being received), its
    /// workers stop, and the new channel's workers take over its queues (a destination that
    /// keeps its name keeps its queue and its counters). The old channel's source must be
    /// stopped by its owner first. When the queues cannot be read the old channel is put back
    /// as it was and the error returned.
    pub async fn deploy_channel(
        &self,
        spec: ChannelSpec,
        drain: Duration,
    ) -> Result<Transition, EngineError> {
        let mut life = self.lifecycle().await?;
        let previous = self.find(&spec.name);
        let from = previous.as_ref().map(|c| c.state());
        let mut drained = true;
        if let Some(old) = &previous {
            if old.state() == ChannelState::Started {
                drained = old.close_gate(drain).await;
            }
            self.stop_workers(old, &mut life).await;
        }
        let names = destination_names(&spec);
        let stats = Arc::new(match &previous {
            Some(old) => ChannelStats::succeeding(old.stats(), &names),
            None => ChannelStats::new(&spec.name, &names),
        });
        let shared = &self.shared;
        let built = build(
            &shared.store,
            spec,
            stats,
            &shared.store_failed,
            &shared.router,
        )
        .await;
        let channel = match built {
            Ok(c) => Arc::new(c),
            Err(error) => {
                if let Some(old) = &previous {
                    self.restore(old);
                }
                return Err(error);
            }
        };
        {
            let mut channels = match shared.channels.write() {
                Ok(c) => c,
                Err(poisoned) => poisoned.into_inner(),
            };
            match channels.iter_mut().find(|c| c.name() == channel.name()) {
                Some(slot) => *slot = channel.clone(),
                None => channels.push(channel.clone()),
            }
        }
        shared.stats.put(channel.stats().clone());
        shared.router.insert(channel.ingest.clone());
        self.start_workers(&channel);
        channel.ingest.shared.gate.open();
        channel.set_state(ChannelState::Started);
        tracing::info!(channel = %channel.name(), replaced = previous.is_some(), "channel deployed");
        Ok(Transition {
            from,
            to: Some(ChannelState::Started),
            drained,
        })
    }

    /// Put a channel whose replacement failed back in the state it was in.
    fn restore(&self, old: &Deployed) {
        let state = old.state();
        if state.delivers() {
            self.start_workers(old);
        }
        if state == ChannelState::Started {
            old.ingest.shared.gate.open();
        }
    }

    /// Undeploy `channel`: it stops accepting (waiting up to `drain` for messages being
    /// received), its workers stop, and it leaves the engine, the router and the counters.
    /// Everything it stored stays in the store, queued messages included (a later deploy of
    /// the channel delivers them). The channel's source must be stopped by its owner first.
    pub async fn undeploy_channel(
        &self,
        channel: &str,
        drain: Duration,
    ) -> Result<Transition, EngineError> {
        let mut life = self.lifecycle().await?;
        let c = self.known(channel)?;
        let from = c.state();
        let drained = match from {
            ChannelState::Started => c.close_gate(drain).await,
            ChannelState::Paused | ChannelState::Stopped => true,
        };
        self.stop_workers(&c, &mut life).await;
        c.set_state(ChannelState::Stopped);
        {
            let mut channels = match self.shared.channels.write() {
                Ok(c) => c,
                Err(poisoned) => poisoned.into_inner(),
            };
            channels.retain(|d| d.name() != channel);
        }
        self.shared.router.remove(channel);
        self.shared.stats.remove(channel);
        tracing::info!(channel, %from, "channel undeployed");
        Ok(Transition {
            from: Some(from),
            to: None,
            drained,
        })
    }

    /// Stop: every channel stops accepting (routed messages being received are stored and
    /// answered first), workers stop (an attempt in flight is abandoned, its message stays
    /// `QUEUED`) and flush their completion records, and the store is closed. Lifecycle changes are refused
    /// from here on.
    pub async fn shutdown(self) -> Result<(), EngineError> {
        let mut life = self.shared.lifecycle.lock().await;
        if life.closed {
            return Err(EngineError::ShuttingDown);
        }
        life.closed = true;
        let channels = self.deployed();
        for c in &channels {
            c.close_gate(SHUTDOWN_DRAIN).await;
        }
        self.shared.root.cancel();
        for c in &channels {
            self.stop_workers(c, &mut life).await;
        }
        if let Some(cluster) = &self.shared.cluster {
            cluster.leave().await;
        }
        self.shared.store.close().await?;
        match life.first_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Until `stop`, set the destination's queue-depth gauge from the store every `every`.
async fn recount_depth(worker: &Worker, stop: CancellationToken, every: Duration) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        match worker
            .store
            .queue_depth(&worker.channel, &worker.destination)
            .await
        {
            Ok(depth) => worker
                .stats
                .queue_depth
                .store(i64::try_from(depth).unwrap_or(i64::MAX), Ordering::Relaxed),
            Err(error) => tracing::debug!(channel = %worker.channel,
                destination = %worker.destination, %error, "queue depth recount failed"),
        }
    }
}

fn destination_names(spec: &ChannelSpec) -> Vec<String> {
    spec.destinations.iter().map(|d| d.name.clone()).collect()
}

/// Build a channel: its ingest handle and a worker template per destination, with each
/// destination's queue depth counted from the store. Nothing runs yet.
async fn build(
    store: &Store,
    spec: ChannelSpec,
    stats: Arc<ChannelStats>,
    store_failed: &Arc<AtomicBool>,
    router: &Router,
) -> Result<Deployed, EngineError> {
    let names = destination_names(&spec);
    let pipeline = Arc::new(spec.pipeline());
    let mut wakes = Vec::with_capacity(spec.destinations.len());
    let mut outcomes = Vec::with_capacity(spec.destinations.len());
    let mut workers = Vec::with_capacity(spec.destinations.len());
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
        workers.push(Worker {
            channel: spec.name.clone(),
            destination: dest.name.clone(),
            sender: dest.sender,
            retry: dest.retry,
            store: store.clone(),
            wake,
            stats: dest_stats,
            // Replaced by a fresh token each time the channel starts.
            shutdown: CancellationToken::new(),
            outcomes: outcome,
            response_transform: dest.response_transform,
            workers: dest.workers.max(1),
            order_by: dest
                .order_by
                .or_else(|| ferry_hl7::Path::parse(DEFAULT_ORDER_BY).ok()),
        });
    }
    Ok(Deployed {
        ingest: ChannelIngest {
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
                gate: Gate::closed(),
            }),
        },
        workers,
        running: Mutex::new(None),
    })
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
                .all(|c| c.state() != ChannelState::Started || c.deployed.load(Ordering::Relaxed)),
            store_ok: !self.store_failed.load(Ordering::Relaxed),
        }
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}
