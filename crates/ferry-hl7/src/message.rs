//! The parsed message: the input bytes plus an index of segments and field separators.
//!
//! [`Message::parse`] makes one pass over the bytes with `memchr3` (field separator, CR, LF),
//! recording where each segment starts and ends and where every field separator is. Reading
//! field `n` of a segment is then two array reads; repetitions, components and subcomponents
//! are found inside the field on demand. Nothing is copied and nothing is allocated per field.
//!
//! In charsets whose multi-byte characters reuse ASCII byte values (ISO-2022-JP, as MSH-18
//! `ISO IR87`; Shift_JIS, Big5, GB 18030), a `|` or `^` byte may be half of a Japanese or
//! Chinese character. The parser reads MSH-18 and, for those charsets, walks the bytes with
//! their shift state (see `Chars`) so that only real delimiters split fields, repetitions,
//! components and subcomponents.

use std::borrow::Cow;
use std::ops::Range;

use crate::charset::Charset;
use crate::escape::{Scan, is_lead};
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
    /// A line without a segment id follows a segment that has no field yet, so it cannot be
    /// the continuation of a field's text.
    #[error(
        "segment {index} (`{id}`) has no fields, so the line after it cannot continue it, and it does not start with a segment id (found `{found}`)"
    )]
    OrphanLine {
        /// 1-based number of the segment before the line.
        index: usize,
        /// That segment's id.
        id: String,
        /// The line's first bytes, printable.
        found: String,
    },
    /// The input is larger than a message can be (4 GiB).
    #[error("message of {len} bytes is larger than the 4 GiB a message can be")]
    TooLarge {
        /// The input's length.
        len: usize,
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

/// Where one segment lies in the message, and which field separators are its own.
///
/// Offsets are `u32`: a message is at most 4 GiB ([`ParseError::TooLarge`]), far above any
/// frame limit. Keeping the index small keeps parsing a single cache-friendly pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentSpan {
    /// First byte of the segment id.
    pub(crate) start: u32,
    /// One past the last byte of the segment (its terminator excluded).
    pub(crate) end: u32,
    /// This segment's field separators are `seps[sep_start..sep_end]`.
    pub(crate) sep_start: u32,
    /// See `sep_start`.
    pub(crate) sep_end: u32,
}

impl SegmentSpan {
    pub(crate) fn range(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// The index a parse produces: delimiters, segment spans and the offset of every field
/// separator. Any field is then two array reads away, without re-scanning the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Index {
    pub(crate) delimiters: Delimiters,
    pub(crate) segments: Vec<SegmentSpan>,
    pub(crate) seps: Vec<u32>,
    /// How delimiters are told from bytes of multi-byte characters (from MSH-18).
    pub(crate) scan: Scan,
    /// The charset MSH-18 declares; `None` when it names one Ferry does not know.
    pub(crate) charset: Option<Charset>,
}

/// The bytes of a value that stand for themselves, with their offsets: every byte in most
/// charsets, but not the bytes inside an ISO-2022 two-byte run (nor its escape sequences),
/// nor the two bytes of a Shift_JIS/Big5/GB 18030 character. A delimiter can only be one of
/// these. Must start at a character boundary in the initial shift state, which every field,
/// repetition, component and subcomponent start is.
#[derive(Debug, Clone)]
pub(crate) struct Chars<'b> {
    bytes: &'b [u8],
    at: usize,
    scan: Scan,
    shifted: bool,
}

impl<'b> Chars<'b> {
    pub(crate) fn new(bytes: &'b [u8], scan: Scan) -> Chars<'b> {
        Chars {
            bytes,
            at: 0,
            scan,
            shifted: false,
        }
    }
}

impl Iterator for Chars<'_> {
    type Item = (usize, u8);

    fn next(&mut self) -> Option<(usize, u8)> {
        loop {
            let i = self.at;
            let b = *self.bytes.get(i)?;
            match self.scan {
                Scan::Plain => {
                    self.at += 1;
                    return Some((i, b));
                }
                Scan::Iso2022 if b == 0x1B => {
                    let seq = self.bytes.get(i + 1..).unwrap_or_default();
                    let (len, shifted) = if seq.starts_with(b"$(D") {
                        (4, true)
                    } else if seq.starts_with(b"$@")
                        || seq.starts_with(b"$B")
                        || seq.starts_with(b"(I")
                    {
                        (3, true)
                    } else if seq.starts_with(b"(B") || seq.starts_with(b"(J") {
                        (3, false)
                    } else {
                        (1, self.shifted)
                    };
                    self.at += len;
                    self.shifted = shifted;
                }
                Scan::Iso2022 => {
                    self.at += 1;
                    if is_segment_end(b) {
                        // A line must end in ASCII; a broken message does not hide the rest.
                        self.shifted = false;
                        return Some((i, b));
                    }
                    if !self.shifted {
                        return Some((i, b));
                    }
                }
                Scan::ShiftJis | Scan::Big5Gb18030 if is_lead(self.scan, b) => {
                    // Lead and trail byte; a line end is never a trail byte.
                    let trail_breaks = self.bytes.get(i + 1).is_some_and(|t| is_segment_end(*t));
                    self.at += if trail_breaks { 1 } else { 2 };
                }
                Scan::ShiftJis | Scan::Big5Gb18030 => {
                    self.at += 1;
                    return Some((i, b));
                }
            }
        }
    }
}

