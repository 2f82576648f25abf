//! Retention pruning on a real SQLite file: content pruned versus messages deleted, in-flight
//! and failed messages kept unless asked, the batch bound, dedupe and search rows gone, ids
//! never reused, and the file shrinking while ingest goes on.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_store::{
    ContentStage, DedupeKey, DeliveryUpdate, Ingested, MessageQuery, NewMessage, PruneProgress,
    PruneRule, SOURCE, Status, Store,
};

/// A message received at `at`, queued for `a`, with a transformed stage, maps and MRN `mrn`.
fn message(at: i64, mrn: &str, body: usize) -> NewMessage {
    NewMessage {
        channel: "c".to_owned(),
        received_at_ms: at,
        control_id: Some(format!("CTL{at}")),
        message_type: Some("ADT^A01".into()),
        raw: format!(
            "MSH|^~\\&|A|B|C|D|{at}||ADT^A01|CTL{at}|P|2.5.1\rPID|1||{mrn}\r{}",
            "x".repeat(body)
        )
        .into_bytes(),
        source_status: Status::Transformed,
        source_error: None,
        source_response: Some(b"ACK".to_vec()),
        destinations: vec!["a".into()],
        filtered_destinations: Vec::new(),
        errored_destinations: Vec::new(),
        transformed: Some(b"transformed".to_vec()),
        encoded: Vec::new(),
        maps: Some(b"{}".to_vec()),
        dedupe: None,
        metadata: [("mrn", mrn.to_owned())].into_iter().collect(),
    }
}

async fn deliver(store: &Store, id: i64, status: Status) {
    store
        .update_delivery(DeliveryUpdate {
            channel: "c".into(),
            message_id: id,
            destination: "a".into(),
            status,
            attempts: 1,
            error: (status == Status::Error).then(|| "refused".to_owned()),
            response: Some(b"AA".to_vec()),
            encoded: None,
        })
        .await
        .expect("delivery recorded");
}

fn count(path: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.query_row(sql, [], |r| r.get(0)).expect("count")
}

async fn prune_all(store: &Store, rule: PruneRule, limit: usize) -> (PruneProgress, usize) {
    let mut total = PruneProgress::default();
    let mut batches = 0;
    loop {
        let p = store.prune_batch("c", rule, limit).await.expect("prune");
        assert!(p.content_pruned + p.messages_deleted <= limit as u64);
        total.content_pruned += p.content_pruned;
        total.messages_deleted += p.messages_deleted;
        batches += 1;
        if p.done {
            total.done = true;
            return (total, batches);
        }
    }
}

async fn search_mrn(store: &Store, mrn: &str) -> usize {
    store
        .search_messages(MessageQuery {
            channel: "c".into(),
            metadata: vec![("mrn".into(), mrn.into())],
            limit: 100,
            max_examined: 10_000,
            ..MessageQuery::default()
        })
        .await
        .expect("search")
        .messages
        .len()
}

