//! The committed dictionary data is what the generator produces from the shared corpus'
//! structure files, and validation runs over every corpus message without panicking.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ferry_hl7::validate::{self, IssueCode};
use ferry_hl7::{Message, split_messages};

#[allow(dead_code)]
#[path = "../examples/generate_dictionary.rs"]
mod generator;

mod common;

use common::{CORPUS, message_files};
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/dictionary/data");

#[test]
fn committed_data_is_what_the_generator_produces() {
    let source = PathBuf::from(CORPUS).join("structures");
    let generated = generator::generate(&source).expect("generator runs on the corpus");
    let committed =
        std::fs::read_to_string(format!("{DATA}/dictionary.txt")).expect("committed data");
    assert!(
        generated == committed,
        "src/dictionary/data/dictionary.txt is stale: run \
         `cargo run -p ferry-hl7 --example generate_dictionary -- {} crates/ferry-hl7/src/dictionary/data`",
        source.display()
    );
    let licence = std::fs::read(source.join("hl7-dictionary/LICENSE.md")).expect("licence");
    let shipped = std::fs::read(format!("{DATA}/LICENSE-hl7-dictionary.md")).expect("notice");
    assert_eq!(
        licence, shipped,
        "the MIT notice beside the data must match the source's"
    );
    println!("dictionary data: {} bytes", committed.len());
}

#[test]
fn validation_runs_over_the_whole_corpus() {
    let mut all = message_files();
    all.sort();
    assert!(all.len() > 300, "corpus not found at {CORPUS}");
    let t = std::time::Instant::now();
    ferry_hl7::dictionary::preload();
    println!("dictionary loaded in {:?}", t.elapsed());
    let (mut messages, mut recognised, mut clean_structure, mut clean) = (0usize, 0, 0, 0);
    let mut by_code: BTreeMap<&'static str, usize> = BTreeMap::new();
    for path in &all {
        let bytes = std::fs::read(path).expect("read corpus file");
        for chunk in split_messages(&bytes) {
            let Ok(m) = Message::parse(chunk) else {
                continue;
            };
            messages += 1;
            let issues = validate::validate(&m);
            let grouping = validate::groups(&m);
            if let Some(g) = &grouping {
                assert_eq!(g.segments.len(), m.segment_count());
            }
            for i in &issues {
                if std::env::var_os("SHOW_STRUCTURE").is_some()
                    && matches!(
                        i.code,
                        IssueCode::UnexpectedSegment | IssueCode::MissingSegment
                    )
                {
                    println!("{}: {} {i}", path.display(), m.message_type().unwrap_or(""));
                }
                *by_code.entry(i.code.as_str()).or_default() += 1;
            }
            let unknown = issues
                .iter()
                .any(|i| i.code == IssueCode::UnknownMessageStructure);
            assert_eq!(unknown, grouping.is_none(), "{}", path.display());
            if !unknown {
                recognised += 1;
                if !issues.iter().any(|i| {
                    matches!(
                        i.code,
                        IssueCode::UnexpectedSegment | IssueCode::MissingSegment
                    )
                }) {
                    clean_structure += 1;
                }
            }
            if issues.is_empty() {
                clean += 1;
            }
        }
    }
    println!(
        "{messages} messages: structure recognised {recognised}, structure valid {clean_structure}, \
         no issues at all {clean}; issues by code {by_code:?}"
    );
    assert!(messages > 400, "only {messages} messages");
    // Lower bounds measured on the corpus (see the printed figures), with some slack.
    assert!(
        recognised * 100 >= messages * 90,
        "recognised {recognised}/{messages}"
    );
    assert!(
        clean_structure * 100 >= recognised * 60,
        "structure valid {clean_structure}/{recognised}"
    );
}

/// Real ADT messages from three sources and versions that conform to their structure: an
/// ADT^A04 named by MSH-9.3 `ADT_A04` (v2.8, mapped to ADT_A01), an ADT^A04 without MSH-9.3
/// (v2.3) and an ADT^A01 (v2.4).
#[test]
fn corpus_adts_validate_with_no_structure_errors() {
    for (file, structure) in [
        ("microsoft-fhir-converter/ADT-A04-02.hl7", "ADT_A01"),
        (
            "oie-mirth/server/tests/filereader/nonbatch/05.hl7",
            "ADT_A04",
        ),
        ("hapi-hl7v2/ADT_A01.txt", "ADT_A01"),
    ] {
        let path = format!("{CORPUS}/messages/{file}");
        let bytes = std::fs::read(&path).expect("corpus file");
        let m = Message::parse(&bytes).expect("parses");
        let g = validate::groups(&m).expect("structure known");
        assert_eq!(g.structure, structure, "{file}");
        let issues = validate::validate(&m);
        let structural: Vec<_> = issues
            .iter()
            .filter(|i| {
                matches!(
                    i.code,
                    IssueCode::UnexpectedSegment
                        | IssueCode::MissingSegment
                        | IssueCode::UnknownMessageStructure
                        | IssueCode::UnknownSegment
                )
            })
            .collect();
        assert!(structural.is_empty(), "{file}: {structural:#?}");
        for i in &issues {
            println!("{file}: {i}");
        }
    }
}
