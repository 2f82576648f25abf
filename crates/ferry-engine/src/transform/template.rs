//! Templates for the HTTP side of the bridge: [`Hl7Template`] writes an HL7 message from a
//! JSON document, [`JsonTemplate`] writes a JSON document from an HL7 message.
//!
//! # Placeholders
//!
//! Both kinds use `{{ … }}`. Inside the braces: a source, then filters each introduced by
//! `|`: `{{ patient.birthDate | dtm }}`, `{{PID-5.1 | upper | default("UNKNOWN")}}`. The `|`
//! is a filter separator **only inside `{{ }}`**; outside the braces, in an HL7 template, it
//! is the field separator as always, so the two cannot be confused. A filter argument is a
//! double-quoted string (`\"` and `\\` escape inside it) and may hold `|` and `}}`. There is
//! no way to write a literal `{{` in a template's text; HL7 and JSON templates do not need one
//! (values that contain `{{` come from the data and are never read as placeholders).
//!
//! # HL7 templates (JSON → HL7)
//!
//! An HL7 message, one segment per line (line ends in the template may be LF, CRLF or CR;
//! the output always ends segments with `\r`). The first line is the MSH segment, whose
//! MSH-1 and MSH-2 must be written literally: they are the delimiters that every value is
//! escaped with (`|` in a value becomes `\F\`, `^` `\S\`, a line break `\.br\` …). Blank lines
//! are skipped. MSH-18 must be literal too: the output is written in the charset it declares
//! (`8859/1` …; a character that charset lacks is an error), and in UTF-8 when it is empty
//! or `UNICODE UTF-8`. Sources:
//!
//! - `a.b[0].c`: a dotted path into the JSON value, with array indexes; inside an `each`
//!   block it is relative to the current element; `$.a.b` starts at the document root and
//!   `this` is the current element itself. Strings are written as they are, numbers and
//!   booleans as JSON writes them. A missing value (absent key, index out of range, `null`)
//!   is an error naming the path, unless the placeholder ends with `?` (`{{ a.b? }}`, also
//!   allowed after the filters) or a `default` filter supplies one; then it is empty. An
//!   object or array is an error.
//! - `now`: the current time as an HL7 DTM in UTC (`20261202143000+0000`).
//! - `control_id`: a value unique within the process for MSH-10: the Unix time in
//!   milliseconds followed by a 7-digit counter (20 characters, the v2.5 length of MSH-10).
//! - `@index` / `@index1`: the 0-based / 1-based position of the current `each` element
//!   (`@index1` is what OBX-1, the set id, wants).
//!
//! Filters: `dtm` (an ISO 8601 date or date-time such as `2026-12-02` or
//! `2026-12-02T14:30:00+01:00` becomes `20261202` / `20261202143000+0100`; `Z` becomes
//! `+0000`; fractions are kept to 4 digits, the most DTM allows; a value that is already an
//! HL7 DTM passes), `upper`, `lower`, `default("…")` (used when the value is missing or
//! empty).
//!
//! Repetition: a line that is exactly `{{#each items}}` starts a block and a line that is
//! exactly `{{/each}}` ends it; the segment lines inside are written once per element of the
//! array at `items` (an error if it is missing or not an array, unless written
//! `{{#each items?}}`). Blocks nest.
//!
//! ```text
//! MSH|^~\&|FERRY|HOSP|||{{ now }}||ORU^R01^ORU_R01|{{ control_id }}|P|2.5.1
//! PID|1||{{ patient.id }}^^^HOSP^MR||{{ patient.family | upper }}^{{ patient.given? }}
//! {{#each results}}
//! OBX|{{ @index1 }}|NM|{{ code }}||{{ value }}|{{ unit? }}|||||F|||{{ time | dtm }}
//! {{/each}}
//! ```
//!
//! # JSON templates (HL7 → JSON)
//!
//! A JSON document. Strings hold placeholders whose source is an HL7 path (`PID-5.1`,
//! `OBX[2]-5`, `PID-3(2).1`). A string that is exactly one placeholder (`"{{PID-7}}"`)
//! becomes the decoded text of the value (escapes decoded, MSH-18 charset read), or `null`
//! when the value is absent, empty or the HL7 null `""`. Any other string interpolates, with
//! `null` as the empty text. Keys and non-string values are copied; key order is kept.
//!
//! Errors name the template, the placeholder and what is wrong, never the value itself: they
//! end up in logs and in the store's error column, and message content (a birth date, a
//! name) must not.
//!
//! Filters: `date` (an HL7 DTM becomes ISO 8601: `20261202143000+0100` →
//! `2026-12-02T14:30:00+01:00`, `20261202` → `2026-12-02`), `number` (the value as a JSON
//! number), `upper`, `lower`, `trim` (surrounding white space), `default("…")` (used when the
//! value is absent or empty). `date` and `number` on a value that is not a date-time or a
//! number are **errors**, not `null`: a template that expects a number and gets text
//! describes a message it was not written for, and that should be visible, not a silent
//! `null` downstream. A missing value passes through them as `null`.
//!
//! Repeating groups: an object `{ "$each": "OBX", "item": … }` (exactly those two keys)
//! becomes an array with one `item` per OBX segment of the message; inside `item`, paths on
//! the OBX segment (`{{OBX-5}}`) refer to the current one, and `{{-5}}` is shorthand for
//! field 5 of the current segment. `"$each": "PID-3"` iterates over the repetitions of a
//! field instead: inside, `{{PID-3.1}}` refers to the current repetition, and `{{.1}}` is
//! shorthand for its component 1 (`{{.}}` for the whole repetition). Inside a segment each,
//! `"$each": "-5"` iterates the repetitions of field 5 of the current segment. An absent or
//! empty segment or field gives an empty array.
//!
//! ```json
//! { "mrn": "{{PID-3.1}}", "name": "{{PID-5.2}} {{PID-5.1}}", "born": "{{PID-7 | date}}",
//!   "ids": { "$each": "PID-3", "item": { "id": "{{.1}}", "authority": "{{.4}}" } },
//!   "results": { "$each": "OBX", "item": { "code": "{{-3.1}}", "value": "{{-5 | number}}" } } }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_hl7::charset::Charset;
use ferry_hl7::{Delimiters, Message, Path, escape, types::Dtm};
use serde_json::Value;

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// The template (its file name).
    pub template: String,
    /// What went wrong, with the line (HL7 templates) or the placeholder.
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "template {}: {}", self.template, self.message)
    }
}

