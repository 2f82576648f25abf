//! Response transformers: steps run on a destination's HL7 response before it is stored; a
//! failing step marks the message ERROR and keeps the response as received.

use std::sync::Arc;
use std::time::Duration;

use ferry_engine::{
    ChannelSpec, Context, Destination, DestinationSpec, Engine, Outbound, SendFuture, SendOutcome,
    TransformStep,
};
use ferry_store::{ContentStage, Status, Store};

/// Answers every message with an AA ACK for it.
struct Acks;

impl Destination for Acks {
    fn send<'a>(&'a self, message: &'a Outbound) -> SendFuture<'a> {
        Box::pin(async move {
            let id = message.control_id.clone().unwrap_or_default();
            let ack = format!("MSH|^~\\&|LAB|L|||20261202||ACK|A-{id}|P|2.5.1\rMSA|AA|{id}\r");
            SendOutcome::Sent {
                response: Some(ack.into_bytes()),
            }
        })
    }
}

/// Sets a field of the response.
struct Set(&'static str, &'static str);

impl TransformStep for Set {
    fn apply(&self, context: &mut Context) -> Result<(), String> {
        context
            .message
            .set(self.0, self.1)
            .map_err(|e| e.to_string())
    }
}

async fn run(steps: Vec<Arc<dyn TransformStep>>) -> (Store, i64, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s.db")).expect("store");
    let engine = Engine::start(
        store.clone(),
        vec![ChannelSpec::new(
            "c",
            vec![DestinationSpec {
                response_transform: steps,
                ..DestinationSpec::new("lab", Arc::new(Acks))
            }],
        )],
    )
    .await
    .expect("engine");
    let ingest = engine.ingest("c").expect("channel");
    let id = ingest
        .receive(b"MSH|^~\\&|HIS|GH|||20261202||ORM^O01|O1|P|2.5.1\rPID|1||42\r")
        .await
        .message_id
        .expect("stored");
    for _ in 0..200 {
        let done = store
            .connector("c", id, "lab")
            .await
            .expect("read")
            .is_some_and(|r| r.status != Status::Queued);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine.shutdown().await.expect("shutdown");
    let store = Store::open(&dir.path().join("s.db")).expect("reopen");
    (store, id, dir)
}

#[tokio::test]
async fn the_stored_response_is_the_transformed_one() {
    let (store, id, _dir) = run(vec![Arc::new(Set("MSA-3", "checked by ferry"))]).await;
    let record = store
        .connector("c", id, "lab")
        .await
        .expect("read")
        .expect("row");
    assert_eq!(record.status, Status::Sent);
    let response = store
        .content("c", id, "lab", ContentStage::Response)
        .await
        .expect("read")
        .expect("response");
    assert_eq!(
        String::from_utf8_lossy(&response),
        "MSH|^~\\&|LAB|L|||20261202||ACK|A-O1|P|2.5.1\rMSA|AA|O1|checked by ferry\r"
    );
}

#[tokio::test]
async fn a_failing_response_step_marks_the_message_error_and_keeps_the_response() {
    let (store, id, _dir) = run(vec![Arc::new(Set("NOT A PATH", "x"))]).await;
    let record = store
        .connector("c", id, "lab")
        .await
        .expect("read")
        .expect("row");
    assert_eq!(record.status, Status::Error);
    assert!(
        record
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("response transform 1: ")),
        "{:?}",
        record.error
    );
    let response = store
        .content("c", id, "lab", ContentStage::Response)
        .await
        .expect("read")
        .expect("response");
    assert!(String::from_utf8_lossy(&response).ends_with("MSA|AA|O1\r"));
}
