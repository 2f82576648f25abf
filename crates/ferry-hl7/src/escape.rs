//! HL7 escape sequences, with the message's own delimiters.
//!
//! A value cannot hold the message's delimiters or a segment terminator as plain bytes, so HL7
//! writes them as escape sequences between two escape characters (`\` unless MSH-2 says
//! otherwise). This module turns them back into text on read and produces them on write.
//!
//! Decoding ([`decode_bytes`], [`decode`]):
//!
//! | sequence | becomes |
//! |---|---|
//! | `\F\` `\S\` `\T\` `\R\` `\E\` | the message's field, component, subcomponent, repetition, escape character |
//! | `\P\` | the truncation character (v2.7+), when the message declares one |
//! | `\Xhh…\` | the bytes `hh…` (in the message's charset, see [`crate::charset`]) |
//! | `\.br\` | a line break, `"\n"` |
//! | `\H\` `\N\` | nothing (start/end of highlighting has no plain-text form) |
//! | `\Cxxyy\` `\Mxxyyzz\`, anything else | kept intact, byte for byte |
//!
//! A `\X…\` with an odd number of digits or a non-hex digit, an escape naming a delimiter the
//! message does not declare, and a dangling escape character with no closing one are all kept
//! literally: decoding never fails and never panics. Input without an escape character is
//! returned borrowed.
//!
//! Encoding ([`encode`], [`try_encode`]) is the inverse for any text: delimiters and the escape
//! character become `\F\ \S\ \T\ \R\ \E\ \P\` (only for the delimiters the message declares),
//! `"\n"` becomes `\.br\`, `"\r"` becomes `\X0D\` and the other C0 control characters `\Xhh\`, so
//! that `decode(encode(s)) == s` and the output never holds a raw delimiter, CR or LF.

use std::borrow::Cow;

use crate::message::{Chars, Delimiters};

/// How to find escape characters in raw bytes: in some charsets the escape or delimiter byte
/// values also occur inside multi-byte characters, and those must not be read as escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Scan {
    /// Every byte is a character of its own or part of a UTF-8/EUC sequence (all bytes >= 0x80),
    /// so an ASCII byte is always that ASCII character.
    #[default]
    Plain,
    /// ISO 2022 (ISO-2022-JP): after `ESC $ @`, `ESC $ B` or `ESC $ ( D` bytes come in pairs of
    /// 0x21..=0x7E until `ESC ( B`/`ESC ( J`/`ESC ( I`; those pairs are never escapes.
    Iso2022,
    /// Shift_JIS, whose trail bytes may be ASCII: a lead byte (0x81..=0x9F, 0xE0..=0xFC) and the
    /// byte after it are copied as they are.
    ShiftJis,
    /// Big5 and GB18030, whose trail bytes may be ASCII: a lead byte (0x81..=0xFE) and the byte
    /// after it are copied as they are (a GB18030 four-byte unit is two such pairs).
    Big5Gb18030,
}

/// Decode the escapes of `raw` at byte level. Borrows when `raw` holds no escape character (or
/// the message declares none).
pub fn decode_bytes<'a>(raw: &'a [u8], d: &Delimiters) -> Cow<'a, [u8]> {
    decode_bytes_scan(raw, d, Scan::Plain)
}

/// [`decode_bytes`] that skips the bytes of multi-byte characters as `scan` says.
pub(crate) fn decode_bytes_scan<'a>(raw: &'a [u8], d: &Delimiters, scan: Scan) -> Cow<'a, [u8]> {
    let Some(esc) = d.escape else {
        return Cow::Borrowed(raw);
    };
    let Some(first) = memchr::memchr(esc, raw) else {
        return Cow::Borrowed(raw);
    };
    if scan == Scan::Plain {
        return Cow::Owned(decode_from(raw, first, d, esc));
    }
    // Charsets where the escape byte may be half of a character: only the bytes that stand
    // for themselves (`Chars`, the parser's own rule) can start or end an escape sequence.
    let mut out = Vec::with_capacity(raw.len());
    let mut copied = 0; // raw[..copied] is already in `out`
    for (i, b) in Chars::new(raw, scan) {
        if b != esc || i < copied {
            continue;
        }
        // The name must be plain ASCII: a sequence never spans a charset switch.
        let rest = raw.get(i + 1..).unwrap_or_default();
        let end = rest
            .iter()
            .position(|c| *c == esc || *c == 0x1B || *c >= 0x80)
            .filter(|e| rest.get(*e) == Some(&esc));
        if let Some(end) = end {
            let name = rest.get(..end).unwrap_or_default();
            let before = out.len();
            out.extend_from_slice(raw.get(copied..i).unwrap_or_default());
            match apply(name, d, esc, &mut out) {
                Some(consumed) => copied = i + consumed,
                None => out.truncate(before),
            }
        }
    }
    out.extend_from_slice(raw.get(copied..).unwrap_or_default());
    Cow::Owned(out)
}

