//! Key rotation: re-encrypt, in bounded batches, every record not under the current key.
//!
//! A batch runs on the writer thread inside one write transaction, like any other write, so
//! it cannot race the engine's own writes to the same rows; in a second process (`ferry keys
//! rotate` beside a running `ferry run`) SQLite's write lock serializes the two writers and
//! each waits for the other's short transaction (busy_timeout, 10 s; a batch holds the lock for
//! milliseconds).
//!
//! The pass walks `messages` (by rowid), then `content` (by rowid), then the error texts of
//! `connector_messages` (by primary key), then the indexed metadata (by primary key: a row's
//! blind index is recomputed under the new key from its sealed value, or from the value
//! itself for a row written before encryption was enabled), then the TOTP secrets of
//! `admin_users` (by id). Rows already under the current key are skipped in
//! SQL by their envelope header, so an interrupted rotation resumes by starting again: it
//! only re-reads headers of the rows done before.

use rusqlite::{Connection, params};

use crate::StoreError;
use crate::accounts;
use crate::crypto::{self, Keyring, Place};
use crate::model::{ContentStage, MessageId, SOURCE};

/// Where a rotation pass is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// Nothing done yet.
    #[default]
    Start,
    /// In `messages`, after this rowid.
    Messages(i64),
    /// In `content`, after this rowid.
    Content(i64),
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
pub(crate) struct Rotated {
    /// Where the next batch starts.
    pub next: Cursor,
    /// Records (blobs or texts) re-encrypted.
    pub rotated: u64,
}

fn reseal(keyring: &Keyring, place: &Place<'_>, blob: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    let plain = zeroize::Zeroizing::new(crypto::open(Some(keyring), place, blob)?);
    keyring.seal(place, &plain)
}

