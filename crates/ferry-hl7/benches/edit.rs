//! `MessageBuf` edit benchmarks: what a transform's edits cost once the message is parsed.
//!
//! The input is a realistic ADT^A01 (v2.5.1, CR-separated, 10 segments, 0.9 KB: MSH EVN PID
//! NK1 PV1 two NTE AL1 DG1 ZPV). Groups (ids read `GROUP/FUNCTION/INPUT`):
//! - `edit/ten_edits/adt_a01`: the ten edits of [`ten_edits`] on a copy of the parsed message
//!   (the copy is made outside the measurement, 64 copies at a time: criterion's
//!   `SmallInput` makes tens of thousands, and the cache misses on them cost more than an
//!   edit);
//! - `edit/set_pid5_1/adt_a01`: one `set("PID-5.1")`, the single-edit figure;
//! - `edit/parse_ten_edits_serialise/adt_a01`: bytes in, the ten edits, bytes out.
//!
//! Run with `cargo bench -p ferry-hl7 --bench edit`.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferry_hl7::MessageBuf;

/// A typical admission: routing header, event, patient with two identifiers, next of kin,
/// visit, two notes, an allergy, a diagnosis and a site-specific Z segment.
const ADT_A01: &str = concat!(
    "MSH|^~\\&|EPIC|NORTHGEN|FERRY|CLOUD|20261125083000||ADT^A01^ADT_A01|MSG00001|P|2.5.1|||AL|NE\r",
    "EVN|A01|20261125082955|||JSMITH^SMITH^JOHN^^^^^^NORTHGEN\r",
    "PID|1||4521789^^^NORTHGEN^MR~987-65-4320^^^SSA^SS||DOE^JANE^MARIE^^MS||19800214|F||2106-3^White^HL70005|",
    "1428 ELM STREET^APT 4B^SPRINGFIELD^IL^62704^USA^H||(217)555-0142^PRN^PH~^NET^Internet^jane.doe@example.org|",
    "(217)555-0199^WPN^PH|EN^English^ISO639|M^Married^HL70002|CHR^Christian^HL70006|900045671^^^NORTHGEN^AN|",
    "987-65-4320\r",
    "NK1|1|DOE^JOHN^A|SPO^Spouse^HL70063|1428 ELM STREET^APT 4B^SPRINGFIELD^IL^62704^USA|(217)555-0143^PRN^PH\r",
    "PV1|1|I|4WEST^412^B^NORTHGEN^^^^^4 WEST MED SURG|E|||1234567^HOUSE^GREGORY^^^DR^MD|7654321^WILSON^JAMES^^^DR^MD|",
    "|MED||||7|A0||1234567^HOUSE^GREGORY^^^DR^MD|IN|900045671^^^NORTHGEN^VN|||||||||||||||||||||NORTHGEN|||",
    "|20261125080000\r",
    "NTE|1|L|Patient arrived by ambulance, alert and oriented.\r",
    "NTE|2|L|Family at bedside; interpreter not required.\r",
    "AL1|1|DA|70618^Penicillin^RXNORM|SV|Hives~Anaphylaxis|20150601\r",
    "DG1|1||R07.9^Chest pain, unspecified^I10||20261125080500|A\r",
    "ZPV|1|VIP^N|FALLRISK^Y\r",
);

/// The transform: route the message, copy the MRN into PID-2, clear the room, correct the
/// name and sex, rename the site segment, drop the notes, add a Z segment, set the event.
fn ten_edits(m: &mut MessageBuf) {
    m.set("MSH-5", "LABSYS").expect("MSH-5");
    m.set("MSH-6", "SOUTHLAB").expect("MSH-6");
    let mrn = m.get("PID-3.1").expect("path").expect("PID-3.1").to_vec();
    m.set_raw("PID-2", &mrn).expect("PID-2");
    m.delete("PV1-3").expect("PV1-3");
    m.set("PID-5.1", "DOE-SMITH").expect("PID-5.1");
    m.set("PID-8", "U").expect("PID-8");
    m.rename_segment("ZPV", 1, "ZPX").expect("rename");
    while m.remove_segment("NTE", 1).expect("remove NTE") {}
    m.append_segment(b"ZPI|1").expect("append");
    m.set("EVN-1", "A08").expect("EVN-1");
}

/// The ten edits must do what they say, or the figure measures something else.
fn check_ten_edits(input: &MessageBuf) {
    let mut m = input.clone();
    ten_edits(&mut m);
    let get = |p: &str| m.get(p).expect("path").map(<[u8]>::to_vec);
    assert_eq!(get("MSH-5").as_deref(), Some(&b"LABSYS"[..]));
    assert_eq!(get("MSH-6").as_deref(), Some(&b"SOUTHLAB"[..]));
    assert_eq!(get("PID-2").as_deref(), Some(&b"4521789"[..]));
    assert_eq!(get("PV1-3").as_deref(), Some(&b""[..]));
    assert_eq!(
        get("PID-5").as_deref(),
        Some(&b"DOE-SMITH^JANE^MARIE^^MS"[..])
    );
    assert_eq!(get("PID-8").as_deref(), Some(&b"U"[..]));
    assert_eq!(get("ZPX-2").as_deref(), Some(&b"VIP^N"[..]));
    assert_eq!(get("NTE-1"), None);
    assert_eq!(get("ZPI-1").as_deref(), Some(&b"1"[..]));
    assert_eq!(get("EVN-1").as_deref(), Some(&b"A08"[..]));
    assert_eq!(m.message().segment_count(), 9);
    let reparsed = MessageBuf::parse(m.as_bytes().to_vec()).expect("edited message parses");
    assert_eq!(reparsed.as_bytes(), m.as_bytes());
}

fn benches(c: &mut Criterion) {
    let input = MessageBuf::parse(ADT_A01.as_bytes()).expect("ADT parses");
    assert_eq!(input.message().segment_count(), 10);
    check_ten_edits(&input);
    eprintln!("adt_a01: {} bytes, 10 segments", ADT_A01.len());
    let mut g = c.benchmark_group("edit");
    g.throughput(Throughput::ElementsAndBytes {
        elements: 1,
        bytes: ADT_A01.len() as u64,
    });
    g.bench_function(BenchmarkId::new("ten_edits", "adt_a01"), |b| {
        b.iter_batched(
            || input.clone(),
            |mut m| {
                ten_edits(black_box(&mut m));
                m
            },
            BatchSize::NumIterations(64),
        )
    });
    g.bench_function(BenchmarkId::new("set_pid5_1", "adt_a01"), |b| {
        b.iter_batched(
            || input.clone(),
            |mut m| {
                m.set(black_box("PID-5.1"), black_box("DOE-SMITH"))
                    .expect("PID-5.1");
                m
            },
            BatchSize::NumIterations(64),
        )
    });
    g.bench_function(
        BenchmarkId::new("parse_ten_edits_serialise", "adt_a01"),
        |b| {
            b.iter(|| {
                let mut m = MessageBuf::parse(black_box(ADT_A01.as_bytes())).expect("parses");
                ten_edits(&mut m);
                black_box(m.into_bytes())
            })
        },
    );
    g.finish();
}

criterion_group!(edit, benches);
criterion_main!(edit);