/// Whether `b` starts a two-byte character in a lead-byte charset.
pub(crate) fn is_lead(scan: Scan, b: u8) -> bool {
    match scan {
        Scan::ShiftJis => matches!(b, 0x81..=0x9f | 0xe0..=0xfc),
        Scan::Big5Gb18030 => matches!(b, 0x81..=0xfe),
        Scan::Plain | Scan::Iso2022 => false,
    }
}

/// Decode starting at `first`, the position of the first escape character (plain scan).
fn decode_from(raw: &[u8], first: usize, d: &Delimiters, esc: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    out.extend_from_slice(raw.get(..first).unwrap_or_default());
    let mut i = first;
    while i < raw.len() {
        let rest = raw.get(i + 1..).unwrap_or_default();
        match memchr::memchr(esc, rest) {
            Some(end) => {
                let name = rest.get(..end).unwrap_or_default();
                match apply(name, d, esc, &mut out) {
                    Some(consumed) => i += consumed,
                    None => {
                        // Not a sequence (e.g. an empty name): this escape character is text.
                        out.push(esc);
                        i += 1;
                    }
                }
            }
            None => {
                // Dangling: no closing escape character, the rest is text.
                out.extend_from_slice(raw.get(i..).unwrap_or_default());
                return out;
            }
        }
        // Copy plain bytes up to the next escape character.
        let rest = raw.get(i..).unwrap_or_default();
        let next = memchr::memchr(esc, rest).unwrap_or(rest.len());
        out.extend_from_slice(rest.get(..next).unwrap_or_default());
        i += next;
    }
    out
}

/// Write the replacement for the sequence `esc name esc` into `out`; returns how many input
/// bytes it spans, or `None` when the escape character that starts it is to be taken as text.
fn apply(name: &[u8], d: &Delimiters, esc: u8, out: &mut Vec<u8>) -> Option<usize> {
    let consumed = name.len() + 2;
    let single = match name {
        b"F" => Some(d.field),
        b"S" => Some(d.component),
        b"T" => d.subcomponent,
        b"R" => d.repetition,
        b"E" => Some(esc),
        b"P" => d.truncation,
        b".br" => Some(b'\n'),
        b"H" | b"N" => return Some(consumed),
        [] => return None,
        [b'X', hex @ ..] => {
            if let Some(bytes) = parse_hex(hex) {
                out.extend(bytes);
                return Some(consumed);
            }
            None
        }
        _ => None,
    };
    match single {
        Some(b) => out.push(b),
        // Unknown sequences (\C..\, \M..\, \Z..\, .sp, ...), malformed \X\ and escapes for
        // delimiters the message does not declare: kept intact.
        None => {
            out.push(esc);
            out.extend_from_slice(name);
            out.push(esc);
        }
    }
    Some(consumed)
}

/// The bytes of an even, non-empty run of hex digits; `None` otherwise.
fn parse_hex(hex: &[u8]) -> Option<impl Iterator<Item = u8> + '_> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    Some(hex.chunks_exact(2).map(|pair| {
        let [hi, lo] = [pair[0], pair[1]].map(|c| (c as char).to_digit(16).unwrap_or(0) as u8);
        (hi << 4) | lo
    }))
}

/// Decode the escapes of `raw` into text, reading the bytes as UTF-8 (invalid bytes become
/// U+FFFD). Borrows when there is nothing to decode and the bytes are valid UTF-8. For messages
/// in other charsets use [`crate::charset::TextDecoder`], which decodes escapes first and then
/// the charset.
pub fn decode<'a>(raw: &'a [u8], d: &Delimiters) -> Cow<'a, str> {
    match decode_bytes(raw, d) {
        Cow::Borrowed(b) => String::from_utf8_lossy(b),
        Cow::Owned(v) => match String::from_utf8(v) {
            Ok(s) => Cow::Owned(s),
            Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
        },
    }
}

/// Why text cannot be written into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The text holds a delimiter, line break or control character, and the message's MSH-2
    /// declares no escape character to write it with.
    #[error(
        "character U+{:04X} needs an escape sequence but the message declares no escape character in MSH-2",
        u32::from(*.0)
    )]
    NoEscapeCharacter(char),
}

