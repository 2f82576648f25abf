//! The audit trail on PostgreSQL: the chain of `audit.rs`, appended by several nodes.
//!
//! An append takes a transaction-scoped advisory lock (per schema) before it reads the head,
//! so appends of all nodes are serialised into one linear chain: the lock is held until the
//! writer's batch commits, and the next node's append then reads the head this one wrote.
//! Verification reads the chain in a `REPEATABLE READ` snapshot, in bounded pages.

use std::cell::RefCell;

use postgres::types::ToSql;
use postgres::{Client, Row};

use crate::StoreError;
use crate::audit::{self, AuditEvent, AuditFilter, AuditHead, AuditRecord, VerifyReport};

use super::schema::{AUDIT_LOCK, lock_key_sql};

const SELECT_RECORD: &str = "SELECT seq, time_ms, node, actor, action, target, source, outcome, \
     details, prev_hash, hash FROM audit_log";

/// Records read per page while verifying.
const VERIFY_PAGE: i64 = 5000;

fn pg(context: &'static str) -> impl FnOnce(postgres::Error) -> StoreError {
    StoreError::postgres(context)
}

fn record(r: &Row) -> AuditRecord {
    AuditRecord {
        seq: r.get(0),
        time_ms: r.get(1),
        node: r.get(2),
        actor: r.get(3),
        action: r.get(4),
        target: r.get(5),
        source: r.get(6),
        outcome: r.get(7),
        details: r.get(8),
        prev_hash: r.get(9),
        hash: r.get(10),
    }
}

fn read_head(client: &mut impl postgres::GenericClient) -> Result<Option<AuditHead>, StoreError> {
    Ok(client
        .query_opt("SELECT seq, hash FROM audit_head WHERE id = 1", &[])
        .map_err(pg("reading the audit chain head"))?
        .map(|r| AuditHead {
            seq: r.get(0),
            hash: r.get(1),
        }))
}

/// Seal and insert one record and move the head, inside the writer's transaction.
pub(crate) fn append(client: &mut Client, event: &AuditEvent) -> Result<AuditRecord, StoreError> {
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_xact_lock({})",
            lock_key_sql(AUDIT_LOCK)
        ))
        .map_err(pg("locking the audit chain"))?;
    let head = match read_head(client)? {
        Some(h) => Some(h),
        None => client
            .query_opt(
                "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                &[],
            )
            .map_err(pg("reading the last audit record"))?
            .map(|r| AuditHead {
                seq: r.get(0),
                hash: r.get(1),
            }),
    };
    let record = audit::seal(event, head)?;
    client
        .execute(
            "INSERT INTO audit_log \
             (seq, time_ms, node, actor, action, target, source, outcome, details, prev_hash, \
              hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &record.seq,
                &record.time_ms,
                &record.node,
                &record.actor,
                &record.action,
                &record.target,
                &record.source,
                &record.outcome,
                &record.details,
                &record.prev_hash,
                &record.hash,
            ],
        )
        .map_err(pg("appending an audit record"))?;
    client
        .execute(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            &[&record.seq, &record.hash],
        )
        .map_err(pg("moving the audit chain head"))?;
    Ok(record)
}

/// Move the shipping cursor forward (never back).
pub(crate) fn set_shipped(client: &mut Client, seq: i64) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO audit_shipping (id, shipped_upto) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE \
             SET shipped_upto = GREATEST(audit_shipping.shipped_upto, excluded.shipped_upto)",
            &[&seq],
        )
        .map(|_| ())
        .map_err(pg("moving the audit shipping cursor"))
}

/// The last record shipped (0: none yet).
pub(crate) fn shipped_upto(client: &mut Client) -> Result<i64, StoreError> {
    Ok(client
        .query_opt("SELECT shipped_upto FROM audit_shipping WHERE id = 1", &[])
        .map_err(pg("reading the audit shipping cursor"))?
        .map_or(0, |r| r.get(0)))
}

