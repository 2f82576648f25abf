//! The MLLP listener source.
//!
//! One task accepts connections (at most `max_connections` at once; more are closed at once
//! with a log line), one task per connection reads frames. With TLS the handshake, including
//! the mTLS allow-list check, completes before a single HL7 byte is read. Each frame is handed
//! to the channel and answered with the ACK the channel returns, which exists only after the
//! message is durable. Connections are strictly request/response: the next frame is read after
//! the previous ACK is written.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferry_engine::{ChannelIngest, Shutdown};
use ferry_mllp::{MllpCodec, MllpError, encode_frame};
use ferry_store::{AuditAction, AuditEvent, AuditSink};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Decoder;

/// Settings of an MLLP listener, with TLS already loaded.
#[derive(Clone)]
pub struct MllpSourceSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// TLS server configuration (with client verification when mTLS is configured).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Largest frame accepted; larger ones are answered `AR` and the connection closed.
    pub max_frame_bytes: usize,
    /// Time allowed to complete a frame (or a TLS handshake) once it has started.
    pub read_timeout: Duration,
    /// A connection silent for this long between frames is closed.
    pub idle_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
}

/// A bound MLLP listener, not yet serving.
pub struct MllpSource {
    listener: TcpListener,
    settings: MllpSourceSettings,
    audit: Option<AuditSink>,
}

impl MllpSource {
    /// Bind the listening socket.
    pub async fn bind(settings: MllpSourceSettings) -> std::io::Result<MllpSource> {
        let listener = TcpListener::bind(settings.listen).await?;
        Ok(MllpSource {
            listener,
            settings,
            audit: None,
        })
    }

    /// Record refused TLS handshakes (`tls_rejected`) in the audit trail through `sink`,
    /// which never makes the accept loop wait.
    pub fn with_audit(mut self, sink: AuditSink) -> MllpSource {
        self.audit = Some(sink);
        self
    }

    /// The address actually bound (differs from the configured one with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until shutdown. On shutdown the listener stops accepting and each connection
    /// finishes the message it is handling (its ACK is written) before closing.
    pub async fn run(self, ingest: ChannelIngest, shutdown: Shutdown) {
        let limit = Arc::new(Semaphore::new(self.settings.max_connections.max(1)));
        let acceptor = self.settings.tls.clone().map(TlsAcceptor::from);
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = shutdown.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(channel = %ingest.channel(), %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::warn!(channel = %ingest.channel(), %peer,
                    max = self.settings.max_connections, "connection refused: too many connections");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let conn = Connection {
                ingest: ingest.clone(),
                settings: self.settings.clone(),
                peer,
                shutdown: shutdown.clone(),
                audit: self.audit.clone(),
            };
            let acceptor = acceptor.clone();
            connections.spawn(async move {
                conn.serve(tcp, acceptor).await;
                drop(permit);
            });
        }
        while connections.join_next().await.is_some() {}
    }
}

struct Connection {
    ingest: ChannelIngest,
    settings: MllpSourceSettings,
    peer: SocketAddr,
    shutdown: Shutdown,
    audit: Option<AuditSink>,
}

impl Connection {
    async fn serve(self, tcp: TcpStream, acceptor: Option<TlsAcceptor>) {
        let channel = self.ingest.channel().to_owned();
        match acceptor {
            None => self.frames(tcp, String::new()).await,
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(self.settings.read_timeout, acceptor.accept(tcp)).await;
                match handshake {
                    Ok(Ok(tls)) => {
                        let identity = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(ferry_tls::peer_identity)
                            .map(|i| i.to_string())
                            .unwrap_or_default();
                        self.frames(tls, identity).await
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%channel, peer = %self.peer, %error, "TLS handshake refused");
                        self.audit_rejection(&channel, error.to_string());
                    }
                    Err(_) => {
                        tracing::warn!(%channel, peer = %self.peer, "TLS handshake timed out");
                        self.audit_rejection(&channel, "TLS handshake timed out".to_owned());
                    }
                }
            }
        }
    }

    fn audit_rejection(&self, channel: &str, reason: String) {
        if let Some(sink) = &self.audit {
            sink.record(
                AuditEvent::new(AuditAction::TlsRejected)
                    .failure()
                    .target(format!("channel/{channel}"))
                    .peer(self.peer)
                    .detail("listener", "mllp")
                    .detail("reason", reason),
            );
        }
    }

    async fn frames<S: AsyncRead + AsyncWrite + Unpin>(self, mut io: S, identity: String) {
        let channel = self.ingest.channel().to_owned();
        let peer = self.peer;
        tracing::debug!(%channel, %peer, %identity, "connection opened");
        let mut codec = MllpCodec::new(self.settings.max_frame_bytes);
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let mut out = BytesMut::with_capacity(512);
        let mut source_map = serde_json::Map::new();
        source_map.insert("remote_address".into(), peer.to_string().into());
        source_map.insert("client_identity".into(), identity.to_string().into());
        loop {
            // Decode whatever is buffered before reading more.
            let decoded = codec.decode(&mut buf);
            let discarded = codec.discarded_bytes();
            if discarded > 0 {
                tracing::warn!(%channel, %peer, bytes = discarded, "discarded bytes outside an MLLP frame");
            }
            match decoded {
                Ok(Some(frame)) => {
                    let reply = self.ingest.receive_with(&frame, source_map.clone()).await;
                    out.clear();
                    if reply.requested {
                        encode_frame(&reply.ack, &mut out);
                    }
                    // Enhanced mode: the application ACK follows the commit ACK.
                    if let Some(application) = &reply.application_ack {
                        encode_frame(application, &mut out);
                    }
                    if !out.is_empty()
                        && let Err(error) = io.write_all(&out).await
                    {
                        tracing::warn!(%channel, %peer, %error, "could not write ACK");
                        return;
                    }
                    if self.shutdown.is_cancelled() {
                        break;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(MllpError::FrameTooLarge { limit, prefix }) => {
                    let reason = format!("frame exceeds the maximum size of {limit} bytes");
                    let reply = self.ingest.reject(&prefix, reason).await;
                    out.clear();
                    encode_frame(&reply.ack, &mut out);
                    let _ = io.write_all(&out).await;
                    tracing::warn!(%channel, %peer, limit, "oversized frame rejected; closing connection");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%channel, %peer, %error, "framing error; closing connection");
                    break;
                }
            }
            // A started frame must complete within read_timeout; between frames the connection
            // may stay silent for idle_timeout.
            let timeout = if buf.is_empty() {
                self.settings.idle_timeout
            } else {
                self.settings.read_timeout
            };
            buf.reserve(8 * 1024);
            let read = tokio::select! {
                r = tokio::time::timeout(timeout, io.read_buf(&mut buf)) => r,
                _ = self.shutdown.cancelled(), if buf.is_empty() => break,
            };
            match read {
                Err(_) => {
                    tracing::info!(%channel, %peer, timeout_ms = timeout.as_millis() as u64,
                        partial = !buf.is_empty(), "connection timed out; closing");
                    break;
                }
                Ok(Ok(0)) => {
                    if !buf.is_empty() {
                        tracing::warn!(%channel, %peer, bytes = buf.len(),
                            "connection closed in the middle of a frame; partial frame dropped (never acknowledged)");
                    }
                    break;
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::debug!(%channel, %peer, %error, "read failed; closing");
                    break;
                }
            }
        }
        let _ = io.shutdown().await;
        tracing::debug!(%channel, %peer, "connection closed");
    }
}
