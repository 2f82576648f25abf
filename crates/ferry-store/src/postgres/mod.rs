//! The PostgreSQL backend: several Ferry nodes share one database.
//!
//! [`conn`] opens connections (plain on loopback, TLS with hostname verification otherwise).
//! The SQL for each concern lives beside its SQLite counterpart's name: `postgres/<concern>.rs`
//! mirrors `<concern>.rs`. [`Store::open_postgres`](crate::Store::open_postgres) opens it;
//! every method of [`Store`](crate::Store) then runs here with the same semantics as on SQLite
//! (see `schema.rs` for what several nodes on one database add).

pub(crate) mod accounts;
mod audit;
pub(crate) mod cluster;
pub mod conn;
mod prune;
mod reader;
mod rotate;
mod schema;
mod search;
mod writer;

use std::sync::{Arc, Mutex};

pub use conn::{PgOptions, connect};

use crate::crypto::Keyring;
use crate::model::{
    ConnectorRecord, ContentStage, DeliveryUpdate, Ingested, MessageId, MessageSummary, NewMessage,
    QueuedMessage, StatusCount,
};
use crate::prune::{PruneProgress, PruneRule, VacuumProgress};
use crate::search::{MessagePage, MessageQuery};
use crate::{
    AuditEvent, AuditFilter, AuditRecord, RotationProgress, StoreError, StoreOptions, VerifyReport,
    WriterStats,
};

/// Idle read connections kept.
const READERS: usize = 4;

/// The PostgreSQL side of a [`Store`](crate::Store).
pub(crate) struct PgStore {
    writer: writer::WriterHandle,
    reader: reader::ReadPool,
    keyring: Option<Arc<Keyring>>,
    rotation: Mutex<rotate::PgCursor>,
}

impl PgStore {
    /// Connect (writer and first reader), create missing tables, read the newest message
    /// back under the keyring, start the writer thread. Blocking: call it off the async
    /// threads (see [`Store::open_postgres`](crate::Store::open_postgres)).
    pub(crate) fn open(pg: PgOptions, options: StoreOptions) -> Result<PgStore, StoreError> {
        // The synchronous client panics on a thread that drives async tasks: connect on a
        // thread of its own, wherever the caller is.
        std::thread::scope(|s| {
            s.spawn(move || PgStore::open_here(pg, options))
                .join()
                .unwrap_or_else(|_| Err(StoreError::Corrupt("opening the store panicked".into())))
        })
    }

    fn open_here(pg: PgOptions, options: StoreOptions) -> Result<PgStore, StoreError> {
        let keyring = options.keyring.map(Arc::new);
        let mut client = reader::open(&pg)?;
        schema::apply(&mut client)?;
        accounts::ensure_schema(&mut client)?;
        let mut first = reader::open(&pg)?;
        reader::Reader {
            client: &mut first,
            keyring: keyring.as_deref(),
        }
        .probe()?;
        let writer = writer::start(client, pg.clone(), keyring.clone())?;
        let reader = reader::ReadPool::new(pg, first, READERS, keyring.clone());
        Ok(PgStore {
            writer,
            reader,
            keyring,
            rotation: Mutex::new(rotate::PgCursor::Start),
        })
    }

    pub(crate) fn current_key_id(&self) -> Option<&str> {
        self.keyring.as_deref().map(Keyring::current_id)
    }

    pub(crate) async fn rotate_batch(&self, limit: usize) -> Result<RotationProgress, StoreError> {
        let cursor = self.rotation.lock().map(|c| c.clone()).unwrap_or_default();
        let cursor = if cursor == rotate::PgCursor::Done {
            rotate::PgCursor::Start
        } else {
            cursor
        };
        let writer::Reply::Rotated(r) = self
            .writer
            .submit(writer::Op::Rotate { cursor, limit })
            .await?
        else {
            return Err(StoreError::Corrupt("rotation returned no progress".into()));
        };
        let done = r.next == rotate::PgCursor::Done;
        if let Ok(mut c) = self.rotation.lock() {
            *c = r.next;
        }
        Ok(RotationProgress {
            rotated: r.rotated,
            done,
        })
    }

    pub(crate) async fn rotation_pending(&self) -> Result<u64, StoreError> {
        let Some(keyring) = self.keyring.clone() else {
            return Err(StoreError::Crypto(
                "key rotation needs [store] encryption to be configured".into(),
            ));
        };
        self.reader
            .run(move |r| rotate::pending(r.client, &keyring))
            .await
    }

