//! Inbound messages: parse, store durably, answer.
//!
//! This is where Ferry's first promise is kept: the positive ACK is built only after the store
//! has committed (fsync'd) the message and its destination queue rows. Anything that cannot be
//! parsed or fails validation is stored as well, with status `ERROR` and the reason, and answered
//! with `AR`, so nothing that arrived is ever lost or invisible. A store failure is answered with
//! `AE` and never with a positive code.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_hl7::ack::{self, AckCode, ErrorDetail};
use ferry_hl7::{Message, MessageBuf};
use ferry_store::{ContentStage, Ingested, MessageId, NewMessage, Status, Store, StoreError};
use serde_json::{Map, Value};
use tokio::sync::{Notify, broadcast};

use crate::phi::Redacted;
use crate::pipeline::{Accepted, DestinationResult, Pipeline, Processed};
use crate::stats::ChannelStats;

/// When a channel's source answers the sender (PRODUCT.md §3.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ResponseMode {
    /// Answer positively once the message is durably stored, whatever the filters and
    /// transformers decided (store and forward). The default.
    #[default]
    OnReceive,
    /// Answer with the outcome of the source filter and transformer: `AE` when a transformer
    /// step failed, and `AR` for a filtered message when `reject_filtered` is set (else `AA`).
    AfterTransform {
        /// Answer a filtered message `AR` instead of `AA`.
        reject_filtered: bool,
    },
    /// Wait until the destination at this index has finished the message and relay its
    /// response (an HL7 ACK as received; otherwise `AA` when sent, `AE` when it failed).
    AfterDelivery {
        /// Index of the destination whose response is relayed.
        destination: usize,
        /// Longest wait; then the answer is `AE` (the message stays stored and queued).
        timeout: Duration,
    },
}

/// Why a stored message could not be reprocessed.
#[derive(Debug, thiserror::Error)]
pub enum ReprocessError {
    /// No such message in the channel.
    #[error("no message {0} in this channel")]
    UnknownMessage(MessageId),
    /// A destination named in `only` is not one of the channel's.
    #[error("the channel has no destination `{0}`")]
    UnknownDestination(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// The final outcome of one message at one destination, as a worker reports it.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryOutcome {
    /// The message.
    pub message_id: MessageId,
    /// Delivered (`SENT`) rather than failed for good (`ERROR`).
    pub sent: bool,
    /// The response received, if any.
    pub response: Option<Vec<u8>>,
    /// Why it failed.
    pub error: Option<String>,
}

/// What one destination does with an accepted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Took {
    /// It is queued.
    Queued,
    /// Its filter refused it.
    Filtered,
    /// Its transformer or encoder failed.
    Failed,
    /// Not chosen for a reprocessed message: no row at all.
    Skipped,
}

/// What processing decided about a stored message.
enum Verdict {
    /// Accepted (or delivered, without a response to relay).
    Accepted,
    /// A source filter refused it.
    Filtered(String),
    /// A step failed, or delivery did not happen in time.
    Failed(String),
    /// The relayed destination finished it.
    Relayed(Arc<DeliveryOutcome>),
}

/// The acknowledgement(s) decided for a message, before it is stored.
struct Answer {
    enhanced: bool,
    code: AckCode,
    ack: Vec<u8>,
    application_ack: Option<Vec<u8>>,
}

impl Answer {
    /// The response stored with the message: the last one the sender gets.
    fn stored(&self) -> &[u8] {
        self.application_ack.as_deref().unwrap_or(&self.ack)
    }

    fn into_reply(self, message: &Message<'_>, id: MessageId) -> IngestReply {
        IngestReply {
            requested: ack_requested(message, self.code),
            ack: self.ack,
            code: self.code,
            message_id: Some(id),
            application_ack: self.application_ack,
        }
    }
}

/// What a source should send back for one received message.
#[derive(Debug, Clone)]
pub struct IngestReply {
    /// The encoded HL7 acknowledgement.
    pub ack: Vec<u8>,
    /// Its MSA-1 code.
    pub code: AckCode,
    /// The stored message id, when the message was stored.
    pub message_id: Option<MessageId>,
    /// False when the sender asked not to receive this acknowledgement (enhanced mode, MSH-15
    /// `NE`, or `ER`/`SU` not matching the outcome). Sources that must always answer (HTTP)
    /// ignore it.
    pub requested: bool,
    /// Enhanced mode: the application acknowledgement (MSH-16) to send after `ack` (the commit
    /// acknowledgement), when the sender asked for it.
    pub application_ack: Option<Vec<u8>>,
}

