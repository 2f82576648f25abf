//! Encryption at rest on a real SQLite file: every case of `cases/store.rs` again with
//! encryption on, then the promises of encryption itself (no plaintext in the file, tampered
//! or moved records fail, rotation, wrong or missing keys).

use std::path::Path;

use ferry_store::{
    ContentStage, DeliveryUpdate, Key, Keyring, MessageQuery, NewMessage, SOURCE, Status, Store,
    StoreError, StoreOptions,
};

fn key(byte: u8) -> Key {
    Key::from_bytes(&[byte; 32]).expect("key")
}

fn options(current: (&str, u8), old: &[(&str, u8)]) -> StoreOptions {
    let mut ring = Keyring::new(current.0, key(current.1)).expect("keyring");
    for (id, byte) in old {
        ring = ring.with_old(id, key(*byte)).expect("old key");
    }
    StoreOptions {
        keyring: Some(ring),
    }
}

fn open_store(path: &Path) -> Result<Store, StoreError> {
    Store::open_with(path, options(("2026-12", 1), &[]))
}

/// The cases that rewrite the SQLite file itself run here.
const SQLITE_FILE: bool = true;

#[path = "cases/store.rs"]
mod cases;

#[path = "cases/search.rs"]
mod search;

const CANARY: &str = "CANARYPATIENT^ZELDA^QUINTESSA";
/// The MRN every canary message is indexed under.
const CANARY_MRN: &str = "CANARYMRN-31337";

/// A message carrying the canary in every place that can hold PHI.
fn canary_message(n: usize) -> NewMessage {
    let raw = format!(
        "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|C{n}|P|2.5.1\rPID|1||{n}^^^MRN||{CANARY}||19700101|F\r"
    );
    NewMessage {
        channel: "adt".into(),
        received_at_ms: 1,
        control_id: Some(format!("C{n}")),
        message_type: Some("ADT^A01".into()),
        raw: raw.clone().into_bytes(),
        source_status: Status::Transformed,
        source_error: None,
        source_response: Some(format!("MSA|AA|C{n}|{CANARY} accepted").into_bytes()),
        destinations: vec!["file".into(), "http".into()],
        filtered_destinations: Vec::new(),
        errored_destinations: vec![("broken".into(), format!("PID-5 `{CANARY}` is too long"))],
        transformed: Some(raw.replace("ADT^A01", "ADT^A08").into_bytes()),
        encoded: vec![(
            "http".into(),
            format!("{{\"name\":\"{CANARY}\"}}").into_bytes(),
        )],
        maps: Some(format!("{{\"channel_map\":{{\"patient\":\"{CANARY}\"}}}}").into_bytes()),
        dedupe: None,
        metadata: [("mrn", CANARY_MRN)].into_iter().collect(),
    }
}

fn canary_delivery(id: i64) -> DeliveryUpdate {
    DeliveryUpdate {
        channel: "adt".into(),
        message_id: id,
        destination: "file".into(),
        status: Status::Queued,
        attempts: 1,
        error: Some(format!("remote said: unknown patient {CANARY}")),
        response: Some(format!("NAK for {CANARY}").into_bytes()),
        encoded: Some(format!("sent {CANARY}").into_bytes()),
    }
}

/// How often `needle` occurs in the database file and its WAL.
fn occurrences(db: &Path, needle: &[u8]) -> usize {
    let mut count = 0;
    for suffix in ["", "-wal", "-journal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        if let Ok(bytes) = std::fs::read(Path::new(&name)) {
            count += bytes.windows(needle.len()).filter(|w| *w == needle).count();
        }
    }
    count
}

/// The ids of the messages indexed under `mrn`, newest first.
async fn by_mrn(store: &Store, mrn: &str) -> Vec<i64> {
    let page = store
        .search_messages(MessageQuery {
            channel: "adt".into(),
            metadata: vec![("mrn".into(), mrn.into())],
            limit: 1000,
            max_examined: 1000,
            ..MessageQuery::default()
        })
        .await
        .expect("search");
    page.messages.iter().map(|m| m.id).collect()
}

async fn ingest_canaries(store: &Store, n: usize) {
    for i in 0..n {
        let id = store.ingest(canary_message(i)).await.expect("ingest");
        store
            .update_delivery(canary_delivery(id))
            .await
            .expect("delivery");
    }
}

