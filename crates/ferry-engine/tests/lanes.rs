//! Keyed destination lanes (`workers > 1`) against a real store: per-key order holds, other
//! keys keep flowing while one key retries (even when that key's lane is full), and
//! `workers = 1` keeps the strict whole-queue order.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_engine::{
    ChannelSpec, Destination, DestinationProcessing, DestinationSpec, Engine, Outbound, Pipeline,
    ResponseMode, RetryPolicy, SendFuture, SendOutcome,
};
use ferry_store::Store;

/// One attempt as the destination saw it.
#[derive(Debug, Clone)]
struct Attempt {
    key: String,
    message_id: i64,
    started: Instant,
    ended: Instant,
    sent: bool,
}

/// Records every attempt; the first `fail_first` attempts of message `slow_id` ask for a retry,
/// or fewer: it stops failing once `others_needed` other messages were delivered (so how long it
/// retries follows the progress of the others, not the speed of the machine). Every attempt
/// takes `delay`.
struct Recorder {
    attempts: Mutex<Vec<Attempt>>,
    in_flight: Mutex<(usize, usize)>,
    slow_id: i64,
    fail_first: u32,
    others_needed: usize,
    delay: Duration,
}

impl Recorder {
    fn new(slow_id: i64, fail_first: u32) -> Arc<Recorder> {
        Recorder::until_others(slow_id, fail_first, usize::MAX)
    }

    fn until_others(slow_id: i64, fail_first: u32, others_needed: usize) -> Arc<Recorder> {
        Arc::new(Recorder {
            attempts: Mutex::new(Vec::new()),
            in_flight: Mutex::new((0, 0)),
            slow_id,
            fail_first,
            others_needed,
            delay: Duration::from_millis(5),
        })
    }

    fn others_sent(&self) -> usize {
        let attempts = self.attempts.lock().expect("lock");
        attempts
            .iter()
            .filter(|a| a.sent && a.message_id != self.slow_id)
            .count()
    }

    fn sent(&self) -> Vec<Attempt> {
        let attempts = self.attempts.lock().expect("lock");
        attempts.iter().filter(|a| a.sent).cloned().collect()
    }

    fn max_in_flight(&self) -> usize {
        self.in_flight.lock().expect("lock").1
    }
}

impl Destination for Recorder {
    fn send<'a>(&'a self, message: &'a Outbound) -> SendFuture<'a> {
        Box::pin(async move {
            let started = Instant::now();
            {
                let mut f = self.in_flight.lock().expect("lock");
                f.0 += 1;
                f.1 = f.1.max(f.0);
            }
            tokio::time::sleep(self.delay).await;
            let key = ferry_hl7::Message::parse(&message.payload)
                .ok()
                .and_then(|m| m.get_str("PID-3.1").ok().flatten().map(|k| k.into_owned()))
                .unwrap_or_default();
            let sent = !(message.message_id == self.slow_id
                && message.attempt <= self.fail_first
                && self.others_sent() < self.others_needed);
            self.in_flight.lock().expect("lock").0 -= 1;
            self.attempts.lock().expect("lock").push(Attempt {
                key,
                message_id: message.message_id,
                started,
                ended: Instant::now(),
                sent,
            });
            if sent {
                SendOutcome::Sent { response: None }
            } else {
                SendOutcome::Retry {
                    reason: "slow key".into(),
                    response: None,
                }
            }
        })
    }
}

fn message(control_id: &str, key: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|HIS|GH|FERRY|CLOUD|20261125083000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r\
         PID|1||{key}^^^GH^MR||DOE^JANE\r"
    )
    .into_bytes()
}

async fn start(dir: &std::path::Path, recorder: Arc<Recorder>, workers: usize) -> Engine {
    let store = Store::open(&dir.join("s.db")).expect("open");
    let spec = ChannelSpec {
        name: "c".into(),
        destinations: vec![DestinationSpec {
            name: "d".into(),
            sender: recorder,
            retry: RetryPolicy {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(200),
                multiplier: 2.0,
                max_attempts: 0,
            },
            processing: DestinationProcessing {
                wait_for_previous: true,
                ..DestinationProcessing::default()
            },
            response_transform: Vec::new(),
            workers,
            order_by: None,
        }],
        source: Pipeline::default(),
        response: ResponseMode::OnReceive,
        dedupe_window: None,
        index: Default::default(),
    };
    Engine::start(store, vec![spec]).await.expect("start")
}

