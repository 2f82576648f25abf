//! Read connections on PostgreSQL: a small pool used from the blocking thread pool (the
//! synchronous client must not run on a thread that drives async tasks).

use std::sync::{Arc, Mutex};

use postgres::Client;

use crate::StoreError;
use crate::crypto::{self, Keyring, Place};
use crate::model::{
    ConnectorRecord, ContentStage, MessageId, MessageSummary, QueuedMessage, SOURCE, Status,
    StatusCount,
};

use super::PgOptions;

pub(crate) struct ReadPool {
    options: PgOptions,
    idle: Arc<Mutex<Vec<Client>>>,
    max_idle: usize,
    keyring: Option<Arc<Keyring>>,
}

/// Open one connection with the store's session settings.
pub(crate) fn open(options: &PgOptions) -> Result<Client, StoreError> {
    let mut client = super::connect(options)?;
    super::schema::session(&mut client)?;
    Ok(client)
}

impl ReadPool {
    pub(crate) fn new(
        options: PgOptions,
        first: Client,
        max_idle: usize,
        keyring: Option<Arc<Keyring>>,
    ) -> ReadPool {
        ReadPool {
            options,
            idle: Arc::new(Mutex::new(vec![first])),
            max_idle,
            keyring,
        }
    }

    /// Run `f` on a pooled connection on the blocking thread pool. A connection that saw an
    /// error is not returned to the pool (it may be broken).
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Reader<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let idle = self.idle.clone();
        let options = self.options.clone();
        let max_idle = self.max_idle;
        let keyring = self.keyring.clone();
        tokio::task::spawn_blocking(move || {
            let taken = idle.lock().ok().and_then(|mut v| v.pop());
            let mut client = match taken {
                Some(c) if !c.is_closed() => c,
                _ => open(&options)?,
            };
            let result = f(&mut Reader {
                client: &mut client,
                keyring: keyring.as_deref(),
            });
            if result.is_ok()
                && let Ok(mut v) = idle.lock()
                && v.len() < max_idle
            {
                v.push(client);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("read task failed: {e}")))?
    }
}

impl Drop for ReadPool {
    /// Closing a synchronous connection blocks on its runtime, which panics on an async
    /// worker thread (where the last `Store` clone may be dropped): close them on a thread.
    fn drop(&mut self) {
        let idle = self
            .idle
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        if !idle.is_empty() {
            let _ = std::thread::Builder::new()
                .name("ferry-store-pg-close".into())
                .spawn(move || drop(idle));
        }
    }
}

pub(crate) struct Reader<'c> {
    pub(crate) client: &'c mut Client,
    pub(crate) keyring: Option<&'c Keyring>,
}

fn pg(context: &'static str) -> impl FnOnce(postgres::Error) -> StoreError {
    StoreError::postgres(context)
}

fn status(text: &str) -> Result<Status, StoreError> {
    text.parse().map_err(StoreError::Corrupt)
}

