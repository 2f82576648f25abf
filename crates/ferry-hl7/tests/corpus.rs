//! Every message in the shared corpus (400+ files from 15 public projects) goes through the
//! parser: well-formed files must parse completely, deliberately broken ones and the nhapi
//! fuzzer crashes must give an error value or parse, never panic. Each parsed message gets an
//! ACK that must read back with MSA-2 equal to its MSH-10, round-trips byte for byte through
//! [`MessageBuf`] and through the JSON form, and has its field index checked against a naive
//! line-and-separator split of the same bytes.

use std::path::PathBuf;

use ferry_hl7::ack::{self, AckCode};
use ferry_hl7::charset::{CharsetPolicy, message_to_utf8};
use ferry_hl7::{Message, MessageBuf, escape, json, parse_batch, split_messages};

mod common;

use common::{CORPUS, files, malformed, message_files, not_messages, strip_comments};

/// The obvious, slow reading of a message: lines that start with a segment id begin a
/// segment, other non-blank lines continue the previous one, and fields are the segment's
/// bytes split on the field separator. The indexed parser must agree with it exactly.
fn naive_fields(bytes: &[u8], field: u8) -> Vec<Vec<Vec<u8>>> {
    let mut segments: Vec<Vec<u8>> = Vec::new();
    let start = bytes
        .windows(3)
        .position(|w| w == b"MSH")
        .unwrap_or(bytes.len());
    let mut rest = &bytes[start..];
    let mut first = true;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|b| *b == b'\r' || *b == b'\n')
            .unwrap_or(rest.len());
        let line = &rest[..end];
        let is_segment = line.len() >= 3
            && line[..3]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && line.get(3).is_none_or(|b| *b == field);
        if line.iter().all(|b| *b <= b' ') {
            // blank
        } else if is_segment || first {
            segments.push(line.to_vec());
        } else if let Some(last) = segments.last_mut() {
            // A continuation line; breaks are compared normalised (see `joined`).
            last.extend_from_slice(b"\n");
            last.extend_from_slice(line);
        }
        first = false;
        rest = rest.get(end + 1..).unwrap_or_default();
    }
    segments
        .into_iter()
        .map(|seg| {
            let mut fields: Vec<Vec<u8>> = seg.split(|b| *b == field).map(<[u8]>::to_vec).collect();
            fields.remove(0);
            if seg.starts_with(b"MSH") && seg.len() > 3 {
                fields.insert(0, vec![field]);
            }
            fields
        })
        .collect()
}

/// Line breaks inside a continued segment, normalised so that the naive reading (which
/// joins continuation lines with LF) can be compared with the real bytes.
fn joined(fields: Vec<&[u8]>) -> Vec<Vec<u8>> {
    fields
        .into_iter()
        .map(|f| {
            let mut out = Vec::with_capacity(f.len());
            let mut prev_break = false;
            for &b in f {
                let is_break = b == b'\r' || b == b'\n' || (prev_break && b <= b' ');
                if is_break {
                    if !prev_break {
                        out.push(b'\n');
                    }
                } else {
                    out.push(b);
                }
                prev_break = is_break;
            }
            out
        })
        .collect()
}

fn normalised(naive: Vec<Vec<Vec<u8>>>) -> Vec<Vec<Vec<u8>>> {
    naive
        .into_iter()
        .map(|fields| joined(fields.iter().map(Vec::as_slice).collect()))
        .collect()
}