/// Run one batch of at most `limit` rows from `cursor` on the writer's connection (inside its
/// transaction).
pub(crate) fn batch(
    conn: &Connection,
    keyring: &Keyring,
    cursor: &Cursor,
    limit: usize,
) -> Result<Rotated, StoreError> {
    let header = keyring.current_header();
    let limit = limit.max(1);
    let mut budget = limit;
    let mut rotated = 0u64;
    let mut cursor = match cursor {
        Cursor::Start => Cursor::Messages(0),
        c => c.clone(),
    };
    let n = header.len() as i64;
    while budget > 0 {
        match &cursor {
            Cursor::Start => cursor = Cursor::Messages(0),
            Cursor::Messages(after) => {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT m.rowid, c.name, m.id, m.raw, m.source_response \
                         FROM messages m JOIN channels c ON c.id = m.channel \
                         WHERE m.rowid > ?1 AND m.content_pruned_at_ms IS NULL \
                           AND (substr(m.raw, 1, ?2) IS NOT ?3 \
                           OR (m.source_response IS NOT NULL \
                               AND substr(m.source_response, 1, ?2) IS NOT ?3)) \
                         ORDER BY m.rowid LIMIT ?4",
                    )
                    .map_err(StoreError::sqlite("preparing the rotation of messages"))?;
                let rows = stmt
                    .query_map(params![after, n, header, budget as i64], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, MessageId>(2)?,
                            r.get::<_, Vec<u8>>(3)?,
                            r.get::<_, Option<Vec<u8>>>(4)?,
                        ))
                    })
                    .map_err(StoreError::sqlite("scanning messages to rotate"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(StoreError::sqlite("reading a message to rotate"))?;
                let got = rows.len();
                let mut last = *after;
                for (rowid, channel, id, raw, response) in rows {
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
                    conn.prepare_cached(
                        "UPDATE messages SET raw = ?1, source_response = ?2 WHERE rowid = ?3",
                    )
                    .and_then(|mut s| s.execute(params![raw, response, rowid]))
                    .map_err(StoreError::sqlite("storing a re-encrypted message"))?;
                    last = rowid;
                }
                budget -= got;
                cursor = if got == 0 || budget > 0 {
                    Cursor::Content(0)
                } else {
                    Cursor::Messages(last)
                };
            }
            Cursor::Content(after) => {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT t.rowid, c.name, t.message_id, t.connector, t.stage, t.data \
                         FROM content t JOIN channels c ON c.id = t.channel \
                         WHERE t.rowid > ?1 AND substr(t.data, 1, ?2) IS NOT ?3 \
                         ORDER BY t.rowid LIMIT ?4",
                    )
                    .map_err(StoreError::sqlite("preparing the rotation of content"))?;
                let rows = stmt
                    .query_map(params![after, n, header, budget as i64], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, MessageId>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, Vec<u8>>(5)?,
                        ))
                    })
                    .map_err(StoreError::sqlite("scanning content to rotate"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(StoreError::sqlite("reading content to rotate"))?;
                let got = rows.len();
                let mut last = *after;
                for (rowid, channel, id, connector, stage, data) in rows {
                    let place = Place {
                        channel: &channel,
                        message_id: id,
                        connector: &connector,
                        stage: &stage,
                    };
                    let data = reseal(keyring, &place, data)?;
                    rotated += 1;
                    conn.prepare_cached("UPDATE content SET data = ?1 WHERE rowid = ?2")
                        .and_then(|mut s| s.execute(params![data, rowid]))
                        .map_err(StoreError::sqlite("storing re-encrypted content"))?;
                    last = rowid;
                }
                budget -= got;
                cursor = if got == 0 || budget > 0 {
                    Cursor::Errors(i64::MIN, MessageId::MIN, String::new())
                } else {
                    Cursor::Content(last)
                };
            }
            Cursor::Errors(channel_after, id_after, connector_after) => {
                // Error texts are base64, so their key id cannot be matched in SQL: rows with an
                // error are read (up to the budget) and those under the current key skipped.
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT q.channel, c.name, q.message_id, q.connector, q.error \
                         FROM connector_messages q JOIN channels c ON c.id = q.channel \
                         WHERE (q.channel, q.message_id, q.connector) > (?1, ?2, ?3) \
                           AND q.error IS NOT NULL \
                         ORDER BY q.channel, q.message_id, q.connector LIMIT ?4",
                    )
                    .map_err(StoreError::sqlite("preparing the rotation of error texts"))?;
                let rows = stmt
                    .query_map(
                        params![channel_after, id_after, connector_after, budget as i64],
                        |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, MessageId>(2)?,
                                r.get::<_, String>(3)?,
                                r.get::<_, String>(4)?,
                            ))
                        },
                    )
                    .map_err(StoreError::sqlite("scanning error texts to rotate"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(StoreError::sqlite("reading an error text to rotate"))?;
                let got = rows.len();
                let mut last = None;
                for (channel_id, channel, id, connector, error) in rows {
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
                        conn.prepare_cached(
                            "UPDATE connector_messages SET error = ?1 \
                             WHERE channel = ?2 AND message_id = ?3 AND connector = ?4",
                        )
                        .and_then(|mut s| s.execute(params![sealed, channel_id, id, connector]))
                        .map_err(StoreError::sqlite("storing a re-encrypted error text"))?;
                    }
                    last = Some((channel_id, id, connector));
                }
                budget -= got;
                cursor = match last {
                    Some((c, i, n)) if budget == 0 => Cursor::Errors(c, i, n),
                    _ => Cursor::Metadata(i64::MIN, String::new(), Vec::new(), MessageId::MIN),
                };
            }
            Cursor::Metadata(channel_after, key_after, value_after, id_after) => {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT x.channel, c.name, x.key, x.value, x.message_id, x.sealed \
                         FROM message_metadata x JOIN channels c ON c.id = x.channel \
                         WHERE (x.channel, x.key, x.value, x.message_id) > (?1, ?2, ?3, ?4) \
                           AND (x.sealed IS NULL OR substr(x.sealed, 1, ?5) IS NOT ?6) \
                         ORDER BY x.channel, x.key, x.value, x.message_id LIMIT ?7",
                    )
                    .map_err(StoreError::sqlite("preparing the rotation of metadata"))?;
                let rows = stmt
                    .query_map(
                        params![
                            channel_after,
                            key_after,
                            value_after,
                            id_after,
                            n,
                            header,
                            budget as i64
                        ],
                        |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, String>(2)?,
                                r.get::<_, Vec<u8>>(3)?,
                                r.get::<_, MessageId>(4)?,
                                r.get::<_, Option<Vec<u8>>>(5)?,
                            ))
                        },
                    )
                    .map_err(StoreError::sqlite("scanning metadata to rotate"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(StoreError::sqlite("reading metadata to rotate"))?;
                let got = rows.len();
                let mut last = None;
                for (channel_id, channel, key, value, id, sealed) in rows {
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
                    let token = keyring.blind_index(&key, text);
                    let resealed = keyring.seal(&place, &plain)?;
                    rotated += 1;
                    conn.prepare_cached(
                        "UPDATE OR REPLACE message_metadata SET value = ?1, sealed = ?2 \
                         WHERE channel = ?3 AND key = ?4 AND value = ?5 AND message_id = ?6",
                    )
                    .and_then(|mut s| {
                        s.execute(params![&token[..], resealed, channel_id, key, value, id])
                    })
                    .map_err(StoreError::sqlite("storing re-indexed metadata"))?;
                    last = Some((channel_id, key, value, id));
                }
                budget -= got;
                cursor = match last {
                    Some((c, k, v, i)) if budget == 0 => Cursor::Metadata(c, k, v, i),
                    _ => Cursor::Users(0),
                };
            }
            Cursor::Users(after) => {
                // Sealed secrets are base64 text too: read and skip those under the current key.
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT id, name, totp_secret FROM admin_users \
                         WHERE id > ?1 AND totp_secret IS NOT NULL ORDER BY id LIMIT ?2",
                    )
                    .map_err(StoreError::sqlite("preparing the rotation of TOTP secrets"))?;
                let rows = stmt
                    .query_map(params![after, budget as i64], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                        ))
                    })
                    .map_err(StoreError::sqlite("scanning TOTP secrets to rotate"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(StoreError::sqlite("reading a TOTP secret to rotate"))?;
                let got = rows.len();
                let mut last = *after;
                for (id, name, secret) in rows {
                    if !crypto::text_has_header(&secret, &header) {
                        let field = accounts::totp_field(&name);
                        let plain = zeroize::Zeroizing::new(crypto::open_text(
                            Some(keyring),
                            &field,
                            secret,
                        )?);
                        let sealed = keyring.seal_text(&field, &plain)?;
                        rotated += 1;
                        conn.prepare_cached(
                            "UPDATE admin_users SET totp_secret = ?1 WHERE id = ?2",
                        )
                        .and_then(|mut s| s.execute(params![sealed, id]))
                        .map_err(StoreError::sqlite("storing a re-encrypted TOTP secret"))?;
                    }
                    last = id;
                }
                budget -= got;
                cursor = if got == 0 || budget > 0 {
                    Cursor::Done
                } else {
                    Cursor::Users(last)
                };
            }
            Cursor::Done => break,
        }
    }
    Ok(Rotated {
        next: cursor,
        rotated,
    })
}

