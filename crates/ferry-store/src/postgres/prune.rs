//! Retention pruning on PostgreSQL: the semantics of `prune.rs` (content pruning keeps the
//! message row, whole-message deletion takes everything, in-flight and failed messages kept
//! unless the rule includes them), on the PostgreSQL tables.
//!
//! **Bounded.** One batch is one operation on the PostgreSQL writer thread (`writer.rs`),
//! inside its short group-commit transaction with a savepoint of its own, like key rotation:
//! ingest waits for at most one batch, and the keep rule is evaluated in the same transaction
//! as this node's deliveries, so a status cannot change between the check and the delete.
//! Candidates are locked with `FOR UPDATE OF m SKIP LOCKED`, so the pruners of several nodes
//! on one database take different messages instead of queueing on each other; counts come
//! from the rows each statement actually changed (`RETURNING`), so two nodes never count a
//! message twice. Deletes go connector rows first, then content, like a delivery update
//! (status, then content), so the two lock rows in the same order.
//!
//! **Ids** are never reused: they come from `channels.next_id`, which only grows, whatever
//! pruning deletes (SQLite needs `max_deleted_id` because it takes `MAX(id)`).
//!
//! **Space.** A deleted or updated row leaves a dead tuple; (auto)vacuum makes its space
//! reusable by later inserts, so a pruned table stops growing but does not shrink (only
//! `VACUUM FULL`, which locks the table exclusively, gives space back to the file system; the
//! store never runs it). [`vacuum_step`] runs a plain `VACUUM` on the four pruned tables
//! (outside any transaction, on a connection of its own, taking only `SHARE UPDATE
//! EXCLUSIVE` locks, so ingest and deliveries go on), so the space is reusable at once rather
//! than at autovacuum's next visit, and reports how many pages the tables shrank by (a plain
//! `VACUUM` only truncates empty pages at the end of a table).

use postgres::Client;

use crate::StoreError;
use crate::model::MessageId;
use crate::prune::{PRUNED_BEFORE_DELIVERY, PruneProgress, PruneRule, VacuumProgress};

/// The tables pruning deletes from.
pub(crate) const PRUNED_TABLES: &str = "messages, content, connector_messages, message_metadata";

fn pg(context: &'static str) -> impl FnOnce(postgres::Error) -> StoreError {
    StoreError::postgres(context)
}

fn channel_id(client: &mut Client, channel: &str) -> Result<Option<i64>, StoreError> {
    client
        .query_opt("SELECT id FROM channels WHERE name = $1", &[&channel])
        .map(|r| r.map(|r| r.get(0)))
        .map_err(pg("reading a channel id"))
}

