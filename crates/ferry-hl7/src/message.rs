//! The parsed message: the input bytes plus segment offsets.

use std::borrow::Cow;
use std::ops::Range;

use crate::path::{Path, PathError};

/// The delimiters a message declares in MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Field separator (MSH-1), usually `|`.
    pub field: u8,
    /// Component separator, usually `^`.
    pub component: u8,
    /// Repetition separator, usually `~`.
    pub repetition: Option<u8>,
    /// Escape character, usually `\`.
    pub escape: Option<u8>,
    /// Subcomponent separator, usually `&`.
    pub subcomponent: Option<u8>,
    /// Truncation character (v2.7+), usually `#`.
    pub truncation: Option<u8>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters {
            field: b'|',
            component: b'^',
            repetition: Some(b'~'),
            escape: Some(b'\\'),
            subcomponent: Some(b'&'),
            truncation: None,
        }
    }
}

/// Why bytes are not an HL7 v2 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but whitespace.
    #[error("empty message")]
    Empty,
    /// The first segment is not MSH.
    #[error("message does not start with an MSH segment (found `{found}`)")]
    MissingMsh {
        /// The first bytes found, printable.
        found: String,
    },
    /// MSH-1/MSH-2 do not declare usable delimiters.
    #[error("invalid delimiters in MSH-1/MSH-2: {0}")]
    InvalidDelimiters(&'static str),
    /// A segment does not start with a three-character id.
    #[error("segment {index} has an invalid segment id `{found}`")]
    InvalidSegmentId {
        /// 1-based segment number.
        index: usize,
        /// The bytes found, printable.
        found: String,
    },
    /// An acknowledgement has no MSA segment.
    #[error("acknowledgement has no MSA segment")]
    MissingMsa,
    /// MSA-1 is not an acknowledgement code.
    #[error("MSA-1 `{0}` is not an acknowledgement code (AA, AE, AR, CA, CE, CR)")]
    UnknownAckCode(String),
}

/// Printable form of hostile bytes for error messages (at most `max` characters).
pub(crate) fn printable(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    for &b in bytes.iter().take(max) {
        if b.is_ascii_graphic() || b == b' ' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A parsed HL7 v2 message borrowing its bytes.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    bytes: &'a [u8],
    delimiters: Delimiters,
    /// Byte ranges of the segments, terminators excluded.
    segments: Vec<Range<usize>>,
}

/// One segment of a message.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    bytes: &'a [u8],
    delimiters: Delimiters,
}