impl std::error::Error for TemplateError {}

// ---------------------------------------------------------------------------------------------
// Placeholder syntax shared by both kinds.

/// A filter after `|`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Filter {
    Dtm,
    Date,
    Number,
    Upper,
    Lower,
    Trim,
    Default(String),
}

/// The inside of one `{{ … }}`: the source text, whether it ends with `?`, the filters.
#[derive(Debug, Clone)]
struct Expr {
    source: String,
    optional: bool,
    filters: Vec<Filter>,
}

/// Split `text` into literal text and placeholder insides. Errors say what is wrong.
fn scan(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(Piece::Text(&rest[..open]));
        }
        let inner = &rest[open + 2..];
        let close = find_close(inner).ok_or("a `{{` without its `}}`")?;
        pieces.push(Piece::Placeholder(&inner[..close]));
        rest = &inner[close + 2..];
    }
    if rest.contains("}}") {
        return Err("a `}}` without its `{{`".to_owned());
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

/// The offset of the `}}` closing a placeholder, skipping quoted filter arguments.
fn find_close(inner: &str) -> Option<usize> {
    let bytes = inner.as_bytes();
    let mut quoted = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'}' if !quoted && bytes.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Split on `|` outside quotes.
fn split_filters(inner: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '|' if !quoted => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
}

/// Parse a placeholder's inside; `allowed` names the filters this kind of template has.
fn parse_expr(inner: &str, allowed: &[&str]) -> Result<Expr, String> {
    let parts = split_filters(inner);
    let mut optional = false;
    let mut source = parts.first().map_or("", |s| s.trim());
    if let Some(s) = source.strip_suffix('?') {
        optional = true;
        source = s.trim_end();
    }
    if source.is_empty() {
        return Err(format!("`{{{{{inner}}}}}`: the placeholder names nothing"));
    }
    let mut filters = Vec::new();
    let count = parts.len();
    for (i, part) in parts.iter().enumerate().skip(1) {
        let mut part = part.trim();
        if i + 1 == count
            && let Some(p) = part.strip_suffix('?')
        {
            optional = true;
            part = p.trim_end();
        }
        filters.push(parse_filter(part, allowed)?);
    }
    Ok(Expr {
        source: source.to_owned(),
        optional,
        filters,
    })
}

fn parse_filter(text: &str, allowed: &[&str]) -> Result<Filter, String> {
    let (name, arg) = match text.split_once('(') {
        Some((name, rest)) => {
            let arg = rest
                .trim()
                .strip_suffix(')')
                .ok_or_else(|| format!("filter `{text}`: missing `)`"))?;
            (
                name.trim(),
                Some(string_literal(arg.trim()).map_err(|e| format!("filter `{text}`: {e}"))?),
            )
        }
        None => (text, None),
    };
    if !allowed.contains(&name) {
        return Err(format!(
            "unknown filter `{name}`; this template has {}",
            allowed
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let filter = match (name, arg) {
        ("default", Some(arg)) => Filter::Default(arg),
        ("default", None) => return Err("`default` takes a value: default(\"…\")".to_owned()),
        (_, Some(_)) => return Err(format!("filter `{name}` takes no argument")),
        ("dtm", None) => Filter::Dtm,
        ("date", None) => Filter::Date,
        ("number", None) => Filter::Number,
        ("upper", None) => Filter::Upper,
        ("lower", None) => Filter::Lower,
        (_, None) => Filter::Trim,
    };
    Ok(filter)
}

/// A double-quoted string with `\"` and `\\` escapes.
fn string_literal(text: &str) -> Result<String, String> {
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|_| text.len() >= 2)
        .ok_or("the argument is a double-quoted string")?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('"' | '\\')) => out.push(e),
                _ => return Err("only `\\\"` and `\\\\` escape inside a string".to_owned()),
            },
            '"' => return Err("a `\"` inside the string must be written `\\\"`".to_owned()),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Apply the text filters shared by both kinds (`upper`, `lower`, `trim`, `default`). `None`
/// is a missing value.
fn text_filter(filter: &Filter, value: Option<String>) -> Option<String> {
    match filter {
        Filter::Upper => value.map(|v| v.to_uppercase()),
        Filter::Lower => value.map(|v| v.to_lowercase()),
        Filter::Trim => value.map(|v| v.trim().to_owned()),
        Filter::Default(d) => match value {
            Some(v) if !v.is_empty() => Some(v),
            _ => Some(d.clone()),
        },
        Filter::Dtm | Filter::Date | Filter::Number => value,
    }
}

// ---------------------------------------------------------------------------------------------
// Dates.

/// An ISO 8601 date or date-time as an HL7 DTM. A value that already is a DTM passes.
pub(crate) fn iso_to_dtm(text: &str) -> Result<String, String> {
    let t = text.trim();
    let bad = || {
        "not an ISO 8601 date or date-time (YYYY[-MM[-DD[THH:MM[:SS[.S]]]]] with Z or ±HH:MM)"
            .to_owned()
    };
    if t.bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'+' || b == b'-')
        && !t.contains('-')
        && Dtm::parse(t.as_bytes()).is_ok()
    {
        return Ok(t.to_owned());
    }
    let b = t.as_bytes();
    let mut out = String::with_capacity(24);
    let mut i = 0;
    let digits = |i: &mut usize, n: usize, out: &mut String| -> Result<(), String> {
        let part = b.get(*i..*i + n).ok_or_else(bad)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        out.extend(part.iter().map(|d| char::from(*d)));
        *i += n;
        Ok(())
    };
    digits(&mut i, 4, &mut out)?;
    // Date part: -MM, -DD.
    for _ in 0..2 {
        if b.get(i) == Some(&b'-') {
            i += 1;
            digits(&mut i, 2, &mut out)?;
        } else {
            break;
        }
    }
    if matches!(b.get(i), Some(b'T' | b't' | b' ')) && out.len() == 8 {
        i += 1;
        digits(&mut i, 2, &mut out)?;
        if b.get(i) == Some(&b':') {
            i += 1;
            digits(&mut i, 2, &mut out)?;
            if b.get(i) == Some(&b':') {
                i += 1;
                digits(&mut i, 2, &mut out)?;
                if matches!(b.get(i), Some(b'.' | b',')) {
                    i += 1;
                    let start = i;
                    while b.get(i).is_some_and(u8::is_ascii_digit) {
                        i += 1;
                    }
                    let fraction = t.get(start..i).unwrap_or_default();
                    if fraction.is_empty() {
                        return Err(bad());
                    }
                    out.push('.');
                    out.push_str(fraction.get(..4).unwrap_or(fraction));
                }
            }
        }
        match b.get(i) {
            None => {}
            Some(b'Z' | b'z') => {
                out.push_str("+0000");
                i += 1;
            }
            Some(sign @ (b'+' | b'-')) => {
                out.push(char::from(*sign));
                i += 1;
                digits(&mut i, 2, &mut out)?;
                if b.get(i) == Some(&b':') {
                    i += 1;
                }
                digits(&mut i, 2, &mut out)?;
            }
            Some(_) => return Err(bad()),
        }
    }
    if i != b.len() {
        return Err(bad());
    }
    Dtm::parse(out.as_bytes()).map_err(|e| match e {
        ferry_hl7::types::DtmError::OutOfRange { part, .. } => {
            format!("not a valid date or date-time: the {part} is out of range")
        }
        _ => bad(),
    })?;
    Ok(out)
}

/// An HL7 DTM as ISO 8601, at the precision it has (`20261202` → `2026-12-02`).
pub(crate) fn dtm_to_iso(text: &str) -> Result<String, String> {
    let dtm = Dtm::parse_lenient(text.as_bytes()).map_err(|e| match e {
        ferry_hl7::types::DtmError::OutOfRange { part, .. } => {
            format!("not a valid HL7 date-time: the {part} is out of range")
        }
        _ => "not an HL7 date-time (YYYY[MM[DD[HH[MM[SS[.S]]]]]][±ZZZZ])".to_owned(),
    })?;
    // The canonical HL7 form: YYYY[MM[DD[HH[MM[SS[.F]]]]]][±ZZZZ].
    let canon = dtm.to_string();
    let (body, zone) = match canon.find(['+', '-']) {
        Some(i) => canon.split_at(i),
        None => (canon.as_str(), ""),
    };
    let (digits, fraction) = match body.split_once('.') {
        Some((d, f)) => (d, Some(f)),
        None => (body, None),
    };
    let part = |r: std::ops::Range<usize>| digits.get(r).unwrap_or_default();
    let mut out = String::with_capacity(32);
    out.push_str(part(0..4));
    for (range, sep) in [
        (4..6, "-"),
        (6..8, "-"),
        (8..10, "T"),
        (10..12, ":"),
        (12..14, ":"),
    ] {
        if digits.len() >= range.end {
            out.push_str(sep);
            out.push_str(part(range));
        }
    }
    if digits.len() == 10 {
        out.push_str(":00");
    }
    if let Some(f) = fraction {
        out.push('.');
        out.push_str(f);
    }
    if let (Some(sign), Some(hh), Some(mm)) = (zone.get(..1), zone.get(1..3), zone.get(3..5)) {
        out.push_str(sign);
        out.push_str(hh);
        out.push(':');
        out.push_str(mm);
    }
    Ok(out)
}

/// Now as an HL7 DTM in UTC.
fn now_dtm() -> String {
    format!("{}+0000", ferry_hl7::ack::timestamp_now())
}

/// A control id unique within the process: Unix milliseconds and a 7-digit counter.
fn control_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) % 10_000_000;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{ms:013}{n:07}")
}

