//! "No allocation per field access" (PRODUCT.md §10), measured: this test binary counts every
//! heap allocation through `dhat`'s global allocator, parses a corpus ADT message once, and
//! then reads fields, repetitions, components and subcomponents 10,000 times. The allocation
//! count must not move during those reads.
//!
//! The global allocator belongs to the whole test binary, so this file holds a single test and
//! nothing else (a second test running on another thread would count into the same figures).

use std::borrow::Cow;
use std::hint::black_box;

use ferry_hl7::{Message, Path};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// An SS-MIX2 ADT^A08 (ADT_A01 structure, v2.5, 1,214 bytes): repeating PID-5, three OBX.
const ADT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/corpus/messages/ssmix2-jp/999/901/9999013/-/ADT-00/",
    "9999013_-_ADT-00_999999999999999_20111220224447339_-_1"
);

const ACCESSES: usize = 10_000;

fn blocks() -> u64 {
    dhat::HeapStats::get().total_blocks
}

/// One round of reads through every accessor; returns how many reads it made and a checksum
/// of what they returned, so nothing can be optimised away.
fn read_fields(m: &Message<'_>, pid3: &Path) -> (usize, usize) {
    let mut sum = 0usize;
    let mut len = |v: Option<&[u8]>| sum += v.map_or(0, <[u8]>::len);
    len(m.get("PID-5.1").expect("path"));
    len(m.get("OBX[2]-5").expect("path"));
    len(m.get("PID-5(2).1").expect("path")); // second repetition, first component
    len(m.get("PID-11.5").expect("path")); // component
    len(m.get("OBX[1]-6.2").expect("path")); // component of the second OBX unit
    len(m.get("PID-3.1.1").expect("path")); // subcomponent
    len(m.get_path(black_box(pid3)));
    let pid = m.segment("PID", 1).expect("PID");
    len(pid.field(3));
    len(pid.locate(black_box(pid3)));
    len(m.segment("OBX", 3).expect("OBX[3]").field(5));
    len(m.message_code().map(str::as_bytes));
    len(m.control_id().map(str::as_bytes));
    len(m.version().map(str::as_bytes));
    // Decoded text without escape sequences is borrowed, not copied.
    for path in ["OBX[2]-5", "PID-3", "MSH-10"] {
        let text = m.get_str(path).expect("path").expect("present");
        assert!(matches!(text, Cow::Borrowed(_)), "{path} was copied");
        len(Some(text.as_bytes()));
    }
    let fields: usize = m.segments().map(|s| s.field_count()).sum();
    (17, sum + fields)
}

#[test]
fn reading_fields_does_not_allocate() {
    let bytes = std::fs::read(ADT).expect("read corpus ADT");
    let _profiler = dhat::Profiler::builder().testing().build();

    let m = Message::parse(&bytes).expect("corpus ADT parses");
    let pid3 = Path::parse("PID-3").expect("path");
    // The values are the ones in the file, so the reads below read something.
    assert_eq!(m.get("OBX[2]-5").expect("path"), Some(&b"63.5"[..]));
    assert_eq!(m.get("PID-3").expect("path"), Some(&b"9999013"[..]));
    assert_eq!(m.get("PID-11.5").expect("path"), Some(&b"422-8033"[..]));
    assert_eq!(m.get("OBX[1]-6.2").expect("path"), Some(&b"cm"[..]));

    // libtest's main thread allocates (its running-test map, timeout queue and channel
    // waker) just after it starts this test's thread, and on a loaded machine that can fall
    // inside the measured window. Those are one-off; an allocation per read shows up as
    // hundreds in every round. So the loop is measured three times and the quietest counts.
    let mut rounds = Vec::with_capacity(3);
    let mut checksum = 0;
    for _ in 0..3 {
        let before = blocks();
        let mut reads = 0;
        while reads < ACCESSES {
            let (n, sum) = read_fields(black_box(&m), &pid3);
            reads += n;
            checksum += sum;
        }
        rounds.push((blocks() - before, reads));
    }
    black_box(checksum);
    let quietest = rounds.iter().map(|(n, _)| *n).min();
    assert_eq!(
        quietest,
        Some(0),
        "allocations during field reads, (allocations, reads) per round: {rounds:?}"
    );

    // The counter is live in this binary: one copy of a field is one allocation.
    let before = blocks();
    let copy = m.get("PID-5.1").expect("path").map(<[u8]>::to_vec);
    black_box(copy);
    assert_eq!(
        blocks() - before,
        1,
        "the allocation counter is not counting"
    );
}
