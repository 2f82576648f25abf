//! A real MLLP receiver on loopback that records every message and answers from a script:
//! the stand-in for a hospital system in tests.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferry_mllp::{DEFAULT_MAX_FRAME_BYTES, MllpCodec, encode_frame};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::FramedRead;

/// How the peer answers one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckBehavior {
    /// `AA` with MSA-2 = the message's MSH-10.
    Accept,
    /// `AA` but MSA-2 names another message.
    WrongControlId,
    /// A negative ACK with this MSA-1 code (`AE`, `AR`).
    Negative(&'static str),
    /// Record the message but never answer.
    Silent,
}

#[derive(Default)]
struct Script {
    received: Vec<Vec<u8>>,
    behaviors: VecDeque<AckBehavior>,
}

/// A scripted MLLP receiver.
pub struct MllpPeer {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    task: JoinHandle<()>,
}

/// MSH-10 of an ER7 message, by plain splitting (the peer must not depend on the parser it
/// helps to test).
pub fn control_id(message: &[u8]) -> String {
    let first = message
        .split(|b| *b == b'\r' || *b == b'\n')
        .next()
        .unwrap_or_default();
    first
        .split(|b| *b == b'|')
        .nth(9)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .unwrap_or_default()
}

impl MllpPeer {
    /// Start on 127.0.0.1 with an ephemeral port.
    pub async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> std::io::Result<MllpPeer> {
        Self::start_on("127.0.0.1:0".parse().map_err(std::io::Error::other)?, tls).await
    }

    /// Start on a given address.
    pub async fn start_on(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<MllpPeer> {
        Self::start_with(TcpListener::bind(addr).await?, tls)
    }

    /// Start on a listener the test already holds (for example one made from a port it kept
    /// reserved while the peer was meant to be down, so no other test could take the port).
    pub fn start_with(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<MllpPeer> {
        let addr = listener.local_addr()?;
        let script = Arc::new(Mutex::new(Script::default()));
        let acceptor = tls.map(TlsAcceptor::from);
        let shared = script.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let script = shared.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => serve(tcp, script).await,
                        Some(a) => {
                            if let Ok(tls) = a.accept(tcp).await {
                                serve(tls, script).await;
                            }
                        }
                    }
                });
            }
        });
        Ok(MllpPeer { addr, script, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answer the next messages like this, in order (then `Accept`).
    pub fn push_behaviors(&self, behaviors: &[AckBehavior]) {
        if let Ok(mut s) = self.script.lock() {
            s.behaviors.extend(behaviors.iter().cloned());
        }
    }

    /// Every message received so far, in arrival order.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.script
            .lock()
            .map(|s| s.received.clone())
            .unwrap_or_default()
    }

    /// Wait until at least `n` messages arrived or the timeout passes.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop accepting.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for MllpPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(io: S, script: Arc<Mutex<Script>>) {
    let (read, mut write) = tokio::io::split(io);
    let mut frames = FramedRead::new(read, MllpCodec::new(DEFAULT_MAX_FRAME_BYTES));
    while let Some(Ok(frame)) = frames.next().await {
        let behavior = match script.lock() {
            Ok(mut s) => {
                s.received.push(frame.to_vec());
                s.behaviors.pop_front().unwrap_or(AckBehavior::Accept)
            }
            Err(_) => return,
        };
        let id = control_id(&frame);
        let (code, msa2) = match behavior {
            AckBehavior::Accept => ("AA", id),
            AckBehavior::WrongControlId => ("AA", format!("NOT-{id}")),
            AckBehavior::Negative(code) => (code, id),
            AckBehavior::Silent => continue,
        };
        let ack = format!(
            "MSH|^~\\&|PEER|PEER|FERRY|FERRY|20261125000000||ACK^A01^ACK|ACK-{msa2}|P|2.5.1\rMSA|{code}|{msa2}\r"
        );
        let mut out = BytesMut::new();
        encode_frame(ack.as_bytes(), &mut out);
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}
