//! Editing a message: [`MessageBuf`] owns the bytes and their index.
//!
//! An edit splices new bytes into the message and re-indexes only the segments it touched
//! (the offsets after them move by the change in length; the index stays exactly what parsing
//! the new bytes would give), so every byte that was not edited stays exactly as received:
//! segment terminators, empty trailing fields, unusual but legal spacing. Serialising is
//! handing out the bytes.
//!
//! Paths follow [`Path`]: reading `PID-3` gives the first repetition, but **setting or
//! deleting `PID-3` acts on the whole field** (every repetition), because that is what
//! "set the field" means to an interface engineer; `PID-3(2)` names one repetition.
//! Setting a value that is not there yet adds the separators needed to reach it
//! (`PID-30` on a segment with 5 fields adds 25 field separators); setting a field of a
//! segment that is not in the message appends that segment when it would be the next
//! occurrence (`ZPI[1]` when there is no ZPI).
//!
//! [`MessageBuf::set`] takes text and escapes it with the message's own delimiters;
//! [`MessageBuf::set_raw`] takes ER7 bytes as they go on the wire and refuses the delimiters
//! that would change the structure above the addressed level.

use std::ops::Range;

use crate::charset::Charset;
use crate::escape;
use crate::message::{Index, Message, ParseError, index, nth_part, part_count, shifted_at_end};
use crate::path::{Path, PathError};

/// An owned, editable HL7 v2 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBuf {
    bytes: Vec<u8>,
    index: Index,
}

/// Why an edit was refused. The message is unchanged after any error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The path does not parse.
    #[error(transparent)]
    Path(#[from] PathError),
    /// MSH-1 and MSH-2 are the delimiters.
    #[error("MSH-1 and MSH-2 hold the message's delimiters and cannot be set by path")]
    Delimiters,
    /// The segment is missing and is not the next occurrence either.
    #[error("segment {id}[{occurrence}] is not in the message; only {id}[{next}] can be added")]
    SegmentGap {
        /// Segment id.
        id: String,
        /// The occurrence asked for.
        occurrence: usize,
        /// The occurrence that could be added.
        next: usize,
    },
    /// A raw value holds a delimiter that would change the structure above its level.
    #[error("a raw value for {path} may not contain `{found}` ({what})")]
    DelimiterInValue {
        /// The path being set.
        path: String,
        /// The character found.
        found: char,
        /// What that character is in this message.
        what: &'static str,
    },
    /// The message declares no separator for the level the path addresses.
    #[error("{path}: the message declares no {what} separator in MSH-2")]
    NoSeparator {
        /// The path being set.
        path: String,
        /// Which separator is missing.
        what: &'static str,
    },
    /// A segment position outside the message.
    #[error("segment position {index} is out of range (the message has {count} segments)")]
    SegmentIndex {
        /// The position asked for (0-based).
        index: usize,
        /// Segments in the message.
        count: usize,
    },
    /// The MSH segment cannot be removed, renamed or preceded.
    #[error("the MSH segment must stay the first segment of the message")]
    HeaderSegment,
    /// A segment given as bytes is not a segment.
    #[error("not a segment: {0}")]
    InvalidSegment(String),
    /// The value could not be placed so that it reads back: the text before it ends inside a
    /// multi-byte character, which would take the separators that reach the value.
    #[error(
        "{path}: the text before it ends inside a multi-byte character, so a value there would not read back"
    )]
    Unreachable {
        /// The path being set.
        path: String,
    },
    /// The message's charset has no way to write a character of the text.
    #[error("{path}: `{found}` cannot be written in the message's charset ({charset})")]
    Unencodable {
        /// The path being set.
        path: String,
        /// The charset (MSH-18 code).
        charset: &'static str,
        /// The character.
        found: char,
    },
    /// The text holds a delimiter, but the message declares no escape character to write it.
    #[error(
        "{path}: the text holds `{found}`, and the message declares no escape character in MSH-2 to write it"
    )]
    CannotEscape {
        /// The path being set.
        path: String,
        /// The character that needs escaping.
        found: char,
    },
    /// The edited bytes no longer parse (should not happen; reported rather than hidden).
    #[error("the edit would make the message unparseable: {0}")]
    Parse(#[from] ParseError),
}

/// The level a path addresses, for checking raw values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Field,
    Repetition,
    Component,
    Subcomponent,
}

fn level(path: &Path) -> Level {
    match (path.subcomponent, path.component) {
        (Some(_), _) => Level::Subcomponent,
        (None, Some(_)) => Level::Component,
        _ if path.has_explicit_repetition() => Level::Repetition,
        _ => Level::Field,
    }
}

