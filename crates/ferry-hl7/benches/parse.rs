//! HL7 parse benchmarks (issue 3, PRODUCT.md §10): Ferry's parser against the `hl7-parser`
//! crate and against a plain split of the same bytes on segment and field delimiters (the
//! floor any parser has to pay for).
//!
//! Two inputs:
//! - `corpus`: every message of the shared corpus that both Ferry and `hl7-parser` accept with
//!   the same segment count (see [`load_corpus`] for exactly what is kept), one iteration
//!   being one pass over all of them;
//! - `adt_a01`: one typical 1.4 KB ADT^A01 from the corpus, to compare with the reference
//!   figure of PRODUCT.md §10 (the Rust HL7 crates parse a 1.2 KB ADT at 20–30 MB/s).
//!
//! Groups (ids read `GROUP/FUNCTION/INPUT`):
//! - `parse/{ferry,hl7_parser,plain_split}`: bytes to a structure where any field can be read;
//! - `parse_get_pid5_1/{ferry,hl7_parser,plain_split}`: the same plus one read of PID-5.1;
//! - `parse_read_all_fields/{ferry,hl7_parser,plain_split}`: the same plus a read of every
//!   field (Ferry splits fields when they are read, not when the message is parsed);
//! - `serialise/{ferry,ferry_messagebuf,hl7_parser,hl7_parser_raw_copy}`: a parsed message
//!   back to bytes;
//! - `edit_serialise/{ferry,hl7_parser}`: bytes in, PID-5.1 replaced, bytes out.
//!
//! Criterion reports both elements/s (messages/s) and bytes/s (in MiB/s) for every function
//! (`Throughput::ElementsAndBytes`). Every function hands its result to `black_box` so the
//! optimiser cannot drop the work.
//!
//! Run with `cargo bench -p ferry-hl7 --bench parse`; `scripts/hl7-bench-table.py` then turns
//! the estimates criterion saved under `target/criterion` into the table of BENCHMARKS.md.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use ferry_hl7::{Message, MessageBuf, split_messages};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{CORPUS, files, malformed, not_messages, strip_comments};

/// The typical ADT^A01 (1,413 bytes, v2.3, CR-separated, 9 segments: MSH PID PV1 DG1 and
/// three insurance IN1/IN2 pairs, repetitions in PID-3/PID-4).
const ADT_A01: &str = "messages/python-hl7/samples.py__sample_msh.hl7";

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// A set of messages measured as one iteration.
struct Input {
    name: &'static str,
    messages: Vec<String>,
    bytes: u64,
}

impl Input {
    fn new(name: &'static str, messages: Vec<String>) -> Input {
        let bytes = messages.iter().map(|m| m.len() as u64).sum();
        Input {
            name,
            messages,
            bytes,
        }
    }

    fn throughput(&self) -> Throughput {
        Throughput::ElementsAndBytes {
            elements: self.messages.len() as u64,
            bytes: self.bytes,
        }
    }
}

/// The bytes both parsers are given for one message: `split_messages` output without a
/// leading byte-order mark and without surrounding whitespace and control bytes such as a
/// leftover MLLP end block (Ferry skips those itself, `hl7-parser` refuses leading whitespace
/// and stops at a trailing blank line).
fn normalise(chunk: &str) -> &str {
    chunk
        .trim_start_matches('\u{feff}')
        .trim_matches(|c: char| c.is_whitespace() || c.is_ascii_control())
}

/// Why a message is left out of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Refusal {
    /// Ferry returns an error.
    Ferry,
    /// `hl7-parser` returns an error.
    Hl7Parser,
    /// `hl7-parser` returns `Ok` for a prefix of the input when it meets something it cannot
    /// read (a blank line, a line without a segment id), so segment counts must be equal.
    SegmentCount,
    /// The two read a different PID-5.1 (e.g. `hl7-parser` with a 3-character MSH-2).
    Pid5_1,
}

/// `Ok` when both parsers accept `m`, see the same number of segments and read the same
/// PID-5.1, so that both do the same work on it.
fn both_accept(m: &str) -> Result<(), Refusal> {
    let ours = Message::parse(m.as_bytes()).map_err(|_| Refusal::Ferry)?;
    let theirs = hl7_parser::Message::parse_with_lenient_newlines(m, true)
        .map_err(|_| Refusal::Hl7Parser)?;
    if ours.segment_count() != theirs.segments.len() {
        return Err(Refusal::SegmentCount);
    }
    let ours = ours.get("PID-5.1").expect("valid path");
    // hl7-parser has no component in an empty PID-5, where Ferry sees "".
    let theirs = hl7_parser_pid5_1(&theirs)
        .map(str::as_bytes)
        .or(ours.filter(|v| v.is_empty()));
    if ours != theirs {
        return Err(Refusal::Pid5_1);
    }
    Ok(())
}

