//! Acknowledgements: building the ones Ferry sends and reading the ones it receives.
//!
//! Built ACKs follow HL7 v2 chapter 2: MSH-3/4 and MSH-5/6 swapped from the original, MSH-9
//! `ACK^<trigger>^ACK` (shorter for old versions), a fresh MSH-10, MSH-11 and MSH-12 copied,
//! `MSA|code|<original MSH-10>|text`, and an ERR segment on errors in the form of the
//! message's version (ERR-1 before 2.5; ERR-2/3/4/8 from 2.5 on). Every text placed in an ACK
//! is escaped with the original's delimiters, so a reason containing `|` cannot corrupt it.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::escape;
use crate::message::{Delimiters, Message, ParseError};

/// MSA-1 acknowledgement codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckCode {
    /// Application accept (original mode).
    AA,
    /// Application error: the receiver failed; resending may work.
    AE,
    /// Application reject: the message is wrong; resending will not help.
    AR,
    /// Commit accept (enhanced mode): safely stored.
    CA,
    /// Commit error (enhanced mode).
    CE,
    /// Commit reject (enhanced mode).
    CR,
}

impl AckCode {
    /// The code as sent in MSA-1.
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }

    /// `AA` or `CA`.
    pub fn is_positive(self) -> bool {
        matches!(self, AckCode::AA | AckCode::CA)
    }
}

impl fmt::Display for AckCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AckCode {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<AckCode, ParseError> {
        Ok(match s.trim() {
            "AA" => AckCode::AA,
            "AE" => AckCode::AE,
            "AR" => AckCode::AR,
            "CA" => AckCode::CA,
            "CE" => AckCode::CE,
            "CR" => AckCode::CR,
            other => {
                return Err(ParseError::UnknownAckCode(crate::message::printable(
                    other.as_bytes(),
                    8,
                )));
            }
        })
    }
}

/// The error reported in an ACK's ERR segment: an HL7 table 0357 code, a text, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorDetail {
    /// HL7 table 0357 code (100 segment sequence error, 101 required field missing, 102 data
    /// type error, 200 unsupported message type, 207 application internal error, …).
    pub code: u16,
    /// Human-readable text.
    pub text: String,
    /// Segment id of the error location.
    pub segment: Option<String>,
    /// Field number of the error location.
    pub field: Option<u16>,
}

impl ErrorDetail {
    /// Code 101: a required field is missing.
    pub fn required_field_missing(segment: &str, field: u16) -> ErrorDetail {
        ErrorDetail {
            code: 101,
            text: format!("Required field missing: {segment}-{field}"),
            segment: Some(segment.to_owned()),
            field: Some(field),
        }
    }

    /// Code 100: the message structure could not be read.
    pub fn segment_sequence(text: &str) -> ErrorDetail {
        ErrorDetail {
            code: 100,
            text: text.to_owned(),
            segment: None,
            field: None,
        }
    }

    /// Code 200: the message type is not accepted.
    pub fn unsupported_message_type(text: &str) -> ErrorDetail {
        ErrorDetail {
            code: 200,
            text: text.to_owned(),
            segment: Some("MSH".into()),
            field: Some(9),
        }
    }

    /// Code 207: the receiver failed internally.
    pub fn internal_error(text: &str) -> ErrorDetail {
        ErrorDetail {
            code: 207,
            text: text.to_owned(),
            segment: None,
            field: None,
        }
    }
}

/// What a received ACK says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckSummary {
    /// MSA-1.
    pub code: AckCode,
    /// MSA-2: the control id of the message acknowledged.
    pub control_id: String,
    /// MSA-3, text message.
    pub text: Option<String>,
    /// Error text from ERR (ERR-8, ERR-3.2, or ERR-1.4.2), when present.
    pub error_text: Option<String>,
}

/// Current UTC time as `YYYYMMDDHHMMSS`.
pub fn timestamp_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