fn valid_segment_id(id: &[u8]) -> bool {
    id.len() == 3
        && id
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

impl MessageBuf {
    /// Parse bytes into an editable message (see [`Message::parse`]).
    pub fn parse(bytes: impl Into<Vec<u8>>) -> Result<MessageBuf, ParseError> {
        let bytes = bytes.into();
        let index = index(&bytes)?;
        Ok(MessageBuf { bytes, index })
    }

    /// An editable copy of a parsed message (no re-parse).
    pub fn from_message(message: &Message<'_>) -> MessageBuf {
        MessageBuf {
            bytes: message.as_bytes().to_vec(),
            index: message.to_index(),
        }
    }

    /// A read view: every [`Message`] accessor works on it, without copying.
    pub fn message(&self) -> Message<'_> {
        Message::from_index(&self.bytes, &self.index)
    }

    /// The serialised message.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The serialised message, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Raw bytes at a path (see [`Message::get`]).
    pub fn get(&self, path: &str) -> Result<Option<&[u8]>, PathError> {
        let path = Path::parse(path)?;
        Ok(self.message().get_path(&path))
    }

    /// Set the text at a path; delimiters in `text` are escaped (`|` → `\F\` …).
    pub fn set(&mut self, path: &str, text: &str) -> Result<(), EditError> {
        let path = Path::parse(path)?;
        let raw = self.encode(&path, text)?;
        self.set_raw_path(&path, &raw)
    }

    /// Escape text for this message and write it in the message's charset (MSH-18),
    /// refusing what cannot be written: a delimiter without an escape character, a character
    /// the charset does not have.
    fn encode(&self, path: &Path, text: &str) -> Result<Vec<u8>, EditError> {
        let d = self.index.delimiters;
        let escaped = escape::try_encode(text, &d).map_err(|e| match e {
            escape::EncodeError::NoEscapeCharacter(found) => EditError::CannotEscape {
                path: path_text(path),
                found,
            },
        })?;
        let charset = self.index.charset.unwrap_or(Charset::Utf8);
        match charset.encode(&escaped) {
            Ok(bytes) => Ok(bytes.into_owned()),
            Err(e) => Err(EditError::Unencodable {
                path: path_text(path),
                charset: charset.code(),
                found: e.character,
            }),
        }
    }

    /// Set the explicit null `""` at a path (the receiver should delete its value).
    pub fn set_null(&mut self, path: &str) -> Result<(), EditError> {
        self.set_raw(path, b"\"\"")
    }

    /// Set ER7 bytes at a path, unescaped. `PID-5` may receive `DOE^JOHN`; `PID-5.1` may not
    /// (a component cannot hold a component separator).
    pub fn set_raw(&mut self, path: &str, raw: &[u8]) -> Result<(), EditError> {
        let path = Path::parse(path)?;
        self.set_raw_path(&path, raw)
    }

    /// [`set_raw`](Self::set_raw) with a parsed path.
    pub fn set_raw_path(&mut self, path: &Path, raw: &[u8]) -> Result<(), EditError> {
        self.check_raw(path, raw)?;
        if path.segment_id() == b"MSH" && path.field <= 2 {
            return Err(EditError::Delimiters);
        }
        let (seg, appended) = self.segment_for_write(path)?;
        let placed = self.place(seg, path, raw);
        // Refused after appending the segment: the message goes back to what it was.
        if let (Err(_), Some(previous)) = (&placed, appended) {
            self.restore(previous);
        }
        placed
    }

    /// Write `raw` at `path` in segment `seg`, adding the separators needed to reach it. On
    /// failure the message is as it was before this call.
    fn place(&mut self, seg: usize, path: &Path, raw: &[u8]) -> Result<(), EditError> {
        let (range, pad) = self.target(seg, path)?;
        // Separators added after text that leaves an ISO-2022 run open would be inside the
        // run: shift back to ASCII first (the text before stays as it was).
        let mut insert = if pad.is_empty() {
            Vec::with_capacity(raw.len())
        } else {
            self.shift_back_before(seg, range.start)
        };
        insert.extend_from_slice(&pad);
        insert.extend_from_slice(raw);
        let previous = self.splice_keeping(range, &insert)?;
        // The value must read back as set; text before it that ends inside a multi-byte
        // character could swallow the separators that reach it.
        let placed = match level(path) {
            // Reading `PID-3` gives the first repetition; a whole-field set wrote them all.
            Level::Field => self
                .index
                .segment(&self.bytes, seg)
                .and_then(|s| s.field(path.field)),
            _ => self.message().get_path(path),
        };
        if placed != Some(raw) {
            self.restore(previous);
            return Err(EditError::Unreachable {
                path: path_text(path),
            });
        }
        Ok(())
    }

    /// Empty the value at a path. `PID-3` empties the whole field, `PID-5.2` one component;
    /// `PID-3(2)` removes that repetition (the ones after it move up). Returns whether the
    /// message changed (an absent path changes nothing).
    pub fn delete(&mut self, path: &str) -> Result<bool, EditError> {
        let path = Path::parse(path)?;
        if path.segment_id() == b"MSH" && path.field <= 2 {
            return Err(EditError::Delimiters);
        }
        let Some(i) = self
            .message()
            .segment_position(path.segment_id(), path.occurrence)
        else {
            return Ok(false);
        };
        let Some(segment) = self.index.segment(&self.bytes, i) else {
            return Ok(false);
        };
        let Some(field) = segment.field_range(path.field) else {
            return Ok(false);
        };
        let scan = self.index.scan;
        let range = match level(&path) {
            Level::Field => field,
            Level::Repetition => {
                let Some(sep) = self.index.delimiters.repetition else {
                    return Ok(false);
                };
                let Some(rep) = nth_part(&self.bytes, field.clone(), sep, path.repetition, scan)
                else {
                    return Ok(false);
                };
                // Take one adjacent separator with the repetition.
                if rep.end < field.end {
                    rep.start..rep.end + 1
                } else if rep.start > field.start {
                    rep.start - 1..rep.end
                } else {
                    rep
                }
            }
            Level::Component | Level::Subcomponent => match segment.locate_range(&path) {
                Some(r) => r,
                None => return Ok(false),
            },
        };
        if range.is_empty() {
            return Ok(false);
        }
        self.splice(range, b"")?;
        Ok(true)
    }

    /// Insert a repetition before repetition `n` of `PID-3(n)` (`n` = count + 1 appends).
    pub fn insert_repetition(&mut self, path: &str, text: &str) -> Result<(), EditError> {
        let path = Path::parse(path)?;
        let d = self.index.delimiters;
        let Some(sep) = d.repetition else {
            return Err(EditError::NoSeparator {
                path: path_text(&path),
                what: "repetition",
            });
        };
        if path.segment_id() == b"MSH" && path.field <= 2 {
            return Err(EditError::Delimiters);
        }
        let raw = self.encode(&path, text)?;
        let (seg, appended) = self.segment_for_write(&path)?;
        let inserted = self.insert_repetition_at(seg, &path, sep, &raw);
        if let (Err(_), Some(previous)) = (&inserted, appended) {
            self.restore(previous);
        }
        inserted
    }

    /// Insert a repetition into segment `seg`; on failure the message is as it was before.
    fn insert_repetition_at(
        &mut self,
        seg: usize,
        path: &Path,
        sep: u8,
        raw: &[u8],
    ) -> Result<(), EditError> {
        let segment = self.message_segment(seg)?;
        let Some(field) = segment.field_range(path.field) else {
            // No such field yet: inserting is setting (which checks the value reads back).
            let mut whole = path.clone();
            whole.component = None;
            whole.subcomponent = None;
            return self.place(seg, &whole, raw);
        };
        let scan = self.index.scan;
        let count = part_count(&self.bytes, field.clone(), sep, scan);
        let (range, insert) = if field.is_empty() && path.repetition == 1 {
            (field, raw.to_vec())
        } else if path.repetition > count {
            let mut insert = self.shift_back_before(seg, field.end);
            insert.extend(std::iter::repeat_n(sep, path.repetition - count));
            insert.extend_from_slice(raw);
            (field.end..field.end, insert)
        } else {
            let at =
                nth_part(&self.bytes, field, sep, path.repetition, scan).map_or(0, |r| r.start);
            let mut insert = raw.to_vec();
            insert.push(sep);
            (at..at, insert)
        };
        let previous = self.splice_keeping(range, &insert)?;
        // The repetition must read back as inserted (see `place`).
        let mut rep = path.clone();
        rep.component = None;
        rep.subcomponent = None;
        if self.message().get_path(&rep) != Some(raw) {
            self.restore(previous);
            return Err(EditError::Unreachable {
                path: path_text(path),
            });
        }
        Ok(())
    }

    /// `ESC ( B` when the text of segment `seg` up to `at` leaves an ISO-2022 run open, so
    /// that separators written at `at` are read as separators; otherwise nothing.
    fn shift_back_before(&self, seg: usize, at: usize) -> Vec<u8> {
        let start = self
            .index
            .segments
            .get(seg)
            .map_or(at, |s| s.start as usize);
        let open = self.index.scan == crate::escape::Scan::Iso2022
            && shifted_at_end(
                self.bytes.get(start..at).unwrap_or_default(),
                self.index.scan,
            );
        if open { b"\x1b(B".to_vec() } else { Vec::new() }
    }

    /// Insert a segment (its ER7 bytes, without terminator) at a 0-based position; position
    /// = segment count appends. Position 0 is refused: MSH stays first.
    pub fn insert_segment(&mut self, position: usize, segment: &[u8]) -> Result<(), EditError> {
        self.check_segment(segment)?;
        let count = self.index.segments.len();
        if position == 0 {
            return Err(EditError::HeaderSegment);
        }
        if position > count {
            return Err(EditError::SegmentIndex {
                index: position,
                count,
            });
        }
        if position == count {
            return self.append_segment(segment);
        }
        let at = self.index.segments[position].start as usize;
        let mut insert = segment.to_vec();
        insert.extend_from_slice(self.terminator());
        self.splice(at..at, &insert)
    }

    /// Append a segment (ER7 bytes, without terminator) after the last one.
    pub fn append_segment(&mut self, segment: &[u8]) -> Result<(), EditError> {
        self.append_segment_keeping(segment).map(drop)
    }

    /// [`append_segment`](Self::append_segment), handing back the message as it was.
    fn append_segment_keeping(&mut self, segment: &[u8]) -> Result<Previous, EditError> {
        self.check_segment(segment)?;
        let term = self.terminator().to_vec();
        let last_end = self
            .index
            .segments
            .last()
            .map_or(self.bytes.len(), |s| s.end as usize);
        let mut insert = Vec::with_capacity(segment.len() + term.len());
        if self
            .bytes
            .get(last_end..)
            .is_some_and(|t| t.starts_with(&term))
        {
            insert.extend_from_slice(segment);
            insert.extend_from_slice(&term);
            let at = last_end + term.len();
            self.splice_keeping(at..at, &insert)
        } else {
            insert.extend_from_slice(&term);
            insert.extend_from_slice(segment);
            self.splice_keeping(last_end..last_end, &insert)
        }
    }

    /// Remove the `occurrence`-th (1-based) segment with this id. Returns whether one was
    /// there. MSH cannot be removed.
    pub fn remove_segment(&mut self, id: &str, occurrence: usize) -> Result<bool, EditError> {
        let Some(i) = self.message().segment_position(id.as_bytes(), occurrence) else {
            return Ok(false);
        };
        self.remove_segment_at(i)?;
        Ok(true)
    }

    /// Remove the segment at a 0-based position (not 0: MSH stays).
    pub fn remove_segment_at(&mut self, position: usize) -> Result<(), EditError> {
        let count = self.index.segments.len();
        if position == 0 {
            return Err(EditError::HeaderSegment);
        }
        let span = *self
            .index
            .segments
            .get(position)
            .ok_or(EditError::SegmentIndex {
                index: position,
                count,
            })?;
        let range = match self.index.segments.get(position + 1) {
            // Up to the next segment: this segment and its terminator go.
            Some(next) => span.start as usize..next.start as usize,
            // The last one: from the end of the previous segment, so the previous segment
            // keeps the terminator this one had after it.
            None => {
                let prev = self.index.segments[position - 1];
                prev.end as usize..span.end as usize
            }
        };
        self.splice(range, b"")
    }

    /// Rename the `occurrence`-th segment with id `from` to `to` (for example `ZPI` → `PD1`).
    pub fn rename_segment(
        &mut self,
        from: &str,
        occurrence: usize,
        to: &str,
    ) -> Result<bool, EditError> {
        if !valid_segment_id(to.as_bytes()) {
            return Err(EditError::InvalidSegment(format!(
                "`{to}` is not a segment id (three upper-case letters or digits)"
            )));
        }
        if from == "MSH" || to == "MSH" {
            return Err(EditError::HeaderSegment);
        }
        let Some(i) = self.message().segment_position(from.as_bytes(), occurrence) else {
            return Ok(false);
        };
        let at = self.index.segments[i].start as usize;
        self.splice(at..at + 3, to.as_bytes())?;
        Ok(true)
    }

    /// Rewrite every segment end (and the blank lines between segments) as `terminator`,
    /// drop any byte-order mark or whitespace before MSH and after the last segment, and end
    /// the message with `terminator`. Line breaks inside field text are left alone.
    pub fn normalize_segment_ends(&mut self, terminator: &[u8]) -> Result<(), EditError> {
        let mut out = Vec::with_capacity(self.bytes.len() + 8);
        for span in &self.index.segments {
            out.extend_from_slice(&self.bytes[span.range()]);
            out.extend_from_slice(terminator);
        }
        let index = index(&out)?;
        self.bytes = out;
        self.index = index;
        Ok(())
    }

    /// The segment terminator this message uses (from the end of MSH): CR, LF or CRLF.
    pub fn terminator(&self) -> &'static [u8] {
        let end = self.index.segments.first().map_or(0, |s| s.end as usize);
        match self.bytes.get(end..end + 2) {
            Some(b"\r\n") => b"\r\n",
            _ => match self.bytes.get(end) {
                Some(b'\n') => b"\n",
                _ => b"\r",
            },
        }
    }

    fn message_segment(&self, position: usize) -> Result<crate::Segment<'_>, EditError> {
        self.index
            .segment(&self.bytes, position)
            .ok_or(EditError::SegmentIndex {
                index: position,
                count: self.index.segments.len(),
            })
    }

    /// The 0-based position of the path's segment, appended first when it is the next
    /// occurrence of a segment that is not there yet (then with the message as it was).
    fn segment_for_write(&mut self, path: &Path) -> Result<(usize, Option<Previous>), EditError> {
        let message = self.message();
        if let Some(i) = message.segment_position(path.segment_id(), path.occurrence) {
            return Ok((i, None));
        }
        let present = message
            .segments()
            .filter(|s| s.id() == path.segment_id())
            .count();
        if path.occurrence != present + 1 {
            return Err(EditError::SegmentGap {
                id: path.segment_str().to_owned(),
                occurrence: path.occurrence,
                next: present + 1,
            });
        }
        let previous = self.append_segment_keeping(path.segment_id())?;
        Ok((self.index.segments.len() - 1, Some(previous)))
    }

    /// The range a path's value occupies (empty, at the insertion point, when it is not
    /// there) and the separators to put before the value to reach it.
    fn target(&self, seg: usize, path: &Path) -> Result<(Range<usize>, Vec<u8>), EditError> {
        let d = self.index.delimiters;
        let scan = self.index.scan;
        let bytes = &self.bytes;
        let segment = self.message_segment(seg)?;
        let lvl = level(path);
        let need = |what: &'static str, sep: Option<u8>| {
            sep.ok_or_else(|| EditError::NoSeparator {
                path: path_text(path),
                what,
            })
        };
        // Separators for the levels below `from` that are not there yet.
        let pad_below = |from: Level, out: &mut Vec<u8>| -> Result<(), EditError> {
            if from < Level::Repetition && path.repetition > 1 {
                let r = need("repetition", d.repetition)?;
                out.extend(std::iter::repeat_n(r, path.repetition - 1));
            }
            if from < Level::Component
                && let Some(c) = path.component
            {
                out.extend(std::iter::repeat_n(d.component, c - 1));
            }
            if from < Level::Subcomponent
                && let Some(s) = path.subcomponent
            {
                let sub = need("subcomponent", d.subcomponent)?;
                out.extend(std::iter::repeat_n(sub, s - 1));
            }
            Ok(())
        };
        let count = segment.field_count();
        let Some(field) = segment.field_range(path.field) else {
            let end = segment.byte_range().end;
            let mut pad = vec![d.field; path.field - count];
            pad_below(Level::Field, &mut pad)?;
            return Ok((end..end, pad));
        };
        if lvl == Level::Field {
            return Ok((field, Vec::new()));
        }
        let rep = match d.repetition {
            None if path.repetition == 1 => field,
            None => {
                return Err(EditError::NoSeparator {
                    path: path_text(path),
                    what: "repetition",
                });
            }
            Some(r) => {
                let reps = part_count(bytes, field.clone(), r, scan);
                if path.repetition > reps {
                    let mut pad = vec![r; path.repetition - reps];
                    pad_below(Level::Repetition, &mut pad)?;
                    return Ok((field.end..field.end, pad));
                }
                nth_part(bytes, field, r, path.repetition, scan).unwrap_or_default()
            }
        };
        let Some(c) = path.component else {
            return Ok((rep, Vec::new()));
        };
        let comps = part_count(bytes, rep.clone(), d.component, scan);
        if c > comps {
            let mut pad = vec![d.component; c - comps];
            pad_below(Level::Component, &mut pad)?;
            return Ok((rep.end..rep.end, pad));
        }
        let comp = nth_part(bytes, rep, d.component, c, scan).unwrap_or_default();
        let Some(s) = path.subcomponent else {
            return Ok((comp, Vec::new()));
        };
        let sub = need("subcomponent", d.subcomponent)?;
        let subs = part_count(bytes, comp.clone(), sub, scan);
        if s > subs {
            return Ok((comp.end..comp.end, vec![sub; s - subs]));
        }
        Ok((
            nth_part(bytes, comp, sub, s, scan).unwrap_or_default(),
            Vec::new(),
        ))
    }

    fn check_raw(&self, path: &Path, raw: &[u8]) -> Result<(), EditError> {
        let d = self.index.delimiters;
        let lvl = level(path);
        let forbidden = [
            (Some(b'\r'), "a segment terminator", Level::Field),
            (Some(b'\n'), "a segment terminator", Level::Field),
            (Some(d.field), "the field separator", Level::Field),
            (d.repetition, "the repetition separator", Level::Repetition),
            (
                Some(d.component),
                "the component separator",
                Level::Component,
            ),
            (
                d.subcomponent,
                "the subcomponent separator",
                Level::Subcomponent,
            ),
        ];
        for (sep, what, from) in forbidden {
            if let Some(sep) = sep
                && lvl >= from
                && crate::message::positions(raw, sep, self.index.scan)
                    .next()
                    .is_some()
            {
                return Err(EditError::DelimiterInValue {
                    path: path_text(path),
                    found: sep as char,
                    what,
                });
            }
        }
        Ok(())
    }

    fn check_segment(&self, segment: &[u8]) -> Result<(), EditError> {
        let id = segment.get(..3).unwrap_or(segment);
        if !valid_segment_id(id) {
            return Err(EditError::InvalidSegment(format!(
                "`{}` does not start with a segment id",
                String::from_utf8_lossy(id)
            )));
        }
        if id == b"MSH" {
            return Err(EditError::HeaderSegment);
        }
        if segment
            .get(3)
            .is_some_and(|b| *b != self.index.delimiters.field)
        {
            return Err(EditError::InvalidSegment(
                "the segment id must be followed by the field separator".to_owned(),
            ));
        }
        if segment.iter().any(|b| *b == b'\r' || *b == b'\n') {
            return Err(EditError::InvalidSegment(
                "a segment cannot contain a line break".to_owned(),
            ));
        }
        Ok(())
    }

    /// Replace `range` with `insert` and re-index; on failure nothing changes.
    fn splice(&mut self, range: Range<usize>, insert: &[u8]) -> Result<(), EditError> {
        self.splice_keeping(range, insert).map(drop)
    }

    /// [`splice`](Self::splice), handing back what it takes to undo it, so that a caller
    /// that finds the result wrong can put the message back as it was.
    ///
    /// The bytes are spliced in place and only the segments the edit touched are indexed
    /// again (`Index::respliced`), so an edit costs about the size of its segment, not of
    /// the message.
    fn splice_keeping(
        &mut self,
        range: Range<usize>,
        insert: &[u8],
    ) -> Result<Previous, EditError> {
        if range.start > range.end || range.end > self.bytes.len() {
            return Err(EditError::SegmentIndex {
                index: range.start,
                count: self.bytes.len(),
            });
        }
        let at = range.start;
        let removed: Vec<u8> = self.bytes.splice(range, insert.iter().copied()).collect();
        match self
            .index
            .respliced(&self.bytes, at, &removed, insert.len())
        {
            Ok(()) => Ok(Previous {
                at,
                inserted: insert.len(),
                removed,
            }),
            Err(e) => {
                // The index was left as it was; so are the bytes.
                self.bytes.splice(at..at + insert.len(), removed);
                Err(e.into())
            }
        }
    }

    /// Undo a splice: the bytes it replaced go back, and the index with them.
    fn restore(&mut self, previous: Previous) {
        let Previous {
            at,
            inserted,
            removed,
        } = previous;
        let edited: Vec<u8> = self
            .bytes
            .splice(at..at + inserted, removed.iter().copied())
            .collect();
        // These are the bytes from before the edit, which were indexed then: indexing them
        // again gives that index back and cannot fail.
        let back = self
            .index
            .respliced(&self.bytes, at, &edited, removed.len());
        debug_assert!(back.is_ok(), "{back:?}");
    }
}

