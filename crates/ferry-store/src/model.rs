//! The values the store reads and writes.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Channel-local message id: assigned by the store, monotonically increasing per channel.
pub type MessageId = i64;

/// Connector name of a channel's source; destinations use their configured names.
pub const SOURCE: &str = "source";

/// Processing status of a message at one connector (PRODUCT.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Received by the source, not processed yet.
    Received,
    /// Removed by a filter.
    Filtered,
    /// Passed the source filters and transformers.
    Transformed,
    /// Waiting in a destination queue (including while retrying).
    Queued,
    /// Delivered.
    Sent,
    /// Failed for good, or rejected at the source.
    Error,
    /// A response is being processed.
    Pending,
}

impl Status {
    /// The stored form, e.g. `"QUEUED"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Received => "RECEIVED",
            Status::Filtered => "FILTERED",
            Status::Transformed => "TRANSFORMED",
            Status::Queued => "QUEUED",
            Status::Sent => "SENT",
            Status::Error => "ERROR",
            Status::Pending => "PENDING",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Status, String> {
        Ok(match s {
            "RECEIVED" => Status::Received,
            "FILTERED" => Status::Filtered,
            "TRANSFORMED" => Status::Transformed,
            "QUEUED" => Status::Queued,
            "SENT" => Status::Sent,
            "ERROR" => Status::Error,
            "PENDING" => Status::Pending,
            other => return Err(format!("unknown status `{other}`")),
        })
    }
}

/// A stage of content kept per connector (PRODUCT.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentStage {
    /// As received.
    Raw,
    /// After transformers.
    Transformed,
    /// As sent by a destination.
    Encoded,
    /// The response (an ACK, an HTTP body).
    Response,
    /// Error text.
    Error,
    /// Channel and connector maps.
    Maps,
}

impl ContentStage {
    /// The stored form, e.g. `"raw"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentStage::Raw => "raw",
            ContentStage::Transformed => "transformed",
            ContentStage::Encoded => "encoded",
            ContentStage::Response => "response",
            ContentStage::Error => "error",
            ContentStage::Maps => "maps",
        }
    }
}

/// A message to store at ingest.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Channel name.
    pub channel: String,
    /// Receive time, Unix milliseconds.
    pub received_at_ms: i64,
    /// MSH-10, when readable.
    pub control_id: Option<String>,
    /// MSH-9, when readable.
    pub message_type: Option<String>,
    /// The bytes as received.
    pub raw: Vec<u8>,
    /// The source connector's status (`TRANSFORMED` when accepted, `ERROR` when rejected).
    pub source_status: Status,
    /// Why the source rejected it.
    pub source_error: Option<String>,
    /// The response sent back (the ACK).
    pub source_response: Option<Vec<u8>>,
    /// Destinations that get a `QUEUED` row.
    pub destinations: Vec<String>,
    /// Destinations whose filter refused the message: a `FILTERED` row each, never queued.
    pub filtered_destinations: Vec<String>,
    /// Destinations whose transformer or encoder failed: an `ERROR` row each with the reason,
    /// never queued.
    pub errored_destinations: Vec<(String, String)>,
    /// The message after the source's preprocessor and transformers, when they changed it
    /// (stored as the source's `transformed` content; queues send it unless a destination has
    /// its own encoded content).
    pub transformed: Option<Vec<u8>>,
    /// Per queued destination, the bytes it is to send when they differ from `transformed`
    /// (its transformers or encoder changed them): stored as that destination's `encoded`
    /// content.
    pub encoded: Vec<(String, Vec<u8>)>,
    /// The message's maps as JSON (for example `{"source_map": {"reprocessed_from": 12}}`),
    /// stored as the source's `maps` content when present.
    pub maps: Option<Vec<u8>>,
    /// Duplicate detection: when set, the store checks inside its write transaction (so
    /// concurrent ingests of one key cannot both pass) whether a message with the same key was
    /// stored on this channel at or after `since_ms`. See [`Ingested::Duplicate`].
    pub dedupe: Option<DedupeKey>,
    /// The channel's indexed metadata values of this message (its MRN…), stored in the same
    /// transaction for exact-match search.
    pub metadata: Metadata,
}

/// Indexed metadata of one message: `(key, value)` pairs, the values in one buffer so that
/// collecting them costs two allocations per message whatever their number, and the key names
/// shared with the channel's index.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Every value, one after the other.
    values: String,
    /// Per entry, its key and where its value ends in `values`.
    entries: Vec<(Arc<str>, usize)>,
}

impl Metadata {
    /// Empty, with room for `entries` values of `bytes` bytes in all.
    pub fn with_capacity(entries: usize, bytes: usize) -> Metadata {
        Metadata {
            values: String::with_capacity(bytes),
            entries: Vec::with_capacity(entries),
        }
    }

    /// Add `value` under `key`.
    pub fn push(&mut self, key: Arc<str>, value: &str) {
        self.values.push_str(value);
        self.entries.push((key, self.values.len()));
    }

