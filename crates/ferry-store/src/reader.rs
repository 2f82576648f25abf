//! Read connections: a small pool used from the blocking thread pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use crate::StoreError;
use crate::crypto::{self, Keyring, Place};
use crate::model::{
    ConnectorRecord, ContentStage, MessageId, MessageSummary, QueuedMessage, SOURCE, Status,
    StatusCount,
};
use crate::schema;

pub(crate) struct ReadPool {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
    max_idle: usize,
    keyring: Option<Arc<Keyring>>,
}

impl ReadPool {
    pub(crate) fn new(
        path: &Path,
        max_idle: usize,
        keyring: Option<Arc<Keyring>>,
    ) -> Result<ReadPool, StoreError> {
        // Open one now so a bad path fails at open, not at the first read.
        let first = schema::open_read(path)?;
        Ok(ReadPool {
            path: path.to_owned(),
            idle: Arc::new(Mutex::new(vec![first])),
            max_idle,
            keyring,
        })
    }

    /// Run `f` on a pooled connection on the blocking thread pool.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Reader<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let idle = self.idle.clone();
        let path = self.path.clone();
        let max_idle = self.max_idle;
        let keyring = self.keyring.clone();
        tokio::task::spawn_blocking(move || {
            let taken = idle.lock().ok().and_then(|mut v| v.pop());
            let conn = match taken {
                Some(c) => c,
                None => schema::open_read(&path)?,
            };
            let result = f(&Reader {
                conn: &conn,
                keyring: keyring.as_deref(),
            });
            if let Ok(mut v) = idle.lock()
                && v.len() < max_idle
            {
                v.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("read task failed: {e}")))?
    }
}

pub(crate) struct Reader<'c> {
    conn: &'c Connection,
    keyring: Option<&'c Keyring>,
}

fn status(text: String) -> Result<Status, StoreError> {
    text.parse().map_err(StoreError::Corrupt)
}

