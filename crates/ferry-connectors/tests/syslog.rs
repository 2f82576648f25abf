//! The audit shipper against a real syslog-TLS collector on loopback: RFC 5425 framing, and
//! records written while the collector is down are kept and sent once it is back.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_connectors::syslog::{SyslogSettings, SyslogShipper};
use ferry_engine::Shutdown;
use ferry_store::{AuditAction, AuditEvent, Store};
use ferry_testkit::TestPki;
use ferry_tls::{ClientTlsSettings, ServerTlsSettings};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// A collector: accepts TLS connections one at a time and sends every octet-counted message
/// it reads to `tx`. Aborting its task drops the listener and the connection (collector down).
fn collector(
    listener: tokio::net::TcpListener,
    tls: std::sync::Arc<rustls::ServerConfig>,
    tx: mpsc::UnboundedSender<String>,
) -> tokio::task::JoinHandle<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut stream) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut buf = Vec::new();
            loop {
                // Parse every complete `LEN SP MSG` frame in the buffer.
                while let Some(space) = buf.iter().position(|b| *b == b' ') {
                    let len: usize = std::str::from_utf8(&buf[..space])
                        .expect("ascii length")
                        .parse()
                        .expect("octet count");
                    if buf.len() < space + 1 + len {
                        break;
                    }
                    let message = String::from_utf8(buf[space + 1..space + 1 + len].to_vec())
                        .expect("utf-8 message");
                    buf.drain(..space + 1 + len);
                    let _ = tx.send(message);
                }
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
    })
}

async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> serde_json::Value {
    let message = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a message within 10 s")
        .expect("collector running");
    // <PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG
    let mut parts = message.splitn(8, ' ');
    let pri = parts.next().expect("pri");
    assert!(pri == "<85>1" || pri == "<84>1", "{message}");
    let time = parts.next().expect("timestamp");
    assert!(time.ends_with('Z') && time.len() == 24, "{message}");
    let _host = parts.next().expect("host");
    assert_eq!(parts.next(), Some("ferry"));
    assert_eq!(parts.next(), Some("-"));
    assert_eq!(parts.next(), Some("ferry-audit"));
    assert_eq!(parts.next(), Some("-"));
    serde_json::from_str(parts.next().expect("msg")).expect("JSON record")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_shipped_and_buffered_durably_while_the_collector_is_down() {
    let pki = TestPki::new("syslog");
    let server = pki.server(&["localhost", "127.0.0.1"]);
    let server_tls = ferry_tls::server_config(&ServerTlsSettings::new(&server.cert, &server.key))
        .expect("server tls");
    let client_tls = ferry_tls::client_config(&ClientTlsSettings {
        ca: Some(pki.ca_cert_path()),
        cert: None,
        key: None,
    })
    .expect("client tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address: SocketAddr = listener.local_addr().expect("addr");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let running = collector(listener, server_tls.clone(), tx.clone());

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let store = Store::open(&path).expect("open");
    for i in 0..3 {
        store
            .audit_append(AuditEvent::new(AuditAction::Login).actor(format!("u{i}")))
            .await
            .expect("append");
    }
    let settings = SyslogSettings {
        address: address.to_string(),
        server_name: ferry_tls::server_name("localhost").expect("name"),
        tls: client_tls,
        batch: 2,
        poll_interval: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    };
    let shutdown = Shutdown::new();
    let shipper =
        tokio::spawn(SyslogShipper::new(settings.clone()).run(store.clone(), shutdown.clone()));
    let mut prev = ferry_store::audit::GENESIS_HASH.to_owned();
    for seq in 1..=3 {
        let record = next(&mut rx).await;
        assert_eq!(record["seq"], seq);
        assert_eq!(record["prev_hash"], prev.as_str());
        prev = record["hash"].as_str().expect("hash").to_owned();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.audit_shipped_upto().await.expect("cursor") < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cursor did not reach 3"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Collector down: records keep being written and are not lost.
    running.abort();
    let _ = running.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 3..6 {
        store
            .audit_append(
                AuditEvent::new(AuditAction::MessageView)
                    .actor(format!("u{i}"))
                    .failure(),
            )
            .await
            .expect("append");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.audit_shipped_upto().await.expect("cursor"), 3);
    // The cursor is durable: a restarted node resumes after it.
    shutdown.cancel();
    shipper.await.expect("shipper stopped");
    store.close().await.expect("close");
    let store = Store::open(&path).expect("reopen");
    assert_eq!(store.audit_shipped_upto().await.expect("cursor"), 3);

    // Collector back on the same port: the buffered records arrive, in order, once.
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .expect("rebind");
    let _running = collector(listener, server_tls, tx);
    let shutdown = Shutdown::new();
    let shipper = tokio::spawn(SyslogShipper::new(settings).run(store.clone(), shutdown.clone()));
    for seq in 4..=6 {
        let record = next(&mut rx).await;
        assert_eq!(record["seq"], seq);
        assert_eq!(record["outcome"], "failure");
        assert_eq!(record["prev_hash"], prev.as_str());
        prev = record["hash"].as_str().expect("hash").to_owned();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.audit_shipped_upto().await.expect("cursor") < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cursor did not reach 6"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.try_recv().is_err(), "a record was sent twice");
    shutdown.cancel();
    shipper.await.expect("shipper stopped");
    store.close().await.expect("close");
}
