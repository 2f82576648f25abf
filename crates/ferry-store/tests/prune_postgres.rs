//! Retention pruning on PostgreSQL (the server on 127.0.0.1:5432, a private schema per test):
//! the cases of `cases/prune.rs`, then a large channel pruned while traffic continues, with
//! what happens to the space measured honestly: a plain `VACUUM` (what
//! [`Store::vacuum_step`] runs) makes the pruned rows' space reusable, so new traffic fills it
//! without the tables growing; only `VACUUM FULL` (an exclusive lock, never run by the store)
//! gives it back to the file system.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_store::{
    ContentStage, NewMessage, PruneRule, SOURCE, Status, Store, StoreError, StoreOptions,
};

mod pg;
use pg::{pg, test_db, url_for};

#[path = "cases/prune.rs"]
mod cases;

fn open_store(path: &Path) -> Result<Store, StoreError> {
    Store::open_postgres(pg(&url_for(path)), StoreOptions::default())
}

fn open_store_with(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
    Store::open_postgres(pg(&url_for(path)), options)
}

/// Run `sql` on a connection of its own (a thread: the synchronous client cannot run on the
/// test's async thread) in the schema of `url`.
fn on_schema<T: Send + 'static>(
    url: &str,
    f: impl FnOnce(&mut postgres::Client) -> T + Send + 'static,
) -> T {
    let options = pg(url);
    std::thread::spawn(move || {
        let mut client = ferry_store::postgres::connect(&options).expect("connect");
        f(&mut client)
    })
    .join()
    .expect("query thread")
}

fn count(path: &Path, sql: &str) -> i64 {
    let sql = sql.to_owned();
    on_schema(&url_for(path), move |c| {
        c.query_one(&sql, &[]).expect("count").get::<_, i64>(0)
    })
}

/// The tables pruning deletes from, with their indexes and TOAST, in bytes.
const SIZE: &str = "SELECT SUM(pg_total_relation_size(t::regclass))::bigint \
    FROM unnest(ARRAY['messages', 'content', 'connector_messages', 'message_metadata']) AS t";

fn tables_size(url: &str) -> u64 {
    on_schema(url, |c| {
        c.query_one(SIZE, &[]).expect("size").get::<_, i64>(0) as u64
    })
}

