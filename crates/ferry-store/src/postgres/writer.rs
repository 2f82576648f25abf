//! The group-committing writer on PostgreSQL: one thread, one connection.
//!
//! Like the SQLite writer, the thread takes the first waiting operation and everything queued
//! behind it, runs them in one transaction with a `SAVEPOINT` per operation (a bad operation
//! fails alone), and answers every caller only after `COMMIT` returned, with
//! `synchronous_commit = on`, i.e. after the server flushed its WAL.
//!
//! Before the operations, the batch locks the rows of the channels it writes to
//! (`SELECT … FOR UPDATE`, in name order so two nodes cannot deadlock) and takes their id
//! counters; the counters are written back just before `COMMIT`. See `schema.rs` for why.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use postgres::types::ToSql;
use postgres::{Client, Statement};

use crate::crypto::{self, Keyring, Place};
use crate::model::{
    ContentStage, DeliveryUpdate, Ingested, MessageId, Metadata, NewMessage, SOURCE,
};
use crate::{StoreError, group_commit, model};

use super::rotate::{self, PgCursor, PgRotated};

pub(crate) enum Op {
    Ingest(Box<NewMessage>),
    Delivery(DeliveryUpdate),
    SourceResponse {
        channel: String,
        id: MessageId,
        response: Vec<u8>,
    },
    Audit(Box<crate::audit::AuditEvent>),
    AuditShipped(i64),
    Rotate {
        cursor: PgCursor,
        limit: usize,
    },
    /// Prune up to `limit` messages of a channel under a retention rule (`prune.rs`).
    Prune {
        channel: String,
        rule: crate::prune::PruneRule,
        limit: usize,
    },
}

pub(crate) enum Reply {
    Ingested(Ingested),
    Audited(Box<crate::audit::AuditRecord>),
    Done,
    Rotated(PgRotated),
    Pruned(crate::prune::PruneProgress),
}

type Answer = group_commit::Answer<Reply>;

pub(crate) type WriterHandle = group_commit::Handle<Op, Reply>;

/// Start the PostgreSQL writer thread on `client`; `options` reconnect it after a lost
/// connection.
pub(crate) fn start(
    client: Client,
    options: super::PgOptions,
    keyring: Option<Arc<Keyring>>,
) -> Result<WriterHandle, StoreError> {
    WriterHandle::spawn("ferry-store-pg-writer", move |counters| Writer {
        client,
        options,
        counters,
        keyring,
        channel_ids: HashMap::new(),
        next_ids: BTreeMap::new(),
        statements: HashMap::new(),
    })
}

struct Writer {
    client: Client,
    /// To reconnect when the connection was lost between batches.
    options: super::PgOptions,
    counters: Arc<group_commit::Counters>,
    keyring: Option<Arc<Keyring>>,
    /// Channel name → id (ids never change once created).
    channel_ids: HashMap<String, i64>,
    /// Within a batch: channel id → next message id, taken under the channel row's lock.
    next_ids: BTreeMap<i64, MessageId>,
    /// Prepared statements of the hot path (a `&str` query is parsed anew each time: one
    /// more round trip per statement).
    statements: HashMap<&'static str, Statement>,
}

pub(crate) fn now_ms() -> i64 {
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
        Op::Audit(_) | Op::AuditShipped(_) | Op::Rotate { .. } | Op::Prune { .. } => 0,
    }
}

fn pg(context: &'static str) -> impl FnOnce(postgres::Error) -> StoreError {
    StoreError::postgres(context)
}

impl Writer {
    /// A statement of the hot path, prepared once per connection.
    fn prepared(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self
            .client
            .prepare(sql)
            .map_err(pg("preparing a statement"))?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    fn prepared_execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        match self.prepared(sql) {
            Ok(statement) => self.client.execute(&statement, params),
            // Preparing failed: run it unprepared for the real error.
            Err(_) => self.client.execute(sql, params),
        }
    }

    fn prepared_query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<postgres::Row>, postgres::Error> {
        match self.prepared(sql) {
            Ok(statement) => self.client.query_opt(&statement, params),
            Err(_) => self.client.query_opt(sql, params),
        }
    }

