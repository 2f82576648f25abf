//! Message counters per channel and destination, rendered in the Prometheus text format.
//!
//! Counters are plain atomics owned by the engine (no global registry), so several engines can
//! live in one process (as they do in tests) without sharing numbers. Queue depth is a gauge:
//! counted once from the store at deploy, then moved by enqueue and completion.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::lifecycle::ChannelState;

/// Counters of one destination of a channel.
#[derive(Debug, Default)]
pub struct DestinationStats {
    /// Messages delivered (terminal status `SENT`).
    pub sent: AtomicU64,
    /// Messages that ended in status `ERROR` at this destination.
    pub errored: AtomicU64,
    /// Failed delivery attempts that will be retried.
    pub retries: AtomicU64,
    /// Messages waiting in this destination's durable queue.
    pub queue_depth: AtomicI64,
    /// Messages this destination's filter refused (status `FILTERED` at this destination).
    pub filtered: AtomicU64,
    /// The reason of the most recent failed delivery attempt (the same text the worker logs at
    /// WARN: a connection or protocol error, never message content). Read by alert rules that
    /// match error text.
    pub last_error: Mutex<Option<String>>,
}

impl DestinationStats {
    /// Remember `reason` as the most recent delivery error.
    pub fn record_error(&self, reason: &str) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(reason.to_owned());
        }
    }

    /// The most recent delivery error, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }
}

/// Counters of one channel.
#[derive(Debug)]
pub struct ChannelStats {
    /// Channel name.
    pub name: String,
    /// Whether the channel's source is up and accepting: set by the source's owner once it
    /// listens, cleared when the channel is paused, stopped or shut down. `/health` wants it
    /// on every channel whose [`state`](Self::state) is `started`; the no-inbound alert is
    /// quiet while it is off.
    pub deployed: AtomicBool,
    /// The lifecycle state ([`ChannelState`]), moved by the engine only.
    state: AtomicU8,
    /// Messages received by the source (accepted or rejected).
    pub received: AtomicU64,
    /// Messages removed by a source filter (status `FILTERED`).
    pub filtered: AtomicU64,
    /// Messages rejected at the source (unparseable or invalid: status `ERROR`, answered `AR`).
    pub errored: AtomicU64,
    /// Messages a source filter script, preprocessor or transformer step failed on (stored with
    /// status `ERROR` and the step's error).
    pub failed: AtomicU64,
    /// Duplicates (same MSH-3, MSH-4, MSH-10 within the channel's dedupe window): answered with
    /// the original ACK, stored `FILTERED`, dispatched nowhere.
    pub duplicates: AtomicU64,
    /// Messages whose content retention pruning deleted (the message kept).
    pub pruned_content: AtomicU64,
    /// Messages retention pruning deleted entirely.
    pub pruned_messages: AtomicU64,
    /// Destination counters, in configuration order.
    pub destinations: Vec<(String, Arc<DestinationStats>)>,
}

impl ChannelStats {
    /// Counters for a channel with the given destination names.
    pub fn new(name: &str, destinations: &[String]) -> ChannelStats {
        ChannelStats {
            name: name.to_owned(),
            deployed: AtomicBool::new(false),
            state: AtomicU8::new(ChannelState::Stopped as u8),
            received: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            errored: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            pruned_content: AtomicU64::new(0),
            pruned_messages: AtomicU64::new(0),
            destinations: destinations
                .iter()
                .map(|d| (d.clone(), Arc::new(DestinationStats::default())))
                .collect(),
        }
    }

    /// The counters of one destination.
    pub fn destination(&self, name: &str) -> Option<&Arc<DestinationStats>> {
        self.destinations
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
    }

