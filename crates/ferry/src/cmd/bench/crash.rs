//! `ferry bench crash`: the zero-loss harness (PRODUCT.md §3: a message Ferry acknowledged is
//! never lost, whatever happens to the process).
//!
//! One run:
//! 1. starts a receiver ([`super::receive`]) as the downstream MLLP system, logging every
//!    delivery;
//! 2. starts a real engine (`ferry run`, a child process) with one MLLP → MLLP channel;
//! 3. runs `senders` concurrent HL7 senders that behave as real ones do: send, wait for the
//!    ACK, and on a broken connection or a timeout reconnect and send the *same* message again;
//!    each logs every MSH-10 that got a positive ACK;
//! 4. kills the engine with SIGKILL at random moments (`kills` times, `min_interval` to
//!    `max_interval` apart, from a printed seed so a run can be repeated) and restarts it at
//!    once on the same store;
//! 5. stops the senders, waits (up to `settle`) for the receiver to have every acknowledged
//!    MSH-10, and reports: acknowledged, delivered, **lost** (acknowledged but never
//!    delivered; must be 0), duplicates (allowed: delivery is at-least-once), order violations
//!    (a first delivery arriving after a later message of the same sender), and the slowest
//!    restart-to-ready time.
//!
//! With `--store-url` the engine runs on PostgreSQL, in a fresh schema of the given database.
//! With `--nodes 2` (or more) and `--store-url`, the engine is a cluster: that many `ferry run`
//! nodes on one PostgreSQL store (a fresh schema of the given database), each with its own
//! MLLP source; sender `s` sends to node `s % nodes`. Each kill SIGKILLs one node chosen by
//! the schedule and restarts it at once under a new node id (as a restarted process gets by
//! default), so the queue leases it held must expire and be taken over; the harness reports
//! the slowest takeover (kill to every lease the killed node held being held by a live node).
//!
//! The exit code is 1 when anything acknowledged was lost or order was broken.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry_connectors::mllp::{MllpConnection, MllpEndpoint};

use super::receive::{self, Deliveries};

/// Arguments of `ferry bench crash`.
#[derive(Debug, clap::Args)]
pub struct CrashArgs {
    /// How many times the engine is killed with SIGKILL.
    #[arg(long, default_value_t = 20)]
    kills: u32,
    /// Concurrent senders.
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Shortest time from a restart to the next kill.
    #[arg(long, default_value = "200ms", value_parser = crate::cmd::parse_duration)]
    min_interval: Duration,
    /// Longest time from a restart to the next kill.
    #[arg(long, default_value = "1s", value_parser = crate::cmd::parse_duration)]
    max_interval: Duration,
    /// Seed of the kill schedule (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Time allowed after the last kill for every acknowledged message to be delivered.
    #[arg(long, default_value = "60s", value_parser = crate::cmd::parse_duration)]
    settle: Duration,
    /// The `ferry` binary to run as the engine (default: this one).
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// Directory for the run's config, store and engine logs (default: a temporary one,
    /// deleted afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run the engine on this PostgreSQL database (`[store] url`, e.g.
    /// `postgres://postgres@127.0.0.1:5432/test`) instead of a SQLite file in the run
    /// directory; needed for `--nodes` above 1. Plain connections go to loopback only. The run
    /// creates a fresh schema in the database (so the oracle sees only its own messages) and
    /// drops it afterwards unless `--dir` is given.
    #[arg(long, value_name = "URL")]
    store_url: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Engine nodes: 1 runs one engine (on SQLite, or on `--store-url`); 2 or more run a
    /// cluster on `--store-url`.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// `[cluster] lease_ttl` of the nodes.
    #[arg(long, default_value = "2s", value_parser = crate::cmd::parse_duration)]
    lease_ttl: Duration,
}

/// A small, seeded generator for the kill schedule (xorshift64*); not for secrets.
struct Schedule(u64);

impl Schedule {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A duration uniformly in `[min, max]`.
    fn between(&mut self, min: Duration, max: Duration) -> Duration {
        let span = max.saturating_sub(min).as_micros() as u64;
        min + Duration::from_micros(if span == 0 { 0 } else { self.next() % span })
    }
}

/// The engine under test (one node of it): a `ferry run` child restarted after each kill.
struct Engine {
    binary: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    source: SocketAddr,
    child: Option<Child>,
    lives: u32,
    /// Node number (0 for a single engine).
    node: usize,
    /// Writes the configuration of a life (its node id changes with each life).
    write_config: Arc<dyn Fn(usize, u32) -> String + Send + Sync>,
}