// ---------------------------------------------------------------------------------------------
// HL7 templates.

/// A key of a JSON data path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Name(String),
    Index(usize),
}

/// A dotted path into JSON: `a.b[0].c`, `$.a`, `this`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DataPath {
    text: String,
    from_root: bool,
    keys: Vec<Key>,
}

impl DataPath {
    fn parse(text: &str) -> Result<DataPath, String> {
        let bad = |why: &str| format!("`{text}` is not a data path ({why}); write a.b[0].c");
        let (from_root, rest) = if text == "$" {
            (true, "")
        } else if let Some(r) = text.strip_prefix("$.") {
            (true, r)
        } else if text == "this" {
            (false, "")
        } else {
            (false, text)
        };
        let mut keys = Vec::new();
        if !rest.is_empty() {
            for part in rest.split('.') {
                let (name, mut indexes) = match part.find('[') {
                    Some(i) => (&part[..i], &part[i..]),
                    None => (part, ""),
                };
                if name.is_empty()
                    || name
                        .chars()
                        .any(|c| c.is_whitespace() || matches!(c, ']' | '"' | '{' | '}' | '?'))
                {
                    return Err(bad("an empty or invalid key"));
                }
                keys.push(Key::Name(name.to_owned()));
                while !indexes.is_empty() {
                    let inner = indexes
                        .strip_prefix('[')
                        .ok_or_else(|| bad("text after `]`"))?;
                    let close = inner.find(']').ok_or_else(|| bad("unclosed `[`"))?;
                    let n = inner[..close]
                        .parse::<usize>()
                        .map_err(|_| bad("an index is a number ≥ 0"))?;
                    keys.push(Key::Index(n));
                    indexes = &inner[close + 1..];
                }
            }
        }
        Ok(DataPath {
            text: text.to_owned(),
            from_root,
            keys,
        })
    }