impl Reader<'_> {
    /// A queue scan: the partial `QUEUED` index, from `after` on (keyset), one bounded batch.
    pub(crate) fn queue_batch(
        &mut self,
        channel: &str,
        destination: &str,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(
                // The content stages are correlated point lookups on the primary key: as
                // joins, the planner may probe `content` by channel only and filter the
                // message id, a scan of the channel's content per queued row.
                "SELECT q.message_id, q.attempts, m.received_at_ms, m.control_id, \
                   (SELECT e.data FROM content e WHERE e.channel = q.channel \
                     AND e.message_id = q.message_id AND e.connector = q.connector \
                     AND e.stage = 'encoded'), \
                   (SELECT t.data FROM content t WHERE t.channel = q.channel \
                     AND t.message_id = q.message_id AND t.connector = 'source' \
                     AND t.stage = 'transformed'), \
                   m.raw \
                 FROM connector_messages q \
                 JOIN messages m ON m.channel = q.channel AND m.id = q.message_id \
                 WHERE q.channel = (SELECT id FROM channels WHERE name = $1) \
                   AND q.connector = $2 AND q.status = 'QUEUED' AND q.message_id > $3 \
                 ORDER BY q.message_id LIMIT $4",
                &[&channel, &destination, &after, &limit],
            )
            .map_err(pg("scanning a queue"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let message_id: MessageId = row.get(0);
            let attempts: i32 = row.get(1);
            let encoded: Option<Vec<u8>> = row.get(4);
            let transformed: Option<Vec<u8>> = row.get(5);
            let (connector, stage, payload) = match (encoded, transformed) {
                (Some(e), _) => (destination, ContentStage::Encoded, e),
                (None, Some(t)) => (SOURCE, ContentStage::Transformed, t),
                (None, None) => (SOURCE, ContentStage::Raw, row.get(6)),
            };
            let place = Place {
                channel,
                message_id,
                connector,
                stage: stage.as_str(),
            };
            out.push(QueuedMessage {
                message_id,
                attempts: u32::try_from(attempts).unwrap_or(0),
                received_at_ms: row.get(2),
                control_id: row.get(3),
                payload: crypto::open(self.keyring, &place, payload)?,
            });
        }
        Ok(out)
    }

    pub(crate) fn queue_depth(
        &mut self,
        channel: &str,
        destination: &str,
    ) -> Result<u64, StoreError> {
        let row = self
            .client
            .query_one(
                "SELECT COUNT(*) FROM connector_messages \
                 WHERE channel = (SELECT id FROM channels WHERE name = $1) \
                   AND connector = $2 AND status = 'QUEUED'",
                &[&channel, &destination],
            )
            .map_err(pg("counting a queue"))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    pub(crate) fn connector(
        &mut self,
        channel: &str,
        id: MessageId,
        connector: &str,
    ) -> Result<Option<ConnectorRecord>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT status, attempts, error, updated_at_ms FROM connector_messages \
                 WHERE channel = (SELECT id FROM channels WHERE name = $1) \
                   AND message_id = $2 AND connector = $3",
                &[&channel, &id, &connector],
            )
            .map_err(pg("reading a connector status"))?;
        let Some(row) = row else { return Ok(None) };
        let place = Place {
            channel,
            message_id: id,
            connector,
            stage: ContentStage::Error.as_str(),
        };
        let error: Option<String> = row.get(2);
        Ok(Some(ConnectorRecord {
            status: status(row.get(0))?,
            attempts: u32::try_from(row.get::<_, i32>(1)).unwrap_or(0),
            error: error
                .map(|e| crypto::open_text(self.keyring, &place, e))
                .transpose()?,
            updated_at_ms: row.get(3),
        }))
    }

    pub(crate) fn content(
        &mut self,
        channel: &str,
        id: MessageId,
        connector: &str,
        stage: ContentStage,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let place = Place {
            channel,
            message_id: id,
            connector,
            stage: stage.as_str(),
        };
        const BY_MESSAGE: &str =
            "FROM messages WHERE channel = (SELECT id FROM channels WHERE name = $1) AND id = $2";
        if stage == ContentStage::Error {
            let text: Option<String> = self
                .client
                .query_opt(
                    "SELECT error FROM connector_messages \
                     WHERE channel = (SELECT id FROM channels WHERE name = $1) \
                       AND message_id = $2 AND connector = $3",
                    &[&channel, &id, &connector],
                )
                .map_err(pg("reading content"))?
                .and_then(|r| r.get(0));
            return text
                .map(|t| crypto::open_text(self.keyring, &place, t).map(String::into_bytes))
                .transpose();
        }
        let blob: Option<Vec<u8>> = match (connector, stage) {
            (SOURCE, ContentStage::Raw) => self
                .client
                .query_opt(
                    &format!(
                        "SELECT CASE WHEN content_pruned_at_ms IS NULL THEN raw END {BY_MESSAGE}"
                    ),
                    &[&channel, &id],
                )
                .map_err(pg("reading content"))?
                .and_then(|r| r.get(0)),
            (SOURCE, ContentStage::Response) => self
                .client
                .query_opt(
                    &format!("SELECT source_response {BY_MESSAGE}"),
                    &[&channel, &id],
                )
                .map_err(pg("reading content"))?
                .and_then(|r| r.get(0)),
            _ => self
                .client
                .query_opt(
                    "SELECT data FROM content \
                     WHERE channel = (SELECT id FROM channels WHERE name = $1) \
                       AND message_id = $2 AND connector = $3 AND stage = $4",
                    &[&channel, &id, &connector, &stage.as_str()],
                )
                .map_err(pg("reading content"))?
                .map(|r| r.get(0)),
        };
        blob.map(|b| crypto::open(self.keyring, &place, b))
            .transpose()
    }

    pub(crate) fn status_counts(&mut self, channel: &str) -> Result<Vec<StatusCount>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT connector, status, COUNT(*) FROM connector_messages \
                 WHERE channel = (SELECT id FROM channels WHERE name = $1) \
                 GROUP BY connector, status ORDER BY connector COLLATE \"C\", status COLLATE \"C\"",
                &[&channel],
            )
            .map_err(pg("counting statuses"))?;
        rows.iter()
            .map(|r| {
                Ok(StatusCount {
                    connector: r.get(0),
                    status: status(r.get(1))?,
                    count: r.get::<_, i64>(2).max(0) as u64,
                })
            })
            .collect()
    }

    pub(crate) fn messages(
        &mut self,
        channel: &str,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<MessageSummary>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(
                "SELECT id, received_at_ms, control_id, message_type FROM messages \
                 WHERE channel = (SELECT id FROM channels WHERE name = $1) AND id > $2 \
                 ORDER BY id LIMIT $3",
                &[&channel, &after, &limit],
            )
            .map_err(pg("listing messages"))?;
        Ok(rows
            .iter()
            .map(|r| MessageSummary {
                id: r.get(0),
                received_at_ms: r.get(1),
                control_id: r.get(2),
                message_type: r.get(3),
            })
            .collect())
    }

    /// Read the newest message back so a wrong or missing key fails at open.
    pub(crate) fn probe(&mut self) -> Result<(), StoreError> {
        let newest = self
            .client
            .query_opt(
                "SELECT c.name, m.id, m.raw FROM messages m JOIN channels c ON c.id = m.channel \
                 WHERE m.content_pruned_at_ms IS NULL ORDER BY m.channel DESC, m.id DESC LIMIT 1",
                &[],
            )
            .map_err(pg("reading the newest message"))?;
        if let Some(row) = newest {
            let channel: String = row.get(0);
            let place = Place {
                channel: &channel,
                message_id: row.get(1),
                connector: SOURCE,
                stage: ContentStage::Raw.as_str(),
            };
            crypto::open(self.keyring, &place, row.get(2)).map_err(|e| match e {
                StoreError::Crypto(m) => {
                    StoreError::Crypto(format!("refusing to open the store: {m}"))
                }
                other => other,
            })?;
        }
        Ok(())
    }
}
