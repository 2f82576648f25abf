//! Message search on a real SQLite file: every criterion, keyset pagination and the bounded
//! text scan. A module of `store.rs` (plaintext) and of `store_encrypted.rs` (encryption at
//! rest on: metadata values are blind indexes and raw content is decrypted to be searched).

use ferry_store::{
    DeliveryUpdate, MessagePage, MessageQuery, Metadata, NewMessage, SOURCE, Status, Store,
};

/// Message `n` of channel `c`: MRN `P{n % 3}`, visit `V{n}`, received at `1000 * n`, type
/// ADT^A01 for even and ORU^R01 for odd `n`, queued for `a` and `b`.
fn message(n: i64) -> NewMessage {
    let (code, event) = if n % 2 == 0 {
        ("ADT", "A01")
    } else {
        ("ORU", "R01")
    };
    let mrn = format!("P{}", n % 3);
    NewMessage {
        channel: "c".to_owned(),
        received_at_ms: 1000 * n,
        control_id: Some(format!("CTL{n}")),
        message_type: Some(format!("{code}^{event}^{code}_{event}")),
        raw: format!(
            "MSH|^~\\&|A|B|C|D|1||{code}^{event}|CTL{n}|P|2.5.1\rPID|1||{mrn}^^^H^MR||NAME{n}^X\r"
        )
        .into_bytes(),
        source_status: Status::Transformed,
        source_error: None,
        source_response: Some(b"ACK".to_vec()),
        destinations: vec!["a".into(), "b".into()],
        filtered_destinations: Vec::new(),
        errored_destinations: Vec::new(),
        transformed: None,
        encoded: Vec::new(),
        maps: None,
        dedupe: None,
        metadata: [("mrn", mrn), ("visit", format!("V{n}"))]
            .into_iter()
            .collect(),
    }
}

/// A store with messages 1..=n of channel `c`.
async fn store_with(dir: &std::path::Path, n: i64) -> Store {
    let store = super::open_store(&dir.join("s.db")).expect("open");
    for i in 1..=n {
        assert_eq!(store.ingest(message(i)).await.expect("ingest"), i);
    }
    store
}

fn query() -> MessageQuery {
    MessageQuery {
        channel: "c".into(),
        limit: 100,
        max_examined: 10_000,
        ..MessageQuery::default()
    }
}

fn ids(page: &MessagePage) -> Vec<i64> {
    page.messages.iter().map(|m| m.id).collect()
}

async fn found(store: &Store, q: MessageQuery) -> Vec<i64> {
    let page = store.search_messages(q).await.expect("search");
    assert_eq!(page.next_before_id, None, "one page holds it all");
    ids(&page)
}

fn meta(key: &str, value: &str) -> Vec<(String, String)> {
    vec![(key.to_owned(), value.to_owned())]
}

async fn deliver(store: &Store, id: i64, destination: &str, status: Status) {
    store
        .update_delivery(DeliveryUpdate {
            channel: "c".into(),
            message_id: id,
            destination: destination.into(),
            status,
            attempts: 1,
            error: None,
            response: None,
            encoded: None,
        })
        .await
        .expect("delivery");
}

#[tokio::test]
async fn indexed_metadata_finds_exactly_the_messages_with_that_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with(dir.path(), 10).await;
    let q = |m| MessageQuery {
        metadata: m,
        ..query()
    };
    assert_eq!(found(&store, q(meta("mrn", "P1"))).await, [10, 7, 4, 1]);
    assert_eq!(found(&store, q(meta("mrn", "P0"))).await, [9, 6, 3]);
    assert_eq!(found(&store, q(meta("visit", "V5"))).await, [5]);
    assert!(
        found(&store, q(meta("mrn", "P"))).await.is_empty(),
        "exact match only"
    );
    assert!(
        found(&store, q(meta("visit", "P1"))).await.is_empty(),
        "per key"
    );
    assert!(found(&store, q(meta("nokey", "P1"))).await.is_empty());
    // Two keys: both must hold.
    let both = vec![
        ("mrn".to_owned(), "P1".to_owned()),
        ("visit".to_owned(), "V7".to_owned()),
    ];
    assert_eq!(found(&store, q(both)).await, [7]);
    let neither = vec![
        ("mrn".to_owned(), "P1".to_owned()),
        ("visit".to_owned(), "V5".to_owned()),
    ];
    assert!(found(&store, q(neither)).await.is_empty());
}

