//! Ferry's durable message store, on SQLite.
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

mod accounts;
mod checkpoint;
mod model;
mod reader;
mod schema;
mod writer;

use std::path::Path;
use std::sync::Arc;

pub use accounts::{Accounts, NewUser, SessionRecord, TokenRecord, UserRecord};
pub use model::{
    ConnectorRecord, ContentStage, DedupeKey, DeliveryUpdate, Ingested, MessageId, MessageSummary,
    NewMessage, QueuedMessage, SOURCE, Status, StatusCount,
};
pub use writer::WriterStats;

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
}

impl StoreError {
    pub(crate) fn sqlite(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        move |source| StoreError::Sqlite { context, source }
    }
}

/// The durable store. Cheap to clone; all clones share one writer and one read pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    writer: writer::WriterHandle,
    reader: reader::ReadPool,
    checkpointer: std::sync::Mutex<checkpoint::Checkpointer>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Open (or create) the store at `path`: creates parent directories, sets WAL and
    /// `synchronous=FULL`, applies the schema, starts the writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
                context: format!("creating {}", parent.display()),
                source,
            })?;
        }
        let conn = schema::open_write(path)?;
        accounts::ensure_schema(&conn)?;
        let writer = writer::WriterHandle::start(conn)?;
        let reader = reader::ReadPool::new(path, 4)?;
        let checkpointer = std::sync::Mutex::new(checkpoint::Checkpointer::start(path)?);
        Ok(Store {
            inner: Arc::new(Inner {
                writer,
                reader,
                checkpointer,
            }),
        })
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
        match self
            .inner
            .writer
            .submit(writer::Op::Ingest(Box::new(message)))
            .await?
        {
            writer::Reply::Ingested(ingested) => Ok(ingested),
            writer::Reply::Done => Err(StoreError::Corrupt("ingest returned no id".into())),
        }
    }

    /// Record the outcome of a delivery attempt (durably, group-committed).
    pub async fn update_delivery(&self, update: DeliveryUpdate) -> Result<(), StoreError> {
        self.inner
            .writer
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
        self.inner
            .writer
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
        let (c, d) = (channel.to_owned(), destination.to_owned());
        self.inner
            .reader
            .run(move |r| r.queue_batch(&c, &d, after, limit))
            .await
    }

    /// How many messages wait in a destination's queue.
    pub async fn queue_depth(&self, channel: &str, destination: &str) -> Result<u64, StoreError> {
        let (c, d) = (channel.to_owned(), destination.to_owned());
        self.inner.reader.run(move |r| r.queue_depth(&c, &d)).await
    }

    /// The status record of one connector of one message.
    pub async fn connector(
        &self,
        channel: &str,
        id: MessageId,
        connector: &str,
    ) -> Result<Option<ConnectorRecord>, StoreError> {
        let (c, n) = (channel.to_owned(), connector.to_owned());
        self.inner
            .reader
            .run(move |r| r.connector(&c, id, &n))
            .await
    }

    /// One content stage of one connector of one message.
    pub async fn content(
        &self,
        channel: &str,
        id: MessageId,
        connector: &str,
        stage: ContentStage,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (c, n) = (channel.to_owned(), connector.to_owned());
        self.inner
            .reader
            .run(move |r| r.content(&c, id, &n, stage))
            .await
    }

    /// Message counts per connector and status.
    pub async fn status_counts(&self, channel: &str) -> Result<Vec<StatusCount>, StoreError> {
        let c = channel.to_owned();
        self.inner.reader.run(move |r| r.status_counts(&c)).await
    }

    /// Messages of a channel with an id above `after`, in id order.
    pub async fn messages(
        &self,
        channel: &str,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<MessageSummary>, StoreError> {
        let c = channel.to_owned();
        self.inner
            .reader
            .run(move |r| r.messages(&c, after, limit))
            .await
    }

    /// Counters of the group-committing writer.
    pub fn stats(&self) -> WriterStats {
        self.inner.writer.stats()
    }

    /// Flush pending writes, stop the writer, checkpoint the WAL. Later writes fail with
    /// [`StoreError::Closed`].
    pub async fn close(&self) -> Result<(), StoreError> {
        if let Ok(mut c) = self.inner.checkpointer.lock() {
            c.stop();
        }
        self.inner.writer.close().await
    }
}
