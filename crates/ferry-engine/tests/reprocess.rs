//! Reprocessing: a stored message runs again from its raw content as a new message, to all or
//! chosen destinations, and the original stays as it was.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_engine::{
    ChannelSpec, Destination, DestinationSpec, Engine, Outbound, ReprocessError, SendFuture,
    SendOutcome,
};
use ferry_store::{ContentStage, SOURCE, Status, Store};

/// A destination that keeps what it was given (ids and payloads), in order.
#[derive(Default)]
struct Keep(Mutex<Vec<(i64, Vec<u8>)>>);

impl Destination for Keep {
    fn send<'a>(&'a self, message: &'a Outbound) -> SendFuture<'a> {
        Box::pin(async move {
            if let Ok(mut kept) = self.0.lock() {
                kept.push((message.message_id, message.payload.clone()));
            }
            SendOutcome::Sent { response: None }
        })
    }
}

impl Keep {
    fn ids(&self) -> Vec<i64> {
        self.0
            .lock()
            .map(|k| k.iter().map(|(id, _)| *id).collect())
            .unwrap_or_default()
    }
}

async fn wait_for(keep: &Keep, n: usize) {
    for _ in 0..200 {
        if keep.ids().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const ADT: &[u8] =
    b"MSH|^~\\&|HIS|GH|||20261125||ADT^A01^ADT_A01|R1|P|2.5.1\rPID|1||42^^^GH^MR||DOE^JANE\r";

#[tokio::test]
async fn a_reprocessed_message_is_a_new_message_for_the_chosen_destinations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s.db")).expect("store");
    let (a, b) = (Arc::new(Keep::default()), Arc::new(Keep::default()));
    let engine = Engine::start(
        store.clone(),
        vec![ChannelSpec::new(
            "c",
            vec![
                DestinationSpec::new("a", a.clone()),
                DestinationSpec::new("b", b.clone()),
            ],
        )],
    )
    .await
    .expect("engine");
    let ingest = engine.ingest("c").expect("channel");
    let first = ingest.receive(ADT).await.message_id.expect("stored");
    wait_for(&a, 1).await;
    wait_for(&b, 1).await;

    let only = ["b".to_owned()];
    let again = ingest
        .reprocess(first, Some(&only))
        .await
        .expect("reprocess");
    assert_eq!(again.code.as_str(), "AA");
    let second = again.message_id.expect("a new message");
    assert!(second > first);
    wait_for(&b, 2).await;
    assert_eq!(b.ids(), [first, second]);
    assert_eq!(a.ids(), [first], "destination a was not chosen");
    assert_eq!(
        store.connector("c", second, "a").await.expect("read"),
        None,
        "an unchosen destination gets no row"
    );
    let maps = store
        .content("c", second, SOURCE, ContentStage::Maps)
        .await
        .expect("read")
        .expect("maps stored");
    let maps: serde_json::Value = serde_json::from_slice(&maps).expect("json");
    assert_eq!(maps["source_map"]["reprocessed_from"], first);
    let original = store
        .connector("c", first, "a")
        .await
        .expect("read")
        .expect("row");
    assert_eq!(original.status, Status::Sent, "the original is untouched");
    let raw = store
        .content("c", second, SOURCE, ContentStage::Raw)
        .await
        .expect("read");
    assert_eq!(raw.as_deref(), Some(ADT));

    // All destinations when none is chosen; errors for what does not exist.
    let third = ingest.reprocess(first, None).await.expect("reprocess");
    wait_for(&a, 2).await;
    assert_eq!(a.ids(), [first, third.message_id.expect("stored")]);
    assert!(matches!(
        ingest.reprocess(999, None).await,
        Err(ReprocessError::UnknownMessage(999))
    ));
    let nope = ["nope".to_owned()];
    assert!(matches!(
        ingest.reprocess(first, Some(&nope)).await,
        Err(ReprocessError::UnknownDestination(d)) if d == "nope"
    ));
    engine.shutdown().await.expect("shutdown");
}
