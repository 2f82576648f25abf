//! Message search: criteria → one bounded walk over a channel's messages, newest first.
//!
//! A search is a *walk* in descending message id over candidate rows, taken from the most
//! selective index the criteria allow:
//!
//! 1. an indexed-metadata criterion (`message_metadata`, primary key `(channel, key, value,
//!    message_id)`): only that patient's (or visit's…) messages are candidates;
//! 2. else MSH-10 (`messages_control_id`, `(channel, control_id, id)`);
//! 3. else status `QUEUED` at a named connector (the partial queue index);
//! 4. else every message of the channel (the primary key).
//!
//! Every other criterion is evaluated per candidate: in SQL (time, type, status, more metadata:
//! point lookups on primary keys) and, for the full-text criterion, in Rust over the raw
//! content, decrypted when the store encrypts (`crypto::open`). The raw column is read only
//! for candidates the SQL criteria already matched.
//!
//! **Bounded.** A walk stops after `limit` matches or `max_examined` candidates, whichever is
//! first, and reports how many it examined and where to continue (`next_before_id`): a text
//! search over a million messages is a series of short requests, never one long one, and no
//! request holds more than one page in memory. `None` means the walk reached the end of the
//! window.
//!
//! **Encrypted stores** hold no plaintext metadata value: `value` is a keyed blind index
//! (HMAC-SHA256, see [`Keyring::blind_index`]), so exact-match search computes the same
//! token from the searched value, under every key of the keyring (rows written under an old
//! key until rotation reaches them), plus the value itself for rows written before encryption
//! was enabled.

use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params, params_from_iter};

use crate::StoreError;
use crate::crypto::{self, Keyring, Place};
use crate::model::{ContentStage, MessageId, SOURCE, Status};

/// Most matches one search returns.
pub const MAX_SEARCH_LIMIT: usize = 1000;
/// Most candidate rows one search examines.
pub const MAX_SEARCH_EXAMINED: usize = 100_000;

/// What to look for in one channel's messages. Every criterion that is set must hold.
#[derive(Debug, Clone, Default)]
pub struct MessageQuery {
    /// Channel name.
    pub channel: String,
    /// A connector status, e.g. `ERROR`: at [`connector`](Self::connector) when set, else at
    /// any connector (the source or a destination).
    pub status: Option<Status>,
    /// Restrict [`status`](Self::status) to this connector (`source` or a destination name).
    pub connector: Option<String>,
    /// Received at or after this time, Unix milliseconds.
    pub received_since_ms: Option<i64>,
    /// Received before this time, Unix milliseconds.
    pub received_until_ms: Option<i64>,
    /// MSH-10, exactly.
    pub control_id: Option<String>,
    /// MSH-9: equal to this text, or starting with it followed by `^` (`ADT^A01` matches
    /// `ADT^A01^ADT_A01`; `ADT` matches every ADT).
    pub message_type: Option<String>,
    /// Indexed metadata, `(key, value)`: each must have been extracted with exactly this
    /// value at ingest (see the channel's `index`).
    pub metadata: Vec<(String, String)>,
    /// Bytes the raw message must contain (case-sensitive substring).
    pub text: Option<Vec<u8>>,
    /// Only messages with an id below this (the cursor to older messages).
    pub before_id: Option<MessageId>,
    /// Only messages with an id above this.
    pub after_id: Option<MessageId>,
    /// Most matches to return (1 to [`MAX_SEARCH_LIMIT`]).
    pub limit: usize,
    /// Most candidates to examine (1 to [`MAX_SEARCH_EXAMINED`]).
    pub max_examined: usize,
    /// Return each match's raw content (export) rather than only its summary.
    pub with_raw: bool,
}

/// The status of one connector of a found message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorStatus {
    /// Connector name (`source` first, then destinations by name).
    pub connector: String,
    /// Its status.
    pub status: Status,
}

