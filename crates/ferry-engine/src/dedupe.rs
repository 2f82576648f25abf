//! Duplicate detection (PRODUCT.md §3.7): an inbound message whose (MSH-3, MSH-4, MSH-10) was
//! already accepted on the channel within its dedupe window is answered with the original ACK
//! and dispatched nowhere.
//!
//! The check itself is the store's: the key travels in [`NewMessage::dedupe`] and the single
//! writer looks it up inside the transaction that inserts the message, so concurrent
//! connections sending the same message cannot both be dispatched. Only accepted messages carry
//! a key: a rejected (`AR`) or source-filtered message does not, so a corrected resend of a
//! rejected message goes through.
//!
//! [`NewMessage::dedupe`]: ferry_store::NewMessage::dedupe

use std::sync::atomic::Ordering;

use ferry_hl7::Message;
use ferry_hl7::ack::{self, AckCode};
use ferry_store::{DedupeKey, MessageId};

use crate::ingest::{ChannelIngest, IngestReply, ack_requested, now_ms};

/// The key of a message: MSH-3, MSH-4 and MSH-10 as received (raw, all components), each
/// prefixed with its length so no choice of separators can make two keys collide.
pub(crate) fn key(message: &Message<'_>) -> String {
    let mut key = String::new();
    for path in ["MSH-3", "MSH-4", "MSH-10"] {
        let raw = message.get(path).ok().flatten().unwrap_or_default();
        let text = String::from_utf8_lossy(raw);
        key.push_str(&format!("{}:{text};", text.len()));
    }
    key
}

impl ChannelIngest {
    /// The dedupe key of an accepted message, when the channel detects duplicates.
    pub(crate) fn dedupe_key(&self, message: &Message<'_>) -> Option<DedupeKey> {
        let window = self.shared.dedupe_window?;
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        Some(DedupeKey {
            key: key(message),
            since_ms: now_ms().saturating_sub(window_ms),
        })
    }

    /// Answer a message the store recognised as a duplicate of `original`: with the original's
    /// stored ACK (byte for byte), or a fresh one when none was stored. `taken` says which
    /// destinations had been counted as queueing it; the duplicate queues nowhere.
    pub(crate) fn duplicate(
        &self,
        message: &Message<'_>,
        taken: &[bool],
        id: MessageId,
        original: MessageId,
        response: Option<Vec<u8>>,
        fresh_ack: Vec<u8>,
    ) -> IngestReply {
        let shared = &self.shared;
        for ((_, d), takes) in shared.stats.destinations.iter().zip(taken) {
            if *takes {
                d.queue_depth.fetch_sub(1, Ordering::Relaxed);
            }
        }
        shared.stats.duplicates.fetch_add(1, Ordering::Relaxed);
        tracing::info!(channel = %shared.name, message_id = id, original,
            "duplicate message answered with the original acknowledgement");
        let ack = response.unwrap_or(fresh_ack);
        let code = ack::parse_ack(&ack).map_or(AckCode::AA, |a| a.code);
        IngestReply {
            requested: ack_requested(message, code),
            ack,
            code,
            message_id: Some(id),
            application_ack: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_separates_fields_unambiguously_and_ignores_other_fields() {
        let parse = |s: &'static str| Message::parse(s.as_bytes()).expect("parse");
        let a = parse("MSH|^~\\&|HIS|GH|X|Y|2026||ADT^A01|M1|P|2.5\r");
        let b = parse("MSH|^~\\&|HIS|GH|Z|Z|2027||ADT^A08|M1|P|2.5\r");
        let c = parse("MSH|^~\\&|HIS|OTHER|X|Y|2026||ADT^A01|M1|P|2.5\r");
        let d = parse("MSH|^~\\&|HI|SGH|X|Y|2026||ADT^A01|M1|P|2.5\r");
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        assert_ne!(key(&a), key(&d));
    }
}