static ACK_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh control id for an ACK: `A` + timestamp + a 5-digit process-wide counter
/// (20 characters, the MSH-10 limit).
fn fresh_control_id(timestamp: &str) -> String {
    let n = ACK_COUNTER.fetch_add(1, Ordering::Relaxed) % 100_000;
    format!("A{timestamp}{n:05}")
}

/// `(major, minor, patch)` of a version id such as `2.5.1`.
fn version_tuple(version: &str) -> (u32, u32, u32) {
    let mut parts = version
        .trim()
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Build an original-mode (or, with `CA`/`CE`/`CR`, enhanced-mode accept) acknowledgement.
pub fn build_ack(
    original: &Message<'_>,
    code: AckCode,
    text: Option<&str>,
    error: Option<&ErrorDetail>,
) -> Vec<u8> {
    build_ack_at(original, code, text, error, &timestamp_now())
}

/// [`build_ack`] with a given MSH-7 timestamp (for reproducible tests).
pub fn build_ack_at(
    original: &Message<'_>,
    code: AckCode,
    text: Option<&str>,
    error: Option<&ErrorDetail>,
    timestamp: &str,
) -> Vec<u8> {
    let d = *original.delimiters();
    let f = d.field as char;
    let msh = original.segment("MSH", 1);
    let raw = |n: usize| -> &[u8] { msh.and_then(|s| s.field(n)).unwrap_or_default() };
    let version = original.version().unwrap_or("");
    let trigger = original.trigger_event().unwrap_or("");
    let v = version_tuple(version);
    let c = d.component as char;
    let message_type = if trigger.is_empty() || v < (2, 2, 0) {
        "ACK".to_owned()
    } else if v < (2, 3, 1) {
        format!("ACK{c}{trigger}")
    } else {
        format!("ACK{c}{trigger}{c}ACK")
    };
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"MSH");
    out.push(d.field);
    out.extend_from_slice(raw(2));
    for n in [5, 6, 3, 4] {
        out.push(d.field);
        out.extend_from_slice(raw(n));
    }
    out.extend_from_slice(
        format!(
            "{f}{timestamp}{f}{f}{message_type}{f}{}",
            fresh_control_id(timestamp)
        )
        .as_bytes(),
    );
    out.push(d.field);
    out.extend_from_slice(raw(11));
    out.push(d.field);
    out.extend_from_slice(raw(12));
    out.push(b'\r');
    out.extend_from_slice(format!("MSA{f}{}{f}", code.as_str()).as_bytes());
    out.extend_from_slice(raw(10));
    if let Some(t) = text {
        out.push(d.field);
        out.extend_from_slice(escape::encode(t, &d).as_bytes());
    }
    out.push(b'\r');
    if !code.is_positive()
        && let Some(e) = error
    {
        out.extend_from_slice(err_segment(e, &d, v >= (2, 5, 0)).as_bytes());
        out.push(b'\r');
    }
    out
}

fn err_segment(e: &ErrorDetail, d: &Delimiters, v25: bool) -> String {
    let f = d.field as char;
    let c = d.component as char;
    let s = d.subcomponent.unwrap_or(b'&') as char;
    let text = escape::encode(&e.text, d);
    let segment = e.segment.as_deref().unwrap_or("");
    let field = e.field.map(|n| n.to_string()).unwrap_or_default();
    if v25 {
        let location = if segment.is_empty() {
            String::new()
        } else {
            format!("{segment}{c}1{c}{field}")
        };
        format!(
            "ERR{f}{f}{location}{f}{}{c}{text}{c}HL70357{f}E{f}{f}{f}{f}{text}",
            e.code
        )
    } else {
        format!(
            "ERR{f}{segment}{c}1{c}{field}{c}{c}{}{s}{text}{s}HL70357",
            e.code
        )
    }
}

