//! Splitting a body or file into messages.
//!
//! A body may hold one message, several header-less messages (each starting with MSH), or a
//! batch/file envelope (FHS, BHS … BTS, FTS). [`split_messages`] yields each message's bytes,
//! envelope segments dropped, without allocating. Text before the first MSH that is not an
//! envelope segment is yielded too, so that the caller rejects it visibly instead of it
//! vanishing.

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

enum Line {
    Msh,
    Envelope,
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
        b"FHS" | b"BHS" | b"BTS" | b"FTS" if delimited => Line::Envelope,
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
                Line::Envelope => {
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

#[cfg(test)]
mod tests {
    use super::*;

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
