//! HL7 escape sequences, with the message's own delimiters.
//!
//! Decoded: `\F\` field, `\S\` component, `\T\` subcomponent, `\R\` repetition, `\E\` escape.
//! Other sequences (`\Xhh\`, `\.br\`, `\H\`, `\N\`, `\C…\`, `\M…\`) are kept as they are.

use std::borrow::Cow;

use crate::message::Delimiters;

/// Decode the basic escapes of `raw`. Borrows when there is nothing to decode.
pub fn decode<'a>(raw: &'a [u8], d: &Delimiters) -> Cow<'a, str> {
    let Some(esc) = d.escape else {
        return String::from_utf8_lossy(raw);
    };
    if !raw.contains(&esc) {
        return String::from_utf8_lossy(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == esc
            && let Some(end) = raw[i + 1..].iter().position(|c| *c == esc)
        {
            let name = &raw[i + 1..i + 1 + end];
            let replacement = match name {
                b"F" => Some(d.field),
                b"S" => Some(d.component),
                b"T" => d.subcomponent,
                b"R" => d.repetition,
                b"E" => Some(esc),
                _ => None,
            };
            if let Some(r) = replacement {
                out.push(r);
                i += end + 2;
                continue;
            }
            out.extend_from_slice(&raw[i..i + end + 2]);
            i += end + 2;
            continue;
        }
        out.push(b);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Encode text for a field: delimiters become escape sequences; CR and LF become spaces (a
/// segment terminator inside a value would cut the message).
pub fn encode(text: &str, d: &Delimiters) -> String {
    let esc = d.escape.unwrap_or(b'\\') as char;
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        let code = match ch {
            c if c as u32 == u32::from(d.field) => Some('F'),
            c if c as u32 == u32::from(d.component) => Some('S'),
            c if d.subcomponent.is_some_and(|s| c as u32 == u32::from(s)) => Some('T'),
            c if d.repetition.is_some_and(|r| c as u32 == u32::from(r)) => Some('R'),
            c if c == esc => Some('E'),
            _ => None,
        };
        match (code, ch) {
            (Some(code), _) => {
                out.push(esc);
                out.push(code);
                out.push(esc);
            }
            (None, '\r' | '\n') => out.push(' '),
            (None, c) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_basic_escapes_and_keeps_others() {
        let d = Delimiters::default();
        assert_eq!(decode(br"a\F\b\S\c\T\d\R\e\E\f", &d), "a|b^c&d~e\\f");
        assert_eq!(decode(br"x\.br\y\X0D\", &d), r"x\.br\y\X0D\");
        assert!(matches!(decode(b"plain", &d), Cow::Borrowed("plain")));
        assert_eq!(decode(br"dangling\F", &d), r"dangling\F");
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(text in "[ -~]{0,64}") {
            let d = Delimiters::default();
            let encoded = encode(&text, &d);
            prop_assert!(!encoded.contains('|') && !encoded.contains('^') && !encoded.contains('~') && !encoded.contains('&'));
            prop_assert_eq!(decode(encoded.as_bytes(), &d), text);
        }
    }
}