/// How many records are not under the current key (a full scan: for the CLI's progress).
pub(crate) fn pending(conn: &Connection, keyring: &Keyring) -> Result<u64, StoreError> {
    let header = keyring.current_header();
    let n = header.len() as i64;
    let count = |sql: &str| -> Result<u64, StoreError> {
        conn.query_row(sql, params![n, header], |r| r.get::<_, i64>(0))
            .map(|c| c.max(0) as u64)
            .map_err(StoreError::sqlite("counting records to rotate"))
    };
    let mut total = count(
        "SELECT COUNT(*) FROM messages \
         WHERE content_pruned_at_ms IS NULL AND substr(raw, 1, ?1) IS NOT ?2",
    )?;
    total += count(
        "SELECT COUNT(*) FROM messages WHERE source_response IS NOT NULL \
         AND substr(source_response, 1, ?1) IS NOT ?2",
    )?;
    total += count("SELECT COUNT(*) FROM content WHERE substr(data, 1, ?1) IS NOT ?2")?;
    total += count(
        "SELECT COUNT(*) FROM message_metadata \
         WHERE sealed IS NULL OR substr(sealed, 1, ?1) IS NOT ?2",
    )?;
    let mut stmt = conn
        .prepare("SELECT error FROM connector_messages WHERE error IS NOT NULL")
        .map_err(StoreError::sqlite("counting error texts to rotate"))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(StoreError::sqlite("counting error texts to rotate"))?;
    for row in rows {
        let text = row.map_err(StoreError::sqlite("counting error texts to rotate"))?;
        if !crypto::text_has_header(&text, &header) {
            total += 1;
        }
    }
    let mut stmt = conn
        .prepare("SELECT totp_secret FROM admin_users WHERE totp_secret IS NOT NULL")
        .map_err(StoreError::sqlite("counting TOTP secrets to rotate"))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(StoreError::sqlite("counting TOTP secrets to rotate"))?;
    for row in rows {
        let text = row.map_err(StoreError::sqlite("counting TOTP secrets to rotate"))?;
        if !crypto::text_has_header(&text, &header) {
            total += 1;
        }
    }
    Ok(total)
}