    fn resolve<'v>(&self, root: &'v Value, current: &'v Value) -> Option<&'v Value> {
        let mut v = if self.from_root { root } else { current };
        for key in &self.keys {
            v = match key {
                Key::Name(name) => v.get(name.as_str())?,
                Key::Index(i) => v.get(*i)?,
            };
        }
        (!v.is_null()).then_some(v)
    }
}

#[derive(Debug, Clone)]
enum Hl7Source {
    Data(DataPath),
    Now,
    ControlId,
    Index0,
    Index1,
}

#[derive(Debug, Clone)]
enum Hl7Part {
    Text(String),
    Value {
        source: Hl7Source,
        optional: bool,
        filters: Vec<Filter>,
    },
}

#[derive(Debug, Clone)]
enum Hl7Item {
    Line {
        number: usize,
        parts: Vec<Hl7Part>,
    },
    Each {
        number: usize,
        path: DataPath,
        optional: bool,
        body: Vec<Hl7Item>,
    },
}

/// A JSON → HL7 template (see the module documentation for the syntax).
#[derive(Debug, Clone)]
pub struct Hl7Template {
    origin: String,
    delimiters: Delimiters,
    /// The charset MSH-18 declares (`Ascii` when it is empty: then UTF-8 is written).
    charset: Charset,
    items: Vec<Hl7Item>,
}

const BLOCKS: &str = "blocks are `{{#each path}}` … `{{/each}}`, each on a line of its own";

const HL7_FILTERS: &[&str] = &["dtm", "upper", "lower", "default"];

