//! The channel state machine against a real store: stop keeps queued messages queued and
//! refuses new ones, start resumes delivery with nothing lost, pause refuses new messages
//! while the queues drain, a stop waits for the message being received (or gives up after the
//! drain time without losing it), undeploy removes the channel but keeps its messages, and a
//! redeploy picks up its queues.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_engine::{
    ChannelSpec, ChannelState, Context, Destination, DestinationSpec, Engine, EngineError,
    Outbound, RetryPolicy, RouteError, SendFuture, SendOutcome, TransformStep,
};
use ferry_hl7::ack::AckCode;
use ferry_store::Store;

const DRAIN: Duration = Duration::from_secs(30);

/// A destination that delivers while `up` (recording the message ids in order) and asks for a
/// retry while down.
#[derive(Default)]
struct Switch {
    up: AtomicBool,
    delivered: Mutex<Vec<i64>>,
}

impl Switch {
    fn up() -> Arc<Switch> {
        let s = Arc::new(Switch::default());
        s.up.store(true, Ordering::SeqCst);
        s
    }

    fn down() -> Arc<Switch> {
        Arc::new(Switch::default())
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    fn delivered(&self) -> Vec<i64> {
        self.delivered.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Wait (generously) until at least `n` messages were delivered.
    async fn wait_for(&self, n: usize) -> Vec<i64> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.delivered();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Destination for Switch {
    fn send<'a>(&'a self, message: &'a Outbound) -> SendFuture<'a> {
        Box::pin(async move {
            if !self.up.load(Ordering::SeqCst) {
                return SendOutcome::Retry {
                    reason: "down".into(),
                    response: None,
                };
            }
            if let Ok(mut d) = self.delivered.lock() {
                d.push(message.message_id);
            }
            SendOutcome::Sent { response: None }
        })
    }
}

fn fast_retry(mut spec: DestinationSpec) -> DestinationSpec {
    spec.retry = RetryPolicy {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(20),
        multiplier: 2.0,
        max_attempts: 0,
    };
    spec
}

fn adt(control_id: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|HIS|GH|FERRY|CLOUD|20261125083000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r\
         PID|1||{control_id}^^^GH^MR||DOE^JANE\r"
    )
    .into_bytes()
}

fn channel(name: &str, destinations: &[(&str, Arc<Switch>)]) -> ChannelSpec {
    ChannelSpec::new(
        name,
        destinations
            .iter()
            .map(|(n, d)| fast_retry(DestinationSpec::new(n, d.clone())))
            .collect(),
    )
}

async fn depth(store: &Store, channel: &str, destination: &str) -> u64 {
    store
        .queue_depth(channel, destination)
        .await
        .expect("queue depth")
}

/// Wait until the store's queue of `destination` holds `n` messages.
async fn wait_depth(store: &Store, channel: &str, destination: &str, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = depth(store, channel, destination).await;
        if d == n || Instant::now() >= deadline {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn accepted(engine: &Engine, channel: &str, control_id: &str) -> i64 {
    let reply = engine
        .ingest(channel)
        .expect("deployed")
        .receive(&adt(control_id))
        .await;
    assert_eq!(reply.code, AckCode::AA, "{control_id}");
    reply.message_id.expect("stored")
}

#[tokio::test]
async fn stop_refuses_and_holds_the_queue_and_start_delivers_everything_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s.db")).expect("store");
    let api = Switch::up();
    let engine = Engine::start(store.clone(), vec![channel("c", &[("api", api.clone())])])
        .await
        .expect("engine");
    assert_eq!(engine.channel_state("c"), Some(ChannelState::Started));
    for i in 1..=2 {
        accepted(&engine, "c", &format!("M{i}")).await;
    }
    assert_eq!(api.wait_for(2).await, [1, 2]);

    // The destination goes down; three messages queue.
    api.set_up(false);
    for i in 3..=5 {
        accepted(&engine, "c", &format!("M{i}")).await;
    }
    assert_eq!(wait_depth(&store, "c", "api", 3).await, 3);
    let t = engine.stop_channel("c", DRAIN).await.expect("stop");
    assert_eq!(
        (t.from, t.to, t.drained),
        (
            Some(ChannelState::Started),
            Some(ChannelState::Stopped),
            true
        )
    );
    assert_eq!(engine.channel_state("c"), Some(ChannelState::Stopped));
    let stats = engine.stats().channel("c").expect("stats");
    assert_eq!(stats.state(), ChannelState::Stopped);
    assert!(!stats.deployed.load(Ordering::Relaxed));

    // A stopped channel refuses: AE, nothing stored, not counted as received.
    let ingest = engine.ingest("c").expect("still deployed");
    let received = stats.received.load(Ordering::Relaxed);
    let refused = ingest.receive(&adt("REFUSED")).await;
    assert_eq!(refused.code, AckCode::AE);
    assert_eq!(refused.message_id, None);
    let summary = ferry_hl7::ack::parse_ack(&refused.ack).expect("an ACK");
    assert_eq!(summary.control_id, "REFUSED", "addressed to the sender");
    assert_eq!(stats.received.load(Ordering::Relaxed), received);
    assert!(!ingest.accepting());

    // The destination is back, but a stopped channel delivers nothing: the queue stays.
    api.set_up(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.delivered(), [1, 2], "nothing delivered while stopped");
    assert_eq!(depth(&store, "c", "api").await, 3);
    // Stopping again changes nothing.
    let again = engine.stop_channel("c", DRAIN).await.expect("stop again");
    assert!(!again.changed());

    let t = engine.start_channel("c").await.expect("start");
    assert_eq!(t.from, Some(ChannelState::Stopped));
    assert_eq!(
        api.wait_for(5).await,
        [1, 2, 3, 4, 5],
        "in order, nothing lost"
    );
    assert_eq!(
        accepted(&engine, "c", "M6").await,
        6,
        "the refused message was never stored"
    );
    assert_eq!(api.wait_for(6).await, [1, 2, 3, 4, 5, 6]);
    assert_eq!(wait_depth(&store, "c", "api", 0).await, 0);
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn pause_refuses_new_messages_while_the_backlog_drains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s.db")).expect("store");
    let api = Switch::down();
    let engine = Engine::start(store.clone(), vec![channel("c", &[("api", api.clone())])])
        .await
        .expect("engine");
    for i in 1..=3 {
        accepted(&engine, "c", &format!("M{i}")).await;
    }
    let t = engine.pause_channel("c", DRAIN).await.expect("pause");
    assert_eq!(t.to, Some(ChannelState::Paused));
    let refused = engine
        .ingest("c")
        .expect("deployed")
        .receive(&adt("LATE"))
        .await;
    assert_eq!((refused.code, refused.message_id), (AckCode::AE, None));
    // The destination comes back: the backlog drains although the channel is paused.
    api.set_up(true);
    assert_eq!(api.wait_for(3).await, [1, 2, 3]);
    assert_eq!(wait_depth(&store, "c", "api", 0).await, 0);
    assert_eq!(engine.channel_state("c"), Some(ChannelState::Paused));

    // Stopped, then paused: the workers run again without the source accepting.
    api.set_up(false);
    engine.start_channel("c").await.expect("start");
    accepted(&engine, "c", "M4").await;
    engine.stop_channel("c", DRAIN).await.expect("stop");
    api.set_up(true);
    let t = engine.pause_channel("c", DRAIN).await.expect("pause");
    assert_eq!(t.from, Some(ChannelState::Stopped));
    assert_eq!(api.wait_for(4).await, [1, 2, 3, 4]);
    let refused = engine
        .ingest("c")
        .expect("deployed")
        .receive(&adt("LATE"))
        .await;
    assert_eq!(refused.code, AckCode::AE);
    engine.start_channel("c").await.expect("start");
    assert_eq!(accepted(&engine, "c", "M5").await, 5);
    assert_eq!(api.wait_for(5).await, [1, 2, 3, 4, 5]);
    engine.shutdown().await.expect("shutdown");
}

/// A source step that blocks until released: a message "being received" for as long as the
/// test wants.
struct Hold {
    entered: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl TransformStep for Hold {
    fn apply(&self, _: &mut Context) -> Result<(), String> {
        if let Ok(mut e) = self.entered.lock()
            && let Some(tx) = e.take()
        {
            let _ = tx.send(());
        }
        let release = self.release.lock().map_err(|e| e.to_string())?;
        release
            .recv_timeout(Duration::from_secs(30))
            .map_err(|e| e.to_string())
    }

    fn blocks(&self) -> bool {
        true
    }
}

/// An engine whose channel `c` holds every message in its source transformer until released.
async fn held_engine(
    store: Store,
    api: Arc<Switch>,
) -> (
    Engine,
    std::sync::mpsc::Receiver<()>,
    std::sync::mpsc::Sender<()>,
) {
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let mut spec = channel("c", &[("api", api)]);
    spec.source.transform.push(Arc::new(Hold {
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(release_rx),
    }));
    let engine = Engine::start(store, vec![spec]).await.expect("engine");
    (engine, entered_rx, release_tx)
}

async fn wait_entered(entered: &std::sync::mpsc::Receiver<()>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while entered.try_recv().is_err() {
        assert!(
            Instant::now() < deadline,
            "the message never reached the step"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_stop_waits_for_the_message_being_received_to_be_stored_and_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s.db")).expect("store");
    let api = Switch::up();
    let (engine, entered, release) = held_engine(store.clone(), api.clone()).await;
    let ingest = engine.ingest("c").expect("deployed");
    let receiving = tokio::spawn(async move { ingest.receive(&adt("INFLIGHT")).await });
    wait_entered(&entered).await;
    let stopping = tokio::spawn({
        let engine = engine.clone();
        async move { engine.stop_channel("c", DRAIN).await }
    });
    // While the message is in the transformer the stop waits (and already refuses others).
    let ingest = engine.ingest("c").expect("deployed");
    let deadline = Instant::now() + Duration::from_secs(20);
    while ingest.accepting() {
        assert!(
            Instant::now() < deadline,
            "the stop never closed the channel"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = ingest.receive(&adt("LATE")).await;
    assert_eq!(refused.code, AckCode::AE);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !stopping.is_finished(),
        "the stop waits for the message in flight"
    );
    release.send(()).expect("release");
    let reply = receiving.await.expect("receive");
    assert_eq!(
        reply.code,
        AckCode::AA,
        "the message in flight is acknowledged"
    );
    let t = stopping.await.expect("join").expect("stop");
    assert!(t.drained);
    // Acknowledged, so stored: the workers, stopped only after it committed, either
    // delivered it or left it queued.
    assert_eq!(reply.message_id, Some(1));
    let queued = depth(&store, "c", "api").await;
    assert_eq!(queued + api.delivered().len() as u64, 1);
    engine.start_channel("c").await.expect("start");
    assert_eq!(api.wait_for(1).await, [1]);
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_stop_that_runs_out_of_drain_time_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s.db")).expect("store");
    let api = Switch::up();
    let (engine, entered, release) = held_engine(store.clone(), api.clone()).await;
    let ingest = engine.ingest("c").expect("deployed");
    let receiving = tokio::spawn(async move { ingest.receive(&adt("SLOW")).await });
    wait_entered(&entered).await;
    let t = engine
        .stop_channel("c", Duration::from_millis(50))
        .await
        .expect("stop");
    assert!(!t.drained, "gave up waiting");
    assert_eq!(t.to, Some(ChannelState::Stopped));
    release.send(()).expect("release");
    let reply = receiving.await.expect("receive");
    assert_eq!(reply.code, AckCode::AA, "still stored and acknowledged");
    assert_eq!(wait_depth(&store, "c", "api", 1).await, 1);
    engine.start_channel("c").await.expect("start");
    assert_eq!(api.wait_for(1).await, [1]);
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn undeploy_keeps_the_messages_and_a_redeploy_picks_up_the_queues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s.db")).expect("store");
    let (api, audit) = (Switch::down(), Switch::up());
    let engine = Engine::start(
        store.clone(),
        vec![
            channel("c", &[("api", api.clone())]),
            channel("other", &[("out", Switch::up())]),
        ],
    )
    .await
    .expect("engine");
    for i in 1..=2 {
        accepted(&engine, "c", &format!("M{i}")).await;
    }
    let t = engine.undeploy_channel("c", DRAIN).await.expect("undeploy");
    assert_eq!((t.from, t.to), (Some(ChannelState::Started), None));
    assert!(engine.ingest("c").is_none());
    assert!(engine.stats().channel("c").is_none());
    assert!(!engine.stats().render_prometheus().contains("channel=\"c\""));
    assert_eq!(engine.channel_names(), ["other"]);
    assert_eq!(
        engine.router().route("c", &adt("X")).await.err(),
        Some(RouteError::UnknownChannel("c".into()))
    );
    assert!(matches!(
        engine.stop_channel("c", DRAIN).await,
        Err(EngineError::UnknownChannel(_))
    ));
    assert_eq!(depth(&store, "c", "api").await, 2, "queued messages stay");
    accepted(&engine, "other", "O1").await;

    // Deployed again with one more destination: the old queue resumes, the new destination
    // gets only new messages, and the ids carry on.
    api.set_up(true);
    let t = engine
        .deploy_channel(
            channel("c", &[("api", api.clone()), ("audit", audit.clone())]),
            DRAIN,
        )
        .await
        .expect("deploy");
    assert_eq!((t.from, t.to), (None, Some(ChannelState::Started)));
    assert_eq!(api.wait_for(2).await, [1, 2]);
    assert_eq!(accepted(&engine, "c", "M3").await, 3);
    assert_eq!(api.wait_for(3).await, [1, 2, 3]);
    assert_eq!(audit.wait_for(1).await, [3]);

    // Replacing a running channel: its counters carry on, same-named queues continue.
    api.set_up(false);
    accepted(&engine, "c", "M4").await;
    let before = engine.stats().channel("c").expect("stats");
    let received = before.received.load(Ordering::Relaxed);
    let t = engine
        .deploy_channel(channel("c", &[("api", api.clone())]), DRAIN)
        .await
        .expect("redeploy");
    assert_eq!(t.from, Some(ChannelState::Started));
    let after = engine.stats().channel("c").expect("stats");
    assert!(!Arc::ptr_eq(&before, &after));
    assert_eq!(after.received.load(Ordering::Relaxed), received);
    assert_eq!(after.destinations.len(), 1);
    api.set_up(true);
    assert_eq!(api.wait_for(4).await, [1, 2, 3, 4]);
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_paused_channel_refuses_routed_messages_and_shutdown_ends_all_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s.db")).expect("store");
    let engine = Engine::start(store, vec![channel("b", &[("out", Switch::up())])])
        .await
        .expect("engine");
    let router = engine.router();
    assert!(router.route("b", &adt("R1")).await.is_ok());
    engine.pause_channel("b", DRAIN).await.expect("pause");
    assert_eq!(
        router.route("b", &adt("R2")).await.err(),
        Some(RouteError::NotAccepting("b".into()))
    );
    engine.start_channel("b").await.expect("start");
    let reply = router.route("b", &adt("R3")).await.expect("routed");
    assert_eq!(reply.message_id, Some(2));

    // A channel new to the engine joins the router.
    engine
        .deploy_channel(channel("late", &[("out", Switch::up())]), DRAIN)
        .await
        .expect("deploy");
    assert!(router.route("late", &adt("L1")).await.is_ok());

    let handle = engine.clone();
    engine.shutdown().await.expect("shutdown");
    assert!(matches!(
        handle.start_channel("b").await,
        Err(EngineError::ShuttingDown)
    ));
    assert!(matches!(
        handle.deploy_channel(channel("x", &[]), DRAIN).await,
        Err(EngineError::ShuttingDown)
    ));
}
