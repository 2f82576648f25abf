//! The audit trail's tamper evidence, on a real SQLite file edited behind the store's back
//! with plain SQL, one kind of edit per test.

use std::path::{Path, PathBuf};

use ferry_store::audit::{self, AuditRecord};
use ferry_store::{
    AuditAction, AuditEvent, AuditFilter, AuditSink, ProblemKind, Store, VerifyReport,
};
use rusqlite::{Connection, params};

const N: i64 = 10;

/// A store file holding `N` sealed records, closed again.
async fn sealed_log() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let store = Store::open(&path).expect("open");
    let actions = [
        AuditAction::EngineStart,
        AuditAction::Deploy,
        AuditAction::Login,
        AuditAction::MessageView,
        AuditAction::MessageSearch,
    ];
    for i in 0..N {
        let event = AuditEvent::new(actions[(i as usize) % actions.len()])
            .actor(format!("user{i}"))
            .target(format!("channel/adt/message/{i}"))
            .source_address("192.0.2.7:4000")
            .detail("i", i);
        let record = store.audit_append(event).await.expect("append");
        assert_eq!(record.seq, i + 1);
    }
    store.close().await.expect("close");
    (dir, path)
}

fn sql(path: &Path) -> Connection {
    Connection::open(path).expect("open the file directly")
}

fn record(conn: &Connection, seq: i64) -> AuditRecord {
    conn.query_row(
        "SELECT seq, time_ms, node, actor, action, target, source, outcome, details, \
         prev_hash, hash FROM audit_log WHERE seq = ?1",
        [seq],
        |r| {
            Ok(AuditRecord {
                seq: r.get(0)?,
                time_ms: r.get(1)?,
                node: r.get(2)?,
                actor: r.get(3)?,
                action: r.get(4)?,
                target: r.get(5)?,
                source: r.get(6)?,
                outcome: r.get(7)?,
                details: r.get(8)?,
                prev_hash: r.get(9)?,
                hash: r.get(10)?,
            })
        },
    )
    .expect("read a record")
}

fn insert(conn: &Connection, r: &AuditRecord) {
    conn.execute(
        "INSERT INTO audit_log (seq, time_ms, node, actor, action, target, source, outcome, \
         details, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            r.seq,
            r.time_ms,
            r.node,
            r.actor,
            r.action,
            r.target,
            r.source,
            r.outcome,
            r.details,
            r.prev_hash,
            r.hash
        ],
    )
    .expect("insert a record");
}

fn verify(path: &Path) -> VerifyReport {
    audit::verify_file(path, None).expect("verify")
}

fn first(report: &VerifyReport) -> (i64, ProblemKind) {
    let p = report
        .first_problem()
        .unwrap_or_else(|| panic!("tampering not detected: {report:?}"));
    (p.seq, p.kind)
}

#[tokio::test]
async fn an_untampered_log_verifies() {
    let (_dir, path) = sealed_log().await;
    let report = verify(&path);
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.records, N as u64);
    let last = report.last.clone().expect("last");
    assert_eq!(last.seq, N);
    assert_eq!(report.head, Some(last.clone()));
    // The same through a running store, and the chain continues across a reopen.
    let store = Store::open(&path).expect("reopen");
    let next = store
        .audit_append(AuditEvent::new(AuditAction::EngineStop))
        .await
        .expect("append");
    assert_eq!(next.seq, N + 1);
    assert_eq!(next.prev_hash, last.hash);
    let report = store.audit_verify().await.expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.records, N as u64 + 1);
    store.close().await.expect("close");
}

#[tokio::test]
async fn an_edited_field_is_found() {
    let (_dir, path) = sealed_log().await;
    sql(&path)
        .execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 5", [])
        .expect("edit");
    let report = verify(&path);
    assert_eq!(first(&report), (5, ProblemKind::Edited));
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].to_string().contains("record 5"));
}

#[tokio::test]
async fn a_deleted_record_is_found() {
    let (_dir, path) = sealed_log().await;
    sql(&path)
        .execute("DELETE FROM audit_log WHERE seq = 5", [])
        .expect("delete");
    let report = verify(&path);
    assert_eq!(first(&report), (5, ProblemKind::Deleted));
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
}

