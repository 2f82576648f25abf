//! Validation of a message against the [`crate::dictionary`], and the segment
//! groups of its structure.
//!
//! A parser accepts anything shaped like HL7; whether a message is what its MSH-9 and MSH-12
//! say it is needs the dictionary. [`validate`] reports, as [`Issue`]s with stable
//! [`IssueCode`]s and readable messages that use field names:
//!
//! - **required fields** (optionality R) that are absent or empty. `""` (the HL7 explicit
//!   null) counts as present. Conditional fields (C) are not checked: their conditions are
//!   prose in the standard.
//! - **repetition limits** (`max_repetitions`).
//! - **lengths**: the raw (still escaped) bytes of each repetition against the field's
//!   `max_length`, as a warning. Only field-level lengths are checked: v2.7+ defines lengths
//!   per component for most fields and those are not checked, and escape sequences count with
//!   their escaped length, so a value near the limit may be reported by a strict reader and not
//!   here or the reverse.
//! - **the message structure**: the sequence of segments is matched against the structure
//!   grammar of the message type (ordered, optional, repeating, nested groups, choices).
//!   Z-segments are allowed anywhere; segment ids the version does not define are reported
//!   once each as [`IssueCode::UnknownSegment`] and otherwise ignored.
//!
//! # The structure matcher
//!
//! The matcher is greedy and never backtracks, so its work is linear in the number of segments
//! (each segment costs at most two scans of the open groups' elements, bounded by the
//! structure's size). For each segment it looks, from the innermost open group outwards, for
//! the first place the segment can go: another occurrence of the current element, or a later
//! element that can *start* with it (a group can start with a segment if every element before
//! it in the group is optional). A new occurrence of a group is begun only with such a start
//! segment. If nothing fits, a second pass accepts a group containing the segment anywhere
//! (reporting the required segments skipped inside it), which keeps one missing segment from
//! turning the rest of the message into errors. What still does not fit is
//! [`IssueCode::UnexpectedSegment`]. Required elements passed over, or left unvisited when a
//! group occurrence ends, are [`IssueCode::MissingSegment`].
//!
//! The group each segment was placed in is available from [`groups`], so that a caller can
//! iterate the OBX segments of the second ORDER_OBSERVATION.
//!
//! At most [`MAX_ISSUES`] issues are reported; a last [`IssueCode::TooManyIssues`] says so.
//!
//! ```
//! use ferry_hl7::{Message, validate};
//!
//! let text = b"MSH|^~\\&|LAB|F|R|F|20240101||ORU^R01|1|P|2.5.1\r\
//!     PID|1||1^^^H^MR||DOE^J\rOBR|1||A|CBC\rOBX|1|NM|HGB||13||||||F\r\
//!     OBR|2||B|BMP\rOBX|1|NM|NA||140||||||F\rOBX|2|NM|K||4||||||F\r";
//! let m = Message::parse(text)?;
//! assert!(validate::validate(&m).is_empty());
//! let g = validate::groups(&m).expect("ORU_R01 is known");
//! let obx_of_second_order = g
//!     .segments_in(&m, "PATIENT_RESULT/ORDER_OBSERVATION[2]")
//!     .into_iter()
//!     .filter(|s| s.id() == b"OBX")
//!     .count();
//! assert_eq!(obx_of_second_order, 2);
//! # Ok::<(), ferry_hl7::ParseError>(())
//! ```

use std::fmt;

use crate::dictionary::{self, Element, ElementKind, StructureDef, Version};
use crate::message::{Message, Segment};

/// The most issues [`validate`] reports for one message.
pub const MAX_ISSUES: usize = 1000;

/// How serious an issue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The message breaks a rule of its version that may be worth knowing about.
    Warning,
    /// The message does not conform to its version.
    Error,
}

/// What kind of issue, stable for programs to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueCode {
    /// MSH-12 is absent or not an HL7 v2 version; v2.5.1 definitions were used.
    UnknownVersion,
    /// No structure is known for MSH-9 in this version; the structure was not checked.
    UnknownMessageStructure,
    /// A segment id that the version does not define (Z-segments excepted).
    UnknownSegment,
    /// A segment the structure does not allow at this place (or at all).
    UnexpectedSegment,
    /// A required segment or group is missing.
    MissingSegment,
    /// A required field is absent or empty.
    RequiredFieldMissing,
    /// A field has more repetitions than allowed.
    TooManyRepetitions,
    /// A field repetition is longer than the maximum length.
    TooLong,
    /// [`MAX_ISSUES`] were reported and the rest left out.
    TooManyIssues,
}

