//! Property tests of parse/serialise: random messages (random delimiters, segment ends,
//! nesting of repetitions, components and subcomponents, non-ASCII text) are written out,
//! parsed, and every value read back by its path; the JSON form and `MessageBuf` give back the
//! exact bytes, and serialising the parsed structure again reproduces them.

use ferry_hl7::{Message, MessageBuf, json};
use proptest::prelude::*;

/// Reps → components → subcomponents → leaf text.
type Field = Vec<Vec<Vec<String>>>;

#[derive(Debug, Clone)]
struct Generated {
    /// MSH-1 and MSH-2.
    delimiters: (char, String),
    /// (segment id, fields from field 1 for non-MSH / from MSH-3 for MSH, terminator).
    segments: Vec<(String, Vec<Field>, String)>,
}

/// Delimiter sets: the default, with truncation (2.7+), unusual characters, and sets that
/// declare fewer separators.
const DELIMITERS: [(char, &str); 5] = [
    ('|', "^~\\&"),
    ('|', "^~\\&#"),
    ('#', "$%*!"),
    ('|', "^~\\"),
    ('|', "^"),
];

fn leaf() -> impl Strategy<Value = String> {
    // No delimiter of any set above, no line break; includes multi-byte UTF-8.
    "[A-Za-z0-9 é漢]{0,5}"
}

fn field(reps: bool, subs: bool) -> impl Strategy<Value = Field> {
    let sub = prop::collection::vec(leaf(), if subs { 1..=3 } else { 1..=1 });
    let comp = prop::collection::vec(sub, 1..=3);
    prop::collection::vec(comp, if reps { 1..=3 } else { 1..=1 })
}

fn generated() -> impl Strategy<Value = Generated> {
    (0..DELIMITERS.len()).prop_flat_map(|d| {
        let (_, enc) = DELIMITERS[d];
        let reps = enc.len() >= 2;
        let subs = enc.len() >= 4;
        let segment = (
            prop::sample::select(vec!["PID", "OBX", "ZZ1", "NTE", "PV1"]),
            prop::collection::vec(field(reps, subs), 0..=8),
            prop::sample::select(vec!["\r", "\n", "\r\n"]),
        )
            .prop_map(|(id, fields, end)| (id.to_owned(), fields, end.to_owned()));
        (
            prop::collection::vec(field(reps, subs), 0..=10),
            prop::sample::select(vec!["\r", "\n", "\r\n"]),
            prop::collection::vec(segment, 0..=6),
            prop::sample::select(vec!["", "\r", "\n"]),
        )
            .prop_map(move |(msh_fields, msh_end, mut rest, last_end)| {
                let mut segments = vec![("MSH".to_owned(), msh_fields, msh_end.to_owned())];
                segments.append(&mut rest);
                if let Some(last) = segments.last_mut() {
                    last.2 = last_end.to_owned();
                }
                Generated {
                    delimiters: (DELIMITERS[d].0, DELIMITERS[d].1.to_owned()),
                    segments,
                }
            })
    })
}

fn separators(g: &Generated) -> (char, char, Option<char>, Option<char>) {
    let enc: Vec<char> = g.delimiters.1.chars().collect();
    (
        g.delimiters.0,
        enc[0],
        enc.get(1).copied(),
        enc.get(3).copied(),
    )
}

fn serialise(g: &Generated) -> Vec<u8> {
    let (f, c, r, s) = separators(g);
    let join = |parts: Vec<String>, sep: Option<char>| -> String {
        parts.join(&sep.map(String::from).unwrap_or_default())
    };
    let field_text = |field: &Field| -> String {
        let reps = field
            .iter()
            .map(|rep| {
                let comps = rep.iter().map(|comp| join(comp.clone(), s)).collect();
                join(comps, Some(c))
            })
            .collect();
        join(reps, r)
    };
    let mut out = String::new();
    for (i, (id, fields, end)) in g.segments.iter().enumerate() {
        out.push_str(id);
        if i == 0 {
            out.push(f);
            out.push_str(&g.delimiters.1);
        }
        for field in fields {
            out.push(f);
            out.push_str(&field_text(field));
        }
        out.push_str(end);
    }
    out.into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn serialised_messages_parse_back_to_what_was_written(g in generated()) {
        let bytes = serialise(&g);
        let m = Message::parse(&bytes).expect("a generated message parses");
        prop_assert_eq!(m.segment_count(), g.segments.len());
        let mut seen = std::collections::HashMap::new();
        for (i, (id, fields, _)) in g.segments.iter().enumerate() {
            let occurrence = {
                let n = seen.entry(id.clone()).or_insert(0);
                *n += 1;
                *n
            };
            let segment = m.segment_at_index(i).expect("segment");
            prop_assert_eq!(segment.id_str(), id.as_str());
            let first = if i == 0 { 3 } else { 1 };
            prop_assert_eq!(segment.field_count(), fields.len() + first - 1);
            for (k, field) in fields.iter().enumerate() {
                let n = k + first;
                for (r, rep) in field.iter().enumerate() {
                    for (c, comp) in rep.iter().enumerate() {
                        for (s, leaf) in comp.iter().enumerate() {
                            let path = format!("{id}[{occurrence}]-{n}({}).{}.{}", r + 1, c + 1, s + 1);
                            let got = m.get(&path).expect("path");
                            prop_assert_eq!(got, Some(leaf.as_bytes()), "{}", path);
                        }
                    }
                }
            }
        }
        // Serialising what was parsed gives back the input: the bytes themselves, the edit
        // buffer, and the structure written out again through the JSON form.
        prop_assert_eq!(m.as_bytes(), &bytes[..]);
        let buf = MessageBuf::parse(bytes.clone()).expect("buf");
        prop_assert_eq!(buf.as_bytes(), &bytes[..]);
        prop_assert_eq!(json::from_json(&json::to_json(&m)).expect("json"), bytes.clone());
        let text = json::to_json_string(&m);
        prop_assert_eq!(json::from_json_str(&text).expect("json text"), bytes);
    }
}
