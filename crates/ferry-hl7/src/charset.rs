//! Character sets named by MSH-18, and decoding field bytes to text.
//!
//! HL7 v2 is a byte protocol: the delimiters are ASCII, and what the other bytes mean is declared
//! by MSH-18 (HL7 table 0211). Absent MSH-18 means ASCII. Real feeds often lie: they declare
//! ASCII or UTF-8 and send Windows-1252, or declare nothing and send UTF-8. This module maps
//! MSH-18 to a [`Charset`], decodes and encodes strictly in it, and applies a [`CharsetPolicy`]
//! (a fallback charset, or a forced one) when the bytes do not fit the declaration, saying when
//! it did so.
//!
//! Choices made here:
//! - `8859/1` and `8859/9` have their own strict decoders: the encoding_rs labels for them are
//!   windows-1252/1254 (WHATWG), which would turn bytes 0x80..=0x9F into `€`, `Ÿ`… instead of
//!   the C1 controls U+0080..=U+009F that ISO 8859 defines. `8859/11` likewise (not windows-874).
//!   The other ISO 8859 parts, ISO-2022-JP, EUC-KR, GB 18030, Big5 use encoding_rs.
//! - `ASCII`, an absent MSH-18 and `UNICODE UTF-8` are all read as UTF-8 (a superset of ASCII):
//!   bytes that are valid UTF-8 are text as they are (borrowed, no copy); others go to the
//!   fallback. `UNICODE` (ISO 10646 without a form) is read as UTF-8 too: in an ER7 byte stream
//!   with one-byte delimiters it cannot be anything else.
//! - `UNICODE UTF-16`/`UTF-32` are refused: with one-byte ASCII delimiters the message could not
//!   have been parsed at all. `CNS 11643-1992` and `ISO IR159` alone are refused (no decoder).
//! - ISO 2022 code extension as Japanese feeds (SS-MIX2) use it: MSH-18 `~ISO IR87` (default
//!   ASCII, JIS X 0208 switched in by escape sequences), `ISO IR6~ISO IR87`, `ISO IR14~ISO IR87`:
//!   all read with the ISO-2022-JP decoder, which also knows JIS X 0201 Roman and Katakana.
//!   Codes are matched ignoring case, spaces, `-`, `_`, `/` and `.`, so `ISOIR87`, `UTF-8`,
//!   `ISO-8859-1` are understood as well.
//!
//! **ISO-2022-JP and delimiters.** Inside a JIS X 0208 run both bytes of a character are in
//! 0x21..=0x7E, so they can equal `|`, `^`, `~`, `\` or `&` (タ is `%?`, ロ `%m`, ウ `%&`): a
//! byte-level parser splits such a message inside characters. [`message_to_utf8`] transcodes the
//! whole message to UTF-8 first, where that cannot happen; parse its output instead of the raw
//! bytes. [`TextDecoder`] itself skips two-byte runs when it looks for escape sequences.

use std::borrow::Cow;
use std::cell::Cell;

use encoding_rs::{DecoderResult, EncoderResult, Encoding};

use crate::escape::{self, Scan};
use crate::message::{Delimiters, Message, ParseError};

/// A character set a message can declare in MSH-18, plus a few that feeds use without saying
/// (useful as a [`CharsetPolicy`] fallback).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Charset {
    /// `ASCII` (also `ISO IR6`), the HL7 default; read as UTF-8, its superset.
    Ascii,
    /// `UNICODE UTF-8` (also `UNICODE`).
    Utf8,
    /// `8859/1`, Latin-1: every byte is the code point of the same value.
    Iso8859_1,
    /// `8859/2`, Latin-2.
    Iso8859_2,
    /// `8859/3`, Latin-3.
    Iso8859_3,
    /// `8859/4`, Latin-4.
    Iso8859_4,
    /// `8859/5`, Cyrillic.
    Iso8859_5,
    /// `8859/6`, Arabic.
    Iso8859_6,
    /// `8859/7`, Greek.
    Iso8859_7,
    /// `8859/8`, Hebrew (visual order, as the standard).
    Iso8859_8,
    /// `8859/9`, Latin-5 (Turkish): Latin-1 with six letters changed.
    Iso8859_9,
    /// `8859/10`, Latin-6 (not in table 0211).
    Iso8859_10,
    /// `8859/11`, Thai (not in table 0211).
    Iso8859_11,
    /// `8859/13`, Latin-7 (not in table 0211).
    Iso8859_13,
    /// `8859/14`, Latin-8 (not in table 0211).
    Iso8859_14,
    /// `8859/15`, Latin-9.
    Iso8859_15,
    /// `8859/16`, Latin-10 (not in table 0211).
    Iso8859_16,
    /// `ISO IR87` (JIS X 0208 by ISO 2022 escape sequences), read as ISO-2022-JP.
    Iso2022Jp,
    /// `KS X 1001`, read as EUC-KR.
    EucKr,
    /// `GB 18030-2000`.
    Gb18030,
    /// `BIG-5`.
    Big5,
    /// Windows-1252 (not in table 0211): what many feeds labelled ASCII or 8859/1 really send.
    Windows1252,
    /// Shift_JIS (not in table 0211).
    ShiftJis,
    /// EUC-JP (not in table 0211).
    EucJp,
}

/// MSH-18 names a charset that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CharsetError {
    /// Not a value of HL7 table 0211 nor a known alias.
    #[error("unknown character set `{code}` in MSH-18 (not in HL7 table 0211)")]
    Unknown {
        /// The code as found (printable).
        code: String,
    },
    /// A table 0211 value this crate does not decode.
    #[error("character set `{code}` in MSH-18 is not supported: {reason}")]
    Unsupported {
        /// The code as found.
        code: String,
        /// Why.
        reason: &'static str,
    },
}

