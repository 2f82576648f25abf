//! Script benchmarks: what a JavaScript transformer costs per message.
//!
//! Input: the corpus ADT^A01 `tests/data/adt_a01.hl7` (hapi-hl7v2's `ADT_A01.txt` from the
//! shared corpus with two NTE segments added so the NTE step has work), 0.9 KB.
//!
//! - `script/adt_10_steps`: parse the bytes, run a transform of ten steps (set MSH-5 and MSH-6,
//!   copy PID-3.1 to PID-2, delete PV1-3, upper-case PID-5.1, set PID-8 through a lookup object
//!   `{M: "male", F: "female"}`, rename PV2 to ZV2, drop the NTE segments, add `ZPI|1`, set
//!   EVN-1) and serialise: one iteration is one message end to end;
//! - `script/empty_transform`: parse, run an empty script, serialise: the fixed cost of a call;
//! - `script/native_10_steps`: the same ten edits made in Rust on `MessageBuf`, the floor.
//!
//! Run with `cargo bench -p ferry-script --bench script -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_hl7::MessageBuf;
use ferry_script::{ScriptContext, ScriptKind, ScriptLimits, Scripts, Source};

const ADT: &[u8] = include_bytes!("../tests/data/adt_a01.hl7");

const TEN_STEPS: &str = r#"
const SEX = {M: "male", F: "female"};
msg.set("MSH-5", "SCHEDULER");
msg.set("MSH-6", "NORTH");
msg.set("PID-2", msg.get("PID-3.1"));
msg.delete("PV1-3");
msg.set("PID-5.1", msg.get("PID-5.1").toUpperCase());
msg.set("PID-8", SEX[msg.get("PID-8")] || "unknown");
msg.renameSegment("PV2", "ZV2");
msg.removeSegment("NTE");
msg.addSegment("ZPI|1");
msg.set("EVN-1", "A04");
"#;

fn native(m: &mut MessageBuf) -> Option<()> {
    m.set("MSH-5", "SCHEDULER").ok()?;
    m.set("MSH-6", "NORTH").ok()?;
    let id = m
        .message()
        .get_str("PID-3.1")
        .ok()?
        .unwrap_or_default()
        .into_owned();
    m.set("PID-2", &id).ok()?;
    m.delete("PV1-3").ok()?;
    let name = m
        .message()
        .get_str("PID-5.1")
        .ok()?
        .unwrap_or_default()
        .to_uppercase();
    m.set("PID-5.1", &name).ok()?;
    let sex = m
        .message()
        .get_str("PID-8")
        .ok()?
        .unwrap_or_default()
        .into_owned();
    let sex = match sex.as_str() {
        "M" => "male",
        "F" => "female",
        _ => "unknown",
    };
    m.set("PID-8", sex).ok()?;
    m.rename_segment("PV2", 1, "ZV2").ok()?;
    while m.remove_segment("NTE", 1).ok()? {}
    m.append_segment(b"ZPI|1").ok()?;
    m.set("EVN-1", "A04").ok()?;
    Some(())
}

fn bench(c: &mut Criterion) {
    let Ok(scripts) = Scripts::new(
        Vec::new(),
        Default::default(),
        ScriptLimits::default(),
        false,
    ) else {
        panic!("scripts")
    };
    let Ok(ten) = scripts.compile(ScriptKind::Transform, Source::new("ten.js", TEN_STEPS)) else {
        panic!("compile")
    };
    let Ok(empty) = scripts.compile(ScriptKind::Transform, Source::new("empty.js", "")) else {
        panic!("compile")
    };

    // The script and the native edits agree.
    let mut check = ScriptContext::new(parse(), "bench");
    if let Err(e) = scripts.transform(&ten, &mut check) {
        panic!("{e}");
    }
    let mut floor = parse();
    if native(&mut floor).is_none() {
        panic!("native edits failed");
    }
    assert_eq!(
        check.message.as_bytes(),
        floor.as_bytes(),
        "script and native agree"
    );

    let mut group = c.benchmark_group("script");
    group.throughput(Throughput::Elements(1));
    group.bench_function("adt_10_steps", |b| {
        b.iter(|| {
            let mut ctx = ScriptContext::new(parse(), "bench");
            let r = scripts.transform(&ten, &mut ctx);
            black_box((r.is_ok(), ctx.message.into_bytes()))
        })
    });
    group.bench_function("empty_transform", |b| {
        b.iter(|| {
            let mut ctx = ScriptContext::new(parse(), "bench");
            let r = scripts.transform(&empty, &mut ctx);
            black_box((r.is_ok(), ctx.message.into_bytes()))
        })
    });
    group.bench_function("native_10_steps", |b| {
        b.iter(|| {
            let mut m = parse();
            black_box(native(&mut m));
            black_box(m.into_bytes())
        })
    });
    group.finish();
}

fn parse() -> MessageBuf {
    match MessageBuf::parse(black_box(ADT).to_vec()) {
        Ok(m) => m,
        Err(e) => panic!("corpus ADT: {e}"),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