impl Reader<'_> {
    /// The pooled connection, for modules with their own queries (the audit trail).
    pub(crate) fn connection(&self) -> &Connection {
        self.conn
    }

    /// The store's keys, when it encrypts.
    pub(crate) fn keyring(&self) -> Option<&Keyring> {
        self.keyring
    }

    /// The queue scan names the partial `QUEUED` index: without table statistics SQLite may
    /// otherwise walk the primary key and visit every sent message of the channel.
    pub(crate) fn queue_batch(
        &self,
        channel: &str,
        destination: &str,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT q.message_id, q.attempts, m.received_at_ms, m.control_id, \
                   COALESCE( \
                     (SELECT data FROM content WHERE channel = q.channel AND message_id = q.message_id AND connector = q.connector AND stage = 'encoded'), \
                     (SELECT data FROM content WHERE channel = q.channel AND message_id = q.message_id AND connector = ?5 AND stage = 'transformed'), \
                     m.raw), \
                   EXISTS (SELECT 1 FROM content WHERE channel = q.channel AND message_id = q.message_id AND connector = q.connector AND stage = 'encoded'), \
                   EXISTS (SELECT 1 FROM content WHERE channel = q.channel AND message_id = q.message_id AND connector = ?5 AND stage = 'transformed') \
                 FROM connector_messages q INDEXED BY connector_messages_queued \
                 JOIN messages m ON m.channel = q.channel AND m.id = q.message_id \
                 WHERE q.channel = (SELECT id FROM channels WHERE name = ?1) \
                   AND q.connector = ?2 AND q.status = 'QUEUED' AND q.message_id > ?3 \
                 ORDER BY q.message_id LIMIT ?4",
            )
            .map_err(StoreError::sqlite("preparing the queue scan"))?;
        let rows = stmt
            .query_map(
                params![channel, destination, after, limit as i64, SOURCE],
                |r| {
                    Ok((
                        QueuedMessage {
                            message_id: r.get(0)?,
                            attempts: r.get(1)?,
                            received_at_ms: r.get(2)?,
                            control_id: r.get(3)?,
                            payload: r.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default(),
                        },
                        r.get::<_, bool>(5)?,
                        r.get::<_, bool>(6)?,
                    ))
                },
            )
            .map_err(StoreError::sqlite("scanning a queue"))?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for row in rows {
            let (mut queued, encoded, transformed) =
                row.map_err(StoreError::sqlite("reading a queue row"))?;
            // Which stage the payload came from decides the place its envelope is bound to.
            let (connector, stage) = if encoded {
                (destination, ContentStage::Encoded)
            } else if transformed {
                (SOURCE, ContentStage::Transformed)
            } else {
                (SOURCE, ContentStage::Raw)
            };
            let place = Place {
                channel,
                message_id: queued.message_id,
                connector,
                stage: stage.as_str(),
            };
            queued.payload =
                crypto::open(self.keyring, &place, std::mem::take(&mut queued.payload))?;
            out.push(queued);
        }
        Ok(out)
    }

    pub(crate) fn queue_depth(&self, channel: &str, destination: &str) -> Result<u64, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT COUNT(*) FROM connector_messages INDEXED BY connector_messages_queued \
                 WHERE channel = (SELECT id FROM channels WHERE name = ?1) \
                   AND connector = ?2 AND status = 'QUEUED'",
            )
            .and_then(|mut s| s.query_row(params![channel, destination], |r| r.get::<_, i64>(0)))
            .map(|n| n.max(0) as u64)
            .map_err(StoreError::sqlite("counting a queue"))
    }

    pub(crate) fn connector(
        &self,
        channel: &str,
        id: MessageId,
        connector: &str,
    ) -> Result<Option<ConnectorRecord>, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT status, attempts, error, updated_at_ms FROM connector_messages \
                 WHERE channel = (SELECT id FROM channels WHERE name = ?1) \
                   AND message_id = ?2 AND connector = ?3",
            )
            .and_then(|mut s| {
                s.query_row(params![channel, id, connector], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .optional()
            })
            .map_err(StoreError::sqlite("reading a connector status"))?;
        row.map(|(s, attempts, error, updated_at_ms)| {
            let place = Place {
                channel,
                message_id: id,
                connector,
                stage: ContentStage::Error.as_str(),
            };
            Ok(ConnectorRecord {
                status: status(s)?,
                attempts,
                error: error
                    .map(|e| crypto::open_text(self.keyring, &place, e))
                    .transpose()?,
                updated_at_ms,
            })
        })
        .transpose()
    }

    pub(crate) fn content(
        &self,
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
        // The source's raw message and response live in its message row, and every
        // connector's error in its status row.
        const BY_MESSAGE: &str =
            "FROM messages WHERE channel = (SELECT id FROM channels WHERE name = ?1) AND id = ?2";
        let inline = match (connector, stage) {
            (SOURCE, ContentStage::Raw) => Some(format!(
                "SELECT CASE WHEN content_pruned_at_ms IS NULL THEN raw END {BY_MESSAGE}"
            )),
            (SOURCE, ContentStage::Response) => {
                Some(format!("SELECT source_response {BY_MESSAGE}"))
            }
            (_, ContentStage::Error) => Some(
                "SELECT error FROM connector_messages \
                 WHERE channel = (SELECT id FROM channels WHERE name = ?1) \
                   AND message_id = ?2 AND connector = ?3"
                    .to_owned(),
            ),
            _ => None,
        };
        if let Some(sql) = inline {
            let with_connector: &[&dyn rusqlite::ToSql] = &[&channel, &id, &connector];
            let args = if stage == ContentStage::Error {
                with_connector
            } else {
                &with_connector[..2]
            };
            if stage == ContentStage::Error {
                let text = self
                    .conn
                    .prepare_cached(&sql)
                    .and_then(|mut s| {
                        s.query_row(args, |r| r.get::<_, Option<String>>(0))
                            .optional()
                    })
                    .map(Option::flatten)
                    .map_err(StoreError::sqlite("reading content"))?;
                return text
                    .map(|t| crypto::open_text(self.keyring, &place, t).map(String::into_bytes))
                    .transpose();
            }
            let blob = self
                .conn
                .prepare_cached(&sql)
                .and_then(|mut s| {
                    s.query_row(args, |r| r.get::<_, Option<Vec<u8>>>(0))
                        .optional()
                })
                .map(Option::flatten)
                .map_err(StoreError::sqlite("reading content"))?;
            return blob
                .map(|b| crypto::open(self.keyring, &place, b))
                .transpose();
        }
        let blob: Option<Vec<u8>> = self
            .conn
            .prepare_cached(
                "SELECT data FROM content \
                 WHERE channel = (SELECT id FROM channels WHERE name = ?1) \
                   AND message_id = ?2 AND connector = ?3 AND stage = ?4",
            )
            .and_then(|mut s| {
                s.query_row(params![channel, id, connector, stage.as_str()], |r| {
                    r.get(0)
                })
                .optional()
            })
            .map_err(StoreError::sqlite("reading content"))?;
        blob.map(|b| crypto::open(self.keyring, &place, b))
            .transpose()
    }

    pub(crate) fn status_counts(&self, channel: &str) -> Result<Vec<StatusCount>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT connector, status, COUNT(*) FROM connector_messages \
                 WHERE channel = (SELECT id FROM channels WHERE name = ?1) \
                 GROUP BY connector, status ORDER BY connector, status",
            )
            .map_err(StoreError::sqlite("preparing status counts"))?;
        let rows = stmt
            .query_map([channel], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(StoreError::sqlite("counting statuses"))?;
        let mut out = Vec::new();
        for row in rows {
            let (connector, s, count) = row.map_err(StoreError::sqlite("reading status counts"))?;
            out.push(StatusCount {
                connector,
                status: status(s)?,
                count: count.max(0) as u64,
            });
        }
        Ok(out)
    }

    pub(crate) fn messages(
        &self,
        channel: &str,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<MessageSummary>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, received_at_ms, control_id, message_type FROM messages \
                 WHERE channel = (SELECT id FROM channels WHERE name = ?1) AND id > ?2 \
                 ORDER BY id LIMIT ?3",
            )
            .map_err(StoreError::sqlite("preparing the message listing"))?;
        let rows = stmt
            .query_map(params![channel, after, limit as i64], |r| {
                Ok(MessageSummary {
                    id: r.get(0)?,
                    received_at_ms: r.get(1)?,
                    control_id: r.get(2)?,
                    message_type: r.get(3)?,
                })
            })
            .map_err(StoreError::sqlite("listing messages"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::sqlite("reading a message row"))
    }
}
