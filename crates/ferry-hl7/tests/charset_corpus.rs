//! Every corpus file that declares MSH-18 or holds non-ASCII bytes (columns `msh18` and
//! `non_ascii` of INDEX.tsv): each value of each message decodes with the message's own
//! charset. ISO-2022-JP messages are transcoded to UTF-8 whole first (their two-byte characters
//! contain delimiter bytes). Values that need the fallback are listed, and must be exactly the
//! known liars, so a regression in a decoder shows up as a new fallback.

use std::borrow::Cow;
use std::collections::BTreeSet;

use ferry_hl7::charset::{Charset, CharsetPolicy, TextDecoder, Used, message_to_utf8};
use ferry_hl7::{Message, split_messages};

mod common;

use common::CORPUS;

/// Each value of a message, at every level (field, repetition, component, subcomponent).
fn values<'m>(m: &'m Message<'_>) -> Vec<(String, &'m [u8])> {
    let d = *m.delimiters();
    let mut out = Vec::new();
    for seg in m.segments() {
        let id = String::from_utf8_lossy(seg.id()).into_owned();
        let first = if seg.id() == b"MSH" { 3 } else { 1 };
        for n in first..=seg.field_count() {
            let Some(field) = seg.field(n) else { continue };
            out.push((format!("{id}-{n}"), field));
            let reps: Vec<&[u8]> = match d.repetition {
                Some(r) => field.split(|b| *b == r).collect(),
                None => vec![field],
            };
            for (ri, rep) in reps.into_iter().enumerate() {
                for (ci, comp) in rep.split(|b| *b == d.component).enumerate() {
                    out.push((format!("{id}-{n}({}).{}", ri + 1, ci + 1), comp));
                    if let Some(s) = d.subcomponent {
                        for (si, sub) in comp.split(|b| *b == s).enumerate() {
                            out.push((format!("{id}-{n}({}).{}.{}", ri + 1, ci + 1, si + 1), sub));
                        }
                    }
                }
            }
        }
    }
    out
}

fn selected_files() -> Vec<(String, String)> {
    let index = std::fs::read_to_string(format!("{CORPUS}/INDEX.tsv")).unwrap_or_default();
    index
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            let (file, msh18, non_ascii) = (cols.first()?, cols.get(9)?, cols.get(16)?);
            (!msh18.is_empty() || *non_ascii == "True")
                .then(|| (file.to_string(), msh18.to_string()))
        })
        .collect()
}