impl Engine {
    /// Start a new life and wait until its MLLP source accepts connections; returns how long
    /// that took.
    async fn start(&mut self) -> anyhow::Result<Duration> {
        self.lives += 1;
        std::fs::write(&self.config, (self.write_config)(self.node, self.lives))?;
        let log = std::fs::File::create(self.log_path())?;
        let started = Instant::now();
        let child = Command::new(&self.binary)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("FERRY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = started + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(self.source).await.is_ok() {
                return Ok(started.elapsed());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                anyhow::bail!(
                    "the engine exited ({status}) before it was ready; see {}",
                    self.log_path().display()
                );
            }
            if Instant::now() > deadline {
                anyhow::bail!("the engine was not ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        if self.node == 0 {
            self.dir.join(format!("engine-{}.log", self.lives))
        } else {
            self.dir
                .join(format!("engine-n{}-{}.log", self.node, self.lives))
        }
    }

    /// The cluster node id of the current life.
    fn node_id(&self) -> String {
        node_id(self.node, self.lives)
    }

    /// SIGKILL the running life and reap it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on Unix
            let _ = child.wait();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the senders share.
#[derive(Default)]
struct Senders {
    acked: Mutex<Vec<String>>,
    stop: AtomicBool,
    resends: AtomicU64,
    naks: AtomicU64,
}

/// A sender: messages `{prefix}-{seq}` in order, each resent until positively acknowledged.
async fn sender(prefix: String, source: SocketAddr, shared: Arc<Senders>) {
    let endpoint = MllpEndpoint {
        address: source.to_string(),
        tls: None,
        connect_timeout: Duration::from_secs(2),
        max_frame_bytes: ferry_mllp::DEFAULT_MAX_FRAME_BYTES,
    };
    let mut connection: Option<MllpConnection> = None;
    let mut seq = 0u64;
    let mut attempt = 0u32;
    while !shared.stop.load(Ordering::Relaxed) {
        let conn = match connection.as_mut() {
            Some(c) => c,
            None => match MllpConnection::connect(&endpoint).await {
                Ok(c) => connection.insert(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let id = format!("{prefix}-{seq:08}");
        if attempt > 0 {
            shared.resends.fetch_add(1, Ordering::Relaxed);
        }
        attempt += 1;
        let message = super::sample_message(&id, 512);
        match conn.exchange(&message, Duration::from_secs(5)).await {
            Ok(ack) => match ferry_hl7::ack::parse_ack(&ack) {
                Ok(a) if a.code.is_positive() && a.control_id == id => {
                    if let Ok(mut acked) = shared.acked.lock() {
                        acked.push(id);
                    }
                    seq += 1;
                    attempt = 0;
                }
                _ => {
                    shared.naks.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            // Killed mid-exchange: the message may or may not be stored; a sender resends.
            Err(_) => connection = None,
        }
    }
}

/// The oracle's findings.
#[derive(Debug)]
struct Verdict {
    acknowledged: usize,
    delivered: usize,
    lost: Vec<String>,
    duplicates: u64,
    order_violations: u64,
}

fn judge(acked: &[String], deliveries: &Deliveries) -> Verdict {
    let Ok(log) = deliveries.lock() else {
        return Verdict {
            acknowledged: acked.len(),
            delivered: 0,
            lost: acked.to_vec(),
            duplicates: 0,
            order_violations: 0,
        };
    };
    let lost: Vec<String> = acked
        .iter()
        .filter(|id| !log.distinct.contains(id.as_str()))
        .cloned()
        .collect();
    Verdict {
        acknowledged: acked.len(),
        delivered: log.distinct.len(),
        lost,
        duplicates: log.duplicates,
        order_violations: log.order_violations,
    }
}

fn node_id(node: usize, life: u32) -> String {
    format!("n{node}-life{life}")
}

/// Where a node keeps its messages: its own SQLite file, or a PostgreSQL store shared by
/// every node of the run.
#[derive(Clone)]
enum StoreAt {
    /// `ferry.db` in the run directory.
    Sqlite,
    /// `[store] url`, and with `cluster = Some((lease_ttl, node_id))` a `[cluster]` section.
    Postgres {
        url: String,
        cluster: Option<(Duration, String)>,
    },
}

/// A node's configuration: SQLite in `dir`, or PostgreSQL (with `[cluster]` and this life's
/// node id when the run has several nodes).
fn config(dir: &Path, source: SocketAddr, downstream: SocketAddr, store: StoreAt) -> String {
    let store = match store {
        StoreAt::Sqlite => format!(
            "[store]\npath = {:?}\n",
            dir.join("ferry.db").display().to_string()
        ),
        StoreAt::Postgres { url, cluster: None } => format!("[store]\nurl = {url:?}\n"),
        StoreAt::Postgres {
            url,
            cluster: Some((ttl, node)),
        } => format!(
            "[store]\nurl = {url:?}\n\n[cluster]\nenabled = true\nnode_id = {node:?}\n\
             lease_ttl = \"{}ms\"\nqueue_poll = \"50ms\"\n",
            ttl.as_millis()
        ),
    };
    format!(
        r#"{store}

[admin]
listen = "127.0.0.1:0"

[[channel]]
name = "crash"
source = {{ type = "mllp", listen = "{source}" }}

  [[channel.destination]]
  name = "downstream"
  type = "mllp"
  address = "{downstream}"
  retry = {{ initial = "20ms", max = "200ms" }}
"#
    )
}

/// A fresh schema for the run in `url`'s database; the URL with `search_path` set to it.
async fn fresh_schema(url: &str, seed: u64) -> anyhow::Result<(String, String)> {
    let schema = format!("ferry_bench_crash_{seed}");
    let options = ferry_store::postgres::PgOptions {
        url: url.to_owned(),
        tls: None,
    };
    let create = format!("CREATE SCHEMA {schema}");
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut client = ferry_store::postgres::connect(&options)?;
        client.batch_execute(&create)?;
        Ok(())
    })
    .await??;
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok((
        schema.clone(),
        format!("{url}{sep}options=-csearch_path%3D{schema}"),
    ))
}

async fn drop_schema(url: &str, schema: &str) {
    let options = ferry_store::postgres::PgOptions {
        url: url.to_owned(),
        tls: None,
    };
    let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
    let _ = tokio::task::spawn_blocking(move || {
        if let Ok(mut client) = ferry_store::postgres::connect(&options) {
            let _ = client.batch_execute(&sql);
        }
    })
    .await;
}

/// Wait until no lease is held by `dead` any more and every lease it held is held by a live
/// node; how long that took from `since`. `None`: it held none.
async fn takeover(
    url: &str,
    dead: &str,
    since: Instant,
    limit: Duration,
) -> anyhow::Result<Option<Duration>> {
    let options = ferry_store::postgres::PgOptions {
        url: url.to_owned(),
        tls: None,
    };
    let status = {
        let options = options.clone();
        tokio::task::spawn_blocking(move || ferry_store::cluster::Cluster::status_of(&options))
            .await??
    };
    let held: Vec<String> = status
        .leases
        .iter()
        .filter(|l| l.owner == dead && l.held())
        .map(|l| l.resource.clone())
        .collect();
    if held.is_empty() {
        return Ok(None);
    }
    loop {
        let options = options.clone();
        let status =
            tokio::task::spawn_blocking(move || ferry_store::cluster::Cluster::status_of(&options))
                .await??;
        let done = held.iter().all(|r| {
            status
                .leases
                .iter()
                .any(|l| &l.resource == r && l.held() && l.owner != dead)
        });
        if done {
            return Ok(Some(since.elapsed()));
        }
        if since.elapsed() > limit {
            anyhow::bail!("leases of {dead} not taken over within {limit:?}: {held:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Run the harness.
pub async fn run(args: CrashArgs) -> anyhow::Result<ExitCode> {
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let seed = args.seed.unwrap_or_else(|| super::unix_micros() | 1).max(1);
    let mut schedule = Schedule(seed);
    let (downstream, deliveries, receiver) = receive::spawn("127.0.0.1:0".parse()?).await?;
    let nodes = args.nodes.max(1);
    // On PostgreSQL the run gets a fresh schema, so the oracle sees only this run's messages.
    let postgres = match (&args.store_url, nodes) {
        (Some(url), _) => Some((url.clone(), fresh_schema(url, seed).await?)),
        (None, 1) => None,
        (None, _) => {
            anyhow::bail!("--nodes {nodes} needs --store-url (the shared PostgreSQL store)")
        }
    };
    let binary = match args.ferry.clone() {
        Some(b) => b,
        None => std::env::current_exe().context("finding the ferry binary")?,
    };
    let mut engines = Vec::with_capacity(nodes);
    for node in 0..nodes {
        let source = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let config_path = if nodes == 1 {
            dir.join("ferry.toml")
        } else {
            dir.join(format!("ferry-n{node}.toml"))
        };
        let (run_dir, ttl) = (dir.clone(), args.lease_ttl);
        let url = postgres.as_ref().map(|(_, (_, url))| url.clone());
        let write_config: Arc<dyn Fn(usize, u32) -> String + Send + Sync> =
            Arc::new(move |node, life| {
                let store = match &url {
                    None => StoreAt::Sqlite,
                    Some(url) => StoreAt::Postgres {
                        url: url.clone(),
                        cluster: (nodes > 1).then(|| (ttl, node_id(node, life))),
                    },
                };
                config(&run_dir, source, downstream, store)
            });
        engines.push(Engine {
            binary: binary.clone(),
            config: config_path,
            dir: dir.clone(),
            source,
            child: None,
            lives: 0,
            node,
            write_config,
        });
    }
    if !args.json {
        println!(
            "ferry bench crash: seed {seed}, {} kill(s), {} sender(s), {nodes} node(s), run directory {}",
            args.kills,
            args.senders,
            dir.display()
        );
    }
    let began = Instant::now();
    let mut slowest_ready = Duration::ZERO;
    for engine in &mut engines {
        slowest_ready = slowest_ready.max(engine.start().await?);
    }
    let shared = Arc::new(Senders::default());
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..args.senders.max(1) {
        let source = engines[s % nodes].source;
        tasks.spawn(sender(format!("S{s}"), source, shared.clone()));
    }
    let mut takeovers: Vec<Duration> = Vec::new();
    for k in 1..=args.kills {
        tokio::time::sleep(schedule.between(args.min_interval, args.max_interval)).await;
        let victim = (schedule.next() % nodes as u64) as usize;
        let engine = &mut engines[victim];
        let dead = engine.node_id();
        engine.kill();
        let killed = Instant::now();
        let acked = shared.acked.lock().map(|a| a.len()).unwrap_or(0);
        let ready = engine.start().await?;
        slowest_ready = slowest_ready.max(ready);
        let taken = match &postgres {
            Some((_, (_, url))) if nodes > 1 => {
                takeover(url, &dead, killed, Duration::from_secs(30)).await?
            }
            _ => None,
        };
        if let Some(t) = taken {
            takeovers.push(t);
        }
        if !args.json {
            let node = if nodes > 1 {
                format!(" node {victim} ({dead})")
            } else {
                String::new()
            };
            let taken = taken.map_or(String::new(), |t| {
                format!(
                    "; its leases taken over {:.0} ms after the kill",
                    t.as_secs_f64() * 1000.0
                )
            });
            println!(
                "kill {k:>3}:{node} {acked} acknowledged so far; restarted, ready in {:.1} ms{taken}",
                ready.as_secs_f64() * 1000.0
            );
        }
    }
    tokio::time::sleep(schedule.between(args.min_interval, args.max_interval)).await;
    shared.stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let acked: Vec<String> = shared.acked.lock().map(|a| a.clone()).unwrap_or_default();
    let deadline = Instant::now() + args.settle;
    let mut verdict = judge(&acked, &deliveries);
    while !verdict.lost.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        verdict = judge(&acked, &deliveries);
    }
    for engine in &mut engines {
        engine.kill();
    }
    receiver.abort();
    if let Some((url, (schema, _))) = &postgres
        && args.dir.is_none()
    {
        drop_schema(url, schema).await;
    }
    let slowest_takeover = takeovers.iter().max().copied();
    let distinct_acked: BTreeSet<&String> = acked.iter().collect();
    let resends = shared.resends.load(Ordering::Relaxed);
    let naks = shared.naks.load(Ordering::Relaxed);
    let ok = verdict.lost.is_empty() && verdict.order_violations == 0;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "seed": seed, "kills": args.kills, "senders": args.senders,
                "acknowledged": verdict.acknowledged, "acknowledged_distinct": distinct_acked.len(),
                "delivered": verdict.delivered, "lost": verdict.lost.len(),
                "duplicates": verdict.duplicates, "order_violations": verdict.order_violations,
                "resends": resends, "naks": naks,
                "slowest_ready_ms": slowest_ready.as_secs_f64() * 1000.0,
                "nodes": nodes, "takeovers": takeovers.len(),
                "slowest_takeover_ms": slowest_takeover.map(|t| t.as_secs_f64() * 1000.0),
                "seconds": began.elapsed().as_secs_f64(), "ok": ok,
            })
        );
    } else {
        println!(
            "{} kill(s) in {:.1} s: {} acknowledged, {} delivered (distinct), {} LOST, {} duplicate(s), \
             {} order violation(s); senders resent {resends} and saw {naks} negative ACK(s); slowest \
             restart-to-ready {:.1} ms",
            args.kills,
            began.elapsed().as_secs_f64(),
            verdict.acknowledged,
            verdict.delivered,
            verdict.lost.len(),
            verdict.duplicates,
            verdict.order_violations,
            slowest_ready.as_secs_f64() * 1000.0
        );
        if let Some(t) = slowest_takeover {
            println!(
                "{} takeover(s) of a killed node's leases; slowest {:.0} ms after the kill",
                takeovers.len(),
                t.as_secs_f64() * 1000.0
            );
        }
        for id in verdict.lost.iter().take(10) {
            println!("lost: {id}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_repeatable_and_in_range() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(300));
        let a: Vec<Duration> = {
            let mut s = Schedule(42);
            (0..100).map(|_| s.between(min, max)).collect()
        };
        let mut s = Schedule(42);
        let b: Vec<Duration> = (0..100).map(|_| s.between(min, max)).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|d| *d >= min && *d < max));
        assert!(a.iter().any(|d| *d != a[0]), "not constant");
    }
}
