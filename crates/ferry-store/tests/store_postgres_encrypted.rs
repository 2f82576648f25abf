//! Encryption at rest on PostgreSQL: every case of `cases/store.rs` and `cases/search.rs`
//! with a keyring, then no plaintext in the database and a wrong key refusing to open.

use std::path::Path;

use ferry_store::{Key, Keyring, NewMessage, Status, Store, StoreError, StoreOptions};

mod pg;
use pg::{pg, url_for};

/// The cases that rewrite the SQLite file itself do not apply.
const SQLITE_FILE: bool = false;

fn canary() -> NewMessage {
    NewMessage {
        channel: "c".to_owned(),
        received_at_ms: 10,
        control_id: Some("CANARY-1".to_owned()),
        message_type: Some("ADT^A01".to_owned()),
        raw: Vec::new(),
        source_status: Status::Transformed,
        source_error: None,
        source_response: None,
        destinations: vec!["d".to_owned()],
        filtered_destinations: Vec::new(),
        errored_destinations: Vec::new(),
        transformed: None,
        encoded: Vec::new(),
        maps: None,
        dedupe: None,
        metadata: Default::default(),
    }
}

fn open_store(path: &Path) -> Result<Store, StoreError> {
    let ring = Keyring::new("2026-12", Key::from_bytes(&[1; 32]).expect("key")).expect("ring");
    Store::open_postgres(
        pg(&url_for(path)),
        StoreOptions {
            keyring: Some(ring),
        },
    )
}

#[path = "cases/store.rs"]
mod cases;

#[path = "cases/search.rs"]
mod search;

#[tokio::test]
async fn the_database_holds_no_plaintext_and_a_wrong_key_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let store = open_store(&path).expect("open");
    let mut m = canary();
    m.raw = b"MSH|^~\\&|A|B|C|D|1||ADT^A01|CANARY-1|P|2.5.1\rPID|1||CANARYMRN\r".to_vec();
    store.ingest(m).await.expect("ingest");
    store.close().await.expect("close");
    let url = url_for(&path);
    let found: i64 = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("client");
        c.query_one(
            "SELECT COUNT(*) FROM messages WHERE position('CANARYMRN'::bytea in raw) > 0",
            &[],
        )
        .expect("count")
        .get(0)
    })
    .join()
    .expect("query");
    assert_eq!(found, 0, "plaintext in the database");
    let wrong = Keyring::new("2026-12", Key::from_bytes(&[2; 32]).expect("key")).expect("ring");
    let err = Store::open_postgres(
        pg(&url_for(&path)),
        StoreOptions {
            keyring: Some(wrong),
        },
    )
    .expect_err("a wrong key must refuse");
    assert!(matches!(err, StoreError::Crypto(_)), "{err}");
}

fn ring(current: (&str, u8), old: &[(&str, u8)]) -> StoreOptions {
    let mut ring =
        Keyring::new(current.0, Key::from_bytes(&[current.1; 32]).expect("key")).expect("ring");
    for (id, byte) in old {
        ring = ring
            .with_old(id, Key::from_bytes(&[*byte; 32]).expect("key"))
            .expect("old key");
    }
    StoreOptions {
        keyring: Some(ring),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_moves_every_record_to_the_new_key_on_postgres() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let url = url_for(&path);
    let old = Store::open_postgres(pg(&url), ring(("k1", 1), &[])).expect("open");
    for i in 0..30 {
        let mut m = canary();
        m.control_id = Some(format!("R{i}"));
        m.raw = format!("MSH|^~\\&|A|B|C|D|1||ADT^A01|R{i}|P|2.5.1\r").into_bytes();
        m.source_response = Some(b"ACK".to_vec());
        m.transformed = Some(b"transformed".to_vec());
        m.errored_destinations = vec![("e".to_owned(), "bad".to_owned())];
        m.metadata = [("mrn", format!("MRN{i}"))].into_iter().collect();
        old.ingest(m).await.expect("ingest");
    }
    old.close().await.expect("close");
    drop(old);
    let store = Store::open_postgres(pg(&url), ring(("k2", 2), &[("k1", 1)])).expect("reopen");
    let pending = store.rotation_pending().await.expect("pending");
    assert_eq!(
        pending,
        30 * 5,
        "raw, response, transformed, error, metadata"
    );
    let mut rotated = 0;
    loop {
        let p = store.rotate_batch(7).await.expect("rotate");
        rotated += p.rotated;
        if p.done {
            break;
        }
    }
    assert_eq!(rotated, pending);
    assert_eq!(store.rotation_pending().await.expect("pending"), 0);
    store.close().await.expect("close");
    drop(store);
    // The old key can go: everything reads under the new one alone.
    let store = Store::open_postgres(pg(&url), ring(("k2", 2), &[])).expect("new key only");
    let raw = store
        .content("c", 30, "source", ferry_store::ContentStage::Raw)
        .await
        .expect("raw")
        .expect("present");
    assert!(raw.ends_with(b"|R29|P|2.5.1\r"));
    let found = store
        .search_messages(ferry_store::MessageQuery {
            channel: "c".into(),
            metadata: vec![("mrn".into(), "MRN7".into())],
            limit: 10,
            max_examined: 100,
            ..Default::default()
        })
        .await
        .expect("search");
    assert_eq!(
        found.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![8]
    );
    let error = store
        .connector("c", 1, "e")
        .await
        .expect("error")
        .expect("row");
    assert_eq!(error.error.as_deref(), Some("bad"));
    store.close().await.expect("close");
}
