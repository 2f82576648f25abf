//! The running channels: the engine and the sources feeding it, and the control of each
//! channel's lifecycle while the process runs (PRODUCT.md §8: deploy, undeploy, start, stop,
//! pause).
//!
//! The engine owns the destination side of a channel and the gate in front of its ingest
//! ([`ferry_engine::lifecycle`]); this module owns its source (MLLP or HTTP listener, HTTP
//! poller) and puts the two together in the order that keeps every acknowledged message:
//!
//! - **pause / stop**: the source stops first (a listener closes its socket, so new
//!   connections are refused; each open connection finishes the message in hand, its ACK is
//!   written, and closes; a poller stops polling), up to [`SOURCE_DRAIN`]; then the engine
//!   closes the channel's gate, waits for what is still being received (messages routed from
//!   other channels) and, for a stop, stops the destination workers. Queues stay in the
//!   store.
//! - **start**: the listener binds again first, on the address it had (a `:0` listener keeps
//!   its port), so a bind failure changes nothing; then the engine starts the channel and the
//!   source is served.
//! - **deploy**: the channel is built from the configuration (every certificate, script and
//!   URL checked) before anything is touched; a listener on a new address is bound before the
//!   old source stops; then the old channel (if any) is replaced in the engine, which keeps the
//!   queues of destinations that keep their names, and the new source starts. A deployed
//!   channel is started.
//! - **undeploy**: the source stops, the engine removes the channel; its messages, queued ones
//!   included, stay in the store for a later deploy.
//!
//! Lifecycle changes are serialised: one runs at a time, the others wait.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferry_config::Config;
use ferry_engine::cluster::ClusterHandle;
use ferry_engine::{
    ChannelIngest, ChannelState, Engine, EngineError, Router, Shutdown, Transition,
};
use ferry_store::{AuditEvent, AuditSink, Store};
use tokio::task::JoinHandle;

use crate::deploy::{ChannelPlan, DeployError, ListenerInfo, SourcePlan, plan};
use crate::http::{HttpListener, HttpPoller};
use crate::mllp::MllpSource;

/// How long a stopping source waits for its connections to finish the messages in hand
/// before it is cut off (a message cut off was not acknowledged; the sender resends it).
pub const SOURCE_DRAIN: Duration = Duration::from_secs(30);

/// How long the engine waits, when a channel stops, for messages still being received.
pub const INGEST_DRAIN: Duration = Duration::from_secs(30);

/// Audit events that listeners may queue before further ones are dropped (and counted).
const AUDIT_BUFFER: usize = 1024;

/// Why a lifecycle change was refused or failed. Nothing changed unless the text says so.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// No channel of that name is deployed.
    #[error("no channel `{0}` is deployed")]
    UnknownChannel(String),
    /// The configuration has no channel of that name.
    #[error("the configuration has no channel `{0}`")]
    NotInConfig(String),
    /// The channel is in the configuration with `enabled = false`.
    #[error("channel `{0}` is disabled in the configuration (`enabled = false`)")]
    Disabled(String),
    /// The channel could not be built or its listener could not bind.
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// The engine refused (it is shutting down) or failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What a deploy did.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// From the previous state (`None`: the channel was new) to `started`.
    pub transition: Transition,
    /// The channel's configuration section as last deployed (canonical form, secrets
    /// redacted), also when it was undeployed since; `None` for a channel never deployed in
    /// this run.
    pub previous_section: Option<String>,
    /// The section deployed now.
    pub section: Option<String>,
    /// The channel's listener, when its source listens.
    pub listener: Option<ListenerInfo>,
}

/// A bound source, not yet serving.
enum Bound {
    Mllp(MllpSource),
    Http(HttpListener, String, usize),
    Poll(HttpPoller),
    Channel,
}

/// A task with the token that stops it.
struct Task {
    stop: Shutdown,
    handle: JoinHandle<()>,
}