#[tokio::test]
async fn summaries_carry_every_connectors_status_and_no_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with(dir.path(), 3).await;
    deliver(&store, 2, "a", Status::Sent).await;
    let page = store
        .search_messages(MessageQuery {
            control_id: Some("CTL2".into()),
            ..query()
        })
        .await
        .expect("search");
    assert_eq!(ids(&page), [2]);
    let m = &page.messages[0];
    assert_eq!(m.received_at_ms, 2000);
    assert_eq!(m.control_id.as_deref(), Some("CTL2"));
    assert_eq!(m.message_type.as_deref(), Some("ADT^A01^ADT_A01"));
    assert_eq!(m.raw, None, "summaries only");
    let statuses: Vec<(&str, Status)> = m
        .connectors
        .iter()
        .map(|c| (c.connector.as_str(), c.status))
        .collect();
    assert_eq!(
        statuses,
        [
            (SOURCE, Status::Transformed),
            ("a", Status::Sent),
            ("b", Status::Queued)
        ]
    );
    // With raw, the content comes back as received (decrypted when encrypted).
    let page = store
        .search_messages(MessageQuery {
            control_id: Some("CTL2".into()),
            with_raw: true,
            ..query()
        })
        .await
        .expect("search");
    assert_eq!(page.messages[0].raw.as_deref(), Some(&message(2).raw[..]));
}

#[tokio::test]
async fn control_id_type_and_time_criteria() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with(dir.path(), 10).await;
    let control = |id: &str| MessageQuery {
        control_id: Some(id.into()),
        ..query()
    };
    assert_eq!(found(&store, control("CTL7")).await, [7]);
    assert!(found(&store, control("CTL")).await.is_empty());
    let typed = |t: &str| MessageQuery {
        message_type: Some(t.into()),
        ..query()
    };
    assert_eq!(found(&store, typed("ADT^A01")).await, [10, 8, 6, 4, 2]);
    assert_eq!(found(&store, typed("ORU")).await, [9, 7, 5, 3, 1]);
    assert_eq!(found(&store, typed("ORU^R01^ORU_R01")).await.len(), 5);
    assert!(
        found(&store, typed("OR")).await.is_empty(),
        "a prefix ends at ^"
    );
    let window = MessageQuery {
        received_since_ms: Some(3000),
        received_until_ms: Some(6000),
        ..query()
    };
    assert_eq!(
        found(&store, window).await,
        [5, 4, 3],
        "since inclusive, until not"
    );
    let combined = MessageQuery {
        received_since_ms: Some(3000),
        message_type: Some("ADT".into()),
        metadata: meta("mrn", "P1"),
        ..query()
    };
    assert_eq!(found(&store, combined).await, [10, 4]);
    let with_id = MessageQuery {
        control_id: Some("CTL4".into()),
        metadata: meta("mrn", "P0"),
        ..query()
    };
    assert!(found(&store, with_id).await.is_empty(), "CTL4 is P1's");
}

#[tokio::test]
async fn status_at_any_or_a_named_connector() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with(dir.path(), 6).await;
    deliver(&store, 2, "a", Status::Sent).await;
    deliver(&store, 3, "b", Status::Error).await;
    deliver(&store, 5, "a", Status::Error).await;
    let status = |s: Status, at: Option<&str>| MessageQuery {
        status: Some(s),
        connector: at.map(str::to_owned),
        ..query()
    };
    assert_eq!(found(&store, status(Status::Error, None)).await, [5, 3]);
    assert_eq!(found(&store, status(Status::Error, Some("b"))).await, [3]);
    assert_eq!(found(&store, status(Status::Sent, Some("a"))).await, [2]);
    assert!(
        found(&store, status(Status::Sent, Some("b")))
            .await
            .is_empty()
    );
    assert_eq!(
        found(&store, status(Status::Queued, Some("a"))).await,
        [6, 4, 3, 1],
        "the queue index"
    );
    assert_eq!(
        found(&store, status(Status::Queued, None)).await,
        [6, 5, 4, 3, 2, 1],
        "b still queues 2 and 5"
    );
    assert_eq!(
        found(&store, status(Status::Transformed, Some(SOURCE)))
            .await
            .len(),
        6
    );
    let queued_for_p0 = MessageQuery {
        metadata: meta("mrn", "P0"),
        ..status(Status::Queued, Some("a"))
    };
    assert_eq!(found(&store, queued_for_p0).await, [6, 3]);
    assert!(
        found(&store, status(Status::Filtered, None))
            .await
            .is_empty(),
        "nothing filtered"
    );
}

