//! Hostile and broken input over MLLP: every case gets AR or a clean close, the engine keeps
//! serving, and everything that was readable is stored (visible as rejected).

use crate::common;

use std::time::Duration;

use common::{Ferry, adt, config_with_channels, plain, send, toml_path};
use ferry_connectors::mllp::MllpConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn start() -> (Ferry, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "in"
source = {{ type = "mllp", listen = "127.0.0.1:0", max_frame_size = "4KiB", read_timeout = "1s" }}

  [[channel.destination]]
  name = "archive"
  type = "file"
  directory = {out}
"#,
            out = toml_path(&dir.path().join("out")),
        ),
    );
    (Ferry::start(&config, &[]), dir)
}

/// Read until the peer closes (or 5 s); returns the bytes.
async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut all)).await;
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_input_gets_ar_or_a_clean_close() {
    let (ferry, _dir) = start();
    let addr = ferry.listener("in");
    let mut conn = MllpConnection::connect(&plain(addr))
        .await
        .expect("connect");

    // No MSH at all.
    let ack = send(&mut conn, b"this is not HL7").await;
    assert_eq!(ack.code.as_str(), "AR");
    // Starts with another segment.
    let ack = send(&mut conn, b"PID|1||123\rMSH|^~\\&|A|B\r").await;
    assert_eq!(ack.code.as_str(), "AR");
    // MSH without MSH-10.
    let ack = send(
        &mut conn,
        b"MSH|^~\\&|HIS|GH|FERRY|X|20261125||ADT^A01||P|2.5.1\r",
    )
    .await;
    assert_eq!(ack.code.as_str(), "AR");
    assert!(ack.text.unwrap_or_default().contains("MSH-10"));
    // Binary garbage inside a frame.
    let ack = send(&mut conn, &[0xff, 0x00, 0xfe, 0x1c, 0x41, 0x7f]).await;
    assert_eq!(ack.code.as_str(), "AR");
    // The same connection still works for a good message.
    assert_eq!(send(&mut conn, &adt("GOOD1")).await.code.as_str(), "AA");
    let rejected = "ferry_messages_rejected_total{channel=\"in\"}";
    assert_eq!(ferry.metric(rejected).await, Some(4));

    // Junk bytes outside any frame are discarded; the frame after them is served.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let mut bytes = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    bytes.push(0x0b);
    bytes.extend_from_slice(&adt("GOOD2"));
    bytes.extend_from_slice(&[0x1c, 0x0d]);
    tcp.write_all(&bytes).await.expect("write");
    let mut reply = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut reply))
        .await
        .expect("reply in time")
        .expect("read");
    let payload = &reply[1..n.saturating_sub(2)];
    let ack = ferry_hl7::ack::parse_ack(payload).expect("ack");
    assert_eq!(
        (ack.code.as_str(), ack.control_id.as_str()),
        ("AA", "GOOD2")
    );

    // Oversized frame: AR addressed to the message (its header was readable), then close.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let mut big = vec![0x0b];
    big.extend_from_slice(&adt("BIG1"));
    big.extend(std::iter::repeat_n(b'x', 8 * 1024));
    tcp.write_all(&big).await.expect("write");
    let all = read_to_close(&mut tcp).await;
    assert!(
        all.first() == Some(&0x0b),
        "an AR frame came back before the close"
    );
    let ack = ferry_hl7::ack::parse_ack(&all[1..all.len().saturating_sub(2)]).expect("ack");
    assert_eq!((ack.code.as_str(), ack.control_id.as_str()), ("AR", "BIG1"));

    // A frame that starts and never ends: closed after read_timeout, never acknowledged.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let mut partial = vec![0x0b];
    partial.extend_from_slice(&adt("PARTIAL"));
    tcp.write_all(&partial).await.expect("write");
    let all = read_to_close(&mut tcp).await;
    assert!(all.is_empty(), "a partial frame must not be acknowledged");

    // Pure garbage then close.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(&[0x1c, 0x0d, 0x00, 0xff, 0x1c])
        .await
        .expect("write");
    drop(tcp);

    // Still healthy, still serving.
    let mut conn = MllpConnection::connect(&plain(addr))
        .await
        .expect("connect");
    assert_eq!(send(&mut conn, &adt("GOOD3")).await.code.as_str(), "AA");
    let (status, _) = ferry.admin_get("/health").await;
    assert_eq!(status, 200);
    let sent = "ferry_messages_sent_total{channel=\"in\",destination=\"archive\"}";
    assert_eq!(
        ferry.wait_metric(sent, 3, Duration::from_secs(5)).await,
        Some(3)
    );
}