/// One deployed channel's source.
struct Source {
    channel: String,
    /// What to bind and serve on every start.
    plan: SourcePlan,
    /// The address the listener last bound (reused on start, so `:0` keeps its port).
    address: Option<SocketAddr>,
    /// The serving source, while the channel is started.
    running: Option<Task>,
    /// The certificate reload watch of the listener, while deployed.
    watch: Option<Task>,
    /// The configuration section the channel was deployed from.
    section: Option<String>,
}

struct Sources {
    /// Set by shutdown: no change is accepted after it.
    closed: bool,
    /// In deployment order.
    channels: Vec<Source>,
    /// The last deployed section and listener address of each channel undeployed since the
    /// start, so deploying it again is compared with what ran before and listens where it did.
    retired: std::collections::BTreeMap<String, (Option<String>, Option<SocketAddr>)>,
}

struct Shared {
    engine: Engine,
    router: Router,
    audit: AuditSink,
    /// Parent of every source's and watch's stop token.
    root: Shutdown,
    sources: tokio::sync::Mutex<Sources>,
    /// Every listener now bound, for lookups that must not wait for a lifecycle change.
    listeners: RwLock<Vec<ListenerInfo>>,
    /// Tasks that live as long as the runtime (the admin certificate's watch).
    extra: std::sync::Mutex<Vec<Task>>,
}

/// Deployed channels: the engine and the source tasks feeding it. The owner stops everything
/// with [`shutdown`](Self::shutdown); [`control`](Self::control) hands out the handle that
/// changes channels while it runs.
pub struct Runtime {
    shared: Arc<Shared>,
}

/// A handle that changes the lifecycle of the runtime's channels (for the admin API).
#[derive(Clone)]
pub struct ChannelControl {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("listeners", &self.shared.listeners())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ChannelControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelControl")
            .field("channels", &self.shared.engine.channel_names())
            .finish_non_exhaustive()
    }
}

/// Deploy every enabled channel of `config` on `store`, all or nothing: every connector is
/// built and every listener bound before the first one serves.
pub async fn deploy(config: &Config, store: Store) -> Result<Runtime, DeployError> {
    deploy_clustered(config, store, None).await
}

/// [`deploy`] as one node of a cluster: destination queues and polling sources are worked
/// only under this node's leases (see [`ferry_engine::cluster`]); `None` is [`deploy`].
pub async fn deploy_clustered(
    config: &Config,
    store: Store,
    cluster: Option<ClusterHandle>,
) -> Result<Runtime, DeployError> {
    // Channel destinations hold the router before the engine that fills it exists.
    let router = Router::new();
    let mut plans = Vec::new();
    for channel in config.channels.iter().filter(|c| c.enabled) {
        plans.push(plan(channel, &router)?);
    }
    let audit = AuditSink::spawn(store.clone(), AUDIT_BUFFER);
    let mut rest = Vec::with_capacity(plans.len());
    let mut specs = Vec::with_capacity(plans.len());
    for p in plans {
        let ChannelPlan {
            spec,
            source,
            certificates,
            watched,
        } = p;
        rest.push((spec.name.clone(), source, certificates, watched));
        specs.push(spec);
    }
    let engine = Engine::start_clustered(store, specs, router.clone(), cluster).await?;
    engine.stats().attach_audit_dropped(audit.dropped_counter());
    let shared = Arc::new(Shared {
        engine: engine.clone(),
        router,
        audit,
        root: Shutdown::new(),
        sources: tokio::sync::Mutex::new(Sources {
            closed: false,
            channels: Vec::new(),
            retired: Default::default(),
        }),
        listeners: RwLock::new(Vec::new()),
        extra: std::sync::Mutex::new(Vec::new()),
    });
    // Bind everything first, so a port in use fails the deploy before anything serves.
    let mut bound = Vec::with_capacity(rest.len());
    for (channel, source, certificates, watched) in rest {
        match bind(&shared, &channel, &source, None).await {
            Ok((b, address)) => bound.push((channel, source, certificates, watched, b, address)),
            Err(error) => {
                if let Err(e) = engine.shutdown().await {
                    tracing::warn!(error = %e, "engine shutdown after a failed deploy");
                }
                return Err(error);
            }
        }
    }
    let mut sources = shared.sources.lock().await;
    for (channel, plan, certificates, watched, b, address) in bound {
        let certs = shared.engine.stats();
        for (connector, gauges) in certificates {
            certs.certificates().replace(&channel, &connector, gauges);
        }
        let running = shared.serve(&channel, b);
        sources.channels.push(Source {
            section: config.channel_section(&channel).map(str::to_owned),
            watch: shared.watch(watched),
            channel,
            plan,
            address,
            running,
        });
    }
    shared.publish(&sources);
    drop(sources);
    Ok(Runtime { shared })
}

