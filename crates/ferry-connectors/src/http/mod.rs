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

/// Errors building an HTTP client (sender or poller).
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// A header name or value is not valid HTTP.
    #[error("invalid header `{0}`")]
    Header(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Configured headers as a header map; every value is marked sensitive (it may hold a secret),
/// which keeps it out of debug output.
pub(crate) fn header_map(
    headers: &[(String, String)],
) -> Result<reqwest::header::HeaderMap, HttpClientError> {
    use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| HttpClientError::Header(name.clone()))?;
        let mut value =
            HeaderValue::from_str(value).map_err(|_| HttpClientError::Header(name.to_string()))?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    Ok(map)
}

/// One HTTP/1.1 client on Ferry's TLS configuration (hostname verification always on), with a
/// whole-request timeout and no redirects (a redirected HL7 POST is a misconfiguration to see,
/// not to follow).
pub(crate) fn client(
    tls: &rustls::ClientConfig,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, HttpClientError> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

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
