//! Running one engine among several on one PostgreSQL database.
//!
//! Every node runs the listeners, but each destination queue (and each polling source) is
//! worked by exactly one node at a time: the one holding its lease
//! ([`ferry_store::cluster`]). A [`ClusterHandle`] owns a thread of its own (the PostgreSQL
//! client is synchronous) that heartbeats and takes or renews every lease this node wants
//! each `lease_ttl / 3`.
//!
//! A lease renewed by a statement sent at local instant `t` expires, by the database's clock,
//! no earlier than `t + lease_ttl`. The work it guards runs only until `t + lease_ttl -
//! margin`: when renewals fail (the database is unreachable, or this node stalled), the work
//! is stopped before anyone else can take the lease, so two nodes never deliver one queue at
//! once. When a lease is gained, the worker starts at the head of the durable queue, as it
//! does on every start. A node that dies stops renewing; its leases expire after
//! `lease_ttl` and the other nodes take them at their next renewal round.
//!
//! Other nodes' ingests do not wake this node's workers, so a worker that holds a lease is
//! also woken every `queue_poll` to look for messages queued elsewhere.
//!
//! Without a cluster handle (no `[cluster]`, or SQLite) the engine runs every worker itself,
//! exactly as a single node always has.

use std::collections::HashMap;
use std::future::Future;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_store::StoreError;
use ferry_store::cluster::{Cluster, ClusterStatus};
use ferry_store::postgres::PgOptions;
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// How a node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// Where this node can be reached (its configured admin address), shown by `ferry
    /// cluster status`.
    pub address: String,
    /// How long a lease lasts without renewal; renewed every third of it.
    pub lease_ttl: Duration,
    /// How often a worker that holds a lease re-scans its queue for messages other nodes
    /// queued.
    pub queue_poll: Duration,
}

impl ClusterSettings {
    /// How long before a lease's earliest possible expiry its work is stopped.
    fn margin(&self) -> Duration {
        (self.lease_ttl / 5).max(Duration::from_millis(100))
    }

    fn renew_every(&self) -> Duration {
        (self.lease_ttl / 3).max(Duration::from_millis(10))
    }
}

/// Whether this node may work a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Not (or no longer) this node's.
    No,
    /// This node's, safely until the instant (then renewed or given up), at this epoch.
    Until(Instant, i64),
}

enum Command {
    Want(String, watch::Sender<Held>),
    Unwant(String),
    Status(oneshot::Sender<Result<ClusterStatus, StoreError>>),
    ChannelState(String, &'static str),
    Leave(oneshot::Sender<()>),
    /// Tests: stall the thread (no heartbeat, no renewal), as a frozen node or a lost database.
    #[cfg(test)]
    Freeze(Duration),
}

/// Which leases this node wants and whether it holds each, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct LeaseGauge(Arc<Mutex<std::collections::BTreeMap<String, bool>>>);

impl LeaseGauge {
    /// Every wanted resource and whether this node holds it, by name.
    pub fn snapshot(&self) -> Vec<(String, bool)> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    fn set(&self, resource: &str, held: Option<bool>) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match held {
            Some(h) => {
                map.insert(resource.to_owned(), h);
            }
            None => {
                map.remove(resource);
            }
        }
    }
}

/// A node's membership of a cluster. Cheap to clone; every clone drives the same thread.
#[derive(Clone)]
pub struct ClusterHandle {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ClusterSettings,
    commands: Mutex<std_mpsc::Sender<Command>>,
    gauge: LeaseGauge,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle")
            .field("node_id", &self.inner.settings.node_id)
            .finish_non_exhaustive()
    }
}

/// Unregisters a resource when its work ends (the lease is released for another node).
struct Wanted {
    handle: ClusterHandle,
    resource: String,
}

impl Drop for Wanted {
    fn drop(&mut self) {
        self.handle
            .send(Command::Unwant(std::mem::take(&mut self.resource)));
    }
}