/// One message a search found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundMessage {
    /// Message id.
    pub id: MessageId,
    /// Receive time, Unix milliseconds.
    pub received_at_ms: i64,
    /// MSH-10.
    pub control_id: Option<String>,
    /// MSH-9.
    pub message_type: Option<String>,
    /// Status per connector.
    pub connectors: Vec<ConnectorStatus>,
    /// The message's content was deleted by retention pruning (its metadata and statuses
    /// are kept; `raw` is then `None`).
    pub content_pruned: bool,
    /// The raw message, decrypted, when [`MessageQuery::with_raw`] asked for it.
    pub raw: Option<Vec<u8>>,
}

/// One page of a search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessagePage {
    /// Matches, newest first.
    pub messages: Vec<FoundMessage>,
    /// Candidate rows examined by this request.
    pub examined: u64,
    /// Where to continue (pass as [`MessageQuery::before_id`] with the same criteria): set
    /// when the walk stopped at the limit or at the examined bound; `None` when it reached the
    /// end, so there is nothing more to find.
    pub next_before_id: Option<MessageId>,
}

/// The positional arguments of a search's SQL.
struct Sql {
    args: Vec<Value>,
}

impl Sql {
    /// Add an argument; returns its placeholder.
    fn arg(&mut self, value: impl Into<Value>) -> String {
        self.args.push(value.into());
        format!("?{}", self.args.len())
    }

    /// `IN (…)` placeholders for these stored forms of a metadata value.
    fn values_in(&mut self, forms: Vec<Vec<u8>>) -> String {
        let list: Vec<String> = forms.into_iter().map(|f| self.arg(f)).collect();
        format!("({})", list.join(", "))
    }
}

/// The forms a metadata value may be stored in: as is (a plaintext store, or rows written
/// before encryption was enabled) and its blind index under every key of the ring.
fn stored_forms(keyring: Option<&Keyring>, key: &str, value: &str) -> Vec<Vec<u8>> {
    let mut forms = vec![value.as_bytes().to_vec()];
    if let Some(ring) = keyring {
        forms.extend(ring.blind_indexes(key, value).iter().map(|t| t.to_vec()));
    }
    forms
}

/// Where candidates come from.
enum Driver {
    Metadata,
    ControlId,
    Queued,
    Scan,
}

