//! Splitting a body or file into messages.
//!
//! A body may hold one message, several header-less messages (each starting with MSH), or a
//! batch/file envelope (FHS, BHS … BTS, FTS). [`split_messages`] yields each message's bytes,
//! envelope segments dropped, without allocating. Text before the first MSH that is not an
//! envelope segment is yielded too, so that the caller rejects it visibly instead of it
//! vanishing.
//!
//! [`parse_batch`] reads the envelope itself: the FHS/BHS headers, the messages of each
//! batch, and the BTS/FTS trailers, whose counts (BTS-1, batch message count; FTS-1, file
//! batch count) must match what the file holds when they are present.

/// Iterator over the messages of a body; see [`split_messages`].
#[derive(Debug, Clone)]
pub struct SplitMessages<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// Split `bytes` into messages (see the module docs).
pub fn split_messages(bytes: &[u8]) -> SplitMessages<'_> {
    SplitMessages { bytes, pos: 0 }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Envelope {
    Fhs,
    Bhs,
    Bts,
    Fts,
}

enum Line {
    Msh,
    Envelope(Envelope),
    Blank,
    Other,
}

fn classify(line: &[u8]) -> Line {
    let line = line.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(line);
    // Leading control bytes such as a stray MLLP start block.
    let skip = line.iter().take_while(|b| **b < b' ').count();
    let line = &line[skip..];
    if line.iter().all(|b| *b <= b' ') {
        return Line::Blank;
    }
    let id = line.get(..3).unwrap_or_default();
    let delimited = line.get(3).is_none_or(|b| !b.is_ascii_alphanumeric());
    match id {
        b"MSH" if line.len() > 3 && delimited => Line::Msh,
        b"FHS" if delimited => Line::Envelope(Envelope::Fhs),
        b"BHS" if delimited => Line::Envelope(Envelope::Bhs),
        b"BTS" if delimited => Line::Envelope(Envelope::Bts),
        b"FTS" if delimited => Line::Envelope(Envelope::Fts),
        _ => Line::Other,
    }
}

impl<'a> Iterator for SplitMessages<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let b = self.bytes;
        let mut start: Option<usize> = None;
        while self.pos < b.len() {
            let line_start = self.pos;
            let line_end =
                memchr::memchr2(b'\r', b'\n', &b[line_start..]).map_or(b.len(), |i| line_start + i);
            let mut next = line_end;
            while next < b.len() && (b[next] == b'\r' || b[next] == b'\n') {
                next += 1;
            }
            match classify(&b[line_start..line_end]) {
                Line::Msh => match start {
                    // Leave pos on this MSH: it starts the next message.
                    Some(s) => return Some(&b[s..line_start]),
                    None => start = Some(line_start),
                },
                Line::Envelope(_) => {
                    if let Some(s) = start {
                        self.pos = next;
                        return Some(&b[s..line_start]);
                    }
                }
                Line::Blank => {}
                Line::Other => {
                    if start.is_none() {
                        start = Some(line_start);
                    }
                }
            }
            self.pos = next;
        }
        start.map(|s| &b[s..])
    }
}

/// The lines of a body: (start, end without terminator, start of the next line).
fn lines(b: &[u8]) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= b.len() {
            return None;
        }
        let start = pos;
        let end = memchr::memchr2(b'\r', b'\n', &b[start..]).map_or(b.len(), |i| start + i);
        let mut next = end;
        while next < b.len() && (b[next] == b'\r' || b[next] == b'\n') {
            next += 1;
        }
        pos = next;
        Some((start, end, next))
    })
}

/// One batch: an optional BHS, its messages, an optional BTS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch<'a> {
    /// The BHS segment, if the batch has one.
    pub header: Option<&'a [u8]>,
    /// Each message's bytes (its segments and their terminators).
    pub messages: Vec<&'a [u8]>,
    /// The BTS segment, if present.
    pub trailer: Option<&'a [u8]>,
}

/// A file: an optional FHS, its batches, an optional FTS. A body with no envelope at all
/// is one batch without header or trailer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchFile<'a> {
    /// The FHS segment, if present.
    pub header: Option<&'a [u8]>,
    /// The batches in order.
    pub batches: Vec<Batch<'a>>,
    /// The FTS segment, if present.
    pub trailer: Option<&'a [u8]>,
}

impl<'a> BatchFile<'a> {
    /// Every message of every batch, in order.
    pub fn messages(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.batches.iter().flat_map(|b| b.messages.iter().copied())
    }
}