    /// The `(key, value)` pairs, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut start = 0;
        self.entries.iter().map(move |(key, end)| {
            let value = self.values.get(start..*end).unwrap_or_default();
            start = *end;
            (&**key, value)
        })
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<K: Into<Arc<str>>, V: AsRef<str>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Metadata {
        let mut metadata = Metadata::default();
        for (key, value) in pairs {
            metadata.push(key.into(), value.as_ref());
        }
        metadata
    }
}

/// The keys only: values are PHI (an MRN) and stay out of logs.
impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(k, _)| k))
            .finish()
    }
}

/// The duplicate-detection key of a message (PRODUCT.md §3.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupeKey {
    /// The identity of the message, e.g. MSH-3, MSH-4 and MSH-10 joined unambiguously.
    pub key: String,
    /// Start of the window, Unix milliseconds: only messages received at or after it count.
    pub since_ms: i64,
}

/// What [`Store::ingest_checked`](crate::Store::ingest_checked) did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Stored as given; the message's new id.
    Stored(MessageId),
    /// A message with the same [`DedupeKey`] was stored within the window. This one is stored
    /// too (nothing that arrived is invisible), but as a duplicate: source status `FILTERED`
    /// with error `duplicate of message N`, no destination rows (it is dispatched nowhere), no
    /// dedupe key of its own (the window stays anchored on the original), and the original's
    /// response as its own (that is what the sender gets back).
    Duplicate {
        /// The duplicate's own id.
        id: MessageId,
        /// The id of the original message.
        original: MessageId,
        /// The response stored with the original (its ACK).
        response: Option<Vec<u8>>,
    },
}

impl Ingested {
    /// The id the message was stored under (the duplicate's own id for a duplicate).
    pub fn id(&self) -> MessageId {
        match self {
            Ingested::Stored(id) | Ingested::Duplicate { id, .. } => *id,
        }
    }
}

/// The outcome of a delivery attempt.
#[derive(Debug, Clone)]
pub struct DeliveryUpdate {
    /// Channel name.
    pub channel: String,
    /// Message id.
    pub message_id: MessageId,
    /// Destination name.
    pub destination: String,
    /// `SENT`, `ERROR`, or `QUEUED` (failed, will retry).
    pub status: Status,
    /// Attempts so far.
    pub attempts: u32,
    /// Last error.
    pub error: Option<String>,
    /// Response received.
    pub response: Option<Vec<u8>>,
    /// The bytes sent, when they differ from the source content.
    pub encoded: Option<Vec<u8>>,
}

/// A message waiting in a destination queue.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Message id.
    pub message_id: MessageId,
    /// Attempts so far.
    pub attempts: u32,
    /// Receive time, Unix milliseconds.
    pub received_at_ms: i64,
    /// MSH-10.
    pub control_id: Option<String>,
    /// What to send: the destination's encoded content, else the source's transformed content,
    /// else the raw message.
    pub payload: Vec<u8>,
}

/// Status of one connector of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorRecord {
    /// Status.
    pub status: Status,
    /// Attempts so far.
    pub attempts: u32,
    /// Last error.
    pub error: Option<String>,
    /// Last change, Unix milliseconds.
    pub updated_at_ms: i64,
}

/// How many messages of a channel are in a status at a connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCount {
    /// Connector name.
    pub connector: String,
    /// Status.
    pub status: Status,
    /// Count.
    pub count: u64,
}

/// One line of a message listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSummary {
    /// Message id.
    pub id: MessageId,
    /// Receive time, Unix milliseconds.
    pub received_at_ms: i64,
    /// MSH-10.
    pub control_id: Option<String>,
    /// MSH-9.
    pub message_type: Option<String>,
}

/// The original of a duplicate found by dedupe: its id and its stored source response, opened.
pub(crate) type Original = (MessageId, Option<Vec<u8>>);

/// Open the response of a duplicate's original: it is sealed for the original's row, and the
/// duplicate stores it again, sealed for its own.
pub(crate) fn open_original(
    keyring: Option<&crate::crypto::Keyring>,
    channel: &str,
    original: Option<Original>,
) -> Result<Option<Original>, crate::StoreError> {
    Ok(match original {
        Some((oid, Some(sealed))) => {
            let place = crate::crypto::Place {
                channel,
                message_id: oid,
                connector: SOURCE,
                stage: ContentStage::Response.as_str(),
            };
            Some((oid, Some(crate::crypto::open(keyring, &place, sealed)?)))
        }
        other => other,
    })
}

/// What a new message's source row holds: its dedupe key, response, status and error. A
/// duplicate is stored without a key of its own, answered with the original's response, and
/// dispatched nowhere.
pub(crate) fn source_outcome<'a>(
    m: &'a NewMessage,
    original: Option<&'a Original>,
) -> (Option<&'a str>, Option<&'a Vec<u8>>, Status, Option<String>) {
    match original {
        Some((original, response)) => (
            None,
            response.as_ref(),
            Status::Filtered,
            Some(format!("duplicate of message {original}")),
        ),
        None => (
            m.dedupe.as_ref().map(|d| d.key.as_str()),
            m.source_response.as_ref(),
            m.source_status,
            m.source_error.clone(),
        ),
    }
}
