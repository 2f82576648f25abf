//! Ferry's durable message store, on SQLite ([`Store::open`]) or PostgreSQL
//! ([`Store::open_postgres`], several nodes on one database: see [`postgres`]). What follows
//! describes SQLite; the PostgreSQL backend keeps every promise with the same design.
//!
//! Every promise Ferry makes about messages rests on this crate: a message is acknowledged only
//! after [`Store::ingest`] returns, and `ingest` returns only after the transaction holding the
//! message is committed with `synchronous=FULL` in WAL mode, i.e. after fsync.
//!
//! **Group commit.** One dedicated OS thread owns the only write connection
//! ([`writer`](crate::writer)). Callers send it operations over a channel and await a oneshot
//! reply. The thread takes the first operation, then everything already waiting (up to a batch
//! limit), runs them all in one `BEGIN IMMEDIATE … COMMIT` with a savepoint per operation (one
//! bad operation fails alone), and answers all of them after the single fsync. Under load, many
//! connections share each fsync; alone, a message costs one.
//!
//! **Reads** use a small pool of read-only connections on the blocking thread pool; WAL lets
//! them run beside the writer. Queue scans read a bounded batch at a time, so memory does not
//! grow with the queue.
//!
//! A failed commit is fatal ([`StoreError::Fatal`]): the writer stops and every later write
//! fails, because acknowledging anything after a failed fsync could acknowledge a message that
//! is not on disk.
//!
//! **Encryption at rest** ([`StoreOptions::keyring`]): every blob that can hold PHI (the raw
//! message, every content stage, the maps, responses and error texts) is stored as an
//! AES-256-GCM envelope bound to its row; see [`crypto`](crate::crypto) for the format. So are
//! the admin users' TOTP secrets ([`Accounts::open_with`]). Key rotation
//! ([`Store::rotate_batch`]) re-encrypts old records, TOTP secrets included, in bounded
//! batches while the store is in use. Indexed metadata (an MRN) is stored as a keyed blind index, searchable by
//! exact value without the value being in the file.
//!
//! **Search** ([`Store::search_messages`], `search.rs`): criteria over a channel's messages,
//! walked newest first from the most selective index, bounded in matches and in rows
//! examined per request, with a keyset cursor to continue.

mod accounts;
pub mod audit;
mod checkpoint;
pub mod cluster;
pub mod crypto;
mod group_commit;
mod model;
pub mod postgres;
pub mod prune;
mod reader;
mod rotate;
mod schema;
mod search;
mod writer;

use std::path::Path;
use std::sync::Arc;

pub use accounts::{
    Accounts, BootstrapRecord, BootstrapRefusal, NewUser, SessionRecord, TokenRecord, UserRecord,
};
pub use audit::{
    AuditAction, AuditEvent, AuditFilter, AuditHead, AuditOutcome, AuditProblem, AuditRecord,
    AuditSink, ProblemKind, VerifyReport,
};
pub use crypto::{Key, Keyring};
pub use model::{
    ConnectorRecord, ContentStage, DedupeKey, DeliveryUpdate, Ingested, MessageId, MessageSummary,
    Metadata, NewMessage, QueuedMessage, SOURCE, Status, StatusCount,
};
pub use prune::{PruneProgress, PruneRule, VacuumProgress, vacuum_file};
pub use search::{
    ConnectorStatus, FoundMessage, MAX_SEARCH_EXAMINED, MAX_SEARCH_LIMIT, MessagePage, MessageQuery,
};
pub use writer::WriterStats;

/// How to open a store.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Encrypt content at rest under these keys. `None`: store plaintext (and refuse to read
    /// encrypted records, with [`StoreError::Crypto`]).
    pub keyring: Option<Keyring>,
}

/// What one [`Store::rotate_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationProgress {
    /// Records (blobs and error texts) re-encrypted under the current key by this batch.
    pub rotated: u64,
    /// The pass is complete: every record is under the current key (records written during
    /// the pass are written under it anyway). The next call starts a new pass.
    pub done: bool,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An SQLite error, with what the store was doing.
    #[error("{context}: {source}")]
    Sqlite {
        /// What the store was doing.
        context: &'static str,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// A PostgreSQL error, with what the store was doing.
    #[error("{context}: {source}")]
    Postgres {
        /// What the store was doing.
        context: &'static str,
        /// The PostgreSQL client's error.
        source: ::postgres::Error,
    },
    /// The store's configuration cannot be used (an unparsable URL, plain TCP to a remote
    /// database). Never carries a password.
    #[error("{0}")]
    Config(String),
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// A commit failed: nothing more will be written (and so nothing acknowledged).
    #[error("the store stopped after a failed commit: {0}")]
    Fatal(String),
    /// A file-system error (creating the directory).
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The database holds something the store cannot read.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// Encryption at rest: a record does not decrypt (wrong or missing key, altered or moved
    /// record), or a key is unusable. Never carries key material or content.
    #[error("encryption: {0}")]
    Crypto(String),
}