/// Bytes are not valid in a charset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bytes are not valid {} at offset {offset}", charset.name())]
pub struct DecodeError {
    /// The charset decoded with (the declared one, when the fallback failed too or is off).
    pub charset: Charset,
    /// Offset of the first invalid byte in the (escape-decoded) bytes.
    pub offset: usize,
}

/// Text holds a character the charset cannot represent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("character U+{:04X} cannot be encoded in {}", u32::from(*character), charset.name())]
pub struct EncodeError {
    /// The target charset.
    pub charset: Charset,
    /// The first character that does not fit.
    pub character: char,
}

impl Charset {
    /// The charset for one MSH-18 code (a value of HL7 table 0211 such as `8859/1`,
    /// `UNICODE UTF-8`, `ISO IR87`, or a common alias such as `UTF-8`, `ISO-8859-1`,
    /// `windows-1252`). Case, spaces, `-`, `_`, `/` and `.` are ignored.
    pub fn from_code(code: &str) -> Result<Charset, CharsetError> {
        let norm = normalized(code);
        let unsupported = |reason| {
            Err(CharsetError::Unsupported {
                code: code.to_owned(),
                reason,
            })
        };
        let part = norm
            .strip_prefix("ISO")
            .unwrap_or(&norm)
            .strip_prefix("8859")
            .map(str::parse::<u8>);
        if let Some(part) = part {
            use Charset::*;
            return match part {
                Ok(1) => Ok(Iso8859_1),
                Ok(2) => Ok(Iso8859_2),
                Ok(3) => Ok(Iso8859_3),
                Ok(4) => Ok(Iso8859_4),
                Ok(5) => Ok(Iso8859_5),
                Ok(6) => Ok(Iso8859_6),
                Ok(7) => Ok(Iso8859_7),
                Ok(8) => Ok(Iso8859_8),
                Ok(9) => Ok(Iso8859_9),
                Ok(10) => Ok(Iso8859_10),
                Ok(11) => Ok(Iso8859_11),
                Ok(13) => Ok(Iso8859_13),
                Ok(14) => Ok(Iso8859_14),
                Ok(15) => Ok(Iso8859_15),
                Ok(16) => Ok(Iso8859_16),
                _ => Err(CharsetError::Unknown {
                    code: code.to_owned(),
                }),
            };
        }
        match norm.as_str() {
            "" | "ASCII" | "USASCII" | "ISOIR6" | "ISO646" => Ok(Charset::Ascii),
            "UNICODEUTF8" | "UTF8" | "UNICODE" => Ok(Charset::Utf8),
            "ISOIR87" | "ISOIR14" | "ISO2022JP" => Ok(Charset::Iso2022Jp),
            "KSX1001" | "EUCKR" | "KSC5601" => Ok(Charset::EucKr),
            "GB180302000" | "GB18030" => Ok(Charset::Gb18030),
            "BIG5" => Ok(Charset::Big5),
            "WINDOWS1252" | "CP1252" => Ok(Charset::Windows1252),
            "SHIFTJIS" | "SJIS" => Ok(Charset::ShiftJis),
            "EUCJP" => Ok(Charset::EucJp),
            "UNICODEUTF16" | "UTF16" | "UNICODEUTF32" | "UTF32" => unsupported(
                "a UTF-16/UTF-32 message has multi-byte delimiters; transcode it to UTF-8 before parsing",
            ),
            "ISOIR159" => unsupported(
                "JIS X 0212 has no decoder here; it is accepted only as an extension beside ISO IR87",
            ),
            "CNS116431992" => unsupported("CNS 11643 has no decoder here"),
            _ => Err(CharsetError::Unknown {
                code: crate::message::printable(code.as_bytes(), 40),
            }),
        }
    }

    /// The charset of a message from the first repetition of MSH-18 (as
    /// [`Message::charset`] returns it). Absent or empty means ASCII, the HL7 default, which this
    /// crate reads as UTF-8 when the bytes are valid UTF-8 (and with the policy's fallback
    /// otherwise).
    pub fn from_msh18(value: Option<&str>) -> Result<Charset, CharsetError> {
        match value.map(str::trim) {
            None | Some("") => Ok(Charset::Ascii),
            Some(code) => Charset::from_code(code),
        }
    }

    /// The charset from all repetitions of the raw MSH-18 field. The first repetition is the
    /// default charset; later ones are ISO 2022 code extensions, of which `ISO IR87` (with
    /// `ISO IR159`/`ISO IR14` beside it) switches decoding to ISO-2022-JP. Other extensions are
    /// ignored.
    pub fn from_msh18_field(raw: &[u8], d: &Delimiters) -> Result<Charset, CharsetError> {
        let text = |r: &[u8]| {
            std::str::from_utf8(r)
                .map(|s| s.trim().to_owned())
                .map_err(|_| CharsetError::Unknown {
                    code: crate::message::printable(r, 40),
                })
        };
        let mut reps: Vec<String> = Vec::new();
        match d.repetition {
            Some(sep) => {
                for r in raw.split(|b| *b == sep) {
                    reps.push(text(r)?);
                }
            }
            None => reps.push(text(raw)?),
        }
        let first = reps.first().map(String::as_str).unwrap_or("");
        let extensions = reps.get(1..).unwrap_or_default();
        // The Japanese ISO 2022 sets: JIS X 0208, JIS X 0212, JIS X 0201 Roman and Katakana.
        let is_jp = |code: &str| {
            matches!(
                normalized(code).as_str(),
                "ISOIR87" | "ISOIR159" | "ISOIR14" | "ISOIR13"
            )
        };
        let has_ir87 = reps.iter().any(|r| normalized(r) == "ISOIR87");
        if has_ir87 && extensions.iter().all(|e| e.is_empty() || is_jp(e)) {
            let default = Charset::from_msh18(Some(first));
            if matches!(default, Ok(Charset::Ascii | Charset::Iso2022Jp))
                || normalized(first) == "ISOIR159"
            {
                return Ok(Charset::Iso2022Jp);
            }
        }
        Charset::from_msh18(Some(first))
    }

