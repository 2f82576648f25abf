//! Inbound messages: parse, store durably, answer.
//!
//! This is where Ferry's first promise is kept: the positive ACK is built only after the store
//! has committed (fsync'd) the message and its destination queue rows. Anything that cannot be
//! parsed or fails validation is stored as well, with status `ERROR` and the reason, and answered
//! with `AR`, so nothing that arrived is ever lost or invisible. A store failure is answered with
//! `AE` and never with a positive code.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_hl7::Message;
use ferry_hl7::ack::{self, AckCode, ErrorDetail};
use ferry_store::{Ingested, MessageId, NewMessage, Status, Store, StoreError};
use tokio::sync::Notify;

use crate::stats::ChannelStats;

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
}

pub(crate) struct ChannelShared {
    pub name: String,
    pub store: Store,
    pub destinations: Vec<String>,
    pub wakes: Vec<Arc<Notify>>,
    pub stats: Arc<ChannelStats>,
    pub store_failed: Arc<AtomicBool>,
    pub filters: Vec<crate::FilterRule>,
    /// Each destination's filters, in the order of `destinations`.
    pub destination_filters: Vec<Vec<crate::FilterRule>>,
    /// Duplicate detection window (`None`: off); see `dedupe.rs`.
    pub dedupe_window: Option<std::time::Duration>,
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

/// Why a parsed message is refused before it is dispatched.
fn validate(message: &Message<'_>) -> Result<(), (ErrorDetail, String)> {
    if message.message_type().is_none_or(str::is_empty) {
        return Err((
            ErrorDetail::required_field_missing("MSH", 9),
            "MSH-9 (message type) is required".to_owned(),
        ));
    }
    if message.control_id().is_none_or(str::is_empty) {
        return Err((
            ErrorDetail::required_field_missing("MSH", 10),
            "MSH-10 (message control id) is required".to_owned(),
        ));
    }
    Ok(())
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

    /// Receive one message: store it durably and return the acknowledgement to send back.
    ///
    /// Never fails: every outcome is expressed as an ACK code (`AA`/`CA` stored, also when a
    /// source filter refused it and it is stored as `FILTERED`; `AR`/`CR` rejected and stored
    /// as `ERROR`; `AE`/`CE` not stored because the store failed). Destinations whose filters
    /// refuse the message get a `FILTERED` row instead of a place in their queue.
    pub async fn receive(&self, raw: &[u8]) -> IngestReply {
        let shared = &self.shared;
        shared.stats.received.fetch_add(1, Ordering::Relaxed);
        let message = match Message::parse(raw) {
            Ok(message) => message,
            Err(error) => {
                let reason = format!("message rejected: {error}");
                return self.reject_parsed(raw, None, None, reason).await;
            }
        };
        if let Err((detail, reason)) = validate(&message) {
            return self
                .reject_parsed(raw, Some(&message), Some(detail), reason)
                .await;
        }
        let enhanced = message.accept_ack_type().is_some_and(|t| !t.is_empty());
        let code = if enhanced { AckCode::CA } else { AckCode::AA };
        let ack = ack::build_ack(&message, code, None, None);
        if let Some(rule) = crate::filter::first_failing(&shared.filters, &message) {
            return self.filtered(raw, &message, rule, code, ack).await;
        }
        // Each destination's own filters decide whether it gets the message.
        let mut taken = Vec::with_capacity(shared.destinations.len());
        let (mut queued, mut filtered) = (Vec::new(), Vec::new());
        for (i, name) in shared.destinations.iter().enumerate() {
            let rules = shared
                .destination_filters
                .get(i)
                .map_or(&[][..], Vec::as_slice);
            let takes = crate::filter::first_failing(rules, &message).is_none();
            taken.push(takes);
            if takes {
                queued.push(name.clone());
            } else {
                filtered.push(name.clone());
            }
        }
        let record = NewMessage {
            destinations: queued,
            filtered_destinations: filtered,
            dedupe: self.dedupe_key(&message),
            ..self.record(raw, Some(&message), Status::Transformed, None, &ack)
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
        match shared.store.ingest_checked(record).await {
            Ok(Ingested::Duplicate {
                id,
                original,
                response,
            }) => self.duplicate(&message, &taken, id, original, response, ack),
            Ok(Ingested::Stored(id)) => {
                for (d, takes) in destination_stats() {
                    if !takes {
                        d.filtered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                for wake in &shared.wakes {
                    wake.notify_one();
                }
                IngestReply {
                    requested: ack_requested(&message, code),
                    ack,
                    code,
                    message_id: Some(id),
                }
            }
            Err(error) => {
                for (d, takes) in destination_stats() {
                    if takes {
                        d.queue_depth.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                self.store_failure(&message, enhanced, &error)
            }
        }
    }

    /// The store record of a message with the source's outcome; no destination rows (the
    /// caller adds them for an accepted message).
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
            dedupe: None,
        }
    }

    /// Store a message a source filter refused (status `FILTERED`, no destination) and answer
    /// it positively: the sender did nothing wrong.
    async fn filtered(
        &self,
        raw: &[u8],
        message: &Message<'_>,
        rule: usize,
        code: AckCode,
        ack: Vec<u8>,
    ) -> IngestReply {
        let shared = &self.shared;
        let reason = format!("filtered out by filter {rule}");
        let record = self.record(raw, Some(message), Status::Filtered, Some(reason), &ack);
        match shared.store.ingest(record).await {
            Ok(id) => {
                shared.stats.filtered.fetch_add(1, Ordering::Relaxed);
                IngestReply {
                    requested: ack_requested(message, code),
                    ack,
                    code,
                    message_id: Some(id),
                }
            }
            Err(error) => self.store_failure(message, code == AckCode::CA, &error),
        }
    }

    /// Reject input that cannot be received whole (for example an MLLP frame over the size
    /// limit, of which `raw_prefix` is the start): it is stored with status `ERROR` and `reason`,
    /// and the returned ACK is `AR` (addressed to the sender when the prefix holds a readable
    /// MSH segment).
    pub async fn reject(&self, raw_prefix: &[u8], reason: String) -> IngestReply {
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
        tracing::warn!(channel = %shared.name, %reason, "inbound message rejected");
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
