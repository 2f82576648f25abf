//! An MLLP client connection: connect (optionally over TLS, hostname always verified), send one
//! framed message, read one framed response, all under explicit timeouts.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_mllp::{MllpCodec, MllpError};
use futures::SinkExt;
use futures::StreamExt;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::{Decoder, Framed};

/// Where and how to connect.
#[derive(Clone)]
pub struct MllpEndpoint {
    /// `host:port`.
    pub address: String,
    /// TLS client configuration and the name the server certificate must carry.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// Time allowed to establish TCP and TLS.
    pub connect_timeout: Duration,
    /// Largest response frame accepted.
    pub max_frame_bytes: usize,
}

impl std::fmt::Debug for MllpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MllpEndpoint")
            .field("address", &self.address)
            .field("tls", &self.tls.as_ref().map(|(_, name)| name))
            .finish_non_exhaustive()
    }
}

/// Why an MLLP exchange failed. Every variant is retryable from the sender's point of view.
#[derive(Debug, thiserror::Error)]
pub enum MllpClientError {
    /// TCP connect failed.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// Peer address.
        address: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The TLS handshake failed (untrusted certificate, wrong name, refused client cert, ...).
    #[error("TLS handshake with {address} failed: {source}")]
    Tls {
        /// Peer address.
        address: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Connecting took longer than the connect timeout.
    #[error("connecting to {address} timed out after {timeout:?}")]
    ConnectTimeout {
        /// Peer address.
        address: String,
        /// The limit.
        timeout: Duration,
    },
    /// No complete response within the response timeout.
    #[error("no response within {0:?}")]
    ResponseTimeout(Duration),
    /// The peer closed the connection before answering.
    #[error("connection closed by peer before a response")]
    Closed,
    /// Framing or I/O error on an established connection.
    #[error("{0}")]
    Frame(#[from] MllpError),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An established MLLP connection.
pub struct MllpConnection {
    framed: Framed<Box<dyn Io>, MllpCodec>,
}

impl std::fmt::Debug for MllpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MllpConnection").finish_non_exhaustive()
    }
}

impl MllpConnection {
    /// Connect to the endpoint (TCP, then TLS when configured) within its connect timeout.
    pub async fn connect(endpoint: &MllpEndpoint) -> Result<MllpConnection, MllpClientError> {
        let address = endpoint.address.clone();
        let timeout = endpoint.connect_timeout;
        let connecting = async {
            let tcp =
                TcpStream::connect(&address)
                    .await
                    .map_err(|source| MllpClientError::Connect {
                        address: address.clone(),
                        source,
                    })?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = match &endpoint.tls {
                None => Box::new(tcp),
                Some((config, name)) => Box::new(
                    TlsConnector::from(config.clone())
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|source| MllpClientError::Tls {
                            address: address.clone(),
                            source,
                        })?,
                ),
            };
            Ok::<_, MllpClientError>(io)
        };
        let io = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| MllpClientError::ConnectTimeout {
                address: address.clone(),
                timeout,
            })??;
        Ok(MllpConnection {
            framed: MllpCodec::new(endpoint.max_frame_bytes).framed(io),
        })
    }

    /// Send one message and wait for one response frame.
    pub async fn exchange(
        &mut self,
        payload: &[u8],
        response_timeout: Duration,
    ) -> Result<Bytes, MllpClientError> {
        self.send(payload).await?;
        self.receive(response_timeout).await
    }

    /// Send one framed message without waiting for a response.
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), MllpClientError> {
        self.framed.send(payload).await?;
        Ok(())
    }

    /// Wait for one response frame.
    pub async fn receive(&mut self, timeout: Duration) -> Result<Bytes, MllpClientError> {
        match tokio::time::timeout(timeout, self.framed.next()).await {
            Err(_) => Err(MllpClientError::ResponseTimeout(timeout)),
            Ok(None) => Err(MllpClientError::Closed),
            Ok(Some(frame)) => Ok(frame?),
        }
    }

    /// Bytes buffered but not yet decoded (for tests and diagnostics).
    pub fn buffered(&self) -> &BytesMut {
        self.framed.read_buffer()
    }
}