impl Shared {
    fn listeners(&self) -> Vec<ListenerInfo> {
        match self.listeners.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Refresh the listener list from the sources that serve now.
    fn publish(&self, sources: &Sources) {
        let list = sources
            .channels
            .iter()
            .filter(|s| s.running.is_some())
            .filter_map(|s| {
                let address = s.address?;
                Some(ListenerInfo {
                    channel: s.channel.clone(),
                    scheme: s.plan.scheme()?,
                    address,
                })
            })
            .collect();
        match self.listeners.write() {
            Ok(mut l) => *l = list,
            Err(poisoned) => *poisoned.into_inner() = list,
        }
    }

    /// Serve a bound source for the channel's current ingest handle, and mark it deployed.
    fn serve(&self, channel: &str, bound: Bound) -> Option<Task> {
        let Some(ingest) = self.engine.ingest(channel) else {
            tracing::error!(%channel, "source not started: the channel is not in the engine");
            return None;
        };
        let stop = self.root.child_token();
        let cluster = self.engine.cluster().cloned();
        let handle = spawn(bound, ingest.clone(), stop.clone(), cluster);
        ingest.set_deployed(true);
        Some(Task { stop, handle })
    }

    /// Watch a listener certificate for changes until the channel is undeployed.
    fn watch(&self, watched: Option<crate::tls::Watched>) -> Option<Task> {
        let watched = watched?;
        let stop = self.root.child_token();
        let handle = tokio::spawn(crate::tls::watch(
            vec![watched],
            self.engine.stats(),
            stop.clone(),
        ));
        Some(Task { stop, handle })
    }
}

/// Bind a channel's source, at `at` instead of its configured address when given. A source
/// configured on port 0 that cannot get its old port back takes any free port, as configured.
async fn bind(
    shared: &Shared,
    channel: &str,
    plan: &SourcePlan,
    at: Option<SocketAddr>,
) -> Result<(Bound, Option<SocketAddr>), DeployError> {
    match bind_at(shared, channel, plan, at).await {
        Err(error) if at.is_some() && listen_address(plan).is_some_and(|a| a.port() == 0) => {
            tracing::warn!(%channel, %error, "the old port is taken; listening on another one");
            bind_at(shared, channel, plan, None).await
        }
        other => other,
    }
}

async fn bind_at(
    shared: &Shared,
    channel: &str,
    plan: &SourcePlan,
    at: Option<SocketAddr>,
) -> Result<(Bound, Option<SocketAddr>), DeployError> {
    let bind_error = |address, source| DeployError::Bind {
        channel: channel.to_owned(),
        address,
        source,
    };
    Ok(match plan {
        SourcePlan::Mllp(settings) => {
            let mut settings = settings.clone();
            if let Some(at) = at {
                settings.listen = at;
            }
            let listen = settings.listen;
            let src = MllpSource::bind(settings)
                .await
                .map_err(|e| bind_error(listen, e))?
                .with_audit(shared.audit.clone());
            let address = src.local_addr().unwrap_or(listen);
            (Bound::Mllp(src), Some(address))
        }
        SourcePlan::Http {
            listen,
            tls,
            path,
            max_body_bytes,
            read_timeout,
        } => {
            let listen = at.unwrap_or(*listen);
            let listener = HttpListener::bind(listen, tls.clone(), *read_timeout)
                .await
                .map_err(|e| bind_error(listen, e))?
                .with_audit(shared.audit.clone(), format!("channel/{channel}"));
            let address = listener.local_addr().unwrap_or(listen);
            (
                Bound::Http(listener, path.clone(), *max_body_bytes),
                Some(address),
            )
        }
        SourcePlan::Poll(poller) => (Bound::Poll(poller.clone()), None),
        SourcePlan::Channel => (Bound::Channel, None),
    })
}

/// Run a bound source. In a cluster, a polling source polls only on the node holding the
/// channel's `poll:` lease (listeners run on every node).
fn spawn(
    bound: Bound,
    ingest: ChannelIngest,
    stop: Shutdown,
    cluster: Option<ClusterHandle>,
) -> JoinHandle<()> {
    match bound {
        Bound::Mllp(src) => tokio::spawn(src.run(ingest, stop)),
        Bound::Http(listener, path, max_body) => {
            let router = crate::http::source_router(ingest, &path, max_body);
            tokio::spawn(listener.serve(router, stop))
        }
        Bound::Poll(poller) => match cluster {
            None => tokio::spawn(poller.run(ingest, stop)),
            Some(cluster) => tokio::spawn(async move {
                let resource = ferry_store::cluster::poll_resource(ingest.channel());
                let _ = cluster
                    .run_leased(&resource, stop, None, |token| {
                        let (poller, ingest) = (poller.clone(), ingest.clone());
                        async move {
                            poller.run(ingest, token).await;
                            Ok(())
                        }
                    })
                    .await;
            }),
        },
        // Fed by the router: nothing to run, it is deployed as soon as the engine runs it.
        Bound::Channel => tokio::spawn(async {}),
    }
}

/// Stop a task and wait for it, up to `drain`; then it is cut off (and false returned).
async fn finish(task: Task, what: &str, channel: &str, drain: Duration) -> bool {
    task.stop.cancel();
    let mut handle = task.handle;
    if tokio::time::timeout(drain, &mut handle).await.is_err() {
        tracing::warn!(%channel, drain_ms = drain.as_millis() as u64,
            "{what} still busy after the drain time; cut off (an unanswered message is resent by its sender)");
        handle.abort();
        let _ = handle.await;
        return false;
    }
    true
}

impl Source {
    /// Stop serving: new connections are refused, open ones finish the message in hand.
    /// False when some had to be cut off after [`SOURCE_DRAIN`].
    async fn stop(&mut self) -> bool {
        match self.running.take() {
            Some(task) => finish(task, "source", &self.channel, SOURCE_DRAIN).await,
            None => true,
        }
    }
}

/// `t`, not drained when the source had to be cut off.
fn drained(t: Transition, source_drained: bool) -> Transition {
    Transition {
        drained: t.drained && source_drained,
        ..t
    }
}

/// The listen address of a plan, if its source listens.
fn listen_address(plan: &SourcePlan) -> Option<SocketAddr> {
    match plan {
        SourcePlan::Mllp(s) => Some(s.listen),
        SourcePlan::Http { listen, .. } => Some(*listen),
        SourcePlan::Poll(_) | SourcePlan::Channel => None,
    }
}

impl Runtime {
    /// The engine (statistics, health, store).
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// Every listener serving now, in deployment order.
    pub fn listeners(&self) -> Vec<ListenerInfo> {
        self.shared.listeners()
    }