#[tokio::test]
async fn text_is_a_substring_of_the_raw_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with(dir.path(), 12).await;
    let text = |t: &str| MessageQuery {
        text: Some(t.as_bytes().to_vec()),
        ..query()
    };
    assert_eq!(found(&store, text("NAME1^X")).await, [1]);
    assert_eq!(found(&store, text("NAME1")).await, [12, 11, 10, 1]);
    assert!(
        found(&store, text("name1")).await.is_empty(),
        "case-sensitive"
    );
    assert_eq!(found(&store, text("ORU^R01|CTL1")).await, [11, 1]);
    let with_mrn = MessageQuery {
        metadata: meta("mrn", "P2"),
        ..text("NAME1")
    };
    assert_eq!(found(&store, with_mrn).await, [11]);
}

#[tokio::test]
async fn pages_walk_newest_first_with_a_keyset_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with(dir.path(), 25).await;
    let mut q = MessageQuery {
        limit: 10,
        ..query()
    };
    let mut pages = Vec::new();
    loop {
        let page = store.search_messages(q.clone()).await.expect("search");
        pages.push(ids(&page));
        match page.next_before_id {
            Some(cursor) => q.before_id = Some(cursor),
            None => break,
        }
    }
    let expected: Vec<i64> = (1..=25).rev().collect();
    assert_eq!(pages.concat(), expected, "every message once, newest first");
    assert_eq!(pages[0].len(), 10);
    assert_eq!(pages[1].len(), 10);
    // A new message does not shift the pages already read: the cursor is an id.
    store.ingest(message(26)).await.expect("ingest");
    let again = store
        .search_messages(MessageQuery {
            before_id: Some(16),
            limit: 10,
            ..query()
        })
        .await
        .expect("search");
    assert_eq!(ids(&again), (6..=15).rev().collect::<Vec<_>>());
    // after_id bounds the window from below, still newest first.
    let window = MessageQuery {
        after_id: Some(20),
        limit: 3,
        ..query()
    };
    let page = store.search_messages(window.clone()).await.expect("search");
    assert_eq!(ids(&page), [26, 25, 24]);
    let rest = store
        .search_messages(MessageQuery {
            before_id: page.next_before_id,
            ..window
        })
        .await
        .expect("search");
    assert_eq!(ids(&rest), [23, 22, 21]);
    // The metadata walk pages the same way.
    let first = store
        .search_messages(MessageQuery {
            metadata: meta("mrn", "P1"),
            limit: 4,
            ..query()
        })
        .await
        .expect("search");
    assert_eq!(ids(&first), [25, 22, 19, 16]);
    assert_eq!(first.next_before_id, Some(16));
}