/// Read back the newest message so a wrong or missing key fails at open, not at the first
/// delivery.
fn probe(conn: &rusqlite::Connection, keyring: Option<&Keyring>) -> Result<(), StoreError> {
    use rusqlite::OptionalExtension as _;
    let newest = conn
        .query_row(
            "SELECT c.name, m.id, m.raw FROM messages m JOIN channels c ON c.id = m.channel \
             WHERE m.content_pruned_at_ms IS NULL ORDER BY m.rowid DESC LIMIT 1",
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, MessageId>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            },
        )
        .optional()
        .map_err(StoreError::sqlite("reading the newest message"))?;
    if let Some((channel, message_id, raw)) = newest {
        let place = crypto::Place {
            channel: &channel,
            message_id,
            connector: SOURCE,
            stage: ContentStage::Raw.as_str(),
        };
        crypto::open(keyring, &place, raw).map_err(|e| match e {
            StoreError::Crypto(m) => StoreError::Crypto(format!("refusing to open the store: {m}")),
            other => other,
        })?;
    }
    Ok(())
}

impl StoreError {
    pub(crate) fn postgres(context: &'static str) -> impl FnOnce(::postgres::Error) -> StoreError {
        move |source| StoreError::Postgres { context, source }
    }

    pub(crate) fn sqlite(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        move |source| StoreError::Sqlite { context, source }
    }
}

/// The durable store. Cheap to clone; all clones share one writer and one read pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Backend>,
}

/// Where a store keeps its data.
enum Backend {
    Sqlite(Inner),
    Postgres(postgres::PgStore),
}