pub(crate) struct ChannelShared {
    pub name: String,
    pub store: Store,
    pub destinations: Vec<String>,
    pub wakes: Vec<Arc<Notify>>,
    pub stats: Arc<ChannelStats>,
    pub store_failed: Arc<AtomicBool>,
    /// Filters, transformers and encoders.
    pub pipeline: Arc<Pipeline>,
    /// When the sender is answered.
    pub response: ResponseMode,
    /// Per destination (in order), where its worker reports final outcomes, for the
    /// destination whose response is relayed.
    pub outcomes: Vec<Option<broadcast::Sender<Arc<DeliveryOutcome>>>>,
    /// Duplicate detection window (`None`: off); see `dedupe.rs`.
    pub dedupe_window: Option<std::time::Duration>,
    /// What is extracted from each received message for search; see `index.rs`.
    pub index: crate::index::MetadataIndex,
    /// Where scripts' `router.route` messages go.
    pub router: crate::router::WeakRouter,
    /// Open while the channel is started; every receive passes it (see `lifecycle.rs`).
    pub gate: crate::lifecycle::Gate,
}

/// The handle a source uses to submit messages to its channel. Cheap to clone.
#[derive(Clone)]
pub struct ChannelIngest {
    pub(crate) shared: Arc<ChannelShared>,
}

impl std::fmt::Debug for ChannelIngest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelIngest")
            .field("channel", &self.shared.name)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn text(bytes: Option<&str>) -> Option<String> {
    bytes.filter(|s| !s.is_empty()).map(str::to_owned)
}

