//! Several Ferry nodes on one PostgreSQL database: who is there, and who works what.
//!
//! Each node registers itself in `cluster_nodes` and heartbeats. Work that must be done by
//! one node at a time (a destination queue, `dest:<channel>/<destination>`; a polling
//! source, `poll:<channel>`) is guarded by a lease in `cluster_leases`: a row naming the
//! owner, an epoch and an expiry. [`Cluster::acquire`] takes or renews a lease in one atomic
//! statement that succeeds only when the lease is free, expired, or already this node's; the
//! epoch goes up on every change of owner, so a stale owner can be recognised (fencing).
//! Expiry is decided with the database's clock (`now()`), never a node's.
//!
//! The client is synchronous: call a [`Cluster`] from a thread of its own or from
//! `spawn_blocking`, never from a thread that drives async tasks.

use std::time::Duration;

use crate::StoreError;
use crate::postgres::cluster as sql;
use crate::postgres::{PgOptions, connect};

/// One node as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// The node's id (`[cluster] node_id`).
    pub node: String,
    /// Where the node can be reached (its admin address), as it reported it.
    pub address: String,
    /// When it (last) joined, ms since the Unix epoch (database clock).
    pub started_ms: i64,
    /// Its last heartbeat, ms since the Unix epoch (database clock).
    pub heartbeat_ms: i64,
    /// How long ago the last heartbeat was, by the database's clock.
    pub heartbeat_age_ms: i64,
    /// The lease time the node runs with.
    pub lease_ttl_ms: i64,
    /// It left cleanly (its leases were released).
    pub stopped: bool,
}

impl NodeRow {
    /// Alive: not stopped, and heard from within its lease time (after which every lease it
    /// held has expired).
    pub fn alive(&self) -> bool {
        !self.stopped && self.heartbeat_age_ms <= self.lease_ttl_ms
    }
}

/// One lease as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// What it guards: `dest:<channel>/<destination>` or `poll:<channel>`.
    pub resource: String,
    /// The node that holds (or last held) it.
    pub owner: String,
    /// Goes up by one on every change of owner.
    pub epoch: i64,
    /// When the current owner took it, ms since the Unix epoch.
    pub acquired_ms: i64,
    /// When it expires unless renewed, ms since the Unix epoch.
    pub expires_ms: i64,
    /// Milliseconds until it expires (negative: expired), by the database's clock.
    pub expires_in_ms: i64,
}

impl LeaseRow {
    /// Held right now (not expired).
    pub fn held(&self) -> bool {
        self.expires_in_ms > 0
    }
}

/// The lifecycle state an operator last gave a channel, shared by all nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStateRow {
    /// The channel.
    pub channel: String,
    /// `started`, `paused` or `stopped`.
    pub state: String,
    /// The node whose admin API made the change.
    pub changed_by: String,
    /// When, ms since the Unix epoch.
    pub changed_ms: i64,
}

/// Everything `ferry cluster status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Every node that ever joined, by id.
    pub nodes: Vec<NodeRow>,
    /// Every lease, by resource.
    pub leases: Vec<LeaseRow>,
    /// Channels whose lifecycle state was set through an admin API.
    pub channels: Vec<ChannelStateRow>,
}

/// A lease held by this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The lease's epoch: the same for as long as this node keeps it.
    pub epoch: i64,
}

/// The resource name of a destination queue's lease.
pub fn destination_resource(channel: &str, destination: &str) -> String {
    format!("dest:{channel}/{destination}")
}

/// The resource name of a polling source's lease.
pub fn poll_resource(channel: &str) -> String {
    format!("poll:{channel}")
}