/// An acknowledgement for input that has no readable MSH: generic header with the default
/// delimiters, MSA-2 empty, ERR code 100.
pub fn build_nak_without_header(code: AckCode, text: &str) -> Vec<u8> {
    let d = Delimiters::default();
    let ts = timestamp_now();
    let detail = ErrorDetail::segment_sequence(text);
    format!(
        "MSH|^~\\&|FERRY||||{ts}||ACK|{}|P|2.5\rMSA|{}||{}\r{}\r",
        fresh_control_id(&ts),
        code.as_str(),
        escape::encode(text, &d),
        err_segment(&detail, &d, true)
    )
    .into_bytes()
}

/// Read an acknowledgement received from another system.
pub fn parse_ack(bytes: &[u8]) -> Result<AckSummary, ParseError> {
    let message = Message::parse(bytes)?;
    if message.segment("MSA", 1).is_none() {
        return Err(ParseError::MissingMsa);
    }
    let text = |path: &str| -> Option<String> {
        message
            .get_str(path)
            .ok()
            .flatten()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    };
    let code: AckCode = text("MSA-1").unwrap_or_default().parse()?;
    Ok(AckSummary {
        code,
        control_id: text("MSA-2").unwrap_or_default(),
        text: text("MSA-3"),
        error_text: text("ERR-8")
            .or_else(|| text("ERR-3.2"))
            .or_else(|| text("ERR-1.4.2")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADT: &[u8] =
        b"MSH|^~\\&|HIS|GH|FERRY|CLOUD|20261125083000||ADT^A01^ADT_A01|MSG1|P|2.5.1\rPID|1||42\r";

    #[test]
    fn builds_a_chapter_2_ack() {
        let m = Message::parse(ADT).expect("parse");
        let ack = build_ack_at(&m, AckCode::AA, None, None, "20261125090000");
        let text = String::from_utf8(ack.clone()).expect("utf8");
        assert!(
            text.starts_with(
                "MSH|^~\\&|FERRY|CLOUD|HIS|GH|20261125090000||ACK^A01^ACK|A20261125090000"
            ),
            "{text}"
        );
        assert!(text.contains("|P|2.5.1\rMSA|AA|MSG1\r"), "{text}");
        let summary = parse_ack(&ack).expect("parse ack");
        assert_eq!(summary.code, AckCode::AA);
        assert_eq!(summary.control_id, "MSG1");
    }

    #[test]
    fn errors_are_version_correct_and_escaped() {
        let m = Message::parse(ADT).expect("parse");
        let e = ErrorDetail::required_field_missing("PID", 3);
        let ack = build_ack(&m, AckCode::AR, Some("bad | value"), Some(&e));
        let text = String::from_utf8(ack.clone()).expect("utf8");
        assert!(text.contains("MSA|AR|MSG1|bad \\F\\ value\r"), "{text}");
        assert!(
            text.contains("ERR||PID^1^3|101^Required field missing: PID-3^HL70357|E"),
            "{text}"
        );
        let s = parse_ack(&ack).expect("parse");
        assert_eq!(s.text.as_deref(), Some("bad | value"));
        assert_eq!(
            s.error_text.as_deref(),
            Some("Required field missing: PID-3")
        );

        let old = Message::parse(b"MSH|^~\\&|A|B|C|D|1||ADT^A01|X9|P|2.3\r").expect("parse");
        let text = String::from_utf8(build_ack(&old, AckCode::AE, None, Some(&e))).expect("utf8");
        assert!(text.contains("||ACK^A01|"), "{text}");
        assert!(
            text.contains("ERR|PID^1^3^^101&Required field missing: PID-3&HL70357"),
            "{text}"
        );
    }

    #[test]
    fn nak_without_header_parses() {
        let nak = build_nak_without_header(AckCode::AR, "no MSH");
        let s = parse_ack(&nak).expect("parse");
        assert_eq!((s.code, s.control_id.as_str()), (AckCode::AR, ""));
    }

    #[test]
    fn rejects_non_acks() {
        assert_eq!(parse_ack(ADT), Err(ParseError::MissingMsa));
        assert!(matches!(
            parse_ack(b"MSH|^~\\&|A|B|C|D|1||ACK|1|P|2.5\rMSA|OK|1\r"),
            Err(ParseError::UnknownAckCode(_))
        ));
    }
}
