//! The group-commit loop that both backends' writer threads run.
//!
//! The thread takes the first operation waiting, then everything already queued behind it (up
//! to [`MAX_BATCH_OPS`] operations or [`MAX_BATCH_BYTES`] of payload), and hands the batch to
//! its backend to run in one transaction and answer. When the previous commit was shared by
//! more writers than are queued now, they are probably on their way back: the loop waits up
//! to [`GATHER_WAIT`] for them, so group commit does not collapse into alternating small
//! batches. After a failed commit every later operation is answered [`StoreError::Fatal`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::{StoreError, WriterStats};

/// Most operations committed together.
pub(crate) const MAX_BATCH_OPS: usize = 1024;
/// Most payload bytes committed together.
pub(crate) const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Longest a commit waits for more writers to join it.
pub(crate) const GATHER_WAIT: Duration = Duration::from_micros(200);
/// Step of that wait.
pub(crate) const GATHER_STEP: Duration = Duration::from_micros(20);

/// Operations that may wait for the writer before senders wait for room.
const QUEUE_CAPACITY: usize = 8192;

/// What the writer thread and its handle share: `ops / commits` is how many writes shared each
/// commit; `failed` is set once a commit failed and every later write is refused.
#[derive(Default)]
pub(crate) struct Counters {
    /// Committed transactions.
    pub(crate) commits: AtomicU64,
    /// Operations committed.
    pub(crate) ops: AtomicU64,
    /// A commit failed: the writer refuses everything after it.
    pub(crate) failed: AtomicBool,
}

/// The async side of a writer thread: submit operations, close, read the counters.
pub(crate) struct Handle<O, R> {
    tx: mpsc::Sender<Command<O, R>>,
    counters: Arc<Counters>,
}

impl<O: Send + 'static, R: Send + 'static> Handle<O, R> {
    /// Start the writer thread `name` running [`run`] on the writer `make` builds (given the
    /// shared counters).
    pub(crate) fn spawn<W>(
        name: &str,
        make: impl FnOnce(Arc<Counters>) -> W + Send + 'static,
    ) -> Result<Handle<O, R>, StoreError>
    where
        W: BatchWriter<Op = O, Reply = R>,
    {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(make(thread_counters), rx))
            .map_err(|source| StoreError::Io {
                context: "starting the store writer thread".into(),
                source,
            })?;
        Ok(Handle { tx, counters })
    }

    /// Run `op` in the next batch; answers after its commit.
    pub(crate) async fn submit(&self, op: O) -> Result<R, StoreError> {
        if self.counters.failed.load(Ordering::Relaxed) {
            return Err(StoreError::Fatal("an earlier commit failed".into()));
        }
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Command::Op(op, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Stop the writer after what is queued; `Ok` when it is already closed.
    pub(crate) async fn close(&self) -> Result<(), StoreError> {
        let (reply, wait) = oneshot::channel();
        if self.tx.send(Command::Close(reply)).await.is_err() {
            return Ok(()); // already closed
        }
        wait.await.unwrap_or(Ok(()))
    }

    /// Commits and operations so far.
    pub(crate) fn stats(&self) -> WriterStats {
        WriterStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            ops: self.counters.ops.load(Ordering::Relaxed),
        }
    }
}

/// Where an operation's outcome goes.
pub(crate) type Answer<R> = oneshot::Sender<Result<R, StoreError>>;

/// What a writer thread receives.
pub(crate) enum Command<O, R> {
    /// Run this operation in the next batch and answer it after the commit.
    Op(O, Answer<R>),
    /// Finish: answer what is queued as closed, close the backend, then this.
    Close(oneshot::Sender<Result<(), StoreError>>),
}

/// One backend's side of the loop.
pub(crate) trait BatchWriter {
    /// An operation.
    type Op;
    /// Its answer.
    type Reply;
    /// Payload bytes of an operation, for the batch's byte bound.
    fn op_bytes(op: &Self::Op) -> usize;
    /// Run the batch in one transaction and answer every operation. `Err` only when the
    /// commit itself failed (the store must then stop writing); the answers are sent either way.
    fn commit(&mut self, batch: &mut Vec<(Self::Op, Answer<Self::Reply>)>) -> Result<(), String>;
    /// Record that the writer stopped after a failed commit (callers check it before sending).
    fn mark_failed(&self);
    /// Work at close (SQLite truncates its WAL).
    fn close(&mut self) -> Result<(), StoreError>;
}

/// Run the loop until the channel closes or a [`Command::Close`] arrives.
pub(crate) fn run<W: BatchWriter>(mut writer: W, mut rx: mpsc::Receiver<Command<W::Op, W::Reply>>) {
    let mut batch: Vec<(W::Op, Answer<W::Reply>)> = Vec::new();
    let mut fatal: Option<String> = None;
    let mut previous = 1usize;
    while let Some(first) = rx.blocking_recv() {
        let started = Instant::now();
        let mut close = None;
        let mut bytes = 0;
        let mut next = Some(first);
        loop {
            let command = match next.take() {
                Some(c) => c,
                None => match rx.try_recv() {
                    Ok(c) => c,
                    Err(_) if batch.len() < previous && started.elapsed() < GATHER_WAIT => {
                        std::thread::sleep(GATHER_STEP);
                        continue;
                    }
                    Err(_) => break,
                },
            };
            match command {
                Command::Op(op, reply) => {
                    bytes += W::op_bytes(&op);
                    batch.push((op, reply));
                }
                Command::Close(reply) => {
                    close = Some(reply);
                    break;
                }
            }
            if batch.len() >= MAX_BATCH_OPS || bytes >= MAX_BATCH_BYTES {
                break;
            }
        }
        previous = batch.len().max(1);
        if let Some(reason) = &fatal {
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(StoreError::Fatal(reason.clone())));
            }
        } else if !batch.is_empty()
            && let Err(reason) = writer.commit(&mut batch)
        {
            tracing::error!(%reason, "store commit failed; refusing all further writes");
            writer.mark_failed();
            fatal = Some(reason);
        }
        if let Some(reply) = close {
            let result = writer.close();
            rx.close();
            while let Ok(command) = rx.try_recv() {
                match command {
                    Command::Op(_, r) => {
                        let _ = r.send(Err(StoreError::Closed));
                    }
                    Command::Close(r) => {
                        let _ = r.send(Ok(()));
                    }
                }
            }
            let _ = reply.send(result);
            return;
        }
    }
}