impl ChannelIngest {
    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.shared.name
    }

    /// Mark the channel's source as listening (or not); `/health` reports 200 only when every
    /// channel is deployed.
    pub fn set_deployed(&self, deployed: bool) {
        self.shared
            .stats
            .deployed
            .store(deployed, Ordering::Relaxed);
    }

    /// Receive one message: process it, store it durably, and return the acknowledgement.
    ///
    /// Never fails: every outcome is expressed as an ACK code. Stored messages are answered as
    /// the channel's [`ResponseMode`] says (`AA`/`CA` once stored by default); `AR`/`CR` when
    /// the input cannot be accepted (stored as `ERROR`); `AE`/`CE` when the store failed
    /// (nothing stored). Destinations whose filters refuse the message get a `FILTERED` row,
    /// those whose transformer fails an `ERROR` row, instead of a place in their queue.
    pub async fn receive(&self, raw: &[u8]) -> IngestReply {
        self.receive_with(raw, Map::new()).await
    }

    /// [`receive`](Self::receive) with facts about the sender (the source map scripts read).
    ///
    /// A channel that is not started (paused, stopped, being stopped) refuses the message:
    /// nothing is stored and the answer is `AE` (`CE` in enhanced mode), so the sender
    /// resends later.
    pub async fn receive_with(&self, raw: &[u8], source_map: Map<String, Value>) -> IngestReply {
        let Some(_inside) = self.shared.gate.enter() else {
            return self.refused(raw);
        };
        self.shared.stats.received.fetch_add(1, Ordering::Relaxed);
        match self.process(raw.to_vec(), source_map).await {
            Ok((raw, processed)) => self.dispatch(raw, processed, None, None).await,
            Err(reply) => reply,
        }
    }

    /// Whether the channel accepts messages now (it is started).
    pub fn accepting(&self) -> bool {
        self.shared.gate.is_open()
    }

    /// The answer to a message that arrived while the channel was not started: `AE`/`CE`
    /// addressed to the sender when its header reads, nothing stored.
    fn refused(&self, raw: &[u8]) -> IngestReply {
        let shared = &self.shared;
        tracing::debug!(channel = %shared.name, "message refused: the channel is not started");
        let text = "channel is not accepting messages (paused or stopped); resend later";
        let (code, ack) = match Message::parse(raw) {
            Ok(message) => {
                let code = if is_enhanced(&message) {
                    AckCode::CE
                } else {
                    AckCode::AE
                };
                let detail = ErrorDetail::internal_error(text);
                (
                    code,
                    ack::build_ack(&message, code, Some(text), Some(&detail)),
                )
            }
            Err(_) => (
                AckCode::AE,
                ack::build_nak_without_header(AckCode::AE, text),
            ),
        };
        IngestReply {
            ack,
            code,
            message_id: None,
            requested: true,
            application_ack: None,
        }
    }

    /// Run a stored message again, from its raw content, through the channel as it is deployed
    /// now. It becomes a new message (the original stays as it was, for audit) whose source map
    /// holds `reprocessed_from` (stored as its `maps` content). `only` limits it to some
    /// destinations: the others get no row for it. Returns the answer the new message got.
    pub async fn reprocess(
        &self,
        original: MessageId,
        only: Option<&[String]>,
    ) -> Result<IngestReply, ReprocessError> {
        let shared = &self.shared;
        if let Some(unknown) = only
            .unwrap_or_default()
            .iter()
            .find(|d| !shared.destinations.contains(d))
        {
            return Err(ReprocessError::UnknownDestination(unknown.clone()));
        }
        let raw = shared
            .store
            .content(
                &shared.name,
                original,
                ferry_store::SOURCE,
                ContentStage::Raw,
            )
            .await?
            .ok_or(ReprocessError::UnknownMessage(original))?;
        let mut source_map = Map::new();
        source_map.insert("reprocessed_from".into(), Value::from(original));
        let maps = serde_json::to_vec(&serde_json::json!({ "source_map": &source_map })).ok();
        tracing::info!(channel = %shared.name, original, "reprocessing a stored message");
        Ok(match self.process(raw, source_map).await {
            Ok((raw, processed)) => self.dispatch(raw, processed, only, maps).await,
            Err(reply) => reply,
        })
    }

    /// Run the pipeline, on the blocking pool when a step may block (scripts).
    async fn process(
        &self,
        raw: Vec<u8>,
        source_map: Map<String, Value>,
    ) -> Result<(Vec<u8>, Processed), IngestReply> {
        let shared = &self.shared;
        if !shared.pipeline.blocks() {
            let processed = shared.pipeline.process(&raw, source_map);
            return Ok((raw, processed));
        }
        // Scripts may run up to their time limit: keep them off the connection's task.
        let pipeline = shared.pipeline.clone();
        let job = tokio::task::spawn_blocking(move || {
            let processed = pipeline.process(&raw, source_map);
            (raw, processed)
        });
        job.await.map_err(|join| {
            tracing::error!(channel = %shared.name, error = %join, "message processing panicked");
            IngestReply {
                ack: ack::build_nak_without_header(AckCode::AE, "internal error; resend later"),
                code: AckCode::AE,
                message_id: None,
                requested: true,
                application_ack: None,
            }
        })
    }

    /// Store what processing decided and answer.
    async fn dispatch(
        &self,
        raw: Vec<u8>,
        processed: Processed,
        only: Option<&[String]>,
        maps: Option<Vec<u8>>,
    ) -> IngestReply {
        let shared = &self.shared;
        match processed {
            Processed::Rejected {
                message,
                detail,
                reason,
            } => {
                let parsed = message.as_ref().map(MessageBuf::message);
                self.reject_parsed(&raw, parsed.as_ref(), detail, reason)
                    .await
            }
            Processed::Filtered { message, rule } => {
                let reason = format!("filtered out by filter {rule}");
                self.store_verdict(&raw, &message.message(), Verdict::Filtered(reason), maps)
                    .await
            }
            Processed::Failed { message, reason } => {
                shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(channel = %shared.name, reason = %Redacted(&reason), "message processing failed; stored as ERROR");
                self.store_verdict(&raw, &message.message(), Verdict::Failed(reason), maps)
                    .await
            }
            Processed::Accepted(accepted) => self.accepted(raw, *accepted, only, maps).await,
        }
    }

    /// Store a message that stops at the source (filtered or failed) and answer it.
    async fn store_verdict(
        &self,
        raw: &[u8],
        message: &Message<'_>,
        verdict: Verdict,
        maps: Option<Vec<u8>>,
    ) -> IngestReply {
        let shared = &self.shared;
        let (status, reason) = match &verdict {
            Verdict::Filtered(r) => (Status::Filtered, r.clone()),
            Verdict::Failed(r) => (Status::Error, r.clone()),
            Verdict::Accepted | Verdict::Relayed(_) => (Status::Transformed, String::new()),
        };
        let answer = self.answer(message, &verdict);
        let record = NewMessage {
            maps,
            ..self.record(raw, Some(message), status, Some(reason), answer.stored())
        };
        match shared.store.ingest(record).await {
            Ok(id) => {
                if status == Status::Filtered {
                    shared.stats.filtered.fetch_add(1, Ordering::Relaxed);
                }
                answer.into_reply(message, id)
            }
            Err(error) => self.store_failure(message, answer.enhanced, &error),
        }
    }

    /// Store an accepted message with its destinations' rows and answer it.
    async fn accepted(
        &self,
        raw: Vec<u8>,
        accepted: Accepted,
        only: Option<&[String]>,
        maps: Option<Vec<u8>>,
    ) -> IngestReply {
        let shared = &self.shared;
        let received = accepted.received;
        let message = received.message();
        let mut queued = Vec::new();
        let mut filtered = Vec::new();
        let mut errored = Vec::new();
        let mut encoded = Vec::new();
        // What each destination does with the message, in the order of `destinations`.
        let mut took = Vec::with_capacity(accepted.destinations.len());
        for (name, result) in shared.destinations.iter().zip(accepted.destinations) {
            if only.is_some_and(|o| !o.contains(name)) {
                took.push(Took::Skipped);
                continue;
            }
            match result {
                DestinationResult::Queued { encoded: bytes } => {
                    took.push(Took::Queued);
                    queued.push(name.clone());
                    if let Some(bytes) = bytes {
                        encoded.push((name.clone(), bytes));
                    }
                }
                DestinationResult::Filtered { .. } => {
                    took.push(Took::Filtered);
                    filtered.push(name.clone());
                }
                DestinationResult::Failed { reason } => {
                    took.push(Took::Failed);
                    tracing::warn!(channel = %shared.name, destination = %name, reason = %Redacted(&reason),
                        "destination processing failed; stored as ERROR");
                    errored.push((name.clone(), reason));
                }
            }
        }
        let taken: Vec<bool> = took.iter().map(|t| *t == Took::Queued).collect();
        let relay = match &shared.response {
            ResponseMode::AfterDelivery { destination, .. } => Some(*destination),
            _ => None,
        };
        // What the relayed destination will do with this message, known before delivery when
        // it does not queue it.
        let relay_now = relay.and_then(|i| match took.get(i) {
            Some(Took::Filtered) => Some(Verdict::Accepted),
            Some(Took::Failed) => errored
                .iter()
                .find(|(n, _)| Some(n) == shared.destinations.get(i))
                .map(|(_, reason)| Verdict::Failed(reason.clone())),
            _ => None,
        });
        let outcomes = relay
            .filter(|_| relay_now.is_none())
            .and_then(|i| shared.outcomes.get(i).and_then(Option::as_ref))
            .map(broadcast::Sender::subscribe);
        let answer = match (&relay_now, &outcomes) {
            (Some(verdict), _) => self.answer(&message, verdict),
            // The answer waits for the delivery; the stored response is replaced then.
            _ => self.answer(&message, &Verdict::Accepted),
        };
        let record = NewMessage {
            destinations: queued,
            filtered_destinations: filtered,
            errored_destinations: errored,
            transformed: accepted.transformed,
            encoded,
            maps,
            // A reprocessed message repeats its original on purpose.
            dedupe: if only.is_none() {
                self.dedupe_key(&message)
            } else {
                None
            },
            ..self.record(
                &raw,
                Some(&message),
                Status::Transformed,
                None,
                answer.stored(),
            )
        };
        let destination_stats = || {
            shared
                .stats
                .destinations
                .iter()
                .zip(&taken)
                .map(|((_, d), takes)| (d, *takes))
        };
        for (d, takes) in destination_stats() {
            if takes {
                d.queue_depth.fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = match shared.store.ingest_checked(record).await {
            Ok(Ingested::Stored(id)) => id,
            Ok(Ingested::Duplicate {
                id,
                original,
                response,
            }) => {
                let fresh = answer.stored().to_vec();
                return self.duplicate(&message, &taken, id, original, response, fresh);
            }
            Err(error) => {
                for (d, takes) in destination_stats() {
                    if takes {
                        d.queue_depth.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                return self.store_failure(&message, answer.enhanced, &error);
            }
        };
        for ((_, d), t) in shared.stats.destinations.iter().zip(&took) {
            match t {
                Took::Filtered => d.filtered.fetch_add(1, Ordering::Relaxed),
                Took::Failed => d.errored.fetch_add(1, Ordering::Relaxed),
                Took::Queued | Took::Skipped => 0,
            };
        }
        for wake in &shared.wakes {
            wake.notify_one();
        }
        self.route(accepted.routed).await;
        match (relay, outcomes) {
            (Some(index), Some(rx)) => {
                let verdict = self.await_delivery(id, index, rx).await;
                let answer = self.answer(&message, &verdict);
                if let Err(error) = shared
                    .store
                    .set_source_response(&shared.name, id, answer.stored().to_vec())
                    .await
                {
                    tracing::warn!(channel = %shared.name, %error, "could not record the relayed response");
                }
                answer.into_reply(&message, id)
            }
            _ => answer.into_reply(&message, id),
        }
    }

    /// Hand messages scripts routed (`router.route`) to their channels, after this message is
    /// stored. Each is stored by its target before this returns; one that cannot be routed is
    /// logged (without its content) and does not change this message's answer.
    async fn route(&self, routed: Vec<(String, Vec<u8>)>) {
        if routed.is_empty() {
            return;
        }
        let shared = &self.shared;
        let Some(router) = shared.router.upgrade() else {
            tracing::warn!(channel = %shared.name, "routed messages dropped: the engine stopped");
            return;
        };
        for (target, message) in routed {
            match Box::pin(router.route(&target, &message)).await {
                Ok(reply) if reply.code.is_positive() => {}
                Ok(reply) => tracing::warn!(channel = %shared.name, %target,
                    code = reply.code.as_str(), "a routed message was not accepted by its channel"),
                Err(error) => tracing::warn!(channel = %shared.name, %target, %error,
                    "a routed message could not be routed"),
            }
        }
    }

    /// Wait for destination `index` to finish message `id` (after-delivery response mode).
    async fn await_delivery(
        &self,
        id: MessageId,
        index: usize,
        mut rx: broadcast::Receiver<Arc<DeliveryOutcome>>,
    ) -> Verdict {
        let shared = &self.shared;
        let timeout = match &shared.response {
            ResponseMode::AfterDelivery { timeout, .. } => *timeout,
            _ => Duration::from_secs(30),
        };
        let name = shared.destinations.get(index).cloned().unwrap_or_default();
        let wait = async {
            loop {
                match rx.recv().await {
                    Ok(outcome) if outcome.message_id == id => return Some(outcome),
                    Ok(_) => {}
                    // Missed events: the store has the outcome (written before it is
                    // broadcast), so read it from there.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return self.poll_delivery(id, &name).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(outcome)) => Verdict::Relayed(outcome),
            Ok(None) => Verdict::Failed(format!(
                "destination `{name}` stopped before delivering; the message stays queued"
            )),
            Err(_) => Verdict::Failed(format!(
                "no response from destination `{name}` within {} ms; the message is stored and stays queued",
                timeout.as_millis()
            )),
        }
    }

    /// Read a delivery outcome from the store, waiting until it is final.
    async fn poll_delivery(
        &self,
        id: MessageId,
        destination: &str,
    ) -> Option<Arc<DeliveryOutcome>> {
        let shared = &self.shared;
        loop {
            let record = shared
                .store
                .connector(&shared.name, id, destination)
                .await
                .ok()?;
            if let Some(record) = record
                && matches!(record.status, Status::Sent | Status::Error)
            {
                let response = shared
                    .store
                    .content(&shared.name, id, destination, ContentStage::Response)
                    .await
                    .ok()
                    .flatten();
                return Some(Arc::new(DeliveryOutcome {
                    message_id: id,
                    sent: record.status == Status::Sent,
                    response,
                    error: record.error,
                }));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The answer to a stored message, as the response mode and MSH-15/16 say.
    fn answer(&self, message: &Message<'_>, verdict: &Verdict) -> Answer {
        let shared = &self.shared;
        let enhanced = is_enhanced(message);
        let (app_code, app_ack) = match verdict {
            Verdict::Accepted => (AckCode::AA, None),
            Verdict::Filtered(reason) => match &shared.response {
                ResponseMode::AfterTransform {
                    reject_filtered: true,
                } => (AckCode::AR, Some(reason.clone())),
                _ => (AckCode::AA, None),
            },
            // The sender learns which step failed, not the step's error text (it may quote the
            // message); the whole text is stored with the message.
            Verdict::Failed(reason) => (AckCode::AE, Some(crate::phi::public(reason))),
            Verdict::Relayed(outcome) => relayed(outcome),
        };
        // Built only when someone hears it (not in original-mode `on-receive`, the hot path).
        let application = || match verdict {
            Verdict::Relayed(outcome) => match (&outcome.response, app_code) {
                // A downstream ACK is relayed as it came.
                (Some(r), _) if ack::parse_ack(r).is_ok() => r.clone(),
                (_, code) => build(message, code, app_ack.as_deref()),
            },
            _ => build(message, app_code, app_ack.as_deref()),
        };
        if enhanced {
            let application_ack = application_ack_requested(message, app_code).then(application);
            return Answer {
                enhanced,
                code: AckCode::CA,
                ack: ack::build_ack(message, AckCode::CA, None, None),
                application_ack,
            };
        }
        // Original mode: `on-receive` answers positively once stored, whatever processing found.
        if matches!(shared.response, ResponseMode::OnReceive) {
            return Answer {
                enhanced,
                code: AckCode::AA,
                ack: ack::build_ack(message, AckCode::AA, None, None),
                application_ack: None,
            };
        }
        Answer {
            enhanced,
            code: app_code,
            ack: application(),
            application_ack: None,
        }
    }

    /// The store record of a message with the source's outcome and its indexed metadata; no
    /// destination rows (the caller adds them for an accepted message).
    fn record(
        &self,
        raw: &[u8],
        message: Option<&Message<'_>>,
        source_status: Status,
        source_error: Option<String>,
        ack: &[u8],
    ) -> NewMessage {
        NewMessage {
            channel: self.shared.name.clone(),
            received_at_ms: now_ms(),
            control_id: text(message.and_then(|m| m.control_id())),
            message_type: text(message.and_then(|m| m.message_type())),
            raw: raw.to_vec(),
            source_status,
            source_error,
            source_response: Some(ack.to_vec()),
            destinations: Vec::new(),
            filtered_destinations: Vec::new(),
            errored_destinations: Vec::new(),
            transformed: None,
            encoded: Vec::new(),
            maps: None,
            dedupe: None,
            metadata: message
                .map(|m| self.shared.index.extract(m))
                .unwrap_or_default(),
        }
    }

    /// Reject input that cannot be received whole (for example an MLLP frame over the size
    /// limit, of which `raw_prefix` is the start): it is stored with status `ERROR` and `reason`,
    /// and the returned ACK is `AR` (addressed to the sender when the prefix holds a readable
    /// MSH segment).
    pub async fn reject(&self, raw_prefix: &[u8], reason: String) -> IngestReply {
        let Some(_inside) = self.shared.gate.enter() else {
            return self.refused(raw_prefix);
        };
        self.shared.stats.received.fetch_add(1, Ordering::Relaxed);
        let message = Message::parse(raw_prefix).ok();
        self.reject_parsed(raw_prefix, message.as_ref(), None, reason)
            .await
    }

    async fn reject_parsed(
        &self,
        raw: &[u8],
        message: Option<&Message<'_>>,
        detail: Option<ErrorDetail>,
        reason: String,
    ) -> IngestReply {
        let shared = &self.shared;
        shared.stats.errored.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(channel = %shared.name, reason = %Redacted(&reason), "inbound message rejected");
        let enhanced = message
            .and_then(|m| m.accept_ack_type())
            .is_some_and(|t| !t.is_empty());
        let code = if enhanced { AckCode::CR } else { AckCode::AR };
        let detail = detail.unwrap_or_else(|| ErrorDetail::segment_sequence(&reason));
        let ack = match message {
            Some(m) => ack::build_ack(m, code, Some(&reason), Some(&detail)),
            None => ack::build_nak_without_header(code, &reason),
        };
        let record = self.record(raw, message, Status::Error, Some(reason), &ack);
        match shared.store.ingest(record).await {
            Ok(id) => IngestReply {
                requested: message.is_none_or(|m| ack_requested(m, code)),
                ack,
                code,
                message_id: Some(id),
                application_ack: None,
            },
            Err(error) => match message {
                Some(m) => self.store_failure(m, enhanced, &error),
                None => {
                    self.note_store_error(&error);
                    IngestReply {
                        ack: ack::build_nak_without_header(
                            AckCode::AE,
                            "message could not be stored; resend later",
                        ),
                        code: AckCode::AE,
                        message_id: None,
                        requested: true,
                        application_ack: None,
                    }
                }
            },
        }
    }

    fn note_store_error(&self, error: &StoreError) {
        tracing::error!(channel = %self.shared.name, %error, "store write failed; answering AE");
        if matches!(error, StoreError::Fatal(_) | StoreError::Closed) {
            self.shared.store_failed.store(true, Ordering::Relaxed);
        }
    }

    fn store_failure(
        &self,
        message: &Message<'_>,
        enhanced: bool,
        error: &StoreError,
    ) -> IngestReply {
        self.note_store_error(error);
        let code = if enhanced { AckCode::CE } else { AckCode::AE };
        let text = "message could not be stored; resend later";
        let ack = ack::build_ack(
            message,
            code,
            Some(text),
            Some(&ErrorDetail::internal_error(text)),
        );
        IngestReply {
            requested: true,
            application_ack: None,
            ack,
            code,
            message_id: None,
        }
    }
}

/// Whether the sender asked for this acknowledgement (HL7 v2 enhanced mode, MSH-15).
pub(crate) fn ack_requested(message: &Message<'_>, code: AckCode) -> bool {
    match message.accept_ack_type() {
        None | Some("") | Some("AL") => true,
        Some("NE") => false,
        Some("ER") => !code.is_positive(),
        Some("SU") => code.is_positive(),
        Some(_) => true,
    }
}

/// Enhanced acknowledgement mode: MSH-15 is present.
fn is_enhanced(message: &Message<'_>) -> bool {
    message.accept_ack_type().is_some_and(|t| !t.is_empty())
}

/// Whether the sender asked for an application acknowledgement with this code (MSH-16).
fn application_ack_requested(message: &Message<'_>, code: AckCode) -> bool {
    match message.application_ack_type() {
        Some("AL") => true,
        Some("ER") => !code.is_positive(),
        Some("SU") => code.is_positive(),
        _ => false,
    }
}

/// An acknowledgement of `message` with `code` and, for errors, the reason.
fn build(message: &Message<'_>, code: AckCode, reason: Option<&str>) -> Vec<u8> {
    match reason {
        Some(text) if !code.is_positive() => {
            let detail = if code == AckCode::AR {
                ErrorDetail::segment_sequence(text)
            } else {
                ErrorDetail::internal_error(text)
            };
            ack::build_ack(message, code, Some(text), Some(&detail))
        }
        _ => ack::build_ack(message, code, None, None),
    }
}

/// The code (and error text) a relayed destination outcome stands for.
fn relayed(outcome: &DeliveryOutcome) -> (AckCode, Option<String>) {
    if let Some(summary) = outcome
        .response
        .as_deref()
        .and_then(|r| ack::parse_ack(r).ok())
    {
        return (summary.code, summary.text.or(summary.error_text));
    }
    if outcome.sent {
        (AckCode::AA, None)
    } else {
        (
            AckCode::AE,
            Some(
                outcome
                    .error
                    .clone()
                    .unwrap_or_else(|| "delivery failed".to_owned()),
            ),
        )
    }
}