/// Why a body is not a well-formed batch or file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// A trailer's count does not match what the envelope holds.
    #[error("{segment}-1 says {declared} {what}, but the {scope} holds {found}")]
    CountMismatch {
        /// `BTS` or `FTS`.
        segment: &'static str,
        /// What is counted.
        what: &'static str,
        /// `batch` or `file`.
        scope: &'static str,
        /// The count in the trailer.
        declared: u64,
        /// The count found.
        found: u64,
    },
    /// A trailer's count is not a number.
    #[error("{segment}-1 `{value}` is not a count")]
    BadCount {
        /// `BTS` or `FTS`.
        segment: &'static str,
        /// The value found, printable.
        value: String,
    },
    /// An envelope segment where it cannot be.
    #[error("line {line}: {segment} {problem}")]
    Misplaced {
        /// 1-based line number.
        line: usize,
        /// The segment id.
        segment: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
    /// Text that belongs to no message.
    #[error("line {line}: text outside any message: `{found}`")]
    StrayText {
        /// 1-based line number.
        line: usize,
        /// The first bytes, printable.
        found: String,
    },
}

/// Read BTS-1 / FTS-1 (the field separator is the byte after the segment id).
fn trailer_count(line: &[u8], segment: &'static str) -> Result<Option<u64>, BatchError> {
    let Some(&sep) = line.get(3) else {
        return Ok(None);
    };
    let value = line
        .get(4..)
        .unwrap_or_default()
        .split(|b| *b == sep)
        .next()
        .unwrap_or_default();
    // The count is the first component; trailing spaces are common.
    let value = value.trim_ascii();
    if value.is_empty() {
        return Ok(None);
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| BatchError::BadCount {
            segment,
            value: crate::message::printable(value, 16),
        })
}

