//! Destinations and the worker that drains each destination's durable queue.
//!
//! A [`Destination`] only knows how to send one message and classify the result. The worker owns
//! the queue discipline: strict message-id order, one message in flight, retries with backoff
//! while the rest of the queue waits (a later ADT must never overtake an earlier one), and the
//! durable record of every outcome. Queue contents are streamed from the store in small batches,
//! so memory stays flat whatever the queue depth.
//!
//! With `workers > 1` the order is kept per key instead (see [`Worker::run_keyed`]): the
//! destination's `order_by` path (PID-3.1 by default) is read from each queued payload, its
//! value hashed to one of `workers` lanes, and each lane delivers one message at a time in
//! message-id order. Messages of one key therefore never overtake each other, different keys
//! are delivered concurrently, and a message being retried holds up only its own lane.

use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_hl7::{Message, Path};
use ferry_store::{DeliveryUpdate, MessageId, QueuedMessage, Status, Store, StoreError};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ingest::DeliveryOutcome;
use crate::phi::{Delivery, Redacted};
use crate::pipeline::{Context, TransformStep};
use crate::retry::RetryPolicy;
use crate::stats::DestinationStats;

/// A message handed to a destination.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Channel the message belongs to.
    pub channel: String,
    /// Channel-local message id.
    pub message_id: MessageId,
    /// MSH-10 of the message, when it has one (used to correlate ACKs).
    pub control_id: Option<String>,
    /// The bytes to send (the encoded message).
    pub payload: Vec<u8>,
    /// 1-based number of this attempt.
    pub attempt: u32,
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Delivered and, where the protocol has one, positively acknowledged.
    Sent {
        /// The response body (an ACK, an HTTP body), stored as the `response` content.
        response: Option<Vec<u8>>,
    },
    /// Not delivered, for a reason that may pass (peer down, timeout, 5xx, 429): retry later.
    Retry {
        /// Why, for the log and the stored error.
        reason: String,
        /// The response, if one was received.
        response: Option<Vec<u8>>,
    },
    /// Not delivered and retrying would not help (HTTP 4xx, a rejecting ACK): status `ERROR`.
    Failed {
        /// Why, for the log and the stored error.
        reason: String,
        /// The response, if one was received.
        response: Option<Vec<u8>>,
    },
}

/// The boxed future returned by [`Destination::send`].
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = SendOutcome> + Send + 'a>>;

/// A connector that can deliver a message somewhere (MLLP, HTTPS, …).
///
/// Implementations hold their own connection state (a kept-alive MLLP socket, an HTTP client).
/// They are called by exactly one worker, one message at a time.
pub trait Destination: Send + Sync + 'static {
    /// Attempt one delivery. Must not panic and must bound its own time (connect and response
    /// timeouts), returning [`SendOutcome::Retry`] when a timeout expires.
    fn send<'a>(&'a self, message: &'a Outbound) -> SendFuture<'a>;
}

/// How many queue rows a worker reads from the store at a time.
const QUEUE_BATCH: usize = 64;
/// How many completion records may be in flight to the store at once (per lane).
const MAX_PENDING_UPDATES: usize = 32;
/// Messages handed to one lane and not yet taken by it. The reader never waits on a full
/// lane: it passes over that lane's messages (they stay `QUEUED`) and comes back for them once
/// the lane has drained to half of this.
const LANE_CAPACITY: usize = 16;

/// One destination's worker; the engine keeps one as a template per destination and runs a
/// clone of it (with a fresh stop token) each time the channel starts.
#[derive(Clone)]
pub(crate) struct Worker {
    pub channel: String,
    pub destination: String,
    pub sender: Arc<dyn Destination>,
    pub retry: RetryPolicy,
    pub store: Store,
    pub wake: Arc<Notify>,
    pub stats: Arc<DestinationStats>,
    pub shutdown: CancellationToken,
    /// Lanes: 1 delivers the whole queue in order; more keep order per `order_by` key.
    pub workers: usize,
    /// The key of a message's lane (`None`: every message goes to lane 0).
    pub order_by: Option<Path>,
    /// Where final outcomes are reported, when the channel relays this destination's
    /// response (after-delivery response mode).
    pub outcomes: Option<broadcast::Sender<Arc<DeliveryOutcome>>>,
    /// Steps run on each final response before it is stored.
    pub response_transform: Vec<Arc<dyn TransformStep>>,
}

