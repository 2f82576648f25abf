//! HTTP connectors: the HL7-over-HTTP listener, the HTTPS sender and the HTTPS poller, plus the
//! accept loop every Ferry HTTP listener shares.

pub mod destination;
pub mod poll;
pub mod server;
pub mod source;

pub use destination::{HttpDestination, HttpDestinationSettings};
pub use poll::{HttpPoller, HttpPollerSettings};
pub use server::{ConnectionInfo, HttpListener};
pub use source::{HTTP_HL7_CONTENT_TYPE, router as source_router};

/// Read a response body up to `limit` bytes; longer bodies are cut (and said so).
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(body.len());
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}
