//! The MLLP destination: deliver over a kept-alive connection and check every ACK.
//!
//! A message counts as sent only when the response parses as an HL7 ACK whose MSA-1 is `AA` or
//! `CA` **and** whose MSA-2 equals the MSH-10 that was sent (PRODUCT.md §3.5). A response that
//! answers another message means the stream is out of step: the connection is dropped and the
//! message retried. A negative ACK is retried or marked `ERROR` as configured.

use std::time::Duration;

use ferry_engine::{Destination, Outbound, SendFuture, SendOutcome};
use ferry_hl7::ack::{self, AckCode};
use tokio::sync::Mutex;

use super::client::{MllpConnection, MllpEndpoint};

/// What to do with a negative ACK (`AE`/`AR`/`CE`/`CR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NakPolicy {
    /// Retry with backoff (the receiver may recover).
    Retry,
    /// Mark the message `ERROR` and go on with the queue.
    Error,
}

/// Sends messages to one MLLP peer.
#[derive(Debug)]
pub struct MllpDestination {
    endpoint: MllpEndpoint,
    response_timeout: Duration,
    keep_alive: bool,
    on_nak: NakPolicy,
    connection: Mutex<Option<MllpConnection>>,
}

impl MllpDestination {
    /// A destination for `endpoint`. No connection is made until the first message.
    pub fn new(
        endpoint: MllpEndpoint,
        response_timeout: Duration,
        keep_alive: bool,
        on_nak: NakPolicy,
    ) -> MllpDestination {
        MllpDestination {
            endpoint,
            response_timeout,
            keep_alive,
            on_nak,
            connection: Mutex::new(None),
        }
    }

    async fn attempt(&self, message: &Outbound) -> SendOutcome {
        let mut slot = self.connection.lock().await;
        let mut connection = match slot.take() {
            Some(c) => c,
            None => match MllpConnection::connect(&self.endpoint).await {
                Ok(c) => c,
                Err(e) => return retry(e.to_string(), None),
            },
        };
        let response = match connection
            .exchange(&message.payload, self.response_timeout)
            .await
        {
            Ok(r) => r,
            // The connection is dropped: a late answer must not be read as the next one's ACK.
            Err(e) => return retry(e.to_string(), None),
        };
        let outcome = self.judge(message, &response);
        let in_step = !matches!(&outcome, SendOutcome::Retry { reason, .. } if reason.starts_with("ACK out of step"));
        if self.keep_alive && in_step {
            *slot = Some(connection);
        }
        outcome
    }

    fn judge(&self, message: &Outbound, response: &[u8]) -> SendOutcome {
        let body = Some(response.to_vec());
        let summary = match ack::parse_ack(response) {
            Ok(s) => s,
            Err(e) => {
                return retry(
                    format!("ACK out of step: response is not an HL7 ACK: {e}"),
                    body,
                );
            }
        };
        let expected = message.control_id.as_deref().unwrap_or("");
        if summary.control_id != expected {
            return retry(
                format!(
                    "ACK out of step: MSA-2 is `{}` but the message sent had MSH-10 `{expected}`",
                    summary.control_id
                ),
                body,
            );
        }
        if summary.code.is_positive() {
            return SendOutcome::Sent { response: body };
        }
        let detail = summary
            .text
            .or(summary.error_text)
            .map(|t| format!(": {t}"))
            .unwrap_or_default();
        let reason = format!("negative ACK {}{detail}", summary.code.as_str());
        match (self.on_nak, summary.code) {
            (NakPolicy::Retry, _) => retry(reason, body),
            (NakPolicy::Error, AckCode::AE | AckCode::CE | AckCode::AR | AckCode::CR) => {
                SendOutcome::Failed {
                    reason,
                    response: body,
                }
            }
            (NakPolicy::Error, _) => retry(reason, body),
        }
    }
}

fn retry(reason: String, response: Option<Vec<u8>>) -> SendOutcome {
    SendOutcome::Retry { reason, response }
}

impl Destination for MllpDestination {
    fn send<'a>(&'a self, message: &'a Outbound) -> SendFuture<'a> {
        Box::pin(self.attempt(message))
    }
}
