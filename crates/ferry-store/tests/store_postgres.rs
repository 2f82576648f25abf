//! The store's promises on PostgreSQL (the server on 127.0.0.1:5432, a private schema per
//! test): every case of `cases/store.rs` and `cases/search.rs` (encrypted: `store_postgres_encrypted.rs`), then
//! what several nodes on one database add: two `Store`s on one schema ingesting one dedupe
//! key concurrently dispatch it once, and their concurrent audit appends form one chain.

use std::path::Path;

use ferry_store::{
    AuditAction, AuditEvent, AuditFilter, DedupeKey, Ingested, NewMessage, ProblemKind, Status,
    Store, StoreError, StoreOptions,
};

mod pg;
use pg::{pg, test_db, url_for};

/// The cases that rewrite the SQLite file itself do not apply.
const SQLITE_FILE: bool = false;

fn open_store(path: &Path) -> Result<Store, StoreError> {
    Store::open_postgres(pg(&url_for(path)), StoreOptions::default())
}

#[path = "cases/store.rs"]
mod cases;

#[path = "cases/search.rs"]
mod search;

fn message(channel: &str, control_id: &str, dedupe: Option<&str>) -> NewMessage {
    NewMessage {
        channel: channel.to_owned(),
        received_at_ms: 10,
        control_id: Some(control_id.to_owned()),
        message_type: Some("ADT^A01".to_owned()),
        raw: format!("MSH|^~\\&|A|B|C|D|1||ADT^A01|{control_id}|P|2.5.1\r").into_bytes(),
        source_status: Status::Transformed,
        source_error: None,
        source_response: Some(format!("ACK {control_id}").into_bytes()),
        destinations: vec!["d".to_owned()],
        filtered_destinations: Vec::new(),
        errored_destinations: Vec::new(),
        transformed: None,
        encoded: Vec::new(),
        maps: None,
        dedupe: dedupe.map(|k| DedupeKey {
            key: k.to_owned(),
            since_ms: 0,
        }),
        metadata: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_database_dispatch_a_duplicated_key_once() {
    let db = test_db();
    let a = Store::open_postgres(pg(db.url()), StoreOptions::default()).expect("node a");
    let b = Store::open_postgres(pg(db.url()), StoreOptions::default()).expect("node b");
    // Plenty of unrelated traffic on both nodes, with one key sent 10 times to each.
    let mut tasks = Vec::new();
    for (node, store) in [("a", a.clone()), ("b", b.clone())] {
        for i in 0..40 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let dedupe = (i % 4 == 0).then_some("SAME-KEY");
                store
                    .ingest_checked(message("c", &format!("{node}{i}"), dedupe))
                    .await
                    .expect("ingest")
            }));
        }
    }
    let mut stored = 0;
    let mut duplicates = 0;
    let mut ids = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ingested::Stored(id) => {
                stored += 1;
                ids.push(id);
            }
            Ingested::Duplicate { id, .. } => {
                duplicates += 1;
                ids.push(id);
            }
        }
    }
    assert_eq!(duplicates, 19, "of 20 ingests of one key, one original");
    assert_eq!(stored, 61);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 80, "ids are unique across nodes");
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&80), "and without gaps here");
    // The key's original is queued once; every duplicate went nowhere.
    assert_eq!(a.queue_depth("c", "d").await.expect("depth"), 61);
    assert_eq!(b.queue_depth("c", "d").await.expect("depth"), 61);
    a.close().await.expect("close");
    b.close().await.expect("close");
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_audit_appends_from_two_nodes_form_one_chain() {
    let db = test_db();
    let a = Store::open_postgres(pg(db.url()), StoreOptions::default()).expect("node a");
    let b = Store::open_postgres(pg(db.url()), StoreOptions::default()).expect("node b");
    let mut tasks = Vec::new();
    for (node, store) in [("a", a.clone()), ("b", b.clone())] {
        for i in 0..50 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .audit_append(
                        AuditEvent::new(AuditAction::ConfigChange)
                            .node(node)
                            .target(format!("t/{i}")),
                    )
                    .await
                    .expect("append")
                    .seq
            }));
        }
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.expect("task"));
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=100).collect::<Vec<i64>>());
    for store in [&a, &b] {
        let report = store.audit_verify().await.expect("verify");
        assert!(report.is_ok(), "{:?}", report.first_problem());
        assert_eq!(report.records, 100);
    }
    a.close().await.expect("close");
    b.close().await.expect("close");
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_search_shipping_and_tampering_on_postgres() {
    let db = test_db();
    let store = Store::open_postgres(pg(db.url()), StoreOptions::default()).expect("open");
    for i in 1..=5 {
        store
            .audit_append(
                AuditEvent::new(AuditAction::ConfigChange)
                    .actor(if i % 2 == 0 { "alice" } else { "bob" })
                    .target(format!("channel/adt/message/{i}")),
            )
            .await
            .expect("append");
    }
    let alice = store
        .audit_search(AuditFilter {
            actor: Some("alice".into()),
            target: Some("channel/adt".into()),
            ..AuditFilter::default()
        })
        .await
        .expect("search");
    assert_eq!(alice.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 4]);
    assert_eq!(store.audit_shipped_upto().await.expect("shipped"), 0);
    store.audit_set_shipped(3).await.expect("ship");
    store.audit_set_shipped(2).await.expect("never back");
    assert_eq!(store.audit_shipped_upto().await.expect("shipped"), 3);
    let head = store.audit_verify().await.expect("verify");
    assert!(head.is_ok(), "{:?}", head.first_problem());
    let expected = head.last.clone().expect("head").to_string();

    // Edit a field behind the store's back, then truncate the last record.
    let url = db.url().to_owned();
    let tamper = move |sql: &'static str| {
        let url = url.clone();
        std::thread::spawn(move || {
            postgres::Client::connect(&url, postgres::NoTls)
                .expect("client")
                .batch_execute(sql)
                .expect("tamper");
        })
        .join()
        .expect("tamper thread");
    };
    tamper("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3");
    let report = store.audit_verify().await.expect("verify");
    assert_eq!(
        report.first_problem().map(|p| (p.seq, p.kind)),
        Some((3, ProblemKind::Edited))
    );
    tamper("UPDATE audit_log SET actor = 'bob' WHERE seq = 3; DELETE FROM audit_log WHERE seq = 5");
    let report = store
        .audit_verify_expecting(Some(expected))
        .await
        .expect("verify");
    let kinds: Vec<ProblemKind> = report.problems.iter().map(|p| p.kind).collect();
    assert!(kinds.contains(&ProblemKind::Truncated), "{kinds:?}");
    assert!(
        kinds.contains(&ProblemKind::ExpectedHeadMissing),
        "{kinds:?}"
    );
    store.close().await.expect("close");
    drop(db);
}
