//! Alerts end to end: `ferry run` with a destination that cannot deliver, alert rules on its
//! queue depth and errors, and real notification targets on loopback (an SMTP server with
//! STARTTLS on a TestPki certificate, an HTTP webhook receiver, a syslog TCP collector).

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Ferry, adt, config_with_channels, free_port, send, toml_path};
use ferry_testkit::TestPki;
use ferry_testkit::http_peer::HttpPeer;
use ferry_testkit::smtp_peer::SmtpPeer;
use ferry_tls::ServerTlsSettings;
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread")]
async fn queue_depth_alert_mails_over_starttls_once_and_is_throttled() {
    let pki = TestPki::new("alerts");
    let cert = pki.server(&["localhost", "127.0.0.1"]);
    let smtp_tls =
        ferry_tls::server_config(&ServerTlsSettings::new(cert.cert, cert.key)).expect("tls");
    let smtp = SmtpPeer::start(Some(smtp_tls)).await.expect("smtp");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[alerts]
interval = "200ms"
node = "test-node"

[alerts.actions.mail-oncall]
email = {{ smtp = "127.0.0.1:{smtp_port}", from = "ferry@example.org", to = ["oncall@example.org"], username = "ferry", password = "${{env:SMTP_PASSWORD}}", tls = {{ ca = {ca} }} }}

[[alert]]
name = "adt-backlog"
when = {{ queue_depth = {{ above = 2, channel = "adt*" }} }}
actions = ["mail-oncall"]
throttle = "1h"

[[channel]]
name = "adt-in"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "his"
  type = "mllp"
  address = "127.0.0.1:{dead}"
  retry = {{ initial = "50ms", max = "100ms" }}
"#,
            smtp_port = smtp.addr().port(),
            ca = toml_path(&pki.ca_cert_path()),
            dead = free_port(),
        ),
    );
    let ferry = Ferry::start(&config, &[("SMTP_PASSWORD", "s3cret-pw")]);
    let mut conn = ferry.connect("adt-in").await;
    for i in 0..3 {
        let ack = send(&mut conn, &adt(&format!("ALERT{i}"))).await;
        assert_eq!(ack.code.as_str(), "AA");
    }

    let mails = smtp.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1, "one alert mail:\n{}", ferry.output());
    let mail = &mails[0];
    assert!(mail.tls, "the mail travelled after STARTTLS");
    assert_eq!(
        mail.auth,
        Some(("ferry".to_owned(), "s3cret-pw".to_owned())),
        "AUTH PLAIN with the password from the environment"
    );
    assert_eq!(mail.from, "ferry@example.org");
    assert_eq!(mail.to, vec!["oncall@example.org".to_owned()]);
    assert!(
        mail.data
            .contains("Subject: [ferry] ALERT adt-backlog on test-node"),
        "{}",
        mail.data
    );
    assert!(mail.data.contains("Alert: adt-backlog"), "{}", mail.data);
    assert!(
        mail.data
            .contains("channel adt-in destination his: queue depth 3 (above 2)"),
        "{}",
        mail.data
    );
    assert!(mail.data.contains("Node: test-node"), "{}", mail.data);
    assert!(mail.data.contains("Time (UTC): 20"), "{}", mail.data);
    for phi in ["DOE", "JANE", "19800101", "ALERT0"] {
        assert!(
            !mail.data.contains(phi),
            "no message content ({phi}) in the mail:\n{}",
            mail.data
        );
    }
    assert!(
        !ferry.output().contains("s3cret-pw"),
        "the SMTP password is never logged"
    );

    // The backlog stays (and grows); within the 1 h throttle no second mail goes out.
    let ack = send(&mut conn, &adt("ALERT3")).await;
    assert_eq!(ack.code.as_str(), "AA");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        smtp.mails().len(),
        1,
        "throttled: one mail per window:\n{}",
        ferry.output()
    );
}

/// A collector that records every byte each connection sends.
async fn syslog_collector() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let frames = Arc::new(Mutex::new(Vec::new()));
    let shared = frames.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = tcp.read_to_end(&mut buf).await;
                shared
                    .lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&buf).into_owned());
            });
        }
    });
    (addr, frames)
}

