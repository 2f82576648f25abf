//! The `channel` destination: hand each message to another channel of the same engine.
//!
//! Delivering is receiving on the target channel ([`Router::route`]), which stores the message
//! durably there before it answers. Because this destination is drained from the sending
//! channel's durable queue like any other, routing between channels survives a crash and is
//! at-least-once: a crash after the target stored the message but before the `SENT` record was
//! written resends it (a `dedupe` window on the target absorbs that).

use ferry_engine::{Destination, Outbound, Router, SendFuture, SendOutcome};
use ferry_hl7::ack::AckCode;

/// Sends to the channel named `target` through `router`.
#[derive(Debug, Clone)]
pub struct ChannelDestination {
    router: Router,
    target: String,
}

impl ChannelDestination {
    /// A destination that routes to `target` (resolved at every delivery, so the router may be
    /// filled after this is built).
    pub fn new(router: Router, target: String) -> ChannelDestination {
        ChannelDestination { router, target }
    }
}

impl Destination for ChannelDestination {
    /// Positive ACK (`AA`/`CA`, also for a message the target's filter removed) → `SENT` with
    /// the target's ACK as response; `AE`/`CE` (the target's store failed) → retry; `AR`/`CR`
    /// (the target rejected the message) → `ERROR`. A router that is not filled yet, or does
    /// not know the target (`ferry check` prevents that), is retried too: the message stays
    /// queued rather than being dropped.
    fn send<'a>(&'a self, message: &'a Outbound) -> SendFuture<'a> {
        Box::pin(async move {
            match self.router.route(&self.target, &message.payload).await {
                Ok(reply) => match reply.code {
                    AckCode::AA | AckCode::CA => SendOutcome::Sent {
                        response: Some(reply.ack),
                    },
                    AckCode::AR | AckCode::CR => SendOutcome::Failed {
                        reason: format!(
                            "channel `{}` rejected the message ({})",
                            self.target,
                            reply.code.as_str()
                        ),
                        response: Some(reply.ack),
                    },
                    AckCode::AE | AckCode::CE => SendOutcome::Retry {
                        reason: format!(
                            "channel `{}` could not store the message ({})",
                            self.target,
                            reply.code.as_str()
                        ),
                        response: Some(reply.ack),
                    },
                },
                Err(error) => SendOutcome::Retry {
                    reason: format!("routing to channel `{}`: {error}", self.target),
                    response: None,
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use ferry_engine::{ChannelSpec, DestinationSpec, Engine, RouteError};
    use ferry_store::{ContentStage, SOURCE, Status, Store};

    use super::*;

    /// A destination that never delivers (the target channel's queue just fills).
    struct Nowhere;

    impl Destination for Nowhere {
        fn send<'a>(&'a self, _: &'a Outbound) -> SendFuture<'a> {
            Box::pin(async {
                SendOutcome::Retry {
                    reason: "down".into(),
                    response: None,
                }
            })
        }
    }

    fn outbound(payload: &[u8]) -> Outbound {
        Outbound {
            channel: "a".into(),
            message_id: 1,
            control_id: None,
            payload: payload.to_vec(),
            attempt: 1,
        }
    }

    #[tokio::test]
    async fn outcomes_follow_the_target_channels_ack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        let router = Router::new();
        let to_b = ChannelDestination::new(router.clone(), "b".into());
        // Before the engine starts: retried, nothing stored.
        let early = to_b
            .send(&outbound(b"MSH|^~\\&|A|B|C|D|1||ADT^A01|M0|P|2.5\r"))
            .await;
        assert!(matches!(early, SendOutcome::Retry { .. }), "{early:?}");
        assert_eq!(
            router.route("b", b"x").await.err(),
            Some(RouteError::NotStarted)
        );
        let spec = ChannelSpec::new(
            "b",
            vec![DestinationSpec::new("d", std::sync::Arc::new(Nowhere))],
        );
        let engine = Engine::start_with_router(store.clone(), vec![spec], router.clone())
            .await
            .expect("start");
        // Accepted and stored in the target before the outcome is SENT; the ACK is the response.
        let sent = to_b
            .send(&outbound(b"MSH|^~\\&|A|B|C|D|1||ADT^A01|M1|P|2.5\r"))
            .await;
        let SendOutcome::Sent {
            response: Some(ack),
        } = sent
        else {
            panic!("expected SENT, got {sent:?}");
        };
        let summary = ferry_hl7::ack::parse_ack(&ack).expect("ACK");
        assert_eq!(
            (summary.code, summary.control_id.as_str()),
            (AckCode::AA, "M1")
        );
        assert_eq!(store.queue_depth("b", "d").await.expect("depth"), 1);
        let stored = store.content("b", 1, SOURCE, ContentStage::Raw).await;
        assert!(
            stored
                .expect("read")
                .is_some_and(|raw| raw.ends_with(b"M1|P|2.5\r"))
        );
        // Rejected by the target (no MSH-10): ERROR, not retried.
        let rejected = to_b
            .send(&outbound(b"MSH|^~\\&|A|B|C|D|1||ADT^A01||P|2.5\r"))
            .await;
        assert!(
            matches!(rejected, SendOutcome::Failed { .. }),
            "{rejected:?}"
        );
        let record = store.connector("b", 2, SOURCE).await.expect("read");
        assert_eq!(record.map(|r| r.status), Some(Status::Error));
        // Unknown channel.
        let unknown = engine.router().route("nope", b"x").await.err();
        assert_eq!(unknown, Some(RouteError::UnknownChannel("nope".into())));
        // After shutdown the target's store is closed: AE, retried.
        engine.shutdown().await.expect("shutdown");
        let late = to_b
            .send(&outbound(b"MSH|^~\\&|A|B|C|D|1||ADT^A01|M3|P|2.5\r"))
            .await;
        assert!(matches!(late, SendOutcome::Retry { .. }), "{late:?}");
    }
}