    /// The bound address of a channel's listener.
    pub fn listener(&self, channel: &str) -> Option<SocketAddr> {
        self.shared
            .listeners()
            .into_iter()
            .find(|l| l.channel == channel)
            .map(|l| l.address)
    }

    /// The non-blocking audit sink the listeners record refused TLS handshakes into (give it
    /// to other listeners, such as the admin server's, with `with_audit`).
    pub fn audit_sink(&self) -> &AuditSink {
        &self.shared.audit
    }

    /// The TLS configuration of the admin listener (HTTPS, ALPN `http/1.1`), on the same
    /// terms as a channel listener's: its certificates and CRLs are on the expiry gauge
    /// (channel `""`, connector `admin`), and its certificate, key and CRLs are reloaded
    /// when their files change (new handshakes only; open connections keep theirs), by a
    /// watcher that stops with this runtime.
    ///
    /// # Errors
    /// The files do not load.
    pub fn admin_tls(
        &self,
        tls: &ferry_config::TlsConfig,
    ) -> Result<Arc<rustls::ServerConfig>, ferry_tls::TlsError> {
        let (config, cert) = crate::tls::server_reloadable(tls, &[b"http/1.1"])?;
        let shared = &self.shared;
        shared.engine.stats().certificates().replace(
            "",
            "admin",
            crate::tls::server_certificates("", "admin", tls),
        );
        let watch = shared.watch(Some(crate::tls::Watched {
            channel: String::new(),
            connector: "admin".to_owned(),
            tls: tls.clone(),
            cert,
        }));
        if let Some(task) = watch {
            match shared.extra.lock() {
                Ok(mut extra) => extra.push(task),
                Err(poisoned) => poisoned.into_inner().push(task),
            }
        }
        Ok(config)
    }

