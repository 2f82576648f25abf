//! The audit shipper against a real syslog-TLS collector on loopback: RFC 5425 framing, and
//! records written while the collector is down are kept and sent once it is back; in the
//! ATNA form, RFC 5424 headed IHE ITI-20 messages whose XML parses and carries the DICOM
//! codes of each event.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_connectors::syslog::{AuditSyslogFormat, SyslogSettings, SyslogShipper};
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
        format: AuditSyslogFormat::Json,
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

/// An ATNA message split into its RFC 5424 parts: (PRI+version, MSGID, SD, MSG).
fn rfc5424_parts(message: &str) -> (String, String, String, String) {
    // <PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG; the SD may hold spaces.
    let mut parts = message.splitn(7, ' ');
    let pri = parts.next().expect("pri").to_owned();
    let time = parts.next().expect("timestamp");
    assert!(time.ends_with('Z') && time.len() == 24, "{message}");
    assert!(!parts.next().expect("host").is_empty());
    assert_eq!(parts.next(), Some("ferry"), "APP-NAME");
    assert_eq!(parts.next(), Some("-"), "PROCID");
    let msgid = parts.next().expect("msgid").to_owned();
    let rest = parts.next().expect("sd and msg");
    let end = rest.find("] ").expect("structured data") + 1;
    (
        pri,
        msgid,
        rest[..end].to_owned(),
        rest[end + 1..].to_owned(),
    )
}

/// A coded value's `csd-code`, `codeSystemName` and `originalText`.
fn code(node: roxmltree::Node<'_, '_>) -> (String, String, String) {
    let attr = |name: &str| node.attribute(name).unwrap_or_default().to_owned();
    (
        attr("csd-code"),
        attr("codeSystemName"),
        attr("originalText"),
    )
}