/// Whether an ISO-2022 run is still shifted (not back to ASCII) at the end of `bytes`, which
/// must start at a character boundary in the initial state (a segment start).
pub(crate) fn shifted_at_end(bytes: &[u8], scan: Scan) -> bool {
    let mut chars = Chars::new(bytes, scan);
    while chars.next().is_some() {}
    chars.shifted
}

/// The next field separator or line end at or after `from`.
fn next_boundary(bytes: &[u8], from: usize, field: u8, scan: Scan) -> Option<usize> {
    let rest = bytes.get(from..)?;
    let found = match scan {
        Scan::Plain => memchr::memchr3(field, b'\r', b'\n', rest),
        _ => Chars::new(rest, scan)
            .find(|(_, b)| *b == field || is_segment_end(*b))
            .map(|(i, _)| i),
    };
    found.map(|i| from + i)
}

impl Index {
    /// The segment at 0-based `position` of the message `bytes` this index was made from.
    pub(crate) fn segment<'a>(&'a self, bytes: &'a [u8], position: usize) -> Option<Segment<'a>> {
        let span = *self.segments.get(position)?;
        Some(segment_of(
            bytes,
            &self.seps,
            span,
            self.delimiters,
            self.scan,
        ))
    }

    /// Bring the index up to date after an edit replaced the bytes `removed` at `at` with
    /// `inserted` bytes; `bytes` is the message after the edit. The result is exactly what
    /// [`index`] gives for `bytes`; on error the index is unchanged.
    ///
    /// Only the segments the edit touched are indexed again: from the segment the edit starts
    /// in up to the first segment start after the edit that was a segment start before it
    /// (from there on the bytes, and so the index, are the old ones moved by the change in
    /// length; see [`index_segments`]). The offsets after that are moved, not recomputed.
    /// The whole message is read again when the edit may change how all of it is read: the
    /// delimiters or MSH-18 (or any MSH edit when MSH-18 names a multi-byte charset, whose
    /// MSH-18 is found by a plain scan), or an ISO-2022 escape added or removed when MSH-18 is
    /// empty (the escape then decides the scan).
    pub(crate) fn respliced(
        &mut self,
        bytes: &[u8],
        at: usize,
        removed: &[u8],
        inserted: usize,
    ) -> Result<(), ParseError> {
        if u32::try_from(bytes.len()).is_err() {
            return Err(ParseError::TooLarge { len: bytes.len() });
        }
        if !self.respliced_in_place(bytes, at, removed, inserted)? {
            *self = index(bytes)?;
        }
        debug_assert_eq!(
            Ok(&*self),
            index(bytes).as_ref(),
            "incremental index differs from a fresh parse after replacing {} bytes at {at} with {inserted}",
            removed.len()
        );
        Ok(())
    }

    /// [`respliced`](Self::respliced) without the fallback: `Ok(false)` (index unchanged)
    /// when the whole message must be indexed again.
    fn respliced_in_place(
        &mut self,
        bytes: &[u8],
        at: usize,
        removed: &[u8],
        inserted: usize,
    ) -> Result<bool, ParseError> {
        let field = self.delimiters.field;
        let edit_end = at + inserted;
        let Some(new) = bytes.get(at..edit_end) else {
            return Ok(false);
        };
        if self.charset == Some(Charset::Ascii) {
            let before = at.checked_sub(1).and_then(|i| bytes.get(i)).copied();
            let after = bytes.get(edit_end).copied();
            if has_iso2022_escape(before, removed, after) || has_iso2022_escape(before, new, after)
            {
                return Ok(false);
            }
        }
        // The segment the edit starts in; or an earlier one when the edit is in the first four
        // bytes of a segment (they decide whether a segment starts there) and those no longer
        // make a segment start.
        let mut k = self.segments.partition_point(|s| s.start as usize <= at);
        loop {
            let Some(prev) = k.checked_sub(1) else {
                return Ok(false);
            };
            k = prev;
            let start = self.segments[k].start as usize;
            if at >= start + 4 || (k > 0 && segment_id_at(bytes, start, field)) {
                break;
            }
        }
        // Under a multi-byte scan MSH's fields may not lie where the plain scan that finds
        // MSH-18 sees them.
        if k == 0 && self.scan != Scan::Plain {
            return Ok(false);
        }
        let from = self.segments[k];
        // Where a segment started before the edit, for a segment start after it.
        let old_start = |next: usize| next - inserted + removed.len();
        let old = &self.segments;
        let resync = |next: usize| {
            old.binary_search_by_key(&old_start(next), |s| s.start as usize)
                .ok()
        };
        // Room for what the edit's segment had and a few more, so that an edit inside one
        // segment does not grow these while indexing it.
        let mut segments = Vec::with_capacity(4);
        let mut seps = Vec::with_capacity((from.sep_end - from.sep_start) as usize + 8);
        let mut rows = Rows {
            segments: &mut segments,
            seps: &mut seps,
            before: k,
            sep_base: from.sep_start,
        };
        let stopped = index_segments(
            bytes,
            from.start as usize,
            field,
            self.scan,
            &mut rows,
            |next| next >= edit_end && resync(next).is_some(),
        )?;
        // Old segments `k..m` are the ones indexed again.
        let m = stopped.and_then(resync).unwrap_or(old.len());
        if k == 0 && !self.same_header(bytes, &segments, &seps, at, removed, inserted) {
            return Ok(false);
        }
        let sep_lo = from.sep_start as usize;
        let sep_hi = old.get(m).map_or(self.seps.len(), |s| s.sep_start as usize);
        let (new_segments, new_seps) = (segments.len(), seps.len());
        // Offsets fit in u32 (checked by the caller), so moving them by the change in length
        // in wrapping u32 arithmetic gives the right offsets.
        let shift = (inserted as u32).wrapping_sub(removed.len() as u32);
        let sep_shift = (new_seps as u32).wrapping_sub((sep_hi - sep_lo) as u32);
        self.segments.splice(k..m, segments);
        self.seps.splice(sep_lo..sep_hi, seps);
        for s in &mut self.segments[k + new_segments..] {
            s.start = s.start.wrapping_add(shift);
            s.end = s.end.wrapping_add(shift);
            s.sep_start = s.sep_start.wrapping_add(sep_shift);
            s.sep_end = s.sep_end.wrapping_add(sep_shift);
        }
        for s in &mut self.seps[sep_lo + new_seps..] {
            *s = s.wrapping_add(shift);
        }
        Ok(true)
    }