/// Send `slow` messages of key SLOW (the first of which retries), then `per_key` messages of
/// each of six other keys, interleaved; wait until all are sent.
async fn run(workers: usize, slow: usize, per_key: usize) -> (Arc<Recorder>, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    // With lanes, the slow message retries until 16 others were delivered (or 50 attempts,
    // about 10 s, when the lanes do not work); with one worker, 3 times.
    let recorder = if workers > 1 {
        Recorder::until_others(1, 50, 16)
    } else {
        Recorder::new(1, 3)
    };
    let engine = start(dir.path(), recorder.clone(), workers).await;
    let ingest = engine.ingest("c").expect("channel");
    let mut total = 0;
    for i in 0..slow {
        let reply = ingest.receive(&message(&format!("S{i}"), "SLOW")).await;
        assert!(reply.code.is_positive());
        total += 1;
    }
    for i in 0..per_key {
        for k in 0..6 {
            let reply = ingest
                .receive(&message(&format!("K{k}-{i}"), &format!("K{k}")))
                .await;
            assert!(reply.code.is_positive());
            total += 1;
        }
    }
    let stats = engine.stats();
    let sent = || {
        stats
            .channel("c")
            .and_then(|c| c.destination("d").cloned())
            .map_or(0, |d| d.sent.load(Ordering::Relaxed))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent() < total as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sent(), total as u64, "every message is delivered");
    // Completion records follow the deliveries asynchronously.
    let store = engine.store().clone();
    let mut depth = u64::MAX;
    while depth > 0 && Instant::now() < deadline {
        depth = store.queue_depth("c", "d").await.expect("depth");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(depth, 0, "every completion is recorded");
    engine.shutdown().await.expect("shutdown");
    (recorder, total)
}

/// Per key: message ids delivered in increasing order, never two at once.
fn assert_per_key_order(recorder: &Recorder) {
    let attempts = recorder.attempts.lock().expect("lock").clone();
    let mut by_key: HashMap<String, Vec<Attempt>> = HashMap::new();
    for a in attempts {
        by_key.entry(a.key.clone()).or_default().push(a);
    }
    for (key, mut list) in by_key {
        list.sort_by_key(|a| a.started);
        for pair in list.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(
                a.message_id <= b.message_id,
                "key {key}: message {} attempted after {}",
                b.message_id,
                a.message_id
            );
            assert!(b.started >= a.ended, "key {key}: two deliveries at once");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_keys_flow_while_one_key_retries_and_each_key_stays_in_order() {
    // 40 messages of the retrying key: more than its lane holds, so the reader must pass over
    // them to reach the other keys.
    let (recorder, total) = run(4, 40, 8).await;
    assert_per_key_order(&recorder);
    let sent = recorder.sent();
    assert_eq!(sent.len(), total, "each message delivered once");
    let slow_done = sent
        .iter()
        .find(|a| a.message_id == 1)
        .map(|a| a.ended)
        .expect("slow message sent");
    let others_before = sent
        .iter()
        .filter(|a| a.key != "SLOW" && a.ended < slow_done)
        .count();
    // Keys hashed to the slow key's lane wait with it; the others (most of 48) do not.
    assert!(
        others_before >= 16,
        "only {others_before} other messages were delivered while SLOW retried"
    );
    assert!(recorder.max_in_flight() > 1, "lanes deliver concurrently");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_worker_keeps_the_whole_queue_in_order() {
    let (recorder, total) = run(1, 3, 4).await;
    let sent = recorder.sent();
    assert_eq!(sent.len(), total);
    let ids: Vec<i64> = sent.iter().map(|a| a.message_id).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "delivered in message-id order");
    let slow_done = sent.first().map(|a| a.ended).expect("first");
    let attempts = recorder.attempts.lock().expect("lock").clone();
    assert!(
        attempts
            .iter()
            .filter(|a| a.message_id != 1)
            .all(|a| a.started >= slow_done),
        "nothing overtakes a retrying message"
    );
    assert_eq!(recorder.max_in_flight(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_resumes_exactly_what_the_lanes_left_queued() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Message 1 never succeeds in the first run.
    let first = Recorder::new(1, u32::MAX);
    let engine = start(dir.path(), first.clone(), 4).await;
    let ingest = engine.ingest("c").expect("channel");
    for i in 0..30 {
        let key = format!("K{}", i % 5);
        assert!(
            ingest
                .receive(&message(&format!("M{i}"), &key))
                .await
                .code
                .is_positive()
        );
    }
    // Message 1's key K0, and any key hashed to the same lane, is stuck behind it; the others
    // get through.
    let stuck_keys = |sent: &[Attempt]| -> Vec<String> {
        (0..5)
            .map(|k| format!("K{k}"))
            .filter(|k| sent.iter().all(|a| &a.key != k))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stuck = stuck_keys(&first.sent());
    // Done when every key not stuck has all six of its messages delivered.
    while !(stuck.len() < 5 && first.sent().len() == 30 - 6 * stuck.len())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        stuck = stuck_keys(&first.sent());
    }
    assert!(
        stuck.contains(&"K0".to_owned()) && stuck.len() < 5,
        "{stuck:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(first.sent().len(), 30 - 6 * stuck.len());
    engine.shutdown().await.expect("shutdown");

    // The second run delivers the stuck keys' messages, each key in order, and nothing else.
    let second = Recorder::new(0, 0);
    let engine = start(dir.path(), second.clone(), 4).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while second.sent().len() < 6 * stuck.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ids: Vec<i64> = second.sent().iter().map(|a| a.message_id).collect();
    ids.sort_unstable();
    // Message i+1 has key K(i % 5).
    let expected: Vec<i64> = (0..30)
        .filter(|i| stuck.contains(&format!("K{}", i % 5)))
        .map(|i| i + 1)
        .collect();
    assert_eq!(ids, expected);
    assert_per_key_order(&second);
    engine.shutdown().await.expect("shutdown");
}
