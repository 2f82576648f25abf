//! The HTTP poller source: GET a URL on an interval and receive what it returns.
//!
//! A `200` body holds one HL7 message, several, or a batch; each is received through the
//! channel exactly like an MLLP message (stored durably before anything else happens). `204` or
//! an empty body means nothing new. Any other status or a transport error is logged and the next
//! poll happens on schedule; nothing is lost because nothing was received.

use std::time::Duration;

use ferry_engine::{ChannelIngest, Shutdown};
use ferry_hl7::ack::AckCode;
use reqwest::header::HeaderMap;

use super::destination::error_chain;
use super::{HttpClientError, read_limited};

/// Settings of an HTTP poller with TLS loaded and secrets resolved.
pub struct HttpPollerSettings {
    /// URL to GET.
    pub url: reqwest::Url,
    /// Time between the end of one poll and the start of the next.
    pub interval: Duration,
    /// Extra request headers (values may hold secrets).
    pub headers: Vec<(String, String)>,
    /// TLS client configuration.
    pub tls: std::sync::Arc<rustls::ClientConfig>,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_body_bytes: usize,
}

/// A configured poller. Clones share the HTTP client (a channel's poller is cloned each time
/// the channel starts).
#[derive(Debug, Clone)]
pub struct HttpPoller {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    interval: Duration,
    max_body_bytes: usize,
}

impl HttpPoller {
    /// Build the poller's HTTP client.
    pub fn new(settings: HttpPollerSettings) -> Result<HttpPoller, HttpClientError> {
        Ok(HttpPoller {
            client: super::client(&settings.tls, settings.timeout)?,
            url: settings.url,
            headers: super::header_map(&settings.headers)?,
            interval: settings.interval,
            max_body_bytes: settings.max_body_bytes,
        })
    }

    /// Poll until shutdown.
    pub async fn run(self, ingest: ChannelIngest, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = self.poll_once(&ingest) => {}
                _ = shutdown.cancelled() => break,
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }

    /// One GET; returns how many messages were received.
    pub async fn poll_once(&self, ingest: &ChannelIngest) -> usize {
        let channel = ingest.channel();
        let response = match self
            .client
            .get(self.url.clone())
            .headers(self.headers.clone())
            .send()
            .await
        {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(%channel, error = %error_chain(&error), "poll failed");
                return 0;
            }
        };
        let status = response.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return 0;
        }
        if status != reqwest::StatusCode::OK {
            tracing::warn!(%channel, %status, "poll answered with an unexpected status");
            return 0;
        }
        let body = match read_limited(response, self.max_body_bytes).await {
            Ok((_, true)) => {
                tracing::error!(%channel, limit = self.max_body_bytes,
                    "poll response exceeds the maximum body size; nothing received");
                return 0;
            }
            Ok((b, false)) => b,
            Err(error) => {
                tracing::warn!(%channel, error = %error_chain(&error), "reading the poll response failed");
                return 0;
            }
        };
        let mut received = 0;
        for message in ferry_hl7::split_messages(&body) {
            if message.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let reply = ingest.receive(message).await;
            if matches!(reply.code, AckCode::AE | AckCode::CE) {
                tracing::error!(%channel, "store failed while receiving polled messages; the rest of this response is dropped and fetched again on the next poll");
                break;
            }
            received += 1;
        }
        tracing::debug!(%channel, received, "poll complete");
        received
    }
}