/// Read a body as a file of batches of messages, checking the envelope (see module docs).
pub fn parse_batch<'a>(bytes: &'a [u8]) -> Result<BatchFile<'a>, BatchError> {
    let mut file = BatchFile::default();
    let mut batch: Option<Batch<'a>> = None;
    let mut message_start: Option<usize> = None;
    let mut done = false;
    let end_message = |batch: &mut Option<Batch<'a>>, start: &mut Option<usize>, at: usize| {
        if let Some(s) = start.take() {
            batch
                .get_or_insert_with(Batch::default)
                .messages
                .push(&bytes[s..at]);
        }
    };
    for (n, (start, end, _)) in lines(bytes).enumerate() {
        let line_no = n + 1;
        let line = &bytes[start..end];
        let kind = classify(line);
        if done && !matches!(kind, Line::Blank) {
            return Err(BatchError::StrayText {
                line: line_no,
                found: crate::message::printable(line, 16),
            });
        }
        match kind {
            Line::Blank => {}
            Line::Msh => {
                end_message(&mut batch, &mut message_start, start);
                message_start = Some(start);
            }
            Line::Other => {
                if message_start.is_none() {
                    return Err(BatchError::StrayText {
                        line: line_no,
                        found: crate::message::printable(line, 16),
                    });
                }
            }
            Line::Envelope(kind) => {
                end_message(&mut batch, &mut message_start, start);
                let misplaced = |segment, problem| BatchError::Misplaced {
                    line: line_no,
                    segment,
                    problem,
                };
                match kind {
                    Envelope::Fhs => {
                        if file.header.is_some() || !file.batches.is_empty() || batch.is_some() {
                            return Err(misplaced("FHS", "must be the first segment of the file"));
                        }
                        file.header = Some(line);
                    }
                    Envelope::Bhs => {
                        if let Some(open) = batch.take() {
                            file.batches.push(open);
                        }
                        batch = Some(Batch {
                            header: Some(line),
                            ..Batch::default()
                        });
                    }
                    Envelope::Bts => {
                        let mut closed = batch.take().ok_or(misplaced("BTS", "closes no batch"))?;
                        if let Some(declared) = trailer_count(line, "BTS")? {
                            let found = closed.messages.len() as u64;
                            if declared != found {
                                return Err(BatchError::CountMismatch {
                                    segment: "BTS",
                                    what: "messages",
                                    scope: "batch",
                                    declared,
                                    found,
                                });
                            }
                        }
                        closed.trailer = Some(line);
                        file.batches.push(closed);
                    }
                    Envelope::Fts => {
                        if let Some(open) = batch.take() {
                            file.batches.push(open);
                        }
                        // An FTS without FHS is accepted: real files close a lone batch
                        // that way, and nothing is ambiguous about it.
                        if let Some(declared) = trailer_count(line, "FTS")? {
                            let found = file.batches.len() as u64;
                            if declared != found {
                                return Err(BatchError::CountMismatch {
                                    segment: "FTS",
                                    what: "batches",
                                    scope: "file",
                                    declared,
                                    found,
                                });
                            }
                        }
                        file.trailer = Some(line);
                        done = true;
                    }
                }
            }
        }
    }
    end_message(&mut batch, &mut message_start, bytes.len());
    if let Some(open) = batch.take() {
        file.batches.push(open);
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_envelopes_and_checks_counts() {
        let file = b"FHS|^~\\&|A\rBHS|^~\\&|A\rMSH|^~\\&|A|1\rPID|1\rMSH|^~\\&|A|2\rBTS|2\rBHS|^~\\&\rMSH|^~\\&|A|3\rBTS|1\rFTS|2\r";
        let parsed = parse_batch(file).expect("batch");
        assert_eq!(parsed.batches.len(), 2);
        assert_eq!(
            parsed.batches[0].messages,
            vec![&b"MSH|^~\\&|A|1\rPID|1\r"[..], &b"MSH|^~\\&|A|2\r"[..]]
        );
        assert_eq!(parsed.messages().count(), 3);
        assert_eq!(parsed.trailer, Some(&b"FTS|2"[..]));
        let bad = b"BHS|^~\\&\rMSH|^~\\&|A|1\rBTS|3\r";
        assert_eq!(
            parse_batch(bad),
            Err(BatchError::CountMismatch {
                segment: "BTS",
                what: "messages",
                scope: "batch",
                declared: 3,
                found: 1
            })
        );
        let bad = b"FHS|^~\\&\rBHS|^~\\&\rMSH|^~\\&|A|1\rBTS|1\rFTS|2\r";
        assert!(matches!(
            parse_batch(bad),
            Err(BatchError::CountMismatch {
                segment: "FTS",
                found: 1,
                ..
            })
        ));
        assert!(matches!(
            parse_batch(b"BTS|x\r"),
            Err(BatchError::Misplaced { segment: "BTS", .. })
        ));
        assert!(matches!(
            parse_batch(b"BHS|^\rMSH|^~\\&\rBTS|x\r"),
            Err(BatchError::BadCount { .. })
        ));
        assert!(matches!(
            parse_batch(b"PID|1\rMSH|^~\\&\r"),
            Err(BatchError::StrayText { line: 1, .. })
        ));
        assert!(matches!(
            parse_batch(b"FHS|^\rFTS|0\rMSH|^~\\&\r"),
            Err(BatchError::StrayText { line: 3, .. })
        ));
        // No envelope: one batch of header-less messages; a trailer count is optional.
        let plain = parse_batch(b"MSH|^~\\&|A|1\nMSH|^~\\&|A|2\n").expect("plain");
        assert_eq!((plain.batches.len(), plain.messages().count()), (1, 2));
        assert_eq!(
            parse_batch(b"BHS|^\rMSH|^~\\&\rBTS|\r").map(|f| f.messages().count()),
            Ok(1)
        );
    }

    #[test]
    fn splits_headerless_batches_and_envelopes() {
        let one = b"MSH|^~\\&|A\rPID|1\r";
        assert_eq!(split_messages(one).collect::<Vec<_>>(), vec![&one[..]]);
        let two = b"MSH|^~\\&|A|1\rPID|1\r\nMSH|^~\\&|A|2\nPID|2\n";
        let parts: Vec<_> = split_messages(two).collect();
        assert_eq!(
            parts,
            vec![
                &b"MSH|^~\\&|A|1\rPID|1\r\n"[..],
                &b"MSH|^~\\&|A|2\nPID|2\n"[..]
            ]
        );
        let batch = b"FHS|^~\\&\rBHS|^~\\&\rMSH|^~\\&|A|1\rPID|1\rMSH|^~\\&|A|2\rBTS|2\rFTS|1\r";
        let parts: Vec<_> = split_messages(batch).collect();
        assert_eq!(
            parts,
            vec![&b"MSH|^~\\&|A|1\rPID|1\r"[..], &b"MSH|^~\\&|A|2\r"[..]]
        );
        assert_eq!(split_messages(b"\r\n  \n").count(), 0);
        assert_eq!(
            split_messages(b"garbage").collect::<Vec<_>>(),
            vec![&b"garbage"[..]]
        );
    }
}