/// Every message of every file under `messages/` except: files in MALFORMED.tsv, anything
/// under `nhapi/` (fuzzer inputs), files with `n_msh` = 0 in INDEX.tsv, files that are not
/// valid UTF-8 (`hl7-parser` takes `&str`), and messages that not both parsers accept.
fn load_corpus() -> Input {
    let root = PathBuf::from(CORPUS);
    let malformed = malformed();
    let no_msh = not_messages();
    let mut all = Vec::new();
    files(&root.join("messages"), &mut all);
    all.sort();
    let (mut files_used, mut non_utf8) = (0, 0);
    let mut refused = std::collections::BTreeMap::<Refusal, usize>::new();
    let mut messages = Vec::new();
    for path in &all {
        let rel = path
            .strip_prefix(&root)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if rel.contains("/nhapi/") || malformed.contains(&rel) || no_msh.contains(&rel) {
            continue;
        }
        let mut bytes = std::fs::read(path).expect("read corpus file");
        if rel.ends_with("hapi-hl7v2/messages.txt") {
            bytes = strip_comments(&bytes);
        }
        let Ok(text) = String::from_utf8(bytes) else {
            non_utf8 += 1;
            continue;
        };
        files_used += 1;
        for chunk in split_messages(text.as_bytes()) {
            // split_messages cuts at line starts, so each chunk is valid UTF-8 again.
            let chunk = std::str::from_utf8(chunk).expect("chunk of a UTF-8 file");
            let m = normalise(chunk);
            match both_accept(m) {
                Ok(()) => messages.push(m.to_owned()),
                Err(why) => *refused.entry(why).or_default() += 1,
            }
        }
    }
    let input = Input::new("corpus", messages);
    eprintln!(
        "corpus: {} messages, {} bytes from {files_used} files \
         ({non_utf8} non-UTF-8 files skipped; messages left out: {refused:?})",
        input.messages.len(),
        input.bytes
    );
    assert!(input.messages.len() > 300, "corpus not found at {CORPUS}");
    input
}

fn load_adt() -> Input {
    let text = std::fs::read_to_string(format!("{CORPUS}/{ADT_A01}")).expect("read ADT^A01");
    let m = normalise(&text).to_owned();
    assert_eq!(
        both_accept(&m),
        Ok(()),
        "{ADT_A01} must parse alike in both parsers"
    );
    eprintln!("adt_a01: 1 message, {} bytes ({ADT_A01})", m.len());
    Input::new("adt_a01", vec![m])
}

// ---------------------------------------------------------------------------------------------
// The plain split: the floor
// ---------------------------------------------------------------------------------------------

/// Split one message on CR/LF and on its field separator (MSH-1) in one pass, the way a fast
/// parser would (`memchr3`, SIMD), doing a little work per field so that the split is not
/// optimised away. Returns (segments, fields, total field bytes). Empty lines (the gap in a
/// CRLF) are not segments.
fn plain_split(m: &[u8]) -> (usize, usize, usize) {
    let sep = m.get(3).copied().unwrap_or(b'|');
    let (mut segments, mut fields, mut field_bytes) = (0, 0, 0);
    let mut start = 0;
    let mut open = false; // a segment has begun on this line
    for i in memchr::memchr3_iter(b'\r', b'\n', sep, m) {
        let len = i - start;
        if m[i] == sep {
            open = true;
            fields += 1;
            field_bytes += len;
        } else if open || len > 0 {
            open = false;
            segments += 1;
            fields += 1;
            field_bytes += len;
        }
        start = i + 1;
    }
    if open || start < m.len() {
        segments += 1;
        fields += 1;
        field_bytes += m.len() - start;
    }
    (segments, fields, field_bytes)
}

/// `field` cut at the first repetition separator, then at the first component separator.
fn first_component(field: &[u8], rep: Option<u8>, comp: u8) -> &[u8] {
    let f = rep
        .and_then(|r| memchr::memchr(r, field))
        .map_or(field, |j| &field[..j]);
    memchr::memchr(comp, f).map_or(f, |j| &f[..j])
}