    /// The handle that deploys, undeploys, starts, stops and pauses channels.
    pub fn control(&self) -> ChannelControl {
        ChannelControl {
            shared: self.shared.clone(),
        }
    }

    /// Stop cleanly: sources stop accepting and finish the message in hand, destination
    /// workers stop (an attempt in flight is abandoned, its message stays `QUEUED`), the
    /// store is flushed and closed.
    pub async fn shutdown(self) -> Result<(), EngineError> {
        self.shutdown_audited(None).await
    }

    /// [`shutdown`](Self::shutdown), appending `last` (e.g. `engine_stop`) to the audit trail
    /// once the sources have stopped and every queued audit event is written, just before
    /// the store closes. A failed append is logged, not returned.
    pub async fn shutdown_audited(self, last: Option<AuditEvent>) -> Result<(), EngineError> {
        let shared = &self.shared;
        let mut sources = shared.sources.lock().await;
        sources.closed = true;
        shared.root.cancel();
        for source in &mut sources.channels {
            source.stop().await;
            if let Some(watch) = source.watch.take() {
                let _ = watch.handle.await;
            }
        }
        shared.publish(&sources);
        drop(sources);
        let extra = match shared.extra.lock() {
            Ok(mut extra) => std::mem::take(&mut *extra),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for task in extra {
            let _ = task.handle.await;
        }
        shared.audit.close().await;
        if let Some(event) = last
            && let Err(error) = shared.engine.store().audit_append(event).await
        {
            tracing::error!(%error, "could not append the last audit record");
        }
        shared.engine.clone().shutdown().await
    }
}

impl ChannelControl {
    /// The engine (statistics, ingest handles, the store).
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// The lifecycle state of a deployed channel (`None`: not deployed).
    pub fn state(&self, channel: &str) -> Option<ChannelState> {
        self.shared.engine.channel_state(channel)
    }

    /// The configuration section a deployed channel runs from (canonical form, literal
    /// secrets redacted, `${…}` references kept; `None`: not deployed).
    pub async fn section(&self, channel: &str) -> Option<String> {
        let sources = self.shared.sources.lock().await;
        sources
            .channels
            .iter()
            .find(|s| s.channel == channel)
            .and_then(|s| s.section.clone())
    }

    /// The listener of a channel, while it serves.
    pub fn listener(&self, channel: &str) -> Option<ListenerInfo> {
        self.shared
            .listeners()
            .into_iter()
            .find(|l| l.channel == channel)
    }