impl ClusterHandle {
    /// Join the cluster on `options`' database: connect, create the cluster tables if
    /// needed, register the node, and start its lease thread.
    ///
    /// # Errors
    /// When the database cannot be reached or the tables cannot be created.
    pub async fn join(
        options: PgOptions,
        settings: ClusterSettings,
    ) -> Result<ClusterHandle, StoreError> {
        let (tx, rx) = std_mpsc::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread_settings = settings.clone();
        let gauge = LeaseGauge::default();
        let thread_gauge = gauge.clone();
        std::thread::Builder::new()
            .name("ferry-cluster".into())
            .spawn(move || {
                let joined = Cluster::join(
                    &options,
                    &thread_settings.node_id,
                    &thread_settings.address,
                    thread_settings.lease_ttl,
                );
                match joined {
                    Ok(cluster) => {
                        let _ = ready_tx.send(Ok(()));
                        LeaseThread::new(cluster, options, thread_settings, rx, thread_gauge).run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| StoreError::Io {
                context: "starting the cluster thread".into(),
                source: e,
            })?;
        ready_rx.await.map_err(|_| StoreError::Closed)??;
        tracing::info!(node = %settings.node_id, lease_ttl_ms = settings.lease_ttl.as_millis() as u64,
            "joined the cluster");
        Ok(ClusterHandle {
            inner: Arc::new(Inner {
                settings,
                commands: Mutex::new(tx),
                gauge,
            }),
        })
    }

    /// The leases this node wants and holds, for `/metrics`.
    pub fn gauge(&self) -> LeaseGauge {
        self.inner.gauge.clone()
    }

    /// This node's settings.
    pub fn settings(&self) -> &ClusterSettings {
        &self.inner.settings
    }

    fn send(&self, command: Command) {
        let tx = self
            .inner
            .commands
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The thread has gone only after leave: nothing is held then.
        let _ = tx.send(command);
    }

    fn want(&self, resource: &str) -> (watch::Receiver<Held>, Wanted) {
        let (tx, rx) = watch::channel(Held::No);
        self.send(Command::Want(resource.to_owned(), tx));
        (
            rx,
            Wanted {
                handle: self.clone(),
                resource: resource.to_owned(),
            },
        )
    }

    /// Nodes, leases and channel states, as the database has them.
    ///
    /// # Errors
    /// When the database cannot be reached, or the node has left.
    pub async fn status(&self) -> Result<ClusterStatus, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Status(tx));
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Record (without waiting) that an operator gave `channel` the lifecycle `state` on this
    /// node, in the table `ferry cluster status` shows.
    pub fn record_channel_state(&self, channel: &str, state: &'static str) {
        self.send(Command::ChannelState(channel.to_owned(), state));
    }

    /// Leave cleanly: every lease is released (other nodes take them at their next round)
    /// and the node marked stopped. Call after the work the leases guard has stopped.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Leave(tx));
        let _ = rx.await;
    }

    /// Run `work` while this node holds `resource`'s lease, until `stop`.
    ///
    /// Waits for the lease; when gained, calls `work` with a token that is cancelled when
    /// `stop` is or when the lease can no longer be trusted (a margin before its earliest
    /// expiry, should renewals fail), waits for the work to end, and waits for the lease
    /// again. While the work runs, `wake` (if any) is notified every `queue_poll`. Returns
    /// when `stop` is cancelled, or with the work's error.
    ///
    /// # Errors
    /// The first error `work` returns.
    pub async fn run_leased<F, Fut>(
        &self,
        resource: &str,
        stop: CancellationToken,
        wake: Option<Arc<Notify>>,
        mut work: F,
    ) -> Result<(), StoreError>
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let (mut held, _wanted) = self.want(resource);
        let node = &self.inner.settings.node_id;
        loop {
            // Wait for the lease.
            let epoch = loop {
                let now = Instant::now();
                if let Held::Until(until, epoch) = *held.borrow_and_update()
                    && until > now
                {
                    break epoch;
                }
                tokio::select! {
                    changed = held.changed() => if changed.is_err() { return Ok(()) },
                    _ = stop.cancelled() => return Ok(()),
                }
            };
            tracing::info!(%node, %resource, epoch, "lease gained; working it");
            let token = stop.child_token();
            let run = work(token.clone());
            tokio::pin!(run);
            let mut poll = tokio::time::interval(self.inner.settings.queue_poll);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let ended = loop {
                let until = match *held.borrow() {
                    Held::Until(until, _) => until,
                    Held::No => Instant::now(),
                };
                tokio::select! {
                    result = &mut run => break Some(result),
                    changed = held.changed() => {
                        if changed.is_err() {
                            // The lease thread stopped: nothing will be renewed.
                            token.cancel();
                            break None;
                        }
                    }
                    _ = tokio::time::sleep_until(until.into()) => {
                        let still = matches!(*held.borrow(),
                            Held::Until(u, _) if u > Instant::now());
                        if !still {
                            token.cancel();
                            break None;
                        }
                    }
                    _ = poll.tick(), if wake.is_some() => {
                        if let Some(w) = &wake {
                            w.notify_one();
                        }
                    }
                }
            };
            match ended {
                Some(result) => return result,
                None => {
                    let result = run.await;
                    if stop.is_cancelled() {
                        return result;
                    }
                    tracing::warn!(%node, %resource, epoch,
                        "lease lost or not renewed in time; stopped working it");
                    result?;
                }
            }
        }
    }
}