/// The plain split of [`plain_split`] with the lookup of PID-5.1 on the way: in the first PID,
/// field 5 is cut at the first `~` and then at the first `^`. Returns (delimiters seen,
/// PID-5.1).
fn plain_split_pid5_1(m: &[u8]) -> (usize, Option<&[u8]>) {
    let sep = m.get(3).copied().unwrap_or(b'|');
    let (rep, comp) = (m.get(5).copied(), m.get(4).copied().unwrap_or(b'^'));
    let (mut delimiters, mut found) = (0, None);
    let (mut start, mut n, mut is_pid) = (0, 0, false);
    for i in memchr::memchr3_iter(b'\r', b'\n', sep, m) {
        delimiters += 1;
        let field = &m[start..i];
        if n == 0 {
            is_pid = found.is_none() && field == b"PID" && m[i] == sep;
        } else if is_pid && n == 5 {
            found = Some(first_component(field, rep, comp));
        }
        n = if m[i] == sep { n + 1 } else { 0 };
        start = i + 1;
    }
    if is_pid && n == 5 {
        found = Some(first_component(&m[start..], rep, comp));
    }
    (delimiters, found)
}

// ---------------------------------------------------------------------------------------------
// Benchmarks
// ---------------------------------------------------------------------------------------------

/// Run `f` for each input inside one group, so ids read `GROUP/FUNCTION/INPUT`.
fn each_input(
    c: &mut Criterion,
    name: &str,
    inputs: &[Input],
    mut f: impl FnMut(&mut BenchmarkGroup<'_, WallTime>, &Input),
) {
    let mut g = c.benchmark_group(name);
    for input in inputs {
        g.throughput(input.throughput());
        f(&mut g, input);
    }
    g.finish();
}

/// `parse`: bytes to a structure where any field can be read without re-parsing.
fn bench_parse(c: &mut Criterion, inputs: &[Input]) {
    each_input(c, "parse", inputs, |g, input| {
        g.bench_function(BenchmarkId::new("ferry", input.name), |b| {
            b.iter(|| {
                for m in &input.messages {
                    let parsed = Message::parse(black_box(m.as_bytes())).expect("parses");
                    black_box(parsed.segment_count());
                    black_box(&parsed);
                }
            })
        });
        g.bench_function(BenchmarkId::new("hl7_parser", input.name), |b| {
            b.iter(|| {
                for m in &input.messages {
                    let parsed =
                        hl7_parser::Message::parse_with_lenient_newlines(black_box(m), true)
                            .expect("parses");
                    black_box(parsed.segments.len());
                    black_box(&parsed);
                }
            })
        });
        g.bench_function(BenchmarkId::new("plain_split", input.name), |b| {
            b.iter(|| {
                for m in &input.messages {
                    black_box(plain_split(black_box(m.as_bytes())));
                }
            })
        });
    });
}

/// hl7-parser's PID-5.1 through its direct accessors, not `query("PID.5.1")`: they are its
/// fastest route (no query string to parse).
fn hl7_parser_pid5_1<'m>(parsed: &'m hl7_parser::Message<'m>) -> Option<&'m str> {
    parsed
        .segment("PID")
        .and_then(|s| s.field(5))
        .and_then(|f| f.component(1))
        .map(|c| c.raw_value())
}

/// The plain split must see Ferry's segments and PID-5.1 (and so hl7-parser's, see
/// [`both_accept`]) for every message, or it is not doing the same work.
fn check_floor_agrees(input: &Input) {
    for m in &input.messages {
        let ours = Message::parse(m.as_bytes()).expect("parses");
        let (segments, ..) = plain_split(m.as_bytes());
        assert_eq!(ours.segment_count(), segments, "segments differ in:\n{m}");
        let floor = plain_split_pid5_1(m.as_bytes()).1;
        let ours = ours.get("PID-5.1").expect("valid path");
        assert_eq!(ours, floor, "PID-5.1 differs (plain split) in:\n{m}");
    }
}

/// `parse_get_pid5_1`: parse, then read PID-5.1 (family name) once.
fn bench_parse_get(c: &mut Criterion, inputs: &[Input]) {
    inputs.iter().for_each(check_floor_agrees);
    each_input(c, "parse_get_pid5_1", inputs, |g, input| {
        g.bench_function(BenchmarkId::new("ferry", input.name), |b| {
            b.iter(|| {
                for m in &input.messages {
                    let parsed = Message::parse(black_box(m.as_bytes())).expect("parses");
                    black_box(parsed.get(black_box("PID-5.1")).expect("valid path"));
                }
            })
        });
        g.bench_function(BenchmarkId::new("hl7_parser", input.name), |b| {
            b.iter(|| {
                for m in &input.messages {
                    let parsed =
                        hl7_parser::Message::parse_with_lenient_newlines(black_box(m), true)
                            .expect("parses");
                    black_box(hl7_parser_pid5_1(&parsed));
                }
            })
        });
        g.bench_function(BenchmarkId::new("plain_split", input.name), |b| {
            b.iter(|| {
                for m in &input.messages {
                    black_box(plain_split_pid5_1(black_box(m.as_bytes())));
                }
            })
        });
    });
}

/// `parse_read_all_fields`: parse, then read every field of every segment once through the
/// public accessors (`Segment::field(n)` for Ferry, `Segment::fields()` for hl7-parser). Not
/// asked for by the issue; it is here because `parse` alone measures how much work each side
/// does up front, and Ferry defers splitting fields to the read, so this is the workload where
/// the deferred cost shows. `plain_split` is the same function as in `parse` (it already
/// touches every field).
fn bench_parse_all_fields(c: &mut Criterion, inputs: &[Input]) {
    each_input(c, "parse_read_all_fields", inputs, |g, input| {
        g.bench_function(BenchmarkId::new("ferry", input.name), |b| {
            b.iter(|| {
                for m in &input.messages {
                    let parsed = Message::parse(black_box(m.as_bytes())).expect("parses");
                    let mut bytes = 0;
                    for seg in parsed.segments() {
                        for n in 1..=seg.field_count() {
                            bytes += seg.field(n).map_or(0, <[u8]>::len);
                        }
                    }
                    black_box(bytes);
                }
            })
        });
        g.bench_function(BenchmarkId::new("hl7_parser", input.name), |b| {
            b.iter(|| {
                for m in &input.messages {
                    let parsed =
                        hl7_parser::Message::parse_with_lenient_newlines(black_box(m), true)
                            .expect("parses");
                    let mut bytes = 0;
                    for seg in parsed.segments() {
                        for f in seg.fields() {
                            bytes += f.raw_value().len();
                        }
                    }
                    black_box(bytes);
                }
            })
        });
        g.bench_function(BenchmarkId::new("plain_split", input.name), |b| {
            b.iter(|| {
                for m in &input.messages {
                    black_box(plain_split(black_box(m.as_bytes())));
                }
            })
        });
    });
}

/// How faithful hl7-parser's only write path is: `MessageBuilder` keeps raw values and escapes
/// them again on output, and writes CR between segments. Printed, not asserted.
fn report_hl7_parser_round_trip(input: &Input) {
    let exact = input
        .messages
        .iter()
        .filter(|m| {
            let parsed = hl7_parser::Message::parse_with_lenient_newlines(m, true).expect("parses");
            let cr = m.replace("\r\n", "\r").replace('\n', "\r");
            hl7_parser::builder::MessageBuilder::from(&parsed).to_string() == cr
        })
        .count();
    eprintln!(
        "serialise/{}: hl7-parser's MessageBuilder reproduces {exact} of {} messages exactly \
         (segment terminators normalised to CR)",
        input.name,
        input.messages.len()
    );
}

/// `serialise`: a parsed message back to bytes (messages are parsed before the measurement).
fn bench_serialise(c: &mut Criterion, inputs: &[Input]) {
    inputs.iter().for_each(report_hl7_parser_round_trip);
    each_input(c, "serialise", inputs, |g, input| {
        let ours: Vec<Message<'_>> = input
            .messages
            .iter()
            .map(|m| Message::parse(m.as_bytes()).expect("parses"))
            .collect();
        let theirs: Vec<hl7_parser::Message<'_>> = input
            .messages
            .iter()
            .map(|m| hl7_parser::Message::parse_with_lenient_newlines(m, true).expect("parses"))
            .collect();
        // The parsed message's bytes copied into a Vec: what serialising a `Message` costs.
        g.bench_function(BenchmarkId::new("ferry", input.name), |b| {
            b.iter(|| {
                for m in &ours {
                    black_box(black_box(m).as_bytes().to_vec());
                }
            })
        });
        // Into the owned, editable form and back to bytes: the counterpart of hl7-parser's
        // `MessageBuilder::from(&message).to_string()` below.
        g.bench_function(BenchmarkId::new("ferry_messagebuf", input.name), |b| {
            b.iter(|| {
                for m in &ours {
                    black_box(MessageBuf::from_message(black_box(m)).into_bytes());
                }
            })
        });
        // hl7-parser cannot write a parsed `Message` back except through its builder: convert
        // to `MessageBuilder` (owned strings per field or component) and render it with
        // `Display`.
        g.bench_function(BenchmarkId::new("hl7_parser", input.name), |b| {
            b.iter(|| {
                for m in &theirs {
                    let builder = hl7_parser::builder::MessageBuilder::from(black_box(m));
                    black_box(builder.to_string());
                }
            })
        });
        // The same copy as `ferry` done on hl7-parser's message (`raw_value().to_owned()`): the
        // like-for-like line while Ferry's serialisation is only a copy.
        g.bench_function(BenchmarkId::new("hl7_parser_raw_copy", input.name), |b| {
            b.iter(|| {
                for m in &theirs {
                    black_box(black_box(m).raw_value().to_owned());
                }
            })
        });
    });
}

/// The value `edit_serialise` writes into PID-5.1.
const EDITED: &str = "EDITED";

/// hl7-parser's way to edit: the parsed message into a `MessageBuilder`, PID-5.1 (first
/// repetition, first component) set, rendered with `Display` (CR between segments).
fn hl7_parser_set_pid5_1(m: &str) -> String {
    use hl7_parser::builder::{ComponentBuilder, FieldBuilder, MessageBuilder};
    let parsed = hl7_parser::Message::parse_with_lenient_newlines(m, true).expect("parses");
    let mut builder = MessageBuilder::from(&parsed);
    if let Some(pid) = builder.segment_named_mut("PID") {
        match pid.field_mut(5) {
            // `repeat_mut` counts from 0, unlike the rest of hl7-parser.
            Some(field) => match field.repeat_mut(0) {
                Some(rep) => rep.set_component_value(1, EDITED),
                None => field.set_component(1, ComponentBuilder::Value(EDITED.to_owned())),
            },
            None => pid.set_field(5, FieldBuilder::Value(EDITED.to_owned())),
        }
    }
    builder.to_string()
}

/// Ferry's way: `MessageBuf::parse`, `set("PID-5.1")`, the bytes.
fn ferry_set_pid5_1(m: &str) -> Vec<u8> {
    let mut buf = MessageBuf::parse(m.as_bytes()).expect("parses");
    buf.set("PID-5.1", EDITED).expect("PID-5.1 can be set");
    buf.into_bytes()
}

/// `edit_serialise`: bytes in, PID-5.1 replaced, bytes out (parse included), over the
/// messages that have a PID segment. Ferry's result must read back with the new PID-5.1;
/// how often hl7-parser's does is printed.
fn bench_edit_serialise(c: &mut Criterion, inputs: &[Input]) {
    let with_pid: Vec<Input> = inputs
        .iter()
        .map(|input| {
            let messages = input
                .messages
                .iter()
                .filter(|m| {
                    let parsed = Message::parse(m.as_bytes()).expect("parses");
                    parsed.segment("PID", 1).is_some()
                })
                .cloned()
                .collect();
            let name = if input.name == "corpus" {
                "corpus_with_pid"
            } else {
                input.name
            };
            Input::new(name, messages)
        })
        .collect();
    for input in &with_pid {
        let mut theirs_ok = 0;
        for m in &input.messages {
            let ours = ferry_set_pid5_1(m);
            let ours = Message::parse(&ours).expect("edited message parses");
            assert_eq!(ours.get("PID-5.1").expect("path"), Some(EDITED.as_bytes()));
            let theirs = hl7_parser_set_pid5_1(m);
            let theirs = hl7_parser::Message::parse(&theirs).expect("edited message parses");
            theirs_ok += usize::from(hl7_parser_pid5_1(&theirs) == Some(EDITED));
        }
        eprintln!(
            "edit_serialise/{}: {} messages, {} bytes; Ferry's output reads back the new \
             PID-5.1 in all, hl7-parser's in {theirs_ok}",
            input.name,
            input.messages.len(),
            input.bytes
        );
    }
    each_input(c, "edit_serialise", &with_pid, |g, input| {
        g.bench_function(BenchmarkId::new("ferry", input.name), |b| {
            b.iter(|| {
                for m in &input.messages {
                    black_box(ferry_set_pid5_1(black_box(m)));
                }
            })
        });
        g.bench_function(BenchmarkId::new("hl7_parser", input.name), |b| {
            b.iter(|| {
                for m in &input.messages {
                    black_box(hl7_parser_set_pid5_1(black_box(m)));
                }
            })
        });
    });
}

fn benches(c: &mut Criterion) {
    let inputs = [load_adt(), load_corpus()];
    bench_parse(c, &inputs);
    bench_parse_get(c, &inputs);
    bench_parse_all_fields(c, &inputs);
    bench_serialise(c, &inputs);
    bench_edit_serialise(c, &inputs);
}

criterion_group!(parse, benches);
criterion_main!(parse);
