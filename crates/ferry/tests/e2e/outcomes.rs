//! How destinations classify outcomes: HTTP 5xx is retried, other 4xx is ERROR (visible, not
//! retried) and the queue moves on; a negative MLLP ACK is ERROR when configured so.

use crate::common;

use std::time::Duration;

use common::{Ferry, adt, config_with_channels, send};
use ferry_testkit::http_peer::HttpPeer;
use ferry_testkit::mllp_peer::{AckBehavior, MllpPeer, control_id};

#[tokio::test(flavor = "multi_thread")]
async fn http_5xx_is_retried_and_4xx_is_an_error_that_does_not_block_the_queue() {
    let api = HttpPeer::start(None).await.expect("api");
    api.push_statuses(&[503, 422]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "c"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "api"
  type = "http"
  url = "http://{api}/adt"
  retry = {{ initial = "20ms", max = "100ms" }}
"#,
            api = api.addr()
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let mut conn = ferry.connect("c").await;
    assert_eq!(send(&mut conn, &adt("FIRST")).await.code.as_str(), "AA");
    assert_eq!(send(&mut conn, &adt("SECOND")).await.code.as_str(), "AA");
    let posts = api.wait_for("POST", 3, Duration::from_secs(10)).await;
    let ids: Vec<String> = posts.iter().map(|p| control_id(&p.body)).collect();
    // FIRST: 503 → retried → 422 → ERROR, not retried; SECOND is then delivered.
    assert_eq!(ids, ["FIRST", "FIRST", "SECOND"], "{}", ferry.output());
    let labels = "{channel=\"c\",destination=\"api\"}";
    let sent = format!("ferry_messages_sent_total{labels}");
    assert_eq!(
        ferry.wait_metric(&sent, 1, Duration::from_secs(5)).await,
        Some(1)
    );
    assert_eq!(
        ferry
            .metric(&format!("ferry_messages_errored_total{labels}"))
            .await,
        Some(1)
    );
    assert_eq!(
        ferry
            .metric(&format!("ferry_delivery_retries_total{labels}"))
            .await,
        Some(1)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.requests().len(), 3, "the 422 was not retried");
    assert!(
        ferry.output().contains("HTTP 422"),
        "the error is visible in the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn negative_mllp_ack_is_an_error_when_configured() {
    let his = MllpPeer::start(None).await.expect("his");
    his.push_behaviors(&[AckBehavior::Negative("AR")]);
    let dir = tempfile::tempdir().expect("tempdir");
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
  on_nak = "error"
"#,
            his = his.addr()
        ),
    );
    let ferry = Ferry::start(&config, &[]);
    let mut conn = ferry.connect("c").await;
    assert_eq!(send(&mut conn, &adt("N1")).await.code.as_str(), "AA");
    assert_eq!(send(&mut conn, &adt("N2")).await.code.as_str(), "AA");
    let received = his.wait_for(2, Duration::from_secs(10)).await;
    let ids: Vec<String> = received.iter().map(|m| control_id(m)).collect();
    assert_eq!(ids, ["N1", "N2"], "{}", ferry.output());
    let labels = "{channel=\"c\",destination=\"his\"}";
    let sent = format!("ferry_messages_sent_total{labels}");
    assert_eq!(
        ferry.wait_metric(&sent, 1, Duration::from_secs(5)).await,
        Some(1)
    );
    assert_eq!(
        ferry
            .metric(&format!("ferry_messages_errored_total{labels}"))
            .await,
        Some(1)
    );
    assert!(
        ferry.output().contains("negative ACK AR"),
        "{}",
        ferry.output()
    );
}
