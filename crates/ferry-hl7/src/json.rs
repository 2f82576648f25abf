//! The lossless JSON form of a message: HL7 → JSON → HL7 gives back the same bytes.
//!
//! ```json
//! {
//!   "format": "ferry-hl7/1",
//!   "encoding": "utf-8",
//!   "terminator": "\r",
//!   "segments": [
//!     { "id": "MSH", "fields": ["|", "^~\\&", "HIS", "GH", "", "", "20261125", "",
//!                               [["ADT", "A01", "ADT_A01"]], "MSG1", "P", "2.5.1"] },
//!     { "id": "PID", "fields": ["1", "", [["42", "", "", [["GH", "x"]]]], "", ["A", "B"]] }
//!   ]
//! }
//! ```
//!
//! - `fields[i]` is field `i + 1` (HL7 numbering; for MSH, `fields[0]` is MSH-1, the field
//!   separator, and `fields[1]` MSH-2, the encoding characters, both kept as plain strings).
//! - A field is a string when it holds no separator, otherwise **a list of repetitions**.
//!   A repetition is a string or **a list of components**; a component is a string or **a
//!   list of subcomponents**. So `[["DOE","JOHN"]]` is one repetition of two components, and
//!   `["A","B"]` two repetitions.
//! - Strings are the raw ER7 text, escape sequences included (`\F\` stays `\F\`), so that
//!   nothing is decoded that could not be encoded back the same way. Read decoded text
//!   through [`Message::get_str`].
//! - `encoding` is `utf-8` when the message bytes are valid UTF-8; otherwise `latin-1`, and
//!   every character U+0000–U+00FF of every string stands for one byte, so bytes in any
//!   charset survive. (Decoding by MSH-18 is a separate step.)
//! - `terminator` is what ends the first segment (CR, LF or CRLF). A segment whose end
//!   differs (a mixed file, blank lines, a message without a final terminator) carries
//!   `"end"`. Bytes before MSH (a byte-order mark, whitespace) are in `"prefix"`.
//!
//! [`to_json_annotated`] adds, from the [dictionary](crate::dictionary) of the message's
//! version, each segment's `"name"` and a `"field_names"` list beside `"fields"` (`null` where
//! the dictionary has no name, as for Z-segments). They are for people and tools reading the
//! JSON; [`from_json`] accepts and ignores them.
//!
//! [`from_json`] refuses JSON that does not describe a message exactly: a leaf holding a
//! separator of its level, a segment id that is not one, text hidden in `end` or `prefix`.

use serde_json::{Map, Value, json};

use crate::escape::Scan;
use crate::message::{Delimiters, Message, index, positions, split_parts};

/// The `format` marker of the JSON form.
pub const FORMAT: &str = "ferry-hl7/1";

/// Why JSON is not a message in the lossless form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {reason}")]
pub struct JsonError {
    /// Where in the JSON (for example `segments[2].fields[4][0]`).
    pub at: String,
    /// What is wrong.
    pub reason: String,
}

fn err(at: impl Into<String>, reason: impl Into<String>) -> JsonError {
    JsonError {
        at: at.into(),
        reason: reason.into(),
    }
}

/// How strings map to bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Utf8,
    Latin1,
}

fn text(bytes: &[u8], encoding: Encoding) -> String {
    match encoding {
        Encoding::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
        Encoding::Latin1 => bytes.iter().map(|b| char::from(*b)).collect(),
    }
}

fn split(bytes: &[u8], sep: Option<u8>, scan: Scan) -> Vec<&[u8]> {
    match sep {
        Some(s) => split_parts(bytes, s, scan).collect(),
        None => vec![bytes],
    }
}

/// A leaf, or a list of the next level down when there are separators.
fn level(bytes: &[u8], seps: &[Option<u8>], scan: Scan, encoding: Encoding) -> Value {
    let Some((sep, deeper)) = seps.split_first() else {
        return Value::String(text(bytes, encoding));
    };
    let parts = split(bytes, *sep, scan);
    if parts.len() == 1 {
        // No separator at this level: look one level down, but a single part at a deeper
        // level must be wrapped so that the list depth tells the level.
        return match level(bytes, deeper, scan, encoding) {
            Value::String(s) => Value::String(s),
            inner => Value::Array(vec![inner]),
        };
    }
    Value::Array(
        parts
            .into_iter()
            .map(|p| level(p, deeper, scan, encoding))
            .collect(),
    )
}

