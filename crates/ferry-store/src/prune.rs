//! Retention pruning: delete old content, then old messages, in bounded batches.
//!
//! Two cut-offs per channel ([`PruneRule`]): messages received before `content_before_ms`
//! lose their content (the raw message, the source's response, every transformed, encoded,
//! response and maps blob) but keep their message row, connector statuses, error texts and
//! search metadata, and are marked `content_pruned_at_ms` so the message browser can say so;
//! messages received before `metadata_before_ms` are deleted whole (message row, connector
//! rows, content, search metadata; the dedupe key is a column of the message row and goes
//! with it). A message with any connector still in flight (`QUEUED`, `RECEIVED`, `PENDING`)
//! or failed (`ERROR`) is kept unless the rule says otherwise, so pruning never loses a
//! message that is still to be delivered or looked at.
//!
//! **Bounded.** One [`Store::prune_batch`] call is one operation on the writer thread (see
//! `writer.rs`): it touches at most `limit` messages inside the writer's short group-commit
//! transaction, so ingest waits for at most one batch. Callers loop until
//! [`PruneProgress::done`], yielding between batches.
//!
//! **Space.** Deleted pages go to SQLite's free list; the file does not shrink by itself. A
//! store created by this version uses `auto_vacuum = INCREMENTAL` (`schema.rs`), and
//! [`Store::vacuum_step`] hands at most a given number of free pages back to the file system
//! per call (`PRAGMA incremental_vacuum(n)`, also one writer operation); the file shrinks when
//! the background checkpointer next copies the WAL back. A store created before keeps
//! `auto_vacuum = NONE`: its free pages are reused by new messages (the file stops growing)
//! but it shrinks only after one full [`vacuum_file`] (`ferry prune --vacuum`, with the engine
//! stopped), which also switches it to incremental mode.
//!
//! **Costs to know.** Candidates are walked oldest first on `(channel, received_at_ms)`; the
//! messages a rule keeps (in flight, failed) that are older than the cut-off are walked again
//! by every batch, so a destination down for weeks with a long queue makes each batch read its
//! queue's index entries. Upgrading a store to schema version 4 builds three indexes over the
//! existing messages once, at the first open (time proportional to the store).
//!
//! The SQL is plain (a bounded candidate `SELECT … ORDER BY … LIMIT n`, then `DELETE`/`UPDATE`
//! by primary key), so the same statements serve a PostgreSQL backend.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

use crate::model::MessageId;
use crate::{Store, StoreError, writer};

/// What to prune in one channel. `None` cut-offs keep forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneRule {
    /// Delete the content of messages received before this time (Unix milliseconds).
    pub content_before_ms: Option<i64>,
    /// Delete messages received before this time (Unix milliseconds) entirely.
    pub metadata_before_ms: Option<i64>,
    /// Also prune messages with a connector in `ERROR` (kept by default so failures can be
    /// looked at and reprocessed).
    pub include_errored: bool,
    /// Also prune messages still in flight at a connector (`QUEUED`, `RECEIVED`, `PENDING`).
    /// Their content is then gone, so a queued destination row whose content is pruned is
    /// set to `ERROR` ("content pruned by retention before delivery"); a deleted message
    /// leaves its queues.
    pub include_queued: bool,
}

/// What one [`Store::prune_batch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneProgress {
    /// Messages whose content was deleted (the message itself kept).
    pub content_pruned: u64,
    /// Messages deleted entirely.
    pub messages_deleted: u64,
    /// Nothing more to prune under this rule (for now): the batch found fewer candidates than
    /// its limit.
    pub done: bool,
}

/// What one [`Store::vacuum_step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VacuumProgress {
    /// Free pages handed back to the file system by this step.
    pub freed_pages: u64,
    /// Free pages still in the file (with `auto_vacuum = NONE`, these stay until a full
    /// [`vacuum_file`]).
    pub free_pages: u64,
    /// Whether the store can shrink in steps (`auto_vacuum = INCREMENTAL`).
    pub incremental: bool,
}

/// Statuses that keep a message unless the rule includes them.
const IN_FLIGHT: &str = "'QUEUED', 'RECEIVED', 'PENDING'";
/// The error a queued destination gets when its message's content is pruned.
const PRUNED_BEFORE_DELIVERY: &str = "content pruned by retention before delivery";

