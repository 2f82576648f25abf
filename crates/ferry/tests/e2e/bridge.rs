//! The two canonical flows of PRODUCT.md §1, end to end through the real binary, over real
//! loopback sockets with real TLS.

use crate::common;

use std::time::Duration;

use common::{Ferry, adt, config_with_channels, free_port, plain, send, toml_path};
use ferry_connectors::mllp::{MllpConnection, MllpEndpoint};
use ferry_testkit::TestPki;
use ferry_testkit::http_peer::HttpPeer;
use ferry_testkit::mllp_peer::{AckBehavior, MllpPeer, control_id};
use ferry_tls::{ClientTlsSettings, ServerTlsSettings};

/// Flow 1: the HIS sends ADT over MLLP with mutual TLS; Ferry ACKs after the durable commit and
/// POSTs the message over HTTPS with mutual TLS and a secret header to the cloud API.
#[tokio::test(flavor = "multi_thread")]
async fn adt_over_mllp_tls_reaches_the_https_api_with_mtls() {
    let pki = TestPki::new("bridge");
    let server = pki.server(&["localhost", "127.0.0.1"]);
    let his = pki.client("his.hospital.local", &[]);
    let bridge_identity = pki.client("ferry-bridge", &[]);
    let api_tls = ferry_tls::server_config(&ServerTlsSettings {
        cert: server.cert.clone(),
        key: server.key.clone(),
        client_ca: Some(pki.ca_cert_path()),
        allowed_clients: vec!["ferry-bridge".into()],
        crl: Vec::new(),
    })
    .expect("api tls");
    let api = HttpPeer::start(Some(api_tls)).await.expect("api");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "adt-to-cloud"
source = {{ type = "mllp", listen = "127.0.0.1:0", tls = {{ cert = {cert}, key = {key}, client_ca = {ca}, allowed_clients = ["his.hospital.local"] }} }}

  [[channel.destination]]
  name = "cloud"
  type = "http"
  url = "https://localhost:{port}/hl7/adt"
  tls = {{ ca = {ca}, cert = {bcert}, key = {bkey} }}
  headers = {{ Authorization = "Bearer ${{env:FERRY_TEST_CLOUD_TOKEN}}" }}
"#,
            cert = toml_path(&server.cert),
            key = toml_path(&server.key),
            ca = toml_path(&pki.ca_cert_path()),
            bcert = toml_path(&bridge_identity.cert),
            bkey = toml_path(&bridge_identity.key),
            port = api.addr().port(),
        ),
    );
    let ferry = Ferry::start(&config, &[("FERRY_TEST_CLOUD_TOKEN", "canary-token-123")]);
    let client_tls = ferry_tls::client_config(&ClientTlsSettings {
        ca: Some(pki.ca_cert_path()),
        cert: Some(his.cert.clone()),
        key: Some(his.key.clone()),
    })
    .expect("client tls");
    let endpoint = MllpEndpoint {
        tls: Some((
            client_tls,
            ferry_tls::server_name("localhost").expect("name"),
        )),
        ..plain(ferry.listener("adt-to-cloud"))
    };
    let mut conn = MllpConnection::connect(&endpoint).await.expect("connect");
    let message = adt("MSG00001");
    let ack = send(&mut conn, &message).await;
    assert_eq!(ack.code.as_str(), "AA");
    assert_eq!(ack.control_id, "MSG00001");

    let posts = api.wait_for("POST", 1, Duration::from_secs(15)).await;
    assert_eq!(posts.len(), 1, "{}", ferry.output());
    let post = &posts[0];
    assert_eq!(post.path, "/hl7/adt");
    assert_eq!(post.body, message);
    assert_eq!(post.header("content-type"), Some("application/hl7-v2"));
    assert_eq!(
        post.header("authorization"),
        Some("Bearer canary-token-123")
    );
    let sent = ferry
        .wait_metric(
            "ferry_messages_sent_total{channel=\"adt-to-cloud\",destination=\"cloud\"}",
            1,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(sent, Some(1));
    let (status, body) = ferry.admin_get("/health").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !ferry.output().contains("canary-token-123"),
        "secret leaked to the log"
    );
}