/// The JSON form of a message.
pub fn to_json(message: &Message<'_>) -> Value {
    let bytes = message.as_bytes();
    let encoding = if std::str::from_utf8(bytes).is_ok() {
        Encoding::Utf8
    } else {
        Encoding::Latin1
    };
    let d = *message.delimiters();
    let seps = [d.repetition, Some(d.component), d.subcomponent];
    let spans = message.spans();
    let end_of = |i: usize| -> &[u8] {
        let from = spans[i].end as usize;
        let to = spans.get(i + 1).map_or(bytes.len(), |s| s.start as usize);
        bytes.get(from..to).unwrap_or_default()
    };
    let terminator = if spans.is_empty() {
        &b"\r"[..]
    } else {
        end_of(0)
    };
    let mut segments = Vec::with_capacity(spans.len());
    for (i, segment) in message.segments().enumerate() {
        let is_msh = segment.id() == b"MSH";
        let fields: Vec<Value> = (1..=segment.field_count())
            .map(|n| {
                let raw = segment.field(n).unwrap_or_default();
                if is_msh && n <= 2 {
                    Value::String(text(raw, encoding))
                } else {
                    // A field is a string or a list of repetitions: force the outer list
                    // when the field has components but a single repetition.
                    level(raw, &seps, message.scan(), encoding)
                }
            })
            .collect();
        let mut object = Map::new();
        object.insert("id".into(), Value::String(segment.id_str().to_owned()));
        object.insert("fields".into(), Value::Array(fields));
        let end = end_of(i);
        if end != terminator {
            object.insert("end".into(), Value::String(text(end, encoding)));
        }
        segments.push(Value::Object(object));
    }
    let mut top = Map::new();
    top.insert("format".into(), json!(FORMAT));
    top.insert(
        "encoding".into(),
        json!(match encoding {
            Encoding::Utf8 => "utf-8",
            Encoding::Latin1 => "latin-1",
        }),
    );
    let prefix_len = spans.first().map_or(0, |s| s.start as usize);
    if prefix_len > 0 {
        top.insert(
            "prefix".into(),
            Value::String(text(&bytes[..prefix_len], encoding)),
        );
    }
    top.insert(
        "terminator".into(),
        Value::String(text(terminator, encoding)),
    );
    top.insert("segments".into(), Value::Array(segments));
    Value::Object(top)
}

/// [`to_json`] with segment and field names from the dictionary of the message's version
/// (MSH-12; 2.5.1 when missing or unknown, as validation does).
pub fn to_json_annotated(message: &Message<'_>) -> Value {
    use crate::dictionary::{self, Version};
    let version = message
        .version()
        .and_then(Version::parse)
        .unwrap_or(Version::V2_5_1);
    let mut value = to_json(message);
    if let Some(segments) = value.get_mut("segments").and_then(Value::as_array_mut) {
        for segment in segments.iter_mut() {
            let Some(object) = segment.as_object_mut() else {
                continue;
            };
            let id = object
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let count = object
                .get("fields")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let def = dictionary::segment(version, &id);
            let names: Vec<Value> = (1..=count)
                .map(|n| {
                    def.and_then(|d| d.field(n))
                        .map_or(Value::Null, |f| Value::String(f.name.to_owned()))
                })
                .collect();
            if let Some(d) = def {
                object.insert("name".into(), Value::String(d.name.to_owned()));
            }
            object.insert("field_names".into(), Value::Array(names));
        }
    }
    if let Some(top) = value.as_object_mut() {
        top.insert("version".into(), Value::String(version.as_str().to_owned()));
    }
    value
}

/// The JSON form as pretty-printed text.
pub fn to_json_string(message: &Message<'_>) -> String {
    serde_json::to_string_pretty(&to_json(message)).unwrap_or_default()
}

/// Rebuild the message bytes from the JSON form.
pub fn from_json_str(text: &str) -> Result<Vec<u8>, JsonError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| err("(document)", format!("not JSON: {e}")))?;
    from_json(&value)
}

struct Writer {
    out: Vec<u8>,
    encoding: Encoding,
}

impl Writer {
    fn put(&mut self, at: &str, s: &str) -> Result<(), JsonError> {
        match self.encoding {
            Encoding::Utf8 => self.out.extend_from_slice(s.as_bytes()),
            Encoding::Latin1 => {
                for ch in s.chars() {
                    let b = u8::try_from(u32::from(ch)).map_err(|_| {
                        err(
                            at,
                            format!("`{ch}` is not a byte (encoding is latin-1: U+0000–U+00FF)"),
                        )
                    })?;
                    self.out.push(b);
                }
            }
        }
        Ok(())
    }
}

fn str_at<'v>(v: &'v Value, at: &str) -> Result<&'v str, JsonError> {
    v.as_str().ok_or_else(|| err(at, "expected a string"))
}