fn child<'a, 'input>(node: roxmltree::Node<'a, 'input>, name: &str) -> roxmltree::Node<'a, 'input> {
    node.children()
        .find(|c| c.has_tag_name(name))
        .unwrap_or_else(|| panic!("<{name}> in <{}>", node.tag_name().name()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atna_messages_are_rfc5425_framed_rfc5424_headed_and_carry_the_dicom_codes() {
    let pki = TestPki::new("arr");
    let server = pki.server(&["localhost", "127.0.0.1"]);
    let server_tls = ferry_tls::server_config(&ServerTlsSettings::new(&server.cert, &server.key))
        .expect("server tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _running = collector(listener, server_tls, tx);

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store.db")).expect("open");
    // A refused TLS client, a login by a user whose name is markup, a PHI view.
    let events = [
        AuditEvent::new(AuditAction::TlsRejected)
            .failure()
            .node("ferry-node-1")
            .target("channel/adt")
            .source_address("192.0.2.7:51234")
            .detail("listener", "mllp")
            .detail("reason", "invalid peer certificate: Revoked"),
        AuditEvent::new(AuditAction::Login)
            .node("ferry-node-1")
            .actor("<alice & \"bob\">")
            .source_address("[2001:db8::1]:443"),
        AuditEvent::new(AuditAction::MessageView)
            .node("ferry-node-1")
            .actor("olga")
            .target("channel/adt/message/42")
            .source_address("198.51.100.4:40000"),
    ];
    for event in events {
        store.audit_append(event).await.expect("append");
    }
    let settings = SyslogSettings {
        address: address.to_string(),
        server_name: ferry_tls::server_name("localhost").expect("name"),
        tls: ferry_tls::client_config(&ClientTlsSettings {
            ca: Some(pki.ca_cert_path()),
            cert: None,
            key: None,
        })
        .expect("client tls"),
        batch: 16,
        poll_interval: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        format: AuditSyslogFormat::Atna,
    };
    let shutdown = Shutdown::new();
    let shipper = tokio::spawn(SyslogShipper::new(settings).run(store.clone(), shutdown.clone()));

    // (PRI, EventID, EventTypeCode, EventActionCode, EventOutcomeIndicator, UserID,
    //  NetworkAccessPointID, ParticipantObjectID and its type code)
    let expected = [
        (
            "<84>1",
            "110113",
            Some(("110126", "Node Authentication")),
            "E",
            "8",
            "system",
            "192.0.2.7",
            Some(("channel/adt", "2")),
        ),
        (
            "<85>1",
            "110114",
            Some(("110122", "Login")),
            "E",
            "0",
            "<alice & \"bob\">",
            "2001:db8::1",
            None,
        ),
        (
            "<85>1",
            "110110",
            None,
            "R",
            "0",
            "olga",
            "198.51.100.4",
            Some(("channel/adt/message/42", "2")),
        ),
    ];
    for (seq, (pri, event_id, event_type, action, outcome, user, address, object)) in
        expected.into_iter().enumerate()
    {
        let message = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a message within 10 s")
            .expect("collector running");
        let (got_pri, msgid, sd, msg) = rfc5424_parts(&message);
        assert_eq!(got_pri, pri, "{message}");
        assert_eq!(msgid, "IHE+RFC-3881", "ITI-20 MSGID");
        assert_eq!(sd, format!("[meta sequenceId=\"{}\"]", seq + 1));
        let xml = msg
            .strip_prefix('\u{feff}')
            .expect("UTF-8 MSG starts with the BOM");
        let doc = roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
        let root = doc.root_element();
        assert!(root.has_tag_name("AuditMessage"), "{xml}");

        let event = child(root, "EventIdentification");
        assert_eq!(event.attribute("EventActionCode"), Some(action), "{xml}");
        assert_eq!(
            event.attribute("EventOutcomeIndicator"),
            Some(outcome),
            "{xml}"
        );
        let time = event.attribute("EventDateTime").expect("EventDateTime");
        assert!(time.ends_with('Z') && time.contains('T'), "{time}");
        let (id, system, _) = code(child(event, "EventID"));
        assert_eq!((id.as_str(), system.as_str()), (event_id, "DCM"), "{xml}");
        let types: Vec<_> = event
            .children()
            .filter(|c| c.has_tag_name("EventTypeCode"))
            .map(code)
            .collect();
        match event_type {
            Some((code, meaning)) => assert_eq!(
                types,
                [(code.to_owned(), "DCM".to_owned(), meaning.to_owned())],
                "{xml}"
            ),
            None => assert!(types.is_empty(), "{xml}"),
        }

        let participant = child(root, "ActiveParticipant");
        assert_eq!(participant.attribute("UserID"), Some(user), "{xml}");
        assert_eq!(participant.attribute("UserIsRequestor"), Some("true"));
        assert_eq!(participant.attribute("NetworkAccessPointID"), Some(address));
        assert_eq!(
            participant.attribute("NetworkAccessPointTypeCode"),
            Some("2")
        );

        let source = child(root, "AuditSourceIdentification");
        assert_eq!(source.attribute("AuditSourceID"), Some("ferry-node-1"));
        assert_eq!(code(child(source, "AuditSourceTypeCode")).0, "4");

        let objects: Vec<_> = root
            .children()
            .filter(|c| c.has_tag_name("ParticipantObjectIdentification"))
            .collect();
        match object {
            Some((id, kind)) => {
                assert_eq!(objects.len(), 1, "{xml}");
                assert_eq!(objects[0].attribute("ParticipantObjectID"), Some(id));
                assert_eq!(
                    objects[0].attribute("ParticipantObjectTypeCode"),
                    Some(kind)
                );
                let (id_type, id_system, _) =
                    code(child(objects[0], "ParticipantObjectIDTypeCode"));
                assert_eq!((id_type.as_str(), id_system.as_str()), ("12", "RFC-3881"));
            }
            None => assert!(objects.is_empty(), "{xml}"),
        }
        if event_id == "110113" {
            assert_eq!(
                child(event, "EventOutcomeDescription").text(),
                Some("invalid peer certificate: Revoked")
            );
        }
    }
    shutdown.cancel();
    shipper.await.expect("shipper stopped");
    store.close().await.expect("close");
}