    /// The id of a channel, created (committed on its own) when new.
    fn channel_id(&mut self, name: &str) -> Result<i64, StoreError> {
        if let Some(id) = self.channel_ids.get(name) {
            return Ok(*id);
        }
        // Another node may create the same channel at the same moment: its row is then not
        // in this statement's snapshot, and the next try sees it.
        for _ in 0..3 {
            let row = self
                .client
                .query_opt(
                    "WITH ins AS (INSERT INTO channels (name) VALUES ($1) \
                       ON CONFLICT (name) DO NOTHING RETURNING id) \
                     SELECT id FROM ins UNION ALL SELECT id FROM channels WHERE name = $1 \
                     LIMIT 1",
                    &[&name],
                )
                .map_err(pg("creating a channel"))?;
            if let Some(row) = row {
                let id: i64 = row.get(0);
                self.channel_ids.insert(name.to_owned(), id);
                return Ok(id);
            }
        }
        Err(StoreError::Corrupt(format!(
            "channel `{name}` could not be created"
        )))
    }

    /// Run the batch in one transaction and answer every operation. `Err` only when the
    /// transaction itself failed (then every operation was answered `Fatal`).
    fn commit_batch(&mut self, batch: &mut Vec<(Op, Answer)>) -> Result<(), String> {
        // A connection lost between batches (a server restart) is replaced: nothing was in
        // flight on it.
        if self.client.is_closed() {
            match super::reader::open(&self.options) {
                Ok(client) => {
                    tracing::info!("store: reconnected to PostgreSQL");
                    self.client = client;
                    self.statements.clear();
                }
                Err(e) => {
                    let reason = format!("the store cannot reach PostgreSQL: {e}");
                    for (_, reply) in batch.drain(..) {
                        let _ = reply.send(Err(StoreError::Corrupt(reason.clone())));
                    }
                    return Ok(());
                }
            }
        }
        // Channels: created outside the batch, locked in name order inside it.
        let mut names: Vec<String> = Vec::new();
        for (op, _) in batch.iter() {
            let name = match op {
                Op::Ingest(m) => &m.channel,
                Op::Delivery(d) => &d.channel,
                Op::SourceResponse { channel, .. } => channel,
                _ => continue,
            };
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        let mut channel_errors: HashMap<String, String> = HashMap::new();
        for name in &names {
            if let Err(e) = self.channel_id(name) {
                channel_errors.insert(name.clone(), e.to_string());
            }
        }
        // Nothing of this batch is written yet: a batch that cannot start fails alone (its
        // callers are told, none is acknowledged), and the next one tries again.
        if let Err(e) = self.begin(batch, &mut names) {
            let reason = format!("the store could not start a transaction: {e}");
            tracing::warn!(%reason, "store batch refused");
            let _ = self.client.batch_execute("ROLLBACK");
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(StoreError::Corrupt(reason.clone())));
            }
            return Ok(());
        }
        // First without savepoints (two round trips fewer per operation); when any operation
        // fails, the whole transaction is rolled back and the batch runs again with a
        // savepoint per operation, so the bad one fails alone.
        let snapshot = self.next_ids.clone();
        let mut outcome = self.run_ops(batch, &channel_errors, false);
        if matches!(outcome, Ok(None)) {
            let _ = self.client.batch_execute("ROLLBACK");
            self.next_ids = snapshot;
            outcome = match self.client.batch_execute("BEGIN") {
                Ok(()) => self
                    .relock()
                    .and_then(|()| self.run_ops(batch, &channel_errors, true)),
                Err(e) => Err(StoreError::postgres("starting a transaction")(e)),
            };
        }
        let (committed, results) = match outcome {
            Ok(Some(results)) => (self.finish(), results),
            Ok(None) => (
                Err(StoreError::Fatal("the batch did not complete".into())),
                Vec::new(),
            ),
            Err(e) => (
                Err(StoreError::Fatal(format!(
                    "the batch's transaction broke: {e}"
                ))),
                Vec::new(),
            ),
        };
        self.next_ids.clear();
        match committed {
            Ok(()) => {
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
                let _ = self.client.batch_execute("ROLLBACK");
                let reason = e.to_string();
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(StoreError::Fatal(reason.clone())));
                }
                Err(reason)
            }
        }
    }

    /// Run every operation of the batch in the open transaction. With `savepoints`, each in
    /// its own (a failure is that operation's answer); without, the first failure returns
    /// `Ok(None)` (the transaction must be rolled back). `Err`: the transaction broke.
    fn run_ops(
        &mut self,
        batch: &[(Op, Answer)],
        channel_errors: &HashMap<String, String>,
        savepoints: bool,
    ) -> Result<Option<Vec<Result<Reply, StoreError>>>, StoreError> {
        let mut results = Vec::with_capacity(batch.len());
        let mut deliveries: Vec<(usize, &DeliveryUpdate)> = Vec::new();
        for (op, _) in batch {
            let name = match op {
                Op::Ingest(m) => Some(&m.channel),
                Op::Delivery(d) => Some(&d.channel),
                Op::SourceResponse { channel, .. } => Some(channel),
                _ => None,
            };
            if let Some(e) = name.and_then(|n| channel_errors.get(n)) {
                results.push(Err(StoreError::Corrupt(e.clone())));
                continue;
            }
            if !savepoints {
                if let Op::Delivery(d) = op {
                    // Written together after the loop (one statement for all of them).
                    deliveries.push((results.len(), d));
                    results.push(Ok(Reply::Done));
                    continue;
                }
                match self.apply(op) {
                    Ok(reply) => results.push(Ok(reply)),
                    Err(_) => return Ok(None),
                }
                continue;
            }
            self.client
                .batch_execute("SAVEPOINT op")
                .map_err(pg("opening a savepoint"))?;
            let snapshot = self.next_ids.clone();
            let result = self.apply(op);
            let end = if result.is_ok() {
                "RELEASE SAVEPOINT op"
            } else {
                self.next_ids = snapshot;
                "ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op"
            };
            results.push(result);
            self.client
                .batch_execute(end)
                .map_err(pg("closing a savepoint"))?;
        }
        if !deliveries.is_empty() && !self.deliveries(&deliveries)? {
            return Ok(None);
        }
        Ok(Some(results))
    }

    /// Every delivery of a batch in one `UPDATE … FROM unnest(…)` and one content upsert
    /// (the queue drains at the rate of these two statements, not of two per message).
    /// `Ok(false)`: one of them does not apply as given (an unknown row, the same row twice,
    /// a failed seal or statement); the batch is then redone one operation at a time.
    fn deliveries(&mut self, deliveries: &[(usize, &DeliveryUpdate)]) -> Result<bool, StoreError> {
        let mut keys = std::collections::HashSet::new();
        let mut channels = Vec::new();
        let mut ids = Vec::new();
        let mut connectors: Vec<&str> = Vec::new();
        let mut statuses: Vec<&str> = Vec::new();
        let mut attempts = Vec::new();
        let mut errors: Vec<Option<String>> = Vec::new();
        let (mut c_channels, mut c_ids, mut c_connectors, mut c_stages, mut c_data) = (
            Vec::new(),
            Vec::new(),
            Vec::<&str>::new(),
            Vec::<&str>::new(),
            Vec::new(),
        );
        for (_, d) in deliveries {
            let Ok(channel) = self.channel_id(&d.channel) else {
                return Ok(false);
            };
            if !keys.insert((channel, d.message_id, d.destination.as_str())) {
                return Ok(false);
            }
            let place = |stage: ContentStage| Place {
                channel: &d.channel,
                message_id: d.message_id,
                connector: &d.destination,
                stage: stage.as_str(),
            };
            let Ok(error) = self.seal_text(place(ContentStage::Error), d.error.as_deref()) else {
                return Ok(false);
            };
            channels.push(channel);
            ids.push(d.message_id);
            connectors.push(&d.destination);
            statuses.push(d.status.as_str());
            attempts.push(i32::try_from(d.attempts).unwrap_or(i32::MAX));
            errors.push(error);
            for (stage, data) in [
                (ContentStage::Response, &d.response),
                (ContentStage::Encoded, &d.encoded),
            ] {
                if let Some(data) = data {
                    let Ok(sealed) = self.seal(place(stage), data) else {
                        return Ok(false);
                    };
                    c_channels.push(channel);
                    c_ids.push(d.message_id);
                    c_connectors.push(&d.destination);
                    c_stages.push(stage.as_str());
                    c_data.push(sealed);
                }
            }
        }
        let changed = self.prepared_execute(
            "UPDATE connector_messages c SET status = v.s, attempts = v.a, error = v.e, \
             updated_at_ms = $7 \
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::int[], \
               $6::text[]) AS v(ch, id, n, s, a, e) \
             WHERE c.channel = v.ch AND c.message_id = v.id AND c.connector = v.n",
            &[
                &channels,
                &ids,
                &connectors,
                &statuses,
                &attempts,
                &errors,
                &now_ms(),
            ],
        );
        if !matches!(changed, Ok(n) if n == deliveries.len() as u64) {
            return Ok(false);
        }
        if !c_channels.is_empty() {
            let stored = self.prepared_execute(
                "INSERT INTO content (channel, message_id, connector, stage, data) \
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], \
                   $5::bytea[]) \
                 ON CONFLICT (channel, message_id, connector, stage) \
                 DO UPDATE SET data = excluded.data",
                &[&c_channels, &c_ids, &c_connectors, &c_stages, &c_data],
            );
            if stored.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Lock the channels of `next_ids` again (after a rollback) and reread their counters.
    fn relock(&mut self) -> Result<(), StoreError> {
        let ids: Vec<i64> = self.next_ids.keys().copied().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let rows = self
            .client
            .query(
                "SELECT id, next_id FROM channels WHERE id = ANY($1) ORDER BY name FOR UPDATE",
                &[&ids],
            )
            .map_err(pg("locking the channels' id counters"))?;
        for row in rows {
            self.next_ids.insert(row.get(0), row.get(1));
        }
        Ok(())
    }

    /// `BEGIN`, then lock the batch's channels (name order) and read their id counters.
    fn begin(&mut self, batch: &[(Op, Answer)], names: &mut [String]) -> Result<(), StoreError> {
        self.client
            .batch_execute("BEGIN")
            .map_err(pg("starting a transaction"))?;
        let ingests: Vec<&str> = batch
            .iter()
            .filter_map(|(op, _)| match op {
                Op::Ingest(m) => Some(m.channel.as_str()),
                _ => None,
            })
            .collect();
        names.sort();
        let mut locked = Vec::new();
        for name in names.iter().filter(|n| ingests.contains(&n.as_str())) {
            if let Some(id) = self.channel_ids.get(name) {
                locked.push(*id);
            }
        }
        if locked.is_empty() {
            return Ok(());
        }
        let rows = self
            .client
            .query(
                "SELECT id, next_id FROM channels WHERE id = ANY($1) ORDER BY name FOR UPDATE",
                &[&locked],
            )
            .map_err(pg("locking the channels' id counters"))?;
        for row in rows {
            self.next_ids.insert(row.get(0), row.get(1));
        }
        Ok(())
    }

    /// Write the id counters back and `COMMIT`.
    fn finish(&mut self) -> Result<(), StoreError> {
        if !self.next_ids.is_empty() {
            let (ids, next): (Vec<i64>, Vec<i64>) =
                self.next_ids.iter().map(|(c, n)| (*c, *n)).unzip();
            self.prepared_execute(
                "UPDATE channels c SET next_id = v.next \
                     FROM unnest($1::bigint[], $2::bigint[]) AS v(id, next) \
                     WHERE c.id = v.id AND c.next_id <> v.next",
                &[&ids, &next],
            )
            .map_err(pg("storing the channels' id counters"))?;
        }
        self.client
            .batch_execute("COMMIT")
            .map_err(|e| StoreError::Fatal(format!("commit failed: {e}")))
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
            Op::Audit(event) => {
                super::audit::append(&mut self.client, event).map(|r| Reply::Audited(Box::new(r)))
            }
            Op::AuditShipped(seq) => {
                super::audit::set_shipped(&mut self.client, *seq).map(|()| Reply::Done)
            }
            Op::Rotate { cursor, limit } => match &self.keyring {
                Some(k) => {
                    rotate::rotate(&mut self.client, k, cursor.clone(), *limit).map(Reply::Rotated)
                }
                None => Err(StoreError::Crypto(
                    "key rotation needs [store] encryption to be configured".into(),
                )),
            },
            Op::Prune {
                channel,
                rule,
                limit,
            } => super::prune::batch(&mut self.client, channel, rule, *limit).map(Reply::Pruned),
        }
    }

    fn seal(&self, place: Place<'_>, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        match &self.keyring {
            Some(k) => k.seal(&place, plain),
            None => Ok(plain.to_vec()),
        }
    }

    fn seal_text(
        &self,
        place: Place<'_>,
        plain: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        match (&self.keyring, plain) {
            (Some(k), Some(p)) => k.seal_text(&place, p).map(Some),
            (_, p) => Ok(p.map(str::to_owned)),
        }
    }

    fn next_id(&mut self, channel: i64) -> Result<MessageId, StoreError> {
        let next = self.next_ids.get_mut(&channel).ok_or_else(|| {
            StoreError::Corrupt("an ingest's channel was not locked by its batch".into())
        })?;
        let id = *next;
        *next += 1;
        Ok(id)
    }

    fn ingest(&mut self, m: &NewMessage) -> Result<Ingested, StoreError> {
        let channel = self.channel_id(&m.channel)?;
        let original: Option<(MessageId, Option<Vec<u8>>)> = match &m.dedupe {
            Some(d) => self
                .prepared_query_opt(
                    "SELECT id, source_response FROM messages \
                     WHERE channel = $1 AND dedupe_key = $2 AND received_at_ms >= $3 \
                       AND dedupe_key IS NOT NULL \
                     ORDER BY received_at_ms, id LIMIT 1",
                    &[&channel, &d.key, &d.since_ms],
                )
                .map_err(pg("looking up a duplicate"))?
                .map(|r| (r.get(0), r.get(1))),
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
        self.prepared_execute(
            "INSERT INTO messages \
                 (channel, id, received_at_ms, control_id, message_type, raw, source_response, \
                  dedupe_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &channel,
                &id,
                &m.received_at_ms,
                &m.control_id,
                &m.message_type,
                &raw,
                &response,
                &dedupe_key,
            ],
        )
        .map_err(pg("storing a message"))?;
        self.index_metadata(channel, &m.channel, id, &m.metadata)?;
        // Every status row of the message in one statement.
        let mut connectors: Vec<&str> = vec![SOURCE];
        let mut statuses: Vec<&str> = vec![source_status.as_str()];
        let mut errors: Vec<Option<String>> = vec![source_error];
        let duplicate = original.is_some();
        if !duplicate {
            for d in &m.destinations {
                connectors.push(d);
                statuses.push("QUEUED");
                errors.push(None);
            }
            for d in &m.filtered_destinations {
                connectors.push(d);
                statuses.push("FILTERED");
                errors.push(None);
            }
            for (d, error) in &m.errored_destinations {
                let error = self.seal_text(
                    Place {
                        channel: &m.channel,
                        message_id: id,
                        connector: d,
                        stage: ContentStage::Error.as_str(),
                    },
                    Some(error),
                )?;
                connectors.push(d);
                statuses.push("ERROR");
                errors.push(error);
            }
        }
        self.prepared_execute(
            "INSERT INTO connector_messages \
                 (channel, message_id, connector, status, attempts, error, updated_at_ms) \
                 SELECT $1, $2, c, s, 0, e, $3 \
                 FROM unnest($4::text[], $5::text[], $6::text[]) AS v(c, s, e)",
            &[&channel, &id, &now, &connectors, &statuses, &errors],
        )
        .map_err(pg("storing the connectors' status"))?;
        if let Some((original, response)) = original {
            return Ok(Ingested::Duplicate {
                id,
                original,
                response,
            });
        }
        let mut names: Vec<String> = Vec::new();
        let mut stages: Vec<&str> = Vec::new();
        let mut data: Vec<Vec<u8>> = Vec::new();
        if let Some(t) = &m.transformed {
            names.push(SOURCE.into());
            stages.push(ContentStage::Transformed.as_str());
            data.push(self.seal(place(SOURCE, ContentStage::Transformed), t)?);
        }
        if let Some(maps) = &m.maps {
            names.push(SOURCE.into());
            stages.push(ContentStage::Maps.as_str());
            data.push(self.seal(place(SOURCE, ContentStage::Maps), maps)?);
        }
        for (destination, encoded) in &m.encoded {
            let sealed = self.seal(
                Place {
                    channel: &m.channel,
                    message_id: id,
                    connector: destination,
                    stage: ContentStage::Encoded.as_str(),
                },
                encoded,
            )?;
            names.push(destination.clone());
            stages.push(ContentStage::Encoded.as_str());
            data.push(sealed);
        }
        if !names.is_empty() {
            self.prepared_execute(
                "INSERT INTO content (channel, message_id, connector, stage, data) \
                     SELECT $1, $2, c, s, d FROM unnest($3::text[], $4::text[], $5::bytea[]) \
                     AS v(c, s, d)",
                &[&channel, &id, &names, &stages, &data],
            )
            .map_err(pg("storing content"))?;
        }
        Ok(Ingested::Stored(id))
    }

    fn index_metadata(
        &mut self,
        channel: i64,
        name: &str,
        id: MessageId,
        metadata: &Metadata,
    ) -> Result<(), StoreError> {
        if metadata.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<String> = Vec::new();
        let mut values: Vec<Vec<u8>> = Vec::new();
        let mut sealed: Vec<Option<Vec<u8>>> = Vec::new();
        for (key, value) in metadata.iter() {
            keys.push(key.to_owned());
            match &self.keyring {
                None => {
                    values.push(value.as_bytes().to_vec());
                    sealed.push(None);
                }
                Some(ring) => {
                    let place = Place {
                        channel: name,
                        message_id: id,
                        connector: key,
                        stage: crypto::INDEX_STAGE,
                    };
                    values.push(ring.blind_index(key, value).to_vec());
                    sealed.push(Some(ring.seal(&place, value.as_bytes())?));
                }
            }
        }
        self.prepared_execute(
            "INSERT INTO message_metadata (channel, key, value, message_id, sealed) \
                 SELECT $1, k, v, $2, s FROM unnest($3::text[], $4::bytea[], $5::bytea[]) \
                 AS x(k, v, s) ON CONFLICT DO NOTHING",
            &[&channel, &id, &keys, &values, &sealed],
        )
        .map_err(pg("storing indexed metadata"))?;
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
            .prepared_execute(
                "UPDATE messages SET source_response = $1 WHERE channel = $2 AND id = $3",
                &[&response, &channel_id, &id],
            )
            .map_err(pg("recording the source's response"))?;
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

    /// Whether message `id` of `channel` was deleted by retention pruning: it is gone, and
    /// its id was handed out (below the channel's committed counter; a rolled-back ingest
    /// gives its id back, so every id below the counter was a committed message).
    fn pruned(&mut self, channel: i64, id: MessageId) -> Result<bool, StoreError> {
        self.client
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM messages WHERE channel = $1 AND id = $2) \
                   AND $2 < (SELECT next_id FROM channels WHERE id = $1)",
                &[&channel, &id],
            )
            .map(|r| r.get::<_, Option<bool>>(0).unwrap_or(false))
            .map_err(pg("checking for a pruned message"))
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
        let attempts = i32::try_from(d.attempts).unwrap_or(i32::MAX);
        let changed = self
            .prepared_execute(
                "UPDATE connector_messages SET status = $1, attempts = $2, error = $3, \
                 updated_at_ms = $4 WHERE channel = $5 AND message_id = $6 AND connector = $7",
                &[
                    &d.status.as_str(),
                    &attempts,
                    &error,
                    &now_ms(),
                    &channel,
                    &d.message_id,
                    &d.destination,
                ],
            )
            .map_err(pg("recording a delivery"))?;
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
        let mut stages: Vec<&str> = Vec::new();
        let mut data: Vec<Vec<u8>> = Vec::new();
        if let Some(r) = &d.response {
            stages.push(ContentStage::Response.as_str());
            data.push(self.seal(place(ContentStage::Response), r)?);
        }
        if let Some(e) = &d.encoded {
            stages.push(ContentStage::Encoded.as_str());
            data.push(self.seal(place(ContentStage::Encoded), e)?);
        }
        if !stages.is_empty() {
            let params: [&(dyn ToSql + Sync); 5] =
                [&channel, &d.message_id, &d.destination, &stages, &data];
            self.prepared_execute(
                "INSERT INTO content (channel, message_id, connector, stage, data) \
                     SELECT $1, $2, $3, s, x FROM unnest($4::text[], $5::bytea[]) AS v(s, x) \
                     ON CONFLICT (channel, message_id, connector, stage) \
                     DO UPDATE SET data = excluded.data",
                &params,
            )
            .map_err(pg("storing a delivery's content"))?;
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

    fn commit(&mut self, batch: &mut Vec<(Op, Answer)>) -> Result<(), String> {
        self.commit_batch(batch)
    }

    fn mark_failed(&self) {
        self.counters.failed.store(true, Ordering::Relaxed);
    }

    fn close(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}