/// The thread that talks to the database for a [`ClusterHandle`].
struct LeaseThread {
    cluster: Option<Cluster>,
    options: PgOptions,
    settings: ClusterSettings,
    commands: std_mpsc::Receiver<Command>,
    wanted: HashMap<String, watch::Sender<Held>>,
    gauge: LeaseGauge,
}

impl LeaseThread {
    fn new(
        cluster: Cluster,
        options: PgOptions,
        settings: ClusterSettings,
        commands: std_mpsc::Receiver<Command>,
        gauge: LeaseGauge,
    ) -> LeaseThread {
        LeaseThread {
            cluster: Some(cluster),
            options,
            settings,
            commands,
            wanted: HashMap::new(),
            gauge,
        }
    }

    /// The connection, reopened when it was lost.
    fn cluster(&mut self) -> Option<&mut Cluster> {
        if self.cluster.as_ref().is_none() {
            match Cluster::reconnect(
                &self.options,
                &self.settings.node_id,
                &self.settings.address,
                self.settings.lease_ttl,
            ) {
                Ok(c) => {
                    tracing::info!(node = %self.settings.node_id, "reconnected to the cluster database");
                    self.cluster = Some(c);
                }
                Err(e) => {
                    tracing::warn!(node = %self.settings.node_id, error = %e,
                        "cannot reach the cluster database; leases will lapse");
                }
            }
        }
        self.cluster.as_mut()
    }

    fn failed(&mut self, what: &str, e: &StoreError) {
        tracing::warn!(node = %self.settings.node_id, error = %e, "cluster: {what} failed");
        // Reconnect on the next round; a stale client may hang on a dead socket.
        self.cluster = None;
    }

    fn heartbeat(&mut self) {
        let Some(c) = self.cluster() else { return };
        if let Err(e) = c.heartbeat() {
            self.failed("heartbeat", &e);
        }
    }

    fn renew(&mut self, resource: &str) {
        let margin = self.settings.margin();
        let ttl = self.settings.lease_ttl;
        let sent = Instant::now();
        let Some(c) = self.cluster() else { return };
        match c.acquire(resource) {
            Ok(lease) => {
                let held = match lease {
                    Some(l) => Held::Until(sent + ttl.saturating_sub(margin), l.epoch),
                    None => Held::No,
                };
                if let Some(tx) = self.wanted.get(resource) {
                    self.gauge.set(resource, Some(lease.is_some()));
                    tx.send_if_modified(|h| {
                        let changed = *h != held;
                        *h = held;
                        changed
                    });
                }
            }
            // The previous state stands: its deadline lapses unless a later round succeeds.
            Err(e) => self.failed("renewing a lease", &e),
        }
    }

    fn round(&mut self) {
        self.heartbeat();
        let resources: Vec<String> = self.wanted.keys().cloned().collect();
        for r in resources {
            self.renew(&r);
        }
    }