/// Completion records written but not yet confirmed durable.
type Pending<'a> =
    FuturesUnordered<Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>>;

fn rebuild(sent: bool, reason: Option<String>, response: Vec<u8>) -> SendOutcome {
    match (sent, reason) {
        (true, _) => SendOutcome::Sent {
            response: Some(response),
        },
        (false, reason) => SendOutcome::Failed {
            reason: reason.unwrap_or_default(),
            response: Some(response),
        },
    }
}

/// The reader's view of one lane of a keyed destination.
struct Lane {
    tx: mpsc::Sender<QueuedMessage>,
    /// Highest message id handed to the lane: every earlier message of its keys was handed too.
    dispatched: MessageId,
    /// The first message of the lane the reader passed over because the lane was full; later
    /// messages of the lane wait behind it until the reader scans again from there.
    pending_from: Option<MessageId>,
}

impl Lane {
    fn has_room(&self) -> bool {
        self.tx.capacity() >= LANE_CAPACITY / 2
    }
}

impl Worker {
    /// Drain the queue until shutdown. Returns an error only when the store fails.
    pub(crate) async fn run(self) -> Result<(), StoreError> {
        if self.workers > 1 {
            return self.run_keyed().await;
        }
        self.run_in_order().await
    }

    /// One message in flight for the whole destination, in message-id order.
    async fn run_in_order(self) -> Result<(), StoreError> {
        let mut cursor: MessageId = 0;
        // Completion records are written without waiting for each fsync before the next send:
        // delivery is at-least-once, so losing a SENT record in a crash only causes a resend.
        let mut pending = Pending::new();
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let batch = self
                .store
                .queue_batch(&self.channel, &self.destination, cursor, QUEUE_BATCH)
                .await?;
            if batch.is_empty() {
                while let Some(done) = pending.next().await {
                    done?;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = self.shutdown.cancelled() => break,
                    // A safety net only: every enqueue in this process notifies.
                    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                }
                continue;
            }
            for queued in batch {
                let message_id = queued.message_id;
                if !self.deliver_one(queued, &mut pending).await? {
                    // Shut down while retrying: the message stays QUEUED for the next start.
                    break;
                }
                cursor = message_id;
            }
        }
        while let Some(done) = pending.next().await {
            done?;
        }
        Ok(())
    }

    /// Run the response transformer on a final outcome's HL7 response. The stored (and relayed)
    /// response is the transformed one; a failing step makes a sent message `ERROR` with the
    /// step named, keeping the response as received. Responses that are not HL7 pass as they are.
    async fn transform_response(&self, outcome: SendOutcome) -> SendOutcome {
        if self.response_transform.is_empty() {
            return outcome;
        }
        let (sent, reason, response) = match outcome {
            SendOutcome::Sent { response: Some(r) } => (true, None, r),
            SendOutcome::Failed {
                reason,
                response: Some(r),
            } => (false, Some(reason), r),
            other => return other,
        };
        let Ok(message) = ferry_hl7::MessageBuf::parse(response.clone()) else {
            return rebuild(sent, reason, response);
        };
        let steps = self.response_transform.clone();
        let mut context = Context {
            message,
            channel: self.channel.clone(),
            channel_map: serde_json::Map::new(),
            source_map: serde_json::Map::new(),
            routed: Vec::new(),
        };
        let run = move || -> (Result<(), String>, Context) {
            for (i, step) in steps.iter().enumerate() {
                if let Err(e) = step.apply(&mut context) {
                    return (Err(format!("response transform {}: {e}", i + 1)), context);
                }
            }
            (Ok(()), context)
        };
        let blocks = self.response_transform.iter().any(|s| s.blocks());
        let result = if blocks {
            tokio::task::spawn_blocking(run)
                .await
                .map_err(|e| format!("response transform panicked: {e}"))
        } else {
            Ok(run())
        };
        match result {
            Ok((Ok(()), context)) => rebuild(sent, reason, context.message.into_bytes()),
            Ok((Err(e), _)) | Err(e) => {
                tracing::warn!(channel = %self.channel, destination = %self.destination,
                    error = %Redacted(&e.to_string()), "response transformer failed; message marked ERROR");
                SendOutcome::Failed {
                    reason: match reason {
                        Some(r) => format!("{r}; {e}"),
                        None => e,
                    },
                    response: Some(response),
                }
            }
        }
    }

    /// Deliver one queued message and queue its completion record, keeping at most
    /// `MAX_PENDING_UPDATES` records in flight. False when shutdown interrupted it (the message
    /// stays `QUEUED`).
    async fn deliver_one<'a>(
        &'a self,
        queued: QueuedMessage,
        pending: &mut Pending<'a>,
    ) -> Result<bool, StoreError> {
        let mut outbound = self.outbound(queued);
        let Some(update) = self.deliver(&mut outbound, pending).await? else {
            return Ok(false);
        };
        if let Some(update) = self.finish(update).await? {
            pending.push(Box::pin(self.store.update_delivery(update)));
        }
        while pending.len() >= MAX_PENDING_UPDATES {
            if let Some(done) = pending.next().await {
                done?;
            }
        }
        Ok(true)
    }

    /// The message handed to the connector. A transformer may have changed MSH-10, so ACKs
    /// are checked against the MSH-10 of the payload when it is HL7.
    fn outbound(&self, queued: QueuedMessage) -> Outbound {
        let control_id = Message::parse(&queued.payload)
            .ok()
            .and_then(|m| m.control_id().map(str::to_owned))
            .or(queued.control_id);
        Outbound {
            channel: self.channel.clone(),
            message_id: queued.message_id,
            control_id,
            payload: queued.payload,
            attempt: queued.attempts,
        }
    }

    /// Record a final outcome. When a source waits for it (after-delivery), it is written
    /// durably first and then announced, and `None` is returned; otherwise the update is
    /// returned to join the other pending records.
    async fn finish(&self, update: DeliveryUpdate) -> Result<Option<DeliveryUpdate>, StoreError> {
        let Some(tx) = &self.outcomes else {
            return Ok(Some(update));
        };
        let outcome = Arc::new(DeliveryOutcome {
            message_id: update.message_id,
            sent: update.status == Status::Sent,
            response: update.response.clone(),
            error: update.error.clone(),
        });
        self.store.update_delivery(update).await?;
        let _ = tx.send(outcome);
        Ok(None)
    }

    /// Attempt delivery until it succeeds, fails for good, or shutdown is requested
    /// (then `None`). Failed attempts that will be retried are recorded durably on the way.
    async fn deliver(
        &self,
        outbound: &mut Outbound,
        pending: &mut Pending<'_>,
    ) -> Result<Option<DeliveryUpdate>, StoreError> {
        loop {
            if self.shutdown.is_cancelled() {
                return Ok(None);
            }
            outbound.attempt = outbound.attempt.saturating_add(1);
            let outcome = tokio::select! {
                outcome = self.sender.send(outbound) => outcome,
                _ = self.shutdown.cancelled() => return Ok(None),
            };
            let outcome = self.transform_response(outcome).await;
            let update =
                |status: Status, error: Option<String>, response: Option<Vec<u8>>| DeliveryUpdate {
                    channel: self.channel.clone(),
                    message_id: outbound.message_id,
                    destination: self.destination.clone(),
                    status,
                    attempts: outbound.attempt,
                    error,
                    response,
                    encoded: None,
                };
            match outcome {
                SendOutcome::Sent { response } => {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                    tracing::debug!(channel = %self.channel, destination = %self.destination,
                        message_id = outbound.message_id, attempt = outbound.attempt, "sent");
                    return Ok(Some(update(Status::Sent, None, response)));
                }
                SendOutcome::Failed { reason, response } => {
                    self.stats.errored.fetch_add(1, Ordering::Relaxed);
                    self.stats.record_error(&reason);
                    self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(channel = %self.channel, destination = %self.destination,
                        message_id = outbound.message_id, attempt = outbound.attempt,
                        reason = %Delivery(&reason), "delivery failed; message marked ERROR");
                    return Ok(Some(update(Status::Error, Some(reason), response)));
                }
                SendOutcome::Retry { reason, response } => {
                    self.stats.record_error(&reason);
                    if !self.retry.allows_another(outbound.attempt) {
                        self.stats.errored.fetch_add(1, Ordering::Relaxed);
                        self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                        let reason =
                            format!("{reason} (gave up after {} attempts)", outbound.attempt);
                        tracing::warn!(channel = %self.channel, destination = %self.destination,
                            message_id = outbound.message_id, reason = %Delivery(&reason), "delivery failed; message marked ERROR");
                        return Ok(Some(update(Status::Error, Some(reason), response)));
                    }
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    let delay = self.retry.delay(outbound.attempt);
                    tracing::warn!(channel = %self.channel, destination = %self.destination,
                        message_id = outbound.message_id, attempt = outbound.attempt,
                        reason = %Delivery(&reason), retry_in_ms = delay.as_millis() as u64, "delivery failed; will retry");
                    // Flush earlier completions first so the store never shows a later message
                    // SENT while an earlier completion is still unwritten for long.
                    while let Some(done) = pending.next().await {
                        done?;
                    }
                    self.store
                        .update_delivery(update(Status::Queued, Some(reason), response))
                        .await?;
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => return Ok(None),
                    }
                }
            }
        }
    }
}