#[tokio::test]
async fn a_text_scan_examines_at_most_the_bound_and_says_where_to_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with(dir.path(), 50).await;
    // Only message 3 holds NAME3^ (NAME30..NAME39 do not end there).
    let mut q = MessageQuery {
        text: Some(b"NAME3^".to_vec()),
        max_examined: 20,
        ..query()
    };
    let first = store.search_messages(q.clone()).await.expect("search");
    assert_eq!(first.examined, 20);
    assert!(first.messages.is_empty());
    assert_eq!(first.next_before_id, Some(31), "examined 50 down to 31");
    q.before_id = first.next_before_id;
    let second = store.search_messages(q.clone()).await.expect("search");
    assert_eq!((second.examined, second.next_before_id), (20, Some(11)));
    assert!(second.messages.is_empty());
    q.before_id = second.next_before_id;
    let third = store.search_messages(q.clone()).await.expect("search");
    assert_eq!(ids(&third), [3]);
    assert_eq!(third.examined, 10, "the last ten, to the end");
    assert_eq!(third.next_before_id, None, "the end of the channel");
    // The bound holds for other criteria too; a matching page stops at the limit.
    let limited = store
        .search_messages(MessageQuery {
            limit: 5,
            max_examined: 7,
            message_type: Some("ADT".into()),
            ..query()
        })
        .await
        .expect("search");
    assert_eq!(ids(&limited), [50, 48, 46, 44]);
    assert_eq!((limited.examined, limited.next_before_id), (7, Some(44)));
}

#[tokio::test]
async fn an_unknown_channel_or_an_empty_window_finds_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with(dir.path(), 3).await;
    let page = store
        .search_messages(MessageQuery {
            channel: "nope".into(),
            ..query()
        })
        .await
        .expect("search");
    assert_eq!(page, MessagePage::default());
    let page = store
        .search_messages(MessageQuery {
            before_id: Some(1),
            ..query()
        })
        .await
        .expect("search");
    assert!(page.messages.is_empty() && page.next_before_id.is_none());
    // A message stored without metadata (a rejected one, say) is found by other criteria.
    let bare = NewMessage {
        metadata: Metadata::default(),
        ..message(4)
    };
    store.ingest(bare).await.expect("ingest");
    // One without MSH-9 or MSH-10 is simply not matched by criteria on them.
    let headless = NewMessage {
        control_id: None,
        message_type: None,
        ..message(5)
    };
    store.ingest(headless).await.expect("ingest");
    let adt = MessageQuery {
        message_type: Some("ADT".into()),
        ..query()
    };
    assert_eq!(found(&store, adt).await, [4, 2]);
    let ctl = MessageQuery {
        control_id: Some("CTL2".into()),
        metadata: meta("mrn", "P2"),
        ..query()
    };
    assert_eq!(found(&store, ctl).await, [2]);
    assert_eq!(
        found(
            &store,
            MessageQuery {
                text: Some(b"NAME5".to_vec()),
                ..query()
            }
        )
        .await,
        [5]
    );
    assert_eq!(
        found(
            &store,
            MessageQuery {
                control_id: Some("CTL4".into()),
                ..query()
            }
        )
        .await,
        [4]
    );
    assert!(
        found(
            &store,
            MessageQuery {
                metadata: meta("visit", "V4"),
                ..query()
            }
        )
        .await
        .is_empty()
    );
}

#[tokio::test]
async fn a_version_2_store_is_migrated_and_indexes_from_then_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    {
        let store = store_with(dir.path(), 2).await;
        store.close().await.expect("close");
    }
    {
        // Turn it back into a version 2 store: no metadata table, no MSH-10 index.
        let conn = rusqlite::Connection::open(&path).expect("sqlite");
        conn.execute_batch(
            "DROP TABLE message_metadata; DROP INDEX messages_control_id; \
             DROP INDEX messages_received; DROP INDEX messages_content_kept; \
             ALTER TABLE messages DROP COLUMN content_pruned_at_ms; \
             ALTER TABLE channels DROP COLUMN max_deleted_id; \
             PRAGMA user_version = 2;",
        )
        .expect("downgrade");
    }
    let store = super::open_store(&path).expect("reopen");
    let version: i64 = rusqlite::Connection::open(&path)
        .and_then(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
        .expect("version");
    assert_eq!(version, 4);
    store.ingest(message(3)).await.expect("ingest");
    let control = |id: &str| MessageQuery {
        control_id: Some(id.into()),
        ..query()
    };
    assert_eq!(
        found(&store, control("CTL1")).await,
        [1],
        "older messages by MSH-10"
    );
    assert_eq!(
        found(
            &store,
            MessageQuery {
                metadata: meta("visit", "V3"),
                ..query()
            }
        )
        .await,
        [3],
        "new messages by metadata"
    );
}