fn is_segment_end(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

/// Delimiters must be printable ASCII punctuation. Anything else (a control byte, a space, a
/// non-ASCII byte that would be a different character in every charset) is refused.
fn valid_delimiter(b: u8) -> bool {
    b.is_ascii_punctuation()
}

impl<'a> Message<'a> {
    /// Parse a message. Leading whitespace and a UTF-8 byte-order mark are skipped; segments
    /// may end with CR, LF or CRLF; empty lines are ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let mut start = 0;
        if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
            start = 3;
        }
        // Whitespace and stray MLLP control bytes (0x0B, 0x1C) before the header.
        while bytes.get(start).is_some_and(|b| *b <= b' ') {
            start += 1;
        }
        let body = bytes.get(start..).unwrap_or_default();
        if body.is_empty() {
            return Err(ParseError::Empty);
        }
        if !body.starts_with(b"MSH") {
            return Err(ParseError::MissingMsh {
                found: printable(body, 3),
            });
        }
        let delimiters = read_delimiters(body)?;
        let mut segments = Vec::with_capacity(16);
        let mut pos = start;
        while pos < bytes.len() {
            let end = memchr::memchr2(b'\r', b'\n', &bytes[pos..]).map_or(bytes.len(), |i| pos + i);
            let seg = &bytes[pos..end];
            // Blank lines and lines of control bytes only (leftover MLLP framing) are skipped.
            if !seg.iter().all(|b| *b <= b' ') {
                let id_ok = seg.len() >= 3
                    && seg[..3]
                        .iter()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                    && seg.get(3).is_none_or(|b| *b == delimiters.field);
                match segments.last_mut() {
                    _ if id_ok => segments.push(pos..end),
                    // A line without a segment id continues the previous segment: senders put
                    // raw line breaks inside free-text fields.
                    Some(last) => last.end = end,
                    None => {
                        return Err(ParseError::InvalidSegmentId {
                            index: 1,
                            found: printable(seg, 8),
                        });
                    }
                }
            }
            pos = end + 1;
        }
        Ok(Message {
            bytes,
            delimiters,
            segments,
        })
    }

    /// The input bytes, unchanged.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The message's delimiters.
    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    /// Segments in order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'a>> + '_ {
        self.segments.iter().map(|r| Segment {
            bytes: &self.bytes[r.clone()],
            delimiters: self.delimiters,
        })
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The `occurrence`-th (1-based) segment with this id.
    pub fn segment(&self, id: &str, occurrence: usize) -> Option<Segment<'a>> {
        self.segments()
            .filter(|s| s.id() == id.as_bytes())
            .nth(occurrence.checked_sub(1)?)
    }

    /// The raw (still escaped) bytes at a path such as `PID-5.1`; `None` when absent.
    pub fn get(&self, path: &str) -> Result<Option<&'a [u8]>, PathError> {
        let path = Path::parse(path)?;
        Ok(self.get_path(&path))
    }

    /// The raw bytes at a parsed path.
    pub fn get_path(&self, path: &Path) -> Option<&'a [u8]> {
        let segment = self.segment(path.segment_str(), path.occurrence)?;
        segment.locate(path)
    }

    /// The text at a path with escapes decoded (`\F\` → `|` …); `None` when absent.
    pub fn get_str(&self, path: &str) -> Result<Option<Cow<'a, str>>, PathError> {
        Ok(self
            .get(path)?
            .map(|raw| crate::escape::decode(raw, &self.delimiters)))
    }

    fn header(&self, field: usize) -> Option<&'a str> {
        let msh = self.segment("MSH", 1)?;
        std::str::from_utf8(msh.field(field)?).ok()
    }

    fn header_component(&self, field: usize, component: usize) -> Option<&'a str> {
        let raw = self.segment("MSH", 1)?.field(field)?;
        let first_rep = split_first(raw, self.delimiters.repetition);
        let comp = first_rep
            .split(|b| *b == self.delimiters.component)
            .nth(component - 1)?;
        std::str::from_utf8(comp).ok()
    }

    /// MSH-3, sending application (raw).
    pub fn sending_application(&self) -> Option<&'a str> {
        self.header(3)
    }
    /// MSH-4, sending facility (raw).
    pub fn sending_facility(&self) -> Option<&'a str> {
        self.header(4)
    }
    /// MSH-5, receiving application (raw).
    pub fn receiving_application(&self) -> Option<&'a str> {
        self.header(5)
    }
    /// MSH-6, receiving facility (raw).
    pub fn receiving_facility(&self) -> Option<&'a str> {
        self.header(6)
    }
    /// MSH-9, message type (raw, e.g. `ADT^A01^ADT_A01`).
    pub fn message_type(&self) -> Option<&'a str> {
        self.header(9)
    }
    /// MSH-9.1, message code (e.g. `ADT`).
    pub fn message_code(&self) -> Option<&'a str> {
        self.header_component(9, 1)
    }
    /// MSH-9.2, trigger event (e.g. `A01`).
    pub fn trigger_event(&self) -> Option<&'a str> {
        self.header_component(9, 2)
    }
    /// MSH-10, message control id.
    pub fn control_id(&self) -> Option<&'a str> {
        self.header(10)
    }
    /// MSH-11, processing id (raw).
    pub fn processing_id(&self) -> Option<&'a str> {
        self.header(11)
    }
    /// MSH-12.1, version id (e.g. `2.5.1`).
    pub fn version(&self) -> Option<&'a str> {
        self.header_component(12, 1)
    }
    /// MSH-15, accept acknowledgement type (enhanced mode).
    pub fn accept_ack_type(&self) -> Option<&'a str> {
        self.header(15)
    }
    /// MSH-16, application acknowledgement type (enhanced mode).
    pub fn application_ack_type(&self) -> Option<&'a str> {
        self.header(16)
    }
    /// MSH-18, character set (first repetition).
    pub fn charset(&self) -> Option<&'a str> {
        let raw = self.segment("MSH", 1)?.field(18)?;
        std::str::from_utf8(split_first(raw, self.delimiters.repetition)).ok()
    }
}

fn split_first(raw: &[u8], separator: Option<u8>) -> &[u8] {
    match separator.and_then(|s| memchr::memchr(s, raw)) {
        Some(i) => &raw[..i],
        None => raw,
    }
}