    /// The HL7 table 0211 code (or the usual label for charsets outside the table).
    pub fn code(self) -> &'static str {
        use Charset::*;
        match self {
            Ascii => "ASCII",
            Utf8 => "UNICODE UTF-8",
            Iso8859_1 => "8859/1",
            Iso8859_2 => "8859/2",
            Iso8859_3 => "8859/3",
            Iso8859_4 => "8859/4",
            Iso8859_5 => "8859/5",
            Iso8859_6 => "8859/6",
            Iso8859_7 => "8859/7",
            Iso8859_8 => "8859/8",
            Iso8859_9 => "8859/9",
            Iso8859_10 => "8859/10",
            Iso8859_11 => "8859/11",
            Iso8859_13 => "8859/13",
            Iso8859_14 => "8859/14",
            Iso8859_15 => "8859/15",
            Iso8859_16 => "8859/16",
            Iso2022Jp => "ISO IR87",
            EucKr => "KS X 1001",
            Gb18030 => "GB 18030-2000",
            Big5 => "BIG-5",
            Windows1252 => "windows-1252",
            ShiftJis => "Shift_JIS",
            EucJp => "EUC-JP",
        }
    }

    /// A human name for messages (`ISO-8859-1`, `UTF-8`, `ISO-2022-JP`, …).
    pub fn name(self) -> &'static str {
        match self {
            Charset::Ascii => "ASCII",
            Charset::Utf8 => "UTF-8",
            Charset::Iso8859_1 => "ISO-8859-1",
            Charset::Iso8859_9 => "ISO-8859-9",
            Charset::Iso8859_11 => "ISO-8859-11",
            other => other.encoding().map_or("?", Encoding::name),
        }
    }

    /// True when ASCII bytes are always ASCII characters in this charset (every charset here
    /// but ISO-2022-JP, Shift_JIS, Big5 and GB 18030).
    pub fn is_ascii_transparent(self) -> bool {
        self.scan() == Scan::Plain
    }

    pub(crate) fn scan(self) -> Scan {
        match self {
            Charset::Iso2022Jp => Scan::Iso2022,
            Charset::ShiftJis => Scan::ShiftJis,
            Charset::Big5 | Charset::Gb18030 => Scan::Big5Gb18030,
            _ => Scan::Plain,
        }
    }

    fn encoding(self) -> Option<&'static Encoding> {
        use Charset::*;
        Some(match self {
            Iso8859_2 => encoding_rs::ISO_8859_2,
            Iso8859_3 => encoding_rs::ISO_8859_3,
            Iso8859_4 => encoding_rs::ISO_8859_4,
            Iso8859_5 => encoding_rs::ISO_8859_5,
            Iso8859_6 => encoding_rs::ISO_8859_6,
            Iso8859_7 => encoding_rs::ISO_8859_7,
            Iso8859_8 => encoding_rs::ISO_8859_8,
            Iso8859_10 => encoding_rs::ISO_8859_10,
            Iso8859_13 => encoding_rs::ISO_8859_13,
            Iso8859_14 => encoding_rs::ISO_8859_14,
            Iso8859_15 => encoding_rs::ISO_8859_15,
            Iso8859_16 => encoding_rs::ISO_8859_16,
            Iso2022Jp => encoding_rs::ISO_2022_JP,
            EucKr => encoding_rs::EUC_KR,
            Gb18030 => encoding_rs::GB18030,
            Big5 => encoding_rs::BIG5,
            Windows1252 => encoding_rs::WINDOWS_1252,
            ShiftJis => encoding_rs::SHIFT_JIS,
            EucJp => encoding_rs::EUC_JP,
            Ascii | Utf8 | Iso8859_1 | Iso8859_9 | Iso8859_11 => return None,
        })
    }

    /// Decode bytes strictly in this charset. Borrows when the bytes are ASCII (or valid UTF-8
    /// for [`Charset::Utf8`]). [`Charset::Ascii`] accepts only bytes 0x00..=0x7F here; the
    /// UTF-8 reading of ASCII messages is [`TextDecoder`]'s policy.
    pub fn decode(self, bytes: &[u8]) -> Result<Cow<'_, str>, DecodeError> {
        let err = |offset| DecodeError {
            charset: self,
            offset,
        };
        if let Some(enc) = self.encoding() {
            return decode_with(enc, bytes).map_err(err);
        }
        match self {
            Charset::Utf8 => std::str::from_utf8(bytes)
                .map(Cow::Borrowed)
                .map_err(|e| err(e.valid_up_to())),
            Charset::Ascii => match bytes.iter().position(|b| !b.is_ascii()) {
                Some(i) => Err(err(i)),
                None => Ok(Cow::Borrowed(ascii_str(bytes))),
            },
            Charset::Iso8859_1 => Ok(single_byte(bytes, |b| Some(char::from(b)))),
            Charset::Iso8859_9 => Ok(single_byte(bytes, |b| Some(latin5(b)))),
            _ => {
                // 8859/11 (Thai): undefined positions are errors.
                if let Some(i) = bytes.iter().position(|b| thai(*b).is_none()) {
                    return Err(err(i));
                }
                Ok(single_byte(bytes, thai))
            }
        }
    }

    /// Encode text strictly in this charset. Borrows when the text is ASCII and ASCII is the
    /// same bytes in this charset (for ISO-2022-JP, ASCII without ESC/SO/SI).
    pub fn encode(self, text: &str) -> Result<Cow<'_, [u8]>, EncodeError> {
        let err = |character| EncodeError {
            charset: self,
            character,
        };
        if text.is_ascii()
            && (self != Charset::Iso2022Jp
                || !text.bytes().any(|b| matches!(b, 0x1b | 0x0e | 0x0f)))
        {
            return Ok(Cow::Borrowed(text.as_bytes()));
        }
        if let Some(enc) = self.encoding() {
            return encode_with(enc, text).map(Cow::Owned).map_err(err);
        }
        let to_byte: fn(char) -> Option<u8> = match self {
            Charset::Utf8 => return Ok(Cow::Borrowed(text.as_bytes())),
            Charset::Ascii => |c| u8::try_from(c).ok().filter(u8::is_ascii),
            Charset::Iso8859_1 => |c| u8::try_from(c).ok(),
            Charset::Iso8859_9 => |c| (0..=255u8).find(|b| latin5(*b) == c),
            _ => |c| (0..=255u8).find(|b| thai(*b) == Some(c)),
        };
        text.chars()
            .map(|c| to_byte(c).ok_or_else(|| err(c)))
            .collect::<Result<Vec<u8>, _>>()
            .map(Cow::Owned)
    }
}