#[tokio::test]
async fn swapped_records_are_found() {
    let (_dir, path) = sealed_log().await;
    // Swap the sequence numbers of records 4 and 6 (their contents trade places).
    sql(&path)
        .execute_batch(
            "UPDATE audit_log SET seq = -4 WHERE seq = 4;
             UPDATE audit_log SET seq = 4 WHERE seq = 6;
             UPDATE audit_log SET seq = 6 WHERE seq = -4;",
        )
        .expect("swap");
    let report = verify(&path);
    assert_eq!(first(&report), (4, ProblemKind::Reordered));
    let kinds: Vec<_> = report.problems.iter().map(|p| (p.seq, p.kind)).collect();
    assert_eq!(
        kinds,
        [(4, ProblemKind::Reordered), (6, ProblemKind::Reordered)]
    );
    assert!(
        report.problems[0].detail.contains("number 6"),
        "{}",
        report.problems[0]
    );
}

#[tokio::test]
async fn adjacent_swapped_contents_are_found() {
    let (_dir, path) = sealed_log().await;
    let conn = sql(&path);
    let (five, six) = (record(&conn, 5), record(&conn, 6));
    conn.execute("DELETE FROM audit_log WHERE seq IN (5, 6)", [])
        .expect("delete");
    insert(&conn, &AuditRecord { seq: 5, ..six });
    insert(&conn, &AuditRecord { seq: 6, ..five });
    let report = verify(&path);
    assert_eq!(first(&report), (5, ProblemKind::Reordered));
}

#[tokio::test]
async fn a_forged_record_appended_after_the_head_is_found() {
    let (_dir, path) = sealed_log().await;
    let conn = sql(&path);
    // A well-formed forgery: correctly chained and hashed, only the head was not moved.
    let last = record(&conn, N);
    let mut forged = AuditRecord {
        seq: N + 1,
        actor: "mallory".into(),
        prev_hash: last.hash.clone(),
        ..last
    };
    forged.hash = forged.compute_hash().expect("hash");
    insert(&conn, &forged);
    let report = verify(&path);
    assert_eq!(first(&report), (N + 1, ProblemKind::Inserted));
}

#[tokio::test]
async fn a_forged_record_inserted_in_the_middle_is_found() {
    let (_dir, path) = sealed_log().await;
    let conn = sql(&path);
    // Make room at 6 by renumbering 6..=N to 7..=N+1, then insert a correctly hashed record.
    conn.execute_batch(
        "UPDATE audit_log SET seq = -(seq + 1) WHERE seq >= 6;
         UPDATE audit_log SET seq = -seq WHERE seq < 0;",
    )
    .expect("renumber");
    let five = record(&conn, 5);
    let mut forged = AuditRecord {
        seq: 6,
        actor: "mallory".into(),
        prev_hash: five.hash.clone(),
        ..five
    };
    forged.hash = forged.compute_hash().expect("hash");
    insert(&conn, &forged);
    let report = verify(&path);
    assert_eq!(first(&report), (7, ProblemKind::Reordered));
    assert!(
        report.problems[0].detail.contains("inserted before it"),
        "{}",
        report.problems[0]
    );
}

#[tokio::test]
async fn truncation_of_the_last_records_is_found() {
    let (_dir, path) = sealed_log().await;
    sql(&path)
        .execute("DELETE FROM audit_log WHERE seq > 8", [])
        .expect("truncate");
    let report = verify(&path);
    assert_eq!(first(&report), (9, ProblemKind::Truncated));
    assert!(report.problems[0].detail.contains("9 to 10"));
}

#[tokio::test]
async fn an_edit_with_a_recomputed_hash_breaks_the_chain_at_the_next_record() {
    let (_dir, path) = sealed_log().await;
    let conn = sql(&path);
    let mut five = record(&conn, 5);
    five.actor = "mallory".into();
    five.hash = five.compute_hash().expect("hash");
    conn.execute(
        "UPDATE audit_log SET actor = ?1, hash = ?2 WHERE seq = 5",
        params![five.actor, five.hash],
    )
    .expect("edit and re-hash");
    let report = verify(&path);
    assert_eq!(first(&report), (6, ProblemKind::ChainBroken));
    assert!(
        report.problems[0].detail.contains("record 5 was edited"),
        "{}",
        report.problems[0]
    );
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
}

