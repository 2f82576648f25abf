//! Connection setup and schema migrations.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::StoreError;

/// Schema version 1. `channels` maps names to small integers so rows do not repeat names;
/// the partial index over `QUEUED` rows keeps the queue scan proportional to the queue. The
/// raw message and the source's response live in the `messages` row (one B-tree insert per
/// message on the hot path); other content stages go to `content`. Tables holding blobs are
/// rowid tables: SQLite's `WITHOUT ROWID` is slow for rows of a kilobyte or more.
const SCHEMA_V1: &str = "
CREATE TABLE channels (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
) STRICT;
CREATE TABLE messages (
    channel         INTEGER NOT NULL,
    id              INTEGER NOT NULL,
    received_at_ms  INTEGER NOT NULL,
    control_id      TEXT,
    message_type    TEXT,
    raw             BLOB NOT NULL,
    source_response BLOB,
    PRIMARY KEY (channel, id)
) STRICT;
CREATE TABLE connector_messages (
    channel       INTEGER NOT NULL,
    message_id    INTEGER NOT NULL,
    connector     TEXT NOT NULL,
    status        TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    error         TEXT,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, message_id, connector)
) STRICT, WITHOUT ROWID;
CREATE INDEX connector_messages_queued
    ON connector_messages (channel, connector, message_id)
    WHERE status = 'QUEUED';
CREATE TABLE content (
    channel    INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    connector  TEXT NOT NULL,
    stage      TEXT NOT NULL,
    data       BLOB NOT NULL,
    PRIMARY KEY (channel, message_id, connector, stage)
) STRICT;
";

/// Schema version 2: duplicate detection. `dedupe_key` is set only on messages that were
/// dispatched under a channel's dedupe window; the partial index serves the lookup
/// "same channel, same key, received since" inside the writer's transaction.
const SCHEMA_V2: &str = "
ALTER TABLE messages ADD COLUMN dedupe_key TEXT;
CREATE INDEX messages_dedupe
    ON messages (channel, dedupe_key, received_at_ms)
    WHERE dedupe_key IS NOT NULL;
";

/// Schema version 3: message search. `message_metadata` holds each message's indexed values
/// (the channel's `index`: an MRN, a visit number), its primary key serving "this channel,
/// this key, this value, newest first"; `value` is the text, or under encryption at rest a
/// keyed blind index with the sealed text in `sealed` (see `crypto.rs`). Small rows, so a
/// `WITHOUT ROWID` table: the row is the index. `messages_control_id` serves MSH-10 search.
const SCHEMA_V3: &str = "
CREATE TABLE message_metadata (
    channel    INTEGER NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,
    message_id INTEGER NOT NULL,
    sealed     BLOB,
    PRIMARY KEY (channel, key, value, message_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX messages_control_id ON messages (channel, control_id, id);
";

/// Schema version 4: retention pruning (`prune.rs`). `content_pruned_at_ms` marks a message
/// whose content was deleted by retention (its `raw` is then empty, its response gone) while
/// its metadata stays browsable; `channels.max_deleted_id` remembers the highest id pruning
/// deleted, so a channel whose every message was pruned never hands out an id again. The two
/// indexes on `received_at_ms` find the oldest messages without a table scan (the partial one
/// only those whose content is still there), and `message_metadata_message` finds a message's
/// search rows when it is deleted.
const SCHEMA_V4: &str = "
ALTER TABLE messages ADD COLUMN content_pruned_at_ms INTEGER;
ALTER TABLE channels ADD COLUMN max_deleted_id INTEGER NOT NULL DEFAULT 0;
CREATE INDEX messages_received ON messages (channel, received_at_ms);
CREATE INDEX messages_content_kept ON messages (channel, received_at_ms)
    WHERE content_pruned_at_ms IS NULL;
CREATE INDEX message_metadata_message ON message_metadata (channel, message_id);
";

/// The newest schema version.
const VERSION: i64 = 4;

/// The settings every connection that writes uses: WAL, `synchronous=FULL`, a busy timeout.
pub(crate) fn pragmas(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(StoreError::sqlite("setting busy_timeout"))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(StoreError::sqlite("enabling WAL"))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(StoreError::sqlite("setting synchronous=FULL"))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(StoreError::sqlite("enabling foreign keys"))?;
    Ok(())
}

/// Open the connection of the background checkpointer.
pub(crate) fn open_checkpointer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(StoreError::sqlite("opening the checkpointer"))?;
    pragmas(&conn)?;
    Ok(conn)
}

/// Open the write connection and bring the schema up to date.
pub(crate) fn open_write(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(StoreError::sqlite("opening the store"))?;
    // Before WAL: switching to WAL writes the database header, after which SQLite no longer
    // accepts an auto_vacuum change.
    fresh_auto_vacuum(&conn)?;
    pragmas(&conn)?;
    // Checkpoints run on their own thread (see `checkpoint.rs`), never inside a commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(StoreError::sqlite("disabling inline checkpoints"))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(StoreError::sqlite("reading the schema version"))?;
    // Each migration runs with the ones after it in one transaction: a store is at one
    // version or the next, never between.
    let migrations = match version {
        0 => format!("{SCHEMA_V1}{SCHEMA_V2}{SCHEMA_V3}{SCHEMA_V4}"),
        1 => format!("{SCHEMA_V2}{SCHEMA_V3}{SCHEMA_V4}"),
        2 => format!("{SCHEMA_V3}{SCHEMA_V4}"),
        3 => SCHEMA_V4.to_owned(),
        VERSION => String::new(),
        v => {
            return Err(StoreError::Corrupt(format!(
                "schema version {v} is newer than this Ferry understands ({VERSION})"
            )));
        }
    };
    if !migrations.is_empty() {
        conn.execute_batch(&format!(
            "BEGIN;{migrations}PRAGMA user_version = {VERSION};COMMIT;"
        ))
        .map_err(StoreError::sqlite("migrating the schema"))?;
    }
    // Tables outside the versioned schema: each module creates its own if missing.
    conn.execute_batch(crate::audit::AUDIT_SCHEMA)
        .map_err(StoreError::sqlite("creating the audit tables"))?;
    Ok(conn)
}

/// On a database without tables yet, switch to `auto_vacuum = INCREMENTAL`, which SQLite
/// accepts only before the first table exists: pages freed by retention pruning can then be
/// handed back to the file system with `PRAGMA incremental_vacuum` in bounded steps. A store
/// created by an older Ferry keeps `auto_vacuum = NONE` (its free pages are reused, the file
/// does not shrink) until one `VACUUM` (`ferry prune --vacuum`) rewrites it.
fn fresh_auto_vacuum(conn: &Connection) -> Result<(), StoreError> {
    let tables: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(StoreError::sqlite("inspecting a new store"))?;
    if tables == 0 {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(StoreError::sqlite("enabling incremental auto_vacuum"))?;
    }
    Ok(())
}

/// Open a read-only connection.
pub(crate) fn open_read(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(StoreError::sqlite("opening a read connection"))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(StoreError::sqlite("setting busy_timeout"))?;
    Ok(conn)
}
