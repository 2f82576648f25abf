//! Declarative transform benchmark (issue 4): one realistic ADT^A01 (the 1.4 KB corpus
//! message the HL7 parse benchmark uses) parsed, run through 10 declarative steps of every
//! kind, and serialised, per iteration. Criterion reports messages/s (`Throughput::Elements`).
//!
//! Run with `cargo bench -p ferry-engine --bench transform -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_engine::transform::{
    CodeTable, FieldPath, Placement, SegmentRef, SetValue, Step, apply_all,
};
use ferry_hl7::MessageBuf;

const ADT_A01: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/corpus/messages/python-hl7/samples.py__sample_msh.hl7"
);

fn path(p: &str) -> FieldPath {
    FieldPath::parse(p).unwrap_or_else(|e| panic!("{e}"))
}

fn steps() -> Vec<Step> {
    let table = Arc::new(CodeTable::from_pairs(
        "patient-class.csv",
        [("I", "INPATIENT"), ("O", "OUTPATIENT"), ("E", "EMERGENCY")],
    ));
    vec![
        Step::Set {
            path: path("MSH-5"),
            value: SetValue::Text("SCHEDULER".into()),
        },
        Step::Set {
            path: path("MSH-6"),
            value: SetValue::Text("CLOUD|API".into()),
        },
        Step::Copy {
            from: path("PID-3.1"),
            to: path("PID-2"),
        },
        Step::Set {
            path: path("PID-8"),
            value: SetValue::Null,
        },
        Step::Delete {
            path: path("PID-4"),
        },
        Step::Map {
            path: path("PV1-2"),
            table,
            default: Some("U".into()),
        },
        Step::AddSegment {
            text: "ZPI|1|ferry".into(),
            placement: Placement::After("PID".into()),
        },
        Step::RenameSegment {
            from: SegmentRef::parse("ZPI").unwrap_or_else(|e| panic!("{e}")),
            to: "ZP1".into(),
        },
        Step::DropSegment {
            segment: SegmentRef::parse("IN2").unwrap_or_else(|e| panic!("{e}")),
        },
        Step::DropSegment {
            segment: SegmentRef::parse("IN1[3]").unwrap_or_else(|e| panic!("{e}")),
        },
    ]
}

fn bench(c: &mut Criterion) {
    let bytes = std::fs::read(ADT_A01).unwrap_or_else(|e| panic!("read {ADT_A01}: {e}"));
    let steps = steps();
    // The steps must all succeed on this message, or the figure measures an error path.
    let mut check = MessageBuf::parse(bytes.as_slice()).unwrap_or_else(|e| panic!("{e}"));
    apply_all(&steps, &mut check).unwrap_or_else(|(n, e)| panic!("step {n}: {e}"));
    let mut group = c.benchmark_group("transform");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_10_steps_serialise/adt_a01", |b| {
        b.iter(|| {
            let mut msg =
                MessageBuf::parse(black_box(bytes.as_slice())).unwrap_or_else(|e| panic!("{e}"));
            apply_all(&steps, &mut msg).unwrap_or_else(|(n, e)| panic!("step {n}: {e}"));
            black_box(msg.into_bytes())
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
