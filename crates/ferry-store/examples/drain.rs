//! Queue drain rate under write load, on either backend:
//!
//! ```text
//! cargo run --release -p ferry-store --example drain -- postgres://postgres@127.0.0.1:5432/test 20000 16
//! cargo run --release -p ferry-store --example drain -- /tmp/drain.db 20000 16
//! ```
//!
//! Queues `N` messages for destination `d` of channel `c`, then drains them as a dispatcher
//! does (keyset `queue_batch` of 100, each message's `SENT` update in flight concurrently,
//! 64 at most) while `LOADERS` (default 16) other tasks keep ingesting into channel `w` as fast as they can.
//! Prints the drain rate and the ingest rate beside it. With a PostgreSQL URL, the run uses a
//! fresh schema it drops afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use ferry_store::postgres::PgOptions;
use ferry_store::{DeliveryUpdate, NewMessage, Status, Store, StoreOptions};

fn message(channel: &str, n: u64) -> NewMessage {
    NewMessage {
        channel: channel.to_owned(),
        received_at_ms: 1,
        control_id: Some(format!("M{n}")),
        message_type: Some("ADT^A01".to_owned()),
        raw: format!(
            "MSH|^~\\&|HIS|GH|FERRY|CLOUD|20261125083000||ADT^A01^ADT_A01|M{n}|P|2.5.1\r\
             PID|1||{n}^^^GH^MR||DOE^JANE||19800101|F\r{}",
            "NTE|1||".to_owned() + &"x".repeat(400) + "\r"
        )
        .into_bytes(),
        source_status: Status::Transformed,
        source_error: None,
        source_response: Some(
            b"MSH|^~\\&|FERRY|CLOUD|HIS|GH|1||ACK|1|P|2.5.1\rMSA|AA|1\r".to_vec(),
        ),
        destinations: vec!["d".to_owned()],
        filtered_destinations: Vec::new(),
        errored_destinations: Vec::new(),
        transformed: None,
        encoded: Vec::new(),
        maps: None,
        dedupe: None,
        metadata: Default::default(),
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let target = args
        .next()
        .unwrap_or_else(|| "/tmp/ferry-drain.db".to_owned());
    let n: u64 = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let loaders: u64 = args.next().map_or(Ok(16), |a| a.parse())?;
    let mut schema = None;
    let store = if target.starts_with("postgres") {
        let name = format!("ferry_drain_{}", std::process::id());
        let base = target.clone();
        let create = name.clone();
        std::thread::spawn(move || {
            postgres::Client::connect(&base, postgres::NoTls)
                .and_then(|mut c| c.batch_execute(&format!("CREATE SCHEMA {create}")))
        })
        .join()
        .map_err(|_| "creating the schema panicked")??;
        let sep = if target.contains('?') { '&' } else { '?' };
        let url = format!("{target}{sep}options=-csearch_path%3D{name}");
        schema = Some(name);
        Store::open_postgres(PgOptions { url, tls: None }, StoreOptions::default())?
    } else {
        let _ = std::fs::remove_file(&target);
        Store::open(std::path::Path::new(&target))?
    };

    // Fill the queue.
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64u64 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut i = t;
            while i < n {
                store.ingest(message("c", i)).await.expect("ingest");
                i += 64;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let fill = started.elapsed();
    println!(
        "queued {n} messages in {:.2} s ({:.0} msg/s, 64 concurrent ingests)",
        fill.as_secs_f64(),
        n as f64 / fill.as_secs_f64()
    );

    // Background write load on another channel.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut load = tokio::task::JoinSet::new();
    for t in 0..loaders {
        let (store, stop, written) = (store.clone(), stop.clone(), written.clone());
        load.spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                store.ingest(message("w", i)).await.expect("ingest");
                written.fetch_add(1, Ordering::Relaxed);
                i += loaders;
            }
        });
    }

    // Drain.
    let started = Instant::now();
    let mut after = 0;
    let mut drained = 0u64;
    let mut scanning = std::time::Duration::ZERO;
    loop {
        let scan = Instant::now();
        let batch = store.queue_batch("c", "d", after, 100).await?;
        scanning += scan.elapsed();
        let Some(last) = batch.last() else { break };
        after = last.message_id;
        let mut sends = tokio::task::JoinSet::new();
        for queued in batch {
            let store = store.clone();
            sends.spawn(async move {
                store
                    .update_delivery(DeliveryUpdate {
                        channel: "c".into(),
                        message_id: queued.message_id,
                        destination: "d".into(),
                        status: Status::Sent,
                        attempts: 1,
                        error: None,
                        response: Some(b"MSA|AA".to_vec()),
                        encoded: None,
                    })
                    .await
            });
            if sends.len() >= 64 {
                sends.join_next().await.ok_or("no task")???;
            }
            drained += 1;
        }
        while let Some(r) = sends.join_next().await {
            r??;
        }
    }
    let drain = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    let depth = store.queue_depth("c", "d").await?;
    let stats = store.stats();
    println!(
        "drained {drained} messages in {:.2} s ({:.2} s of it in queue scans): {:.0} msg/s, \
         while {} other ingests ran ({:.0} msg/s); queue left {depth}; writer: {} ops in {} \
         commits",
        drain.as_secs_f64(),
        scanning.as_secs_f64(),
        drained as f64 / drain.as_secs_f64(),
        written.load(Ordering::Relaxed),
        written.load(Ordering::Relaxed) as f64 / drain.as_secs_f64(),
        stats.ops,
        stats.commits,
    );
    store.close().await?;
    drop(store);
    if let Some(name) = schema {
        std::thread::spawn(move || {
            postgres::Client::connect(&target, postgres::NoTls)
                .and_then(|mut c| c.batch_execute(&format!("DROP SCHEMA {name} CASCADE")))
        })
        .join()
        .map_err(|_| "dropping the schema panicked")??;
    }
    Ok(())
}