impl Worker {
    /// The lane of a queued payload: the hash of its `order_by` value. A payload that does not
    /// parse, or has no value there, goes to lane 0 (shared with the keys that hash to it).
    fn lane_of(&self, payload: &[u8]) -> usize {
        let lanes = self.workers.max(1);
        let Ok(message) = Message::parse(payload) else {
            return 0;
        };
        let Some(path) = &self.order_by else {
            return 0;
        };
        let Some(raw) = message.get_path(path).filter(|v| !v.is_empty()) else {
            return 0;
        };
        let mut hasher = DefaultHasher::new();
        message.text(raw).hash(&mut hasher);
        (hasher.finish() % lanes as u64) as usize
    }

    /// `workers` lanes fed by one reader. The reader streams the queue in id order, 64 rows at
    /// a time, and hands each message to its lane's bounded channel without waiting: when a
    /// lane is full, that lane's messages are passed over (they stay `QUEUED` in the store,
    /// not in memory) and the reader scans again from the first of them once the lane has room.
    /// So memory is bounded by `workers × 16` messages, and a lane stuck retrying never stops
    /// the others. Each lane records its own completions (at most 32 in flight per lane).
    async fn run_keyed(mut self) -> Result<(), StoreError> {
        // A lane that fails stops its siblings, not the engine's other workers.
        let stop = self.shutdown.child_token();
        self.shutdown = stop.clone();
        let worker = Arc::new(self);
        let room = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        let mut lanes = Vec::with_capacity(worker.workers);
        for _ in 0..worker.workers {
            let (tx, rx) = mpsc::channel(LANE_CAPACITY);
            tasks.spawn(worker.clone().lane(rx, room.clone()));
            lanes.push(Lane {
                tx,
                dispatched: 0,
                pending_from: None,
            });
        }
        let read = worker.read_lanes(&mut lanes, &mut tasks, &room).await;
        stop.cancel();
        drop(lanes);
        let mut result = read;
        while let Some(joined) = tasks.join_next().await {
            let lane = joined.unwrap_or_else(|e| Err(StoreError::Corrupt(format!("lane: {e}"))));
            if result.is_ok() {
                result = lane;
            }
        }
        result
    }