/// Run a search on a read connection.
pub(crate) fn search(
    conn: &rusqlite::Connection,
    keyring: Option<&Keyring>,
    query: &MessageQuery,
) -> Result<MessagePage, StoreError> {
    let channel_id: Option<i64> = conn
        .prepare_cached("SELECT id FROM channels WHERE name = ?1")
        .and_then(|mut s| s.query_row([&query.channel], |r| r.get(0)).optional())
        .map_err(StoreError::sqlite("resolving a channel"))?;
    let Some(channel_id) = channel_id else {
        return Ok(MessagePage::default());
    };
    let limit = query.limit.clamp(1, MAX_SEARCH_LIMIT);
    let max_examined = query.max_examined.clamp(1, MAX_SEARCH_EXAMINED);
    let queued_at = match (&query.status, &query.connector) {
        (Some(Status::Queued), Some(c)) => Some(c.as_str()),
        _ => None,
    };
    let driver = if !query.metadata.is_empty() {
        Driver::Metadata
    } else if query.control_id.is_some() {
        Driver::ControlId
    } else if queued_at.is_some() {
        Driver::Queued
    } else {
        Driver::Scan
    };
    let mut sql = Sql { args: Vec::new() };
    let c = sql.arg(channel_id);
    let before = sql.arg(query.before_id.unwrap_or(MessageId::MAX));
    let after = sql.arg(query.after_id.unwrap_or(MessageId::MIN));
    // The candidate walk, and the criteria it already implies.
    // `CROSS JOIN` keeps the candidate walk as the outer loop: without table statistics
    // SQLite may otherwise walk every message of the channel and probe the index for each.
    let (from, id) = match driver {
        Driver::Metadata => {
            let (key, value) = &query.metadata[0];
            // Of the forms the value may be stored in, usually one exists (under encryption:
            // the current key's token). Walking one form streams in id order; walking several
            // (during a key rotation) needs SQLite to sort that value's rows first.
            let mut present = Vec::new();
            for form in stored_forms(keyring, key, value) {
                if has_value(conn, channel_id, key, &form)? {
                    present.push(form);
                }
            }
            if present.is_empty() {
                return Ok(MessagePage::default());
            }
            let k = sql.arg(key.clone());
            let values = sql.values_in(present);
            (
                format!(
                    "message_metadata x CROSS JOIN messages m ON m.channel = x.channel AND m.id = x.message_id \
                     WHERE x.channel = {c} AND x.key = {k} AND x.value IN {values} \
                       AND x.message_id < {before} AND x.message_id > {after}"
                ),
                "x.message_id",
            )
        }
        Driver::ControlId => {
            let v = sql.arg(query.control_id.clone().unwrap_or_default());
            (
                format!(
                    "messages m INDEXED BY messages_control_id \
                     WHERE m.channel = {c} AND m.control_id = {v} AND m.id < {before} AND m.id > {after}"
                ),
                "m.id",
            )
        }
        Driver::Queued => {
            let n = sql.arg(queued_at.unwrap_or_default().to_owned());
            (
                format!(
                    "connector_messages q INDEXED BY connector_messages_queued \
                     CROSS JOIN messages m ON m.channel = q.channel AND m.id = q.message_id \
                     WHERE q.channel = {c} AND q.connector = {n} AND q.status = 'QUEUED' \
                       AND q.message_id < {before} AND q.message_id > {after}"
                ),
                "q.message_id",
            )
        }
        Driver::Scan => (
            format!("messages m WHERE m.channel = {c} AND m.id < {before} AND m.id > {after}"),
            "m.id",
        ),
    };
    let mut matches: Vec<String> = Vec::new();
    if let Some(since) = query.received_since_ms {
        matches.push(format!("m.received_at_ms >= {}", sql.arg(since)));
    }
    if let Some(until) = query.received_until_ms {
        matches.push(format!("m.received_at_ms < {}", sql.arg(until)));
    }
    if let (Some(control_id), false) = (&query.control_id, matches!(driver, Driver::ControlId)) {
        matches.push(format!("m.control_id = {}", sql.arg(control_id.clone())));
    }
    if let Some(t) = &query.message_type {
        let exact = sql.arg(t.clone());
        let prefix = format!("{t}^");
        let n = sql.arg(prefix.chars().count() as i64);
        let p = sql.arg(prefix);
        matches.push(format!(
            "(m.message_type = {exact} OR substr(m.message_type, 1, {n}) = {p})"
        ));
    }
    if let (Some(status), None) = (query.status, queued_at) {
        let s = sql.arg(status.as_str().to_owned());
        let at = match &query.connector {
            Some(name) => format!(" AND s.connector = {}", sql.arg(name.clone())),
            None => String::new(),
        };
        matches.push(format!(
            "EXISTS (SELECT 1 FROM connector_messages s \
             WHERE s.channel = m.channel AND s.message_id = m.id AND s.status = {s}{at})"
        ));
    }
    let skip = usize::from(matches!(driver, Driver::Metadata));
    for (key, value) in query.metadata.iter().skip(skip) {
        let k = sql.arg(key.clone());
        let values = sql.values_in(stored_forms(keyring, key, value));
        matches.push(format!(
            "EXISTS (SELECT 1 FROM message_metadata y WHERE y.channel = m.channel \
             AND y.key = {k} AND y.value IN {values} AND y.message_id = m.id)"
        ));
    }
    // A criterion on a NULL column (no MSH-9) is NULL, not false: the CASEs below read it as
    // no match.
    let hit = if matches.is_empty() {
        "1".to_owned()
    } else {
        matches.join(" AND ")
    };
    let raw = if query.text.is_some() || query.with_raw {
        format!("CASE WHEN {hit} AND m.content_pruned_at_ms IS NULL THEN m.raw END")
    } else {
        "NULL".to_owned()
    };
    let text = format!(
        "SELECT m.id, m.received_at_ms, m.control_id, m.message_type, \
         CASE WHEN {hit} THEN 1 ELSE 0 END, {raw}, m.content_pruned_at_ms IS NOT NULL \
         FROM {from} ORDER BY {id} DESC"
    );
    let finder = query.text.as_deref().map(memchr::memmem::Finder::new);
    let mut stmt = conn
        .prepare_cached(&text)
        .map_err(StoreError::sqlite("preparing a message search"))?;
    let mut rows = stmt
        .query(params_from_iter(sql.args.iter()))
        .map_err(StoreError::sqlite("searching messages"))?;
    let mut page = MessagePage::default();
    let mut last = None;
    let mut exhausted = true;
    while let Some(row) = rows
        .next()
        .map_err(StoreError::sqlite("reading a search row"))?
    {
        let read = |e| StoreError::Sqlite {
            context: "reading a search row",
            source: e,
        };
        let id: MessageId = row.get(0).map_err(read)?;
        page.examined += 1;
        last = Some(id);
        let matched: bool = row.get(4).map_err(read)?;
        if matched {
            let raw = match row.get::<_, Option<Vec<u8>>>(5).map_err(read)? {
                Some(blob) => {
                    let place = Place {
                        channel: &query.channel,
                        message_id: id,
                        connector: SOURCE,
                        stage: ContentStage::Raw.as_str(),
                    };
                    Some(zeroize::Zeroizing::new(crypto::open(
                        keyring, &place, blob,
                    )?))
                }
                None => None,
            };
            let text_ok = match (&finder, &raw) {
                (Some(f), Some(raw)) => f.find(raw).is_some(),
                (Some(_), None) => false,
                (None, _) => true,
            };
            if text_ok {
                page.messages.push(FoundMessage {
                    id,
                    received_at_ms: row.get(1).map_err(read)?,
                    control_id: row.get(2).map_err(read)?,
                    message_type: row.get(3).map_err(read)?,
                    connectors: connectors(conn, channel_id, id)?,
                    content_pruned: row.get(6).map_err(read)?,
                    raw: if query.with_raw {
                        raw.map(|r| r.to_vec())
                    } else {
                        None
                    },
                });
            }
        }
        if page.messages.len() >= limit || page.examined >= max_examined as u64 {
            exhausted = false;
            break;
        }
    }
    page.next_before_id = if exhausted { None } else { last };
    Ok(page)
}