    /// The channel's lifecycle state.
    pub fn state(&self) -> ChannelState {
        ChannelState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn set_state(&self, state: ChannelState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Counters for a redeployed channel: the channel's counts carry on from `previous`, and
    /// a destination that keeps its name keeps its counters (its queue depth is counted again
    /// by the engine).
    pub(crate) fn succeeding(previous: &ChannelStats, destinations: &[String]) -> ChannelStats {
        let carry = |a: &AtomicU64| AtomicU64::new(a.load(Ordering::Relaxed));
        ChannelStats {
            name: previous.name.clone(),
            deployed: AtomicBool::new(false),
            state: AtomicU8::new(ChannelState::Stopped as u8),
            received: carry(&previous.received),
            filtered: carry(&previous.filtered),
            errored: carry(&previous.errored),
            failed: carry(&previous.failed),
            duplicates: carry(&previous.duplicates),
            pruned_content: carry(&previous.pruned_content),
            pruned_messages: carry(&previous.pruned_messages),
            destinations: destinations
                .iter()
                .map(|d| {
                    let kept = previous.destination(d).cloned();
                    (d.clone(), kept.unwrap_or_default())
                })
                .collect(),
        }
    }
}

/// All counters of an engine. Channels come and go as they are deployed and undeployed.
#[derive(Debug, Default)]
pub struct Stats {
    channels: RwLock<Vec<Arc<ChannelStats>>>,
    audit_dropped: std::sync::OnceLock<Arc<AtomicU64>>,
    certificates: crate::certs::Certificates,
    leases: std::sync::OnceLock<crate::cluster::LeaseGauge>,
}

impl Stats {
    /// Counters of these channels (the engine builds its own; alert rule tests build samples).
    pub fn new(channels: Vec<Arc<ChannelStats>>) -> Stats {
        Stats {
            channels: RwLock::new(channels),
            audit_dropped: std::sync::OnceLock::new(),
            certificates: Default::default(),
            leases: std::sync::OnceLock::new(),
        }
    }

    /// The certificates the node loaded (`ferry_tls_certificate_expiry_days`).
    pub fn certificates(&self) -> &crate::certs::Certificates {
        &self.certificates
    }

    /// Export `counter` (audit events dropped because the audit buffer was full) as
    /// `ferry_audit_events_dropped_total`. The first counter attached wins.
    pub fn attach_audit_dropped(&self, counter: Arc<AtomicU64>) {
        let _ = self.audit_dropped.set(counter);
    }

    /// Export this node's leases as `ferry_cluster_lease_held`. The first gauge attached wins.
    pub fn attach_leases(&self, leases: crate::cluster::LeaseGauge) {
        let _ = self.leases.set(leases);
    }

    /// Counters of every deployed channel, in configuration order (a channel deployed later
    /// comes last).
    pub fn channels(&self) -> Vec<Arc<ChannelStats>> {
        match self.channels.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Counters of one deployed channel.
    pub fn channel(&self, name: &str) -> Option<Arc<ChannelStats>> {
        self.channels().into_iter().find(|c| c.name == name)
    }

    /// Add a channel's counters, or replace those of the channel of the same name in place.
    pub(crate) fn put(&self, stats: Arc<ChannelStats>) {
        let mut channels = match self.channels.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        match channels.iter_mut().find(|c| c.name == stats.name) {
            Some(slot) => *slot = stats,
            None => channels.push(stats),
        }
    }

    /// Forget an undeployed channel's counters.
    pub(crate) fn remove(&self, name: &str) {
        let mut channels = match self.channels.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        channels.retain(|c| c.name != name);
    }

    /// The Prometheus text exposition (format 0.0.4) of every counter.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::with_capacity(1024);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let channels = self.channels();
        family(
            &mut out,
            "ferry_channel_deployed",
            "gauge",
            "1 when the channel is deployed and its source is accepting messages.",
        );
        for c in &channels {
            let v = u64::from(c.deployed.load(Ordering::Relaxed));
            sample(
                &mut out,
                "ferry_channel_deployed",
                &[("channel", &c.name)],
                v as i64,
            );
        }
        family(
            &mut out,
            "ferry_channel_state",
            "gauge",
            "1 for the channel's lifecycle state (started, paused, stopped), 0 for the others.",
        );
        for c in &channels {
            let now = c.state();
            for state in ChannelState::ALL {
                sample(
                    &mut out,
                    "ferry_channel_state",
                    &[("channel", &c.name), ("state", state.as_str())],
                    i64::from(state == now),
                );
            }
        }
        for (metric, help, get) in [
            (
                "ferry_messages_received_total",
                "Messages received by the channel's source.",
                (|c: &ChannelStats| &c.received) as fn(&ChannelStats) -> &AtomicU64,
            ),
            (
                "ferry_messages_filtered_total",
                "Messages removed by the channel's source filter.",
                |c| &c.filtered,
            ),
            (
                "ferry_messages_rejected_total",
                "Messages rejected at the source (stored with status ERROR, answered AR).",
                |c| &c.errored,
            ),
            (
                "ferry_messages_failed_total",
                "Messages a source filter script or transformer step failed on (stored with status ERROR).",
                |c| &c.failed,
            ),
            (
                "ferry_messages_duplicate_total",
                "Duplicates answered with the original ACK and not dispatched again.",
                |c| &c.duplicates,
            ),
            (
                "ferry_pruned_content_total",
                "Messages whose content retention pruning deleted (metadata kept).",
                |c| &c.pruned_content,
            ),
            (
                "ferry_pruned_messages_total",
                "Messages retention pruning deleted entirely.",
                |c| &c.pruned_messages,
            ),
        ] {
            family(&mut out, metric, "counter", help);
            for c in &channels {
                sample(
                    &mut out,
                    metric,
                    &[("channel", &c.name)],
                    load(get(c)) as i64,
                );
            }
        }
        for (metric, kind, help, get) in [
            (
                "ferry_messages_sent_total",
                "counter",
                "Messages delivered by a destination.",
                (|d: &DestinationStats| d.sent.load(Ordering::Relaxed) as i64)
                    as fn(&DestinationStats) -> i64,
            ),
            (
                "ferry_messages_errored_total",
                "counter",
                "Messages that ended in status ERROR at a destination.",
                |d| d.errored.load(Ordering::Relaxed) as i64,
            ),
            (
                "ferry_delivery_retries_total",
                "counter",
                "Failed delivery attempts that are retried.",
                |d| d.retries.load(Ordering::Relaxed) as i64,
            ),
            (
                "ferry_destination_filtered_total",
                "counter",
                "Messages a destination's filter refused (status FILTERED at that destination).",
                |d| d.filtered.load(Ordering::Relaxed) as i64,
            ),
            (
                "ferry_queue_depth",
                "gauge",
                "Messages waiting in a destination's durable queue.",
                |d| d.queue_depth.load(Ordering::Relaxed).max(0),
            ),
        ] {
            family(&mut out, metric, kind, help);
            for c in &channels {
                for (name, d) in &c.destinations {
                    sample(
                        &mut out,
                        metric,
                        &[("channel", &c.name), ("destination", name)],
                        get(d),
                    );
                }
            }
        }
        if let Some(dropped) = self.audit_dropped.get() {
            family(
                &mut out,
                "ferry_audit_events_dropped_total",
                "counter",
                "Audit events lost because the audit buffer was full (each loss is also logged).",
            );
            let _ = writeln!(
                out,
                "ferry_audit_events_dropped_total {}",
                dropped.load(Ordering::Relaxed)
            );
        }
        if let Some(leases) = self.leases.get() {
            family(
                &mut out,
                "ferry_cluster_lease_held",
                "gauge",
                "1 while this node holds the lease of the resource (a destination queue, dest:, \
                 or a polling source, poll:) and works it, 0 while another node does.",
            );
            for (resource, held) in leases.snapshot() {
                sample(
                    &mut out,
                    "ferry_cluster_lease_held",
                    &[("resource", &resource)],
                    i64::from(held),
                );
            }
        }
        self.certificates.render(&mut out, crate::certs::unix_now());
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub(crate) fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: i64) {
    out.push_str(name);
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"");
        for ch in v.chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    let _ = writeln!(out, "}} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_escaped_labels() {
        let c = Arc::new(ChannelStats::new("adt\"x", &["api".to_owned()]));
        c.received.fetch_add(3, Ordering::Relaxed);
        c.duplicates.fetch_add(2, Ordering::Relaxed);
        if let Some(d) = c.destination("api") {
            d.queue_depth.store(7, Ordering::Relaxed);
        }
        let text = Stats::new(vec![c]).render_prometheus();
        assert!(text.contains("ferry_messages_received_total{channel=\"adt\\\"x\"} 3\n"));
        assert!(text.contains("ferry_messages_duplicate_total{channel=\"adt\\\"x\"} 2\n"));
        assert!(text.contains("ferry_queue_depth{channel=\"adt\\\"x\",destination=\"api\"} 7\n"));
        assert!(text.contains("# TYPE ferry_messages_sent_total counter\n"));
        assert!(text.contains("ferry_channel_state{channel=\"adt\\\"x\",state=\"stopped\"} 1\n"));
        assert!(text.contains("ferry_channel_state{channel=\"adt\\\"x\",state=\"started\"} 0\n"));
    }
}
