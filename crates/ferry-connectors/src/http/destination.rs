//! The HTTP(S) destination.
//!
//! One POST (or the configured method) per message, body = the encoded message. Hostname
//! verification is always on; trust and client identity come from the destination's `tls`
//! table. The response decides the outcome:
//!
//! | response | outcome |
//! |---|---|
//! | 2xx (with an HL7 ACK body: `AA`/`CA`) | `SENT` |
//! | 2xx with an `AE`/`CE` ACK body | retry |
//! | 2xx with an `AR`/`CR` ACK body | `ERROR` |
//! | 408, 429, 5xx, timeout, connection error | retry with backoff |
//! | any other status (4xx, 3xx) | `ERROR`, visible, not retried |

use std::sync::Arc;
use std::time::Duration;

use ferry_engine::{Destination, Outbound, SendFuture, SendOutcome};
use ferry_hl7::ack::{self, AckCode};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

use super::{HttpClientError, read_limited};

/// Largest response body kept as the message's `response` content.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Settings of an HTTP destination with TLS loaded and secrets resolved.
pub struct HttpDestinationSettings {
    /// Target URL.
    pub url: reqwest::Url,
    /// HTTP method.
    pub method: reqwest::Method,
    /// Extra request headers; values may hold secrets (they are marked sensitive).
    pub headers: Vec<(String, String)>,
    /// TLS client configuration (trust, optional client identity).
    pub tls: Arc<rustls::ClientConfig>,
    /// Whole-request timeout (connect, send, response).
    pub timeout: Duration,
    /// `Content-Type` of the requests: what the destination's encoder writes
    /// ([`ferry_engine::transform::Encoder::content_type`]); a configured header wins.
    pub content_type: &'static str,
}

/// Delivers messages over HTTP(S).
#[derive(Debug)]
pub struct HttpDestination {
    client: reqwest::Client,
    url: reqwest::Url,
    method: reqwest::Method,
    headers: HeaderMap,
}

impl HttpDestination {
    /// Build the client (one per destination, with its own trust store and identity).
    pub fn new(settings: HttpDestinationSettings) -> Result<HttpDestination, HttpClientError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(settings.content_type),
        );
        // Configured headers (a configured Content-Type wins over the default).
        headers.extend(super::header_map(&settings.headers)?);
        Ok(HttpDestination {
            client: super::client(&settings.tls, settings.timeout)?,
            url: settings.url,
            method: settings.method,
            headers,
        })
    }

    async fn attempt(&self, message: &Outbound) -> SendOutcome {
        let request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .body(message.payload.clone());
        let response = match request.send().await {
            Ok(r) => r,
            Err(error) => {
                let kind = if error.is_timeout() {
                    "timed out"
                } else if error.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                return SendOutcome::Retry {
                    reason: format!("{kind}: {}", error_chain(&error)),
                    response: None,
                };
            }
        };
        let status = response.status();
        let body = match read_limited(response, MAX_RESPONSE_BYTES).await {
            Ok((b, _)) => Some(b),
            Err(error) => {
                if status.is_success() {
                    return SendOutcome::Retry {
                        reason: format!(
                            "HTTP {status}: reading the response failed: {}",
                            error_chain(&error)
                        ),
                        response: None,
                    };
                }
                None
            }
        };
        classify(status, body)
    }
}

/// Decide the outcome of an HTTP response.
fn classify(status: reqwest::StatusCode, body: Option<Vec<u8>>) -> SendOutcome {
    if status.is_success() {
        let ack_code = body
            .as_deref()
            .filter(|b| b.starts_with(b"MSH"))
            .and_then(|b| ack::parse_ack(b).ok())
            .map(|a| a.code);
        return match ack_code {
            None | Some(AckCode::AA | AckCode::CA) => SendOutcome::Sent { response: body },
            Some(code @ (AckCode::AE | AckCode::CE)) => SendOutcome::Retry {
                reason: format!("HTTP {status} with negative ACK {}", code.as_str()),
                response: body,
            },
            Some(code) => SendOutcome::Failed {
                reason: format!("HTTP {status} with rejecting ACK {}", code.as_str()),
                response: body,
            },
        };
    }
    let reason = format!("HTTP {status}");
    if status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
    {
        SendOutcome::Retry {
            reason,
            response: body,
        }
    } else {
        SendOutcome::Failed {
            reason,
            response: body,
        }
    }
}

/// An error with its causes, so "error sending request" says why.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Destination for HttpDestination {
    fn send<'a>(&'a self, message: &'a Outbound) -> SendFuture<'a> {
        Box::pin(self.attempt(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn statuses_map_to_outcomes() {
        assert!(matches!(
            classify(StatusCode::OK, None),
            SendOutcome::Sent { .. }
        ));
        assert!(matches!(
            classify(StatusCode::NO_CONTENT, None),
            SendOutcome::Sent { .. }
        ));
        for s in [500, 502, 503, 504, 429, 408] {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::IM_A_TEAPOT);
            assert!(
                matches!(classify(status, None), SendOutcome::Retry { .. }),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 409, 422, 301] {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::IM_A_TEAPOT);
            assert!(
                matches!(classify(status, None), SendOutcome::Failed { .. }),
                "{s}"
            );
        }
    }
}