fn read_delimiters(body: &[u8]) -> Result<Delimiters, ParseError> {
    let field = *body.get(3).ok_or(ParseError::InvalidDelimiters(
        "MSH segment ends before MSH-1",
    ))?;
    if !valid_delimiter(field) {
        return Err(ParseError::InvalidDelimiters(
            "MSH-1 (field separator) must be an ASCII punctuation character",
        ));
    }
    let rest = &body[4..];
    let end = rest
        .iter()
        .position(|b| *b == field || is_segment_end(*b))
        .unwrap_or(rest.len());
    let raw_enc = &rest[..end];
    let deduped;
    let mut enc = raw_enc;
    // `^~\\&`: a doubled escape character, a common copy-paste error from source code.
    if enc.len() == 5 && enc[2] == enc[3] {
        deduped = [enc[0], enc[1], enc[2], enc[4]];
        enc = &deduped;
    }
    if enc.is_empty() {
        return Err(ParseError::InvalidDelimiters(
            "MSH-2 (encoding characters) is empty",
        ));
    }
    if enc.len() > 5 {
        return Err(ParseError::InvalidDelimiters(
            "MSH-2 (encoding characters) is longer than 5 characters",
        ));
    }
    for (i, b) in enc.iter().enumerate() {
        if !valid_delimiter(*b) || *b == field || enc[..i].contains(b) {
            return Err(ParseError::InvalidDelimiters(
                "MSH-2 characters must be distinct ASCII punctuation, different from MSH-1",
            ));
        }
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

impl<'a> Segment<'a> {
    /// The three-character segment id.
    pub fn id(&self) -> &'a [u8] {
        &self.bytes[..3.min(self.bytes.len())]
    }

    /// The segment's bytes (terminator excluded).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    fn is_msh(&self) -> bool {
        self.id() == b"MSH"
    }

    /// Field `n` (1-based, HL7 numbering: for MSH, MSH-1 is the field separator itself and
    /// MSH-2 the encoding characters). `None` when the segment has fewer fields.
    pub fn field(&self, n: usize) -> Option<&'a [u8]> {
        if n == 0 {
            return None;
        }
        let sep = self.delimiters.field;
        if self.is_msh() {
            if n == 1 {
                return self.bytes.get(3..4);
            }
            // After "MSH|", element 0 is MSH-2.
            return self.bytes.get(4..)?.split(move |b| *b == sep).nth(n - 2);
        }
        self.bytes.get(4..)?.split(move |b| *b == sep).nth(n - 1)
    }

    /// Number of fields present (HL7 numbering).
    pub fn field_count(&self) -> usize {
        let seps = memchr::memchr_iter(self.delimiters.field, self.bytes).count();
        if self.is_msh() { seps + 1 } else { seps }
    }

    /// Locate a path's field/repetition/component/subcomponent inside this segment.
    pub fn locate(&self, path: &Path) -> Option<&'a [u8]> {
        let field = self.field(path.field)?;
        // MSH-1 and MSH-2 hold delimiters: never split them.
        if self.is_msh() && path.field <= 2 {
            return (path.repetition == 1 && path.component.is_none_or(|c| c == 1))
                .then_some(field);
        }
        let d = self.delimiters;
        let rep = match d.repetition {
            Some(r) => field.split(move |b| *b == r).nth(path.repetition - 1)?,
            None if path.repetition == 1 => field,
            None => return None,
        };
        let Some(c) = path.component else {
            return Some(rep);
        };
        let comp = rep.split(move |b| *b == d.component).nth(c - 1)?;
        let Some(s) = path.subcomponent else {
            return Some(comp);
        };
        match d.subcomponent {
            Some(sub) => comp.split(move |b| *b == sub).nth(s - 1),
            None if s == 1 => Some(comp),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_delimiters_are_refused() {
        // Fuzz finding (hl7_parse): a 0xFE field separator was accepted, and the ACK built
        // for it wrote the separator as two UTF-8 bytes, so the ACK did not parse.
        assert!(matches!(
            Message::parse(b"MSH\xfe|\n"),
            Err(ParseError::InvalidDelimiters(_))
        ));
        assert!(matches!(
            Message::parse(b"MSH|\xfe~\\&|A\r"),
            Err(ParseError::InvalidDelimiters(_))
        ));
        assert!(matches!(
            Message::parse(b"MSH\t^~\\&|A\r"),
            Err(ParseError::InvalidDelimiters(_))
        ));
        assert!(Message::parse(b"MSH|^~\\&#|A|B|C|D|1||ADT^A01|X|P|2.7\r").is_ok());
    }
}
