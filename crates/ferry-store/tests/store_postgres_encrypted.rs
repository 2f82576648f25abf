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