    /// Whether MSH, indexed again after an edit (the first of `segments`, under a plain
    /// scan), still declares this index's delimiters and MSH-18.
    fn same_header(
        &self,
        bytes: &[u8],
        segments: &[SegmentSpan],
        seps: &[u32],
        at: usize,
        removed: &[u8],
        inserted: usize,
    ) -> bool {
        let Some(&msh) = segments.first() else {
            return false;
        };
        let Some(header) = bytes.get(msh.start as usize..) else {
            return false;
        };
        if read_delimiters(header).ok() != Some(self.delimiters) {
            return false;
        }
        // MSH-18 before the edit: its range in the old offsets, read from the bytes the edit
        // left alone (an edit inside it is a change).
        let Some(&old_msh) = self.segments.first() else {
            return false;
        };
        let old_range =
            segment_of(bytes, &self.seps, old_msh, self.delimiters, self.scan).field_range(18);
        let old_18 = match old_range {
            None => Some(&b""[..]),
            Some(r) if r.end <= at => bytes.get(r),
            Some(r) if r.start >= at + removed.len() => {
                bytes.get(r.start - removed.len() + inserted..r.end - removed.len() + inserted)
            }
            Some(_) => None,
        };
        // The new MSH's separators are the first of `seps` (it is segment 0).
        let new_18 = segment_of(bytes, seps, msh, self.delimiters, self.scan)
            .field(18)
            .unwrap_or_default();
        old_18 == Some(new_18)
    }
}

fn segment_of<'a>(
    message: &'a [u8],
    seps: &'a [u32],
    span: SegmentSpan,
    delimiters: Delimiters,
    scan: Scan,
) -> Segment<'a> {
    let seps = seps
        .get(span.sep_start as usize..span.sep_end as usize)
        .unwrap_or_default();
    Segment {
        message,
        span,
        seps,
        delimiters,
        scan,
    }
}

/// A parsed HL7 v2 message borrowing its bytes.
///
/// Parsing indexes every segment and every field separator in one pass over the bytes; a
/// field, repetition, component or subcomponent is then a sub-slice of the input, found
/// without allocating. The bytes are never changed: [`Message::as_bytes`] is the input, so
/// an unmodified message serialises to exactly what was received. To edit, use
/// [`MessageBuf`](crate::MessageBuf).
#[derive(Debug, Clone)]
pub struct Message<'a> {
    bytes: &'a [u8],
    delimiters: Delimiters,
    segments: Cow<'a, [SegmentSpan]>,
    seps: Cow<'a, [u32]>,
    scan: Scan,
    charset: Option<Charset>,
}

/// One segment of a message.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// The whole message (offsets in `span` and `seps` are into it).
    message: &'a [u8],
    span: SegmentSpan,
    /// This segment's field separators, absolute offsets.
    seps: &'a [u32],
    delimiters: Delimiters,
    scan: Scan,
}

/// What a path holds, with HL7's distinction between an empty value and an explicit null.
///
/// In HL7 v2 an empty field means "no value sent" (a receiver keeps what it has), while `""`
/// (two double quotes) means "delete the value you have".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// The segment, field or component is not in the message at all.
    Absent,
    /// Present but empty.
    Empty,
    /// The explicit null `""`.
    Null,
    /// A value (raw, still escaped).
    Present(&'a [u8]),
}

