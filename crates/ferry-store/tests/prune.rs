//! Retention pruning on a real SQLite file: the cases of `cases/prune.rs`, then the file
//! shrinking while ingest goes on, and an older store (without incremental vacuum) shrinking
//! after one full vacuum.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_store::{ContentStage, PruneRule, SOURCE, Status, Store, StoreError, StoreOptions};

#[path = "cases/prune.rs"]
mod cases;
use cases::{message, prune_all};

fn open_store(path: &Path) -> Result<Store, StoreError> {
    Store::open(path)
}

fn open_store_with(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
    Store::open_with(path, options)
}

fn count(path: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.query_row(sql, [], |r| r.get(0)).expect("count")
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The proof: a large channel, pruned while another task keeps ingesting; every
/// acknowledged ingest survives and the database file shrinks substantially.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_a_large_channel_shrinks_the_file_while_traffic_continues() {
    const OLD: i64 = 20_000;
    const BODY: usize = 2_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let store = Store::open(&path).expect("open");
    let fill = Instant::now();
    // Old traffic, already delivered: fill in parallel so group commit shares the fsyncs.
    let mut tasks = Vec::new();
    for worker in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut at = worker + 1;
            while at <= OLD {
                let mut m = message(at, &format!("P{at}"), BODY);
                m.destinations.clear();
                m.source_status = Status::Sent;
                store.ingest(m).await.expect("ingest");
                at += 64;
            }
        }));
    }
    for t in tasks {
        t.await.expect("filler");
    }
    let fill = fill.elapsed();
    // Copy the WAL back so the file holds everything.
    let checkpointed = |p: &Path| {
        let conn = rusqlite::Connection::open(p).expect("open");
        conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);")
            .expect("checkpoint");
    };
    checkpointed(&path);
    let before = file_size(&path);
    assert!(before > 40_000_000, "filled to {before} bytes");

    // Traffic continues: new messages (received after the cut-off) while pruning runs.
    let stop = Arc::new(AtomicBool::new(false));
    // Eight senders, each waiting for its acknowledgement before the next message.
    let traffic: Vec<_> = (0..8)
        .map(|sender| {
            let store = store.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut longest = Duration::ZERO;
                let mut at = 1_000_000 + sender * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let id = store
                        .ingest(message(at, "NEW", BODY))
                        .await
                        .expect("ingest during pruning");
                    longest = longest.max(started.elapsed());
                    acked.push(id);
                    at += 1;
                }
                (acked, longest)
            })
        })
        .collect();
    let rule = PruneRule {
        metadata_before_ms: Some(OLD + 1),
        ..PruneRule::default()
    };
    let pruning = Instant::now();
    let mut deleted = 0;
    let mut freed = 0;
    let (mut longest_batch, mut longest_vacuum) = (Duration::ZERO, Duration::ZERO);
    loop {
        let started = Instant::now();
        let p = store.prune_batch("c", rule, 1000).await.expect("prune");
        longest_batch = longest_batch.max(started.elapsed());
        deleted += p.messages_deleted;
        let started = Instant::now();
        freed += store
            .vacuum_step(4096)
            .await
            .expect("vacuum step")
            .freed_pages;
        longest_vacuum = longest_vacuum.max(started.elapsed());
        tokio::task::yield_now().await;
        if p.done {
            break;
        }
    }
    let pruned_in = pruning.elapsed();
    loop {
        let v = store.vacuum_step(4096).await.expect("vacuum step");
        freed += v.freed_pages;
        assert!(v.incremental, "a new store uses auto_vacuum = INCREMENTAL");
        if v.free_pages == 0 || v.freed_pages == 0 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut longest = Duration::ZERO;
    for sender in traffic {
        let (ids, slowest) = sender.await.expect("traffic");
        acked.extend(ids);
        longest = longest.max(slowest);
    }
    assert_eq!(deleted, OLD as u64);
    // Closing checkpoints the whole WAL back (TRUNCATE), so the file has its final size.
    store.close().await.expect("close");
    let after = file_size(&path);
    let store = Store::open(&path).expect("reopen");
    eprintln!(
        "filled {OLD} messages of ~{BODY} B in {fill:?}; file {before} B before, {after} B after \
         ({:.0}% smaller); pruned in {pruned_in:?} ({:.0} msg/s), {freed} pages freed; longest \
         prune batch (1000) {longest_batch:?}, longest vacuum step (4096 pages) \
         {longest_vacuum:?}; {} messages ingested during pruning, longest ingest {longest:?}",
        100.0 * (1.0 - after as f64 / before as f64),
        OLD as f64 / pruned_in.as_secs_f64(),
        acked.len()
    );
    // Every acknowledged ingest is still there.
    for id in &acked {
        let raw = store
            .content("c", *id, SOURCE, ContentStage::Raw)
            .await
            .expect("read");
        assert!(raw.is_some(), "acknowledged message {id} kept");
    }
    assert!(!acked.is_empty());
    let kept = (acked.len() as u64) * (BODY as u64 + 200);
    assert!(
        after < before / 3 + kept,
        "the file shrank substantially: {before} -> {after}"
    );
    store.close().await.expect("close");
}

/// A store created before incremental vacuum keeps its free pages (reused, not returned) until
/// one full `vacuum_file`, which shrinks it and switches it to incremental mode.
#[tokio::test]
async fn an_older_store_shrinks_after_one_full_vacuum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    // A table made before the store's own: SQLite then keeps `auto_vacuum = NONE`, as in a
    // file created by an older Ferry.
    rusqlite::Connection::open(&path)
        .and_then(|c| c.execute_batch("CREATE TABLE older (x INTEGER);"))
        .expect("an older file");
    let store = Store::open(&path).expect("open");
    for at in 1..=600 {
        let mut m = message(at, "P", 2_000);
        m.destinations.clear();
        store.ingest(m).await.expect("ingest");
    }
    let rule = PruneRule {
        metadata_before_ms: Some(10_000),
        ..PruneRule::default()
    };
    let (total, _) = prune_all(&store, rule, 500).await;
    assert_eq!(total.messages_deleted, 600);
    let step = store.vacuum_step(4096).await.expect("vacuum step");
    assert!(!step.incremental);
    assert_eq!(step.freed_pages, 0);
    assert!(step.free_pages > 200, "{step:?}");
    store.close().await.expect("close");
    let (before, after) = ferry_store::vacuum_file(&path).expect("VACUUM");
    assert!(after < before / 3, "{before} -> {after}");
    let store = Store::open(&path).expect("reopen");
    let step = store.vacuum_step(0).await.expect("free list");
    assert!(step.incremental, "switched to incremental");
    assert_eq!(
        store.ingest(message(20_000, "P", 0)).await.expect("ingest"),
        601
    );
    store.close().await.expect("close");
}
