//! Typed readers over the whole corpus: every MSH-7 and PID-7 that the corpus index does not
//! mark malformed reads as a valid DTM, and PID-3/PID-5 read without panicking. The values that
//! do not parse are listed exactly, so a parser change that rejects real dates shows up.

use std::collections::BTreeSet;
use std::path::PathBuf;

use ferry_hl7::types::Dtm;
use ferry_hl7::{Message, split_messages};

mod common;

use common::{CORPUS, files};

#[test]
fn corpus_dates_names_and_ids() {
    let root = PathBuf::from(CORPUS);
    let mut all = Vec::new();
    files(&root.join("messages"), &mut all);
    let (mut dates, mut names, mut ids) = (0usize, 0usize, 0usize);
    let mut rejected = BTreeSet::new();
    for path in &all {
        let rel = path
            .strip_prefix(&root)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        for chunk in split_messages(&bytes) {
            let Ok(m) = Message::parse(chunk) else {
                continue;
            };
            for p in ["MSH-7", "PID-7", "EVN-2", "OBX-14", "OBR-7"] {
                match m.dtm(p) {
                    Ok(Some(_)) => dates += 1,
                    Ok(None) => {}
                    Err(_) if !rel.contains("/BadInputs/") => {
                        let raw = m.get(p).ok().flatten().unwrap_or_default();
                        let lenient = Dtm::parse_lenient(raw).is_ok();
                        rejected.insert((String::from_utf8_lossy(raw).into_owned(), lenient));
                    }
                    Err(_) => {}
                }
            }
            if let Ok(Some(n)) = m.xpn("PID-5") {
                names += usize::from(n.family.is_some());
            }
            if let Ok(Some(c)) = m.cx("PID-3") {
                ids += usize::from(c.id.is_some());
            }
        }
    }
    eprintln!("{dates} dates, {names} names, {ids} ids");
    // What real files hold that is not a DTM: placeholders and prose, a 9-digit typo, and
    // milliseconds without the dot, which only the lenient parser takes.
    let expected = [
        ("196203520", false),
        ("1994050216163360", true),
        ("20110613122406637", true),
        ("Aug 15, 1942", false),
        ("DOB", false),
    ];
    let expected: BTreeSet<(String, bool)> =
        expected.iter().map(|(v, l)| (v.to_string(), *l)).collect();
    assert_eq!(rejected, expected);
    assert!(
        dates > 800 && names > 300 && ids > 300,
        "{dates} {names} {ids}"
    );
}