/// Write a field (or a deeper level) from its JSON value.
fn write_level(
    w: &mut Writer,
    v: &Value,
    seps: &[Option<u8>],
    forbidden: &[u8],
    scan: Scan,
    at: &str,
) -> Result<(), JsonError> {
    match v {
        Value::String(s) => {
            if let Some(c) = forbidden
                .iter()
                .find(|f| positions(s.as_bytes(), **f, scan).next().is_some())
            {
                return Err(err(
                    at,
                    format!("`{}` is a separator at this level or above", *c as char),
                ));
            }
            w.put(at, s)
        }
        Value::Array(parts) => {
            let Some((sep, deeper)) = seps.split_first() else {
                return Err(err(at, "nested too deep (below subcomponents)"));
            };
            if parts.is_empty() {
                return Err(err(at, "an empty list (write \"\" for an empty value)"));
            }
            if sep.is_none() && parts.len() > 1 {
                return Err(err(
                    at,
                    "a list of several values at a level whose separator the message does not declare",
                ));
            }
            for (i, part) in parts.iter().enumerate() {
                if let (true, Some(sep)) = (i > 0, sep) {
                    w.out.push(*sep);
                }
                write_level(w, part, deeper, forbidden, scan, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        _ => Err(err(at, "expected a string or a list")),
    }
}

/// Rebuild the message bytes from the JSON form (see the module docs).
pub fn from_json(value: &Value) -> Result<Vec<u8>, JsonError> {
    // Which bytes are delimiters depends on the charset and, when MSH-18 is empty, on whether
    // the message holds an ISO-2022 escape anywhere: let the parser decide on a draft of the
    // bytes, then write them again checking every leaf under that rule.
    let draft = write_message(value, None)?;
    let scan = index(&draft).map_or(Scan::Plain, |ix| ix.scan);
    write_message(value, Some(scan))
}

/// Write the message bytes; with `checked`, refuse leaves holding a separator (found under
/// that scan) and check that the bytes read back as the segments and fields given.
fn write_message(value: &Value, checked: Option<Scan>) -> Result<Vec<u8>, JsonError> {
    let top = value
        .as_object()
        .ok_or_else(|| err("(document)", "expected an object"))?;
    for key in top.keys() {
        if !matches!(
            key.as_str(),
            "format" | "encoding" | "prefix" | "terminator" | "segments" | "version"
        ) {
            return Err(err(key.as_str(), "unknown key"));
        }
    }
    match top.get("format").and_then(Value::as_str) {
        Some(FORMAT) | None => {}
        Some(other) => return Err(err("format", format!("`{other}` is not `{FORMAT}`"))),
    }
    let encoding = match top.get("encoding").and_then(Value::as_str) {
        None | Some("utf-8") => Encoding::Utf8,
        Some("latin-1") => Encoding::Latin1,
        Some(other) => {
            return Err(err(
                "encoding",
                format!("`{other}` (expected utf-8 or latin-1)"),
            ));
        }
    };
    let terminator = match top.get("terminator") {
        None => "\r",
        Some(t) => str_at(t, "terminator")?,
    };
    if !terminator.chars().all(|c| c <= ' ') {
        return Err(err("terminator", "only line ends and whitespace"));
    }
    let segments = top
        .get("segments")
        .and_then(Value::as_array)
        .ok_or_else(|| err("segments", "expected a list of segments"))?;
    let mut w = Writer {
        out: Vec::new(),
        encoding,
    };
    if let Some(prefix) = top.get("prefix") {
        w.put("prefix", str_at(prefix, "prefix")?)?;
        let bytes = w.out.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(&w.out);
        if !bytes.iter().all(|b| *b <= b' ') {
            return Err(err(
                "prefix",
                "only a byte-order mark or whitespace may precede MSH",
            ));
        }
    }
    let mut delimiters = Delimiters::default();
    let scan = checked.unwrap_or_default();
    for (i, segment) in segments.iter().enumerate() {
        let at = format!("segments[{i}]");
        let object = segment
            .as_object()
            .ok_or_else(|| err(&at, "expected an object"))?;
        for key in object.keys() {
            if !matches!(
                key.as_str(),
                "id" | "fields" | "end" | "name" | "field_names"
            ) {
                return Err(err(format!("{at}.{key}"), "unknown key"));
            }
        }
        let id = str_at(
            object.get("id").unwrap_or(&Value::Null),
            &format!("{at}.id"),
        )?;
        if id.len() != 3
            || !id
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err(err(
                format!("{at}.id"),
                format!("`{id}` is not a segment id"),
            ));
        }
        if i == 0 && id != "MSH" {
            return Err(err(format!("{at}.id"), "the first segment must be MSH"));
        }
        let fields = object
            .get("fields")
            .and_then(Value::as_array)
            .ok_or_else(|| err(format!("{at}.fields"), "expected a list"))?;
        w.put(&at, id)?;
        let is_msh = id == "MSH";
        if i == 0 {
            let sep = fields
                .first()
                .and_then(Value::as_str)
                .ok_or_else(|| err(format!("{at}.fields[0]"), "MSH-1 must be a string"))?;
            let enc = fields.get(1).and_then(Value::as_str).unwrap_or("");
            let header = format!("MSH{sep}{enc}{sep}");
            let parsed = crate::message::index(header.as_bytes())
                .map_err(|e| err(format!("{at}.fields[0..2]"), e.to_string()))?;
            delimiters = parsed.delimiters;
        }
        let d = delimiters;
        let seps = [d.repetition, Some(d.component), d.subcomponent];
        for (n, field) in fields.iter().enumerate() {
            let fat = format!("{at}.fields[{n}]");
            // MSH-1 is the separator after the id, and MSH-2 follows it directly.
            if is_msh && n <= 1 {
                w.put(&fat, str_at(field, &fat)?)?;
                continue;
            }
            w.out.push(d.field);
            // Every separator is refused in a leaf: each level's own separator is written
            // between list items, never inside a string.
            let mut forbidden = Vec::new();
            if checked.is_some() {
                forbidden.push(d.field);
                forbidden.extend(seps.iter().flatten());
            }
            write_level(&mut w, field, &seps, &forbidden, scan, &fat)?;
        }
        let end = match object.get("end") {
            Some(e) => str_at(e, &format!("{at}.end"))?,
            None => terminator,
        };
        if !end.chars().all(|c| c <= ' ') {
            return Err(err(format!("{at}.end"), "only line ends and whitespace"));
        }
        if i + 1 < segments.len() && !end.contains(['\r', '\n']) {
            return Err(err(
                format!("{at}.end"),
                "must end the segment with CR or LF",
            ));
        }
        w.put(&format!("{at}.end"), end)?;
    }
    if checked.is_none() {
        return Ok(w.out);
    }
    // The bytes must read back as exactly these segments (a line break inside a leaf could
    // otherwise start a new one).
    let parsed = index(&w.out).map_err(|e| err("segments", e.to_string()))?;
    let field_counts_differ = parsed.segments.iter().zip(segments).any(|(span, segment)| {
        let is_msh = bytes_at(&w.out, span.start as usize) == b"MSH";
        let seps = (span.sep_end - span.sep_start) as usize;
        let count = if is_msh && seps > 0 { seps + 1 } else { seps };
        let declared = segment
            .get("fields")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        count != declared
    });
    if parsed.segments.len() == segments.len() && field_counts_differ {
        return Err(err(
            "segments",
            "the text does not read back with the fields given: a value holds a field separator",
        ));
    }
    if parsed.segments.len() != segments.len() {
        return Err(err(
            "segments",
            format!(
                "the text reads back as {} segments, not {}: a value holds a line break followed by a segment id",
                parsed.segments.len(),
                segments.len()
            ),
        ));
    }
    Ok(w.out)
}

fn bytes_at(bytes: &[u8], at: usize) -> &[u8] {
    bytes.get(at..at + 3).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_as_documented() {
        let raw = b"MSH|^~\\&|HIS|GH|||20261125||ADT^A01^ADT_A01|MSG1|P|2.5.1\rPID|1||42^^^GH&x||A~B|\\F\\\r";
        let m = Message::parse(raw).expect("parse");
        let j = to_json(&m);
        assert_eq!(j["segments"][0]["fields"][0], "|");
        assert_eq!(j["segments"][0]["fields"][1], "^~\\&");
        assert_eq!(
            j["segments"][0]["fields"][8],
            json!([["ADT", "A01", "ADT_A01"]])
        );
        assert_eq!(
            j["segments"][1]["fields"][2],
            json!([["42", "", "", ["GH", "x"]]])
        );
        assert_eq!(j["segments"][1]["fields"][4], json!(["A", "B"]));
        assert_eq!(j["segments"][1]["fields"][5], "\\F\\");
        assert_eq!(from_json(&j).expect("back"), raw);
    }

    #[test]
    fn annotated_form_names_fields_and_still_round_trips() {
        let raw = b"MSH|^~\\&|HIS|GH|||20261125||ADT^A01^ADT_A01|MSG1|P|2.5.1\rPID|1||42||DOE^JOHN\rZPI|x\r";
        let m = Message::parse(raw).expect("parse");
        let j = to_json_annotated(&m);
        assert_eq!(j["version"], "2.5.1");
        assert_eq!(j["segments"][1]["name"], "Patient Identification");
        assert_eq!(j["segments"][1]["field_names"][4], "Patient Name");
        assert_eq!(j["segments"][0]["field_names"][9], "Message Control ID");
        assert_eq!(j["segments"][2]["field_names"][0], Value::Null);
        assert!(j["segments"][2].get("name").is_none());
        assert_eq!(from_json(&j).expect("back"), raw);
    }

    #[test]
    fn undeclared_iso_2022_text_round_trips() {
        // Fuzz finding (hl7_parse): MSH-18 empty, ISO-2022-JP text in PID with `&` inside a
        // two-byte run (ウ = `%&`). The parser scans the message shift-aware (the escape says
        // what the bytes are); from_json used to decide from the MSH segment alone, saw no
        // escape there, and refused its own output.
        let raw = b"MSH|^~\\&|A|B|||||ADT^A01|1|P|2.5\rPID|1||9||\x1b$B%?%m%&\x1b(B^X\r";
        let m = Message::parse(raw).expect("parse");
        assert_eq!(
            m.get("PID-5.1").expect("path"),
            Some(&b"\x1b$B%?%m%&\x1b(B"[..])
        );
        assert_eq!(from_json(&to_json(&m)).expect("back"), raw);
    }

    #[test]
    fn iso_2022_text_inside_msh_round_trips() {
        // Fuzz finding (hl7_parse): MSH-18 empty, ISO-2022-JP text with a `~` byte inside a
        // two-byte run in MSH itself (MSH-20). Its leaves were checked before the scan rule
        // was known.
        let raw = b"MSH|^~\\&|A|B|||||ADT^A01|1|P|2.5||||||||I^\x1b$BF~1!\x1b(B^HL7\rPID|1\r";
        let m = Message::parse(raw).expect("parse");
        assert_eq!(
            m.get("MSH-20.2").expect("path"),
            Some(&b"\x1b$BF~1!\x1b(B"[..])
        );
        assert_eq!(from_json(&to_json(&m)).expect("back"), raw);
    }

    #[test]
    fn keeps_odd_line_ends_prefix_and_non_utf8_bytes() {
        let raw = b"\xEF\xBB\xBF\nMSH|^~\\&|A|\xE9\r\nPID|1\n\nOBX|1";
        let m = Message::parse(raw).expect("parse");
        let j = to_json(&m);
        assert_eq!(j["encoding"], "latin-1");
        assert_eq!(from_json(&j).expect("back"), raw);
        let text = to_json_string(&m);
        assert_eq!(from_json_str(&text).expect("back"), raw);
    }

    #[test]
    fn refuses_json_that_is_not_a_message() {
        let ok = json!({"segments": [{"id": "MSH", "fields": ["|", "^~\\&", "A"]}]});
        assert_eq!(from_json(&ok).expect("ok"), b"MSH|^~\\&|A\r");
        for (bad, at) in [
            (
                json!({"segments": [{"id": "PID", "fields": []}]}),
                "segments[0].id",
            ),
            (
                json!({"segments": [{"id": "MSH", "fields": ["|", "^~\\&", "A|B"]}]}),
                "segments[0].fields[2]",
            ),
            (
                json!({"segments": [{"id": "MSH", "fields": ["|", "^~\\&", [["a", 1]]]}]}),
                "segments[0].fields[2][0][1]",
            ),
            (
                json!({"segments": [{"id": "MSH", "fields": ["|", "^~\\&"]}, {"id": "pid", "fields": []}]}),
                "segments[1].id",
            ),
            (
                json!({"segments": [{"id": "MSH", "fields": ["|", "^~\\&"], "end": "x"}]}),
                "segments[0].end",
            ),
            (
                json!({"segments": [{"id": "MSH", "fields": ["|", "^~\\&"], "end": ""}, {"id": "PID", "fields": []}]}),
                "segments[0].end",
            ),
            (
                json!({"segments": [{"id": "MSH", "fields": ["|", "^~\\&", "a\rPID"]}]}),
                "segments",
            ),
            (json!({"segments": [], "extra": 1}), "extra"),
            (
                json!({"encoding": "latin-1", "segments": [{"id": "MSH", "fields": ["|", "^~\\&", "€"]}]}),
                "segments[0].fields[2]",
            ),
        ] {
            let e = from_json(&bad).expect_err("must be refused");
            assert_eq!(e.at, at, "{e}");
        }
    }
}
