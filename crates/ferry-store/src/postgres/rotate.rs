//! Key rotation on PostgreSQL: the pass of `rotate.rs` (messages, content, error texts,
//! indexed metadata), each table walked by primary key from a keyset cursor, rows already
//! under the current key skipped in SQL by their envelope header. One batch runs on the
//! writer inside its transaction, so it cannot race the engine's writes; rows another node
//! writes meanwhile are written under the current key anyway (every node must run with the
//! same keyring).
//!
//! Last, the admin users' TOTP secrets (`postgres/accounts.rs`, by id).

use postgres::Client;

use crate::StoreError;
use crate::crypto::{self, Keyring, Place};
use crate::model::{ContentStage, MessageId, SOURCE};

/// Where a rotation pass is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum PgCursor {
    /// Nothing done yet.
    #[default]
    Start,
    /// In `messages`, after this (channel, id).
    Messages(i64, MessageId),
    /// In `content`, after this (channel, message id, connector, stage).
    Content(i64, MessageId, String, String),
    /// In `connector_messages`, after this (channel, message id, connector).
    Errors(i64, MessageId, String),
    /// In `message_metadata`, after this (channel, key, value, message id).
    Metadata(i64, String, Vec<u8>, MessageId),
    /// In `admin_users` (TOTP secrets), after this id.
    Users(i64),
    /// The pass is complete.
    Done,
}

/// What one batch did.
#[derive(Debug, Clone)]
pub(crate) struct PgRotated {
    pub next: PgCursor,
    pub rotated: u64,
}

fn pg(context: &'static str) -> impl FnOnce(postgres::Error) -> StoreError {
    StoreError::postgres(context)
}

fn reseal(keyring: &Keyring, place: &Place<'_>, blob: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    let plain = zeroize::Zeroizing::new(crypto::open(Some(keyring), place, blob)?);
    keyring.seal(place, &plain)
}