/// One node's connection to the cluster tables (its own connection, not the store's).
pub struct Cluster {
    client: postgres::Client,
    node: String,
    address: String,
    ttl: Duration,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Cluster {
    /// Connect, create the cluster tables if needed, and register `node` (at `address`, with
    /// leases of `ttl`) with a first heartbeat.
    ///
    /// Leases belong to a node id, so two live processes must never share one. When the id
    /// was heard from within its lease time and did not leave cleanly (a crashed process
    /// restarted at once under a fixed `node_id`, or a second process configured with the
    /// same id), joining waits until that lease time has passed since its last heartbeat;
    /// if it keeps heartbeating for twice the lease time, another process is using the id
    /// and joining fails.
    ///
    /// # Errors
    /// As [`connect`], when the tables cannot be created, or [`StoreError::Config`] when
    /// another live process uses `node`.
    pub fn join(
        options: &PgOptions,
        node: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<Cluster, StoreError> {
        let mut client = connect(options)?;
        sql::create(&mut client)?;
        let began = std::time::Instant::now();
        while let Some(age) = sql::live_age_ms(&mut client, node)? {
            if began.elapsed() > ttl * 2 {
                return Err(StoreError::Config(format!(
                    "[cluster] node_id `{node}` is in use by a live node (heard from {age} ms \
                     ago); give every node its own id"
                )));
            }
            tracing::info!(%node, heard_ms_ago = age,
                "this node id was alive a moment ago; waiting for its leases to lapse");
            std::thread::sleep(Duration::from_millis(100).min(ttl / 4));
        }
        Cluster::registered(client, node, address, ttl)
    }

    /// [`join`](Self::join) again after a lost connection, by the process that joined under
    /// `node`: no wait for the id's last heartbeat (it was this process's own).
    ///
    /// # Errors
    /// As [`join`](Self::join), never for the id being in use.
    pub fn reconnect(
        options: &PgOptions,
        node: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<Cluster, StoreError> {
        let mut client = connect(options)?;
        sql::create(&mut client)?;
        Cluster::registered(client, node, address, ttl)
    }

    fn registered(
        client: postgres::Client,
        node: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<Cluster, StoreError> {
        let mut cluster = Cluster {
            client,
            node: node.to_owned(),
            address: address.to_owned(),
            ttl,
        };
        cluster.heartbeat()?;
        Ok(cluster)
    }

    /// Read the cluster's state without joining it (`ferry cluster status`).
    ///
    /// # Errors
    /// As [`connect`], or when the tables cannot be read.
    pub fn status_of(options: &PgOptions) -> Result<ClusterStatus, StoreError> {
        let mut client = connect(options)?;
        sql::create(&mut client)?;
        status(&mut client)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The lease time.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Record that this node is alive (and registered, should its row have been removed).
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub fn heartbeat(&mut self) -> Result<(), StoreError> {
        sql::heartbeat(
            &mut self.client,
            &self.node,
            &self.address,
            millis(self.ttl),
        )
    }

    /// Take or renew `resource` for [`ttl`](Self::ttl) from now (database time). `None`:
    /// another node holds it and it has not expired.
    ///
    /// # Errors
    /// When the database cannot be reached. The caller must then assume it holds nothing
    /// once its last successful renewal's time is up.
    pub fn acquire(&mut self, resource: &str) -> Result<Option<Lease>, StoreError> {
        Ok(
            sql::acquire(&mut self.client, resource, &self.node, millis(self.ttl))?
                .map(|epoch| Lease { epoch }),
        )
    }

    /// Give up `resource` (another node may take it at once). True when this node held it.
    ///
    /// # Errors
    /// When the database cannot be reached (the lease then simply expires).
    pub fn release(&mut self, resource: &str) -> Result<bool, StoreError> {
        sql::release(&mut self.client, resource, &self.node)
    }

    /// Leave cleanly: give up every lease and mark the node stopped. How many leases it held.
    ///
    /// # Errors
    /// When the database cannot be reached (the leases then simply expire).
    pub fn leave(&mut self) -> Result<u64, StoreError> {
        let released = sql::release_all(&mut self.client, &self.node)?;
        sql::leave(&mut self.client, &self.node)?;
        Ok(released)
    }

    /// Nodes, leases and shared channel states.
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub fn status(&mut self) -> Result<ClusterStatus, StoreError> {
        status(&mut self.client)
    }

    /// Record the lifecycle state an operator gave `channel` on this node.
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub fn set_channel_state(&mut self, channel: &str, state: &str) -> Result<(), StoreError> {
        sql::set_channel_state(&mut self.client, channel, state, &self.node)
    }
}

fn status(client: &mut postgres::Client) -> Result<ClusterStatus, StoreError> {
    Ok(ClusterStatus {
        nodes: sql::nodes(client)?,
        leases: sql::leases(client)?,
        channels: sql::channel_states(client)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_testkit::postgres::TestDb;

    fn options(db: &TestDb) -> PgOptions {
        PgOptions {
            url: db.url().to_owned(),
            tls: None,
        }
    }

    #[test]
    fn one_node_holds_a_lease_until_it_expires_then_another_takes_it() {
        let db = TestDb::new();
        let ttl = Duration::from_millis(600);
        let mut a = Cluster::join(&options(&db), "a", "127.0.0.1:1", ttl).expect("join a");
        let mut b = Cluster::join(&options(&db), "b", "127.0.0.1:2", ttl).expect("join b");
        let r = destination_resource("adt", "emr");

        let first = a.acquire(&r).expect("a acquires").expect("free lease");
        assert_eq!(first.epoch, 1);
        assert_eq!(b.acquire(&r).expect("b tries"), None, "held by a");
        // Renewing keeps the epoch.
        assert_eq!(a.acquire(&r).expect("renew"), Some(first));
        assert_eq!(b.acquire(&r).expect("b tries"), None);

        // a stops renewing: b gets it once it expired, with a higher epoch.
        std::thread::sleep(ttl + Duration::from_millis(100));
        let taken = b.acquire(&r).expect("b acquires").expect("expired lease");
        assert_eq!(taken.epoch, 2);
        assert_eq!(a.acquire(&r).expect("a tries"), None, "now b's");

        // A clean release hands it over at once, and the epoch goes up again.
        assert!(b.release(&r).expect("release"));
        let back = a.acquire(&r).expect("a again").expect("released");
        assert_eq!(back.epoch, 3);

        // Neither heartbeat within the lease time: both look dead until they do.
        assert!(!b.status().expect("status").nodes.iter().any(NodeRow::alive));
        a.heartbeat().expect("heartbeat a");
        b.heartbeat().expect("heartbeat b");
        let status = b.status().expect("status");
        assert_eq!(status.nodes.len(), 2);
        assert!(status.nodes.iter().all(NodeRow::alive));
        let lease = status.leases.first().expect("one lease");
        assert_eq!((lease.owner.as_str(), lease.epoch), ("a", 3));
        assert!(lease.held());

        assert_eq!(a.leave().expect("leave"), 1);
        let status = Cluster::status_of(&options(&db)).expect("status");
        let node_a = status.nodes.iter().find(|n| n.node == "a").expect("a");
        assert!(node_a.stopped && !node_a.alive());
        assert!(status.leases.iter().all(|l| !l.held()));
    }

    #[test]
    fn two_nodes_racing_for_many_leases_never_share_one() {
        let db = TestDb::new();
        let ttl = Duration::from_secs(5);
        let resources: Vec<String> = (0..20).map(|i| poll_resource(&format!("c{i}"))).collect();
        let handles: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|node| {
                let opts = options(&db);
                let resources = resources.clone();
                std::thread::spawn(move || {
                    let mut c = Cluster::join(&opts, node, "", ttl).expect("join");
                    resources
                        .iter()
                        .filter(|r| c.acquire(r).expect("acquire").is_some())
                        .cloned()
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let won: Vec<Vec<String>> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        let (a, b) = (&won[0], &won[1]);
        assert_eq!(a.len() + b.len(), resources.len(), "a={a:?} b={b:?}");
        assert!(a.iter().all(|r| !b.contains(r)));
    }

    #[test]
    fn a_node_id_in_use_is_refused_and_a_crashed_ones_waits_for_its_lease() {
        let db = TestDb::new();
        let ttl = Duration::from_millis(400);
        let mut a = Cluster::join(&options(&db), "a", "", ttl).expect("a");
        let r = poll_resource("c");
        assert!(a.acquire(&r).expect("acquire").is_some());
        // A second process with the same id while the first keeps heartbeating.
        let opts = options(&db);
        let second = std::thread::spawn(move || Cluster::join(&opts, "a", "", ttl));
        let began = std::time::Instant::now();
        while !second.is_finished() {
            a.heartbeat().expect("heartbeat");
            assert!(
                began.elapsed() < Duration::from_secs(5),
                "join never gave up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let err = second.join().expect("thread").expect_err("id in use");
        assert!(err.to_string().contains("in use"), "{err}");
        // The first "crashes" (stops heartbeating): a restart under the same id waits for
        // the lease time, then holds the old lease at once.
        let crashed = std::time::Instant::now();
        drop(a);
        let mut again = Cluster::join(&options(&db), "a", "", ttl).expect("rejoin");
        assert!(
            crashed.elapsed() >= ttl / 2,
            "did not wait: {:?}",
            crashed.elapsed()
        );
        assert!(again.acquire(&r).expect("acquire").is_some());
        // After a clean leave, no wait.
        again.leave().expect("leave");
        let left = std::time::Instant::now();
        Cluster::join(&options(&db), "a", "", ttl).expect("join after leave");
        assert!(left.elapsed() < ttl / 2);
    }

    #[test]
    fn channel_states_are_shared() {
        let db = TestDb::new();
        let mut a = Cluster::join(&options(&db), "a", "", Duration::from_secs(5)).expect("a");
        a.set_channel_state("adt", "paused").expect("set");
        let status = Cluster::status_of(&options(&db)).expect("status");
        let row = status.channels.first().expect("row");
        assert_eq!(
            (row.channel.as_str(), row.state.as_str()),
            ("adt", "paused")
        );
        assert_eq!(row.changed_by, "a");
    }
}
