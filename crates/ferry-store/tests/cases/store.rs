//! The store's promises, on a real SQLite file: a module of `store.rs` (plaintext) and of
//! `store_encrypted.rs` (encryption at rest on), which each define `open_store`.

use ferry_store::{ContentStage, DedupeKey, DeliveryUpdate, Ingested, NewMessage, SOURCE, Status};

fn message(channel: &str, control_id: &str, destinations: &[&str]) -> NewMessage {
    NewMessage {
        channel: channel.to_owned(),
        received_at_ms: 1,
        control_id: Some(control_id.to_owned()),
        message_type: Some("ADT^A01".to_owned()),
        raw: format!("MSH|^~\\&|A|B|C|D|1||ADT^A01|{control_id}|P|2.5.1\r").into_bytes(),
        source_status: Status::Transformed,
        source_error: None,
        source_response: Some(b"ACK".to_vec()),
        destinations: destinations.iter().map(|d| (*d).to_owned()).collect(),
        filtered_destinations: Vec::new(),
        errored_destinations: Vec::new(),
        transformed: None,
        encoded: Vec::new(),
        maps: None,
        dedupe: None,
        metadata: Default::default(),
    }
}

fn update(id: i64, destination: &str, status: Status) -> DeliveryUpdate {
    DeliveryUpdate {
        channel: "c".into(),
        message_id: id,
        destination: destination.into(),
        status,
        attempts: 1,
        error: None,
        response: Some(b"resp".to_vec()),
        encoded: None,
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_a_drop_without_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/ferry.db");
    {
        let store = super::open_store(&path).expect("open");
        for i in 0..10 {
            let id = store
                .ingest(message("c", &format!("M{i}"), &["d"]))
                .await
                .expect("ingest");
            assert_eq!(id, i + 1);
        }
        // dropped without close, like a crash after the acknowledgements
    }
    let store = super::open_store(&path).expect("reopen");
    assert_eq!(store.queue_depth("c", "d").await.expect("depth"), 10);
    let next = store
        .ingest(message("c", "M10", &["d"]))
        .await
        .expect("ingest");
    assert_eq!(next, 11, "ids keep increasing across restarts");
}

#[tokio::test]
async fn queue_is_ordered_and_payload_falls_back_to_raw() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = super::open_store(&dir.path().join("s.db")).expect("open");
    for i in 0..5 {
        store
            .ingest(message("c", &format!("M{i}"), &["a", "b"]))
            .await
            .expect("ingest");
    }
    store
        .ingest(message("other", "X", &["a"]))
        .await
        .expect("ingest");
    let batch = store.queue_batch("c", "a", 0, 3).await.expect("batch");
    assert_eq!(
        batch.iter().map(|m| m.message_id).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(batch[0].payload.starts_with(b"MSH|"));
    assert_eq!(batch[0].control_id.as_deref(), Some("M0"));
    let rest = store.queue_batch("c", "a", 3, 10).await.expect("batch");
    assert_eq!(
        rest.iter().map(|m| m.message_id).collect::<Vec<_>>(),
        [4, 5]
    );

    store
        .update_delivery(update(1, "a", Status::Sent))
        .await
        .expect("sent");
    let mut retry = update(2, "a", Status::Queued);
    retry.attempts = 3;
    retry.error = Some("HTTP 503".into());
    store.update_delivery(retry).await.expect("retry");
    let head = store.queue_batch("c", "a", 0, 10).await.expect("batch");
    assert_eq!(
        head.iter().map(|m| m.message_id).collect::<Vec<_>>(),
        [2, 3, 4, 5]
    );
    assert_eq!(head[0].attempts, 3);
    assert_eq!(store.queue_depth("c", "a").await.expect("depth"), 4);
    assert_eq!(store.queue_depth("c", "b").await.expect("depth"), 5);
    let rec = store
        .connector("c", 1, "a")
        .await
        .expect("rec")
        .expect("some");
    assert_eq!(rec.status, Status::Sent);
    assert_eq!(
        store
            .content("c", 1, "a", ContentStage::Response)
            .await
            .expect("content"),
        Some(b"resp".to_vec())
    );
    assert_eq!(
        store
            .content("c", 1, SOURCE, ContentStage::Response)
            .await
            .expect("content"),
        Some(b"ACK".to_vec())
    );
    let mut encoded = update(3, "a", Status::Queued);
    encoded.encoded = Some(b"ENCODED".to_vec());
    store.update_delivery(encoded).await.expect("encoded");
    let head = store.queue_batch("c", "a", 2, 1).await.expect("batch");
    assert_eq!(head[0].payload, b"ENCODED");
}

#[tokio::test]
async fn a_bad_operation_fails_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = super::open_store(&dir.path().join("s.db")).expect("open");
    store
        .ingest(message("c", "M0", &["a"]))
        .await
        .expect("ingest");
    let (bad, good) = tokio::join!(
        store.update_delivery(update(99, "a", Status::Sent)),
        store.ingest(message("c", "M1", &["a"]))
    );
    assert!(
        bad.is_err(),
        "an update for a message that does not exist is an error"
    );
    assert_eq!(good.expect("the other write commits"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ingests_share_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = super::open_store(&dir.path().join("s.db")).expect("open");
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..32 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..20 {
                ids.push(
                    store
                        .ingest(message("c", &format!("T{t}-{i}"), &["a"]))
                        .await
                        .expect("ingest"),
                );
            }
            ids
        });
    }
    let mut all = Vec::new();
    while let Some(ids) = tasks.join_next().await {
        let ids = ids.expect("task");
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids increase per sender"
        );
        all.extend(ids);
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 640);
    let stats = store.stats();
    assert_eq!(stats.ops, 640);
    assert!(
        stats.commits < stats.ops,
        "group commit shared fsyncs: {stats:?}"
    );
    let counts = store.status_counts("c").await.expect("counts");
    assert!(
        counts
            .iter()
            .any(|c| c.connector == "a" && c.status == Status::Queued && c.count == 640)
    );
}