struct Inner {
    writer: writer::WriterHandle,
    reader: reader::ReadPool,
    checkpointer: std::sync::Mutex<checkpoint::Checkpointer>,
    keyring: Option<Arc<Keyring>>,
    rotation: std::sync::Mutex<rotate::Cursor>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Open (or create) the store at `path` without encryption: creates parent directories,
    /// sets WAL and `synchronous=FULL`, applies the schema, starts the writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, StoreOptions::default())
    }

    /// [`open`](Self::open) with options (encryption at rest).
    ///
    /// The newest message is read back at open: when it is encrypted under a key the options
    /// do not hold, or does not decrypt with it (a wrong key), or the options hold no keys for
    /// an encrypted store, the store refuses to open with [`StoreError::Crypto`] naming the key
    /// id. Older records under a missing key fail when read, with the same error.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
                context: format!("creating {}", parent.display()),
                source,
            })?;
        }
        let keyring = options.keyring.map(Arc::new);
        let conn = schema::open_write(path)?;
        accounts::ensure_schema(&conn)?;
        probe(&conn, keyring.as_deref())?;
        if keyring.is_some() {
            // Deleted and overwritten content (a replaced response, a record re-encrypted by
            // rotation from plaintext) is zeroed in the file instead of left in free space.
            conn.pragma_update(None, "secure_delete", "ON")
                .map_err(StoreError::sqlite("enabling secure_delete"))?;
        }
        let writer = writer::start(conn, keyring.clone())?;
        let reader = reader::ReadPool::new(path, 4, keyring.clone())?;
        let checkpointer = std::sync::Mutex::new(checkpoint::Checkpointer::start(path)?);
        Ok(Store {
            inner: Arc::new(Backend::Sqlite(Inner {
                writer,
                reader,
                checkpointer,
                keyring,
                rotation: std::sync::Mutex::new(rotate::Cursor::Start),
            })),
        })
    }

    /// Open the store in a PostgreSQL database (created tables if missing), shared with any
    /// other Ferry node that opens the same database: ids, duplicate detection and the audit
    /// chain stay consistent across nodes (see [`postgres`]). Encryption at rest as
    /// [`open_with`](Self::open_with), with the same newest-message check at open.
    ///
    /// Blocking (it connects): call it from a plain thread or `spawn_blocking`, never on an
    /// async worker thread.
    ///
    /// # Errors
    /// [`StoreError::Config`] for an unusable URL, [`StoreError::Postgres`] when the server
    /// cannot be reached or refuses, [`StoreError::Crypto`] as `open_with`.
    pub fn open_postgres(
        pg: postgres::PgOptions,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        Ok(Store {
            inner: Arc::new(Backend::Postgres(postgres::PgStore::open(pg, options)?)),
        })
    }

    /// Whether this store is on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(&*self.inner, Backend::Postgres(_))
    }

    /// Whether the store encrypts at rest, and under which key id.
    pub fn current_key_id(&self) -> Option<&str> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.current_key_id(),
        };
        s.keyring.as_deref().map(Keyring::current_id)
    }

    /// Re-encrypt up to `limit` records that are not under the current key (older keys, or
    /// plaintext from before encryption was enabled), in one write transaction through the
    /// writer, so it is safe while the engine ingests and delivers. Call until
    /// [`RotationProgress::done`]. A record that does not decrypt stops the pass with
    /// [`StoreError::Crypto`] naming it; the next call retries from the same place.
    pub async fn rotate_batch(&self, limit: usize) -> Result<RotationProgress, StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.rotate_batch(limit).await,
        };
        let cursor = s.rotation.lock().map(|c| c.clone()).unwrap_or_default();
        let cursor = if cursor == rotate::Cursor::Done {
            rotate::Cursor::Start
        } else {
            cursor
        };
        let reply = s
            .writer
            .submit(writer::Op::Rotate { cursor, limit })
            .await?;
        let writer::Reply::Rotated(r) = reply else {
            return Err(StoreError::Corrupt("rotation returned no progress".into()));
        };
        let done = r.next == rotate::Cursor::Done;
        if let Ok(mut c) = s.rotation.lock() {
            *c = r.next;
        }
        Ok(RotationProgress {
            rotated: r.rotated,
            done,
        })
    }

    /// How many records are not under the current key: a full scan, for progress reports.
    /// Fails with [`StoreError::Crypto`] when the store does not encrypt.
    pub async fn rotation_pending(&self) -> Result<u64, StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.rotation_pending().await,
        };
        let Some(keyring) = s.keyring.clone() else {
            return Err(StoreError::Crypto(
                "key rotation needs [store] encryption to be configured".into(),
            ));
        };
        s.reader
            .run(move |r| rotate::pending(r.connection(), &keyring))
            .await
    }

    /// Store a received message, its source status and one `QUEUED` row per destination, in one
    /// transaction. Returns the channel-local id once the commit is durable (for a duplicate,
    /// see [`ingest_checked`](Self::ingest_checked), the duplicate's own id).
    pub async fn ingest(&self, message: NewMessage) -> Result<MessageId, StoreError> {
        self.ingest_checked(message).await.map(|i| i.id())
    }

    /// [`ingest`](Self::ingest), telling whether the message was a duplicate
    /// ([`NewMessage::dedupe`]). The duplicate check and the insert run in the same write
    /// transaction on the single writer thread, so of concurrent ingests of one key exactly one
    /// is [`Ingested::Stored`].
    pub async fn ingest_checked(&self, message: NewMessage) -> Result<Ingested, StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.ingest_checked(message).await,
        };
        match s
            .writer
            .submit(writer::Op::Ingest(Box::new(message)))
            .await?
        {
            writer::Reply::Ingested(ingested) => Ok(ingested),
            _ => Err(StoreError::Corrupt("ingest returned no id".into())),
        }
    }

    /// Record the outcome of a delivery attempt (durably, group-committed).
    pub async fn update_delivery(&self, update: DeliveryUpdate) -> Result<(), StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.update_delivery(update).await,
        };
        s.writer
            .submit(writer::Op::Delivery(update))
            .await
            .map(|_| ())
    }

    /// Replace the response stored for a message's source: what the sender was finally
    /// answered when it differs from what was known at ingest (a relayed downstream ACK).
    pub async fn set_source_response(
        &self,
        channel: &str,
        id: MessageId,
        response: Vec<u8>,
    ) -> Result<(), StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.set_source_response(channel, id, response).await,
        };
        s.writer
            .submit(writer::Op::SourceResponse {
                channel: channel.to_owned(),
                id,
                response,
            })
            .await
            .map(|_| ())
    }

    /// The next `QUEUED` messages of a destination with an id above `after`, in id order.
    pub async fn queue_batch(
        &self,
        channel: &str,
        destination: &str,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.queue_batch(channel, destination, after, limit).await,
        };
        let (c, d) = (channel.to_owned(), destination.to_owned());
        s.reader
            .run(move |r| r.queue_batch(&c, &d, after, limit))
            .await
    }

    /// How many messages wait in a destination's queue.
    pub async fn queue_depth(&self, channel: &str, destination: &str) -> Result<u64, StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.queue_depth(channel, destination).await,
        };
        let (c, d) = (channel.to_owned(), destination.to_owned());
        s.reader.run(move |r| r.queue_depth(&c, &d)).await
    }

    /// The status record of one connector of one message.
    pub async fn connector(
        &self,
        channel: &str,
        id: MessageId,
        connector: &str,
    ) -> Result<Option<ConnectorRecord>, StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.connector(channel, id, connector).await,
        };
        let (c, n) = (channel.to_owned(), connector.to_owned());
        s.reader.run(move |r| r.connector(&c, id, &n)).await
    }

    /// One content stage of one connector of one message.
    pub async fn content(
        &self,
        channel: &str,
        id: MessageId,
        connector: &str,
        stage: ContentStage,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.content(channel, id, connector, stage).await,
        };
        let (c, n) = (channel.to_owned(), connector.to_owned());
        s.reader.run(move |r| r.content(&c, id, &n, stage)).await
    }

    /// Message counts per connector and status.
    pub async fn status_counts(&self, channel: &str) -> Result<Vec<StatusCount>, StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.status_counts(channel).await,
        };
        let c = channel.to_owned();
        s.reader.run(move |r| r.status_counts(&c)).await
    }

    /// Messages of a channel with an id above `after`, in id order.
    pub async fn messages(
        &self,
        channel: &str,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<MessageSummary>, StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.messages(channel, after, limit).await,
        };
        let c = channel.to_owned();
        s.reader.run(move |r| r.messages(&c, after, limit)).await
    }

    /// Messages of a channel matching `query`, newest first, one bounded page: at most
    /// `query.limit` matches and `query.max_examined` rows examined, with the cursor to
    /// continue (see [`MessagePage::next_before_id`]). Content is decrypted only to be
    /// searched (`text`) or returned (`with_raw`).
    pub async fn search_messages(&self, query: MessageQuery) -> Result<MessagePage, StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.search_messages(query).await,
        };
        s.reader
            .run(move |r| search::search(r.connection(), r.keyring(), &query))
            .await
    }

    /// Seal `event` into the audit chain. Returns the record once it is durable (group-committed
    /// with whatever else is being written, like every write).
    pub async fn audit_append(&self, event: AuditEvent) -> Result<AuditRecord, StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.audit_append(event).await,
        };
        match s.writer.submit(writer::Op::Audit(Box::new(event))).await? {
            writer::Reply::Audited(record) => Ok(*record),
            _ => Err(StoreError::Corrupt(
                "audit append returned no record".into(),
            )),
        }
    }

    /// Audit records matching `filter`, in sequence order.
    pub async fn audit_search(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.audit_search(filter).await,
        };
        s.reader
            .run(move |r| audit::search(r.connection(), &filter))
            .await
    }

    /// Check the whole audit chain (see [`audit`] for what it finds and cannot find).
    pub async fn audit_verify(&self) -> Result<VerifyReport, StoreError> {
        self.audit_verify_expecting(None).await
    }

    /// [`audit_verify`](Self::audit_verify), also requiring that a head recorded earlier
    /// outside the database (a hash, or `seq:hash` as [`AuditHead`] prints) is a record of the
    /// chain.
    pub async fn audit_verify_expecting(
        &self,
        expect_head: Option<String>,
    ) -> Result<VerifyReport, StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.audit_verify_expecting(expect_head).await,
        };
        s.reader
            .run(move |r| audit::verify(r.connection(), expect_head.as_deref()))
            .await
    }

    /// The last audit record shipped to the external collector (0 when none was): shipping
    /// resumes after it, so records written while the collector was down are sent once it is
    /// back.
    pub async fn audit_shipped_upto(&self) -> Result<i64, StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.audit_shipped_upto().await,
        };
        s.reader.run(|r| audit::shipped_upto(r.connection())).await
    }

    /// Durably record that the collector has every audit record up to `seq` (the cursor
    /// never moves back).
    pub async fn audit_set_shipped(&self, seq: i64) -> Result<(), StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.audit_set_shipped(seq).await,
        };
        s.writer
            .submit(writer::Op::AuditShipped(seq))
            .await
            .map(|_| ())
    }

    /// Counters of the group-committing writer.
    pub fn stats(&self) -> WriterStats {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.stats(),
        };
        s.writer.stats()
    }

    /// Flush pending writes, stop the writer, checkpoint the WAL. Later writes fail with
    /// [`StoreError::Closed`].
    pub async fn close(&self) -> Result<(), StoreError> {
        let s = match &*self.inner {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => return p.close().await,
        };
        if let Ok(mut c) = s.checkpointer.lock() {
            c.stop();
        }
        s.writer.close().await
    }
}