#[tokio::test]
async fn a_rehashed_last_record_disagrees_with_the_head() {
    let (_dir, path) = sealed_log().await;
    let conn = sql(&path);
    let mut last = record(&conn, N);
    last.actor = "mallory".into();
    last.hash = last.compute_hash().expect("hash");
    conn.execute(
        "UPDATE audit_log SET actor = ?1, hash = ?2 WHERE seq = ?3",
        params![last.actor, last.hash, N],
    )
    .expect("edit and re-hash");
    let report = verify(&path);
    assert_eq!(first(&report), (N, ProblemKind::HeadMismatch));
}

/// The documented limit: a consistent rewrite of the chain and the head is invisible from
/// inside the database, and caught only against a head kept elsewhere.
#[tokio::test]
async fn a_consistent_rewrite_is_caught_only_by_an_external_head() {
    let (_dir, path) = sealed_log().await;
    let outside = verify(&path).last.expect("head");
    let conn = sql(&path);
    let mut prev = record(&conn, 4).hash;
    for seq in 5..=N {
        let mut r = record(&conn, seq);
        if seq == 5 {
            r.actor = "mallory".into();
        }
        r.prev_hash = prev;
        r.hash = r.compute_hash().expect("hash");
        conn.execute(
            "UPDATE audit_log SET actor = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            params![r.actor, r.prev_hash, r.hash, seq],
        )
        .expect("rewrite");
        prev = r.hash;
    }
    conn.execute("UPDATE audit_head SET hash = ?1", [&prev])
        .expect("move the head");
    assert!(verify(&path).is_ok(), "a consistent rewrite verifies");
    let report = audit::verify_file(&path, Some(&outside.to_string())).expect("verify");
    assert_eq!(first(&report).1, ProblemKind::ExpectedHeadMissing);
    // An earlier head that is still in the chain passes.
    let early = record(&conn, 3).hash;
    let report = audit::verify_file(&path, Some(&early)).expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.expected_head_at, Some(3));
}

#[tokio::test]
async fn a_deleted_head_row_is_reported() {
    let (_dir, path) = sealed_log().await;
    sql(&path)
        .execute("DELETE FROM audit_head", [])
        .expect("delete head");
    assert_eq!(first(&verify(&path)).1, ProblemKind::HeadMissing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits_and_stay_contiguous() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s.db")).expect("open");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .audit_append(AuditEvent::new(AuditAction::MessageView).actor(format!("u{i}")))
                .await
        });
    }
    let mut seqs = Vec::new();
    while let Some(r) = tasks.join_next().await {
        seqs.push(r.expect("join").expect("append").seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    assert!(store.stats().commits < 200, "appends were group-committed");
    let report = store.audit_verify().await.expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.records, 200);
    store.close().await.expect("close");
}

#[tokio::test]
async fn search_filters_records() {
    let (_dir, path) = sealed_log().await;
    let store = Store::open(&path).expect("open");
    let views = store
        .audit_search(AuditFilter {
            actions: vec![AuditAction::MessageView],
            ..AuditFilter::default()
        })
        .await
        .expect("search");
    assert_eq!(views.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 9]);
    let by_target = store
        .audit_search(AuditFilter {
            target: Some("channel/adt".into()),
            after_seq: Some(7),
            ..AuditFilter::default()
        })
        .await
        .expect("search");
    assert_eq!(
        by_target.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [8, 9, 10]
    );
    let by_actor = store
        .audit_search(AuditFilter {
            actor: Some("user2".into()),
            ..AuditFilter::default()
        })
        .await
        .expect("search");
    assert_eq!(by_actor.len(), 1);
    assert_eq!(by_actor[0].action(), Some(AuditAction::Login));
    assert_eq!(by_actor[0].to_json()["details"]["i"], 2);
    store.close().await.expect("close");
}

/// A full buffer drops events, counts them, and records how many were lost.
#[tokio::test]
async fn the_sink_counts_and_records_drops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s.db")).expect("open");
    let sink = AuditSink::spawn(store.clone(), 1);
    // On this single-threaded runtime the sink's task cannot run before we yield.
    assert!(sink.record(AuditEvent::new(AuditAction::TlsRejected).failure()));
    for _ in 0..5 {
        assert!(!sink.record(AuditEvent::new(AuditAction::TlsRejected).failure()));
    }
    assert_eq!(sink.dropped(), 5);
    sink.close().await;
    let records = store
        .audit_search(AuditFilter::default())
        .await
        .expect("search");
    let actions: Vec<_> = records.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["audit_dropped", "tls_rejected"]);
    assert_eq!(records[0].to_json()["details"]["dropped"], 5);
    store.close().await.expect("close");
}
