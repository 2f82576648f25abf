//! The accept loop shared by every Ferry HTTP listener (the HL7 listener source and the admin
//! server): plain TCP or TLS (with mTLS) in front of an axum [`Router`], HTTP/1.1, graceful
//! shutdown. The TLS handshake, including the client-certificate allow-list, completes before
//! any request byte is read, and the verified peer identity is attached to every request as a
//! [`ConnectionInfo`] extension.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use ferry_engine::Shutdown;
use ferry_store::{AuditAction, AuditEvent, AuditSink};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::Service;

/// Who is on the other end of a request's connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// TCP peer address.
    pub peer: SocketAddr,
    /// Identity from the verified client certificate (mTLS listeners only).
    pub client: Option<ferry_tls::PeerIdentity>,
}

/// A bound HTTP(S) listener.
pub struct HttpListener {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    audit: Option<(AuditSink, String)>,
}

impl HttpListener {
    /// Bind `addr`; with `tls`, every connection must complete a TLS handshake first.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        handshake_timeout: Duration,
    ) -> std::io::Result<HttpListener> {
        Ok(HttpListener {
            listener: TcpListener::bind(addr).await?,
            tls: tls.map(TlsAcceptor::from),
            handshake_timeout,
            audit: None,
        })
    }

    /// Record refused TLS handshakes (`tls_rejected`, with `target` such as `channel/adt` or
    /// `admin`) in the audit trail through `sink`, which never makes the accept loop wait.
    pub fn with_audit(mut self, sink: AuditSink, target: impl Into<String>) -> HttpListener {
        self.audit = Some((sink, target.into()));
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve `router` until shutdown, then let in-flight requests finish (up to 10 s).
    pub async fn serve(self, router: Router, shutdown: Shutdown) {
        let graceful = GracefulShutdown::new();
        let handshakes = Arc::new(tokio::sync::Semaphore::new(256));
        loop {
            let (tcp, peer) = tokio::select! {
                a = self.listener.accept() => match a {
                    Ok(a) => a,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            let _ = tcp.set_nodelay(true);
            let router = router.clone();
            let acceptor = self.tls.clone();
            let timeout = self.handshake_timeout;
            let watcher = graceful.watcher();
            let audit = self.audit.clone();
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many pending connections; closing");
                continue;
            };
            tokio::spawn(async move {
                match acceptor {
                    None => {
                        drop(permit);
                        let info = ConnectionInfo { peer, client: None };
                        serve_connection(tcp, router, info, watcher).await;
                    }
                    Some(acceptor) => {
                        let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(error)) => {
                                tracing::warn!(%peer, %error, "TLS handshake refused");
                                audit_rejection(audit.as_ref(), peer, error.to_string());
                                return;
                            }
                            Err(_) => {
                                tracing::warn!(%peer, "TLS handshake timed out");
                                audit_rejection(
                                    audit.as_ref(),
                                    peer,
                                    "TLS handshake timed out".to_owned(),
                                );
                                return;
                            }
                        };
                        drop(permit);
                        let client = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(ferry_tls::peer_identity);
                        let info = ConnectionInfo { peer, client };
                        serve_connection(tls, router, info, watcher).await;
                    }
                }
            });
        }
        drop(self.listener);
        if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("HTTP connections still open after 10 s; closing them");
        }
    }
}

fn audit_rejection(audit: Option<&(AuditSink, String)>, peer: SocketAddr, reason: String) {
    if let Some((sink, target)) = audit {
        sink.record(
            AuditEvent::new(AuditAction::TlsRejected)
                .failure()
                .target(target.clone())
                .peer(peer)
                .detail("listener", "http")
                .detail("reason", reason),
        );
    }
}

async fn serve_connection<I>(io: I, router: Router, info: ConnectionInfo, watcher: Watcher)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let service = service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(info.clone());
        let mut router = router.clone();
        async move { router.call(request).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), service);
    if let Err(error) = watcher.watch(conn).await {
        tracing::debug!(%peer, %error, "HTTP connection ended with an error");
    }
}