impl IssueCode {
    /// The code as a stable string (`"RequiredFieldMissing"`).
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::UnknownVersion => "UnknownVersion",
            IssueCode::UnknownMessageStructure => "UnknownMessageStructure",
            IssueCode::UnknownSegment => "UnknownSegment",
            IssueCode::UnexpectedSegment => "UnexpectedSegment",
            IssueCode::MissingSegment => "MissingSegment",
            IssueCode::RequiredFieldMissing => "RequiredFieldMissing",
            IssueCode::TooManyRepetitions => "TooManyRepetitions",
            IssueCode::TooLong => "TooLong",
            IssueCode::TooManyIssues => "TooManyIssues",
        }
    }
}

impl fmt::Display for IssueCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an issue is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    /// 0-based index of the segment in the message (as in [`Message::segments`]); `None` for
    /// the end of the message (a segment missing at the end) or the whole message.
    pub segment_index: Option<usize>,
    /// The segment id (for a missing segment: the missing one).
    pub segment_id: String,
    /// Field number (HL7 numbering).
    pub field: Option<usize>,
    /// Repetition (1-based).
    pub repetition: Option<usize>,
    /// Component (1-based).
    pub component: Option<usize>,
}

/// One finding of [`validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Error or warning.
    pub severity: Severity,
    /// Stable code.
    pub code: IssueCode,
    /// Where.
    pub location: Location,
    /// Readable explanation using field names ("PID-5 (Patient Name) is required but empty").
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match self.location.segment_index {
            Some(i) => write!(
                f,
                "{sev} {} (segment {}): {}",
                self.code,
                i + 1,
                self.message
            ),
            None => write!(f, "{sev} {}: {}", self.code, self.message),
        }
    }
}

/// One step of a group path: a group name and which occurrence of it (1-based, counted within
/// the enclosing group occurrence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStep {
    /// Group name (`ORDER_OBSERVATION`).
    pub name: &'static str,
    /// Occurrence, 1-based.
    pub occurrence: usize,
}

/// Where one segment was placed in the structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupedSegment {
    /// 0-based segment index in the message.
    pub index: usize,
    /// Groups from the outermost in; empty for top-level segments.
    pub path: Vec<GroupStep>,
}

impl GroupedSegment {
    /// The path as text: `PATIENT_RESULT[1]/ORDER_OBSERVATION[2]/OBSERVATION[1]`, empty for
    /// a top-level segment.
    pub fn path_string(&self) -> String {
        let mut out = String::new();
        for (i, step) in self.path.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            out.push_str(step.name);
            out.push('[');
            out.push_str(&step.occurrence.to_string());
            out.push(']');
        }
        out
    }

    /// Whether this segment is inside the group at `path` (`"ORDER_OBSERVATION[2]"`,
    /// `"PATIENT_RESULT/ORDER_OBSERVATION[2]/OBSERVATION"`). Steps are matched from the
    /// outermost group; a step without `[n]` matches any occurrence.
    pub fn is_in(&self, path: &str) -> bool {
        let mut steps = self.path.iter();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let (name, occurrence) = match part.split_once('[') {
                Some((n, rest)) => {
                    let Some(k) = rest.strip_suffix(']').and_then(|k| k.parse::<usize>().ok())
                    else {
                        return false;
                    };
                    (n, Some(k))
                }
                None => (part, None),
            };
            match steps.next() {
                Some(s) if s.name == name && occurrence.is_none_or(|k| k == s.occurrence) => {}
                _ => return false,
            }
        }
        true
    }
}

/// The group assignment of a message's segments; see [`groups`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouping {
    /// The structure matched (`ORU_R01`).
    pub structure: &'static str,
    /// The version whose definitions were used.
    pub version: Version,
    /// Every segment of the message, in order.
    pub segments: Vec<GroupedSegment>,
}