/// Encode text for a field: delimiters and the escape character become escape sequences, line
/// breaks `\.br\` (or `\X0A\` if `.` is one of the message's delimiters), CR `\X0D\`, other C0
/// controls `\Xhh\`.
///
/// A message whose MSH-2 has no escape character cannot represent those characters at all; for
/// such a message each of them is written as a space, which keeps the value in one piece without
/// inventing an escape sequence the receiver would not read. Use [`try_encode`] to get an error
/// instead.
pub fn encode(text: &str, d: &Delimiters) -> String {
    let mut out = String::with_capacity(text.len());
    encode_into(text, d, &mut out);
    out
}

/// [`encode`] that fails instead of writing a space when the message has no escape character.
pub fn try_encode(text: &str, d: &Delimiters) -> Result<String, EncodeError> {
    if d.escape.is_none()
        && let Some(c) = text.chars().find(|c| needs_escape(*c, d))
    {
        return Err(EncodeError::NoEscapeCharacter(c));
    }
    Ok(encode(text, d))
}

/// [`encode`] appending to `out`.
pub fn encode_into(text: &str, d: &Delimiters, out: &mut String) {
    let Some(esc) = d.escape.map(char::from) else {
        out.extend(
            text.chars()
                .map(|c| if needs_escape(c, d) { ' ' } else { c }),
        );
        return;
    };
    let mut plain_start = 0;
    for (i, c) in text.char_indices() {
        if !needs_escape(c, d) {
            continue;
        }
        out.push_str(text.get(plain_start..i).unwrap_or_default());
        plain_start = i + c.len_utf8();
        out.push(esc);
        match escape_name(c, d) {
            Some(name) => out.push(name),
            None if c == '\n' && !is_delimiter(b'.', d) => out.push_str(".br"),
            None => {
                out.push('X');
                out.push_str(&format!("{:02X}", u32::from(c)));
            }
        }
        out.push(esc);
    }
    out.push_str(text.get(plain_start..).unwrap_or_default());
}

fn is_delimiter(b: u8, d: &Delimiters) -> bool {
    b == d.field
        || b == d.component
        || d.repetition == Some(b)
        || d.escape == Some(b)
        || d.subcomponent == Some(b)
        || d.truncation == Some(b)
}

/// The one-letter name for a delimiter character.
fn escape_name(c: char, d: &Delimiters) -> Option<char> {
    let b = u8::try_from(c).ok()?;
    if b == d.field {
        Some('F')
    } else if b == d.component {
        Some('S')
    } else if d.subcomponent == Some(b) {
        Some('T')
    } else if d.repetition == Some(b) {
        Some('R')
    } else if d.escape == Some(b) {
        Some('E')
    } else if d.truncation == Some(b) {
        Some('P')
    } else {
        None
    }
}