/// How to undo a splice: `inserted` bytes at `at` replaced `removed`.
struct Previous {
    at: usize,
    inserted: usize,
    removed: Vec<u8>,
}

/// The path as text for error messages.
fn path_text(path: &Path) -> String {
    let mut out = path.segment_str().to_owned();
    if path.occurrence > 1 {
        out.push_str(&format!("[{}]", path.occurrence));
    }
    out.push_str(&format!("-{}", path.field));
    if path.has_explicit_repetition() {
        out.push_str(&format!("({})", path.repetition));
    }
    if let Some(c) = path.component {
        out.push_str(&format!(".{c}"));
    }
    if let Some(s) = path.subcomponent {
        out.push_str(&format!(".{s}"));
    }
    out
}

impl From<Message<'_>> for MessageBuf {
    fn from(message: Message<'_>) -> MessageBuf {
        MessageBuf::from_message(&message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ADT: &[u8] =
        b"MSH|^~\\&|HIS|GH|FERRY|CLOUD|20261125083000||ADT^A01^ADT_A01|MSG1|P|2.5.1\n\
PID|1||42^^^GH^MR~99^^^SSA^SS||DOE^JOHN^Q||19700101|M\n\
OBX|1|ST|A||one\n\
OBX|2|ST|B||two\n";

    fn buf() -> MessageBuf {
        MessageBuf::parse(ADT).expect("parse")
    }

    fn text(m: &MessageBuf, path: &str) -> Option<String> {
        m.message()
            .get_str(path)
            .expect("path")
            .map(|t| t.into_owned())
    }

    #[test]
    fn unmodified_is_byte_exact() {
        assert_eq!(buf().as_bytes(), ADT);
        let odd = b"\xEF\xBB\xBF\r\nMSH|^~\\&|A\r\n\r\nPID|1||x\rOBX|1\n\x1c\r";
        let m = MessageBuf::parse(&odd[..]).expect("parse");
        assert_eq!(m.as_bytes(), odd);
        assert_eq!(m.message().segment_count(), 3);
    }

    #[test]
    fn set_replaces_only_the_target() {
        let mut m = buf();
        m.set("PID-5.1", "SMITH|JONES").expect("set");
        assert_eq!(text(&m, "PID-5.1").as_deref(), Some("SMITH|JONES"));
        assert_eq!(
            m.get("PID-5").expect("path"),
            Some(&b"SMITH\\F\\JONES^JOHN^Q"[..])
        );
        let expected = String::from_utf8_lossy(ADT).replace("DOE^JOHN", "SMITH\\F\\JONES^JOHN");
        assert_eq!(String::from_utf8_lossy(m.as_bytes()), expected);
    }

    #[test]
    fn set_pads_to_reach_missing_levels() {
        let mut m = buf();
        m.set("PID-12.2.3", "x").expect("set");
        assert_eq!(m.get("PID-12").expect("path"), Some(&b"^&&x"[..]));
        assert_eq!(
            m.message().segment("PID", 1).map(|s| s.field_count()),
            Some(12)
        );
        m.set("PID-3(4).1", "7").expect("set");
        assert_eq!(m.get("PID-3(3)").expect("path"), Some(&b""[..]));
        assert_eq!(m.get("PID-3(4)").expect("path"), Some(&b"7"[..]));
        m.set("OBX[2]-5.3", "c").expect("set");
        assert_eq!(m.get("OBX[2]-5").expect("path"), Some(&b"two^^c"[..]));
    }

    #[test]
    fn whole_field_set_and_delete_cover_every_repetition() {
        let mut m = buf();
        m.set_raw("PID-3", b"1^^^X~2^^^Y~3").expect("set");
        assert_eq!(m.get("PID-3(3)").expect("path"), Some(&b"3"[..]));
        assert!(m.delete("PID-3(2)").expect("delete"));
        assert_eq!(m.get("PID-3").expect("path"), Some(&b"1^^^X"[..]));
        assert_eq!(m.get("PID-3(2)").expect("path"), Some(&b"3"[..]));
        assert!(m.delete("PID-3").expect("delete"));
        assert_eq!(
            m.message().value("PID-3").expect("path"),
            crate::Value::Empty
        );
        assert_eq!(m.get("PID-5").expect("path"), Some(&b"DOE^JOHN^Q"[..]));
        assert!(!m.delete("PID-40").expect("delete"));
        assert!(m.delete("PID-5.2").expect("delete"));
        assert_eq!(m.get("PID-5").expect("path"), Some(&b"DOE^^Q"[..]));
    }

    #[test]
    fn new_segments_are_appended_with_the_message_terminator() {
        let mut m = buf();
        m.set("ZPI-2", "v").expect("set");
        assert!(m.as_bytes().ends_with(b"OBX|2|ST|B||two\nZPI||v\n"));
        assert!(matches!(
            m.set("ZPI[3]-1", "v"),
            Err(EditError::SegmentGap { next: 2, .. })
        ));
        let mut bare = MessageBuf::parse(&b"MSH|^~\\&|A\rPID|1"[..]).expect("parse");
        bare.set("PV1-2", "I").expect("set");
        assert_eq!(bare.as_bytes(), b"MSH|^~\\&|A\rPID|1\rPV1||I");
    }

    #[test]
    fn raw_values_cannot_break_structure() {
        let mut m = buf();
        for (path, raw) in [
            ("PID-5.1", &b"A^B"[..]),
            ("PID-5", b"A|B"),
            ("PID-3(1)", b"A~B"),
            ("PID-5.1.1", b"A&B"),
            ("PID-5", b"A\rB"),
        ] {
            assert!(
                matches!(
                    m.set_raw(path, raw),
                    Err(EditError::DelimiterInValue { .. })
                ),
                "{path}"
            );
        }
        assert!(matches!(m.set("MSH-2", "x"), Err(EditError::Delimiters)));
        assert!(matches!(m.set("MSH-1", "x"), Err(EditError::Delimiters)));
        assert_eq!(m.as_bytes(), ADT);
    }

    #[test]
    fn null_and_repetition_insert() {
        let mut m = buf();
        m.set_null("PID-8").expect("set");
        assert_eq!(
            m.message().value("PID-8").expect("path"),
            crate::Value::Null
        );
        m.insert_repetition("PID-3(1)", "0^^^NEW").expect("insert");
        assert_eq!(
            m.get("PID-3(1)").expect("path"),
            Some(&b"0\\S\\\\S\\\\S\\NEW"[..])
        );
        assert_eq!(m.get("PID-3(2)").expect("path"), Some(&b"42^^^GH^MR"[..]));
        m.insert_repetition("PID-3(4)", "last").expect("insert");
        assert_eq!(m.get("PID-3(4)").expect("path"), Some(&b"last"[..]));
    }

    #[test]
    fn text_is_written_in_the_message_charset() {
        let jp = b"MSH|^~\\&|||||||ADT^A01|1|P|2.5||||||ISO IR87\rPID|1\r";
        let mut m = MessageBuf::parse(&jp[..]).expect("parse");
        m.set("PID-5.1", "タロウ^X").expect("set");
        // ウ is the JIS pair `%&`: written inside the shifted run, read back whole.
        assert_eq!(
            m.get("PID-5.1").expect("path"),
            Some(&b"\x1b$B%?%m%&\x1b(B\\S\\X"[..])
        );
        assert_eq!(text(&m, "PID-5.1").as_deref(), Some("タロウ^X"));
        let mut latin =
            MessageBuf::parse(&b"MSH|^~\\&|||||||ADT^A01|1|P|2.5||||||8859/1\rPID|1\r"[..])
                .expect("parse");
        latin.set("PID-5.1", "José").expect("set");
        assert_eq!(latin.get("PID-5.1").expect("path"), Some(&b"Jos\xe9"[..]));
        assert_eq!(text(&latin, "PID-5.1").as_deref(), Some("José"));
        assert!(matches!(
            latin.set("PID-5.1", "患者"),
            Err(EditError::Unencodable { found: '患', .. })
        ));
    }

    #[test]
    fn values_added_after_an_open_iso_2022_run_read_back() {
        // Fuzz finding (hl7_parse): PID-3 ends inside an ISO-2022 run that never shifts back
        // to ASCII; separators appended after it were inside the run, so PID-5.1 was set but
        // could not be read. The edit now shifts back first; the old bytes stay as they were.
        let raw = b"MSH|^~\\&|||||||ADT^A01|1|P|2.5||||||ISO IR87\rPID|1||\x1b$B%+%s\r";
        let mut m = MessageBuf::parse(&raw[..]).expect("parse");
        m.set("PID-5.1", "X").expect("set");
        assert_eq!(m.get("PID-5.1").expect("path"), Some(&b"X"[..]));
        assert!(m.as_bytes().ends_with(b"PID|1||\x1b$B%+%s\x1b(B||X\r"));
        let mut m = MessageBuf::parse(&raw[..]).expect("parse");
        m.insert_repetition("PID-3(2)", "Y").expect("insert");
        assert_eq!(m.get("PID-3(2)").expect("path"), Some(&b"Y"[..]));
        // A Shift_JIS lead byte at the end of a field would take the next separator as its
        // trail byte: refused, message unchanged.
        let sjis = b"MSH|^~\\&|||||||ADT^A01|1|P|2.5||||||SHIFT JIS\rPID|1||A\x83\r";
        let mut m = MessageBuf::parse(&sjis[..]).expect("parse");
        assert!(matches!(
            m.set("PID-5.1", "X"),
            Err(EditError::Unreachable { .. })
        ));
        assert_eq!(m.as_bytes(), sjis);
    }

    #[test]
    fn a_refused_edit_does_not_leave_an_appended_segment_behind() {
        // No subcomponent separator declared: `ZZZ-1.1.2` needs one. The segment is appended
        // to reach the path, then the edit is refused: the append must be undone too.
        let raw = b"MSH|^~\\|A\rPID|1\r";
        let mut m = MessageBuf::parse(&raw[..]).expect("parse");
        assert!(matches!(
            m.set("ZZZ-1.1.2", "x"),
            Err(EditError::NoSeparator {
                what: "subcomponent",
                ..
            })
        ));
        assert_eq!(m.as_bytes(), raw);
        assert_eq!(m.message().segment_count(), 2);
    }

    #[test]
    fn text_that_cannot_be_escaped_is_refused() {
        let mut m = MessageBuf::parse(&b"MSH|^~|A\rPID|1"[..]).expect("parse");
        assert!(matches!(
            m.set("PID-5", "A^B"),
            Err(EditError::CannotEscape { found: '^', .. })
        ));
        m.set("PID-5", "plain").expect("set");
        assert_eq!(m.get("PID-5").expect("path"), Some(&b"plain"[..]));
    }

    #[test]
    fn segment_operations() {
        let mut m = buf();
        m.insert_segment(1, b"EVN|A01").expect("insert");
        assert_eq!(
            m.message().segment_at_index(1).map(|s| s.id_str()),
            Some("EVN")
        );
        assert!(m.rename_segment("OBX", 2, "ZBX").expect("rename"));
        assert_eq!(m.get("ZBX-5").expect("path"), Some(&b"two"[..]));
        assert!(m.remove_segment("ZBX", 1).expect("remove"));
        assert!(m.remove_segment("EVN", 1).expect("remove"));
        assert!(m.as_bytes().ends_with(b"OBX|1|ST|A||one\n"));
        assert!(m.remove_segment("OBX", 1).expect("remove"));
        assert!(
            m.as_bytes().ends_with(b"|M\n"),
            "{:?}",
            String::from_utf8_lossy(m.as_bytes())
        );
        assert!(matches!(
            m.remove_segment_at(0),
            Err(EditError::HeaderSegment)
        ));
        assert!(matches!(
            m.insert_segment(0, b"EVN|1"),
            Err(EditError::HeaderSegment)
        ));
        assert!(matches!(
            m.insert_segment(1, b"evn|1"),
            Err(EditError::InvalidSegment(_))
        ));
        assert!(matches!(
            m.insert_segment(1, b"EVN|1\rX"),
            Err(EditError::InvalidSegment(_))
        ));
    }

    #[test]
    fn normalising_segment_ends_is_only_done_when_asked() {
        let mut m =
            MessageBuf::parse(&b"\xEF\xBB\xBFMSH|^~\\&|A\r\nPID|1\n\nOBX|1"[..]).expect("parse");
        m.normalize_segment_ends(b"\r").expect("normalise");
        assert_eq!(m.as_bytes(), b"MSH|^~\\&|A\rPID|1\rOBX|1\r");
    }

    fn arb_path() -> impl Strategy<Value = String> {
        (
            prop::sample::select(vec!["PID", "OBX", "ZZZ", "EVN"]),
            1usize..=2,
            1usize..=30,
            prop::option::of(1usize..=3),
            prop::option::of((1usize..=6, prop::option::of(1usize..=3))),
        )
            .prop_map(|(seg, occ, field, rep, comp)| {
                let mut p = format!("{seg}[{occ}]-{field}");
                if let Some(r) = rep {
                    p.push_str(&format!("({r})"));
                }
                if let Some((c, s)) = comp {
                    p.push_str(&format!(".{c}"));
                    if let Some(s) = s {
                        p.push_str(&format!(".{s}"));
                    }
                }
                p
            })
    }

    proptest! {
        #[test]
        fn set_then_get_returns_the_value(path in arb_path(), value in "[ -~]{0,24}") {
            let mut m = buf();
            let before = m.clone();
            match m.set(&path, &value) {
                Ok(()) => {
                    // `PID-3` reads the first repetition but sets the field: same text.
                    let got = text(&m, &path);
                    prop_assert_eq!(got.as_deref(), Some(value.as_str()));
                    let reparsed = MessageBuf::parse(m.as_bytes().to_vec()).expect("reparse");
                    prop_assert_eq!(&reparsed, &m);
                    // Other segments are untouched, byte for byte.
                    let seg = &path[..3];
                    let others = |b: &MessageBuf| -> Vec<Vec<u8>> {
                        b.message().segments().filter(|s| s.id() != seg.as_bytes()).map(|s| s.as_bytes().to_vec()).collect()
                    };
                    prop_assert_eq!(others(&before), others(&m));
                }
                Err(EditError::SegmentGap { .. }) => prop_assert_eq!(m.as_bytes(), before.as_bytes()),
                Err(e) => prop_assert!(false, "{path}: {e}"),
            }
        }
    }
    // -----------------------------------------------------------------------------------------
    // Incremental re-indexing: after any sequence of edits the index must be exactly the one a
    // fresh parse of the bytes gives.
    // -----------------------------------------------------------------------------------------

    /// Messages that exercise what the index depends on: terminators (CR, LF, CRLF, blank
    /// lines, a BOM), continuation lines, segments without fields, and the charsets whose
    /// delimiter bytes can be half of a character (an open ISO-2022 run at a segment end, a
    /// Shift_JIS trail byte `|`, a lead byte at the end of a field).
    const SEEDS: &[&[u8]] = &[
        ADT,
        b"\xEF\xBB\xBF\r\nMSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5\r\n\r\nEVN|A01\r\nPID|1||x~y||DOE^J\r\nNTE|1||line one\r\nline two\r\nPV1\r\nOBX|1|ST|A||v\r\n",
        b"MSH|^~\\&|||||||ADT^A01|1|P|2.5||||||ISO IR87\rPID|1||\x1b$B%&%|\x1b(B^X|\x1b$B%+%s\rNTE|1||\x1b$B%|\rOBX|1|ST|A||v\r",
        b"MSH|^~\\&|||||||ADT^A01|1|P|2.5\rPID|1||\x1b$B%&%|\x1b(B^X|Y\rOBX|1\r",
        b"MSH|^~\\&|||||||ADT^A01|1|P|2.5||||||SHIFT JIS\rPID|1||A\x83|\x83\x7cB^C||D\x83\rOBX|1|ST|A||\x95\\\r",
        b"MSH|^~\\&|||||||ADT^A01|1|P|2.5||||||GB 18030-2000\nPID|1||A\x81\x7cB^C|D\nNTE|1||x\nmore\nOBX|1\n",
        b"MSH|^~\\|A\rPID|1\rZZZ\rOBX|2|ST|B||two",
        // MSH-3 ends in a Shift_JIS lead byte: the plain scan that finds MSH-18 sees one more
        // MSH field than the Shift_JIS scan does.
        b"MSH|^~\\&|\x83|X|||||ADT^A01|1|P|2.5||||||SHIFT JIS\rPID|1||A\x83|B\r",
    ];

    /// One edit of the public API, with the inputs it takes.
    #[derive(Debug, Clone)]
    enum Op {
        Set(String, String),
        SetRaw(String, Vec<u8>),
        SetNull(String),
        Delete(String),
        InsertRepetition(String, String),
        InsertSegment(usize, Vec<u8>),
        AppendSegment(Vec<u8>),
        RemoveSegment(usize),
        Rename(String, usize, String),
    }

    fn edit_path() -> impl Strategy<Value = String> {
        (
            prop::sample::select(vec!["MSH", "PID", "OBX", "NTE", "ZZZ", "EVN", "PV1"]),
            1usize..=2,
            1usize..=20,
            prop::option::of(1usize..=3),
            prop::option::of((1usize..=4, prop::option::of(1usize..=3))),
        )
            .prop_map(|(seg, occ, field, rep, comp)| {
                let mut p = format!("{seg}[{occ}]-{field}");
                if let Some(r) = rep {
                    p.push_str(&format!("({r})"));
                }
                if let Some((c, s)) = comp {
                    p.push_str(&format!(".{c}"));
                    if let Some(s) = s {
                        p.push_str(&format!(".{s}"));
                    }
                }
                p
            })
    }

    /// Bytes that change shift states and delimiters: ISO-2022 escapes and their parts,
    /// Shift_JIS/GB 18030 lead bytes, ASCII that is a trail byte, every delimiter.
    fn tricky_bytes() -> BoxedStrategy<Vec<u8>> {
        prop::collection::vec(
            prop::sample::select(vec![
                b'a', b'Z', b'1', b' ', 0x1B, b'$', b'B', b'(', b'J', b'@', b'%', 0x81, 0x83, 0x7C,
                0x95, 0xE0, b'^', b'&', b'~', b'\\', b'"', b'|',
            ]),
            0..8,
        )
        .boxed()
    }

    fn edit_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{0,8}",
            prop::sample::select(vec![
                "タロウ".to_owned(),
                "患者^A".to_owned(),
                "ISO IR87".to_owned(),
                "SHIFT JIS".to_owned(),
                "GB 18030-2000".to_owned(),
                "UNICODE UTF-8".to_owned(),
                String::new(),
            ]),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        let segment = || {
            (
                prop::sample::select(vec!["NTE", "ZZZ", "OBX", "PV1"]),
                tricky_bytes(),
            )
                .prop_map(|(id, rest)| {
                    let mut s = id.as_bytes().to_vec();
                    if !rest.is_empty() {
                        s.push(b'|');
                        s.extend(rest);
                    }
                    s
                })
                .boxed()
        };
        prop_oneof![
            4 => (edit_path(), edit_text()).prop_map(|(p, t)| Op::Set(p, t)),
            4 => (edit_path(), tricky_bytes()).prop_map(|(p, r)| Op::SetRaw(p, r)),
            1 => edit_path().prop_map(Op::SetNull),
            3 => edit_path().prop_map(Op::Delete),
            1 => (edit_path(), edit_text()).prop_map(|(p, t)| Op::InsertRepetition(p, t)),
            1 => (0usize..8, segment()).prop_map(|(i, s)| Op::InsertSegment(i, s)),
            1 => segment().prop_map(Op::AppendSegment),
            1 => (0usize..8).prop_map(Op::RemoveSegment),
            1 => (
                prop::sample::select(vec!["PID", "OBX", "NTE", "ZZZ"]),
                1usize..=2,
                prop::sample::select(vec!["ZPI", "OBX", "NTE"]),
            )
                .prop_map(|(from, occ, to)| Op::Rename(from.to_owned(), occ, to.to_owned())),
        ]
    }

    fn apply(m: &mut MessageBuf, op: &Op) -> Result<(), EditError> {
        match op {
            Op::Set(p, t) => m.set(p, t),
            Op::SetRaw(p, r) => m.set_raw(p, r),
            Op::SetNull(p) => m.set_null(p),
            Op::Delete(p) => m.delete(p).map(drop),
            Op::InsertRepetition(p, t) => m.insert_repetition(p, t),
            Op::InsertSegment(i, s) => m.insert_segment(*i, s),
            Op::AppendSegment(s) => m.append_segment(s),
            Op::RemoveSegment(i) => m.remove_segment_at(*i),
            Op::Rename(from, occ, to) => m.rename_segment(from, *occ, to).map(drop),
        }
    }

    /// A segment's byte range and its fields' (one past the last, which is `None`).
    type SegmentOffsets = (Range<usize>, Vec<Option<Range<usize>>>);

    /// Every segment's byte range and every field's, through the public API.
    fn offsets(m: &Message<'_>) -> Vec<SegmentOffsets> {
        m.segments()
            .map(|s| {
                let fields = (1..=s.field_count() + 1)
                    .map(|n| s.field_range(n))
                    .collect();
                (s.byte_range(), fields)
            })
            .collect()
    }

    /// The index the edits kept equals a fresh parse of the bytes: delimiters, scan,
    /// charset, every segment span with its separator range, and every separator offset.
    fn assert_fresh(m: &MessageBuf) -> Result<(), TestCaseError> {
        let fresh = index(m.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(&m.index.segments, &fresh.segments, "segment spans");
        prop_assert_eq!(&m.index.seps, &fresh.seps, "field separator offsets");
        prop_assert_eq!(&m.index, &fresh);
        let reparsed = Message::parse(m.as_bytes()).expect("parses");
        prop_assert_eq!(offsets(&m.message()), offsets(&reparsed));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn incremental_index_equals_a_fresh_parse_after_any_edits(
            seed in prop::sample::select(SEEDS.to_vec()),
            ops in prop::collection::vec(op(), 1..12),
        ) {
            let mut m = MessageBuf::parse(seed).expect("seed parses");
            for op in &ops {
                let before = m.clone();
                let result = apply(&mut m, op);
                if result.is_err() {
                    // A refused edit leaves the message exactly as it was, index included.
                    prop_assert_eq!(&m, &before, "{:?} refused ({:?}) but changed the message", op, result);
                }
                assert_fresh(&m)?;
            }
        }
    }

    #[test]
    fn edits_that_change_how_the_whole_message_reads_re_index_it_all() {
        // No MSH-18: the first `ESC $` makes the whole message ISO-2022, and removing the last
        // one makes it plain again; PID-3's `|` inside the run stops or starts splitting.
        let plain = b"MSH|^~\\&|||||||ADT^A01|1|P|2.5\rPID|1||%|%\rOBX|1|ST|A||\r";
        let mut m = MessageBuf::parse(&plain[..]).expect("parse");
        assert_eq!(
            m.message().segment("PID", 1).map(|s| s.field_count()),
            Some(4)
        );
        m.set_raw("OBX-5", b"\x1b$B").expect("set");
        assert_eq!(m.index, index(m.as_bytes()).expect("parse"));
        assert_eq!(m.index.scan, crate::escape::Scan::Iso2022);
        m.delete("OBX-5").expect("delete");
        assert_eq!(m.index, index(m.as_bytes()).expect("parse"));
        assert_eq!(m.index.scan, crate::escape::Scan::Plain);
        // MSH-18 names a charset: every segment is read again with its scan.
        let mut m = MessageBuf::parse(&plain[..]).expect("parse");
        m.set("MSH-18", "SHIFT JIS").expect("set");
        assert_eq!(m.index, index(m.as_bytes()).expect("parse"));
        assert_eq!(m.index.charset, Some(Charset::ShiftJis));
        // A segment inserted, renamed, removed; the last segment removed: offsets move.
        let mut m = buf();
        m.insert_segment(1, b"EVN|A01|x").expect("insert");
        m.rename_segment("OBX", 1, "ZBX").expect("rename");
        m.remove_segment_at(2).expect("remove");
        m.remove_segment_at(m.message().segment_count() - 1)
            .expect("remove");
        assert_eq!(m.index, index(m.as_bytes()).expect("parse"));
        assert_eq!(m.get("ZBX-5").expect("path"), Some(&b"one"[..]));
    }
}