impl Grouping {
    /// Indices of the segments inside the group at `path` (see [`GroupedSegment::is_in`]).
    pub fn indices_in<'g>(&'g self, path: &'g str) -> impl Iterator<Item = usize> + 'g {
        self.segments
            .iter()
            .filter(move |s| s.is_in(path))
            .map(|s| s.index)
    }

    /// The segments of `message` (the message this grouping was made from) inside the group
    /// at `path`, in order.
    pub fn segments_in<'m>(&self, message: &'m Message<'_>, path: &str) -> Vec<Segment<'m>> {
        let mut wanted = self.indices_in(path).peekable();
        let mut out = Vec::new();
        for (i, seg) in message.segments().enumerate() {
            if wanted.peek() == Some(&i) {
                out.push(seg);
                wanted.next();
            }
        }
        out
    }
}

/// The version a message is checked against, and whether MSH-12 gave it.
fn message_version(message: &Message<'_>) -> (Version, bool) {
    match message.version().and_then(Version::parse) {
        Some(v) => (v, true),
        None => (Version::V2_5_1, false),
    }
}

/// MSH-9.3, the message structure, when present.
fn msh_9_3<'a>(message: &Message<'a>) -> Option<&'a str> {
    let comp = message.get("MSH-9.3").ok().flatten()?;
    std::str::from_utf8(comp).ok().filter(|s| !s.is_empty())
}

fn structure_of(message: &Message<'_>, version: Version) -> Option<&'static StructureDef> {
    dictionary::structure_for(
        version,
        message.message_code().unwrap_or(""),
        message.trigger_event().unwrap_or(""),
        msh_9_3(message),
    )
}

/// The group each segment belongs to, using the structure MSH-9 and MSH-12 name (an absent or
/// unknown MSH-12 is read as v2.5.1, as in [`validate`]); `None` when no structure is known.
/// Segments that do not fit, Z-segments and unknown segments stay in the group that was open.
pub fn groups(message: &Message<'_>) -> Option<Grouping> {
    let (version, _) = message_version(message);
    let structure = structure_of(message, version)?;
    let mut sink = Issues::default();
    let segments = match_structure(message, version, structure, &mut sink, true);
    Some(Grouping {
        structure: structure.name,
        version,
        segments,
    })
}

/// Check a message against the dictionary of its MSH-12 version (see the module docs).
pub fn validate(message: &Message<'_>) -> Vec<Issue> {
    let (version, known) = message_version(message);
    let mut issues = Issues::default();
    if !known {
        issues.push(
            Severity::Warning,
            IssueCode::UnknownVersion,
            Location {
                segment_index: Some(0),
                segment_id: "MSH".into(),
                field: Some(12),
                ..Location::default()
            },
            format!(
                "MSH-12 (Version ID) `{}` is not a known HL7 v2 version; checked as {}",
                message.version().unwrap_or(""),
                Version::V2_5_1
            ),
        );
    }
    validate_inner(message, version, &mut issues);
    issues.finish()
}

/// Check a message against the dictionary of `version`, whatever its MSH-12 says.
pub fn validate_as(message: &Message<'_>, version: Version) -> Vec<Issue> {
    let mut issues = Issues::default();
    validate_inner(message, version, &mut issues);
    issues.finish()
}

fn validate_inner(message: &Message<'_>, version: Version, issues: &mut Issues) {
    for (index, seg) in message.segments().enumerate() {
        check_fields(message, version, index, seg, issues);
    }
    match structure_of(message, version) {
        Some(structure) => {
            match_structure(message, version, structure, issues, false);
        }
        None => issues.push(
            Severity::Warning,
            IssueCode::UnknownMessageStructure,
            Location {
                segment_index: Some(0),
                segment_id: "MSH".into(),
                field: Some(9),
                ..Location::default()
            },
            format!(
                "no message structure is known for `{}` in v{version}; the segment order was not checked",
                message.message_type().unwrap_or("")
            ),
        ),
    }
}

#[derive(Default)]
struct Issues {
    list: Vec<Issue>,
    dropped: usize,
}

impl Issues {
    fn push(&mut self, severity: Severity, code: IssueCode, location: Location, message: String) {
        if self.list.len() < MAX_ISSUES {
            self.list.push(Issue {
                severity,
                code,
                location,
                message,
            });
        } else {
            self.dropped += 1;
        }
    }

    fn full(&self) -> bool {
        self.list.len() >= MAX_ISSUES
    }

    fn finish(mut self) -> Vec<Issue> {
        if self.dropped > 0 {
            let n = self.dropped;
            self.list.push(Issue {
                severity: Severity::Warning,
                code: IssueCode::TooManyIssues,
                location: Location::default(),
                message: format!("{n} more issues were not reported"),
            });
        }
        self.list
    }
}

fn id_str<'a>(seg: &Segment<'a>) -> &'a str {
    std::str::from_utf8(seg.id()).unwrap_or("")
}