fn needs_escape(c: char, d: &Delimiters) -> bool {
    (c.is_ascii_control() && c != '\x7f') || u8::try_from(c).is_ok_and(|b| is_delimiter(b, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn odd() -> Delimiters {
        // MSH|$%*!@ : component $, repetition %, escape *, subcomponent !, truncation @.
        Delimiters {
            field: b'|',
            component: b'$',
            repetition: Some(b'%'),
            escape: Some(b'*'),
            subcomponent: Some(b'!'),
            truncation: Some(b'@'),
        }
    }

    #[test]
    fn decodes_delimiter_escapes() {
        let d = Delimiters::default();
        assert_eq!(decode(br"a\F\b\S\c\T\d\R\e\E\f", &d), "a|b^c&d~e\\f");
        assert_eq!(decode(b"a*F*b*S*c*T*d*R*e*E*f*P*", &odd()), "a|b$c!d%e*f@");
        // \P\ means nothing without a declared truncation character.
        assert_eq!(decode(br"x\P\y", &d), r"x\P\y");
    }

    #[test]
    fn decodes_hex_line_breaks_and_highlighting() {
        let d = Delimiters::default();
        assert_eq!(decode(br"x\.br\y\X0D0A\z", &d), "x\ny\r\nz");
        assert_eq!(decode(br"\H\bold\N\ text", &d), "bold text");
        assert_eq!(decode_bytes(br"\XC3A9\", &d).as_ref(), b"\xc3\xa9");
        assert_eq!(decode(br"\Xc3a9\", &d), "é");
        assert_eq!(decode_bytes(br"\XE9\", &d).as_ref(), b"\xe9");
    }

    #[test]
    fn keeps_unknown_malformed_and_dangling_sequences() {
        let d = Delimiters::default();
        for kept in [
            r"\C2842\",
            r"\M2442\",
            r"\Zcustom\",
            r"\.sp2\",
            r"\X0\",
            r"\XZZ\",
            r"\X\",
            r"dangling\F",
            r"end\",
            r"\\",
        ] {
            assert_eq!(decode(kept.as_bytes(), &d), kept, "{kept}");
        }
        assert_eq!(decode(br"a\\F\b", &d), r"a\|b");
        assert_eq!(decode(br"\C2842\x\F\", &d), r"\C2842\x|");
        let no_sub = Delimiters {
            subcomponent: None,
            ..Delimiters::default()
        };
        assert_eq!(decode(br"\T\", &no_sub), r"\T\");
    }

    #[test]
    fn borrows_without_escape_character() {
        let d = Delimiters::default();
        assert!(matches!(decode(b"plain", &d), Cow::Borrowed("plain")));
        assert!(matches!(decode_bytes(b"pl\xe9in", &d), Cow::Borrowed(_)));
        let none = Delimiters {
            escape: None,
            ..Delimiters::default()
        };
        assert!(matches!(decode(br"a\F\b", &none), Cow::Borrowed(r"a\F\b")));
    }

    #[test]
    fn iso2022_two_byte_runs_are_not_escapes() {
        let d = Delimiters::default();
        // "本人" in JIS X 0208 is 4B 5C 3F 4D: its 0x5C is not an escape character.
        let raw = b"\x1b$BK\\?M\x1b(B\\F\\";
        let out = decode_bytes_scan(raw, &d, Scan::Iso2022);
        assert_eq!(out.as_ref(), b"\x1b$BK\\?M\x1b(B|");
        // The plain scan would have taken it for an escape.
        assert_ne!(decode_bytes(raw, &d).as_ref(), out.as_ref());
        // "表" in Shift_JIS is 95 5C.
        let out = decode_bytes_scan(b"\x95\\\\S\\", &d, Scan::ShiftJis);
        assert_eq!(out.as_ref(), b"\x95\\^");
    }

    #[test]
    fn encodes_every_special_character() {
        let d = Delimiters::default();
        assert_eq!(encode("a|b^c&d~e\\f", &d), r"a\F\b\S\c\T\d\R\e\E\f");
        assert_eq!(encode("l1\nl2\r\tx#", &d), r"l1\.br\l2\X0D\\X09\x#");
        assert_eq!(encode("a@b*c", &odd()), "a*P*b*E*c");
        let dot = Delimiters {
            subcomponent: Some(b'.'),
            ..Delimiters::default()
        };
        assert_eq!(encode("a\nb.", &dot), r"a\X0A\b\T\");
        let none = Delimiters {
            escape: None,
            ..Delimiters::default()
        };
        assert_eq!(encode("a|b\nc\\", &none), "a b c\\");
        assert_eq!(
            try_encode("a|b", &none),
            Err(EncodeError::NoEscapeCharacter('|'))
        );
        assert_eq!(try_encode("a-b", &none).as_deref(), Ok("a-b"));
    }

    fn text() -> impl Strategy<Value = String> {
        let special = prop::sample::select(vec![
            '|', '^', '~', '\\', '&', '#', '$', '%', '*', '!', '@', '.', '\r', '\n', '\t', '\0',
            '\x1b', '\x7f', 'X', 'F', 'é', '本',
        ]);
        prop::collection::vec(prop_oneof![any::<char>(), special], 0..48)
            .prop_map(|v| v.into_iter().collect())
    }

    fn check(text: &str, d: &Delimiters) -> Result<(), TestCaseError> {
        let encoded = encode(text, d);
        let esc = d.escape.map(char::from);
        for c in encoded.chars() {
            prop_assert!(c != '\r' && c != '\n', "line break in {:?}", encoded);
            prop_assert!(
                Some(c) == esc || !u8::try_from(c).is_ok_and(|b| is_delimiter(b, d)),
                "raw delimiter {:?} in {:?}",
                c,
                encoded
            );
        }
        prop_assert_eq!(decode(encoded.as_bytes(), d), text);
        Ok(())
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity_default(text in text()) {
            check(&text, &Delimiters::default())?;
        }

        #[test]
        fn encode_then_decode_is_identity_odd_delimiters(text in text()) {
            check(&text, &odd())?;
        }

        #[test]
        fn decode_never_panics(raw in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&raw, &Delimiters::default());
            let _ = decode_bytes_scan(&raw, &Delimiters::default(), Scan::Iso2022);
        }
    }
}