    fn log_listener(&self, channel: &str) {
        if let Some(l) = self.listener(channel) {
            tracing::info!(%channel, "channel listening on {}://{}", l.scheme, l.address);
        }
    }

    async fn sources(&self) -> Result<tokio::sync::MutexGuard<'_, Sources>, LifecycleError> {
        let sources = self.shared.sources.lock().await;
        if sources.closed {
            return Err(EngineError::ShuttingDown.into());
        }
        Ok(sources)
    }

    /// Pause a channel: its source stops accepting (listeners close, open connections finish
    /// the message in hand, pollers stop) while its destination queues keep draining.
    pub async fn pause(&self, channel: &str) -> Result<Transition, LifecycleError> {
        let mut sources = self.sources().await?;
        let source = find(&mut sources, channel)?;
        let source_drained = source.stop().await;
        let t = self
            .shared
            .engine
            .pause_channel(channel, INGEST_DRAIN)
            .await?;
        self.shared.publish(&sources);
        Ok(drained(t, source_drained))
    }

    /// Stop a channel: its source stops accepting, then its destination workers stop; queued
    /// messages stay queued in the store until it starts again.
    pub async fn stop(&self, channel: &str) -> Result<Transition, LifecycleError> {
        let mut sources = self.sources().await?;
        let source = find(&mut sources, channel)?;
        let source_drained = source.stop().await;
        let t = self
            .shared
            .engine
            .stop_channel(channel, INGEST_DRAIN)
            .await?;
        self.shared.publish(&sources);
        Ok(drained(t, source_drained))
    }

    /// Start a paused or stopped channel: its listener binds again on the address it had
    /// (when that fails nothing changes), its workers resume the queues from their heads, and
    /// its source accepts messages again.
    pub async fn start(&self, channel: &str) -> Result<Transition, LifecycleError> {
        let mut sources = self.sources().await?;
        let shared = &self.shared;
        let source = find(&mut sources, channel)?;
        let bound = match source.running {
            Some(_) => None,
            None => Some(bind(shared, channel, &source.plan, source.address).await?),
        };
        let t = shared.engine.start_channel(channel).await?;
        if let Some((b, address)) = bound {
            source.address = address.or(source.address);
            source.running = shared.serve(channel, b);
        }
        shared.publish(&sources);
        drop(sources);
        self.log_listener(channel);
        Ok(t)
    }

    /// Undeploy a channel: its source stops, and it leaves the engine. Its messages stay in
    /// the store, queued ones included; deploying it again resumes them.
    pub async fn undeploy(&self, channel: &str) -> Result<Transition, LifecycleError> {
        let mut sources = self.sources().await?;
        let shared = &self.shared;
        let source = find(&mut sources, channel)?;
        let source_drained = source.stop().await;
        if let Some(watch) = source.watch.take() {
            finish(watch, "certificate watch", channel, SOURCE_DRAIN).await;
        }
        let t = shared
            .engine
            .undeploy_channel(channel, INGEST_DRAIN)
            .await?;
        let retired = (source.section.take(), source.address);
        sources.channels.retain(|s| s.channel != channel);
        sources.retired.insert(channel.to_owned(), retired);
        shared.engine.stats().certificates().remove_channel(channel);
        shared.publish(&sources);
        Ok(drained(t, source_drained))
    }