fn is_z(id: &str) -> bool {
    id.starts_with('Z')
}

fn check_fields(
    message: &Message<'_>,
    version: Version,
    index: usize,
    seg: Segment<'_>,
    issues: &mut Issues,
) {
    let id = id_str(&seg);
    if is_z(id) {
        return;
    }
    let Some(def) = dictionary::segment(version, id) else {
        issues.push(
            Severity::Warning,
            IssueCode::UnknownSegment,
            Location {
                segment_index: Some(index),
                segment_id: id.to_owned(),
                ..Location::default()
            },
            format!("segment {id} is not defined in v{version}"),
        );
        return;
    };
    let d = message.delimiters();
    let msh = id == "MSH";
    for (i, fdef) in def.fields.iter().enumerate() {
        if issues.full() {
            return;
        }
        let n = i + 1;
        // MSH-1 and MSH-2 are the delimiters themselves: the parser has checked them.
        if msh && n <= 2 {
            continue;
        }
        // Field access is two array reads in the parsed index.
        let raw = seg.field(n).unwrap_or_default();
        let loc = |repetition: Option<usize>| Location {
            segment_index: Some(index),
            segment_id: id.to_owned(),
            field: Some(n),
            repetition,
            component: None,
        };
        if raw.is_empty() {
            if fdef.is_required() {
                issues.push(
                    Severity::Error,
                    IssueCode::RequiredFieldMissing,
                    loc(None),
                    format!("{id}-{n} ({}) is required but empty", fdef.name),
                );
            }
            continue;
        }
        let mut count = 0usize;
        let repeated = d
            .repetition
            .is_some_and(|r| message.parts(raw, r).nth(1).is_some());
        let reps: Box<dyn Iterator<Item = &[u8]>> = match d.repetition {
            Some(r) => Box::new(message.parts(raw, r)),
            None => Box::new(std::iter::once(raw)),
        };
        for rep in reps {
            count += 1;
            if let Some(max) = fdef.max_length
                && rep.len() > max as usize
            {
                let which = if repeated {
                    format!(" repetition {count}")
                } else {
                    String::new()
                };
                issues.push(
                    Severity::Warning,
                    IssueCode::TooLong,
                    loc(Some(count)),
                    format!(
                        "{id}-{n} ({}){which} is {} characters long; at most {max} allowed",
                        fdef.name,
                        rep.len()
                    ),
                );
            }
        }
        if let Some(max) = fdef.max_repetitions
            && count > max as usize
        {
            issues.push(
                Severity::Error,
                IssueCode::TooManyRepetitions,
                loc(Some(max as usize + 1)),
                format!(
                    "{id}-{n} ({}) has {count} repetitions; at most {max} allowed",
                    fdef.name
                ),
            );
        }
    }
}

/// One open group occurrence (or the message itself at the bottom of the stack).
struct Frame<'d> {
    elements: &'d [Element],
    name: &'static str,
    occurrence: usize,
    /// The element last matched in this occurrence.
    pos: Option<usize>,
    /// Occurrences of each element in this occurrence of the group.
    counts: Vec<u32>,
}

impl<'d> Frame<'d> {
    fn new(elements: &'d [Element], name: &'static str, occurrence: usize) -> Frame<'d> {
        Frame {
            elements,
            name,
            occurrence,
            pos: None,
            counts: vec![0; elements.len()],
        }
    }

    /// The element of this frame `id` can go in: another occurrence of the current element, or
    /// a later one. `tolerant` also accepts groups that contain `id` past their start.
    fn find(&self, id: &str, tolerant: bool) -> Option<usize> {
        let fits = |e: &Element| {
            if tolerant {
                e.contains(id)
            } else {
                e.starts_with(id)
            }
        };
        if let Some(p) = self.pos
            && let Some(e) = self.elements.get(p)
        {
            let count = self.counts.get(p).copied().unwrap_or(0);
            if e.max.is_none_or(|m| count < m) && fits(e) {
                return Some(p);
            }
        }
        let start = self.pos.map_or(0, |p| p + 1);
        (start..self.elements.len()).find(|q| self.elements.get(*q).is_some_and(fits))
    }
}

