//! The background checkpointer.
//!
//! In WAL mode every commit appends to the write-ahead log; a checkpoint copies logged pages
//! back into the database file and fsyncs it. SQLite normally runs checkpoints inside the
//! commit that crosses the threshold, which puts a long stall on that unlucky message's ACK.
//! Ferry turns that off on the writer and runs `PASSIVE` checkpoints from this thread instead:
//! they never block the writer, and the writer never waits for them.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::StoreError;
use crate::schema;

/// How often the checkpointer runs.
const INTERVAL: Duration = Duration::from_millis(250);

pub(crate) struct Checkpointer {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(crate) fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = schema::open_checkpointer(path)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ferry-store-checkpoint".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                    if let Err(error) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
                        tracing::warn!(%error, "WAL checkpoint failed; will retry");
                    }
                }
            })
            .map_err(|source| StoreError::Io {
                context: "starting the checkpointer thread".into(),
                source,
            })?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop the thread and wait for it.
    pub(crate) fn stop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let _ = self.stop.send(());
    }
}
