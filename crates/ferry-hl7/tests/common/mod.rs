//! Helpers shared by the corpus tests: where the shared corpus is and which of its files are
//! messages, deliberately broken, or not HL7 at all.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The shared corpus (`../shared/corpus` beside the repository).
pub const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/corpus");

/// Every file below `dir`, recursively.
pub fn files(dir: &Path, out: &mut Vec<PathBuf>) {
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

/// Every candidate message file of the corpus (messages and conformance folders), without
/// the JSON, XML, Markdown and TSV files that sit beside them.
pub fn message_files() -> Vec<PathBuf> {
    let root = Path::new(CORPUS);
    let mut all = Vec::new();
    files(&root.join("messages"), &mut all);
    files(&root.join("conformance"), &mut all);
    all.retain(|p| {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        !matches!(ext, "json" | "xml" | "md" | "tsv")
    });
    all
}

/// Files the corpus index lists with no MSH segment at all (`n_msh` = 0): uuencoded blobs,
/// XML, and Mirth transform outputs holding a lone segment or field. They are not HL7 messages.
pub fn not_messages() -> HashSet<String> {
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
pub fn strip_comments(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        let t = line.trim_ascii_start();
        if !(t.starts_with(b"//") || t.starts_with(b"/*") || t.starts_with(b"*")) {
            out.extend_from_slice(line);
        }
    }
    out
}

pub fn malformed() -> HashSet<String> {
    let text = std::fs::read_to_string(format!("{CORPUS}/MALFORMED.tsv")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .map(str::to_owned)
        .collect()
}

/// The path of a corpus file relative to the corpus root, as INDEX.tsv and MALFORMED.tsv name it.
pub fn relative(path: &Path) -> String {
    path.strip_prefix(CORPUS)
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}