/// Whether any message of the channel has this stored form of a metadata value.
fn has_value(
    conn: &rusqlite::Connection,
    channel: i64,
    key: &str,
    form: &[u8],
) -> Result<bool, StoreError> {
    conn.prepare_cached(
        "SELECT 1 FROM message_metadata WHERE channel = ?1 AND key = ?2 AND value = ?3 LIMIT 1",
    )
    .and_then(|mut s| s.exists(params![channel, key, form]))
    .map_err(StoreError::sqlite("probing indexed metadata"))
}

/// The status of every connector of a message, the source first.
fn connectors(
    conn: &rusqlite::Connection,
    channel: i64,
    id: MessageId,
) -> Result<Vec<ConnectorStatus>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT connector, status FROM connector_messages \
             WHERE channel = ?1 AND message_id = ?2 ORDER BY connector <> ?3, connector",
        )
        .map_err(StoreError::sqlite("preparing a connector status read"))?;
    let rows = stmt
        .query_map(params![channel, id, SOURCE], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(StoreError::sqlite("reading connector statuses"))?;
    let mut out = Vec::new();
    for row in rows {
        let (connector, status) = row.map_err(StoreError::sqlite("reading a connector status"))?;
        out.push(ConnectorStatus {
            connector,
            status: status.parse().map_err(StoreError::Corrupt)?,
        });
    }
    Ok(out)
}