/// A code with case, spaces, `-`, `_`, `/` and `.` removed, for lenient matching.
fn normalized(code: &str) -> String {
    code.chars()
        .filter(|c| !matches!(c, ' ' | '-' | '_' | '/' | '.'))
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Bytes already checked to be ASCII as `&str`.
fn ascii_str(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

fn single_byte(bytes: &[u8], map: impl Fn(u8) -> Option<char>) -> Cow<'_, str> {
    if bytes.is_ascii() {
        return Cow::Borrowed(ascii_str(bytes));
    }
    Cow::Owned(bytes.iter().filter_map(|b| map(*b)).collect())
}

/// ISO 8859-9: Latin-1 except six Turkish letters.
fn latin5(b: u8) -> char {
    match b {
        0xD0 => 'Ğ',
        0xDD => 'İ',
        0xDE => 'Ş',
        0xF0 => 'ğ',
        0xFD => 'ı',
        0xFE => 'ş',
        _ => char::from(b),
    }
}

/// ISO 8859-11 (TIS-620 plus NBSP): Thai letters at 0xA1..=0xDA and 0xDF..=0xFB.
fn thai(b: u8) -> Option<char> {
    match b {
        0x00..=0xA0 => Some(char::from(b)),
        0xA1..=0xDA => char::from_u32(0x0E01 + u32::from(b - 0xA1)),
        0xDF..=0xFB => char::from_u32(0x0E3F + u32::from(b - 0xDF)),
        _ => None,
    }
}

fn decode_with<'a>(enc: &'static Encoding, bytes: &'a [u8]) -> Result<Cow<'a, str>, usize> {
    if let Some(text) = enc.decode_without_bom_handling_and_without_replacement(bytes) {
        return Ok(text);
    }
    // Find where it failed, for the error.
    let mut decoder = enc.new_decoder_without_bom_handling();
    let cap = decoder
        .max_utf8_buffer_length_without_replacement(bytes.len())
        .unwrap_or(bytes.len().saturating_mul(3));
    let mut out = String::with_capacity(cap);
    let (result, read) = decoder.decode_to_string_without_replacement(bytes, &mut out, true);
    Err(match result {
        DecoderResult::Malformed(bad, extra) => read
            .saturating_sub(usize::from(bad))
            .saturating_sub(usize::from(extra)),
        DecoderResult::InputEmpty | DecoderResult::OutputFull => read,
    })
}

fn encode_with(enc: &'static Encoding, text: &str) -> Result<Vec<u8>, char> {
    let mut encoder = enc.new_encoder();
    let cap = encoder
        .max_buffer_length_from_utf8_without_replacement(text.len())
        .unwrap_or(text.len().saturating_mul(8))
        .max(16);
    let mut out = vec![0u8; cap];
    let (mut src, mut len) = (text, 0usize);
    loop {
        let dst = out.get_mut(len..).unwrap_or_default();
        let (result, read, written) = encoder.encode_from_utf8_without_replacement(src, dst, true);
        len += written;
        src = src.get(read..).unwrap_or_default();
        match result {
            EncoderResult::Unmappable(c) => return Err(c),
            EncoderResult::InputEmpty => {
                out.truncate(len);
                return Ok(out);
            }
            // Not expected with the maximum length, but never truncate silently.
            EncoderResult::OutputFull => out.resize(out.len().saturating_mul(2), 0),
        }
    }
}

/// What to do when bytes do not fit the charset the message declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CharsetPolicy {
    /// Charset to decode with when the declared one fails (for ASCII/UTF-8/absent: when the
    /// bytes are not valid UTF-8). `None` makes such bytes an error. Default: ISO-8859-1, which
    /// accepts every byte and keeps each as the code point of the same value, so nothing is lost
    /// (re-encoding in ISO-8859-1 gives the original bytes back).
    pub fallback: Option<Charset>,
    /// Ignore MSH-18 and always use this charset (for a feed known to lie consistently).
    pub force: Option<Charset>,
    /// Use the fallback also when MSH-18 names an unknown or unsupported charset, instead of
    /// failing to build the decoder.
    pub fallback_on_unknown_label: bool,
}

impl Default for CharsetPolicy {
    fn default() -> Self {
        CharsetPolicy {
            fallback: Some(Charset::Iso8859_1),
            force: None,
            fallback_on_unknown_label: false,
        }
    }
}

impl CharsetPolicy {
    /// A policy without fallback: bytes that do not fit the declared charset are an error.
    pub fn strict() -> Self {
        CharsetPolicy {
            fallback: None,
            force: None,
            fallback_on_unknown_label: false,
        }
    }

    /// The charset to read a message with: `force`, else MSH-18 (all repetitions), else (when
    /// allowed) the fallback.
    pub fn charset_for(&self, m: &Message<'_>) -> Result<Charset, CharsetError> {
        if let Some(forced) = self.force {
            return Ok(forced);
        }
        let raw = m
            .segment("MSH", 1)
            .and_then(|msh| msh.field(18))
            .unwrap_or_default();
        match Charset::from_msh18_field(raw, m.delimiters()) {
            Ok(c) => Ok(c),
            Err(e) => match self.fallback {
                Some(f) if self.fallback_on_unknown_label => Ok(f),
                _ => Err(e),
            },
        }
    }
}

