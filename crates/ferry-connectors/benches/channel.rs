//! Channel processing benchmark (issue 4): the same 10-step transform of a realistic ADT^A01
//! written as declarative `[[channel.transform]]` steps and as one JavaScript transformer,
//! each deployed from TOML exactly as `ferry run` deploys it, and run through the channel's
//! whole pipeline (parse, check, filters, transformer, destination encode) per iteration, on
//! one thread, plus what ingest adds before the store: the extraction of the channel's
//! indexed metadata (the default index, the MRN at PID-3.1) from the received message.
//! `ingest_index/mrn` times that extraction alone. Criterion reports messages/s
//! (`Throughput::Elements`). Before measuring, the two channels
//! are checked to produce byte-identical output, so they are equivalent.
//!
//! Run with `cargo bench -p ferry-connectors --bench channel -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_engine::{DestinationResult, MetadataIndex, Pipeline, Processed};
use ferry_store::Metadata;

const ADT_A01: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/corpus/messages/python-hl7/samples.py__sample_msh.hl7"
);

const CONFIG: &str = r#"
[store]
path = "data/ferry.db"

[[channel]]
name = "declarative"
source = { type = "mllp", listen = "127.0.0.1:0" }

  [[channel.transform]]
  set = { field = "MSH-5", value = "SCHEDULER" }
  [[channel.transform]]
  set = { field = "MSH-6", value = "CLOUD|API" }
  [[channel.transform]]
  copy = { from = "PID-3.1", to = "PID-2" }
  [[channel.transform]]
  set = { field = "PID-8", null = true }
  [[channel.transform]]
  delete = { field = "PID-4" }
  [[channel.transform]]
  map = { field = "PV1-2", table = "class.csv", default = "U" }
  [[channel.transform]]
  add_segment = { text = "ZPI|1|ferry", after = "PID" }
  [[channel.transform]]
  rename_segment = { from = "ZPI", to = "ZP1" }
  [[channel.transform]]
  drop_segment = "IN2"
  [[channel.transform]]
  drop_segment = "IN1[3]"

  [[channel.destination]]
  name = "out"
  type = "file"
  directory = "out"

[[channel]]
name = "javascript"
source = { type = "mllp", listen = "127.0.0.1:0" }

  [[channel.transform]]
  js = "adt.js"

  [[channel.destination]]
  name = "out"
  type = "file"
  directory = "out"
"#;

const SCRIPT: &str = r#"
const CLASS = { I: "INPATIENT", O: "OUTPATIENT", E: "EMERGENCY" };
msg.set("MSH-5", "SCHEDULER");
msg.set("MSH-6", "CLOUD|API");
msg.set("PID-2", msg.get("PID-3.1"));
msg.setNull("PID-8");
msg.delete("PID-4");
msg.set("PV1-2", CLASS[msg.get("PV1-2")] || "U");
const pid = msg.segments().findIndex((s) => s.id === "PID");
msg.addSegment("ZPI|1|ferry", pid + 1);
msg.renameSegment("ZPI", "ZP1");
msg.removeSegment("IN2");
msg.removeSegment(msg.segments("IN1")[2]);
"#;

fn pipelines() -> (tempfile::TempDir, Vec<Pipeline>) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{e}"));
    };
    file("ferry.toml", CONFIG);
    file("class.csv", "I,INPATIENT\nO,OUTPATIENT\nE,EMERGENCY\n");
    file("adt.js", SCRIPT);
    let config = ferry_config::Config::load(&dir.path().join("ferry.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let pipelines = ferry_connectors::deploy::pipelines(&config).unwrap_or_else(|e| panic!("{e}"));
    (dir, pipelines)
}

/// What the channel's destination would send.
fn output(pipeline: &Pipeline, raw: &[u8]) -> Vec<u8> {
    match pipeline.process(raw, serde_json::Map::new()) {
        Processed::Accepted(a) => match &a.destinations[..] {
            [DestinationResult::Queued { encoded }] => encoded
                .clone()
                .or(a.transformed.clone())
                .unwrap_or_else(|| raw.to_vec()),
            other => panic!("{}: destination {other:?}", pipeline.channel),
        },
        other => panic!("{}: {other:?}", pipeline.channel),
    }
}

fn bench(c: &mut Criterion) {
    let raw = std::fs::read(ADT_A01).unwrap_or_else(|e| panic!("read {ADT_A01}: {e}"));
    let (_dir, pipelines) = pipelines();
    let [declarative, javascript] = &pipelines[..] else {
        panic!("two channels expected");
    };
    assert_eq!(
        String::from_utf8_lossy(&output(declarative, &raw)),
        String::from_utf8_lossy(&output(javascript, &raw)),
        "the two channels must be equivalent"
    );
    assert_ne!(
        output(declarative, &raw),
        raw,
        "the steps change the message"
    );
    let index = MetadataIndex::default();
    let indexed = |processed: &Processed| match processed {
        Processed::Accepted(a) => index.extract(&a.received.message()),
        _ => Metadata::default(),
    };
    let mrn = indexed(&declarative.process(&raw, serde_json::Map::new()));
    assert_eq!(mrn.len(), 1, "the sample has an MRN to index");
    let mut group = c.benchmark_group("channel_10_steps");
    group.throughput(Throughput::Elements(1));
    for pipeline in [declarative, javascript] {
        group.bench_function(pipeline.channel.as_str(), |b| {
            b.iter(|| {
                let processed = pipeline.process(black_box(&raw), serde_json::Map::new());
                let metadata = indexed(&processed);
                black_box((processed, metadata))
            });
        });
    }
    group.finish();
    // The extraction alone, from the parsed message: its share of the figures above.
    let parsed = ferry_hl7::MessageBuf::parse(raw.clone()).unwrap_or_else(|e| panic!("{e}"));
    let message = parsed.message();
    let mut group = c.benchmark_group("ingest_index");
    group.throughput(Throughput::Elements(1));
    group.bench_function("mrn", |b| {
        b.iter(|| black_box(index.extract(black_box(&message))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