impl<'a> Value<'a> {
    /// Classify raw bytes found at a path (`None` when the path is absent).
    pub fn from_raw(raw: Option<&'a [u8]>) -> Value<'a> {
        match raw {
            None => Value::Absent,
            Some([]) => Value::Empty,
            Some(b"\"\"") => Value::Null,
            Some(raw) => Value::Present(raw),
        }
    }

    /// The raw bytes of a present value.
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self {
            Value::Present(raw) => Some(raw),
            _ => None,
        }
    }
}

fn is_segment_end(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

/// Delimiters must be printable ASCII punctuation. Anything else (a control byte, a space, a
/// non-ASCII byte that would be a different character in every charset) is refused.
fn valid_delimiter(b: u8) -> bool {
    b.is_ascii_punctuation()
}

/// Does a segment start at `at`? Three upper-case letters or digits, then the field
/// separator, a line end, or the end of the input.
fn segment_id_at(bytes: &[u8], at: usize, field: u8) -> bool {
    let Some(id) = bytes.get(at..at + 3) else {
        return false;
    };
    id.iter()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && bytes
            .get(at + 3)
            .is_none_or(|b| *b == field || is_segment_end(*b))
}

/// What follows a line break.
enum AfterBreak {
    /// A new segment starts at this offset.
    Segment(usize),
    /// Text without a segment id starts at this offset: it continues the previous segment.
    Continuation(usize),
    /// Only blank lines (or control bytes) remain.
    End,
}

/// Look past the line break at `at`, skipping blank lines and lines of control bytes only
/// (leftover MLLP framing).
fn after_break(bytes: &[u8], at: usize, field: u8) -> AfterBreak {
    let mut j = at + 1;
    loop {
        // Skip a blank line: bytes up to the next line end that are all spaces or controls.
        let mut k = j;
        while let Some(&b) = bytes.get(k) {
            if b > b' ' || is_segment_end(b) {
                break;
            }
            k += 1;
        }
        match bytes.get(k) {
            None => return AfterBreak::End,
            Some(&b) if is_segment_end(b) => j = k + 1,
            Some(_) if k == j && segment_id_at(bytes, j, field) => return AfterBreak::Segment(j),
            Some(_) => return AfterBreak::Continuation(j),
        }
    }
}

/// Whether `before`, `middle` and `after` put one after the other hold `ESC $` (the start of
/// an ISO-2022 escape that switches to a two-byte set).
fn has_iso2022_escape(before: Option<u8>, middle: &[u8], after: Option<u8>) -> bool {
    const ESC: u8 = 0x1B;
    // Not `memmem`: building its searcher costs more than these few bytes take to read.
    memchr::memchr_iter(ESC, middle).any(|i| middle.get(i + 1) == Some(&b'$'))
        || match (middle.first(), middle.last()) {
            (Some(&first), Some(&last)) => {
                (before == Some(ESC) && first == b'$') || (last == ESC && after == Some(b'$'))
            }
            _ => before == Some(ESC) && after == Some(b'$'),
        }
}

/// Index `bytes` (see [`Message::parse`]), reading MSH-18 to know how to scan them.
pub(crate) fn index(bytes: &[u8]) -> Result<Index, ParseError> {
    let mut index = index_with(bytes, Scan::Plain)?;
    let d = index.delimiters;
    let msh18 = index
        .segment(bytes, 0)
        .and_then(|msh| msh.field(18))
        .unwrap_or_default();
    // The common codes without the general lookup (which normalises text and allocates).
    let charset = match msh18 {
        b"" | b"ASCII" => Some(Charset::Ascii),
        b"UNICODE UTF-8" => Some(Charset::Utf8),
        b"8859/1" => Some(Charset::Iso8859_1),
        other => Charset::from_msh18_field(other, &d).ok(),
    };
    let scan = scan_for(
        msh18,
        charset,
        memchr::memmem::find(bytes, b"\x1b$").is_some(),
    );
    if scan != Scan::Plain {
        index = index_with(bytes, scan)?;
    }
    index.charset = charset;
    Ok(index)
}

/// How a message's bytes are scanned for delimiters: by the charset MSH-18 declares; and
/// when it declares none, ISO-2022 if the message holds an ISO-2022 escape (`ESC $`), because
/// then the bytes say what they are.
pub(crate) fn scan_for(msh18: &[u8], charset: Option<Charset>, has_iso2022_escape: bool) -> Scan {
    match charset.map_or(Scan::Plain, Charset::scan) {
        Scan::Plain if msh18.is_empty() && has_iso2022_escape => Scan::Iso2022,
        scan => scan,
    }
}

/// Index `bytes`, telling delimiters from multi-byte characters as `scan` says.
fn index_with(bytes: &[u8], scan: Scan) -> Result<Index, ParseError> {
    if u32::try_from(bytes.len()).is_err() {
        return Err(ParseError::TooLarge { len: bytes.len() });
    }
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
    // About one separator per 8 bytes in typical messages; a guess, not a limit.
    let mut seps: Vec<u32> = Vec::with_capacity(bytes.len() / 8 + 8);
    let mut rows = Rows {
        segments: &mut segments,
        seps: &mut seps,
        before: 0,
        sep_base: 0,
    };
    index_segments(bytes, start, delimiters.field, scan, &mut rows, |_| false)?;
    Ok(Index {
        delimiters,
        segments,
        seps,
        scan,
        charset: None,
    })
}

/// Where [`index_segments`] writes: segment spans and field separators, numbered as if
/// `before` segments and `sep_base` separators came first.
struct Rows<'r> {
    segments: &'r mut Vec<SegmentSpan>,
    seps: &'r mut Vec<u32>,
    /// Segments before the first one indexed (for the numbers in errors).
    before: usize,
    /// Separators before the first one indexed (added to `sep_start`/`sep_end`).
    sep_base: u32,
}