#[tokio::test]
async fn close_flushes_and_refuses_later_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = super::open_store(&dir.path().join("s.db")).expect("open");
    store.ingest(message("c", "M0", &[])).await.expect("ingest");
    store.close().await.expect("close");
    assert!(matches!(
        store.ingest(message("c", "M1", &[])).await,
        Err(ferry_store::StoreError::Closed)
    ));
    let reopened = super::open_store(&dir.path().join("s.db")).expect("reopen");
    assert_eq!(reopened.messages("c", 0, 10).await.expect("list").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_operations_mixed_into_busy_batches_fail_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = super::open_store(&dir.path().join("s.db")).expect("open");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.spawn(async move {
            if i % 2 == 0 {
                (
                    true,
                    store
                        .update_delivery(update(10_000 + i, "a", Status::Sent))
                        .await
                        .is_ok(),
                )
            } else {
                let r = store.ingest(message("c", &format!("M{i}"), &["a"])).await;
                (false, r.is_ok())
            }
        });
    }
    let (mut bad_ok, mut good_ok) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            (true, ok) => bad_ok += usize::from(ok),
            (false, ok) => good_ok += usize::from(ok),
        }
    }
    assert_eq!(bad_ok, 0, "updates of unknown messages must fail");
    assert_eq!(good_ok, 32, "every good write commits");
    let listed = store.messages("c", 0, 100).await.expect("list");
    assert_eq!(listed.len(), 32);
    assert!(listed.windows(2).all(|w| w[0].id < w[1].id));
}

