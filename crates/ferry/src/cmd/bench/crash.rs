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
    /// directory. Plain connections go to loopback only. Use an empty database or schema:
    /// the oracle counts what this run acknowledged, so old messages would be delivered too.
    #[arg(long, value_name = "URL")]
    store_url: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
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

/// The engine under test: a `ferry run` child restarted after each kill.
struct Engine {
    binary: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    source: SocketAddr,
    child: Option<Child>,
    lives: u32,
}

impl Engine {
    /// Start a new life and wait until its MLLP source accepts connections; returns how long
    /// that took.
    async fn start(&mut self) -> anyhow::Result<Duration> {
        self.lives += 1;
        let log = std::fs::File::create(self.dir.join(format!("engine-{}.log", self.lives)))?;
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
                    self.dir
                        .join(format!("engine-{}.log", self.lives))
                        .display()
                );
            }
            if Instant::now() > deadline {
                anyhow::bail!("the engine was not ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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

fn config(
    dir: &Path,
    store_url: Option<&str>,
    source: SocketAddr,
    downstream: SocketAddr,
) -> String {
    let store = match store_url {
        Some(url) => format!("url = {url:?}"),
        None => format!("path = {:?}", dir.join("ferry.db").display().to_string()),
    };
    format!(
        r#"[store]
{store}

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
"#,
    )
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
    let source = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config_path = dir.join("ferry.toml");
    std::fs::write(
        &config_path,
        config(&dir, args.store_url.as_deref(), source, downstream),
    )?;
    let binary = match args.ferry.clone() {
        Some(b) => b,
        None => std::env::current_exe().context("finding the ferry binary")?,
    };
    let mut engine = Engine {
        binary,
        config: config_path,
        dir: dir.clone(),
        source,
        child: None,
        lives: 0,
    };
    if !args.json {
        println!(
            "ferry bench crash: seed {seed}, {} kill(s), {} sender(s), run directory {}",
            args.kills,
            args.senders,
            dir.display()
        );
    }
    let began = Instant::now();
    let mut slowest_ready = engine.start().await?;
    let shared = Arc::new(Senders::default());
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..args.senders.max(1) {
        tasks.spawn(sender(format!("S{s}"), source, shared.clone()));
    }
    for k in 1..=args.kills {
        tokio::time::sleep(schedule.between(args.min_interval, args.max_interval)).await;
        engine.kill();
        let acked = shared.acked.lock().map(|a| a.len()).unwrap_or(0);
        let ready = engine.start().await?;
        slowest_ready = slowest_ready.max(ready);
        if !args.json {
            println!(
                "kill {k:>3}: {acked} acknowledged so far; restarted, ready in {:.1} ms",
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
    engine.kill();
    receiver.abort();
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