#[tokio::test]
async fn content_pruning_keeps_the_message_and_metadata_pruning_deletes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let store = Store::open(&path).expect("open");
    for at in 1..=30 {
        let id = store.ingest(message(at, "P1", 10)).await.expect("ingest");
        deliver(&store, id, Status::Sent).await;
    }
    // Messages 1..=10 deleted whole, 11..=20 lose their content, 21..=30 untouched.
    let rule = PruneRule {
        content_before_ms: Some(21),
        metadata_before_ms: Some(11),
        ..PruneRule::default()
    };
    let would = store.prune_count("c", rule).await.expect("count");
    assert_eq!((would.messages_deleted, would.content_pruned), (10, 10));
    let (total, _) = prune_all(&store, rule, 1000).await;
    assert_eq!((total.messages_deleted, total.content_pruned), (10, 10));
    for id in 1..=10 {
        assert!(
            store
                .connector("c", id, SOURCE)
                .await
                .expect("read")
                .is_none()
        );
    }
    for id in 11..=20 {
        assert_eq!(
            store
                .connector("c", id, "a")
                .await
                .expect("read")
                .map(|c| c.status),
            Some(Status::Sent),
            "statuses are kept"
        );
        for (connector, stage) in [
            (SOURCE, ContentStage::Raw),
            (SOURCE, ContentStage::Response),
            (SOURCE, ContentStage::Transformed),
            (SOURCE, ContentStage::Maps),
            ("a", ContentStage::Response),
        ] {
            assert_eq!(
                store
                    .content("c", id, connector, stage)
                    .await
                    .expect("read"),
                None,
                "{connector} {stage:?} of {id} pruned"
            );
        }
    }
    let raw = store
        .content("c", 21, SOURCE, ContentStage::Raw)
        .await
        .expect("read");
    assert!(raw.is_some_and(|r| r.starts_with(b"MSH")));
    // Search still finds the content-pruned messages (and says so), not the deleted ones.
    let page = store
        .search_messages(MessageQuery {
            channel: "c".into(),
            metadata: vec![("mrn".into(), "P1".into())],
            limit: 100,
            max_examined: 10_000,
            with_raw: true,
            ..MessageQuery::default()
        })
        .await
        .expect("search");
    assert_eq!(page.messages.len(), 20);
    let pruned: Vec<_> = page.messages.iter().filter(|m| m.content_pruned).collect();
    assert_eq!(pruned.len(), 10);
    assert!(pruned.iter().all(|m| m.raw.is_none() && m.id <= 20));
    assert_eq!(count(&path, "SELECT COUNT(*) FROM message_metadata"), 20);
    assert_eq!(count(&path, "SELECT COUNT(*) FROM connector_messages"), 40);
    assert_eq!(
        count(&path, "SELECT COUNT(*) FROM content WHERE message_id <= 20"),
        0
    );
    // A second run finds nothing.
    let again = store.prune_batch("c", rule, 1000).await.expect("prune");
    assert_eq!(
        again,
        PruneProgress {
            done: true,
            ..PruneProgress::default()
        }
    );
    store.close().await.expect("close");
}

#[tokio::test]
async fn queued_and_errored_messages_are_kept_unless_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let store = Store::open(&path).expect("open");
    store.ingest(message(1, "P", 0)).await.expect("ingest");
    let errored = store.ingest(message(2, "P", 0)).await.expect("ingest");
    deliver(&store, errored, Status::Error).await;
    let sent = store.ingest(message(3, "P", 0)).await.expect("ingest");
    deliver(&store, sent, Status::Sent).await;
    let rule = PruneRule {
        metadata_before_ms: Some(100),
        ..PruneRule::default()
    };
    let (total, _) = prune_all(&store, rule, 10).await;
    assert_eq!(total.messages_deleted, 1);
    assert!(
        store
            .connector("c", sent, SOURCE)
            .await
            .expect("read")
            .is_none()
    );
    assert_eq!(store.queue_depth("c", "a").await.expect("depth"), 1);
    assert!(
        store
            .connector("c", errored, "a")
            .await
            .expect("read")
            .is_some()
    );

    let errored_too = PruneRule {
        include_errored: true,
        ..rule
    };
    let (total, _) = prune_all(&store, errored_too, 10).await;
    assert_eq!(total.messages_deleted, 1);
    assert!(
        store
            .connector("c", errored, "a")
            .await
            .expect("read")
            .is_none()
    );
    assert_eq!(store.queue_depth("c", "a").await.expect("depth"), 1);

    // A message deleted while its delivery was in flight: the late update is not an error.
    let in_flight = store.ingest(message(50, "P", 0)).await.expect("ingest");
    let deleting_queued = PruneRule {
        metadata_before_ms: Some(51),
        include_queued: true,
        include_errored: true,
        content_before_ms: None,
    };
    let deleted_now = store
        .prune_batch("c", deleting_queued, 10)
        .await
        .expect("prune");
    assert_eq!(
        deleted_now.messages_deleted, 2,
        "the in-flight one and the queued one"
    );
    deliver(&store, in_flight, Status::Sent).await;
    assert!(
        store
            .connector("c", in_flight, "a")
            .await
            .expect("read")
            .is_none()
    );
    // A message that never existed still is.
    let never = store
        .update_delivery(DeliveryUpdate {
            channel: "c".into(),
            message_id: 1_000,
            destination: "a".into(),
            status: Status::Sent,
            attempts: 1,
            error: None,
            response: None,
            encoded: None,
        })
        .await;
    assert!(never.is_err());
    let queued = store.ingest(message(60, "P", 0)).await.expect("ingest");

    // Content pruning a queued message when asked: it can no longer be sent, so it fails.
    let content_queued = PruneRule {
        content_before_ms: Some(100),
        include_queued: true,
        ..PruneRule::default()
    };
    let (total, _) = prune_all(&store, content_queued, 10).await;
    assert_eq!(total.content_pruned, 1);
    let record = store
        .connector("c", queued, "a")
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(record.status, Status::Error);
    assert_eq!(store.queue_depth("c", "a").await.expect("depth"), 0);
    store.close().await.expect("close");
}