impl Hl7Template {
    /// Read and parse a template file.
    pub fn load(path: &std::path::Path) -> Result<Hl7Template, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read template {}: {e}", path.display()))?;
        Hl7Template::parse(&text, &path.display().to_string())
    }

    /// Parse template text; `origin` names it in errors. Every syntax error is reported here
    /// (deploy time) with its line.
    pub fn parse(text: &str, origin: &str) -> Result<Hl7Template, String> {
        let err = |line: usize, m: String| format!("template {origin}, line {line}: {m}");
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut stack: Vec<(usize, DataPath, bool, Vec<Hl7Item>)> = Vec::new();
        let mut items: Vec<Hl7Item> = Vec::new();
        let mut delimiters = None;
        let mut charset = Charset::Ascii;
        // Line ends may be LF, CRLF or CR; each counts as one line.
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        for (i, line) in text.split('\n').enumerate() {
            let number = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let trimmed = line.trim();
            if let Some(inner) = trimmed
                .strip_prefix("{{#each")
                .and_then(|r| r.strip_suffix("}}"))
            {
                if delimiters.is_none() {
                    return Err(err(
                        number,
                        "the first segment must be MSH, outside any block".into(),
                    ));
                }
                let mut path = inner.trim();
                let optional = path.ends_with('?');
                path = path.trim_end_matches('?').trim_end();
                let path = DataPath::parse(path).map_err(|m| err(number, m))?;
                stack.push((number, path, optional, std::mem::take(&mut items)));
                continue;
            }
            if trimmed == "{{/each}}" {
                let Some((start, path, optional, outer)) = stack.pop() else {
                    return Err(err(
                        number,
                        "`{{/each}}` without an open `{{#each …}}`".into(),
                    ));
                };
                let body = std::mem::replace(&mut items, outer);
                items.push(Hl7Item::Each {
                    number: start,
                    path,
                    optional,
                    body,
                });
                continue;
            }
            if trimmed.starts_with("{{#") || trimmed.starts_with("{{/") {
                return Err(err(number, BLOCKS.into()));
            }
            if delimiters.is_none() {
                let d = header_delimiters(line).map_err(|m| err(number, m))?;
                charset = header_charset(line, &d).map_err(|m| err(number, m))?;
                delimiters = Some(d);
            }
            let mut parts = Vec::new();
            for piece in scan(line).map_err(|m| err(number, m))? {
                parts.push(match piece {
                    Piece::Text(t) => Hl7Part::Text(t.to_owned()),
                    Piece::Placeholder(inner) => {
                        if inner.trim_start().starts_with(['#', '/']) {
                            return Err(err(number, BLOCKS.into()));
                        }
                        let expr = parse_expr(inner, HL7_FILTERS).map_err(|m| err(number, m))?;
                        let source = match expr.source.as_str() {
                            "now" => Hl7Source::Now,
                            "control_id" => Hl7Source::ControlId,
                            "@index" => Hl7Source::Index0,
                            "@index1" => Hl7Source::Index1,
                            s => Hl7Source::Data(DataPath::parse(s).map_err(|m| err(number, m))?),
                        };
                        Hl7Part::Value {
                            source,
                            optional: expr.optional,
                            filters: expr.filters,
                        }
                    }
                });
            }
            items.push(Hl7Item::Line { number, parts });
        }
        if let Some((start, ..)) = stack.last() {
            return Err(err(
                *start,
                "`{{#each …}}` is never closed with `{{/each}}`".into(),
            ));
        }
        let delimiters = delimiters.ok_or_else(|| format!("template {origin}: no MSH segment"))?;
        Ok(Hl7Template {
            origin: origin.to_owned(),
            delimiters,
            charset,
            items,
        })
    }

    /// Write the message for `json`. Segments end with `\r`; the result parses with
    /// [`Message::parse`].
    pub fn render(&self, json: &Value) -> Result<Vec<u8>, TemplateError> {
        let mut out = String::with_capacity(512);
        self.render_items(&self.items, json, json, None, &mut out)
            .map_err(|message| TemplateError {
                template: self.origin.clone(),
                message,
            })?;
        let bytes = match self.charset {
            // No MSH-18: ASCII by the standard, read as UTF-8 when it is (as Ferry does).
            Charset::Ascii | Charset::Utf8 => out.into_bytes(),
            charset => match charset.encode(&out) {
                Ok(bytes) => bytes.into_owned(),
                Err(_) => {
                    return Err(TemplateError {
                        template: self.origin.clone(),
                        message: format!(
                            "a value holds a character that the charset MSH-18 declares ({}) cannot write",
                            charset.code()
                        ),
                    });
                }
            },
        };
        if let Err(e) = Message::parse(&bytes) {
            return Err(TemplateError {
                template: self.origin.clone(),
                message: format!("the rendered message does not parse: {e}"),
            });
        }
        Ok(bytes)
    }

    /// [`render`](Self::render) of a JSON body as received (UTF-8 bytes). A body that is not
    /// JSON is an error giving line and column, not content.
    pub fn render_bytes(&self, body: &[u8]) -> Result<Vec<u8>, TemplateError> {
        let json: Value = serde_json::from_slice(body).map_err(|e| TemplateError {
            template: self.origin.clone(),
            message: format!(
                "the body is not JSON ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        })?;
        self.render(&json)
    }

    fn render_items(
        &self,
        items: &[Hl7Item],
        root: &Value,
        current: &Value,
        index: Option<usize>,
        out: &mut String,
    ) -> Result<(), String> {
        for item in items {
            match item {
                Hl7Item::Line { number, parts } => {
                    for part in parts {
                        match part {
                            Hl7Part::Text(t) => out.push_str(t),
                            Hl7Part::Value {
                                source,
                                optional,
                                filters,
                            } => {
                                let text = self
                                    .value(source, *optional, filters, root, current, index)
                                    .map_err(|m| format!("line {number}: {m}"))?;
                                escape::encode_into(&text, &self.delimiters, out);
                            }
                        }
                    }
                    out.push('\r');
                }
                Hl7Item::Each {
                    number,
                    path,
                    optional,
                    body,
                } => match path.resolve(root, current) {
                    None if *optional => {}
                    None => {
                        return Err(format!(
                            "line {number}: each `{}`: missing value",
                            path.text
                        ));
                    }
                    Some(Value::Array(elements)) => {
                        for (i, element) in elements.iter().enumerate() {
                            self.render_items(body, root, element, Some(i), out)?;
                        }
                    }
                    Some(_) => {
                        return Err(format!("line {number}: each `{}`: not an array", path.text));
                    }
                },
            }
        }
        Ok(())
    }

    fn value(
        &self,
        source: &Hl7Source,
        optional: bool,
        filters: &[Filter],
        root: &Value,
        current: &Value,
        index: Option<usize>,
    ) -> Result<String, String> {
        let (name, mut value): (Cow<'_, str>, Option<String>) = match source {
            Hl7Source::Now => ("now".into(), Some(now_dtm())),
            Hl7Source::ControlId => ("control_id".into(), Some(control_id())),
            Hl7Source::Index0 | Hl7Source::Index1 => {
                let i = index.ok_or("`@index` is only defined inside `{{#each}}`")?;
                let shift = usize::from(matches!(source, Hl7Source::Index1));
                ("@index".into(), Some((i + shift).to_string()))
            }
            Hl7Source::Data(path) => {
                let v = match path.resolve(root, current) {
                    None => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Bool(b)) => Some(b.to_string()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    Some(Value::Array(_) | Value::Object(_)) => {
                        return Err(format!(
                            "`{}` is an object or array, not a value",
                            path.text
                        ));
                    }
                    Some(Value::Null) => None,
                };
                (path.text.as_str().into(), v)
            }
        };
        for filter in filters {
            value = match filter {
                Filter::Dtm => value
                    .map(|v| iso_to_dtm(&v).map_err(|e| format!("`{name}` | dtm: {e}")))
                    .transpose()?,
                f => text_filter(f, value),
            };
        }
        match value {
            Some(v) => Ok(v),
            None if optional => Ok(String::new()),
            None => Err(format!(
                "`{name}` is missing (end the placeholder with `?` to allow that)"
            )),
        }
    }
}

/// The charset a template's MSH line declares in MSH-18 (which must be literal).
fn header_charset(line: &str, d: &Delimiters) -> Result<Charset, String> {
    let msh18 = line.split(char::from(d.field)).nth(17).unwrap_or("");
    if msh18.contains("{{") {
        return Err("MSH-18 (the character set) must be written literally".into());
    }
    let first = match d.repetition {
        Some(r) => msh18.split(char::from(r)).next().unwrap_or(""),
        None => msh18,
    };
    Charset::from_msh18(Some(first)).map_err(|e| format!("MSH-18: {e}"))
}

/// The delimiters declared by a template's MSH line (MSH-1 and MSH-2 literal).
fn header_delimiters(line: &str) -> Result<Delimiters, String> {
    let b = line.as_bytes();
    if !line.starts_with("MSH") || b.len() < 5 {
        return Err("the first segment must be MSH, with MSH-1 and MSH-2 written out".into());
    }
    let field = b[3];
    let enc: Vec<u8> = b[4..]
        .iter()
        .take_while(|c| **c != field)
        .copied()
        .collect();
    if enc.is_empty() || enc.windows(2).any(|w| w == b"{{") || enc.contains(&b'{') {
        return Err("MSH-2 (the encoding characters) must be written literally".into());
    }
    Ok(Delimiters {
        field,
        component: enc[0],
        repetition: enc.get(1).copied(),
        escape: enc.get(2).copied(),
        subcomponent: enc.get(3).copied(),
        truncation: enc.get(4).copied(),
    })
}

// ---------------------------------------------------------------------------------------------
// JSON templates.

/// An ordered JSON document (object keys in the order written).
#[derive(Debug, Clone)]
enum Doc {
    Scalar(Value),
    String(String),
    Array(Vec<Doc>),
    Object(Vec<(String, Doc)>),
}

impl<'de> serde::Deserialize<'de> for Doc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Doc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Doc, E> {
                Ok(Doc::Scalar(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Doc, E> {
                Ok(Doc::Scalar(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Doc, E> {
                Ok(Doc::Scalar(Value::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Doc, E> {
                Ok(Doc::Scalar(Value::from(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Doc, E> {
                Ok(Doc::String(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Doc, E> {
                Ok(Doc::String(v))
            }
            fn visit_unit<E>(self) -> Result<Doc, E> {
                Ok(Doc::Scalar(Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Doc, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element()? {
                    items.push(item);
                }
                Ok(Doc::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Doc, A::Error> {
                let mut entries: Vec<(String, Doc)> = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, Doc>()? {
                    if entries.iter().any(|(e, _)| *e == k) {
                        return Err(serde::de::Error::custom(format!("duplicate key `{k}`")));
                    }
                    entries.push((k, v));
                }
                Ok(Doc::Object(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// Where a JSON placeholder reads.
#[derive(Debug, Clone)]
enum JsonSource {
    /// An HL7 path (`PID-5.1`); on the each's segment or field it means the current one.
    Path(Path),
    /// `-5.1`: a field of the current segment (the path's segment id is a stand-in).
    Segment(Path),
    /// `.1`, `.1.2`, `.`: a component (subcomponent) of the current repetition.
    Repetition(Option<usize>, Option<usize>),
}

#[derive(Debug, Clone)]
struct JsonExpr {
    text: String,
    source: JsonSource,
    filters: Vec<Filter>,
}

#[derive(Debug, Clone)]
enum JsonPart {
    Text(String),
    Expr(JsonExpr),
}

/// What `$each` iterates.
#[derive(Debug, Clone)]
enum Over {
    Segment(String),
    Field(Path),
    /// `-5`: a field of the current segment.
    SegmentField(Path),
}

#[derive(Debug, Clone)]
enum JsonNode {
    Scalar(Value),
    Text(String),
    Whole(JsonExpr),
    Mixed(Vec<JsonPart>),
    Array(Vec<JsonNode>),
    Object(Vec<(String, JsonNode)>),
    Each { over: Over, item: Box<JsonNode> },
}

/// What a placeholder yields.
enum Out {
    Null,
    Text(String),
    Number(serde_json::Number),
}

/// Where an item of `$each` is.
#[derive(Debug, Clone, Default)]
struct Scope {
    /// The current segment: id and occurrence.
    segment: Option<([u8; 3], usize)>,
    /// The current repetition: its path (segment, occurrence, field, repetition).
    repetition: Option<Path>,
}

/// An HL7 → JSON template (see the module documentation for the syntax).
#[derive(Debug, Clone)]
pub struct JsonTemplate {
    origin: String,
    root: JsonNode,
}

const JSON_FILTERS: &[&str] = &["date", "number", "upper", "lower", "trim", "default"];

/// A stand-in segment id for relative paths.
const HERE: &str = "ZZZ";

impl JsonTemplate {
    /// Read and parse a template file.
    pub fn load(path: &std::path::Path) -> Result<JsonTemplate, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read template {}: {e}", path.display()))?;
        JsonTemplate::parse(&text, &path.display().to_string())
    }

    /// Parse template text; `origin` names it in errors. Every syntax error (JSON, a
    /// placeholder, a path, a `$each`) is reported here, at deploy time.
    pub fn parse(text: &str, origin: &str) -> Result<JsonTemplate, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let doc: Doc =
            serde_json::from_str(text).map_err(|e| format!("template {origin}: not JSON: {e}"))?;
        let root =
            compile(&doc, "$", Level::Message).map_err(|e| format!("template {origin}: {e}"))?;
        Ok(JsonTemplate {
            origin: origin.to_owned(),
            root,
        })
    }

    /// Write the JSON for `msg`, compact.
    pub fn render(&self, msg: &Message<'_>) -> Result<Vec<u8>, TemplateError> {
        let mut out = Vec::with_capacity(512);
        write_node(&self.root, msg, &Scope::default(), &mut out).map_err(|message| {
            TemplateError {
                template: self.origin.clone(),
                message,
            }
        })?;
        Ok(out)
    }
}

/// How deep in `$each` a node is, for checking shorthand paths at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Message,
    Segment,
    Repetition { in_segment: bool },
}

fn compile(doc: &Doc, at: &str, level: Level) -> Result<JsonNode, String> {
    Ok(match doc {
        Doc::Scalar(v) => JsonNode::Scalar(v.clone()),
        Doc::String(s) => compile_string(s, level).map_err(|e| format!("at {at}: {e}"))?,
        Doc::Array(items) => JsonNode::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, d)| compile(d, &format!("{at}[{i}]"), level))
                .collect::<Result<_, _>>()?,
        ),
        Doc::Object(entries) => {
            if let Some((_, over)) = entries.iter().find(|(k, _)| k == "$each") {
                let at = format!("{at}.$each");
                if entries.len() != 2 || !entries.iter().any(|(k, _)| k == "item") {
                    return Err(format!(
                        "at {at}: a `$each` object has exactly the keys `$each` and `item`"
                    ));
                }
                let Doc::String(over) = over else {
                    return Err(format!(
                        "at {at}: `$each` names a segment (\"OBX\") or a field (\"PID-3\")"
                    ));
                };
                let (over, inner) =
                    compile_over(over, level).map_err(|e| format!("at {at}: {e}"))?;
                let item = entries
                    .iter()
                    .find(|(k, _)| k == "item")
                    .map(|(_, d)| d)
                    .ok_or_else(|| format!("at {at}: `item` is missing"))?;
                JsonNode::Each {
                    over,
                    item: Box::new(compile(item, &format!("{at}.item"), inner)?),
                }
            } else {
                JsonNode::Object(
                    entries
                        .iter()
                        .map(|(k, d)| Ok((k.clone(), compile(d, &format!("{at}.{k}"), level)?)))
                        .collect::<Result<_, String>>()?,
                )
            }
        }
    })
}

fn compile_over(over: &str, level: Level) -> Result<(Over, Level), String> {
    if over.len() == 3 {
        if !over
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err(format!("`{over}` is not a segment id"));
        }
        return Ok((Over::Segment(over.to_owned()), Level::Segment));
    }
    if over.starts_with('-') {
        if level != Level::Segment {
            return Err(format!(
                "`{over}` (a field of the current segment) needs an enclosing segment `$each`"
            ));
        }
        let path = field_path(&format!("{HERE}{over}"), over)?;
        return Ok((
            Over::SegmentField(path),
            Level::Repetition { in_segment: true },
        ));
    }
    let path = field_path(over, over)?;
    Ok((
        Over::Field(path),
        Level::Repetition {
            in_segment: level == Level::Segment,
        },
    ))
}

/// A path that names a field (no repetition, component or subcomponent), for `$each`.
fn field_path(text: &str, shown: &str) -> Result<Path, String> {
    let path = Path::parse(text).map_err(|e| format!("`{shown}`: {}", e.reason))?;
    if !path.is_whole_field() {
        return Err(format!(
            "`{shown}`: `$each` over a field names the field only (like PID-3), not a repetition or component"
        ));
    }
    Ok(path)
}

fn compile_string(s: &str, level: Level) -> Result<JsonNode, String> {
    let pieces = scan(s)?;
    let mut parts = Vec::with_capacity(pieces.len());
    for piece in &pieces {
        parts.push(match piece {
            Piece::Text(t) => JsonPart::Text((*t).to_owned()),
            Piece::Placeholder(inner) => JsonPart::Expr(compile_expr(inner, level)?),
        });
    }
    Ok(match (parts.len(), parts.pop()) {
        (0, _) | (_, None) => JsonNode::Text(String::new()),
        (1, Some(JsonPart::Text(t))) => JsonNode::Text(t),
        (1, Some(JsonPart::Expr(e))) => JsonNode::Whole(e),
        (_, Some(last)) => {
            parts.push(last);
            JsonNode::Mixed(parts)
        }
    })
}

fn compile_expr(inner: &str, level: Level) -> Result<JsonExpr, String> {
    let expr = parse_expr(inner, JSON_FILTERS)?;
    if expr.optional {
        return Err(format!(
            "`{}?`: JSON placeholders are optional already (absent is null); drop the `?`",
            expr.source
        ));
    }
    let text = expr.source.clone();
    let source = if text == "." || (text.starts_with('.') && level_has_repetition(level)) {
        if !level_has_repetition(level) {
            return Err(format!(
                "`{text}` (the current repetition) needs an enclosing field `$each`"
            ));
        }
        let mut numbers = text[1..].split('.').filter(|p| !p.is_empty()).map(|p| {
            p.parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("`{text}`: components are numbers ≥ 1, like .1 or .1.2"))
        });
        let component = numbers.next().transpose()?;
        let sub = numbers.next().transpose()?;
        if numbers.next().is_some() {
            return Err(format!(
                "`{text}`: a repetition has components and subcomponents only"
            ));
        }
        JsonSource::Repetition(component, sub)
    } else if text.starts_with('.') {
        return Err(format!(
            "`{text}` (the current repetition) needs an enclosing field `$each`"
        ));
    } else if text.starts_with('-') {
        let in_segment = matches!(
            level,
            Level::Segment | Level::Repetition { in_segment: true }
        );
        if !in_segment {
            return Err(format!(
                "`{text}` (a field of the current segment) needs an enclosing segment `$each`"
            ));
        }
        JsonSource::Segment(
            Path::parse(&format!("{HERE}{text}")).map_err(|e| format!("`{text}`: {}", e.reason))?,
        )
    } else {
        JsonSource::Path(Path::parse(&text).map_err(|e| e.to_string())?)
    };
    Ok(JsonExpr {
        text,
        source,
        filters: expr.filters,
    })
}

fn level_has_repetition(level: Level) -> bool {
    matches!(level, Level::Repetition { .. })
}

/// Write the JSON text of a string.
fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_node(
    node: &JsonNode,
    msg: &Message<'_>,
    scope: &Scope,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    match node {
        JsonNode::Scalar(v) => {
            let _ = serde_json::to_writer(&mut *out, v);
        }
        JsonNode::Text(t) => write_str(out, t),
        JsonNode::Whole(e) => match eval(e, msg, scope)? {
            Out::Null => out.extend_from_slice(b"null"),
            Out::Text(t) if t.is_empty() => out.extend_from_slice(b"null"),
            Out::Text(t) => write_str(out, &t),
            Out::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        },
        JsonNode::Mixed(parts) => {
            let mut text = String::new();
            for part in parts {
                match part {
                    JsonPart::Text(t) => text.push_str(t),
                    JsonPart::Expr(e) => match eval(e, msg, scope)? {
                        Out::Null => {}
                        Out::Text(t) => text.push_str(&t),
                        Out::Number(n) => text.push_str(&n.to_string()),
                    },
                }
            }
            write_str(out, &text);
        }
        JsonNode::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_node(item, msg, scope, out)?;
            }
            out.push(b']');
        }
        JsonNode::Object(entries) => {
            out.push(b'{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                write_node(v, msg, scope, out)?;
            }
            out.push(b'}');
        }
        JsonNode::Each { over, item } => {
            out.push(b'[');
            let scopes = each_scopes(over, msg, scope);
            for (i, inner) in scopes.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_node(item, msg, inner, out)?;
            }
            out.push(b']');
        }
    }
    Ok(())
}

/// One scope per item of a `$each`.
fn each_scopes(over: &Over, msg: &Message<'_>, scope: &Scope) -> Vec<Scope> {
    match over {
        Over::Segment(id) => {
            let mut id3 = [0u8; 3];
            id3.copy_from_slice(id.as_bytes().get(..3).unwrap_or(b"ZZZ"));
            let count = msg.segments().filter(|s| s.id() == id.as_bytes()).count();
            (1..=count)
                .map(|n| Scope {
                    segment: Some((id3, n)),
                    repetition: None,
                })
                .collect()
        }
        Over::Field(path) | Over::SegmentField(path) => {
            let (id, occurrence) = match (over, scope.segment) {
                (Over::SegmentField(_), Some((id, n))) => (id, n),
                _ => {
                    let mut id = [0u8; 3];
                    id.copy_from_slice(path.segment_id());
                    let n = match scope.segment {
                        Some((sid, n)) if sid == id => n,
                        _ => path.occurrence,
                    };
                    (id, n)
                }
            };
            let Some(field) = std::str::from_utf8(&id)
                .ok()
                .and_then(|id| msg.segment(id, occurrence))
                .and_then(|s| s.field(path.field))
            else {
                return Vec::new();
            };
            if field.is_empty() || field == b"\"\"" {
                return Vec::new();
            }
            let count = match msg.delimiters().repetition {
                Some(sep) => msg.parts(field, sep).count(),
                None => 1,
            };
            let Ok(base) = Path::parse(&format!(
                "{}[{occurrence}]-{}",
                String::from_utf8_lossy(&id),
                path.field
            )) else {
                return Vec::new();
            };
            (1..=count)
                .map(|r| {
                    let mut p = base.clone();
                    p.repetition = r;
                    Scope {
                        segment: scope.segment,
                        repetition: Some(p),
                    }
                })
                .collect()
        }
    }
}

/// The raw bytes a source addresses in this scope.
fn locate<'m>(source: &JsonSource, msg: &'m Message<'_>, scope: &Scope) -> Option<&'m [u8]> {
    let with_repetition = |mut p: Path| -> Path {
        if let Some(r) = &scope.repetition
            && r.segment_id() == p.segment_id()
            && r.occurrence == p.occurrence
            && r.field == p.field
            && !p.has_explicit_repetition()
        {
            p.repetition = r.repetition;
        }
        p
    };
    match source {
        JsonSource::Path(p) => {
            let mut p = p.clone();
            if let Some((id, n)) = scope.segment
                && p.segment_id() == id
            {
                p.occurrence = n;
            }
            let p = with_repetition(p);
            msg.get_path(&p)
        }
        JsonSource::Segment(p) => {
            let (id, n) = scope.segment?;
            let segment = msg.segment(std::str::from_utf8(&id).ok()?, n)?;
            let mut p = p.clone();
            if let Some(r) = &scope.repetition
                && r.segment_id() == id
                && r.occurrence == n
                && r.field == p.field
                && !p.has_explicit_repetition()
            {
                p.repetition = r.repetition;
            }
            segment.locate(&p)
        }
        JsonSource::Repetition(component, sub) => {
            let mut p = scope.repetition.clone()?;
            p.component = *component;
            p.subcomponent = *sub;
            msg.get_path(&p)
        }
    }
}

fn eval(e: &JsonExpr, msg: &Message<'_>, scope: &Scope) -> Result<Out, String> {
    let raw = locate(&e.source, msg, scope);
    let mut value = raw
        .filter(|r| !r.is_empty() && *r != b"\"\"")
        .map(|r| msg.text(r).into_owned());
    let mut number = None;
    for filter in &e.filters {
        match filter {
            Filter::Date => {
                value = value
                    .map(|v| dtm_to_iso(&v).map_err(|m| format!("`{}` | date: {m}", e.text)))
                    .transpose()?;
            }
            Filter::Number => {
                number = value
                    .as_deref()
                    .map(|v| {
                        json_number(v).ok_or_else(|| format!("`{}` | number: not a number", e.text))
                    })
                    .transpose()?;
            }
            f => value = text_filter(f, value),
        }
    }
    Ok(match (number, value) {
        (Some(n), _) => Out::Number(n),
        (None, Some(v)) => Out::Text(v),
        (None, None) => Out::Null,
    })
}

/// An HL7 NM value (`+12`, `-0.5`, `012`) as a JSON number.
fn json_number(text: &str) -> Option<serde_json::Number> {
    let t = text.trim();
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    if frac.is_empty()
        && !unsigned.contains('.')
        && let Ok(i) = t.parse::<i64>()
    {
        return Some(i.into());
    }
    t.parse::<f64>().ok().and_then(serde_json::Number::from_f64)
}

#[cfg(test)]
mod tests;