    pub(crate) async fn ingest_checked(&self, message: NewMessage) -> Result<Ingested, StoreError> {
        match self
            .writer
            .submit(writer::Op::Ingest(Box::new(message)))
            .await?
        {
            writer::Reply::Ingested(ingested) => Ok(ingested),
            _ => Err(StoreError::Corrupt("ingest returned no id".into())),
        }
    }

    pub(crate) async fn update_delivery(&self, update: DeliveryUpdate) -> Result<(), StoreError> {
        self.writer
            .submit(writer::Op::Delivery(update))
            .await
            .map(|_| ())
    }

    pub(crate) async fn set_source_response(
        &self,
        channel: &str,
        id: MessageId,
        response: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.writer
            .submit(writer::Op::SourceResponse {
                channel: channel.to_owned(),
                id,
                response,
            })
            .await
            .map(|_| ())
    }

    pub(crate) async fn queue_batch(
        &self,
        channel: &str,
        destination: &str,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let (c, d) = (channel.to_owned(), destination.to_owned());
        self.reader
            .run(move |r| r.queue_batch(&c, &d, after, limit))
            .await
    }

    pub(crate) async fn queue_depth(
        &self,
        channel: &str,
        destination: &str,
    ) -> Result<u64, StoreError> {
        let (c, d) = (channel.to_owned(), destination.to_owned());
        self.reader.run(move |r| r.queue_depth(&c, &d)).await
    }

    pub(crate) async fn connector(
        &self,
        channel: &str,
        id: MessageId,
        connector: &str,
    ) -> Result<Option<ConnectorRecord>, StoreError> {
        let (c, n) = (channel.to_owned(), connector.to_owned());
        self.reader.run(move |r| r.connector(&c, id, &n)).await
    }

    pub(crate) async fn content(
        &self,
        channel: &str,
        id: MessageId,
        connector: &str,
        stage: ContentStage,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (c, n) = (channel.to_owned(), connector.to_owned());
        self.reader.run(move |r| r.content(&c, id, &n, stage)).await
    }

    pub(crate) async fn status_counts(
        &self,
        channel: &str,
    ) -> Result<Vec<StatusCount>, StoreError> {
        let c = channel.to_owned();
        self.reader.run(move |r| r.status_counts(&c)).await
    }

    pub(crate) async fn messages(
        &self,
        channel: &str,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<MessageSummary>, StoreError> {
        let c = channel.to_owned();
        self.reader.run(move |r| r.messages(&c, after, limit)).await
    }

    pub(crate) async fn search_messages(
        &self,
        query: MessageQuery,
    ) -> Result<MessagePage, StoreError> {
        self.reader
            .run(move |r| search::search(r.client, r.keyring, &query))
            .await
    }

    pub(crate) async fn audit_append(&self, event: AuditEvent) -> Result<AuditRecord, StoreError> {
        match self
            .writer
            .submit(writer::Op::Audit(Box::new(event)))
            .await?
        {
            writer::Reply::Audited(record) => Ok(*record),
            _ => Err(StoreError::Corrupt(
                "audit append returned no record".into(),
            )),
        }
    }

    pub(crate) async fn audit_search(
        &self,
        filter: AuditFilter,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.reader
            .run(move |r| audit::search(r.client, &filter))
            .await
    }

    pub(crate) async fn audit_verify_expecting(
        &self,
        expect_head: Option<String>,
    ) -> Result<VerifyReport, StoreError> {
        self.reader
            .run(move |r| audit::verify(r.client, expect_head.as_deref()))
            .await
    }

    pub(crate) async fn audit_shipped_upto(&self) -> Result<i64, StoreError> {
        self.reader.run(|r| audit::shipped_upto(r.client)).await
    }

    pub(crate) async fn audit_set_shipped(&self, seq: i64) -> Result<(), StoreError> {
        self.writer
            .submit(writer::Op::AuditShipped(seq))
            .await
            .map(|_| ())
    }

    pub(crate) async fn prune_batch(
        &self,
        channel: &str,
        rule: PruneRule,
        limit: usize,
    ) -> Result<PruneProgress, StoreError> {
        match self
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

    pub(crate) async fn prune_count(
        &self,
        channel: &str,
        rule: PruneRule,
    ) -> Result<PruneProgress, StoreError> {
        let c = channel.to_owned();
        self.reader
            .run(move |r| prune::count(r.client, &c, &rule))
            .await
    }

    pub(crate) async fn vacuum_step(&self, pages: u64) -> Result<VacuumProgress, StoreError> {
        self.reader
            .run(move |r| prune::vacuum_step(r.client, pages))
            .await
    }

    pub(crate) fn stats(&self) -> WriterStats {
        self.writer.stats()
    }

    pub(crate) async fn close(&self) -> Result<(), StoreError> {
        self.writer.close().await
    }
}
