//! The group-committing writer thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use std::borrow::Cow;

use crate::crypto::{self, Keyring, Place};
use crate::group_commit;
use crate::model::{DeliveryUpdate, Ingested, MessageId, Metadata, NewMessage, SOURCE};
use crate::rotate::{self, Cursor, Rotated};
use crate::{StoreError, model, model::ContentStage};

pub(crate) enum Op {
    /// Boxed: the message is large next to the other commands queued to the writer.
    Ingest(Box<NewMessage>),
    Delivery(DeliveryUpdate),
    /// Replace the response stored for the source (a relayed downstream response).
    SourceResponse {
        channel: String,
        id: MessageId,
        response: Vec<u8>,
    },
    /// Seal and append an audit record (boxed like `Ingest`).
    Audit(Box<crate::audit::AuditEvent>),
    /// Move the audit shipping cursor.
    AuditShipped(i64),
    /// Re-encrypt up to `limit` records not under the current key, from `cursor` on.
    Rotate {
        cursor: Cursor,
        limit: usize,
    },
    /// Prune up to `limit` messages of a channel under a retention rule (`prune.rs`).
    Prune {
        channel: String,
        rule: crate::prune::PruneRule,
        limit: usize,
    },
    /// Hand up to `pages` free pages back to the file system (`prune.rs`).
    Vacuum {
        pages: u64,
    },
}

/// A message a duplicate repeats: its id and stored response.
type Original = (MessageId, Option<Vec<u8>>);

pub(crate) enum Reply {
    Ingested(Ingested),
    Audited(Box<crate::audit::AuditRecord>),
    Done,
    Rotated(Rotated),
    Pruned(crate::prune::PruneProgress),
    Vacuumed(crate::prune::VacuumProgress),
}

/// Counters of the writer: `ops / commits` is how many writes shared each fsync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Committed transactions.
    pub commits: u64,
    /// Operations committed.
    pub ops: u64,
}

pub(crate) type WriterHandle = group_commit::Handle<Op, Reply>;

/// Start the SQLite writer thread on the write connection.
pub(crate) fn start(
    conn: Connection,
    keyring: Option<Arc<Keyring>>,
) -> Result<WriterHandle, StoreError> {
    WriterHandle::spawn("ferry-store-writer", move |counters| {
        Writer::new(conn, counters, keyring)
    })
}

struct Writer {
    conn: Connection,
    counters: Arc<group_commit::Counters>,
    keyring: Option<Arc<Keyring>>,
    channel_ids: HashMap<String, i64>,
    next_ids: HashMap<i64, MessageId>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn op_bytes(op: &Op) -> usize {
    match op {
        Op::Ingest(m) => {
            m.raw.len()
                + m.source_response.as_ref().map_or(0, Vec::len)
                + m.transformed.as_ref().map_or(0, Vec::len)
                + m.encoded.iter().map(|(_, e)| e.len()).sum::<usize>()
        }
        Op::Delivery(d) => {
            d.response.as_ref().map_or(0, Vec::len) + d.encoded.as_ref().map_or(0, Vec::len)
        }
        Op::SourceResponse { response, .. } => response.len(),
        Op::Audit(_)
        | Op::AuditShipped(_)
        | Op::Rotate { .. }
        | Op::Prune { .. }
        | Op::Vacuum { .. } => 0,
    }
}

impl Writer {
    fn new(
        conn: Connection,
        counters: Arc<group_commit::Counters>,
        keyring: Option<Arc<Keyring>>,
    ) -> Writer {
        Writer {
            conn,
            counters,
            keyring,
            channel_ids: HashMap::new(),
            next_ids: HashMap::new(),
        }
    }