#[test]
fn the_whole_corpus_parses_and_acks_round_trip() {
    let root = PathBuf::from(CORPUS);
    let all = message_files();
    assert!(
        all.len() > 300,
        "corpus not found at {CORPUS} ({} files)",
        all.len()
    );
    let malformed = malformed();
    let not_messages = not_messages();
    let (mut messages, mut failures) = (0usize, Vec::new());
    for path in &all {
        let rel = path
            .strip_prefix(&root)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if not_messages.contains(&rel) {
            continue;
        }
        let mut bytes = std::fs::read(path).expect("read corpus file");
        if rel.ends_with("hapi-hl7v2/messages.txt") {
            bytes = strip_comments(&bytes);
        }
        let tolerated = malformed.contains(&rel) || rel.contains("/nhapi/");
        for chunk in split_messages(&bytes) {
            match Message::parse(chunk) {
                Ok(m) => {
                    messages += 1;
                    if !tolerated {
                        check_round_trips(&rel, chunk, &m, &mut failures);
                    }
                    let built = ack::build_ack(&m, AckCode::AA, None, None);
                    let summary = ack::parse_ack(&built);
                    let expected = m.get_str("MSH-10").ok().flatten().unwrap_or_default();
                    match summary {
                        Ok(s) if s.control_id == expected.trim() => {}
                        other if !tolerated => {
                            failures.push(format!("{rel}: ACK round trip: {other:?}"))
                        }
                        _ => {}
                    }
                }
                Err(e) if !tolerated => failures.push(format!("{rel}: {e}")),
                Err(_) => {}
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures over {messages} messages:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(messages > 400, "only {messages} messages parsed");
}

fn check_round_trips(rel: &str, chunk: &[u8], m: &Message<'_>, failures: &mut Vec<String>) {
    match MessageBuf::parse(chunk) {
        Ok(buf)
            if buf.as_bytes() == chunk && buf.message().segment_count() == m.segment_count() => {}
        other => failures.push(format!("{rel}: MessageBuf round trip: {:?}", other.err())),
    }
    match json::from_json(&json::to_json(m)) {
        Ok(back) if back == chunk => {}
        Ok(_) => failures.push(format!("{rel}: JSON round trip changed the bytes")),
        Err(e) => failures.push(format!("{rel}: JSON round trip: {e}")),
    }
    let multibyte = m
        .declared_charset()
        .is_some_and(|c| !c.is_ascii_transparent());
    let (indexed, naive) = if multibyte {
        // A naive byte split is wrong for ISO-2022-JP (delimiter bytes inside characters):
        // compare the decoded text of every field with a naive split of the message
        // transcoded to UTF-8, where that cannot happen.
        let Ok(utf8) = message_to_utf8(chunk, &CharsetPolicy::strict()) else {
            failures.push(format!("{rel}: does not transcode to UTF-8"));
            return;
        };
        let d = *m.delimiters();
        let indexed: Vec<Vec<Vec<u8>>> = m
            .segments()
            .map(|s| {
                s.fields()
                    .enumerate()
                    .map(|(i, f)| {
                        if s.id() == b"MSH" && i < 2 {
                            f.to_vec()
                        } else {
                            m.text(f).into_owned().into_bytes()
                        }
                    })
                    .collect()
            })
            .collect();
        let naive: Vec<Vec<Vec<u8>>> = naive_fields(utf8.text.as_bytes(), d.field)
            .into_iter()
            .map(|fields| {
                fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        if i < 2 && fields.first() == Some(&vec![d.field]) {
                            f.clone()
                        } else {
                            escape::decode(f, &d).into_owned().into_bytes()
                        }
                    })
                    .collect()
            })
            .collect();
        (indexed, naive)
    } else {
        (
            m.segments().map(|s| joined(s.fields().collect())).collect(),
            normalised(naive_fields(chunk, m.delimiters().field)),
        )
    };
    if indexed != naive {
        let at = indexed
            .iter()
            .zip(&naive)
            .position(|(a, b)| a != b)
            .unwrap_or(indexed.len().min(naive.len()));
        failures.push(format!(
            "{rel}: field index differs from a naive split at segment {at} ({} vs {} segments)",
            indexed.len(),
            naive.len()
        ));
    }
}

/// Files with a batch or file envelope read as one, and BTS/FTS counts (when present)
/// match; every message of the envelope parses.
#[test]
fn corpus_batches_have_consistent_envelopes() {
    let text = std::fs::read_to_string(format!("{CORPUS}/INDEX.tsv")).expect("INDEX.tsv");
    let malformed = malformed();
    let mut checked = 0;
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (Some(file), Some(batch)) = (cols.first(), cols.get(6)) else {
            continue;
        };
        if batch.is_empty() || malformed.contains(*file) || file.contains("/nhapi/") {
            continue;
        }
        let bytes = std::fs::read(format!("{CORPUS}/{file}")).expect("read");
        let parsed = parse_batch(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        for m in parsed.messages() {
            Message::parse(m).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        assert!(parsed.messages().count() > 0, "{file}: no messages");
        checked += 1;
    }
    assert!(
        checked >= 3,
        "only {checked} batch files in the corpus index"
    );
}

/// Hostile inputs (the malformed list and nHapi's fuzzer crashes) go through every entry
/// point: each returns a value (an error or a parse); none panics.
#[test]
fn hostile_inputs_give_values_through_every_entry_point() {
    let root = PathBuf::from(CORPUS);
    let mut all = Vec::new();
    files(&root.join("messages/nhapi"), &mut all);
    for rel in malformed() {
        all.push(root.join(rel));
    }
    assert!(all.len() > 40, "{} hostile inputs", all.len());
    let mut outcomes = (0, 0);
    for path in &all {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        let _ = parse_batch(&bytes);
        let _ = ack::parse_ack(&bytes);
        for chunk in split_messages(&bytes).chain(std::iter::once(&bytes[..])) {
            match Message::parse(chunk) {
                Ok(m) => {
                    outcomes.0 += 1;
                    let back =
                        json::from_json(&json::to_json(&m)).expect("JSON of a parsed message");
                    assert_eq!(back, chunk, "{}", path.display());
                    let mut buf = MessageBuf::from_message(&m);
                    let _ = buf.set("PID-5.1", "X");
                    let _ = buf.delete("PID-3(2)");
                    let _ = ack::build_ack(&m, AckCode::AR, Some("bad"), None);
                    let _ = ferry_hl7::validate::validate(&m);
                    let _ = ferry_hl7::validate::groups(&m);
                    let _ = message_to_utf8(chunk, &CharsetPolicy::default());
                    for path in ["PID-5", "PID-3", "OBX-3", "MSH-7", "PID-7"] {
                        let _ = (m.xpn(path), m.cx(path), m.cwe(path), m.dtm(path));
                        let _ = m.get_str(path);
                    }
                }
                Err(_) => outcomes.1 += 1,
            }
        }
    }
    assert!(outcomes.1 > 0, "no hostile input was refused: {outcomes:?}");
}