struct Matcher<'d, 'i> {
    structure: &'d StructureDef,
    stack: Vec<Frame<'d>>,
    issues: &'i mut Issues,
}

impl Matcher<'_, '_> {
    fn path(&self) -> Vec<GroupStep> {
        self.stack
            .iter()
            .skip(1)
            .map(|f| GroupStep {
                name: f.name,
                occurrence: f.occurrence,
            })
            .collect()
    }

    fn missing(&mut self, e: &Element, at: Option<usize>) {
        let (what, id) = match &e.kind {
            ElementKind::Segment(s) => (format!("required segment {s}"), (*s).to_owned()),
            ElementKind::Choice(c) => {
                let l = c.join("|");
                (format!("one of the required segments {l}"), l)
            }
            ElementKind::Group(g) => (
                format!("required group {} ({})", g.name, g.first.join("|")),
                g.name.to_owned(),
            ),
        };
        let place = match at {
            Some(i) => format!("before segment {}", i + 1),
            None => "at the end of the message".to_owned(),
        };
        self.issues.push(
            Severity::Error,
            IssueCode::MissingSegment,
            Location {
                segment_index: at,
                segment_id: id,
                ..Location::default()
            },
            format!("{what} of {} is missing {place}", self.structure.name),
        );
    }

    /// Report required elements in `range` of the top frame not seen in this occurrence.
    fn report_skipped(&mut self, from: usize, to: usize, at: Option<usize>) {
        let Some(frame) = self.stack.last() else {
            return;
        };
        let elements = frame.elements;
        let skipped: Vec<usize> = (from..to.min(elements.len()))
            .filter(|q| {
                elements.get(*q).is_some_and(|e| e.min > 0)
                    && frame.counts.get(*q).copied().unwrap_or(0) == 0
            })
            .collect();
        for q in skipped {
            if let Some(e) = elements.get(q) {
                self.missing(e, at);
            }
        }
    }

    /// Close the top frame, reporting its required elements never seen.
    fn close_top(&mut self, at: Option<usize>) {
        if let Some(frame) = self.stack.last() {
            let from = frame.pos.map_or(0, |p| p + 1);
            let to = frame.elements.len();
            self.report_skipped(from, to, at);
        }
        self.stack.pop();
    }

    /// Place segment `id` (at message index `at`); false when it fits nowhere.
    fn place(&mut self, id: &str, at: usize) -> bool {
        let found = [false, true].into_iter().find_map(|tolerant| {
            (0..self.stack.len())
                .rev()
                .find_map(|level| Some((level, self.stack.get(level)?.find(id, tolerant)?)))
        });
        let Some((level, q)) = found else {
            return false;
        };
        while self.stack.len() > level + 1 {
            self.close_top(Some(at));
        }
        let mut q = q;
        loop {
            let Some(frame) = self.stack.last() else {
                return false;
            };
            let repeat = frame.pos == Some(q);
            let from = frame.pos.map_or(0, |p| p + 1);
            if !repeat {
                self.report_skipped(from, q, Some(at));
            }
            let Some(frame) = self.stack.last_mut() else {
                return false;
            };
            frame.pos = Some(q);
            let Some(count) = frame.counts.get_mut(q) else {
                return false;
            };
            *count += 1;
            let occurrence = *count as usize;
            let Some(element) = frame.elements.get(q) else {
                return false;
            };
            let ElementKind::Group(g) = &element.kind else {
                return true;
            };
            let inner = Frame::new(&g.elements, g.name, occurrence);
            let next = inner.find(id, false).or_else(|| inner.find(id, true));
            self.stack.push(inner);
            match next {
                Some(n) => q = n,
                // Cannot happen: the group was chosen because it contains `id`.
                None => return false,
            }
        }
    }
}