/// Flow 2: Ferry polls the cloud API over HTTPS, receives two messages in one body, and sends
/// them over MLLP to the HIS, checking each ACK: an ACK answering another message (MSA-2
/// mismatch) is not taken as delivery, so the message is sent again, and order holds.
#[tokio::test(flavor = "multi_thread")]
async fn https_poll_to_mllp_checks_every_ack() {
    let pki = TestPki::new("poll");
    let server = pki.server(&["localhost"]);
    let api_tls = ferry_tls::server_config(&ServerTlsSettings {
        cert: server.cert.clone(),
        key: server.key.clone(),
        client_ca: None,
        allowed_clients: vec![],
        crl: Vec::new(),
    })
    .expect("api tls");
    let api = HttpPeer::start(Some(api_tls)).await.expect("api");
    let first =
        b"MSH|^~\\&|SCHED|CLOUD|HIS|GH|20261125090000||SIU^S12^SIU_S12|APPT-1|P|2.5.1\rSCH|1|1\r";
    let second =
        b"MSH|^~\\&|SCHED|CLOUD|HIS|GH|20261125090100||SIU^S14^SIU_S12|APPT-2|P|2.5.1\rSCH|1|1\r";
    let mut body = first.to_vec();
    body.extend_from_slice(second);
    api.push_get(200, &body);
    let his = MllpPeer::start(None).await.expect("his");
    his.push_behaviors(&[
        AckBehavior::WrongControlId,
        AckBehavior::Accept,
        AckBehavior::Accept,
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "appointments-to-his"
source = {{ type = "http-poll", url = "https://localhost:{port}/events", interval = "200ms", tls = {{ ca = {ca} }} }}

  [[channel.destination]]
  name = "his"
  type = "mllp"
  address = "{his}"
  retry = {{ initial = "50ms", max = "200ms" }}
"#,
            ca = toml_path(&pki.ca_cert_path()),
            port = api.addr().port(),
            his = his.addr(),
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let received = his.wait_for(3, Duration::from_secs(15)).await;
    let ids: Vec<String> = received.iter().map(|m| control_id(m)).collect();
    assert_eq!(ids, ["APPT-1", "APPT-1", "APPT-2"], "{}", ferry.output());
    let sample = "ferry_messages_sent_total{channel=\"appointments-to-his\",destination=\"his\"}";
    assert_eq!(
        ferry.wait_metric(sample, 2, Duration::from_secs(5)).await,
        Some(2)
    );
    let retries =
        "ferry_delivery_retries_total{channel=\"appointments-to-his\",destination=\"his\"}";
    assert_eq!(ferry.metric(retries).await, Some(1));
    // Later polls got 204: nothing more was sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(his.received().len(), 3);
    assert!(api.requests().len() >= 2, "the poller kept polling");
}

/// The destination is down: every message is still acknowledged (it is durable), the queue
/// grows, and when the destination comes back every message arrives, in order.
#[tokio::test(flavor = "multi_thread")]
async fn destination_down_queues_then_delivers_in_order() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "api"
  type = "http"
  url = "http://127.0.0.1:{port}/adt"
  retry = {{ initial = "50ms", max = "300ms" }}
"#,
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let mut conn = ferry.connect("adt").await;
    const N: usize = 60;
    for i in 0..N {
        let ack = send(&mut conn, &adt(&format!("Q{i:04}"))).await;
        assert_eq!(ack.code.as_str(), "AA", "message {i}");
    }
    let depth = "ferry_queue_depth{channel=\"adt\",destination=\"api\"}";
    assert_eq!(ferry.metric(depth).await, Some(N as i64));
    let api = HttpPeer::start_on(format!("127.0.0.1:{port}").parse().expect("addr"), None)
        .await
        .expect("api back");
    let posts = api.wait_for("POST", N, Duration::from_secs(20)).await;
    let ids: Vec<String> = posts.iter().map(|p| control_id(&p.body)).collect();
    let expected: Vec<String> = (0..N).map(|i| format!("Q{i:04}")).collect();
    assert_eq!(ids, expected, "{}", ferry.output());
    assert_eq!(
        ferry.wait_metric(depth, 0, Duration::from_secs(5)).await,
        Some(0)
    );
}

/// HL7 over HTTP: POST a message, get the ACK in the body with the status convention.
#[tokio::test(flavor = "multi_thread")]
async fn http_listener_answers_with_ack_and_status() {
    let out = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "inbound"
source = {{ type = "http", listen = "127.0.0.1:0", path = "/hl7", max_body_size = "4KiB" }}

  [[channel.destination]]
  name = "archive"
  type = "file"
  directory = {out}
"#,
            out = toml_path(out.path()),
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let url = format!("http://{}/hl7", ferry.listener("inbound"));
    let client = reqwest::Client::new();
    let ok = client
        .post(&url)
        .header("content-type", "application/hl7-v2")
        .body(adt("H1"))
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status().as_u16(), 200);
    let ack = ferry_hl7::ack::parse_ack(&ok.bytes().await.expect("body")).expect("ack");
    assert_eq!((ack.code.as_str(), ack.control_id.as_str()), ("AA", "H1"));
    let bad = client.post(&url).body("hello").send().await.expect("post");
    assert_eq!(bad.status().as_u16(), 400);
    let ack = ferry_hl7::ack::parse_ack(&bad.bytes().await.expect("body")).expect("ack");
    assert_eq!(ack.code.as_str(), "AR");
    let get = client.get(&url).send().await.expect("get");
    assert_eq!(get.status().as_u16(), 405);
    let mut huge = adt("H3");
    huge.extend(std::iter::repeat_n(b'x', 8 * 1024));
    let too_big = client.post(&url).body(huge).send().await.expect("post");
    assert_eq!(too_big.status().as_u16(), 413);
    let elsewhere = client
        .post(format!("http://{}/other", ferry.listener("inbound")))
        .body(adt("H2"))
        .send()
        .await
        .expect("post");
    assert_eq!(elsewhere.status().as_u16(), 404);
    let sent = "ferry_messages_sent_total{channel=\"inbound\",destination=\"archive\"}";
    assert_eq!(
        ferry.wait_metric(sent, 1, Duration::from_secs(5)).await,
        Some(1)
    );
    let files: Vec<_> = std::fs::read_dir(out.path())
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(files, ["inbound-1.hl7"]);
}

/// SIGTERM stops cleanly: exit status 0 and the store closed.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let his = MllpPeer::start(None).await.expect("his");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "c"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "his"
  type = "mllp"
  address = "{his}"
"#,
            his = his.addr(),
        ),
    );
    let mut ferry = Ferry::start(&config, &[]);
    let mut conn = ferry.connect("c").await;
    assert_eq!(send(&mut conn, &adt("T1")).await.code.as_str(), "AA");
    his.wait_for(1, Duration::from_secs(10)).await;
    assert!(ferry.terminate(), "{}", ferry.output());
    assert!(
        ferry.output().contains("ferry: stopped cleanly"),
        "{}",
        ferry.output()
    );
}