/// Reads every stage back and checks it holds the canary in the clear.
async fn assert_readable(store: &Store, id: i64) {
    let canary = CANARY.as_bytes();
    let has = |b: Option<Vec<u8>>| b.is_some_and(|b| b.windows(canary.len()).any(|w| w == canary));
    for (connector, stage) in [
        (SOURCE, ContentStage::Raw),
        (SOURCE, ContentStage::Response),
        (SOURCE, ContentStage::Transformed),
        (SOURCE, ContentStage::Maps),
        ("http", ContentStage::Encoded),
        ("file", ContentStage::Response),
        ("file", ContentStage::Encoded),
        ("file", ContentStage::Error),
        ("broken", ContentStage::Error),
    ] {
        let content = store
            .content("adt", id, connector, stage)
            .await
            .unwrap_or_else(|e| panic!("reading {connector} {stage:?} of {id}: {e}"));
        assert!(has(content), "{connector} {stage:?} of {id} reads back");
    }
    let record = store
        .connector("adt", id, "broken")
        .await
        .expect("read")
        .expect("row");
    assert!(record.error.is_some_and(|e| e.contains(CANARY)));
}

#[tokio::test]
async fn the_store_file_holds_no_plaintext_of_a_canary_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let store = open_store(&path).expect("open");
    ingest_canaries(&store, 20).await;
    // Everything decrypts back through the ordinary reads.
    assert_readable(&store, 1).await;
    let queued = store
        .queue_batch("adt", "http", 0, 100)
        .await
        .expect("queue");
    assert_eq!(queued.len(), 20);
    assert!(queued[0].payload.starts_with(b"{\"name\":\"CANARYPATIENT"));
    let queued = store
        .queue_batch("adt", "file", 0, 100)
        .await
        .expect("queue");
    assert_eq!(queued[0].payload, format!("sent {CANARY}").into_bytes());
    // While the WAL holds the writes…
    assert_eq!(occurrences(&path, CANARY.as_bytes()), 0, "in the WAL");
    assert_eq!(occurrences(&path, b"ZELDA"), 0);
    assert_eq!(
        occurrences(&path, CANARY_MRN.as_bytes()),
        0,
        "no MRN in the WAL"
    );
    // The MRN is searchable all the same, through its blind index.
    assert_eq!(
        by_mrn(&store, CANARY_MRN).await,
        (1..=20).rev().collect::<Vec<_>>()
    );
    assert!(
        by_mrn(&store, "CANARYMRN-3133").await.is_empty(),
        "exact only"
    );
    // … and after the checkpoint at close.
    store.close().await.expect("close");
    assert_eq!(occurrences(&path, CANARY.as_bytes()), 0, "after checkpoint");
    assert_eq!(
        occurrences(&path, CANARY_MRN.as_bytes()),
        0,
        "no MRN in the file"
    );
    assert!(
        occurrences(&path, b"ADT^A01") > 0,
        "metadata stays readable"
    );
}

#[tokio::test]
async fn without_encryption_the_canary_is_in_the_file() {
    // The control for the test above: the scan does find plaintext.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let store = Store::open(&path).expect("open");
    ingest_canaries(&store, 2).await;
    store.close().await.expect("close");
    assert!(occurrences(&path, CANARY.as_bytes()) > 0);
    assert!(
        occurrences(&path, CANARY_MRN.as_bytes()) > 0,
        "a plaintext store indexes the MRN as is"
    );
}

#[tokio::test]
async fn a_tampered_record_is_an_error_never_garbage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let store = open_store(&path).expect("open");
    ingest_canaries(&store, 2).await;
    store.close().await.expect("close");
    {
        let conn = rusqlite::Connection::open(&path).expect("sqlite");
        let raw: Vec<u8> = conn
            .query_row("SELECT raw FROM messages WHERE id = 1", [], |r| r.get(0))
            .expect("raw");
        let mut bad = raw.clone();
        let i = bad.len() - 30;
        bad[i] ^= 0x01;
        conn.execute("UPDATE messages SET raw = ?1 WHERE id = 1", [bad])
            .expect("tamper");
        // A truncated envelope, too.
        conn.execute(
            "UPDATE content SET data = substr(data, 1, 10) WHERE message_id = 1 AND stage = 'maps'",
            [],
        )
        .expect("truncate");
    }
    let store = open_store(&path).expect("the newest message is intact");
    let err = store
        .content("adt", 1, SOURCE, ContentStage::Raw)
        .await
        .expect_err("tampered");
    assert!(matches!(err, StoreError::Crypto(_)), "{err}");
    assert!(err.to_string().contains("fails authentication"), "{err}");
    assert!(err.to_string().contains("message 1"), "{err}");
    let err = store
        .content("adt", 1, SOURCE, ContentStage::Maps)
        .await
        .expect_err("truncated");
    assert!(err.to_string().contains("truncated"), "{err}");
    // The file destination's queue sends its own encoded content, which is intact.
    assert!(store.queue_batch("adt", "file", 0, 10).await.is_ok());
    assert_readable(&store, 2).await;
}