/// The oldest messages of `channel` received before `before_ms` that the rule may touch,
/// locked (those another transaction holds are skipped).
fn candidates(
    client: &mut Client,
    channel: i64,
    before_ms: i64,
    rule: &PruneRule,
    content_only: bool,
    limit: usize,
) -> Result<(Vec<MessageId>, bool), StoreError> {
    let pruned = if content_only {
        " AND m.content_pruned_at_ms IS NULL"
    } else {
        ""
    };
    let sql = format!(
        "SELECT m.id FROM messages m \
         WHERE m.channel = $1 AND m.received_at_ms < $2{pruned}{keep} \
         ORDER BY m.received_at_ms LIMIT $3 FOR UPDATE OF m SKIP LOCKED",
        keep = rule.keep_clause()
    );
    let limit_arg = i64::try_from(limit).unwrap_or(i64::MAX);
    let ids: Vec<MessageId> = client
        .query(&sql, &[&channel, &before_ms, &limit_arg])
        .map_err(pg("scanning messages to prune"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let full = ids.len() == limit;
    Ok((ids, full))
}

/// How many messages `rule` would prune now (a read, for `ferry prune --dry-run`).
pub(crate) fn count(
    client: &mut Client,
    channel: &str,
    rule: &PruneRule,
) -> Result<PruneProgress, StoreError> {
    let mut progress = PruneProgress {
        done: true,
        ..PruneProgress::default()
    };
    let Some(channel_id) = channel_id(client, channel)? else {
        return Ok(progress);
    };
    let keep = rule.keep_clause();
    if let Some(before) = rule.metadata_before_ms {
        let n: i64 = client
            .query_one(
                &format!(
                    "SELECT COUNT(*) FROM messages m \
                     WHERE m.channel = $1 AND m.received_at_ms < $2{keep}"
                ),
                &[&channel_id, &before],
            )
            .map_err(pg("counting messages to prune"))?
            .get(0);
        progress.messages_deleted = n.max(0) as u64;
    }
    if let Some(before) = rule.content_before_ms {
        // Those deleted whole are not counted again.
        let floor = rule.metadata_before_ms.unwrap_or(i64::MIN);
        let n: i64 = client
            .query_one(
                &format!(
                    "SELECT COUNT(*) FROM messages m \
                     WHERE m.channel = $1 AND m.received_at_ms < $2 AND m.received_at_ms >= $3 \
                       AND m.content_pruned_at_ms IS NULL{keep}"
                ),
                &[&channel_id, &before, &floor],
            )
            .map_err(pg("counting messages to prune"))?
            .get(0);
        progress.content_pruned = n.max(0) as u64;
    }
    Ok(progress)
}

/// One batch of at most `limit` messages on the writer's connection (inside its
/// transaction): whole messages first, then content with what is left of the limit.
pub(crate) fn batch(
    client: &mut Client,
    channel: &str,
    rule: &PruneRule,
    limit: usize,
) -> Result<PruneProgress, StoreError> {
    let limit = limit.max(1);
    let mut progress = PruneProgress {
        done: true,
        ..PruneProgress::default()
    };
    let Some(channel_id) = channel_id(client, channel)? else {
        return Ok(progress);
    };
    let mut budget = limit;
    if let Some(before) = rule.metadata_before_ms {
        let (ids, full) = candidates(client, channel_id, before, rule, false, budget)?;
        if full {
            progress.done = false;
        }
        budget -= ids.len();
        progress.messages_deleted = delete_messages(client, channel_id, &ids)?;
    }
    if let Some(before) = rule.content_before_ms {
        if budget == 0 {
            progress.done = false;
            return Ok(progress);
        }
        let (ids, full) = candidates(client, channel_id, before, rule, true, budget)?;
        if full {
            progress.done = false;
        }
        progress.content_pruned = prune_content(client, channel_id, &ids, rule.include_queued)?;
    }
    Ok(progress)
}

/// Delete messages whole (connector rows, content, search metadata, the message row with
/// its raw content, response and dedupe key). Returns how many message rows went.
fn delete_messages(
    client: &mut Client,
    channel: i64,
    ids: &[MessageId],
) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    for sql in [
        "DELETE FROM connector_messages WHERE channel = $1 AND message_id = ANY($2)",
        "DELETE FROM content WHERE channel = $1 AND message_id = ANY($2)",
        "DELETE FROM message_metadata WHERE channel = $1 AND message_id = ANY($2)",
    ] {
        client
            .execute(sql, &[&channel, &ids])
            .map_err(pg("deleting a pruned message"))?;
    }
    client
        .execute(
            "DELETE FROM messages WHERE channel = $1 AND id = ANY($2)",
            &[&channel, &ids],
        )
        .map_err(pg("deleting a pruned message"))
}

/// Delete the content of messages, keeping their rows (marked `content_pruned_at_ms`).
/// Returns how many messages lost their content.
fn prune_content(
    client: &mut Client,
    channel: i64,
    ids: &[MessageId],
    include_queued: bool,
) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let now = super::writer::now_ms();
    if include_queued {
        client
            .execute(
                "UPDATE connector_messages SET status = 'ERROR', error = $3, updated_at_ms = $4 \
                 WHERE channel = $1 AND message_id = ANY($2) AND status = 'QUEUED'",
                &[&channel, &ids, &PRUNED_BEFORE_DELIVERY, &now],
            )
            .map_err(pg("failing a pruned queued message"))?;
    }
    client
        .execute(
            "DELETE FROM content WHERE channel = $1 AND message_id = ANY($2)",
            &[&channel, &ids],
        )
        .map_err(pg("deleting a message's content"))?;
    client
        .execute(
            "UPDATE messages SET raw = ''::bytea, source_response = NULL, \
               content_pruned_at_ms = $3 \
             WHERE channel = $1 AND id = ANY($2) AND content_pruned_at_ms IS NULL",
            &[&channel, &ids, &now],
        )
        .map_err(pg("pruning a message's content"))
}

/// Total pages of the pruned tables (with their indexes and TOAST).
fn pages(client: &mut Client) -> Result<u64, StoreError> {
    let sql = format!(
        "SELECT COALESCE(SUM(pg_total_relation_size(t::regclass)), 0)::bigint \
           / current_setting('block_size')::bigint \
         FROM unnest(string_to_array('{}', ', ')) AS t",
        PRUNED_TABLES
    );
    client
        .query_one(&sql, &[])
        .map(|r| r.get::<_, i64>(0).max(0) as u64)
        .map_err(pg("measuring the pruned tables"))
}

/// A plain `VACUUM` of the pruned tables on `client` (not in a transaction: `VACUUM` refuses
/// one), unless `max_pages` is 0 (then only the measure). `freed_pages` is how many pages the
/// tables shrank by; `free_pages` is always 0, since the dead space `VACUUM` marks reusable is
/// not handed back in steps (`incremental` is false).
pub(crate) fn vacuum_step(
    client: &mut Client,
    max_pages: u64,
) -> Result<VacuumProgress, StoreError> {
    let before = pages(client)?;
    if max_pages == 0 {
        return Ok(VacuumProgress {
            freed_pages: 0,
            free_pages: 0,
            incremental: false,
        });
    }
    client
        .batch_execute(&format!("VACUUM {PRUNED_TABLES}"))
        .map_err(pg("vacuuming the pruned tables"))?;
    let after = pages(client)?;
    Ok(VacuumProgress {
        freed_pages: before.saturating_sub(after),
        free_pages: 0,
        incremental: false,
    })
}