/// Index the segments of `bytes` from `seg_start`, where a segment starts, to the end of the
/// input, or until a segment would start at an offset for which `stop` says yes (checked
/// for `seg_start` too). Returns that offset, or `None` at the end of the input.
///
/// Indexing from a segment start depends on nothing before it: a line end is found in every
/// shift state and ends any ISO-2022 run, and the scan for each field starts afresh after its
/// separator (which is only found outside a run or a two-byte character). So indexing from a
/// segment start gives exactly what a whole parse gives from there, which is what lets an
/// edit re-index only the segments it touched (`Index::respliced`).
///
/// `bytes.len()` must fit in a `u32` (checked by the callers).
#[inline(always)]
fn index_segments(
    bytes: &[u8],
    mut seg_start: usize,
    field: u8,
    scan: Scan,
    rows: &mut Rows<'_>,
    mut stop: impl FnMut(usize) -> bool,
) -> Result<Option<usize>, ParseError> {
    if stop(seg_start) {
        return Ok(Some(seg_start));
    }
    let mut sep_start = rows.seps.len();
    let close = |rows: &mut Rows<'_>, seg_start: usize, end: usize, sep_start: usize| {
        let sep_end = rows.seps.len();
        // Offsets fit in u32: checked by the callers.
        rows.segments.push(SegmentSpan {
            start: seg_start as u32,
            end: end as u32,
            sep_start: rows.sep_base + sep_start as u32,
            sep_end: rows.sep_base + sep_end as u32,
        });
        sep_end
    };
    let mut pos = seg_start + 3;
    loop {
        let Some(at) = next_boundary(bytes, pos, field, scan) else {
            close(rows, seg_start, bytes.len(), sep_start);
            return Ok(None);
        };
        if bytes[at] == field {
            rows.seps.push(at as u32);
            pos = at + 1;
            continue;
        }
        match after_break(bytes, at, field) {
            AfterBreak::Segment(next) => {
                sep_start = close(rows, seg_start, at, sep_start);
                if stop(next) {
                    return Ok(Some(next));
                }
                seg_start = next;
                pos = next + 3;
            }
            // A line without a segment id continues the previous segment: senders put raw
            // line breaks inside free-text fields.
            AfterBreak::Continuation(next) => {
                // Only a field's text can go on over a line break: bytes between a segment
                // id and its first field separator would belong to no field.
                if rows.seps.len() == sep_start {
                    return Err(ParseError::OrphanLine {
                        index: rows.before + rows.segments.len() + 1,
                        id: printable(bytes.get(seg_start..seg_start + 3).unwrap_or_default(), 3),
                        found: printable(bytes.get(next..).unwrap_or_default(), 8),
                    });
                }
                pos = next;
            }
            AfterBreak::End => {
                close(rows, seg_start, at, sep_start);
                return Ok(None);
            }
        }
    }
}

/// Offsets of `sep` in `slice` that are real delimiters under `scan`.
pub(crate) fn positions(slice: &[u8], sep: u8, scan: Scan) -> impl Iterator<Item = usize> + '_ {
    let (plain, chars) = match scan {
        Scan::Plain => (Some(memchr::memchr_iter(sep, slice)), None),
        _ => (None, Some(Chars::new(slice, scan))),
    };
    plain.into_iter().flatten().chain(
        chars
            .into_iter()
            .flatten()
            .filter(move |(_, b)| *b == sep)
            .map(|(i, _)| i),
    )
}

/// The `n`-th (1-based) part of `range` in `bytes` split on `sep`, as an absolute range.
pub(crate) fn nth_part(
    bytes: &[u8],
    range: Range<usize>,
    sep: u8,
    n: usize,
    scan: Scan,
) -> Option<Range<usize>> {
    let slice = bytes.get(range.clone())?;
    let mut part = 1;
    let mut part_start = 0;
    for i in positions(slice, sep, scan) {
        if part == n {
            return Some(range.start + part_start..range.start + i);
        }
        part += 1;
        part_start = i + 1;
    }
    (part == n).then_some(range.start + part_start..range.end)
}