    /// Deploy channel `channel` of `config` (a configuration already validated as
    /// `ferry check` validates it): build it, then replace the deployed channel of that name
    /// or add it if it is new. The channel ends up started. Nothing changes when it cannot be
    /// built or its new listener cannot bind.
    pub async fn deploy(
        &self,
        config: &Config,
        channel: &str,
    ) -> Result<Deployment, LifecycleError> {
        let mut sources = self.sources().await?;
        let shared = &self.shared;
        let wanted = config
            .channels
            .iter()
            .find(|c| c.name == channel)
            .ok_or_else(|| LifecycleError::NotInConfig(channel.to_owned()))?;
        if !wanted.enabled {
            return Err(LifecycleError::Disabled(channel.to_owned()));
        }
        let ChannelPlan {
            spec,
            source: new_plan,
            certificates,
            watched,
        } = plan(wanted, &shared.router)?;
        let index = sources.channels.iter().position(|s| s.channel == channel);
        let old_address = match index {
            Some(i) => sources.channels[i].address,
            None => sources.retired.get(channel).and_then(|(_, a)| *a),
        };
        // A `:0` listener keeps the port it got; any other address is taken as configured.
        let at = listen_address(&new_plan).map(|want| match old_address {
            Some(old) if want.port() == 0 && want.ip() == old.ip() => old,
            _ => want,
        });
        // Only a listener that still serves holds the socket.
        let same_socket = index.is_some() && at.is_some() && at == old_address;
        let mut source_drained = true;
        let (b, address) = if same_socket {
            // The old listener must let go of the socket first.
            if let Some(i) = index {
                source_drained = sources.channels[i].stop().await;
            }
            match bind(shared, channel, &new_plan, at).await {
                Ok(b) => b,
                Err(error) => {
                    self.restart_old(&mut sources, index).await;
                    return Err(error.into());
                }
            }
        } else {
            // A listener on a new address binds while the old source still serves: a failure
            // changes nothing.
            let b = bind(shared, channel, &new_plan, at).await?;
            if let Some(i) = index {
                source_drained = sources.channels[i].stop().await;
            }
            b
        };
        let transition = match shared.engine.deploy_channel(spec, INGEST_DRAIN).await {
            Ok(t) => t,
            Err(error) => {
                drop(b);
                self.restart_old(&mut sources, index).await;
                return Err(error.into());
            }
        };
        let certs = shared.engine.stats();
        certs.certificates().remove_channel(channel);
        for (connector, gauges) in certificates {
            certs.certificates().replace(channel, &connector, gauges);
        }
        let running = shared.serve(channel, b);
        let section = config.channel_section(channel).map(str::to_owned);
        let new = Source {
            channel: channel.to_owned(),
            plan: new_plan,
            address,
            running,
            watch: shared.watch(watched),
            section: section.clone(),
        };
        let previous_section = match index {
            Some(i) => {
                let old = std::mem::replace(&mut sources.channels[i], new);
                if let Some(watch) = old.watch {
                    finish(watch, "certificate watch", channel, SOURCE_DRAIN).await;
                }
                old.section
            }
            None => {
                sources.channels.push(new);
                sources
                    .retired
                    .remove(channel)
                    .and_then(|(section, _)| section)
            }
        };
        shared.publish(&sources);
        drop(sources);
        self.log_listener(channel);
        Ok(Deployment {
            transition: drained(transition, source_drained),
            previous_section,
            section,
            listener: self.listener(channel),
        })
    }

    /// After a failed replacement: serve the old channel's source again if it was started.
    async fn restart_old(&self, sources: &mut Sources, index: Option<usize>) {
        let shared = &self.shared;
        let Some(old) = index.and_then(|i| sources.channels.get_mut(i)) else {
            return;
        };
        if shared.engine.channel_state(&old.channel) != Some(ChannelState::Started) {
            return;
        }
        match bind(shared, &old.channel, &old.plan, old.address).await {
            Ok((b, _)) => old.running = shared.serve(&old.channel, b),
            Err(error) => {
                if let Some(ingest) = shared.engine.ingest(&old.channel) {
                    ingest.set_deployed(false);
                }
                tracing::error!(channel = %old.channel, %error,
                    "the old source could not listen again after a failed deploy");
            }
        }
    }
}

fn find<'a>(sources: &'a mut Sources, channel: &str) -> Result<&'a mut Source, LifecycleError> {
    sources
        .channels
        .iter_mut()
        .find(|s| s.channel == channel)
        .ok_or_else(|| LifecycleError::UnknownChannel(channel.to_owned()))
}