/// Which charset actually decoded a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Used {
    /// The declared charset.
    Declared,
    /// The message declared ASCII (or nothing) and the bytes were non-ASCII but valid UTF-8.
    Utf8InsteadOfAscii,
    /// The bytes did not fit the declared charset; the policy's fallback decoded them.
    Fallback(Charset),
}

/// Decoded text and how it was decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The text.
    pub text: Cow<'a, str>,
    /// Which charset produced it.
    pub used: Used,
}

/// Field bytes to text for one message: escape sequences first (at byte level, since `\Xhh\`
/// gives bytes in the message's charset), then the charset, with the policy's fallback.
///
/// Build it once per message ([`TextDecoder::for_message`]) and call [`TextDecoder::text`] on
/// raw values from [`Message::get`] or [`crate::Segment::field`]. It counts the values that
/// needed the fallback ([`TextDecoder::fallbacks`]), so a channel can flag feeds that lie.
#[derive(Debug, Clone)]
pub struct TextDecoder {
    charset: Charset,
    delimiters: Delimiters,
    policy: CharsetPolicy,
    fallbacks: Cell<usize>,
}

impl TextDecoder {
    /// A decoder for values in `charset` with these delimiters.
    pub fn new(charset: Charset, delimiters: Delimiters, policy: CharsetPolicy) -> Self {
        TextDecoder {
            charset,
            delimiters,
            policy,
            fallbacks: Cell::new(0),
        }
    }

    /// A decoder for a message: charset from MSH-18 (all repetitions) and the policy.
    pub fn for_message(m: &Message<'_>, policy: CharsetPolicy) -> Result<Self, CharsetError> {
        Ok(TextDecoder::new(
            policy.charset_for(m)?,
            *m.delimiters(),
            policy,
        ))
    }

    /// The delimiters of the message.
    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    /// The charset values are decoded with.
    pub fn charset(&self) -> Charset {
        self.charset
    }

    /// How many values so far were decoded with the fallback charset.
    pub fn fallbacks(&self) -> usize {
        self.fallbacks.get()
    }

    /// The text of a raw value. Borrows when the value has no escape sequence and its bytes are
    /// ASCII (or valid UTF-8 for an ASCII/UTF-8 message).
    pub fn text<'a>(&self, raw: &'a [u8]) -> Result<Cow<'a, str>, DecodeError> {
        self.decode(raw).map(|d| d.text)
    }

    /// [`TextDecoder::text`] that also says which charset decoded the value.
    pub fn decode<'a>(&self, raw: &'a [u8]) -> Result<Decoded<'a>, DecodeError> {
        let bytes = escape::decode_bytes_scan(raw, &self.delimiters, self.charset.scan());
        let declared = match self.charset {
            Charset::Ascii => Charset::Utf8,
            c => c,
        };
        let err = match decode_cow(declared, bytes) {
            Ok(text) => {
                let used = if self.charset == Charset::Ascii && !text.is_ascii() {
                    Used::Utf8InsteadOfAscii
                } else {
                    Used::Declared
                };
                return Ok(Decoded { text, used });
            }
            Err(e) => e,
        };
        let Some(fallback) = self.policy.fallback.filter(|f| *f != declared) else {
            return Err(DecodeError {
                charset: self.charset,
                ..err
            });
        };
        // The fallback reads the raw value again: its escape scan may differ.
        let bytes = escape::decode_bytes_scan(raw, &self.delimiters, fallback.scan());
        match decode_cow(fallback, bytes) {
            Ok(text) => {
                self.fallbacks.set(self.fallbacks.get().saturating_add(1));
                Ok(Decoded {
                    text,
                    used: Used::Fallback(fallback),
                })
            }
            Err(_) => Err(DecodeError {
                charset: self.charset,
                ..err
            }),
        }
    }

    /// Text to bytes for a value of this message: escape sequences for delimiters and controls
    /// ([`escape::encode`]), then the charset ([`Charset::Ascii`] is written as UTF-8). In
    /// ISO-2022-JP the controls ESC, SO and SI cannot be data (not even as `\Xhh\`): they are
    /// an error.
    pub fn encode(&self, text: &str) -> Result<Vec<u8>, EncodeError> {
        if self.charset == Charset::Iso2022Jp
            && let Some(c) = text.chars().find(|c| matches!(c, '\x1b' | '\x0e' | '\x0f'))
        {
            return Err(EncodeError {
                charset: self.charset,
                character: c,
            });
        }
        let escaped = escape::encode(text, &self.delimiters);
        let charset = match self.charset {
            Charset::Ascii => Charset::Utf8,
            c => c,
        };
        charset.encode(&escaped).map(Cow::into_owned)
    }
}

/// Decode escape-decoded bytes, keeping the lifetime of the raw input: borrowed bytes can give
/// borrowed text, owned bytes give owned text (UTF-8 without a copy).
fn decode_cow<'a>(charset: Charset, bytes: Cow<'a, [u8]>) -> Result<Cow<'a, str>, DecodeError> {
    match bytes {
        Cow::Borrowed(b) => charset.decode(b),
        Cow::Owned(v) if charset == Charset::Utf8 => {
            String::from_utf8(v)
                .map(Cow::Owned)
                .map_err(|e| DecodeError {
                    charset,
                    offset: e.utf8_error().valid_up_to(),
                })
        }
        Cow::Owned(v) => charset.decode(&v).map(|t| Cow::Owned(t.into_owned())),
    }
}

