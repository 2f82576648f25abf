//! A real HTTP(S) server on loopback that records every request and answers from a script:
//! the stand-in for a cloud API in tests.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// One request the peer received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Script {
    requests: Vec<RecordedRequest>,
    /// Statuses for POST/PUT/PATCH, used in order; 200 when empty.
    statuses: VecDeque<u16>,
    /// Responses for GET, used in order; 204 when empty.
    gets: VecDeque<(u16, Vec<u8>)>,
}

/// A scripted HTTP(S) server.
pub struct HttpPeer {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    task: JoinHandle<()>,
}

impl HttpPeer {
    /// Start on 127.0.0.1 with an ephemeral port.
    pub async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> std::io::Result<HttpPeer> {
        Self::start_on("127.0.0.1:0".parse().map_err(std::io::Error::other)?, tls).await
    }

    /// Start on a given address (to bring a "down" destination back on its port).
    pub async fn start_on(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<HttpPeer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let script = Arc::new(Mutex::new(Script::default()));
        let acceptor = tls.map(TlsAcceptor::from);
        let shared = script.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let script = shared.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, script.clone()));
                    let builder = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                        }
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                    }
                });
            }
        });
        Ok(HttpPeer { addr, script, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answer the next POSTs with these statuses, in order (then 200).
    pub fn push_statuses(&self, statuses: &[u16]) {
        if let Ok(mut s) = self.script.lock() {
            s.statuses.extend(statuses);
        }
    }

    /// Answer the next GET with this status and body (then 204).
    pub fn push_get(&self, status: u16, body: &[u8]) {
        if let Ok(mut s) = self.script.lock() {
            s.gets.push_back((status, body.to_vec()));
        }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.script
            .lock()
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }

    /// Wait until at least `n` requests with `method` arrived, or the timeout passes; returns
    /// those requests.
    pub async fn wait_for(
        &self,
        method: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<RecordedRequest> {
        let deadline = Instant::now() + timeout;
        loop {
            let got: Vec<_> = self
                .requests()
                .into_iter()
                .filter(|r| r.method == method)
                .collect();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop accepting connections (open connections are dropped too).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for HttpPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    request: Request<Incoming>,
    script: Arc<Mutex<Script>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = request.method().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match request.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let (status, reply) = match script.lock() {
        Ok(mut s) => {
            let answer = if method == "GET" {
                s.gets.pop_front().unwrap_or((204, Vec::new()))
            } else {
                (s.statuses.pop_front().unwrap_or(200), b"ok".to_vec())
            };
            s.requests.push(RecordedRequest {
                method,
                path,
                headers,
                body,
            });
            answer
        }
        Err(_) => (500, Vec::new()),
    };
    let mut response = Response::new(Full::new(Bytes::from(reply)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Ok(response)
}