/// One batch of at most `limit` rows from `cursor`, on the writer's connection.
pub(crate) fn rotate(
    client: &mut Client,
    keyring: &Keyring,
    mut cursor: PgCursor,
    limit: usize,
) -> Result<PgRotated, StoreError> {
    let header = keyring.current_header();
    let n = header.len() as i32;
    let mut budget = limit.max(1) as i64;
    let mut rotated = 0u64;
    while budget > 0 {
        match cursor.clone() {
            PgCursor::Start => cursor = PgCursor::Messages(i64::MIN, MessageId::MIN),
            PgCursor::Messages(c_after, id_after) => {
                let rows = client
                    .query(
                        "SELECT m.channel, c.name, m.id, m.raw, m.source_response \
                         FROM messages m JOIN channels c ON c.id = m.channel \
                         WHERE (m.channel, m.id) > ($1, $2) AND m.content_pruned_at_ms IS NULL \
                           AND (substring(m.raw from 1 for $3) <> $4 \
                             OR substring(m.source_response from 1 for $3) <> $4) \
                         ORDER BY m.channel, m.id LIMIT $5",
                        &[&c_after, &id_after, &n, &header, &budget],
                    )
                    .map_err(pg("scanning messages to rotate"))?;
                let got = rows.len() as i64;
                let mut last = None;
                for row in rows {
                    let (channel_id, channel, id): (i64, String, MessageId) =
                        (row.get(0), row.get(1), row.get(2));
                    let raw: Vec<u8> = row.get(3);
                    let response: Option<Vec<u8>> = row.get(4);
                    let place = |stage: ContentStage| Place {
                        channel: &channel,
                        message_id: id,
                        connector: SOURCE,
                        stage: stage.as_str(),
                    };
                    let raw = if raw.starts_with(&header) {
                        raw
                    } else {
                        rotated += 1;
                        reseal(keyring, &place(ContentStage::Raw), raw)?
                    };
                    let response = match response {
                        Some(r) if !r.starts_with(&header) => {
                            rotated += 1;
                            Some(reseal(keyring, &place(ContentStage::Response), r)?)
                        }
                        other => other,
                    };
                    client
                        .execute(
                            // Not over content that retention pruning on another node
                            // deleted since the scan (the row is re-checked after its lock).
                            "UPDATE messages SET raw = $1, source_response = $2 \
                             WHERE channel = $3 AND id = $4 AND content_pruned_at_ms IS NULL",
                            &[&raw, &response, &channel_id, &id],
                        )
                        .map_err(pg("storing a re-encrypted message"))?;
                    last = Some((channel_id, id));
                }
                budget -= got;
                cursor = match last {
                    Some((c, i)) if budget == 0 => PgCursor::Messages(c, i),
                    _ => PgCursor::Content(i64::MIN, MessageId::MIN, String::new(), String::new()),
                };
            }
            PgCursor::Content(c_after, id_after, conn_after, stage_after) => {
                let rows = client
                    .query(
                        "SELECT t.channel, c.name, t.message_id, t.connector, t.stage, t.data \
                         FROM content t JOIN channels c ON c.id = t.channel \
                         WHERE (t.channel, t.message_id, t.connector, t.stage) > ($1, $2, $3, $4) \
                           AND substring(t.data from 1 for $5) <> $6 \
                         ORDER BY t.channel, t.message_id, t.connector, t.stage LIMIT $7",
                        &[
                            &c_after,
                            &id_after,
                            &conn_after,
                            &stage_after,
                            &n,
                            &header,
                            &budget,
                        ],
                    )
                    .map_err(pg("scanning content to rotate"))?;
                let got = rows.len() as i64;
                let mut last = None;
                for row in rows {
                    let (channel_id, channel, id, connector, stage): (
                        i64,
                        String,
                        MessageId,
                        String,
                        String,
                    ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
                    let place = Place {
                        channel: &channel,
                        message_id: id,
                        connector: &connector,
                        stage: &stage,
                    };
                    let data = reseal(keyring, &place, row.get(5))?;
                    rotated += 1;
                    client
                        .execute(
                            "UPDATE content SET data = $1 WHERE channel = $2 AND message_id = $3 \
                             AND connector = $4 AND stage = $5",
                            &[&data, &channel_id, &id, &connector, &stage],
                        )
                        .map_err(pg("storing re-encrypted content"))?;
                    last = Some((channel_id, id, connector, stage));
                }
                budget -= got;
                cursor = match last {
                    Some((c, i, k, s)) if budget == 0 => PgCursor::Content(c, i, k, s),
                    _ => PgCursor::Errors(i64::MIN, MessageId::MIN, String::new()),
                };
            }
            PgCursor::Errors(c_after, id_after, conn_after) => {
                let rows = client
                    .query(
                        "SELECT q.channel, c.name, q.message_id, q.connector, q.error \
                         FROM connector_messages q JOIN channels c ON c.id = q.channel \
                         WHERE (q.channel, q.message_id, q.connector) > ($1, $2, $3) \
                           AND q.error IS NOT NULL \
                         ORDER BY q.channel, q.message_id, q.connector LIMIT $4",
                        &[&c_after, &id_after, &conn_after, &budget],
                    )
                    .map_err(pg("scanning error texts to rotate"))?;
                let got = rows.len() as i64;
                let mut last = None;
                for row in rows {
                    let (channel_id, channel, id, connector, error): (
                        i64,
                        String,
                        MessageId,
                        String,
                        String,
                    ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
                    if !crypto::text_has_header(&error, &header) {
                        let place = Place {
                            channel: &channel,
                            message_id: id,
                            connector: &connector,
                            stage: ContentStage::Error.as_str(),
                        };
                        let plain = crypto::open_text(Some(keyring), &place, error)?;
                        let sealed = keyring.seal_text(&place, &plain)?;
                        rotated += 1;
                        client
                            .execute(
                                "UPDATE connector_messages SET error = $1 \
                                 WHERE channel = $2 AND message_id = $3 AND connector = $4",
                                &[&sealed, &channel_id, &id, &connector],
                            )
                            .map_err(pg("storing a re-encrypted error text"))?;
                    }
                    last = Some((channel_id, id, connector));
                }
                budget -= got;
                cursor = match last {
                    Some((c, i, k)) if budget == 0 => PgCursor::Errors(c, i, k),
                    _ => PgCursor::Metadata(i64::MIN, String::new(), Vec::new(), MessageId::MIN),
                };
            }
            PgCursor::Metadata(c_after, key_after, value_after, id_after) => {
                let rows = client
                    .query(
                        "SELECT x.channel, c.name, x.key, x.value, x.message_id, x.sealed \
                         FROM message_metadata x JOIN channels c ON c.id = x.channel \
                         WHERE (x.channel, x.key, x.value, x.message_id) > ($1, $2, $3, $4) \
                           AND (x.sealed IS NULL OR substring(x.sealed from 1 for $5) <> $6) \
                         ORDER BY x.channel, x.key, x.value, x.message_id LIMIT $7",
                        &[
                            &c_after,
                            &key_after,
                            &value_after,
                            &id_after,
                            &n,
                            &header,
                            &budget,
                        ],
                    )
                    .map_err(pg("scanning metadata to rotate"))?;
                let got = rows.len() as i64;
                let mut last = None;
                for row in rows {
                    let (channel_id, channel, key, value, id, sealed): (
                        i64,
                        String,
                        String,
                        Vec<u8>,
                        MessageId,
                        Option<Vec<u8>>,
                    ) = (
                        row.get(0),
                        row.get(1),
                        row.get(2),
                        row.get(3),
                        row.get(4),
                        row.get(5),
                    );
                    let place = Place {
                        channel: &channel,
                        message_id: id,
                        connector: &key,
                        stage: crypto::INDEX_STAGE,
                    };
                    let plain = zeroize::Zeroizing::new(match sealed {
                        Some(sealed) => crypto::open(Some(keyring), &place, sealed)?,
                        None => value.clone(),
                    });
                    let text = std::str::from_utf8(&plain).map_err(|_| {
                        StoreError::Crypto(format!("{place} decrypts to invalid UTF-8"))
                    })?;
                    let token = keyring.blind_index(&key, text).to_vec();
                    let resealed = keyring.seal(&place, &plain)?;
                    rotated += 1;
                    // The row's key changes with its blind index: replace it (a row with the
                    // new token may exist already).
                    client
                        .execute(
                            "WITH gone AS (DELETE FROM message_metadata WHERE channel = $1 \
                               AND key = $2 AND value = $3 AND message_id = $4) \
                             INSERT INTO message_metadata (channel, key, value, message_id, sealed) \
                             VALUES ($1, $2, $5, $4, $6) \
                             ON CONFLICT (channel, key, value, message_id) \
                             DO UPDATE SET sealed = excluded.sealed",
                            &[&channel_id, &key, &value, &id, &token, &resealed],
                        )
                        .map_err(pg("storing re-indexed metadata"))?;
                    last = Some((channel_id, key, value, id));
                }
                budget -= got;
                cursor = match last {
                    Some((c, k, v, i)) if budget == 0 => PgCursor::Metadata(c, k, v, i),
                    _ => PgCursor::Users(0),
                };
            }
            PgCursor::Users(after) => {
                let limit = usize::try_from(budget).unwrap_or(1);
                let batch = super::accounts::rotate_totp_batch(client, keyring, after, limit)?;
                rotated += batch.rotated;
                budget -= batch.scanned as i64;
                cursor = if batch.scanned < limit {
                    PgCursor::Done
                } else {
                    PgCursor::Users(batch.last_id)
                };
            }
            PgCursor::Done => break,
        }
    }
    Ok(PgRotated {
        next: cursor,
        rotated,
    })
}

/// How many records are not under the current key.
pub(crate) fn pending(client: &mut Client, keyring: &Keyring) -> Result<u64, StoreError> {
    let header = keyring.current_header();
    let n = header.len() as i32;
    let mut total = 0u64;
    for sql in [
        "SELECT COUNT(*) FROM messages \
         WHERE content_pruned_at_ms IS NULL AND substring(raw from 1 for $1) <> $2",
        "SELECT COUNT(*) FROM messages WHERE substring(source_response from 1 for $1) <> $2",
        "SELECT COUNT(*) FROM content WHERE substring(data from 1 for $1) <> $2",
        "SELECT COUNT(*) FROM message_metadata \
         WHERE sealed IS NULL OR substring(sealed from 1 for $1) <> $2",
    ] {
        let row = client
            .query_one(sql, &[&n, &header])
            .map_err(pg("counting records to rotate"))?;
        total += row.get::<_, i64>(0).max(0) as u64;
    }
    let rows = client
        .query(
            "SELECT error FROM connector_messages WHERE error IS NOT NULL",
            &[],
        )
        .map_err(pg("counting error texts to rotate"))?;
    for row in rows {
        if !crypto::text_has_header(row.get(0), &header) {
            total += 1;
        }
    }
    total += super::accounts::totp_pending(client, keyring)?;
    Ok(total)
}
