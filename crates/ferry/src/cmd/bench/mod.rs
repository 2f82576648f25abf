//! `ferry bench`: measure throughput and latency against a real MLLP listener.
//!
//! - `ferry bench load mllp://HOST:PORT`: K connections each send N/K messages of a chosen size,
//!   waiting for each ACK (as an HL7 sender does), optionally paced to a target rate; prints
//!   messages/s and p50/p99/max ACK latency, and counts every non-positive or mismatched ACK.
//! - `ferry bench echo`: the machine's ceiling, a trivial MLLP server that answers every frame
//!   with a fixed ACK and stores nothing.
//! - `ferry bench fsync DIR`: how many 1 KiB write+fdatasync a second the disk under DIR does,
//!   the bound of durable one-connection ingest.
//! - `ferry bench receive`: the downstream MLLP receiver; with `load` upstream it reports
//!   end-to-end latency (the load generator stamps each message's send time), duplicates and
//!   order violations ([`receive`]).
//! - `ferry bench crash`: the zero-loss harness: senders log every acknowledged MSH-10, a
//!   receiver logs every delivery, the engine is killed with SIGKILL at random moments and
//!   restarted; the oracle reports lost acknowledged messages, duplicates and order
//!   violations ([`crash`]).

pub mod crash;
pub mod receive;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::Subcommand;
use ferry_connectors::mllp::MllpConnection;
use ferry_mllp::{MllpCodec, encode_frame};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::codec::FramedRead;

/// Arguments of `ferry bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Drive an MLLP listener and report messages/s and ACK latency.
    Load(LoadArgs),
    /// Serve a trivial MLLP echo (fixed ACK, nothing stored): the ceiling for `load`.
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:2599")]
        listen: SocketAddr,
    },
    /// Serve as the downstream MLLP receiver and report end-to-end latency, duplicates and
    /// order violations.
    Receive {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:2600")]
        listen: SocketAddr,
        /// Stop and report after this many distinct messages (0 = at Ctrl-C).
        #[arg(long, default_value_t = 0)]
        expect: u64,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Kill a real engine with SIGKILL at random moments under load and check that no
    /// acknowledged message is lost.
    Crash(crash::CrashArgs),
    /// Measure 1 KiB write + fdatasync operations per second in a directory.
    Fsync {
        /// Directory on the disk to measure (the store's directory).
        dir: PathBuf,
        /// How long to measure.
        #[arg(long, default_value = "3s", value_parser = super::parse_duration)]
        duration: Duration,
    },
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// Target, `mllp://HOST:PORT`.
    target: String,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 16)]
    connections: usize,
    /// Total messages.
    #[arg(long, short = 'n', default_value_t = 20_000)]
    messages: usize,
    /// Approximate message size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Target total rate in messages/s (0 = as fast as ACKs come back).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[command(flatten)]
    tls: super::send::TlsArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Do not check that each ACK is positive and answers its message (for `bench echo`,
    /// whose fixed ACK answers nothing in particular).
    #[arg(long)]
    no_verify: bool,
}

/// Dispatch a bench mode.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.mode {
        Mode::Load(load) => run_load(load).await,
        Mode::Echo { listen } => run_echo(listen).await,
        Mode::Fsync { dir, duration } => run_fsync(dir, duration),
        Mode::Receive {
            listen,
            expect,
            json,
        } => receive::run(listen, expect, json)
            .await
            .map(|()| ExitCode::SUCCESS),
        Mode::Crash(args) => crash::run(args).await,
    }
}

/// The segment the load generator adds to carry its send time (µs since the Unix epoch) to
/// `ferry bench receive`; Ferry passes unknown Z-segments through untouched.
pub const STAMP_SEGMENT: &str = "ZFB";

/// Microseconds since the Unix epoch (the clock both ends of a measurement on one machine
/// share).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// p50, p99 and max of a set of latencies.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Percentiles {
    /// The percentiles of `sorted` (ascending); all zero when it is empty.
    pub fn of_sorted(sorted: &[Duration]) -> Percentiles {
        let at = |p: f64| -> Duration {
            let Some(last) = sorted.len().checked_sub(1) else {
                return Duration::ZERO;
            };
            let i = ((last as f64) * p).round() as usize;
            sorted[i.min(last)]
        };
        Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }

    /// Median in milliseconds.
    pub fn p50_ms(&self) -> f64 {
        self.p50.as_secs_f64() * 1000.0
    }

    /// 99th percentile in milliseconds.
    pub fn p99_ms(&self) -> f64 {
        self.p99.as_secs_f64() * 1000.0
    }

    /// Maximum in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.max.as_secs_f64() * 1000.0
    }
}