/// A message of about `body` bytes that does not compress (PostgreSQL would otherwise store
/// a repeated filler in a few bytes and there would be nothing to measure).
fn incompressible(at: i64, body: usize) -> NewMessage {
    let mut m = cases::message(at, &format!("P{at}"), 0);
    let mut x = (at as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let filler: String = (0..body)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .collect();
    m.raw
        .extend_from_slice(format!("NTE|1||{filler}\r").as_bytes());
    m
}

/// Ingest `count` messages received at `first..`, 64 at a time, already delivered.
async fn fill(store: &Store, first: i64, count: i64, body: usize) {
    let mut tasks = Vec::new();
    for worker in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut at = first + worker;
            while at < first + count {
                let mut m = incompressible(at, body);
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
}

/// The issue's proof on PostgreSQL: a large channel pruned while eight senders keep
/// ingesting; every acknowledged ingest survives; after the plain `VACUUM` of
/// `vacuum_step`, as much new traffic again as half the pruned volume makes the tables grow by
/// only a small part of it (the space is reused); `VACUUM FULL` then shows how much space was
/// really free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_a_large_channel_makes_its_space_reusable_while_traffic_continues() {
    // Fewer, larger messages than the SQLite test: ingest on PostgreSQL is per-row work, and
    // the test must stay short on a loaded machine.
    const OLD: i64 = 3_000;
    const BODY: usize = 6_000;
    let db = test_db();
    let url = db.url().to_owned();
    let store = Store::open_postgres(pg(&url), StoreOptions::default()).expect("open");
    let started = Instant::now();
    fill(&store, 1, OLD, BODY).await;
    let filled_in = started.elapsed();
    let before = tables_size(&url);
    assert!(before > 20_000_000, "filled to {before} bytes");

    let stop = Arc::new(AtomicBool::new(false));
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
                        .ingest(incompressible(at, BODY))
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
    let would = store.prune_count("c", rule).await.expect("count");
    assert_eq!(would.messages_deleted, OLD as u64);
    let pruning = Instant::now();
    let mut deleted = 0;
    let mut longest_batch = Duration::ZERO;
    loop {
        let started = Instant::now();
        let p = store.prune_batch("c", rule, 1000).await.expect("prune");
        longest_batch = longest_batch.max(started.elapsed());
        deleted += p.messages_deleted;
        tokio::time::sleep(Duration::from_millis(5)).await;
        if p.done {
            break;
        }
    }
    let pruned_in = pruning.elapsed();
    let started = Instant::now();
    let step = store.vacuum_step(4096).await.expect("vacuum");
    let vacuumed_in = started.elapsed();
    assert!(!step.incremental);
    assert_eq!(step.free_pages, 0);
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut longest = Duration::ZERO;
    for sender in traffic {
        let (ids, slowest) = sender.await.expect("traffic");
        acked.extend(ids);
        longest = longest.max(slowest);
    }
    assert_eq!(deleted, OLD as u64);
    assert!(!acked.is_empty());
    for id in &acked {
        let raw = store
            .content("c", *id, SOURCE, ContentStage::Raw)
            .await
            .expect("read");
        assert!(raw.is_some(), "acknowledged message {id} kept");
    }
    let after_prune = tables_size(&url);

    // New traffic as large as half of what was pruned: it goes into the reusable space.
    const NEW: i64 = OLD / 2;
    fill(&store, 10_000_000, NEW, BODY).await;
    let after_new = tables_size(&url);
    let grown = after_new.saturating_sub(after_prune);
    let new_volume = before / 2; // what NEW messages took when the tables were empty

    store.close().await.expect("close");
    let kept = acked.len() as i64 + NEW;
    assert_eq!(count_url(&url, "SELECT COUNT(*) FROM messages"), kept);
    // What the space really is: VACUUM FULL rewrites the tables (exclusive lock; the store
    // never runs it).
    on_schema(&url, |c| {
        c.batch_execute("VACUUM FULL messages, content, connector_messages, message_metadata")
            .expect("VACUUM FULL")
    });
    let full = tables_size(&url);
    eprintln!(
        "PostgreSQL: filled {OLD} messages of ~{BODY} B in {filled_in:?}; tables {before} B; \
         pruned in {pruned_in:?} ({:.0} msg/s), longest prune batch (1000) {longest_batch:?}; \
         VACUUM {vacuumed_in:?} ({} pages freed); {} messages ingested during pruning, longest \
         ingest {longest:?}; tables {after_prune} B after pruning and VACUUM; {NEW} new \
         messages then grew them by {grown} B ({:.0}% of the {new_volume} B they took in empty \
         tables) to {after_new} B; VACUUM FULL: {full} B ({:.0}% of the filled size)",
        OLD as f64 / pruned_in.as_secs_f64(),
        step.freed_pages,
        acked.len(),
        100.0 * grown as f64 / new_volume as f64,
        100.0 * full as f64 / before as f64,
    );
    // Plain VACUUM does not shrink the tables much: their size stays where the filled
    // tables (and the traffic during pruning) took them.
    assert!(after_prune > before / 2, "{before} -> {after_prune}");
    // But the space is reused: half the pruned volume again grows them by at most a fifth of
    // what it takes in new tables.
    assert!(
        grown < new_volume / 5,
        "new traffic reused the pruned space: grew {grown} B of {new_volume} B"
    );
    // And it really was free: rewritten, the tables hold what is kept.
    let kept_bytes = kept as u64 * (before / OLD as u64);
    assert!(
        full < kept_bytes + kept_bytes / 2 + 2_000_000,
        "VACUUM FULL: {full} B for {kept} messages ({kept_bytes} B expected)"
    );
    drop(db);
}

fn count_url(url: &str, sql: &str) -> i64 {
    let sql = sql.to_owned();
    on_schema(url, move |c| {
        c.query_one(&sql, &[]).expect("count").get::<_, i64>(0)
    })
}