#[tokio::test(flavor = "multi_thread")]
async fn error_alert_with_text_match_posts_webhooks_and_syslog_despite_a_dead_mail_server() {
    let hook = HttpPeer::start(None).await.expect("webhook");
    let (syslog, frames) = syslog_collector().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[alerts]
interval = "200ms"
node = "test-node"

[alerts.actions.dead-mail]
email = {{ smtp = "127.0.0.1:{dead_smtp}", from = "ferry@example.org", to = ["oncall@example.org"], timeout = "2s" }}

[alerts.actions.ops-hook]
webhook = {{ url = "http://{hook}/alerts", headers = {{ X-Token = "${{env:HOOK_TOKEN}}" }} }}

[alerts.actions.siem]
syslog = {{ address = "{syslog}" }}

[[alert]]
name = "his-unreachable"
when = {{ errors = {{ channel = "adt*", destination = "his", text = "(?i)refused|connect" }} }}
actions = ["dead-mail", "ops-hook", "siem"]
throttle = "1s"

[[alert]]
name = "never-matches"
when = {{ errors = {{ text = "certificate expired" }} }}
actions = ["ops-hook"]

[[channel]]
name = "adt-in"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "his"
  type = "mllp"
  address = "127.0.0.1:{dead}"
  retry = {{ initial = "50ms", max = "100ms" }}
"#,
            dead_smtp = free_port(),
            hook = hook.addr(),
            dead = free_port(),
        ),
    );
    let ferry = Ferry::start(&config, &[("HOOK_TOKEN", "tok-123")]);
    let mut conn = ferry.connect("adt-in").await;
    let ack = send(&mut conn, &adt("HOOK1")).await;
    assert_eq!(ack.code.as_str(), "AA");

    // Retries keep failing, so the rule keeps firing; with a 1 s throttle the second POST
    // reports the firings held back in between.
    let posts = hook.wait_for("POST", 2, Duration::from_secs(20)).await;
    assert!(posts.len() >= 2, "two webhooks:\n{}", ferry.output());
    let first: serde_json::Value = serde_json::from_slice(&posts[0].body).expect("json");
    assert_eq!(posts[0].path, "/alerts");
    assert_eq!(posts[0].header("x-token"), Some("tok-123"));
    assert_eq!(posts[0].header("content-type"), Some("application/json"));
    assert_eq!(first["alert"], "his-unreachable");
    assert_eq!(first["node"], "test-node");
    assert_eq!(first["suppressed"], 0);
    let observed = first["observed"].to_string();
    assert!(
        observed.contains("channel adt-in destination his"),
        "{observed}"
    );
    assert!(observed.to_lowercase().contains("refused"), "{observed}");
    let second: serde_json::Value = serde_json::from_slice(&posts[1].body).expect("json");
    assert!(
        second["suppressed"].as_u64().unwrap_or(0) >= 1,
        "the second notification counts the suppressed firings: {second}"
    );
    for post in &posts {
        let body = String::from_utf8_lossy(&post.body);
        assert!(!body.contains("DOE") && !body.contains("HOOK1"), "{body}");
        let alert: serde_json::Value = serde_json::from_slice(&post.body).expect("json");
        assert_eq!(
            alert["alert"], "his-unreachable",
            "the non-matching rule stays quiet"
        );
    }

    // Syslog got an RFC 5424 message framed by octet counting.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while frames.lock().expect("lock").is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let frame = frames
        .lock()
        .expect("lock")
        .first()
        .cloned()
        .expect("a syslog frame");
    let (len, message) = frame.split_once(' ').expect("octet count");
    assert_eq!(len.parse::<usize>().expect("length"), message.len());
    assert!(message.starts_with("<129>1 20"), "{message}");
    assert!(message.contains(" test-node ferry - ALERT - "), "{message}");
    assert!(message.contains("alert=\"his-unreachable\""), "{message}");

    // The dead mail server is reported, and did not stop the other actions.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ferry.output().contains("alert notification failed")
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = ferry.output();
    assert!(
        output.contains("alert notification failed") && output.contains("dead-mail"),
        "{output}"
    );
    assert!(
        !output.contains("tok-123"),
        "the webhook token is never logged"
    );
}
