//! Every message in the shared corpus (400+ files from 15 public projects) goes through the
//! parser: well-formed files must parse completely, deliberately broken ones and the nhapi
//! fuzzer crashes must give an error value or parse, never panic. Each parsed message gets an
//! ACK that must read back with MSA-2 equal to its MSH-10.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ferry_hl7::ack::{self, AckCode};
use ferry_hl7::{Message, split_messages};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/corpus");

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Files the corpus index lists with no MSH segment at all (`n_msh` = 0): uuencoded blobs,
/// XML, and Mirth transform outputs holding a lone segment or field. They are not HL7 messages.
fn not_messages() -> HashSet<String> {
    let text = std::fs::read_to_string(format!("{CORPUS}/INDEX.tsv")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols.get(5) == Some(&"0")).then(|| cols[0].to_owned())
        })
        .collect()
}

/// HAPI's `messages.txt` is a test fixture with C-style comment lines between messages; the
/// comments are removed before parsing (they are not part of any HL7 stream).
fn strip_comments(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        let t = line.trim_ascii_start();
        if !(t.starts_with(b"//") || t.starts_with(b"/*") || t.starts_with(b"*")) {
            out.extend_from_slice(line);
        }
    }
    out
}

fn malformed() -> HashSet<String> {
    let text = std::fs::read_to_string(format!("{CORPUS}/MALFORMED.tsv")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_whole_corpus_parses_and_acks_round_trip() {
    let root = PathBuf::from(CORPUS);
    let mut all = Vec::new();
    files(&root.join("messages"), &mut all);
    files(&root.join("conformance"), &mut all);
    all.retain(|p| {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        !matches!(ext, "json" | "xml" | "md" | "tsv")
    });
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
