//! Two `ferry run` nodes on one PostgreSQL store: both take messages, one delivers the
//! destination queue (it holds the lease); when it is SIGKILLed, the other takes the queue
//! over within 10 s (default `lease_ttl` of 5 s), every acknowledged message is delivered and
//! each sender's messages arrive in order.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Ferry, adt, free_port, plain, write_config};
use ferry_connectors::mllp::MllpConnection;
use ferry_store::cluster::{Cluster, ClusterStatus};
use ferry_store::postgres::PgOptions;
use ferry_testkit::http_peer::HttpPeer;
use ferry_testkit::mllp_peer::control_id;
use ferry_testkit::postgres::TestDb;

fn node_config(dir: &std::path::Path, url: &str, node: &str, port: u16) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("dir");
    write_config(
        dir,
        &format!(
            r#"[store]
url = {url:?}

[cluster]
enabled = true
node_id = "{node}"

[admin]
listen = "127.0.0.1:0"

[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "api"
  type = "http"
  url = "http://127.0.0.1:{port}/adt"
  retry = {{ initial = "20ms", max = "200ms" }}
"#
        ),
    )
}

async fn status(url: &str) -> ClusterStatus {
    let options = PgOptions {
        url: url.to_owned(),
        tls: None,
    };
    tokio::task::spawn_blocking(move || Cluster::status_of(&options))
        .await
        .expect("blocking")
        .expect("cluster status")
}

/// Send `n` messages `{prefix}-{i}` one after the other; the acknowledged ids, in order.
async fn send(addr: std::net::SocketAddr, prefix: &str, from: usize, n: usize) -> Vec<String> {
    let mut conn = MllpConnection::connect(&plain(addr))
        .await
        .expect("connect");
    let mut acked = Vec::new();
    for i in from..from + n {
        let id = format!("{prefix}-{i:04}");
        let ack = conn
            .exchange(&adt(&id), Duration::from_secs(5))
            .await
            .expect("ack");
        let ack = ferry_hl7::ack::parse_ack(&ack).expect("parse ack");
        assert!(ack.code.is_positive() && ack.control_id == id);
        acked.push(id);
    }
    acked
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_nodes_queue_is_taken_over_with_nothing_lost() {
    let db = std::thread::spawn(TestDb::new).join().expect("test db");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let api = HttpPeer::start_on(format!("127.0.0.1:{port}").parse().expect("addr"), None)
        .await
        .expect("api");
    let a = Ferry::start(
        &node_config(&dir.path().join("a"), db.url(), "a", port),
        &[],
    );
    let b = Ferry::start(
        &node_config(&dir.path().join("b"), db.url(), "b", port),
        &[],
    );
    let mut nodes = BTreeMap::from([("a", a), ("b", b)]);

    // Both nodes take messages; one delivers them all.
    let (sa, sb) = tokio::join!(
        send(nodes["a"].listener("adt"), "A", 0, 30),
        send(nodes["b"].listener("adt"), "B", 0, 30)
    );
    let mut acked: Vec<String> = sa.into_iter().chain(sb).collect();
    api.wait_for("POST", 60, Duration::from_secs(20)).await;
    let lease = status(db.url())
        .await
        .leases
        .into_iter()
        .find(|l| l.resource == "dest:adt/api")
        .expect("the destination's lease");
    assert!(lease.held());
    let (holder, survivor) = if lease.owner == "a" {
        ("a", "b")
    } else {
        ("b", "a")
    };

    // Kill the holder; the survivor keeps taking messages and must take the queue over.
    nodes.get_mut(holder).expect("holder").kill9();
    let killed = Instant::now();
    let more = send(nodes[survivor].listener("adt"), "C", 0, 30).await;
    acked.extend(more);
    let takeover = loop {
        let s = status(db.url()).await;
        if s.leases
            .iter()
            .any(|l| l.resource == "dest:adt/api" && l.held() && l.owner == survivor)
        {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no takeover within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("takeover {} ms after SIGKILL", takeover.as_millis());

    // Every acknowledged message is delivered, each sender's in order.
    let deadline = Instant::now() + Duration::from_secs(20);
    let delivered = loop {
        let delivered: Vec<String> = api.requests().iter().map(|r| control_id(&r.body)).collect();
        let distinct: BTreeSet<&String> = delivered.iter().collect();
        if acked.iter().all(|id| distinct.contains(id)) || Instant::now() > deadline {
            break delivered;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let distinct: BTreeSet<&String> = delivered.iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !distinct.contains(id)).collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    let mut seen = BTreeSet::new();
    let firsts: Vec<&String> = delivered.iter().filter(|id| seen.insert(*id)).collect();
    for prefix in ["A-", "B-", "C-"] {
        let order: Vec<&&String> = firsts.iter().filter(|id| id.starts_with(prefix)).collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{prefix} out of order: {order:?}"
        );
    }

    // `ferry cluster status` names the survivor as the owner and the killed node as dead.
    let out = std::process::Command::new(common::ferry_bin())
        .args(["cluster", "status", "--url", db.url()])
        .output()
        .expect("ferry cluster status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(survivor) && l.contains("alive")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(holder) && l.contains("dead")),
        "{text}"
    );
    assert!(text.contains(&format!("owner {survivor}")), "{text}");
    drop(nodes);
}