impl PruneRule {
    /// Whether the rule prunes anything.
    pub fn is_empty(&self) -> bool {
        self.content_before_ms.is_none() && self.metadata_before_ms.is_none()
    }

    /// The `AND NOT EXISTS (…)` that keeps in-flight and failed messages of `m`.
    fn keep_clause(&self) -> String {
        let mut kept = Vec::new();
        if !self.include_queued {
            kept.push(IN_FLIGHT);
        }
        if !self.include_errored {
            kept.push("'ERROR'");
        }
        if kept.is_empty() {
            return String::new();
        }
        format!(
            " AND NOT EXISTS (SELECT 1 FROM connector_messages q \
               WHERE q.channel = m.channel AND q.message_id = m.id AND q.status IN ({}))",
            kept.join(", ")
        )
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The oldest messages of `channel` received before `before_ms` that the rule may touch.
fn candidates(
    conn: &Connection,
    channel: i64,
    before_ms: i64,
    rule: &PruneRule,
    content_only: bool,
    limit: usize,
) -> Result<Vec<MessageId>, StoreError> {
    let (index, pruned) = if content_only {
        (
            "messages_content_kept",
            " AND m.content_pruned_at_ms IS NULL",
        )
    } else {
        ("messages_received", "")
    };
    let sql = format!(
        "SELECT m.id FROM messages m INDEXED BY {index} \
         WHERE m.channel = ?1 AND m.received_at_ms < ?2{pruned}{keep} \
         ORDER BY m.received_at_ms LIMIT ?3",
        keep = rule.keep_clause()
    );
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(StoreError::sqlite("preparing the prune scan"))?;
    stmt.query_map(params![channel, before_ms, limit as i64], |r| r.get(0))
        .map_err(StoreError::sqlite("scanning messages to prune"))?
        .collect::<Result<Vec<MessageId>, _>>()
        .map_err(StoreError::sqlite("reading a message to prune"))
}

/// How many messages `rule` would prune now: (content only, deleted whole). A read, for
/// `ferry prune --dry-run`.
pub(crate) fn count(
    conn: &Connection,
    channel: &str,
    rule: &PruneRule,
) -> Result<PruneProgress, StoreError> {
    let mut progress = PruneProgress {
        done: true,
        ..PruneProgress::default()
    };
    let Some(channel_id) = conn
        .query_row("SELECT id FROM channels WHERE name = ?1", [channel], |r| {
            r.get::<_, i64>(0)
        })
        .optional()
        .map_err(StoreError::sqlite("reading a channel id"))?
    else {
        return Ok(progress);
    };
    let keep = rule.keep_clause();
    let counted = |sql: String, args: &[&dyn rusqlite::ToSql]| {
        conn.query_row(&sql, args, |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
            .map_err(StoreError::sqlite("counting messages to prune"))
    };
    if let Some(before) = rule.metadata_before_ms {
        progress.messages_deleted = counted(
            format!(
                "SELECT COUNT(*) FROM messages m INDEXED BY messages_received \
                 WHERE m.channel = ?1 AND m.received_at_ms < ?2{keep}"
            ),
            &[&channel_id, &before],
        )?;
    }
    if let Some(before) = rule.content_before_ms {
        // Those deleted whole are not counted again.
        let floor = rule.metadata_before_ms.unwrap_or(i64::MIN);
        progress.content_pruned = counted(
            format!(
                "SELECT COUNT(*) FROM messages m INDEXED BY messages_content_kept \
                 WHERE m.channel = ?1 AND m.received_at_ms < ?2 AND m.received_at_ms >= ?3 \
                   AND m.content_pruned_at_ms IS NULL{keep}"
            ),
            &[&channel_id, &before, &floor],
        )?;
    }
    Ok(progress)
}

/// Run one batch of at most `limit` messages on the writer's connection (inside its
/// transaction): whole messages first (their content need not be pruned separately), then
/// content with what is left of the limit.
pub(crate) fn batch(
    conn: &Connection,
    channel: &str,
    rule: &PruneRule,
    limit: usize,
) -> Result<PruneProgress, StoreError> {
    let limit = limit.max(1);
    let mut progress = PruneProgress {
        done: true,
        ..PruneProgress::default()
    };
    let Some(channel_id) = conn
        .query_row("SELECT id FROM channels WHERE name = ?1", [channel], |r| {
            r.get::<_, i64>(0)
        })
        .optional()
        .map_err(StoreError::sqlite("reading a channel id"))?
    else {
        return Ok(progress);
    };
    let mut budget = limit;
    if let Some(before) = rule.metadata_before_ms {
        let ids = candidates(conn, channel_id, before, rule, false, budget)?;
        if ids.len() == budget {
            progress.done = false;
        }
        budget -= ids.len();
        delete_messages(conn, channel_id, &ids)?;
        progress.messages_deleted = ids.len() as u64;
    }
    if let Some(before) = rule.content_before_ms {
        if budget == 0 {
            progress.done = false;
            return Ok(progress);
        }
        let ids = candidates(conn, channel_id, before, rule, true, budget)?;
        if ids.len() == budget {
            progress.done = false;
        }
        prune_content(conn, channel_id, &ids, rule.include_queued)?;
        progress.content_pruned = ids.len() as u64;
    }
    Ok(progress)
}

/// Delete messages whole: search metadata, content, connector rows, the message row (and
/// with it the raw content, the response and the dedupe key). Remembers the highest id
/// deleted so ids are never handed out twice.
fn delete_messages(conn: &Connection, channel: i64, ids: &[MessageId]) -> Result<(), StoreError> {
    const DELETES: [&str; 4] = [
        // Named: without statistics SQLite may pick the primary key, prefixed only by channel.
        "DELETE FROM message_metadata INDEXED BY message_metadata_message \
         WHERE channel = ?1 AND message_id = ?2",
        "DELETE FROM content WHERE channel = ?1 AND message_id = ?2",
        "DELETE FROM connector_messages WHERE channel = ?1 AND message_id = ?2",
        "DELETE FROM messages WHERE channel = ?1 AND id = ?2",
    ];
    for sql in DELETES {
        let mut stmt = conn
            .prepare_cached(sql)
            .map_err(StoreError::sqlite("preparing a prune delete"))?;
        for id in ids {
            stmt.execute(params![channel, id])
                .map_err(StoreError::sqlite("deleting a pruned message"))?;
        }
    }
    if let Some(max) = ids.iter().max() {
        conn.prepare_cached(
            "UPDATE channels SET max_deleted_id = MAX(max_deleted_id, ?2) WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![channel, max]))
        .map_err(StoreError::sqlite("recording the highest pruned id"))?;
    }
    Ok(())
}

/// Delete the content of messages, keeping their rows (marked `content_pruned_at_ms`).
fn prune_content(
    conn: &Connection,
    channel: i64,
    ids: &[MessageId],
    include_queued: bool,
) -> Result<(), StoreError> {
    let now = now_ms();
    let mut mark = conn
        .prepare_cached(
            "UPDATE messages SET raw = X'', source_response = NULL, content_pruned_at_ms = ?3 \
             WHERE channel = ?1 AND id = ?2",
        )
        .map_err(StoreError::sqlite("preparing the content prune"))?;
    let mut blobs = conn
        .prepare_cached("DELETE FROM content WHERE channel = ?1 AND message_id = ?2")
        .map_err(StoreError::sqlite("preparing the content delete"))?;
    for id in ids {
        mark.execute(params![channel, id, now])
            .map_err(StoreError::sqlite("pruning a message's content"))?;
        blobs
            .execute(params![channel, id])
            .map_err(StoreError::sqlite("deleting a message's content"))?;
    }
    if include_queued {
        let mut fail = conn
            .prepare_cached(
                "UPDATE connector_messages SET status = 'ERROR', error = ?3, updated_at_ms = ?4 \
                 WHERE channel = ?1 AND message_id = ?2 AND status = 'QUEUED'",
            )
            .map_err(StoreError::sqlite("preparing the queue update"))?;
        for id in ids {
            fail.execute(params![channel, id, PRUNED_BEFORE_DELIVERY, now])
                .map_err(StoreError::sqlite("failing a pruned queued message"))?;
        }
    }
    Ok(())
}

/// Hand at most `pages` free pages back to the file system (on the writer's connection).
pub(crate) fn vacuum_step(conn: &Connection, pages: u64) -> Result<VacuumProgress, StoreError> {
    let pragma = |name: &'static str| {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))
            .map_err(StoreError::sqlite("reading the free list"))
    };
    let incremental = pragma("auto_vacuum")? == 2;
    let before = pragma("freelist_count")?.max(0) as u64;
    if !incremental || before == 0 || pages == 0 {
        return Ok(VacuumProgress {
            freed_pages: 0,
            free_pages: before,
            incremental,
        });
    }
    let step = pages.min(before);
    // The pragma returns no rows; run it to completion.
    conn.prepare(&format!("PRAGMA incremental_vacuum({step})"))
        .and_then(|mut s| {
            let mut rows = s.query([])?;
            while rows.next()?.is_some() {}
            Ok(())
        })
        .map_err(StoreError::sqlite("running incremental_vacuum"))?;
    let after = pragma("freelist_count")?.max(0) as u64;
    Ok(VacuumProgress {
        freed_pages: before.saturating_sub(after),
        free_pages: after,
        incremental,
    })
}

/// Rewrite the store file at `path` with `VACUUM`, switching it to `auto_vacuum =
/// INCREMENTAL` first: how a store created before retention pruning gives its free space
/// back once. Needs the store to itself (run it with the engine stopped: otherwise it waits
/// for the engine's write lock and fails after the busy timeout). Returns the file's size
/// before and after, in bytes.
pub fn vacuum_file(path: &Path) -> Result<(u64, u64), StoreError> {
    let size = |p: &Path| -> Result<u64, StoreError> {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|source| StoreError::Io {
                context: format!("reading the size of {}", p.display()),
                source,
            })
    };
    let before = size(path)?;
    let conn = crate::schema::open_checkpointer(path)?;
    conn.execute_batch(
        "PRAGMA wal_checkpoint(TRUNCATE); PRAGMA auto_vacuum = INCREMENTAL; VACUUM; \
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .map_err(StoreError::sqlite("vacuuming the store"))?;
    drop(conn);
    Ok((before, size(path)?))
}

impl Store {
    /// Prune at most `limit` messages of `channel` under `rule` (see [`prune`](crate::prune)
    /// for what content and metadata pruning delete and what is always kept), in one write
    /// transaction through the writer, so it is safe while the engine ingests and delivers and
    /// ingest waits for at most one batch. Call until [`PruneProgress::done`]; then
    /// [`vacuum_step`](Self::vacuum_step) to shrink the file.
    pub async fn prune_batch(
        &self,
        channel: &str,
        rule: PruneRule,
        limit: usize,
    ) -> Result<PruneProgress, StoreError> {
        if rule.is_empty() {
            return Ok(PruneProgress {
                done: true,
                ..PruneProgress::default()
            });
        }
        match self
            .inner
            .writer
            .submit(writer::Op::Prune {
                channel: channel.to_owned(),
                rule,
                limit,
            })
            .await?
        {
            writer::Reply::Pruned(p) => Ok(p),
            _ => Err(StoreError::Corrupt("prune returned no progress".into())),
        }
    }

    /// How many messages [`prune_batch`](Self::prune_batch) calls under `rule` would prune
    /// now ([`PruneProgress::content_pruned`], [`PruneProgress::messages_deleted`]), without
    /// changing anything: a read beside the writer.
    pub async fn prune_count(
        &self,
        channel: &str,
        rule: PruneRule,
    ) -> Result<PruneProgress, StoreError> {
        let channel = channel.to_owned();
        self.inner
            .reader
            .run(move |r| count(r.connection(), &channel, &rule))
            .await
    }

    /// Hand at most `pages` free pages back to the file system (one bounded writer
    /// operation; the file shrinks at the next WAL checkpoint). Does nothing on a store
    /// without `auto_vacuum = INCREMENTAL` (see [`vacuum_file`]).
    pub async fn vacuum_step(&self, pages: u64) -> Result<VacuumProgress, StoreError> {
        match self
            .inner
            .writer
            .submit(writer::Op::Vacuum { pages })
            .await?
        {
            writer::Reply::Vacuumed(v) => Ok(v),
            _ => Err(StoreError::Corrupt("vacuum returned no progress".into())),
        }
    }
}