#[tokio::test]
async fn batches_are_bounded_and_dedupe_and_search_rows_go_with_the_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let store = Store::open(&path).expect("open");
    for at in 1..=25 {
        let mut m = message(at, "P7", 0);
        m.destinations.clear();
        m.dedupe = Some(DedupeKey {
            key: format!("K{at}"),
            since_ms: 0,
        });
        store.ingest(m).await.expect("ingest");
    }
    assert_eq!(search_mrn(&store, "P7").await, 25);
    let rule = PruneRule {
        metadata_before_ms: Some(1000),
        ..PruneRule::default()
    };
    let (total, batches) = prune_all(&store, rule, 7).await;
    assert_eq!(total.messages_deleted, 25);
    assert_eq!(batches, 4, "7 + 7 + 7 + 4");
    assert_eq!(search_mrn(&store, "P7").await, 0);
    assert_eq!(count(&path, "SELECT COUNT(*) FROM message_metadata"), 0);
    assert_eq!(count(&path, "SELECT COUNT(*) FROM messages"), 0);
    // The dedupe key went with the message: the same key is new again.
    let mut again = message(2000, "P7", 0);
    again.dedupe = Some(DedupeKey {
        key: "K3".into(),
        since_ms: 0,
    });
    let ingested = store.ingest_checked(again).await.expect("ingest");
    // And ids are never handed out twice, even with every message deleted.
    assert_eq!(ingested, Ingested::Stored(26));
    store.close().await.expect("close");
    let store = Store::open(&path).expect("reopen");
    let id = store.ingest(message(3000, "P", 0)).await.expect("ingest");
    assert_eq!(id, 27);
    store.close().await.expect("close");
}

#[tokio::test]
async fn ids_are_not_reused_after_a_restart_with_every_message_pruned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let store = Store::open(&path).expect("open");
    for at in 1..=5 {
        let id = store.ingest(message(at, "P", 0)).await.expect("ingest");
        deliver(&store, id, Status::Sent).await;
    }
    let rule = PruneRule {
        metadata_before_ms: Some(1000),
        ..PruneRule::default()
    };
    prune_all(&store, rule, 100).await;
    store.close().await.expect("close");
    let store = Store::open(&path).expect("reopen");
    assert_eq!(
        store.ingest(message(2000, "P", 0)).await.expect("ingest"),
        6
    );
    store.close().await.expect("close");
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

/// Under encryption at rest a content-pruned message holds no envelope: the store still opens
/// (its probe of the newest message skips it) and key rotation passes over it.
#[tokio::test]
async fn content_pruning_under_encryption_keeps_open_and_rotation_working() {
    use ferry_store::{Key, Keyring, StoreOptions};
    let ring = |current: &str, byte: u8, old: Option<(&str, u8)>| {
        let key = |b: u8| Key::from_bytes(&[b; 32]).expect("key");
        let mut ring = Keyring::new(current, key(byte)).expect("keyring");
        if let Some((id, b)) = old {
            ring = ring.with_old(id, key(b)).expect("old key");
        }
        StoreOptions {
            keyring: Some(ring),
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let store = Store::open_with(&path, ring("k1", 1, None)).expect("open");
    for at in 1..=5 {
        let id = store.ingest(message(at, "P", 100)).await.expect("ingest");
        deliver(&store, id, Status::Sent).await;
    }
    let rule = PruneRule {
        content_before_ms: Some(1_000),
        ..PruneRule::default()
    };
    let (total, _) = prune_all(&store, rule, 100).await;
    assert_eq!(total.content_pruned, 5);
    store.close().await.expect("close");
    // Every message, the newest included, is content-pruned: opening must not fail on it.
    let store = Store::open_with(&path, ring("k2", 2, Some(("k1", 1)))).expect("reopen");
    loop {
        let p = store
            .rotate_batch(100)
            .await
            .expect("rotation passes pruned messages");
        if p.done {
            break;
        }
    }
    assert_eq!(store.rotation_pending().await.expect("pending"), 0);
    assert_eq!(
        store
            .content("c", 5, SOURCE, ContentStage::Raw)
            .await
            .expect("read"),
        None
    );
    assert!(store.connector("c", 5, "a").await.expect("read").is_some());
    store.close().await.expect("close");
}