#[tokio::test]
async fn filtered_destinations_get_a_filtered_row_and_no_queue_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = super::open_store(&dir.path().join("s.db")).expect("open");
    let mut m = message("c", "M1", &["a"]);
    m.filtered_destinations = vec!["b".to_owned()];
    let id = store.ingest(m).await.expect("ingest");
    assert_eq!(store.queue_depth("c", "a").await.expect("depth"), 1);
    assert_eq!(store.queue_depth("c", "b").await.expect("depth"), 0);
    assert!(
        store
            .queue_batch("c", "b", 0, 10)
            .await
            .expect("batch")
            .is_empty()
    );
    let record = store
        .connector("c", id, "b")
        .await
        .expect("read")
        .expect("a row for the filtered destination");
    assert_eq!(record.status, Status::Filtered);
}

#[tokio::test]
async fn transformed_and_encoded_content_is_what_the_queues_send() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = super::open_store(&dir.path().join("s.db")).expect("open");
    let mut m = message("c", "M1", &["plain", "own"]);
    m.transformed = Some(b"TRANSFORMED".to_vec());
    m.encoded = vec![("own".to_owned(), b"ENCODED".to_vec())];
    m.errored_destinations = vec![("broken".to_owned(), "transform 2: bad path".to_owned())];
    let id = store.ingest(m).await.expect("ingest");
    let payload = |d: &'static str| {
        let store = store.clone();
        async move {
            let batch = store.queue_batch("c", d, 0, 10).await.expect("batch");
            batch.into_iter().map(|q| q.payload).collect::<Vec<_>>()
        }
    };
    assert_eq!(payload("plain").await, vec![b"TRANSFORMED".to_vec()]);
    assert_eq!(payload("own").await, vec![b"ENCODED".to_vec()]);
    assert!(payload("broken").await.is_empty());
    let record = store
        .connector("c", id, "broken")
        .await
        .expect("read")
        .expect("a row for the failed destination");
    assert_eq!(record.status, Status::Error);
    assert_eq!(record.error.as_deref(), Some("transform 2: bad path"));
    assert_eq!(store.queue_depth("c", "broken").await.expect("depth"), 0);
}

/// A message with a dedupe key, received at `at` with a window starting at `since`.
fn keyed(control_id: &str, key: &str, at: i64, since: i64, ack: &str) -> NewMessage {
    NewMessage {
        received_at_ms: at,
        source_response: Some(ack.as_bytes().to_vec()),
        dedupe: Some(DedupeKey {
            key: key.to_owned(),
            since_ms: since,
        }),
        ..message("c", control_id, &["d"])
    }
}

#[tokio::test]
async fn a_duplicate_within_the_window_is_stored_filtered_with_the_original_ack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = super::open_store(&dir.path().join("s.db")).expect("open");
    let first = store
        .ingest_checked(keyed("M1", "HIS|GH|M1", 1_000, 0, "ACK-1"))
        .await
        .expect("ingest");
    assert_eq!(first, Ingested::Stored(1));
    let second = store
        .ingest_checked(keyed("M1", "HIS|GH|M1", 2_000, 1_000, "ACK-2"))
        .await
        .expect("ingest");
    assert_eq!(
        second,
        Ingested::Duplicate {
            id: 2,
            original: 1,
            response: Some(b"ACK-1".to_vec())
        }
    );
    // Stored, visible, but dispatched nowhere.
    let record = store.connector("c", 2, SOURCE).await.expect("read");
    let record = record.expect("source row");
    assert_eq!(record.status, Status::Filtered);
    assert_eq!(record.error.as_deref(), Some("duplicate of message 1"));
    assert!(store.connector("c", 2, "d").await.expect("read").is_none());
    assert_eq!(store.queue_depth("c", "d").await.expect("depth"), 1);
    let response = store
        .content("c", 2, SOURCE, ContentStage::Response)
        .await
        .expect("content");
    assert_eq!(response.as_deref(), Some(&b"ACK-1"[..]));
}