/// Match the message's segments against `structure`, reporting structure issues; returns the
/// group of every segment.
fn match_structure(
    message: &Message<'_>,
    version: Version,
    structure: &StructureDef,
    issues: &mut Issues,
    record: bool,
) -> Vec<GroupedSegment> {
    let mut m = Matcher {
        structure,
        stack: vec![Frame::new(&structure.elements, "", 1)],
        issues,
    };
    let mut out = Vec::with_capacity(if record { message.segment_count() } else { 0 });
    let mut previous = "";
    for (index, seg) in message.segments().enumerate() {
        let id = id_str(&seg);
        let known = dictionary::segment(version, id).is_some();
        // Z-segments may go anywhere; unknown segments were reported by the field checks.
        if !is_z(id) && (known || structure.elements.iter().any(|e| e.contains(id))) {
            let placed = m.place(id, index);
            if !placed {
                let anywhere = structure.elements.iter().any(|e| e.contains(id));
                let text = if anywhere {
                    let after = if previous.is_empty() {
                        String::new()
                    } else {
                        format!(" after {previous}")
                    };
                    format!(
                        "segment {id} is not allowed here{after} in {}",
                        structure.name
                    )
                } else {
                    format!("segment {id} is not part of {}", structure.name)
                };
                m.issues.push(
                    Severity::Error,
                    IssueCode::UnexpectedSegment,
                    Location {
                        segment_index: Some(index),
                        segment_id: id.to_owned(),
                        ..Location::default()
                    },
                    text,
                );
            } else {
                previous = id;
            }
        }
        if record {
            out.push(GroupedSegment {
                index,
                path: m.path(),
            });
        }
    }
    while !m.stack.is_empty() {
        m.close_top(None);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Message<'_> {
        Message::parse(text.as_bytes()).expect("test message parses")
    }

    fn codes(issues: &[Issue]) -> Vec<(IssueCode, Option<usize>, String, Option<usize>)> {
        issues
            .iter()
            .map(|i| {
                (
                    i.code,
                    i.location.segment_index,
                    i.location.segment_id.clone(),
                    i.location.field,
                )
            })
            .collect()
    }

    const ADT: &str = "MSH|^~\\&|SEND|FAC|RECV|FAC|20240101120000||ADT^A04^ADT_A01|MSG1|P|2.5.1\r\
EVN|A04|20240101120000\r\
PID|1||12345^^^HOSP^MR||DOE^JOHN||19800101|M\r\
PV1|1|O\r";

    #[test]
    fn a_valid_adt_has_no_issues() {
        let issues = validate(&parse(ADT));
        assert!(issues.is_empty(), "{issues:#?}");
    }

    #[test]
    fn required_field_missing_uses_the_field_name() {
        let text = ADT.replace("DOE^JOHN", "");
        let issues = validate(&parse(&text));
        assert_eq!(
            codes(&issues),
            vec![(
                IssueCode::RequiredFieldMissing,
                Some(2),
                "PID".into(),
                Some(5)
            )]
        );
        assert_eq!(
            issues[0].message,
            "PID-5 (Patient Name) is required but empty"
        );
        assert_eq!(issues[0].severity, Severity::Error);
    }

    #[test]
    fn missing_segment_too_many_repetitions_and_out_of_order() {
        // EVN missing; PID-7 (Date/Time of Birth, max 1) repeated.
        let text = "MSH|^~\\&|S|F|R|F|20240101||ADT^A01|1|P|2.5.1\r\
PID|1||1^^^H^MR||DOE^J||19800101~19810101|M\r\
PV1|1|I\r";
        let issues = validate(&parse(text));
        assert_eq!(
            codes(&issues),
            vec![
                (
                    IssueCode::TooManyRepetitions,
                    Some(1),
                    "PID".into(),
                    Some(7)
                ),
                (IssueCode::MissingSegment, Some(1), "EVN".into(), None),
            ],
            "{issues:#?}"
        );
        assert_eq!(issues[0].location.repetition, Some(2));
        assert_eq!(
            issues[0].message,
            "PID-7 (Date/Time of Birth) has 2 repetitions; at most 1 allowed"
        );
        assert_eq!(
            issues[1].message,
            "required segment EVN of ADT_A01 is missing before segment 2"
        );
        // PV1 before PID: PID is then out of order.
        let text = "MSH|^~\\&|S|F|R|F|20240101||ADT^A01|1|P|2.5.1\r\
EVN|A01|20240101\r\
PV1|1|I\r\
PID|1||1^^^H^MR||DOE^J\r";
        let issues = validate(&parse(text));
        assert_eq!(
            codes(&issues),
            vec![
                (IssueCode::MissingSegment, Some(2), "PID".into(), None),
                (IssueCode::UnexpectedSegment, Some(3), "PID".into(), None),
            ],
            "{issues:#?}"
        );
        assert_eq!(
            issues[1].message,
            "segment PID is not allowed here after PV1 in ADT_A01"
        );
    }

    #[test]
    fn unknown_and_z_segments() {
        let text = format!("{ADT}ZZ1|custom\rQQQ|x\rMSA|AA|MSG1\r");
        let issues = validate(&parse(&text));
        assert_eq!(
            codes(&issues),
            vec![
                (IssueCode::UnknownSegment, Some(5), "QQQ".into(), None),
                (IssueCode::UnexpectedSegment, Some(6), "MSA".into(), None),
            ],
            "{issues:#?}"
        );
        assert_eq!(issues[1].message, "segment MSA is not part of ADT_A01");
    }

    #[test]
    fn too_long_is_a_warning() {
        let long = "X".repeat(300);
        let text = ADT.replace("DOE^JOHN", &format!("DOE^JOHN~{long}"));
        let issues = validate(&parse(&text));
        assert_eq!(
            codes(&issues),
            vec![(IssueCode::TooLong, Some(2), "PID".into(), Some(5))]
        );
        assert_eq!(issues[0].severity, Severity::Warning);
        assert_eq!(issues[0].location.repetition, Some(2));
        assert_eq!(
            issues[0].message,
            "PID-5 (Patient Name) repetition 2 is 300 characters long; at most 250 allowed"
        );
    }

    #[test]
    fn unknown_structure_and_version() {
        let text = "MSH|^~\\&|S|F|R|F|20240101||XYZ^Q99|1|P|9.9\r";
        let issues = validate(&parse(text));
        assert_eq!(
            issues.iter().map(|i| i.code).collect::<Vec<_>>(),
            vec![
                IssueCode::UnknownVersion,
                IssueCode::UnknownMessageStructure
            ]
        );
    }

    const ORU: &str = "MSH|^~\\&|LAB|F|R|F|20240101||ORU^R01|1|P|2.5.1\r\
PID|1||1^^^H^MR||DOE^J\r\
OBR|1||A|CBC\r\
OBX|1|NM|HGB||13|\r\
OBX|2|NM|WBC||5|\r\
NTE|1||note\r\
OBR|2||B|BMP\r\
OBX|1|NM|NA||140\r\
ZXX|custom\r\
OBX|2|NM|K||4\r";

    #[test]
    fn groups_place_obx_in_the_second_order() {
        let m = parse(ORU);
        let g = groups(&m).expect("ORU_R01 is known");
        assert_eq!(g.structure, "ORU_R01");
        let paths: Vec<String> = g.segments.iter().map(|s| s.path_string()).collect();
        assert_eq!(
            paths,
            vec![
                "",
                "PATIENT_RESULT[1]/PATIENT[1]",
                "PATIENT_RESULT[1]/ORDER_OBSERVATION[1]",
                "PATIENT_RESULT[1]/ORDER_OBSERVATION[1]/OBSERVATION[1]",
                "PATIENT_RESULT[1]/ORDER_OBSERVATION[1]/OBSERVATION[2]",
                "PATIENT_RESULT[1]/ORDER_OBSERVATION[1]/OBSERVATION[2]",
                "PATIENT_RESULT[1]/ORDER_OBSERVATION[2]",
                "PATIENT_RESULT[1]/ORDER_OBSERVATION[2]/OBSERVATION[1]",
                "PATIENT_RESULT[1]/ORDER_OBSERVATION[2]/OBSERVATION[1]",
                "PATIENT_RESULT[1]/ORDER_OBSERVATION[2]/OBSERVATION[2]",
            ]
        );
        let obx: Vec<Option<&[u8]>> = g
            .segments_in(&m, "PATIENT_RESULT/ORDER_OBSERVATION[2]/OBSERVATION")
            .iter()
            .filter(|s| s.id() == b"OBX")
            .map(|s| s.field(3))
            .collect();
        assert_eq!(obx, vec![Some(&b"NA"[..]), Some(&b"K"[..])]);
        let issues = validate(&m);
        assert!(
            !issues.iter().any(|i| matches!(
                i.code,
                IssueCode::UnexpectedSegment | IssueCode::MissingSegment
            )),
            "{issues:#?}"
        );
    }

    #[test]
    fn choices_take_one_of_their_segments() {
        // v2.1 ORM_O01: ORDER+(ORC ORDER_DETAIL?(<OBR|ORO|RX1>* NTE* OBSERVATION*(OBX NTE*)) BLG?)
        let text = "MSH|^~\\&|S|F|R|F|20240101||ORM^O01|1|P|2.1\r\
ORC|NW\r\
RX1|x\r\
ORC|NW\r\
ORO|y\r\
OBX|1\r";
        let m = parse(text);
        let g = groups(&m).expect("ORM_O01");
        let paths: Vec<String> = g.segments.iter().map(|s| s.path_string()).collect();
        assert_eq!(
            paths,
            vec![
                "",
                "ORDER[1]",
                "ORDER[1]/ORDER_DETAIL[1]",
                "ORDER[2]",
                "ORDER[2]/ORDER_DETAIL[1]",
                "ORDER[2]/ORDER_DETAIL[1]/OBSERVATION[1]",
            ]
        );
        assert!(g.segments[5].is_in("ORDER[2]/ORDER_DETAIL"));
        assert!(!g.segments[5].is_in("ORDER[1]"));
        assert!(!g.segments[5].is_in("ORDER[x]"));
        assert_eq!(g.indices_in("ORDER[2]").collect::<Vec<_>>(), vec![3, 4, 5]);
    }

    proptest::proptest! {
        /// Any sequence of segments (known, unknown, Z, out of order) validates and groups
        /// without panicking, every segment gets a group, and the issue cap holds.
        #[test]
        fn any_segment_sequence_is_handled(
            ids in proptest::collection::vec(
                proptest::sample::select(vec![
                    "PID", "PV1", "OBR", "OBX", "ORC", "NTE", "EVN", "SPM", "ZZZ", "QQQ",
                    "MSH", "IN1", "NK1", "TQ1", "AL1",
                ]),
                0..60,
            ),
            structure in proptest::sample::select(vec![
                "ORU^R01", "ADT^A01", "ORM^O01", "OML^O21", "ADT^A04^ADT_A01", "ACK^A01",
            ]),
            version in proptest::sample::select(vec!["2.1", "2.3", "2.5.1", "2.6", "2.8", ""]),
            fields in "[A-Z0-9|^~&]{0,12}",
        ) {
            let mut text = format!("MSH|^~\\&|A|B|C|D|20240101||{structure}|1|P|{version}\r");
            for id in &ids {
                text.push_str(id);
                text.push('|');
                text.push_str(&fields);
                text.push('\r');
            }
            let m = Message::parse(text.as_bytes()).expect("generated message parses");
            let issues = validate(&m);
            proptest::prop_assert!(issues.len() <= MAX_ISSUES + 1);
            if let Some(g) = groups(&m) {
                proptest::prop_assert_eq!(g.segments.len(), m.segment_count());
            }
        }
    }

    #[test]
    fn hostile_sequences_finish_and_cap_issues() {
        // 50 000 segments that fit nowhere and 150 000 that open new groups: linear work (a
        // backtracking matcher would not finish).
        let mut text = String::from("MSH|^~\\&|LAB|F|R|F|20240101||ORU^R01|1|P|2.5.1\r");
        for _ in 0..50_000 {
            text.push_str("OBR|1\rOBX|1\rPID|1\rEVN|1\r");
        }
        let m = parse(&text);
        let issues = validate(&m);
        assert_eq!(issues.len(), MAX_ISSUES + 1);
        assert_eq!(
            issues.last().map(|i| i.code),
            Some(IssueCode::TooManyIssues)
        );
        let g = groups(&m).expect("grouping");
        assert_eq!(g.segments.len(), m.segment_count());
    }
}