#[tokio::test]
async fn a_record_moved_to_another_row_does_not_decrypt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let store = open_store(&path).expect("open");
    ingest_canaries(&store, 3).await;
    store.close().await.expect("close");
    {
        let conn = rusqlite::Connection::open(&path).expect("sqlite");
        // Message 1's raw into message 2; the source's transformed into a destination's
        // encoded of the same message; an error text to another connector.
        conn.execute_batch(
            "UPDATE messages SET raw = (SELECT raw FROM messages WHERE id = 1) WHERE id = 2;
             UPDATE content SET data = (SELECT data FROM content WHERE message_id = 1 \
               AND connector = 'source' AND stage = 'transformed') \
               WHERE message_id = 1 AND connector = 'http' AND stage = 'encoded';
             UPDATE connector_messages SET error = (SELECT error FROM connector_messages \
               WHERE message_id = 1 AND connector = 'broken') \
               WHERE message_id = 1 AND connector = 'file';",
        )
        .expect("move");
    }
    let store = open_store(&path).expect("open");
    for (id, connector, stage) in [
        (2, SOURCE, ContentStage::Raw),
        (1, "http", ContentStage::Encoded),
        (1, "file", ContentStage::Error),
    ] {
        let err = store
            .content("adt", id, connector, stage)
            .await
            .expect_err("moved");
        assert!(err.to_string().contains("fails authentication"), "{err}");
    }
    let err = store
        .queue_batch("adt", "http", 0, 10)
        .await
        .expect_err("queue");
    assert!(err.to_string().contains("fails authentication"), "{err}");
    // Untouched records still read.
    assert_readable(&store, 3).await;
}

#[tokio::test]
async fn a_wrong_or_missing_key_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let store = open_store(&path).expect("open");
    ingest_canaries(&store, 1).await;
    store.close().await.expect("close");

    let err = Store::open_with(&path, options(("2026-12", 9), &[])).expect_err("wrong key");
    assert!(err.to_string().contains("refusing to open"), "{err}");
    assert!(err.to_string().contains("`2026-12`"), "{err}");

    let err = Store::open_with(&path, options(("2027-06", 2), &[])).expect_err("missing key");
    assert!(
        err.to_string()
            .contains("`2026-12`, which is not configured"),
        "{err}"
    );

    let err = Store::open(&path).expect_err("no keys");
    assert!(
        err.to_string().contains("opened without encryption"),
        "{err}"
    );
    assert!(!err.to_string().contains("ZELDA"));

    // Under the right key it opens.
    let store = open_store(&path).expect("right key");
    assert_readable(&store, 1).await;
}

async fn rotate_all(store: &Store, batch: usize) -> u64 {
    let mut total = 0;
    loop {
        let p = store.rotate_batch(batch).await.expect("rotate");
        total += p.rotated;
        if p.done {
            return total;
        }
    }
}

#[tokio::test]
async fn rotation_moves_every_record_to_the_new_key_and_the_old_key_can_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let store = Store::open_with(&path, options(("old", 1), &[])).expect("open");
    ingest_canaries(&store, 25).await;
    store.close().await.expect("close");

    // The new key is current; the old one still decrypts.
    let store = Store::open_with(&path, options(("new", 2), &[("old", 1)])).expect("open");
    // Per message: raw, source response, transformed, maps, http encoded, file response,
    // file encoded (7 blobs), the errors of `file` and `broken` (2 texts) and the MRN.
    assert_eq!(store.rotation_pending().await.expect("pending"), 25 * 10);
    assert_readable(&store, 3).await;
    assert_eq!(
        by_mrn(&store, CANARY_MRN).await.len(),
        25,
        "old-key tokens match"
    );
    assert_eq!(rotate_all(&store, 7).await, 25 * 10);
    assert_eq!(store.rotation_pending().await.expect("pending"), 0);
    // A second pass has nothing to do.
    assert_eq!(rotate_all(&store, 7).await, 0);
    store.close().await.expect("close");

    // Without the old key, everything still reads.
    let store = Store::open_with(&path, options(("new", 2), &[])).expect("open");
    for id in 1..=25 {
        assert_readable(&store, id).await;
    }
    assert_eq!(
        store
            .queue_batch("adt", "http", 0, 100)
            .await
            .expect("queue")
            .len(),
        25
    );
    assert_eq!(
        by_mrn(&store, CANARY_MRN).await.len(),
        25,
        "rotation re-indexed the MRN under the new key"
    );
    store.close().await.expect("close");
    // And only the new key does.
    let err = Store::open_with(&path, options(("old", 1), &[])).expect_err("old key only");
    assert!(err.to_string().contains("`new`"), "{err}");
}

