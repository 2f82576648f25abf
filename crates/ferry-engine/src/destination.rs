//! Destinations and the worker that drains each destination's durable queue.
//!
//! A [`Destination`] only knows how to send one message and classify the result. The worker owns
//! the queue discipline: strict message-id order, one message in flight, retries with backoff
//! while the rest of the queue waits (a later ADT must never overtake an earlier one), and the
//! durable record of every outcome. Queue contents are streamed from the store in small batches,
//! so memory stays flat whatever the queue depth.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_store::{DeliveryUpdate, MessageId, Status, Store, StoreError};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{Notify, broadcast};

use crate::ingest::DeliveryOutcome;
use crate::pipeline::{Context, TransformStep};
use tokio_util::sync::CancellationToken;

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
/// How many completion records may be in flight to the store at once.
const MAX_PENDING_UPDATES: usize = 32;

pub(crate) struct Worker {
    pub channel: String,
    pub destination: String,
    pub sender: Arc<dyn Destination>,
    pub retry: RetryPolicy,
    pub store: Store,
    pub wake: Arc<Notify>,
    pub stats: Arc<DestinationStats>,
    pub shutdown: CancellationToken,
    /// Where final outcomes are reported, when the channel relays this destination's
    /// response (after-delivery response mode).
    pub outcomes: Option<broadcast::Sender<Arc<DeliveryOutcome>>>,
    /// Steps run on each final response before it is stored.
    pub response_transform: Vec<Arc<dyn TransformStep>>,
}

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

impl Worker {
    /// Drain the queue until shutdown. Returns an error only when the store fails.
    pub(crate) async fn run(self) -> Result<(), StoreError> {
        let mut cursor: MessageId = 0;
        // Completion records are written without waiting for each fsync before the next send:
        // delivery is at-least-once, so losing a SENT record in a crash only causes a resend.
        let mut pending = FuturesUnordered::new();
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
                // A transformer may have changed MSH-10: ACKs answer what was sent.
                let control_id = ferry_hl7::Message::parse(&queued.payload)
                    .ok()
                    .and_then(|m| m.control_id().map(str::to_owned))
                    .or(queued.control_id);
                let mut outbound = Outbound {
                    channel: self.channel.clone(),
                    message_id,
                    control_id,
                    payload: queued.payload,
                    attempt: queued.attempts,
                };
                let Some(update) = self.deliver(&mut outbound, &mut pending).await? else {
                    // Shut down while retrying: the message stays QUEUED for the next start.
                    break;
                };
                let outcome = self.outcomes.as_ref().map(|tx| {
                    (
                        tx.clone(),
                        Arc::new(DeliveryOutcome {
                            message_id,
                            sent: update.status == Status::Sent,
                            response: update.response.clone(),
                            error: update.error.clone(),
                        }),
                    )
                });
                match outcome {
                    // The waiting source answers once the outcome is durable.
                    Some((tx, outcome)) => {
                        self.store.update_delivery(update).await?;
                        let _ = tx.send(outcome);
                    }
                    None => pending.push(self.store.update_delivery(update)),
                }
                while pending.len() >= MAX_PENDING_UPDATES {
                    if let Some(done) = pending.next().await {
                        done?;
                    }
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
                    error = %e, "response transformer failed; message marked ERROR");
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

    /// Attempt delivery until it succeeds, fails for good, or shutdown is requested
    /// (then `None`). Failed attempts that will be retried are recorded durably on the way.
    async fn deliver<F>(
        &self,
        outbound: &mut Outbound,
        pending: &mut FuturesUnordered<F>,
    ) -> Result<Option<DeliveryUpdate>, StoreError>
    where
        F: Future<Output = Result<(), StoreError>>,
    {
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
                    self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(channel = %self.channel, destination = %self.destination,
                        message_id = outbound.message_id, attempt = outbound.attempt,
                        %reason, "delivery failed; message marked ERROR");
                    return Ok(Some(update(Status::Error, Some(reason), response)));
                }
                SendOutcome::Retry { reason, response } => {
                    if !self.retry.allows_another(outbound.attempt) {
                        self.stats.errored.fetch_add(1, Ordering::Relaxed);
                        self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                        let reason =
                            format!("{reason} (gave up after {} attempts)", outbound.attempt);
                        tracing::warn!(channel = %self.channel, destination = %self.destination,
                            message_id = outbound.message_id, %reason, "delivery failed; message marked ERROR");
                        return Ok(Some(update(Status::Error, Some(reason), response)));
                    }
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    let delay = self.retry.delay(outbound.attempt);
                    tracing::warn!(channel = %self.channel, destination = %self.destination,
                        message_id = outbound.message_id, attempt = outbound.attempt,
                        %reason, retry_in_ms = delay.as_millis() as u64, "delivery failed; will retry");
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