    /// The reader of [`run_keyed`](Self::run_keyed); returns when shutdown is requested, a
    /// lane stopped (its error is collected by the caller), or the store failed.
    async fn read_lanes(
        &self,
        lanes: &mut [Lane],
        tasks: &mut JoinSet<Result<(), StoreError>>,
        room: &Notify,
    ) -> Result<(), StoreError> {
        // Highest message id the reader has looked at.
        let mut frontier: MessageId = 0;
        loop {
            if self.shutdown.is_cancelled() {
                return Ok(());
            }
            // Scan from the first passed-over message of a lane that has room again, else
            // from the frontier.
            let start = lanes
                .iter()
                .filter(|l| l.has_room())
                .filter_map(|l| l.pending_from)
                .map(|p| p - 1)
                .fold(frontier, MessageId::min);
            // A lane whose first waiting message lies before the scan must not get later ones.
            let mut blocked: Vec<bool> = lanes
                .iter()
                .map(|l| l.pending_from.is_some_and(|p| p <= start))
                .collect();
            let mut after = start;
            'scan: while !blocked.iter().all(|b| *b) {
                let batch = self
                    .store
                    .queue_batch(&self.channel, &self.destination, after, QUEUE_BATCH)
                    .await?;
                if batch.is_empty() {
                    break;
                }
                for queued in batch {
                    let id = queued.message_id;
                    after = id;
                    frontier = frontier.max(id);
                    let i = self.lane_of(&queued.payload);
                    let (Some(lane), Some(lane_blocked)) = (lanes.get_mut(i), blocked.get_mut(i))
                    else {
                        continue;
                    };
                    if id <= lane.dispatched || *lane_blocked {
                        continue;
                    }
                    match lane.tx.try_send(queued) {
                        Ok(()) => {
                            lane.dispatched = id;
                            lane.pending_from = None;
                        }
                        Err(TrySendError::Full(_)) => {
                            lane.pending_from = Some(id);
                            *lane_blocked = true;
                        }
                        // The lane stopped (shutdown or a store failure).
                        Err(TrySendError::Closed(_)) => break 'scan,
                    }
                }
            }
            let waiting = lanes.iter().any(|l| l.pending_from.is_some());
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = room.notified(), if waiting => {}
                _ = self.shutdown.cancelled() => return Ok(()),
                // A lane only ends early when the store failed: stop reading.
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    // Ok means shutdown; an error is returned here, the caller stops the rest.
                    return joined
                        .unwrap_or_else(|e| Err(StoreError::Corrupt(format!("lane: {e}"))));
                }
                // A safety net only: every enqueue in this process notifies.
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            }
        }
    }

    /// One lane: deliver what the reader hands over, one message at a time, in order.
    async fn lane(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<QueuedMessage>,
        room: Arc<Notify>,
    ) -> Result<(), StoreError> {
        let mut pending = Pending::new();
        loop {
            if rx.is_empty() {
                // Idle: let this lane's completion records reach the store.
                while let Some(done) = pending.next().await {
                    done?;
                }
            }
            let queued = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => None,
                queued = rx.recv() => queued,
            };
            let Some(queued) = queued else {
                break;
            };
            if rx.len() <= LANE_CAPACITY / 2 {
                room.notify_one();
            }
            if !self.deliver_one(queued, &mut pending).await? {
                break;
            }
        }
        while let Some(done) = pending.next().await {
            done?;
        }
        Ok(())
    }
}