    fn run(mut self) {
        let every = self.settings.renew_every();
        let mut next = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next {
                self.round();
                next = Instant::now().max(next + every);
                continue;
            }
            match self.commands.recv_timeout(next - now) {
                Ok(Command::Want(resource, tx)) => {
                    self.wanted.insert(resource.clone(), tx);
                    self.gauge.set(&resource, Some(false));
                    self.renew(&resource);
                }
                Ok(Command::Unwant(resource)) => {
                    self.wanted.remove(&resource);
                    self.gauge.set(&resource, None);
                    if let Some(c) = self.cluster()
                        && let Err(e) = c.release(&resource)
                    {
                        self.failed("releasing a lease", &e);
                    }
                }
                Ok(Command::Status(tx)) => {
                    let status = match self.cluster() {
                        Some(c) => c.status(),
                        None => Err(StoreError::Closed),
                    };
                    let _ = tx.send(status);
                }
                Ok(Command::ChannelState(channel, state)) => {
                    if let Some(c) = self.cluster()
                        && let Err(e) = c.set_channel_state(&channel, state)
                    {
                        self.failed("recording a channel's state", &e);
                    }
                }
                Ok(Command::Leave(done)) => {
                    self.wanted.clear();
                    if let Some(c) = self.cluster() {
                        match c.leave() {
                            Ok(n) => tracing::info!(node = %self.settings.node_id, released = n,
                                "left the cluster"),
                            Err(e) => tracing::warn!(node = %self.settings.node_id, error = %e,
                                "leaving the cluster failed; its leases will expire"),
                        }
                    }
                    let _ = done.send(());
                    return;
                }
                #[cfg(test)]
                Ok(Command::Freeze(d)) => std::thread::sleep(d),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_testkit::postgres::TestDb;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn settings(node: &str, ttl_ms: u64) -> ClusterSettings {
        ClusterSettings {
            node_id: node.into(),
            address: String::new(),
            lease_ttl: Duration::from_millis(ttl_ms),
            queue_poll: Duration::from_millis(50),
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn options(db: &TestDb) -> PgOptions {
        PgOptions {
            url: db.url().to_owned(),
            tls: None,
        }
    }

    /// Work that counts how many nodes run it at once and records the most ever seen.
    fn counted(
        running: Arc<AtomicUsize>,
        max: Arc<AtomicUsize>,
        runs: Arc<AtomicUsize>,
    ) -> impl FnMut(
        CancellationToken,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>> {
        move |token| {
            let (running, max, runs) = (running.clone(), max.clone(), runs.clone());
            Box::pin(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(now, Ordering::SeqCst);
                runs.fetch_add(1, Ordering::SeqCst);
                token.cancelled().await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
        }
    }

    #[test]
    fn one_node_works_a_resource_and_another_takes_over_when_it_leaves() {
        // TestDb's setup is synchronous: outside the runtime.
        let db = TestDb::new();
        runtime().block_on(one_node_works_a_resource_and_another_takes_over_when_it_leaves_on(&db));
    }

    async fn one_node_works_a_resource_and_another_takes_over_when_it_leaves_on(db: &TestDb) {
        let a = ClusterHandle::join(options(db), settings("a", 600))
            .await
            .expect("a");
        let b = ClusterHandle::join(options(db), settings("b", 600))
            .await
            .expect("b");
        let running = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let (runs_a, runs_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        let task_a = tokio::spawn({
            let (a, stop, work) = (
                a.clone(),
                stop_a.clone(),
                counted(running.clone(), max.clone(), runs_a.clone()),
            );
            async move { a.run_leased("dest:c/d", stop, None, work).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let task_b = tokio::spawn({
            let (b, stop, work) = (
                b.clone(),
                stop_b.clone(),
                counted(running.clone(), max.clone(), runs_b.clone()),
            );
            async move { b.run_leased("dest:c/d", stop, None, work).await }
        });
        // a holds it for several lease times; b never runs meanwhile.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(runs_a.load(Ordering::SeqCst), 1, "a kept its lease");
        assert_eq!(runs_b.load(Ordering::SeqCst), 0);
        let status = b.status().await.expect("status");
        let lease = status.leases.first().expect("lease");
        assert_eq!((lease.owner.as_str(), lease.epoch), ("a", 1));

        // a stops (its lease is released): b takes over promptly with a higher epoch.
        stop_a.cancel();
        task_a.await.expect("join").expect("a ran");
        let started = Instant::now();
        while runs_b.load(Ordering::SeqCst) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "b never took over"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = a.status().await.expect("status");
        let lease = status.leases.first().expect("lease");
        assert_eq!((lease.owner.as_str(), lease.epoch), ("b", 2));
        assert_eq!(max.load(Ordering::SeqCst), 1, "never two at once");
        stop_b.cancel();
        task_b.await.expect("join").expect("b ran");
        a.leave().await;
        b.leave().await;
    }

    #[test]
    fn a_node_that_stops_renewing_stops_working_before_another_takes_over() {
        // TestDb's setup is synchronous: outside the runtime.
        let db = TestDb::new();
        runtime()
            .block_on(a_node_that_stops_renewing_stops_working_before_another_takes_over_on(&db));
    }

    async fn a_node_that_stops_renewing_stops_working_before_another_takes_over_on(db: &TestDb) {
        let a = ClusterHandle::join(options(db), settings("a", 600))
            .await
            .expect("a");
        let b = ClusterHandle::join(options(db), settings("b", 600))
            .await
            .expect("b");
        let running = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let (runs_a, runs_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let stop = CancellationToken::new();
        let task_a = tokio::spawn({
            let (a, stop, work) = (
                a.clone(),
                stop.clone(),
                counted(running.clone(), max.clone(), runs_a.clone()),
            );
            async move { a.run_leased("poll:c", stop, None, work).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let task_b = tokio::spawn({
            let (b, stop, work) = (
                b.clone(),
                stop.clone(),
                counted(running.clone(), max.clone(), runs_b.clone()),
            );
            async move { b.run_leased("poll:c", stop, None, work).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(runs_a.load(Ordering::SeqCst), 1);
        // a's lease thread stalls (as if the node froze or lost the database): its work
        // must stop by itself before the lease can expire, and b take over after the expiry.
        let frozen = Instant::now();
        a.send(Command::Freeze(Duration::from_secs(3)));
        let mut a_stopped = None;
        while runs_b.load(Ordering::SeqCst) == 0 {
            assert!(frozen.elapsed() < Duration::from_secs(3), "no takeover");
            if a_stopped.is_none() && running.load(Ordering::SeqCst) == 0 {
                a_stopped = Some(frozen.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took_over = frozen.elapsed();
        let a_stopped = a_stopped.expect("a stopped before b started");
        assert!(max.load(Ordering::SeqCst) <= 1, "two nodes worked at once");
        // a renewed at most a third of the lease before freezing; it stops at ttl - margin
        // after that renewal, b only after the expiry.
        assert!(
            a_stopped < Duration::from_millis(600),
            "a stopped late: {a_stopped:?}"
        );
        assert!(took_over > a_stopped, "{took_over:?} {a_stopped:?}");
        let status = b.status().await.expect("status");
        let lease = status.leases.first().expect("lease");
        assert_eq!(lease.owner, "b");
        assert!(lease.epoch >= 2);
        stop.cancel();
        task_a.await.expect("join").expect("a ran");
        task_b.await.expect("join").expect("b ran");
        b.leave().await;
        a.leave().await;
    }

    /// Every delivery: the node that made it, the message id, when.
    type DeliveryLog = Arc<Mutex<Vec<(&'static str, i64, Instant)>>>;

    /// Records every delivery with the node that made it.
    struct Recorder {
        node: &'static str,
        log: DeliveryLog,
    }

    impl crate::Destination for Recorder {
        fn send<'a>(&'a self, message: &'a crate::Outbound) -> crate::SendFuture<'a> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if let Ok(mut log) = self.log.lock() {
                    log.push((self.node, message.message_id, Instant::now()));
                }
                crate::SendOutcome::Sent { response: None }
            })
        }
    }

    fn spec(node: &'static str, log: &DeliveryLog) -> crate::ChannelSpec {
        let recorder = Arc::new(Recorder {
            node,
            log: log.clone(),
        });
        crate::ChannelSpec::new("c", vec![crate::DestinationSpec::new("d", recorder)])
    }

    fn hl7(i: usize) -> Vec<u8> {
        format!(
            "MSH|^~\\&|HIS|GH|FERRY|CLOUD|20261125083000||ADT^A01^ADT_A01|M{i:04}|P|2.5.1\r\
             PID|1||{i}^^^GH^MR||DOE^JANE\r"
        )
        .into_bytes()
    }

    #[test]
    fn two_engines_on_one_store_deliver_each_queue_from_one_node_and_take_over() {
        let db = TestDb::new();
        runtime().block_on(two_engines_on(&db));
    }

    /// Two engines on one store (the role PostgreSQL plays between processes), each with its
    /// own lease thread: only the lease holder delivers; messages received by either are
    /// delivered once each, in order; when the holder stalls, the other takes over after the
    /// lease time and the first has stopped before.
    async fn two_engines_on(db: &TestDb) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ferry_store::Store::open(&dir.path().join("s.db")).expect("store");
        let log = Arc::new(Mutex::new(Vec::new()));
        let ttl = 1000;
        let a = ClusterHandle::join(options(db), settings("a", ttl))
            .await
            .expect("a");
        let b = ClusterHandle::join(options(db), settings("b", ttl))
            .await
            .expect("b");
        let engine_a = crate::Engine::start_clustered(
            store.clone(),
            vec![spec("a", &log)],
            crate::Router::new(),
            Some(a.clone()),
        )
        .await
        .expect("engine a");
        let engine_b = crate::Engine::start_clustered(
            store.clone(),
            vec![spec("b", &log)],
            crate::Router::new(),
            Some(b.clone()),
        )
        .await
        .expect("engine b");
        let ingests = [
            engine_a.ingest("c").expect("a's channel"),
            engine_b.ingest("c").expect("b's channel"),
        ];
        let wait_for = |n: usize| {
            let log = log.clone();
            async move {
                let began = Instant::now();
                loop {
                    let delivered: std::collections::BTreeSet<i64> =
                        log.lock().expect("log").iter().map(|d| d.1).collect();
                    if delivered.len() >= n {
                        return;
                    }
                    assert!(
                        began.elapsed() < Duration::from_secs(10),
                        "{} of {n} delivered",
                        delivered.len()
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        for i in 0..40 {
            let reply = ingests[i % 2].receive(&hl7(i)).await;
            assert!(reply.code.is_positive());
        }
        wait_for(40).await;
        let holder = {
            let log = log.lock().expect("log");
            let nodes: std::collections::BTreeSet<&str> = log.iter().map(|d| d.0).collect();
            assert_eq!(nodes.len(), 1, "one node delivers the queue: {nodes:?}");
            log.first().map(|d| d.0).unwrap_or_default()
        };
        let (frozen, other) = if holder == "a" { (&a, "b") } else { (&b, "a") };
        let holder_metrics = if holder == "a" { &engine_a } else { &engine_b }
            .stats()
            .render_prometheus();
        assert!(
            holder_metrics.contains("ferry_cluster_lease_held{resource=\"dest:c/d\"} 1"),
            "{holder_metrics}"
        );
        let stalled = Instant::now();
        frozen.send(Command::Freeze(Duration::from_secs(4)));
        for i in 40..100 {
            let reply = ingests[i % 2].receive(&hl7(i)).await;
            assert!(reply.code.is_positive());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        wait_for(100).await;
        let log = log.lock().expect("log").clone();
        let last_of_holder = log
            .iter()
            .filter(|d| d.0 == holder)
            .map(|d| d.2)
            .max()
            .expect("holder");
        let first_of_other = log
            .iter()
            .filter(|d| d.0 == other)
            .map(|d| d.2)
            .min()
            .expect("other took over");
        assert!(
            last_of_holder < first_of_other,
            "two nodes delivered at once"
        );
        let takeover = first_of_other - stalled;
        eprintln!(
            "takeover after the holder stalled: {} ms",
            takeover.as_millis()
        );
        assert!(
            takeover >= Duration::from_millis(ttl * 3 / 5),
            "{takeover:?}"
        );
        assert!(takeover < Duration::from_millis(ttl * 2), "{takeover:?}");
        // In order, each message once (no attempt was cut off: sends are short).
        let ids: Vec<i64> = log.iter().map(|d| d.1).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "order or duplicates: {ids:?}"
        );
        assert_eq!(ids.len(), 100);
        // Both nodes' queue-depth gauges follow the shared queue (recounted every lease
        // time), though each saw only some of the messages go in and some come out.
        let began = Instant::now();
        let depth = |e: &crate::Engine| {
            e.stats().channel("c").and_then(|c| {
                c.destination("d")
                    .map(|d| d.queue_depth.load(std::sync::atomic::Ordering::Relaxed))
            })
        };
        while depth(&engine_a) != Some(0) || depth(&engine_b) != Some(0) {
            assert!(
                began.elapsed() < Duration::from_secs(5),
                "depths {:?} {:?}",
                depth(&engine_a),
                depth(&engine_b)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // An operator's lifecycle change is recorded for `ferry cluster status`.
        engine_b
            .pause_channel("c", Duration::from_secs(1))
            .await
            .expect("pause");
        let began = Instant::now();
        loop {
            let status = b.status().await.expect("status");
            if let Some(row) = status.channels.first() {
                assert_eq!(
                    (row.state.as_str(), row.changed_by.as_str()),
                    ("paused", "b")
                );
                break;
            }
            assert!(
                began.elapsed() < Duration::from_secs(5),
                "state not recorded"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = engine_b.shutdown().await;
        let _ = engine_a.shutdown().await;
    }
}