/// How many parts `range` has when split on `sep` (an empty range is one empty part).
pub(crate) fn part_count(bytes: &[u8], range: Range<usize>, sep: u8, scan: Scan) -> usize {
    bytes
        .get(range)
        .map_or(0, |s| positions(s, sep, scan).count() + 1)
}

/// The parts of `raw` split on `sep` under `scan`.
pub(crate) fn split_parts(raw: &[u8], sep: u8, scan: Scan) -> impl Iterator<Item = &[u8]> + '_ {
    let mut start = 0;
    let mut seps = positions(raw, sep, scan);
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match seps.next() {
            Some(i) => {
                let part = raw.get(start..i);
                start = i + 1;
                part
            }
            None => {
                done = true;
                raw.get(start..)
            }
        }
    })
}

impl<'a> Message<'a> {
    /// Parse a message. Leading whitespace and a UTF-8 byte-order mark are skipped; segments
    /// may end with CR, LF or CRLF; blank lines are ignored; a line that does not start with
    /// a segment id continues the previous segment (a raw line break inside a text field).
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let index = index(bytes)?;
        Ok(Message {
            bytes,
            delimiters: index.delimiters,
            segments: Cow::Owned(index.segments),
            seps: Cow::Owned(index.seps),
            scan: index.scan,
            charset: index.charset,
        })
    }

    /// A message over bytes and an index computed from exactly those bytes.
    pub(crate) fn from_index(bytes: &'a [u8], index: &'a Index) -> Message<'a> {
        Message {
            bytes,
            delimiters: index.delimiters,
            segments: Cow::Borrowed(&index.segments),
            seps: Cow::Borrowed(&index.seps),
            scan: index.scan,
            charset: index.charset,
        }
    }

    /// The index of this message, owned (for [`MessageBuf`](crate::MessageBuf)).
    pub(crate) fn to_index(&self) -> Index {
        Index {
            delimiters: self.delimiters,
            segments: self.segments.to_vec(),
            seps: self.seps.to_vec(),
            scan: self.scan,
            charset: self.charset,
        }
    }

    /// The input bytes, unchanged: serialising an unmodified message is this slice.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The message's delimiters.
    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    pub(crate) fn spans(&self) -> &[SegmentSpan] {
        &self.segments
    }

    fn segment_at(&self, span: SegmentSpan) -> Segment<'_> {
        segment_of(self.bytes, &self.seps, span, self.delimiters, self.scan)
    }

    /// How this message's delimiters are found (from MSH-18).
    pub(crate) fn scan(&self) -> Scan {
        self.scan
    }

    /// The charset MSH-18 declares (ASCII when MSH-18 is empty); `None` when it names a
    /// charset Ferry does not know.
    pub fn declared_charset(&self) -> Option<Charset> {
        self.charset
    }

    /// The parts of a value of this message split on `sep` (a repetition, component or
    /// subcomponent separator). Use this rather than a plain byte split: in ISO-2022-JP,
    /// Shift_JIS, Big5 and GB 18030 a delimiter byte can be half of a character.
    pub fn parts<'v>(&self, raw: &'v [u8], sep: u8) -> impl Iterator<Item = &'v [u8]> + 'v {
        split_parts(raw, sep, self.scan)
    }

    /// Segments in order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> + '_ {
        self.segments.iter().map(|s| self.segment_at(*s))
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The segment at a 0-based position in the message.
    pub fn segment_at_index(&self, index: usize) -> Option<Segment<'_>> {
        self.segments.get(index).map(|s| self.segment_at(*s))
    }

    /// The `occurrence`-th (1-based) segment with this id.
    pub fn segment(&self, id: &str, occurrence: usize) -> Option<Segment<'_>> {
        self.segment_position(id.as_bytes(), occurrence)
            .and_then(|i| self.segment_at_index(i))
    }

    /// 0-based position of the `occurrence`-th (1-based) segment with this id.
    pub(crate) fn segment_position(&self, id: &[u8], occurrence: usize) -> Option<usize> {
        let wanted = occurrence.checked_sub(1)?;
        self.segments
            .iter()
            .enumerate()
            .filter(|(_, s)| self.bytes.get(s.start as usize..s.start as usize + 3) == Some(id))
            .nth(wanted)
            .map(|(i, _)| i)
    }

    /// The raw (still escaped) bytes at a path such as `PID-5.1`; `None` when absent.
    pub fn get(&self, path: &str) -> Result<Option<&'a [u8]>, PathError> {
        let path = Path::parse(path)?;
        Ok(self.get_path(&path))
    }

    /// The raw bytes at a parsed path.
    pub fn get_path(&self, path: &Path) -> Option<&'a [u8]> {
        let range = self.locate_range(path)?;
        self.bytes.get(range)
    }

    /// The byte range a path addresses in [`as_bytes`](Self::as_bytes), if present.
    pub fn locate_range(&self, path: &Path) -> Option<Range<usize>> {
        let i = self.segment_position(path.segment_id(), path.occurrence)?;
        self.segment_at_index(i)?.locate_range(path)
    }

    /// What a path holds: absent, empty, the explicit null `""`, or a value.
    pub fn value(&self, path: &str) -> Result<Value<'a>, PathError> {
        Ok(Value::from_raw(self.get(path)?))
    }

    /// The text at a path with escapes decoded (`\F\` → `|` …) and the bytes read in the
    /// charset MSH-18 declares (ISO-8859-1 when they do not fit it, the default
    /// [`CharsetPolicy`](crate::charset::CharsetPolicy)); `None` when absent. Borrows, without
    /// allocating, when the value has no escape and is ASCII or valid UTF-8 in a UTF-8
    /// compatible message.
    pub fn get_str(&self, path: &str) -> Result<Option<Cow<'a, str>>, PathError> {
        Ok(self.get(path)?.map(|raw| self.text(raw)))
    }

    /// Decode a raw value of this message to text (see [`get_str`](Self::get_str)).
    pub fn text<'v>(&self, raw: &'v [u8]) -> Cow<'v, str> {
        let charset = self.charset.unwrap_or(Charset::Utf8);
        let decoder = crate::charset::TextDecoder::new(
            charset,
            self.delimiters,
            crate::charset::CharsetPolicy::default(),
        );
        match decoder.text(raw) {
            Ok(text) => text,
            Err(_) => String::from_utf8_lossy(raw),
        }
    }

    fn header(&self, field: usize) -> Option<&'a str> {
        let msh = self.segment_at(*self.segments.first()?);
        let raw = self.bytes.get(msh.field_range(field)?)?;
        std::str::from_utf8(raw).ok()
    }

    fn header_component(&self, field: usize, component: usize) -> Option<&'a str> {
        let msh = self.segment_at(*self.segments.first()?);
        let raw = self.bytes.get(msh.field_range(field)?)?;
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
        let msh = self.segment_at(*self.segments.first()?);
        let raw = self.bytes.get(msh.field_range(18)?)?;
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
        let b = self.as_bytes();
        &b[..3.min(b.len())]
    }

    /// The segment id as text (segment ids are ASCII by construction).
    pub fn id_str(&self) -> &'a str {
        std::str::from_utf8(self.id()).unwrap_or("")
    }

    /// The segment's bytes (terminator excluded).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.message.get(self.span.range()).unwrap_or_default()
    }

    /// Where the segment lies in the message's bytes (terminator excluded).
    pub fn byte_range(&self) -> Range<usize> {
        self.span.range()
    }

    fn is_msh(&self) -> bool {
        self.id() == b"MSH"
    }

    /// The absolute range of field `n` (HL7 numbering), if present.
    pub fn field_range(&self, n: usize) -> Option<Range<usize>> {
        // Element e sits after separator e-1. For MSH the first separator *is* MSH-1, so
        // MSH-2 is element 1 and MSH-n element n-1.
        let e = if self.is_msh() {
            match n {
                0 => return None,
                1 => {
                    let at = self.span.start as usize + 3;
                    return self.seps.first().map(|_| at..at + 1);
                }
                n => n - 1,
            }
        } else {
            n
        };
        let start = *self.seps.get(e.checked_sub(1)?)? as usize + 1;
        let end = self
            .seps
            .get(e)
            .map_or(self.span.end as usize, |s| *s as usize);
        Some(start..end)
    }

    /// Field `n` (1-based, HL7 numbering: for MSH, MSH-1 is the field separator itself and
    /// MSH-2 the encoding characters). `None` when the segment has fewer fields.
    pub fn field(&self, n: usize) -> Option<&'a [u8]> {
        self.message.get(self.field_range(n)?)
    }

    /// Number of fields present (HL7 numbering).
    pub fn field_count(&self) -> usize {
        let seps = self.seps.len();
        // MSH-1 is the first separator itself, so MSH has one field more than separators
        // (and none at all when it has no separator).
        if self.is_msh() && seps > 0 {
            seps + 1
        } else {
            seps
        }
    }

    /// The fields in order, from field 1 (HL7 numbering; see [`field`](Self::field)).
    pub fn fields(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        (1..=self.field_count()).filter_map(|n| self.field(n))
    }

    /// Locate a path's field/repetition/component/subcomponent inside this segment.
    pub fn locate(&self, path: &Path) -> Option<&'a [u8]> {
        self.message.get(self.locate_range(path)?)
    }

    /// [`locate`](Self::locate) as an absolute byte range of the message.
    pub fn locate_range(&self, path: &Path) -> Option<Range<usize>> {
        let field = self.field_range(path.field)?;
        // MSH-1 and MSH-2 hold delimiters: never split them.
        if self.is_msh() && path.field <= 2 {
            return (path.repetition == 1
                && path.component.is_none_or(|c| c == 1)
                && path.subcomponent.is_none_or(|s| s == 1))
            .then_some(field);
        }
        let d = self.delimiters;
        let bytes = self.message;
        let scan = self.scan;
        let rep = match d.repetition {
            Some(r) => nth_part(bytes, field, r, path.repetition, scan)?,
            None if path.repetition == 1 => field,
            None => return None,
        };
        let Some(c) = path.component else {
            return Some(rep);
        };
        let comp = nth_part(bytes, rep, d.component, c, scan)?;
        let Some(s) = path.subcomponent else {
            return Some(comp);
        };
        match d.subcomponent {
            Some(sub) => nth_part(bytes, comp, sub, s, scan),
            None if s == 1 => Some(comp),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fields 3..=17 empty, then MSH-18.
    fn header(msh18: &str) -> String {
        format!("MSH|^~\\&|||||||ADT^A01|1|P|2.5||||||{msh18}")
    }

    #[test]
    fn iso_2022_jp_delimiter_bytes_inside_characters_do_not_split() {
        // ESC $ B, then the JIS pairs 0x25 0x26 (ウ, `%&`) and 0x25 0x7C (`%|`), ESC ( B.
        let text = format!("{}\rPID|1||\x1b$B%&%|\x1b(B^X|Y\r", header("ISO IR87"));
        let m = Message::parse(text.as_bytes()).expect("parse");
        assert_eq!(m.declared_charset(), Some(Charset::Iso2022Jp));
        let pid = m.segment("PID", 1).expect("PID");
        assert_eq!(pid.field_count(), 4);
        assert_eq!(pid.field(3), Some(&b"\x1b$B%&%|\x1b(B^X"[..]));
        assert_eq!(
            m.get("PID-3.1").expect("path"),
            Some(&b"\x1b$B%&%|\x1b(B"[..])
        );
        assert_eq!(m.get("PID-3.2").expect("path"), Some(&b"X"[..]));
        assert_eq!(m.get("PID-4").expect("path"), Some(&b"Y"[..]));
        // The same bytes read as ASCII would cut the name at `&` and `|`.
        let plain = text.replace("ISO IR87", "ASCII");
        let p = Message::parse(plain.as_bytes()).expect("parse");
        assert_eq!(p.segment("PID", 1).map(|s| s.field_count()), Some(5));
        // Undeclared, the ISO-2022 escape itself says what the bytes are.
        let undeclared = text.replace("ISO IR87", "");
        let u = Message::parse(undeclared.as_bytes()).expect("parse");
        assert_eq!(u.segment("PID", 1).map(|s| s.field_count()), Some(4));
    }

    #[test]
    fn the_msh18_fast_path_agrees_with_the_charset_table() {
        let declared = |code: &str| {
            let text = header(code);
            Message::parse(text.as_bytes())
                .expect("parse")
                .declared_charset()
        };
        let d = Delimiters::default();
        for code in ["", "ASCII", "UNICODE UTF-8", "8859/1"] {
            let general = Charset::from_msh18_field(code.as_bytes(), &d).ok();
            assert_eq!(declared(code), general, "{code}");
        }
        assert_eq!(declared("8859/15"), Some(Charset::Iso8859_15));
        assert_eq!(declared("NOT A CHARSET"), None);
    }

    #[test]
    fn a_line_after_a_segment_without_fields_is_refused() {
        // Fuzz finding (hl7_parse): `AL1` alone on its line, then `CTgree|||||F`. Taken as a
        // continuation, the bytes between the id and the first `|` belonged to no field, and
        // the JSON form (rightly) could not reproduce them.
        for bad in [
            &b"MSH|^~\\&|A\rAL1\rCTgree|||||F\r"[..],
            b"MSH|^~\\&|A\rPID\r|1|2\r",
        ] {
            assert!(
                matches!(
                    Message::parse(bad),
                    Err(ParseError::OrphanLine { index: 2, .. })
                ),
                "{:?}",
                Message::parse(bad)
            );
        }
        // A segment with fields still takes continuation lines into its last field.
        let ok = Message::parse(b"MSH|^~\\&|A\rNTE|1||line one\rline two\r").expect("parse");
        assert_eq!(
            ok.get("NTE-3").expect("path"),
            Some(&b"line one\rline two"[..])
        );
        // A segment id alone on its line is still a segment.
        let bare = Message::parse(b"MSH|^~\\&|A\rPID\rPV1|1\r").expect("parse");
        assert_eq!(bare.segment_count(), 3);
    }

    #[test]
    fn lead_byte_charsets_skip_trail_bytes() {
        // GB 18030 0x81 0x7C: a two-byte character whose trail byte is `|`.
        let mut bytes = header("GB 18030-2000").into_bytes();
        bytes.extend_from_slice(b"\rPID|1||A\x81\x7cB^C|D\r");
        let m = Message::parse(&bytes).expect("parse");
        assert_eq!(m.get("PID-3.1").expect("path"), Some(&b"A\x81\x7cB"[..]));
        assert_eq!(m.get("PID-4").expect("path"), Some(&b"D"[..]));
        let parts: Vec<&[u8]> = m.parts(b"A\x81^B^C", b'^').collect();
        assert_eq!(parts, vec![&b"A\x81^B"[..], &b"C"[..]]);
    }

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