/// Records matching `filter`, in sequence order.
pub(crate) fn search(
    client: &mut Client,
    filter: &AuditFilter,
) -> Result<Vec<AuditRecord>, StoreError> {
    let mut sql = format!("{SELECT_RECORD} WHERE TRUE");
    let mut values: Vec<Box<dyn ToSql + Sync>> = Vec::new();
    let mut push = |sql: &mut String, clause: &str, v: Box<dyn ToSql + Sync>| {
        values.push(v);
        sql.push_str(&clause.replace('?', &format!("${}", values.len())));
    };
    if let Some(after) = filter.after_seq {
        push(&mut sql, " AND seq > ?", Box::new(after));
    }
    if let Some(since) = filter.since_ms {
        push(&mut sql, " AND time_ms >= ?", Box::new(since));
    }
    if let Some(until) = filter.until_ms {
        push(&mut sql, " AND time_ms < ?", Box::new(until));
    }
    if let Some(actor) = &filter.actor {
        push(&mut sql, " AND actor = ?", Box::new(actor.clone()));
    }
    if let Some(outcome) = filter.outcome {
        push(
            &mut sql,
            " AND outcome = ?",
            Box::new(outcome.as_str().to_owned()),
        );
    }
    if let Some(target) = &filter.target {
        push(&mut sql, " AND (target = ?", Box::new(target.clone()));
        push(
            &mut sql,
            " OR starts_with(target, ?))",
            Box::new(format!("{target}/")),
        );
    }
    if !filter.actions.is_empty() {
        let actions: Vec<String> = filter
            .actions
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect();
        push(&mut sql, " AND action = ANY(?)", Box::new(actions));
    }
    let limit = filter.limit.unwrap_or(1000).min(i64::MAX as usize) as i64;
    push(&mut sql, " ORDER BY seq LIMIT ?", Box::new(limit));
    let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| &**v).collect();
    let rows = client
        .query(&sql, &params)
        .map_err(pg("searching the audit log"))?;
    Ok(rows.iter().map(record).collect())
}

/// Check the whole chain in one snapshot.
pub(crate) fn verify(
    client: &mut Client,
    expect_head: Option<&str>,
) -> Result<VerifyReport, StoreError> {
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(pg("starting the audit verification"))?;
    let report = {
        let tx = RefCell::new(&mut tx);
        let mut after = 0i64;
        let mut page: std::vec::IntoIter<AuditRecord> = Vec::new().into_iter();
        let mut done = false;
        let records = std::iter::from_fn(|| {
            if let Some(r) = page.next() {
                return Some(Ok(r));
            }
            if done {
                return None;
            }
            let rows = tx.borrow_mut().query(
                &format!("{SELECT_RECORD} WHERE seq > $1 ORDER BY seq LIMIT $2"),
                &[&after, &VERIFY_PAGE],
            );
            match rows {
                Err(e) => {
                    done = true;
                    Some(Err(StoreError::postgres("scanning the audit log")(e)))
                }
                Ok(rows) => {
                    if (rows.len() as i64) < VERIFY_PAGE {
                        done = true;
                    }
                    let records: Vec<AuditRecord> = rows.iter().map(record).collect();
                    if let Some(last) = records.last() {
                        after = last.seq;
                    }
                    page = records.into_iter();
                    page.next().map(Ok)
                }
            }
        });
        audit::verify_records(
            records,
            |column, hash| {
                let column = if column == "hash" {
                    "hash"
                } else {
                    "prev_hash"
                };
                Ok(tx
                    .borrow_mut()
                    .query_opt(
                        &format!(
                            "SELECT seq FROM audit_log WHERE {column} = $1 ORDER BY seq LIMIT 1"
                        ),
                        &[&hash],
                    )
                    .map_err(pg("looking up an audit record by hash"))?
                    .map(|r| r.get(0)))
            },
            || read_head(&mut **tx.borrow_mut()),
            expect_head,
        )
    };
    let _ = tx.commit();
    report
}
