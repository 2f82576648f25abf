//! `ferry bench receive`: the downstream end of a measurement. An MLLP server that answers
//! every message with a proper `AA` (so Ferry's MLLP destination counts it delivered) and
//! records, per message: its MSH-10, the end-to-end latency (from the send time the load
//! generator stamped into the message), duplicates, and order violations per sender.
//!
//! The same [`Deliveries`] record is the crash harness's delivery log.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use ferry_hl7::Message;
use ferry_hl7::ack::{AckCode, build_ack};
use ferry_mllp::{MllpCodec, encode_frame};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::codec::FramedRead;

use super::{Percentiles, STAMP_SEGMENT, unix_micros};

/// Most end-to-end latencies kept (a sample of a longer run beyond that is not needed for
/// percentiles and keeps memory bounded).
const MAX_LATENCIES: usize = 4_000_000;

/// What the receiver has seen.
#[derive(Debug, Default)]
pub struct DeliveryLog {
    /// Frames received, duplicates included.
    pub frames: u64,
    /// Frames that were not a parseable HL7 message with an MSH-10 (answered `AR`).
    pub unparseable: u64,
    /// Distinct MSH-10s received.
    pub distinct: HashSet<String>,
    /// Frames whose MSH-10 had been received before (at-least-once redelivery).
    pub duplicates: u64,
    /// First deliveries that arrived after a later message of the same sender.
    pub order_violations: u64,
    /// Highest sequence number seen per sender (from `PREFIX-SEQ` control ids).
    last_seq: HashMap<String, u64>,
    /// End-to-end latencies in µs of first deliveries of stamped messages.
    latencies_us: Vec<u64>,
}

impl DeliveryLog {
    fn record(&mut self, control_id: &str, stamp_us: Option<u64>, now_us: u64) {
        self.frames += 1;
        if !self.distinct.insert(control_id.to_owned()) {
            self.duplicates += 1;
            return;
        }
        if let Some((sender, seq)) = split_control_id(control_id) {
            let last = self.last_seq.entry(sender.to_owned()).or_insert(0);
            if seq < *last {
                self.order_violations += 1;
            } else {
                *last = seq;
            }
        }
        if let Some(sent) = stamp_us
            && self.latencies_us.len() < MAX_LATENCIES
        {
            self.latencies_us.push(now_us.saturating_sub(sent));
        }
    }

    /// Percentiles of the end-to-end latencies recorded so far.
    pub fn latency(&self) -> Percentiles {
        let mut sorted: Vec<Duration> = self
            .latencies_us
            .iter()
            .map(|us| Duration::from_micros(*us))
            .collect();
        sorted.sort_unstable();
        Percentiles::of_sorted(&sorted)
    }
}

/// `B3-000042` → (`B3`, 42): the sender and its sequence number.
fn split_control_id(control_id: &str) -> Option<(&str, u64)> {
    let (sender, seq) = control_id.rsplit_once('-')?;
    Some((sender, seq.parse().ok()?))
}

/// The shared, growing delivery log of a running receiver.
pub type Deliveries = Arc<Mutex<DeliveryLog>>;

/// The send time (µs since the Unix epoch) the load generator stamped into `message`.
fn stamp(message: &Message<'_>) -> Option<u64> {
    let segment = message
        .segments()
        .find(|s| s.id() == STAMP_SEGMENT.as_bytes())?;
    std::str::from_utf8(segment.field(1)?).ok()?.parse().ok()
}

/// Bind `listen` and serve until the returned task is aborted.
pub async fn spawn(
    listen: SocketAddr,
) -> std::io::Result<(SocketAddr, Deliveries, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let log: Deliveries = Arc::default();
    let shared = log.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let log = shared.clone();
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
                let mut frames =
                    FramedRead::new(read, MllpCodec::new(ferry_mllp::DEFAULT_MAX_FRAME_BYTES));
                let mut out = BytesMut::new();
                while let Some(Ok(frame)) = frames.next().await {
                    let now = unix_micros();
                    let ack = match Message::parse(&frame) {
                        Ok(message) => match message.control_id() {
                            Some(id) => {
                                if let Ok(mut log) = log.lock() {
                                    log.record(id, stamp(&message), now);
                                }
                                build_ack(&message, AckCode::AA, None, None)
                            }
                            None => {
                                unparseable(&log);
                                build_ack(&message, AckCode::AR, Some("no MSH-10"), None)
                            }
                        },
                        Err(_) => {
                            unparseable(&log);
                            ferry_hl7::ack::build_nak_without_header(
                                AckCode::AR,
                                "unparseable message",
                            )
                        }
                    };
                    out.clear();
                    encode_frame(&ack, &mut out);
                    if write.write_all(&out).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok((addr, log, task))
}

fn unparseable(log: &Deliveries) {
    if let Ok(mut log) = log.lock() {
        log.frames += 1;
        log.unparseable += 1;
    }
}

/// `ferry bench receive`: serve until `expect` distinct messages arrived (or Ctrl-C), then
/// report.
pub async fn run(listen: SocketAddr, expect: u64, json: bool) -> anyhow::Result<()> {
    let (addr, log, task) = spawn(listen).await?;
    println!("ferry bench receive listening on {addr}");
    let mut first: Option<(std::time::Instant, u64)> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let distinct = log.lock().map(|l| l.distinct.len() as u64).unwrap_or(0);
        if first.is_none() && distinct > 0 {
            first = Some((std::time::Instant::now(), distinct));
        }
        if expect > 0 && distinct >= expect {
            break;
        }
    }
    task.abort();
    let log = log
        .lock()
        .map_err(|_| anyhow::anyhow!("delivery log poisoned"))?;
    let received = log.distinct.len() as u64;
    let rate = first.map_or(0.0, |(at, n)| {
        received.saturating_sub(n) as f64 / at.elapsed().as_secs_f64().max(1e-9)
    });
    let latency = log.latency();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "received": received, "frames": log.frames, "duplicates": log.duplicates,
                "order_violations": log.order_violations, "unparseable": log.unparseable,
                "msgs_per_sec": rate, "e2e_p50_ms": latency.p50_ms(), "e2e_p99_ms": latency.p99_ms(),
                "e2e_max_ms": latency.max_ms(),
            })
        );
    } else {
        println!(
            "received {received} distinct message(s) ({} frames, {} duplicate(s), {} out of order, \
             {} unparseable) at {rate:.0} msg/s; end-to-end latency p50 {:.3} ms, p99 {:.3} ms, \
             max {:.3} ms",
            log.frames,
            log.duplicates,
            log.order_violations,
            log.unparseable,
            latency.p50_ms(),
            latency.p99_ms(),
            latency.max_ms()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_order_violations_are_told_apart() {
        let mut log = DeliveryLog::default();
        for id in ["A-1", "A-2", "A-3", "A-2", "B-1", "A-5", "A-4"] {
            log.record(id, Some(100), 300);
        }
        assert_eq!(log.frames, 7);
        assert_eq!(log.distinct.len(), 6);
        assert_eq!(log.duplicates, 1, "A-2 again is a redelivery");
        assert_eq!(log.order_violations, 1, "A-4 first arrived after A-5");
        assert_eq!(log.latency().p50_ms(), 0.2);
    }

    #[test]
    fn control_ids_split_on_the_last_dash() {
        assert_eq!(split_control_id("B-3-000042"), Some(("B-3", 42)));
        assert_eq!(split_control_id("nodash"), None);
        assert_eq!(split_control_id("A-x"), None);
    }
}