#[test]
fn every_value_of_every_declared_or_non_ascii_message_decodes() {
    let files = selected_files();
    assert!(
        files.len() >= 60,
        "corpus index not found ({} files)",
        files.len()
    );
    let (mut messages, mut checked, mut japanese) = (0usize, 0usize, 0usize);
    let mut fallbacks = BTreeSet::new();
    let mut failures = Vec::new();
    let mut bad_labels = BTreeSet::new();
    for (file, _msh18) in &files {
        let Ok(bytes) = std::fs::read(format!("{CORPUS}/{file}")) else {
            failures.push(format!("{file}: unreadable"));
            continue;
        };
        for chunk in split_messages(&bytes) {
            let Ok(raw) = Message::parse(chunk) else {
                continue; // Not a message (fuzzer outputs, a 2-byte SS-MIX2 stub).
            };
            messages += 1;
            let policy = CharsetPolicy::default();
            let declared = match policy.charset_for(&raw) {
                Ok(c) => c,
                Err(e) => {
                    bad_labels.insert(format!("{file}: {e}"));
                    continue;
                }
            };
            let transcoded;
            let (m, decoder) = if declared.is_ascii_transparent() {
                let d = TextDecoder::new(declared, *raw.delimiters(), policy);
                (raw, d)
            } else {
                japanese += 1;
                transcoded = match message_to_utf8(chunk, &CharsetPolicy::strict()) {
                    Ok(u) => u,
                    Err(e) => {
                        failures.push(format!("{file}: transcoding: {e}"));
                        continue;
                    }
                };
                assert_eq!(transcoded.used, Used::Declared, "{file}");
                let m = Message::parse(transcoded.text.as_bytes()).expect("transcoded parses");
                let d = TextDecoder::new(Charset::Utf8, *m.delimiters(), CharsetPolicy::strict());
                (m, d)
            };
            for (at, value) in values(&m) {
                checked += 1;
                match decoder.decode(value) {
                    Ok(d) => {
                        if let Used::Fallback(c) = d.used {
                            fallbacks.insert(format!(
                                "{file} {at} ({} -> {})",
                                declared.code(),
                                c.code()
                            ));
                        }
                        if value.is_ascii() && !value.contains(&b'\\') {
                            assert!(matches!(d.text, Cow::Borrowed(_)), "{file} {at} copied");
                        }
                    }
                    Err(e) => failures.push(format!("{file} {at}: {e}")),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        messages >= 70 && japanese >= 20,
        "{messages} messages, {japanese} ISO-2022-JP"
    );
    // The one unusable MSH-18 in the corpus is a fuzzer output's.
    assert_eq!(
        bad_labels.into_iter().collect::<Vec<_>>(),
        [
            "messages/nhapi/BadInputs/PipeParser/HL7Exception/id_000092,sig_02,src_001582+001861,op_splice,rep_16: \
          unknown character set `0` in MSH-18 (not in HL7 table 0211)"
        ]
    );
    let fallbacks: Vec<String> = fallbacks.into_iter().collect();
    eprintln!("{messages} messages, {checked} values; fallbacks: {fallbacks:#?}");
    assert_eq!(fallbacks, Vec::<String>::new());
}

fn ssmix(file: &str) -> Vec<u8> {
    std::fs::read(format!("{CORPUS}/messages/ssmix2-jp/{file}")).expect("ssmix2 file")
}

#[test]
fn ssmix2_patient_name_decodes_to_japanese() {
    let bytes =
        ssmix("999/901/9999013/-/ADT-00/9999013_-_ADT-00_999999999999999_20111220224447339_-_1");
    let u = message_to_utf8(&bytes, &CharsetPolicy::strict()).expect("ISO-2022-JP");
    assert_eq!(u.declared, Charset::Iso2022Jp);
    let m = Message::parse(u.text.as_bytes()).expect("parses");
    let d = TextDecoder::new(Charset::Utf8, *m.delimiters(), CharsetPolicy::strict());
    let text = |path: &str| {
        let raw = m.get(path).expect("path").expect("present");
        d.text(raw).expect("utf-8").into_owned()
    };
    assert_eq!(text("PID-5(1).1"), "患者");
    assert_eq!(text("PID-5(1).2"), "太郎");
    assert_eq!(text("PID-5(2).1"), "カンジャ");
    assert_eq!(text("PID-5(2).2"), "タロウ");
    assert_eq!(text("PID-11.8"), "静岡県静岡市登呂１－３－５");
    assert_eq!(text("NK1-3.2"), "本人");

    // Read raw, without transcoding: the parser follows the ISO-2022 shift state, so the `&`
    // byte inside ウ (JIS 0x25 0x26) does not cut the subcomponent, and `get_str` decodes
    // with the charset MSH-18 declares.
    let raw = Message::parse(&bytes).expect("parses");
    let whole = raw.get("PID-5(2).2.1").expect("path").expect("present");
    assert_eq!(whole, b"\x1b$B%?%m%&\x1b(B");
    assert_eq!(raw.get("PID-5(2).2.2").expect("path"), None);
    let get = |path: &str| raw.get_str(path).expect("path").map(|t| t.into_owned());
    for (path, want) in [
        ("PID-5(1).1", "患者"),
        ("PID-5(1).2", "太郎"),
        ("PID-5(2).1", "カンジャ"),
        ("PID-5(2).2", "タロウ"),
        ("PID-11.8", "静岡県静岡市登呂１－３－５"),
        ("NK1-3.2", "本人"),
    ] {
        assert_eq!(get(path).as_deref(), Some(want), "{path}");
    }
    // Every field of every SS-MIX2 message reads the same raw as after transcoding.
    assert_eq!(raw.segment_count(), m.segment_count());
    for (a, b) in raw.segments().zip(m.segments()) {
        assert_eq!(a.field_count(), b.field_count(), "{}", a.id_str());
    }
}