    /// Run the batch in one transaction and answer every operation. Returns `Err` only when
    /// the commit itself failed (then every operation was answered `Fatal`).
    fn commit_batch(
        &mut self,
        batch: &mut Vec<(Op, oneshot::Sender<Result<Reply, StoreError>>)>,
    ) -> Result<(), String> {
        // Channel ids are created outside the batch so a rolled-back savepoint cannot leave a
        // cached id that does not exist.
        for (op, _) in batch.iter() {
            let name = match op {
                Op::Ingest(m) => &m.channel,
                Op::Delivery(d) => &d.channel,
                Op::SourceResponse { channel, .. } => channel,
                Op::Audit(_)
                | Op::AuditShipped(_)
                | Op::Rotate { .. }
                | Op::Prune { .. }
                | Op::Vacuum { .. } => continue,
            };
            if !self.channel_ids.contains_key(name)
                && let Err(e) = self.channel_id(name)
            {
                tracing::error!(error = %e, "resolving a channel id failed");
            }
        }
        let begin = |conn: &Connection| {
            conn.prepare_cached("BEGIN IMMEDIATE")
                .and_then(|mut s| s.execute([]))
                .map(|_| ())
                .map_err(|e| format!("BEGIN failed: {e}"))
        };
        if let Err(reason) = begin(&self.conn) {
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(StoreError::Fatal(reason.clone())));
            }
            return Err(reason);
        }
        // Fast path: every operation applied directly. Savepoints cost a statement journal
        // copy of every page touched, so they are used only when an operation fails: then the
        // batch is rolled back and replayed with a savepoint per operation, and only the bad
        // one fails.
        let mut results: Vec<Result<Reply, StoreError>> =
            batch.iter().map(|(op, _)| self.apply(op)).collect();
        if results.iter().any(Result::is_err) {
            let _ = self.conn.execute_batch("ROLLBACK");
            // Ids handed out in the rolled-back attempt are read again from the database.
            self.next_ids.clear();
            if let Err(reason) = begin(&self.conn) {
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(StoreError::Fatal(reason.clone())));
                }
                return Err(reason);
            }
            results = batch
                .iter()
                .map(|(op, _)| self.apply_in_savepoint(op))
                .collect();
        }
        let commit = self
            .conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]));
        match commit {
            Ok(_) => {
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .ops
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for ((_, reply), result) in batch.drain(..).zip(results) {
                    let _ = reply.send(result);
                }
                Ok(())
            }
            Err(e) => {
                let reason = format!("COMMIT failed: {e}");
                let _ = self.conn.execute_batch("ROLLBACK");
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(StoreError::Fatal(reason.clone())));
                }
                Err(reason)
            }
        }
    }

    fn apply(&mut self, op: &Op) -> Result<Reply, StoreError> {
        match op {
            Op::Ingest(m) => self.ingest(m).map(Reply::Ingested),
            Op::Delivery(d) => self.delivery(d).map(|()| Reply::Done),
            Op::SourceResponse {
                channel,
                id,
                response,
            } => self
                .source_response(channel, *id, response)
                .map(|()| Reply::Done),
            Op::Audit(event) => crate::audit::append(&self.conn, event)
                .map(|record| Reply::Audited(Box::new(record))),
            Op::AuditShipped(seq) => {
                crate::audit::set_shipped(&self.conn, *seq).map(|()| Reply::Done)
            }
            Op::Rotate { cursor, limit } => match &self.keyring {
                Some(keyring) => {
                    rotate::batch(&self.conn, keyring, cursor, *limit).map(Reply::Rotated)
                }
                None => Err(StoreError::Crypto(
                    "key rotation needs [store] encryption to be configured".into(),
                )),
            },
            Op::Prune {
                channel,
                rule,
                limit,
            } => {
                let pruned = crate::prune::batch(&self.conn, channel, rule, *limit)?;
                if pruned.messages_deleted > 0 {
                    // Ids come from MAX(id) again, now bounded below by max_deleted_id.
                    if let Some(id) = self.channel_ids.get(channel) {
                        self.next_ids.remove(id);
                    }
                }
                Ok(Reply::Pruned(pruned))
            }
            Op::Vacuum { pages } => {
                crate::prune::vacuum_step(&self.conn, *pages).map(Reply::Vacuumed)
            }
        }
    }

    fn apply_in_savepoint(&mut self, op: &Op) -> Result<Reply, StoreError> {
        self.conn
            .execute_batch("SAVEPOINT op")
            .map_err(StoreError::sqlite("opening a savepoint"))?;
        let result = self.apply(op);
        let end = if result.is_ok() {
            "RELEASE op"
        } else {
            "ROLLBACK TO op; RELEASE op"
        };
        self.conn
            .execute_batch(end)
            .map_err(StoreError::sqlite("closing a savepoint"))?;
        result
    }

    fn channel_id(&mut self, name: &str) -> Result<i64, StoreError> {
        if let Some(id) = self.channel_ids.get(name) {
            return Ok(*id);
        }
        self.conn
            .execute("INSERT OR IGNORE INTO channels (name) VALUES (?1)", [name])
            .map_err(StoreError::sqlite("registering a channel"))?;
        let id: i64 = self
            .conn
            .query_row("SELECT id FROM channels WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .map_err(StoreError::sqlite("reading a channel id"))?;
        self.channel_ids.insert(name.to_owned(), id);
        Ok(id)
    }

    /// `plain` as it is to be stored at its place: sealed under the current key when the
    /// store encrypts, else as is.
    fn seal<'p>(&self, place: Place<'_>, plain: &'p [u8]) -> Result<Cow<'p, [u8]>, StoreError> {
        match &self.keyring {
            Some(k) => k.seal(&place, plain).map(Cow::Owned),
            None => Ok(Cow::Borrowed(plain)),
        }
    }

    /// [`seal`](Self::seal) for an error text.
    fn seal_text<'p>(
        &self,
        place: Place<'_>,
        plain: Option<&'p str>,
    ) -> Result<Option<Cow<'p, str>>, StoreError> {
        match (&self.keyring, plain) {
            (Some(k), Some(p)) => k.seal_text(&place, p).map(|s| Some(Cow::Owned(s))),
            (_, p) => Ok(p.map(Cow::Borrowed)),
        }
    }

    fn next_id(&mut self, channel: i64) -> Result<MessageId, StoreError> {
        let next = match self.next_ids.get(&channel) {
            Some(n) => *n,
            None => {
                let max: Option<i64> = self
                    .conn
                    .query_row(
                        "SELECT MAX(COALESCE((SELECT MAX(id) FROM messages WHERE channel = ?1), 0), \
                         COALESCE((SELECT max_deleted_id FROM channels WHERE id = ?1), 0))",
                        [channel],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(StoreError::sqlite("reading the last message id"))?
                    .flatten();
                max.unwrap_or(0) + 1
            }
        };
        self.next_ids.insert(channel, next + 1);
        Ok(next)
    }

    /// The earliest message of `channel` with the dedupe key received at or after `since_ms`:
    /// its id and stored response. Runs on the writer's connection inside the batch's
    /// transaction, so it sees every insert before it, committed or not.
    fn find_original(
        &self,
        channel: i64,
        key: &str,
        since_ms: i64,
    ) -> Result<Option<Original>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT id, source_response FROM messages INDEXED BY messages_dedupe \
                 WHERE channel = ?1 AND dedupe_key = ?2 AND received_at_ms >= ?3 \
                 ORDER BY received_at_ms, id LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![channel, key, since_ms], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
            })
            .map_err(StoreError::sqlite("looking up a duplicate"))
    }

    fn ingest(&mut self, m: &NewMessage) -> Result<Ingested, StoreError> {
        let channel = self.channel_id(&m.channel)?;
        let original = match &m.dedupe {
            Some(d) => self.find_original(channel, &d.key, d.since_ms)?,
            None => None,
        };
        let original = model::open_original(self.keyring.as_deref(), &m.channel, original)?;
        let id = self.next_id(channel)?;
        let now = now_ms();
        let (dedupe_key, response, source_status, source_error) =
            model::source_outcome(m, original.as_ref());
        let place = |connector: &'static str, stage: ContentStage| Place {
            channel: &m.channel,
            message_id: id,
            connector,
            stage: stage.as_str(),
        };
        let raw = self.seal(place(SOURCE, ContentStage::Raw), &m.raw)?;
        let response = response
            .map(|r| self.seal(place(SOURCE, ContentStage::Response), r))
            .transpose()?;
        let source_error =
            self.seal_text(place(SOURCE, ContentStage::Error), source_error.as_deref())?;
        let c = &self.conn;
        // The raw message and the source's response are columns of the message row, so the
        // hot path is one message insert plus one status row per connector.
        c.prepare_cached(
            "INSERT INTO messages \
             (channel, id, received_at_ms, control_id, message_type, raw, source_response, \
              dedupe_key) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut s| {
            s.execute(params![
                channel,
                id,
                m.received_at_ms,
                m.control_id,
                m.message_type,
                raw,
                response,
                dedupe_key
            ])
        })
        .map_err(StoreError::sqlite("storing a message"))?;
        self.index_metadata(channel, &m.channel, id, &m.metadata)?;
        let mut status = c
            .prepare_cached(
                "INSERT INTO connector_messages \
                 (channel, message_id, connector, status, attempts, error, updated_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6)",
            )
            .map_err(StoreError::sqlite("preparing status insert"))?;
        status
            .execute(params![
                channel,
                id,
                SOURCE,
                source_status.as_str(),
                source_error,
                now
            ])
            .map_err(StoreError::sqlite("storing the source status"))?;
        if let Some((original, response)) = original {
            return Ok(Ingested::Duplicate {
                id,
                original,
                response,
            });
        }
        for destination in &m.destinations {
            status
                .execute(params![
                    channel,
                    id,
                    destination,
                    "QUEUED",
                    Option::<String>::None,
                    now
                ])
                .map_err(StoreError::sqlite("queueing for a destination"))?;
        }
        for destination in &m.filtered_destinations {
            status
                .execute(params![
                    channel,
                    id,
                    destination,
                    "FILTERED",
                    Option::<String>::None,
                    now
                ])
                .map_err(StoreError::sqlite("recording a destination's filter"))?;
        }
        for (destination, error) in &m.errored_destinations {
            let error = self.seal_text(
                Place {
                    channel: &m.channel,
                    message_id: id,
                    connector: destination,
                    stage: ContentStage::Error.as_str(),
                },
                Some(error),
            )?;
            status
                .execute(params![channel, id, destination, "ERROR", error, now])
                .map_err(StoreError::sqlite("recording a destination's error"))?;
        }
        if m.transformed.is_none() && m.encoded.is_empty() && m.maps.is_none() {
            return Ok(Ingested::Stored(id));
        }
        let mut content = c
            .prepare_cached(
                "INSERT INTO content (channel, message_id, connector, stage, data) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(StoreError::sqlite("preparing content insert"))?;
        if let Some(transformed) = &m.transformed {
            let transformed = self.seal(place(SOURCE, ContentStage::Transformed), transformed)?;
            content
                .execute(params![
                    channel,
                    id,
                    SOURCE,
                    ContentStage::Transformed.as_str(),
                    transformed
                ])
                .map_err(StoreError::sqlite("storing transformed content"))?;
        }
        if let Some(maps) = &m.maps {
            let maps = self.seal(place(SOURCE, ContentStage::Maps), maps)?;
            content
                .execute(params![
                    channel,
                    id,
                    SOURCE,
                    ContentStage::Maps.as_str(),
                    maps
                ])
                .map_err(StoreError::sqlite("storing maps"))?;
        }
        for (destination, encoded) in &m.encoded {
            let encoded = self.seal(
                Place {
                    channel: &m.channel,
                    message_id: id,
                    connector: destination,
                    stage: ContentStage::Encoded.as_str(),
                },
                encoded,
            )?;
            content
                .execute(params![
                    channel,
                    id,
                    destination,
                    ContentStage::Encoded.as_str(),
                    encoded
                ])
                .map_err(StoreError::sqlite("storing encoded content"))?;
        }
        Ok(Ingested::Stored(id))
    }

    /// The message's indexed metadata rows: the value as is, or with encryption its blind
    /// index and the value sealed for its row (see `crypto.rs`).
    fn index_metadata(
        &self,
        channel: i64,
        name: &str,
        id: MessageId,
        metadata: &Metadata,
    ) -> Result<(), StoreError> {
        if metadata.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO message_metadata (channel, key, value, message_id, sealed) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(StoreError::sqlite("preparing metadata insert"))?;
        for (key, value) in metadata.iter() {
            let inserted = match &self.keyring {
                None => insert.execute(params![
                    channel,
                    key,
                    value.as_bytes(),
                    id,
                    Option::<&[u8]>::None
                ]),
                Some(ring) => {
                    let token = ring.blind_index(key, value);
                    let place = Place {
                        channel: name,
                        message_id: id,
                        connector: key,
                        stage: crypto::INDEX_STAGE,
                    };
                    let sealed = ring.seal(&place, value.as_bytes())?;
                    insert.execute(params![channel, key, &token[..], id, sealed])
                }
            };
            inserted.map_err(StoreError::sqlite("storing indexed metadata"))?;
        }
        Ok(())
    }

    fn source_response(
        &mut self,
        channel: &str,
        id: MessageId,
        response: &[u8],
    ) -> Result<(), StoreError> {
        let channel_id = self.channel_id(channel)?;
        let response = self.seal(
            Place {
                channel,
                message_id: id,
                connector: SOURCE,
                stage: ContentStage::Response.as_str(),
            },
            response,
        )?;
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE messages SET source_response = ?1 WHERE channel = ?2 AND id = ?3",
            )
            .and_then(|mut s| s.execute(params![response, channel_id, id]))
            .map_err(StoreError::sqlite("recording the source's response"))?;
        if changed == 0 {
            if self.pruned(channel_id, id)? {
                return Ok(());
            }
            return Err(StoreError::Corrupt(format!(
                "no message {id} in channel `{channel}`"
            )));
        }
        Ok(())
    }

    /// Whether message `id` of `channel` was deleted by retention pruning (it is gone and its
    /// id is at most the highest id pruning deleted).
    fn pruned(&self, channel: i64, id: MessageId) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT NOT EXISTS (SELECT 1 FROM messages WHERE channel = ?1 AND id = ?2) \
                   AND ?2 <= (SELECT max_deleted_id FROM channels WHERE id = ?1)",
            )
            .and_then(|mut s| s.query_row(params![channel, id], |r| r.get::<_, bool>(0)))
            .map_err(StoreError::sqlite("checking for a pruned message"))
    }

    fn delivery(&mut self, d: &DeliveryUpdate) -> Result<(), StoreError> {
        let channel = self.channel_id(&d.channel)?;
        let place = |stage: ContentStage| Place {
            channel: &d.channel,
            message_id: d.message_id,
            connector: &d.destination,
            stage: stage.as_str(),
        };
        let error = self.seal_text(place(ContentStage::Error), d.error.as_deref())?;
        let response = d
            .response
            .as_ref()
            .map(|r| self.seal(place(ContentStage::Response), r))
            .transpose()?;
        let encoded = d
            .encoded
            .as_ref()
            .map(|e| self.seal(place(ContentStage::Encoded), e))
            .transpose()?;
        let c = &self.conn;
        let changed = c
            .prepare_cached(
                "UPDATE connector_messages SET status = ?1, attempts = ?2, error = ?3, \
                 updated_at_ms = ?4 WHERE channel = ?5 AND message_id = ?6 AND connector = ?7",
            )
            .and_then(|mut s| {
                s.execute(params![
                    d.status.as_str(),
                    d.attempts,
                    error,
                    now_ms(),
                    channel,
                    d.message_id,
                    d.destination
                ])
            })
            .map_err(StoreError::sqlite("recording a delivery"))?;
        if changed == 0 {
            // A delivery still in flight when retention pruning (with `prune_queued`) deleted
            // its message: nothing left to record, and the worker carries on.
            if self.pruned(channel, d.message_id)? {
                return Ok(());
            }
            return Err(StoreError::Corrupt(format!(
                "no message {} for destination `{}` in channel `{}`",
                d.message_id, d.destination, d.channel
            )));
        }
        let mut content = c
            .prepare_cached(
                "INSERT OR REPLACE INTO content (channel, message_id, connector, stage, data) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(StoreError::sqlite("preparing content insert"))?;
        if let Some(response) = &response {
            content
                .execute(params![
                    channel,
                    d.message_id,
                    d.destination,
                    ContentStage::Response.as_str(),
                    response
                ])
                .map_err(StoreError::sqlite("storing a response"))?;
        }
        if let Some(encoded) = &encoded {
            content
                .execute(params![
                    channel,
                    d.message_id,
                    d.destination,
                    ContentStage::Encoded.as_str(),
                    encoded
                ])
                .map_err(StoreError::sqlite("storing encoded content"))?;
        }
        Ok(())
    }
}

impl group_commit::BatchWriter for Writer {
    type Op = Op;
    type Reply = Reply;

    fn op_bytes(op: &Op) -> usize {
        op_bytes(op)
    }

    fn commit(&mut self, batch: &mut Vec<(Op, group_commit::Answer<Reply>)>) -> Result<(), String> {
        self.commit_batch(batch)
    }

    fn mark_failed(&self) {
        self.counters.failed.store(true, Ordering::Relaxed);
    }

    fn close(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(StoreError::sqlite("checkpointing the WAL at close"))
    }
}