/// A realistic ADT^A01 of about `size` bytes with the given control id, stamped with the
/// current time in a [`STAMP_SEGMENT`].
pub fn sample_message(control_id: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "MSH|^~\\&|HIS|GENERAL HOSPITAL|FERRY|CLOUD|20261125083000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r\
         EVN|A01|20261125083000\r\
         PID|1||123456^^^GH^MR||DOE^JOHN^Q^^^^L||19700101|M|||1 MAIN ST^^SPRINGFIELD^IL^62701^USA||^PRN^PH^^^217^5550100\r\
         PV1|1|I|W^101^1^GH||||1234^SMITH^ANNA^^^DR|||MED||||ADM|||||||||||||||||||||||||20261125083000\r"
    )
    .into_bytes();
    m.extend_from_slice(format!("{STAMP_SEGMENT}|{}\r", unix_micros()).as_bytes());
    if m.len() + 8 < size {
        m.extend_from_slice(b"NTE|1||");
        let pad = size - m.len() - 1;
        m.extend(std::iter::repeat_n(b'x', pad));
        m.push(b'\r');
    }
    m
}

async fn run_load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let endpoint = args.tls.endpoint(&args.target)?;
    let connections = args.connections.max(1);
    let per_connection = args.messages.div_ceil(connections);
    let failures = Arc::new(AtomicU64::new(0));
    let interval =
        (args.rate > 0).then(|| Duration::from_secs_f64(connections as f64 / args.rate as f64));
    let mut tasks = tokio::task::JoinSet::new();
    let mut opened = Vec::with_capacity(connections);
    for _ in 0..connections {
        opened.push(MllpConnection::connect(&endpoint).await?);
    }
    let started = Instant::now();
    for (c, mut connection) in opened.into_iter().enumerate() {
        let failures = failures.clone();
        let size = args.size;
        let verify = !args.no_verify;
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(per_connection);
            let mut ticker = interval.map(tokio::time::interval);
            for i in 0..per_connection {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let control_id = format!("B{c}-{i}");
                let message = sample_message(&control_id, size);
                let sent_at = Instant::now();
                match connection.exchange(&message, Duration::from_secs(30)).await {
                    Ok(ack_bytes) => {
                        latencies.push(sent_at.elapsed());
                        let ok = ferry_hl7::ack::parse_ack(&ack_bytes)
                            .is_ok_and(|a| a.code.is_positive() && a.control_id == control_id);
                        if verify && !ok {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        failures.fetch_add(per_connection as u64 - i as u64, Ordering::Relaxed);
                        break;
                    }
                }
            }
            latencies
        });
    }
    let mut latencies = Vec::with_capacity(args.messages);
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined?);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let latency = Percentiles::of_sorted(&latencies);
    let acked = latencies.len();
    let rate = acked as f64 / elapsed.as_secs_f64();
    let failed = failures.load(Ordering::Relaxed);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "target": args.target, "connections": connections, "messages": acked,
                "size": args.size, "seconds": elapsed.as_secs_f64(), "msgs_per_sec": rate,
                "p50_ms": latency.p50_ms(), "p99_ms": latency.p99_ms(), "max_ms": latency.max_ms(),
                "failed": failed,
            })
        );
    } else {
        println!(
            "{acked} messages ({} B) over {connections} connection(s) in {:.2} s: {rate:.0} msg/s; \
             ACK latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; {failed} failed",
            args.size,
            elapsed.as_secs_f64(),
            latency.p50_ms(),
            latency.p99_ms(),
            latency.max_ms()
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn run_echo(listen: SocketAddr) -> anyhow::Result<ExitCode> {
    let listener = TcpListener::bind(listen).await?;
    println!("ferry bench echo listening on {}", listener.local_addr()?);
    let ack = b"MSH|^~\\&|ECHO|ECHO|||20261125000000||ACK|1|P|2.5.1\rMSA|AA|1\r";
    let mut frame = BytesMut::new();
    encode_frame(ack, &mut frame);
    let frame = frame.freeze();
    loop {
        let (tcp, _) = tokio::select! {
            a = listener.accept() => a?,
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        let _ = tcp.set_nodelay(true);
        let frame = frame.clone();
        tokio::spawn(async move {
            let (read, mut write) = tcp.into_split();
            let mut frames =
                FramedRead::new(read, MllpCodec::new(ferry_mllp::DEFAULT_MAX_FRAME_BYTES));
            while let Some(Ok(_)) = frames.next().await {
                if write.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn run_fsync(dir: PathBuf, duration: Duration) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let path = dir.join(".ferry-fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = [b'x'; 1024];
    let started = Instant::now();
    let mut ops = 0u64;
    while started.elapsed() < duration {
        file.write_all(&block)?;
        file.sync_data()?;
        ops += 1;
    }
    let rate = ops as f64 / started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    println!("{rate:.0} fdatasync/s (1 KiB appends) in {}", dir.display());
    Ok(ExitCode::SUCCESS)
}