#[tokio::test]
async fn a_key_seen_before_the_window_or_another_key_is_not_a_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = super::open_store(&dir.path().join("s.db")).expect("open");
    let ingest = |m| store.ingest_checked(m);
    assert_eq!(
        ingest(keyed("M1", "HIS|GH|M1", 1_000, 0, "A"))
            .await
            .expect("1"),
        Ingested::Stored(1)
    );
    // The window now starts after the first one was received: not a duplicate.
    assert_eq!(
        ingest(keyed("M1", "HIS|GH|M1", 90_000, 1_001, "B"))
            .await
            .expect("2"),
        Ingested::Stored(2)
    );
    // Another sending facility with the same control id: not a duplicate.
    assert_eq!(
        ingest(keyed("M1", "HIS|OTHER|M1", 90_001, 0, "C"))
            .await
            .expect("3"),
        Ingested::Stored(3)
    );
    // Another channel with the same key: not a duplicate either.
    let other = NewMessage {
        channel: "other".into(),
        ..keyed("M1", "HIS|GH|M1", 90_002, 0, "D")
    };
    assert_eq!(ingest(other).await.expect("4"), Ingested::Stored(1));
    // Within the window of message 2 (the window keeps anchoring on stored originals).
    assert!(matches!(
        ingest(keyed("M1", "HIS|GH|M1", 90_003, 1_001, "E"))
            .await
            .expect("5"),
        Ingested::Duplicate { original: 2, .. }
    ));
    // Without a key, nothing is checked.
    assert_eq!(
        ingest(message("c", "M1", &["d"])).await.expect("6"),
        Ingested::Stored(5)
    );
    assert_eq!(store.queue_depth("c", "d").await.expect("depth"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ingests_of_one_key_store_exactly_one_original() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = super::open_store(&dir.path().join("s.db")).expect("open");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.spawn(async move {
            let ack = format!("ACK-{i}");
            store
                .ingest_checked(keyed("M1", "HIS|GH|M1", 1_000 + i, 0, &ack))
                .await
                .expect("ingest")
        });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.expect("task"));
    }
    let stored: Vec<_> = outcomes
        .iter()
        .filter_map(|o| match o {
            Ingested::Stored(id) => Some(*id),
            Ingested::Duplicate { .. } => None,
        })
        .collect();
    assert_eq!(stored.len(), 1, "{outcomes:?}");
    let original = stored[0];
    let original_ack = store
        .content("c", original, SOURCE, ContentStage::Response)
        .await
        .expect("content");
    for o in &outcomes {
        if let Ingested::Duplicate {
            original: o,
            response,
            ..
        } = o
        {
            assert_eq!(*o, original);
            assert_eq!(*response, original_ack);
        }
    }
    assert_eq!(store.queue_depth("c", "d").await.expect("depth"), 1);
}

#[tokio::test]
async fn a_version_1_store_is_migrated_and_keeps_its_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    {
        let store = super::open_store(&path).expect("open");
        store
            .ingest(message("c", "M0", &["d"]))
            .await
            .expect("ingest");
        store.close().await.expect("close");
    }
    {
        // Turn it back into a version 1 store.
        let conn = rusqlite::Connection::open(&path).expect("sqlite");
        conn.execute_batch(
            "DROP TABLE message_metadata; DROP INDEX messages_control_id; \
             DROP INDEX messages_dedupe; ALTER TABLE messages DROP COLUMN dedupe_key; \
             DROP INDEX messages_received; DROP INDEX messages_content_kept; \
             ALTER TABLE messages DROP COLUMN content_pruned_at_ms; \
             ALTER TABLE channels DROP COLUMN max_deleted_id; \
             PRAGMA user_version = 1;",
        )
        .expect("downgrade");
    }
    let store = super::open_store(&path).expect("reopen");
    assert_eq!(store.queue_depth("c", "d").await.expect("depth"), 1);
    assert_eq!(
        store
            .ingest_checked(keyed("M1", "k", 5, 0, "A"))
            .await
            .expect("ingest"),
        Ingested::Stored(2)
    );
    assert!(matches!(
        store
            .ingest_checked(keyed("M1", "k", 6, 0, "B"))
            .await
            .expect("dup"),
        Ingested::Duplicate { original: 2, .. }
    ));
}