/// Decode a raw value of `m` with the charset its MSH-18 declares and the default policy
/// (ISO-8859-1 fallback, also for unknown MSH-18 codes), so it never fails. Builds a decoder on
/// each call; for many values use [`TextDecoder`].
pub fn decode_field<'a>(m: &Message<'_>, raw: &'a [u8]) -> Cow<'a, str> {
    let policy = CharsetPolicy {
        fallback_on_unknown_label: true,
        ..CharsetPolicy::default()
    };
    let charset = policy.charset_for(m).unwrap_or(Charset::Iso8859_1);
    match TextDecoder::new(charset, *m.delimiters(), policy).text(raw) {
        Ok(text) => text,
        Err(_) => String::from_utf8_lossy(raw),
    }
}

/// A whole message transcoded to UTF-8 by [`message_to_utf8`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Utf8Message<'a> {
    /// The message as UTF-8 (borrowed when it already was; a leading UTF-8 BOM is removed).
    pub text: Cow<'a, str>,
    /// The charset MSH-18 declared (or the forced one).
    pub declared: Charset,
    /// Which charset decoded it.
    pub used: Used,
}

/// Why a message could not be transcoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranscodeError {
    /// The bytes are not an HL7 message (no MSH-18 to read).
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// MSH-18 names a charset that cannot be used.
    #[error(transparent)]
    Charset(#[from] CharsetError),
    /// The bytes do not fit the charset and the fallback did not help (or is off).
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Transcode a whole message to UTF-8, reading MSH-18 from its header. Needed for ISO-2022-JP
/// (and Shift_JIS/Big5/GB 18030) messages, whose multi-byte characters can contain delimiter
/// bytes: parse the returned text, and read its values with
/// `TextDecoder::new(Charset::Utf8, …)`. For ASCII-transparent charsets it is optional; it makes
/// every later value a borrowed `&str`.
///
/// The escape sequences are left as they are; a `\Xhh\` sequence then means bytes in UTF-8.
pub fn message_to_utf8<'a>(
    bytes: &'a [u8],
    policy: &CharsetPolicy,
) -> Result<Utf8Message<'a>, TranscodeError> {
    let m = Message::parse(bytes)?;
    let declared = policy.charset_for(&m)?;
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let first = match declared {
        Charset::Ascii => Charset::Utf8,
        c => c,
    };
    match first.decode(body) {
        Ok(text) => Ok(Utf8Message {
            used: if declared == Charset::Ascii && !text.is_ascii() {
                Used::Utf8InsteadOfAscii
            } else {
                Used::Declared
            },
            text,
            declared,
        }),
        Err(e) => {
            let fallback = policy.fallback.filter(|f| *f != first).ok_or(DecodeError {
                charset: declared,
                ..e
            })?;
            let text = fallback.decode(body).map_err(|_| DecodeError {
                charset: declared,
                ..e
            })?;
            Ok(Utf8Message {
                text,
                declared,
                used: Used::Fallback(fallback),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(msh18: &str, rest: &[u8]) -> Vec<u8> {
        let mut v = format!("MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5||||||{msh18}\rPID|1||")
            .into_bytes();
        v.extend_from_slice(rest);
        v.push(b'\r');
        v
    }

    #[test]
    fn table_0211_codes_map() {
        let cases = [
            ("ASCII", Charset::Ascii),
            ("ISO IR6", Charset::Ascii),
            ("8859/1", Charset::Iso8859_1),
            ("8859/9", Charset::Iso8859_9),
            ("8859/15", Charset::Iso8859_15),
            ("ISO-8859-2", Charset::Iso8859_2),
            ("UNICODE UTF-8", Charset::Utf8),
            ("UNICODE", Charset::Utf8),
            ("utf-8", Charset::Utf8),
            ("ISO IR87", Charset::Iso2022Jp),
            ("ISOIR87", Charset::Iso2022Jp),
            ("KS X 1001", Charset::EucKr),
            ("GB 18030-2000", Charset::Gb18030),
            ("BIG-5", Charset::Big5),
            ("windows-1252", Charset::Windows1252),
        ];
        for (code, cs) in cases {
            assert_eq!(Charset::from_code(code), Ok(cs), "{code}");
        }
        for code in [
            "UNICODE UTF-16",
            "UNICODE UTF-32",
            "CNS 11643-1992",
            "ISO IR159",
        ] {
            assert!(
                matches!(
                    Charset::from_code(code),
                    Err(CharsetError::Unsupported { .. })
                ),
                "{code}"
            );
        }
        for code in ["8859/12", "8859/99", "EBCDIC", "\u{1}"] {
            assert!(
                matches!(Charset::from_code(code), Err(CharsetError::Unknown { .. })),
                "{code}"
            );
        }
        assert_eq!(Charset::from_msh18(None), Ok(Charset::Ascii));
        assert_eq!(Charset::from_msh18(Some(" ")), Ok(Charset::Ascii));
        let d = Delimiters::default();
        assert_eq!(
            Charset::from_msh18_field(b"~ISO IR87", &d),
            Ok(Charset::Iso2022Jp)
        );
        assert_eq!(
            Charset::from_msh18_field(b"ISO IR6~ISO IR87~ISO IR159", &d),
            Ok(Charset::Iso2022Jp)
        );
        assert_eq!(
            Charset::from_msh18_field(b"8859/1~ISO IR87", &d),
            Ok(Charset::Iso8859_1)
        );
        assert_eq!(Charset::from_msh18_field(b"", &d), Ok(Charset::Ascii));
    }

    #[test]
    fn every_table_0211_value_is_mapped_or_refused_precisely() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/corpus/structures/hl7-dictionary/lib/tables.json"
        );
        let Ok(json) = std::fs::read_to_string(path) else {
            return;
        };
        // Pull the keys of table 211's "values" without a JSON dependency.
        let start = json.find("\"211\"").expect("table 211");
        let values = &json[start..];
        let values = &values[values.find("\"values\"").expect("values")..];
        let values = &values[..values.find('}').expect("end")];
        let codes: Vec<&str> = values
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"')?.split('"').next())
            .filter(|c| *c != "values")
            .collect();
        assert!(codes.len() >= 20, "{codes:?}");
        for code in codes {
            match Charset::from_code(code) {
                Ok(_) | Err(CharsetError::Unsupported { .. }) => {}
                Err(e) => panic!("{code}: {e}"),
            }
        }
    }

    #[test]
    fn latin1_is_true_latin1() {
        let bytes: Vec<u8> = (0x80..=0xFF).collect();
        let text = Charset::Iso8859_1.decode(&bytes).expect("latin-1 is total");
        let expected: String = (0x80..=0xFFu32).filter_map(char::from_u32).collect();
        assert_eq!(text, expected);
        assert!(text.starts_with('\u{80}') && !text.contains('€'));
        assert_eq!(
            Charset::Iso8859_1.encode(&text).expect("fits").as_ref(),
            &bytes[..]
        );
        // windows-1252 is different, and available as a fallback.
        assert_eq!(Charset::Windows1252.decode(b"\x80").expect("cp1252"), "€");
        assert!(matches!(
            Charset::Iso8859_1.decode(b"plain"),
            Ok(Cow::Borrowed("plain"))
        ));
    }

    #[test]
    fn latin5_and_others() {
        assert_eq!(
            Charset::Iso8859_9
                .decode(b"\xD0\xDD\xDE\xF0\xFD\xFE\x80")
                .expect("8859-9"),
            "ĞİŞğış\u{80}"
        );
        assert_eq!(
            Charset::Iso8859_9.encode("Ğ").expect("fits").as_ref(),
            b"\xD0"
        );
        assert!(Charset::Iso8859_9.encode("Ð").is_err());
        assert_eq!(
            Charset::Iso8859_2.decode(b"\xA3\x80").expect("8859-2"),
            "Ł\u{80}"
        );
        assert_eq!(Charset::Iso8859_15.decode(b"\xA4").expect("8859-15"), "€");
        assert_eq!(Charset::Iso8859_5.decode(b"\xC0").expect("8859-5"), "Р");
        assert_eq!(
            Charset::Iso8859_11.decode(b"\xA1\x80").expect("thai"),
            "ก\u{80}"
        );
        assert_eq!(
            Charset::Iso8859_11.decode(b"ab\xFC"),
            Err(DecodeError {
                charset: Charset::Iso8859_11,
                offset: 2
            })
        );
        assert_eq!(
            Charset::Iso8859_3.decode(b"a\xA5"),
            Err(DecodeError {
                charset: Charset::Iso8859_3,
                offset: 1
            })
        );
        assert_eq!(
            Charset::Ascii.encode("é"),
            Err(EncodeError {
                charset: Charset::Ascii,
                character: 'é'
            })
        );
        assert_eq!(
            Charset::Iso8859_2.encode("日"),
            Err(EncodeError {
                charset: Charset::Iso8859_2,
                character: '日'
            })
        );
        assert_eq!(
            Charset::EucKr
                .decode(&Charset::EucKr.encode("한국").expect("fits"))
                .expect("round"),
            "한국"
        );
        assert_eq!(
            Charset::Big5
                .decode(&Charset::Big5.encode("台灣").expect("fits"))
                .expect("round"),
            "台灣"
        );
        assert_eq!(
            Charset::Gb18030
                .decode(&Charset::Gb18030.encode("中文😀").expect("fits"))
                .expect("round"),
            "中文😀"
        );
    }

    #[test]
    fn iso2022jp_round_trip_and_escapes_inside_runs() {
        let bytes = Charset::Iso2022Jp.encode("本人 タロウ").expect("fits");
        assert_eq!(bytes.as_ref(), b"\x1b$BK\\?M\x1b(B \x1b$B%?%m%&\x1b(B");
        let d = TextDecoder::new(
            Charset::Iso2022Jp,
            Delimiters::default(),
            CharsetPolicy::strict(),
        );
        assert_eq!(d.text(&bytes).expect("decodes"), "本人 タロウ");
        let mut raw = bytes.into_owned();
        raw.extend_from_slice(b"\\F\\");
        assert_eq!(d.text(&raw).expect("decodes"), "本人 タロウ|");
        assert_eq!(d.encode("本人|").expect("fits"), b"\x1b$BK\\?M\x1b(B\\F\\");
        assert_eq!(
            d.encode("a\x1b"),
            Err(EncodeError {
                charset: Charset::Iso2022Jp,
                character: '\x1b'
            })
        );
    }

    #[test]
    fn policy_fallback_is_reported() {
        let m_bytes = msg("ASCII", b"M\xfcller");
        let m = Message::parse(&m_bytes).expect("parses");
        let d = TextDecoder::for_message(&m, CharsetPolicy::default()).expect("ascii");
        let raw = m.get("PID-3").expect("path").expect("present");
        assert_eq!(
            d.decode(raw).expect("fallback"),
            Decoded {
                text: Cow::Owned("Müller".into()),
                used: Used::Fallback(Charset::Iso8859_1)
            }
        );
        assert_eq!(d.fallbacks(), 1);
        let strict = TextDecoder::for_message(&m, CharsetPolicy::strict()).expect("ascii");
        assert_eq!(
            strict.text(raw),
            Err(DecodeError {
                charset: Charset::Ascii,
                offset: 1
            })
        );
        let cp1252 = CharsetPolicy {
            fallback: Some(Charset::Windows1252),
            ..CharsetPolicy::default()
        };
        let d = TextDecoder::for_message(&m, cp1252).expect("ascii");
        assert_eq!(d.text(b"\x80 5").expect("fallback"), "€ 5");
        // ASCII declared, UTF-8 sent: read as UTF-8 and said so, borrowed.
        let d = TextDecoder::for_message(&m, CharsetPolicy::strict()).expect("ascii");
        let got = d.decode("Müller".as_bytes()).expect("utf-8");
        assert_eq!(got.used, Used::Utf8InsteadOfAscii);
        assert!(matches!(got.text, Cow::Borrowed("Müller")));
        // \Xhh\ yields bytes in the message charset.
        let m_bytes = msg("8859/1", b"x");
        let m = Message::parse(&m_bytes).expect("parses");
        let d = TextDecoder::for_message(&m, CharsetPolicy::strict()).expect("latin-1");
        assert_eq!(d.text(br"M\XFC\ller\S\").expect("latin-1"), "Müller^");
        assert_eq!(decode_field(&m, b"\xe9"), "é");
        assert_eq!(d.encode("é|").expect("fits"), b"\xe9\\F\\");
    }

    #[test]
    fn unknown_label_policy() {
        let m_bytes = msg("EBCDIC", b"x");
        let m = Message::parse(&m_bytes).expect("parses");
        assert!(matches!(
            TextDecoder::for_message(&m, CharsetPolicy::default()),
            Err(CharsetError::Unknown { .. })
        ));
        let lenient = CharsetPolicy {
            fallback_on_unknown_label: true,
            ..CharsetPolicy::default()
        };
        let d = TextDecoder::for_message(&m, lenient).expect("falls back");
        assert_eq!(d.charset(), Charset::Iso8859_1);
        let forced = CharsetPolicy {
            force: Some(Charset::Iso8859_2),
            ..CharsetPolicy::default()
        };
        assert_eq!(
            TextDecoder::for_message(&m, forced)
                .expect("forced")
                .charset(),
            Charset::Iso8859_2
        );
    }

    #[test]
    fn utf8_with_bom() {
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        bytes.extend(msg("UNICODE UTF-8", "Zoë^Łukasz".as_bytes()));
        let m = Message::parse(&bytes).expect("parses");
        let d = TextDecoder::for_message(&m, CharsetPolicy::strict()).expect("utf-8");
        assert_eq!(d.charset(), Charset::Utf8);
        let raw = m.get("PID-3.2").expect("path").expect("present");
        assert!(matches!(
            d.text(raw).expect("utf-8"),
            Cow::Borrowed("Łukasz")
        ));
        assert_eq!(m.get("MSH-3").expect("path"), Some(&b"A"[..]));
        let u = message_to_utf8(&bytes, &CharsetPolicy::strict()).expect("utf-8");
        assert!(u.text.starts_with("MSH|") && matches!(u.text, Cow::Borrowed(_)));
    }

    fn with_delimiters(chars: impl Strategy<Value = char>) -> impl Strategy<Value = String> {
        let special = prop::sample::select(vec!['|', '^', '~', '\\', '&', '\r', '\n', '\x1b']);
        prop::collection::vec(prop_oneof![3 => chars, 1 => special], 0..32)
            .prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #[test]
        fn latin1_bytes_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let text = Charset::Iso8859_1.decode(&bytes).expect("total");
            prop_assert_eq!(Charset::Iso8859_1.encode(&text).expect("fits").into_owned(), bytes.clone());
            let text = Charset::Iso8859_9.decode(&bytes).expect("total");
            prop_assert_eq!(Charset::Iso8859_9.encode(&text).expect("fits").into_owned(), bytes.clone());
        }

        #[test]
        fn text_decoder_round_trips_values(
            latin in with_delimiters(prop::char::range('\u{20}', '\u{ff}')),
            japanese in with_delimiters(prop_oneof![
                prop::char::range('\u{3041}', '\u{3093}'),
                prop::char::range('\u{30a1}', '\u{30f3}'),
                prop::sample::select(vec!['本', '人', '患', '者', '太', '郎', 'a', ' ']),
            ]),
            any_text in with_delimiters(any::<char>()),
        ) {
            let d = Delimiters::default();
            for (charset, text) in [
                (Charset::Iso8859_1, &latin),
                (Charset::Iso8859_9, &latin.replace(['Ð', 'Ý', 'Þ', 'ð', 'ý', 'þ'], "x")),
                (Charset::Iso2022Jp, &japanese.replace('\x1b', "")),
                (Charset::ShiftJis, &japanese),
                (Charset::EucJp, &japanese),
                // WHATWG GB 18030 does not round-trip every private-use code point (U+E5E5
                // has no encoding; others map to and from standard characters since 2022).
                (
                    Charset::Gb18030,
                    &any_text
                        .chars()
                        .map(|c| if ('\u{e000}'..='\u{f8ff}').contains(&c) { 'x' } else { c })
                        .collect::<String>(),
                ),
                (Charset::Utf8, &any_text),
            ] {
                let dec = TextDecoder::new(charset, d, CharsetPolicy::strict());
                let bytes = dec.encode(text).expect("representable");
                prop_assert!(!bytes.contains(&b'\r') && !bytes.contains(&b'\n'));
                if charset.is_ascii_transparent() {
                    prop_assert!(!bytes.iter().any(|b| matches!(b, b'|' | b'^' | b'~' | b'&')));
                }
                let back = dec.decode(&bytes).expect("decodes");
                prop_assert_eq!(back.used, Used::Declared);
                prop_assert_eq!(&back.text, text.as_str(), "{:?}", charset);
            }
        }

        #[test]
        fn decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..48)) {
            for charset in [Charset::Ascii, Charset::Utf8, Charset::Iso8859_3, Charset::Iso8859_11,
                Charset::Iso2022Jp, Charset::ShiftJis, Charset::Big5, Charset::Gb18030] {
                let _ = charset.decode(&bytes);
                let dec = TextDecoder::new(charset, Delimiters::default(), CharsetPolicy::default());
                // With the Latin-1 fallback every value decodes.
                prop_assert!(dec.decode(&bytes).is_ok());
            }
        }
    }
}