#[tokio::test]
async fn an_old_key_removed_too_early_fails_reads_precisely() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let store = Store::open_with(&path, options(("old", 1), &[])).expect("open");
    ingest_canaries(&store, 1).await;
    store.close().await.expect("close");
    let store = Store::open_with(&path, options(("new", 2), &[("old", 1)])).expect("open");
    ingest_canaries(&store, 1).await;
    store.close().await.expect("close");
    // The newest message is under `new`, so the store opens; message 1 is not.
    let store = Store::open_with(&path, options(("new", 2), &[])).expect("open");
    assert_readable(&store, 2).await;
    let err = store
        .content("adt", 1, SOURCE, ContentStage::Raw)
        .await
        .expect_err("old key gone");
    assert!(
        err.to_string().contains("`old`, which is not configured"),
        "{err}"
    );
    // Rotation stops at the record it cannot read, and says which.
    let err = store.rotate_batch(100).await.expect_err("rotation");
    assert!(err.to_string().contains("message 1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_beside_ingest_and_delivery_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let store = Store::open_with(&path, options(("old", 1), &[])).expect("open");
    ingest_canaries(&store, 100).await;
    store.close().await.expect("close");

    let store = Store::open_with(&path, options(("new", 2), &[("old", 1)])).expect("open");
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 100..200 {
                let id = store.ingest(canary_message(i)).await.expect("ingest");
                store
                    .update_delivery(canary_delivery(id))
                    .await
                    .expect("delivery");
                // Deliveries of old messages rewrite rows rotation is walking.
                let mut sent = canary_delivery(id - 100);
                sent.status = Status::Sent;
                sent.destination = "http".into();
                store.update_delivery(sent).await.expect("old delivery");
            }
        })
    };
    let rotated = rotate_all(&store, 10).await;
    writer.await.expect("writer");
    // Whatever the interleaving, one more pass finishes what was written under the old key
    // before the first pass reached it (nothing is: new writes use the new key).
    rotate_all(&store, 10).await;
    assert!(rotated > 0);
    assert_eq!(store.rotation_pending().await.expect("pending"), 0);
    store.close().await.expect("close");

    let store = Store::open_with(&path, options(("new", 2), &[])).expect("open");
    let summaries = store.messages("adt", 0, 1000).await.expect("list");
    assert_eq!(summaries.len(), 200);
    for id in [1, 50, 100, 101, 150, 200] {
        assert_readable(&store, id).await;
    }
    assert_eq!(store.queue_depth("adt", "file").await.expect("depth"), 200);
    assert_eq!(store.queue_depth("adt", "http").await.expect("depth"), 100);
    let queued = store
        .queue_batch("adt", "file", 0, 1000)
        .await
        .expect("queue");
    assert_eq!(queued.len(), 200);
}

#[tokio::test]
async fn a_plaintext_store_stays_readable_and_rotation_encrypts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let store = Store::open(&path).expect("open");
    ingest_canaries(&store, 5).await;
    store.close().await.expect("close");
    assert!(occurrences(&path, CANARY.as_bytes()) > 0);

    let store = open_store(&path).expect("open a plaintext store with a key");
    assert_readable(&store, 1).await;
    ingest_canaries(&store, 1).await;
    assert_readable(&store, 6).await;
    let all: Vec<i64> = (1..=6).rev().collect();
    assert_eq!(
        by_mrn(&store, CANARY_MRN).await,
        all,
        "plaintext and blind rows"
    );
    assert_eq!(rotate_all(&store, 3).await, 5 * 10);
    for id in 1..=6 {
        assert_readable(&store, id).await;
    }
    assert_eq!(by_mrn(&store, CANARY_MRN).await, all, "all blind now");
    store.close().await.expect("close");
    // secure_delete zeroes the plaintext the re-encryption replaced.
    assert_eq!(occurrences(&path, CANARY.as_bytes()), 0);
    assert_eq!(occurrences(&path, CANARY_MRN.as_bytes()), 0);
}

#[tokio::test]
async fn keys_never_print() {
    let ring = Keyring::new("k", key(0x5a))
        .expect("ring")
        .with_old("j", key(0x5b))
        .expect("old");
    let shown = format!("{ring:?} {:?}", options(("k", 0x5a), &[]));
    assert!(!shown.contains("90"), "{shown}");
    assert!(shown.contains("\"k\""), "{shown}");
    assert!(Key::from_bytes(&[0; 31]).is_err());
    assert!(Keyring::new("bad id!", key(1)).is_err());
}
