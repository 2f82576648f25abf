//! Typed readers for the HL7 data types every integration touches: TS/DTM (date-time with its
//! precision), XPN (person name), CX (identifier with its assigning authority, HD) and CE/CWE
//! (coded element).
//!
//! They work on the raw bytes of one field repetition (as [`Message::get`] returns them) plus the
//! message's [`Delimiters`]: the bytes are split on the component and subcomponent separators
//! first and each piece is escape-decoded afterwards, so a `\S\` or `\T\` inside a name stays in
//! the name. Pieces without escapes are borrowed, not copied.
//!
//! A primitive component that holds subcomponents reads as its first subcomponent, as HL7
//! prescribes for receivers. Empty components and the HL7 null `""` both read as `None`; [`is_null`] tells them apart
//! for the whole value (`""` means "delete this value" to a receiver).
//!
//! Text is read as UTF-8 by the plain constructors (`parse`); the `parse_with` forms take a
//! [`TextDecoder`] so that values follow the message's MSH-18 charset.

use std::borrow::Cow;
use std::fmt;

use crate::charset::{DecodeError, TextDecoder};
use crate::escape::Scan;
use crate::message::{Delimiters, Message, split_parts};
use crate::path::PathError;

/// True when the raw value is the HL7 explicit null `""`.
pub fn is_null(raw: &[u8]) -> bool {
    raw == b"\"\""
}

/// The repetitions of a raw field.
pub fn repetitions<'a>(field: &'a [u8], d: &Delimiters) -> impl Iterator<Item = &'a [u8]> + 'a {
    let sep = d.repetition;
    let mut rest = Some(field);
    std::iter::from_fn(move || {
        let current = rest?;
        match sep.and_then(|s| memchr::memchr(s, current)) {
            Some(i) => {
                rest = current.get(i + 1..);
                current.get(..i)
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// The `n`-th (1-based) piece of `raw` split on `sep`; the whole value for `n == 1` without a
/// separator.
fn nth(raw: &[u8], sep: Option<u8>, n: usize, scan: Scan) -> Option<&[u8]> {
    match sep {
        Some(s) => split_parts(raw, s, scan).nth(n.checked_sub(1)?),
        None => (n == 1).then_some(raw),
    }
}

/// Splits a value into components and subcomponents and decodes their text.
struct Reader<'a, 'd> {
    raw: &'a [u8],
    d: Delimiters,
    decoder: Option<&'d TextDecoder>,
}

impl<'a> Reader<'a, '_> {
    /// Multi-byte charsets reuse delimiter byte values inside characters.
    fn scan(&self) -> Scan {
        self.decoder.map_or(Scan::Plain, |d| d.charset().scan())
    }

    fn comp(&self, n: usize) -> &'a [u8] {
        nth(self.raw, Some(self.d.component), n, self.scan()).unwrap_or_default()
    }

    fn sub(&self, comp: usize, sub: usize) -> &'a [u8] {
        nth(self.comp(comp), self.d.subcomponent, sub, self.scan()).unwrap_or_default()
    }

    fn text(&self, piece: &'a [u8]) -> Result<Option<Cow<'a, str>>, DecodeError> {
        if piece.is_empty() || is_null(piece) {
            return Ok(None);
        }
        let text = match self.decoder {
            Some(dec) => dec.text(piece)?,
            None => crate::escape::decode(piece, &self.d),
        };
        Ok(Some(text))
    }

    /// Component `n` of a primitive type: its first subcomponent (HL7: a receiver that finds
    /// subcomponents where it expects a primitive value takes the first).
    fn c(&self, n: usize) -> Result<Option<Cow<'a, str>>, DecodeError> {
        self.text(self.sub(n, 1))
    }

    fn s(&self, comp: usize, sub: usize) -> Result<Option<Cow<'a, str>>, DecodeError> {
        self.text(self.sub(comp, sub))
    }
}

/// XPN, extended person name (PID-5, NK1-2, …).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Xpn<'a> {
    /// XPN.1.1: the surname (component 1 is the FN type since v2.3; its first subcomponent is
    /// the surname, and before v2.3 the whole component is).
    pub family: Option<Cow<'a, str>>,
    /// XPN.2: given name.
    pub given: Option<Cow<'a, str>>,
    /// XPN.3: second and further given names or initials.
    pub middle: Option<Cow<'a, str>>,
    /// XPN.4: suffix (`JR`, `III`).
    pub suffix: Option<Cow<'a, str>>,
    /// XPN.5: prefix (`DR`).
    pub prefix: Option<Cow<'a, str>>,
    /// XPN.6: degree (`MD`), deprecated in later versions.
    pub degree: Option<Cow<'a, str>>,
    /// XPN.7: name type code (HL7 table 0200: `L` legal, `D` display, `M` maiden, …).
    pub name_type: Option<Cow<'a, str>>,
}

impl<'a> Xpn<'a> {
    /// Read an XPN from one raw repetition, text as UTF-8.
    pub fn parse(raw: &'a [u8], d: &Delimiters) -> Xpn<'a> {
        Self::read(Reader {
            raw,
            d: *d,
            decoder: None,
        })
        .unwrap_or_default()
    }

    /// Read an XPN with the message's charset.
    pub fn parse_with(raw: &'a [u8], decoder: &TextDecoder) -> Result<Xpn<'a>, DecodeError> {
        Self::read(Reader {
            raw,
            d: *decoder.delimiters(),
            decoder: Some(decoder),
        })
    }

    fn read(r: Reader<'a, '_>) -> Result<Xpn<'a>, DecodeError> {
        Ok(Xpn {
            family: r.c(1)?,
            given: r.c(2)?,
            middle: r.c(3)?,
            suffix: r.c(4)?,
            prefix: r.c(5)?,
            degree: r.c(6)?,
            name_type: r.c(7)?,
        })
    }
}

/// HD, hierarchic designator (an assigning authority or facility; a subcomponent group inside
/// CX, a component group in MSH-3/4).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hd<'a> {
    /// HD.1: namespace id (local name).
    pub namespace: Option<Cow<'a, str>>,
    /// HD.2: universal id (an OID, a URI…).
    pub universal_id: Option<Cow<'a, str>>,
    /// HD.3: universal id type (`ISO`, `DNS`, `URI`, …).
    pub universal_id_type: Option<Cow<'a, str>>,
}

impl Hd<'_> {
    /// True when no part is present.
    pub fn is_empty(&self) -> bool {
        self.namespace.is_none() && self.universal_id.is_none() && self.universal_id_type.is_none()
    }
}

impl<'a> Hd<'a> {
    /// Read an HD that is a whole field repetition (components, as in MSH-3), text as UTF-8.
    pub fn parse(raw: &'a [u8], d: &Delimiters) -> Hd<'a> {
        let r = Reader {
            raw,
            d: *d,
            decoder: None,
        };
        Hd {
            namespace: r.c(1).unwrap_or_default(),
            universal_id: r.c(2).unwrap_or_default(),
            universal_id_type: r.c(3).unwrap_or_default(),
        }
    }

    /// The HD held in the subcomponents of component `comp`; `None` when all of it is empty.
    fn from_subs(r: &Reader<'a, '_>, comp: usize) -> Result<Option<Hd<'a>>, DecodeError> {
        let hd = Hd {
            namespace: r.s(comp, 1)?,
            universal_id: r.s(comp, 2)?,
            universal_id_type: r.s(comp, 3)?,
        };
        Ok((!hd.is_empty()).then_some(hd))
    }
}

/// CX, extended composite id with check digit (PID-3, MRG-1, …).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cx<'a> {
    /// CX.1: the identifier.
    pub id: Option<Cow<'a, str>>,
    /// CX.2: check digit.
    pub check_digit: Option<Cow<'a, str>>,
    /// CX.3: check digit scheme (`M10`, `M11`, `ISO`, …).
    pub check_digit_scheme: Option<Cow<'a, str>>,
    /// CX.4: assigning authority (HD in subcomponents, e.g. `HOSP&1.2.3&ISO`).
    pub assigning_authority: Option<Hd<'a>>,
    /// CX.5: identifier type code (HL7 table 0203: `MR`, `PI`, `SS`, …).
    pub identifier_type: Option<Cow<'a, str>>,
    /// CX.6: assigning facility (HD in subcomponents).
    pub assigning_facility: Option<Hd<'a>>,
}

impl<'a> Cx<'a> {
    /// Read a CX from one raw repetition, text as UTF-8.
    pub fn parse(raw: &'a [u8], d: &Delimiters) -> Cx<'a> {
        Self::read(Reader {
            raw,
            d: *d,
            decoder: None,
        })
        .unwrap_or_default()
    }

    /// Read a CX with the message's charset.
    pub fn parse_with(raw: &'a [u8], decoder: &TextDecoder) -> Result<Cx<'a>, DecodeError> {
        Self::read(Reader {
            raw,
            d: *decoder.delimiters(),
            decoder: Some(decoder),
        })
    }

    fn read(r: Reader<'a, '_>) -> Result<Cx<'a>, DecodeError> {
        Ok(Cx {
            id: r.c(1)?,
            check_digit: r.c(2)?,
            check_digit_scheme: r.c(3)?,
            assigning_authority: Hd::from_subs(&r, 4)?,
            identifier_type: r.c(5)?,
            assigning_facility: Hd::from_subs(&r, 6)?,
        })
    }
}

/// CWE, coded with exceptions (and CE, coded element, which is its first six components).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cwe<'a> {
    /// Component 1: identifier (the code).
    pub identifier: Option<Cow<'a, str>>,
    /// Component 2: text.
    pub text: Option<Cow<'a, str>>,
    /// Component 3: name of coding system (`LN`, `SCT`, `I10`, `HL70001`, …).
    pub coding_system: Option<Cow<'a, str>>,
    /// Component 4: alternate identifier.
    pub alternate_identifier: Option<Cow<'a, str>>,
    /// Component 5: alternate text.
    pub alternate_text: Option<Cow<'a, str>>,
    /// Component 6: name of alternate coding system.
    pub alternate_coding_system: Option<Cow<'a, str>>,
    /// CWE.7: coding system version id (not in CE).
    pub coding_system_version: Option<Cow<'a, str>>,
    /// CWE.8: alternate coding system version id (not in CE).
    pub alternate_coding_system_version: Option<Cow<'a, str>>,
    /// CWE.9: original text (not in CE).
    pub original_text: Option<Cow<'a, str>>,
}

/// CE, coded element: the first six components of [`Cwe`] (the CWE-only ones read `None` when
/// a CE value has none).
pub type Ce<'a> = Cwe<'a>;

impl<'a> Cwe<'a> {
    /// Read a CWE/CE from one raw repetition, text as UTF-8.
    pub fn parse(raw: &'a [u8], d: &Delimiters) -> Cwe<'a> {
        Self::read(Reader {
            raw,
            d: *d,
            decoder: None,
        })
        .unwrap_or_default()
    }

    /// Read a CWE/CE with the message's charset.
    pub fn parse_with(raw: &'a [u8], decoder: &TextDecoder) -> Result<Cwe<'a>, DecodeError> {
        Self::read(Reader {
            raw,
            d: *decoder.delimiters(),
            decoder: Some(decoder),
        })
    }

    fn read(r: Reader<'a, '_>) -> Result<Cwe<'a>, DecodeError> {
        Ok(Cwe {
            identifier: r.c(1)?,
            text: r.c(2)?,
            coding_system: r.c(3)?,
            alternate_identifier: r.c(4)?,
            alternate_text: r.c(5)?,
            alternate_coding_system: r.c(6)?,
            coding_system_version: r.c(7)?,
            alternate_coding_system_version: r.c(8)?,
            original_text: r.c(9)?,
        })
    }
}

/// How much of a date-time a DTM value gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Precision {
    /// `YYYY`.
    Year,
    /// `YYYYMM`.
    Month,
    /// `YYYYMMDD`.
    Day,
    /// `YYYYMMDDHH`.
    Hour,
    /// `YYYYMMDDHHMM`.
    Minute,
    /// `YYYYMMDDHHMMSS`.
    Second,
    /// `YYYYMMDDHHMMSS.S…` with this many fraction digits (1 to 9).
    Fraction(u8),
}

/// Why bytes are not a TS/DTM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmError {
    /// Nothing there (or only the HL7 null `""`).
    #[error("empty date-time")]
    Empty,
    /// Not of the form `YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]`.
    #[error("date-time `{found}` is not YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]: {reason}")]
    Syntax {
        /// The value, printable.
        found: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A part is out of its range.
    #[error("date-time `{found}`: {part} {value} is out of range")]
    OutOfRange {
        /// The value, printable.
        found: String,
        /// `month`, `day`, `hour`, `minute`, `second`, `offset hours`, `offset minutes`.
        part: &'static str,
        /// The number found.
        value: u32,
    },
}

/// A TS/DTM value: the parts present, validated, with its precision and optional UTC offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dtm {
    year: u16,
    month: Option<u8>,
    day: Option<u8>,
    hour: Option<u8>,
    minute: Option<u8>,
    second: Option<u8>,
    /// Fraction digits as written and their count.
    fraction: Option<(u32, u8)>,
    /// Offset from UTC in minutes.
    offset: Option<i16>,
}

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 9 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
}

impl Dtm {
    /// Parse a DTM (`YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`; up to 9 fraction digits
    /// are accepted, as some senders write microseconds). Surrounding spaces are ignored.
    pub fn parse(raw: &[u8]) -> Result<Dtm, DtmError> {
        Dtm::parse_impl(raw, false)
    }

    /// [`Dtm::parse`] that also accepts 1 to 9 fraction digits written straight after the
    /// seconds without the `.` (`20110613122406637`, as some senders write milliseconds).
    pub fn parse_lenient(raw: &[u8]) -> Result<Dtm, DtmError> {
        Dtm::parse_impl(raw, true)
    }

    fn parse_impl(raw: &[u8], lenient: bool) -> Result<Dtm, DtmError> {
        let raw = raw.trim_ascii();
        if raw.is_empty() || is_null(raw) {
            return Err(DtmError::Empty);
        }
        let found = || crate::message::printable(raw, 40);
        let syntax = |reason| DtmError::Syntax {
            found: found(),
            reason,
        };
        let range = |part, value| DtmError::OutOfRange {
            found: found(),
            part,
            value,
        };
        let (body, offset) = match raw.iter().position(|b| *b == b'+' || *b == b'-') {
            Some(i) => {
                let (body, zone) = raw.split_at(i);
                let sign: i16 = if zone.first() == Some(&b'-') { -1 } else { 1 };
                let zone = zone.get(1..).unwrap_or_default();
                if zone.len() != 4 {
                    return Err(syntax("the UTC offset must be +HHMM or -HHMM"));
                }
                let hh = digits(zone.get(..2).unwrap_or_default())
                    .ok_or_else(|| syntax("the UTC offset must be digits"))?;
                let mm = digits(zone.get(2..).unwrap_or_default())
                    .ok_or_else(|| syntax("the UTC offset must be digits"))?;
                if hh > 23 {
                    return Err(range("offset hours", hh));
                }
                if mm > 59 {
                    return Err(range("offset minutes", mm));
                }
                // hh <= 23 and mm <= 59: fits in i16.
                (body, Some(sign * (hh as i16 * 60 + mm as i16)))
            }
            None => (raw, None),
        };
        let (date_time, fraction) = match body.iter().position(|b| *b == b'.') {
            Some(i) => {
                let frac = body.get(i + 1..).unwrap_or_default();
                if frac.is_empty() || frac.len() > 9 {
                    return Err(syntax("the fraction of a second must have 1 to 9 digits"));
                }
                let value = digits(frac).ok_or_else(|| syntax("the fraction must be digits"))?;
                (
                    body.get(..i).unwrap_or_default(),
                    Some((value, frac.len() as u8)),
                )
            }
            None if lenient && (15..=23).contains(&body.len()) && body.is_ascii() => {
                let (dt, frac) = body.split_at(14);
                let value = digits(frac).ok_or_else(|| syntax("the fraction must be digits"))?;
                (dt, Some((value, frac.len() as u8)))
            }
            None => (body, None),
        };
        if !date_time.iter().all(u8::is_ascii_digit) {
            return Err(syntax("non-digit character"));
        }
        if !matches!(date_time.len(), 4 | 6 | 8 | 10 | 12 | 14) {
            return Err(syntax(
                "the date-time must have 4, 6, 8, 10, 12 or 14 digits",
            ));
        }
        if fraction.is_some() && date_time.len() != 14 {
            return Err(syntax("a fraction of a second needs the seconds"));
        }
        let part = |at: usize| -> Option<u8> {
            date_time.get(at..at + 2).and_then(digits).map(|v| v as u8)
        };
        let year = digits(date_time.get(..4).unwrap_or_default()).unwrap_or(0) as u16;
        let month = part(4);
        let day = part(6);
        let hour = part(8);
        let minute = part(10);
        let second = part(12);
        if let Some(m) = month
            && !(1..=12).contains(&m)
        {
            return Err(range("month", u32::from(m)));
        }
        if let (Some(m), Some(d)) = (month, day)
            && (d == 0 || d > days_in_month(year, m))
        {
            return Err(range("day", u32::from(d)));
        }
        if let Some(h) = hour.filter(|h| *h > 23) {
            return Err(range("hour", u32::from(h)));
        }
        if let Some(m) = minute.filter(|m| *m > 59) {
            return Err(range("minute", u32::from(m)));
        }
        if let Some(s) = second.filter(|s| *s > 59) {
            return Err(range("second", u32::from(s)));
        }
        Ok(Dtm {
            year,
            month,
            day,
            hour,
            minute,
            second,
            fraction,
            offset,
        })
    }

    /// Parse a TS (v2.5 and earlier): component 1 is the DTM, component 2 the deprecated
    /// degree of precision, which is ignored.
    pub fn parse_ts(raw: &[u8], d: &Delimiters) -> Result<Dtm, DtmError> {
        Dtm::parse(nth(raw, Some(d.component), 1, Scan::Plain).unwrap_or_default())
    }

    /// How much the value gives.
    pub fn precision(&self) -> Precision {
        match (
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            self.fraction,
        ) {
            (_, _, _, _, Some(_), Some((_, n))) => Precision::Fraction(n),
            (_, _, _, _, Some(_), None) => Precision::Second,
            (_, _, _, Some(_), ..) => Precision::Minute,
            (_, _, Some(_), ..) => Precision::Hour,
            (_, Some(_), ..) => Precision::Day,
            (Some(_), ..) => Precision::Month,
            _ => Precision::Year,
        }
    }

    /// The year.
    pub fn year(&self) -> u16 {
        self.year
    }

    /// The month (1-12), if given.
    pub fn month(&self) -> Option<u8> {
        self.month
    }

    /// The day of the month, if given.
    pub fn day(&self) -> Option<u8> {
        self.day
    }

    /// The UTC offset in minutes, if given.
    pub fn offset_minutes(&self) -> Option<i16> {
        self.offset
    }

    /// Nanoseconds of the fraction of a second (0 without one).
    pub fn nanosecond(&self) -> u32 {
        self.fraction
            .map_or(0, |(v, n)| v * 10u32.pow(9u32.saturating_sub(u32::from(n))))
    }

    /// The date, when the value has day precision or finer.
    pub fn date(&self) -> Option<time::Date> {
        let month = time::Month::try_from(self.month?).ok()?;
        time::Date::from_calendar_date(i32::from(self.year), month, self.day?).ok()
    }

    /// The local date-time, when the value has day precision or finer (missing hour, minute,
    /// second read as 0).
    pub fn to_primitive(&self) -> Option<time::PrimitiveDateTime> {
        let time = time::Time::from_hms_nano(
            self.hour.unwrap_or(0),
            self.minute.unwrap_or(0),
            self.second.unwrap_or(0),
            self.nanosecond(),
        )
        .ok()?;
        Some(time::PrimitiveDateTime::new(self.date()?, time))
    }

    /// The instant, when the value has day precision or finer and a UTC offset.
    pub fn to_offset(&self) -> Option<time::OffsetDateTime> {
        let offset = self.offset?;
        let offset = time::UtcOffset::from_whole_seconds(i32::from(offset) * 60).ok()?;
        Some(self.to_primitive()?.assume_offset(offset))
    }

    /// The instant with `default` as offset when the value has none (HL7: the sender's local
    /// time zone, which only configuration can tell).
    pub fn to_offset_or(&self, default: time::UtcOffset) -> Option<time::OffsetDateTime> {
        match self.offset {
            Some(_) => self.to_offset(),
            None => Some(self.to_primitive()?.assume_offset(default)),
        }
    }
}

impl fmt::Display for Dtm {
    /// The HL7 form, with the precision and offset as parsed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}", self.year)?;
        for part in [self.month, self.day, self.hour, self.minute, self.second]
            .into_iter()
            .map_while(|p| p)
        {
            write!(f, "{part:02}")?;
        }
        if let Some((v, n)) = self.fraction {
            write!(f, ".{v:0width$}", width = usize::from(n))?;
        }
        if let Some(o) = self.offset {
            let sign = if o < 0 { '-' } else { '+' };
            write!(
                f,
                "{sign}{:02}{:02}",
                o.unsigned_abs() / 60,
                o.unsigned_abs() % 60
            )?;
        }
        Ok(())
    }
}

/// Why a typed read at a path failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypedError {
    /// The path is not valid.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The value is not a valid date-time.
    #[error(transparent)]
    Dtm(#[from] DtmError),
}

/// Typed reads at a path. The path addresses a field repetition (`PID-5`, `PID-5(2)`); text is
/// read as UTF-8 (use the `parse_with` constructors and a [`TextDecoder`] for other charsets).
impl<'a> Message<'a> {
    /// A text decoder for this message's declared charset (UTF-8 when it names an unknown one).
    fn decoder(&self) -> TextDecoder {
        TextDecoder::new(
            self.declared_charset()
                .unwrap_or(crate::charset::Charset::Utf8),
            *self.delimiters(),
            crate::charset::CharsetPolicy::default(),
        )
    }

    /// The XPN at a path (`PID-5`); `None` when absent or empty.
    pub fn xpn(&self, path: &str) -> Result<Option<Xpn<'a>>, PathError> {
        let decoder = self.decoder();
        Ok(self.get(path)?.filter(|r| !r.is_empty()).map(|r| {
            Xpn::parse_with(r, &decoder).unwrap_or_else(|_| Xpn::parse(r, decoder.delimiters()))
        }))
    }

    /// The CX at a path (`PID-3`, `PID-3(2)`); `None` when absent or empty.
    pub fn cx(&self, path: &str) -> Result<Option<Cx<'a>>, PathError> {
        let decoder = self.decoder();
        Ok(self.get(path)?.filter(|r| !r.is_empty()).map(|r| {
            Cx::parse_with(r, &decoder).unwrap_or_else(|_| Cx::parse(r, decoder.delimiters()))
        }))
    }

    /// The CWE/CE at a path (`OBX-3`); `None` when absent or empty.
    pub fn cwe(&self, path: &str) -> Result<Option<Cwe<'a>>, PathError> {
        let decoder = self.decoder();
        Ok(self.get(path)?.filter(|r| !r.is_empty()).map(|r| {
            Cwe::parse_with(r, &decoder).unwrap_or_else(|_| Cwe::parse(r, decoder.delimiters()))
        }))
    }

    /// The TS/DTM at a path (`MSH-7`, `PID-7`; a TS's degree-of-precision component is
    /// ignored); `None` when absent, empty or `""`.
    pub fn dtm(&self, path: &str) -> Result<Option<Dtm>, TypedError> {
        let d = *self.delimiters();
        match self.get(path)? {
            None => Ok(None),
            Some(r) if r.trim_ascii().is_empty() || is_null(r.trim_ascii()) => Ok(None),
            Some(r) => Ok(Some(Dtm::parse_ts(r, &d)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charset::{Charset, CharsetPolicy};
    use proptest::prelude::*;

    const MSG: &[u8] = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20240229235959.1234+0100||ORU^R01|42|P|2.5.1\r\
PID|1||12345^4^M10^HOSP&1.2.840.114350&ISO^MR^WARD&&~\"\"||O'Brien\\T\\Smith&van&O'Brien^Mary\\S\\Jo^J^JR^DR^MD^L~\"\"^^^^^^M||19800101|F\r\
OBX|1|CE|8867-4^Heart rate^LN^HR^Pulse^L^2.68^1.0^pulse taken at rest|1|72|/min\r";

    fn cow(s: &str) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(s))
    }

    #[test]
    fn xpn_with_escapes_and_nulls() {
        let m = Message::parse(MSG).expect("parses");
        let name = m.xpn("PID-5").expect("path").expect("present");
        assert_eq!(
            name,
            Xpn {
                family: Some(Cow::Owned("O'Brien&Smith".into())),
                given: Some(Cow::Owned("Mary^Jo".into())),
                middle: cow("J"),
                suffix: cow("JR"),
                prefix: cow("DR"),
                degree: cow("MD"),
                name_type: cow("L"),
            }
        );
        assert!(matches!(name.suffix, Some(Cow::Borrowed(_))));
        let maiden = m.xpn("PID-5(2)").expect("path").expect("present");
        assert_eq!(maiden.family, None);
        assert_eq!(maiden.name_type, cow("M"));
        assert_eq!(m.xpn("PID-5(3)").expect("path"), None);
        // v2.2 style: no subcomponents in the family name.
        let d = Delimiters {
            subcomponent: None,
            ..Delimiters::default()
        };
        assert_eq!(Xpn::parse(b"DOE&X^JOHN", &d).family, cow("DOE&X"));
        let d = Delimiters::default();
        assert_eq!(Xpn::parse(b"DOE^JOHN&X", &d).given, cow("JOHN"));
    }

    #[test]
    fn cx_with_assigning_authority() {
        let m = Message::parse(MSG).expect("parses");
        let id = m.cx("PID-3").expect("path").expect("present");
        assert_eq!(id.id, cow("12345"));
        assert_eq!(id.check_digit, cow("4"));
        assert_eq!(id.check_digit_scheme, cow("M10"));
        assert_eq!(
            id.assigning_authority,
            Some(Hd {
                namespace: cow("HOSP"),
                universal_id: cow("1.2.840.114350"),
                universal_id_type: cow("ISO"),
            })
        );
        assert_eq!(id.identifier_type, cow("MR"));
        assert_eq!(
            id.assigning_facility,
            Some(Hd {
                namespace: cow("WARD"),
                ..Hd::default()
            })
        );
        let null = m.cx("PID-3(2)").expect("path").expect("present");
        assert_eq!(null, Cx::default());
        assert!(is_null(m.get("PID-3(2)").expect("path").expect("present")));
        let d = Delimiters::default();
        let reps: Vec<_> = repetitions(b"1^^^A~2^^^B~", &d).collect();
        assert_eq!(reps, [&b"1^^^A"[..], b"2^^^B", b""]);
        assert_eq!(Hd::parse(b"LAB^1.2.3^ISO", &d).universal_id, cow("1.2.3"));
    }

    #[test]
    fn cwe_and_ce() {
        let m = Message::parse(MSG).expect("parses");
        let code = m.cwe("OBX-3").expect("path").expect("present");
        assert_eq!(code.identifier, cow("8867-4"));
        assert_eq!(code.text, cow("Heart rate"));
        assert_eq!(code.coding_system, cow("LN"));
        assert_eq!(code.alternate_identifier, cow("HR"));
        assert_eq!(code.alternate_text, cow("Pulse"));
        assert_eq!(code.alternate_coding_system, cow("L"));
        assert_eq!(code.coding_system_version, cow("2.68"));
        assert_eq!(code.alternate_coding_system_version, cow("1.0"));
        assert_eq!(code.original_text, cow("pulse taken at rest"));
        let ce: Ce<'_> = Cwe::parse(b"F^Female^HL70001", &Delimiters::default());
        assert_eq!((ce.identifier, ce.original_text), (cow("F"), None));
        assert_eq!(m.cwe("OBX-99").expect("path"), None);
    }

    #[test]
    fn typed_reads_follow_the_charset() {
        let raw = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5||||||8859/1\rPID|1||X||M\xfcller^J\\XF6\\rg\r";
        let m = Message::parse(raw).expect("parses");
        let dec = TextDecoder::for_message(&m, CharsetPolicy::strict()).expect("latin-1");
        assert_eq!(dec.charset(), Charset::Iso8859_1);
        let name = Xpn::parse_with(m.get("PID-5").expect("path").expect("present"), &dec)
            .expect("decodes");
        assert_eq!(name.family.as_deref(), Some("Müller"));
        assert_eq!(name.given.as_deref(), Some("Jörg"));
    }

    #[test]
    fn dtm_parses_with_precision_and_offset() {
        let m = Message::parse(MSG).expect("parses");
        let ts = m.dtm("MSH-7").expect("valid").expect("present");
        assert_eq!(ts.precision(), Precision::Fraction(4));
        assert_eq!(ts.to_string(), "20240229235959.1234+0100");
        assert_eq!(ts.nanosecond(), 123_400_000);
        let odt = ts.to_offset().expect("complete");
        assert_eq!(odt.to_string(), "2024-02-29 23:59:59.1234 +01:00:00");
        let dob = m.dtm("PID-7").expect("valid").expect("present");
        assert_eq!(dob.precision(), Precision::Day);
        assert_eq!(dob.to_offset(), None);
        assert_eq!(
            dob.to_primitive().map(|p| p.to_string()).as_deref(),
            Some("1980-01-01 0:00:00.0")
        );
        let d = Delimiters::default();
        let ts = Dtm::parse_ts(b"200401^M", &d).expect("TS");
        assert_eq!(
            (ts.precision(), ts.month(), ts.date()),
            (Precision::Month, Some(1), None)
        );
        assert_eq!(
            Dtm::parse(b"1999").expect("year").precision(),
            Precision::Year
        );
        assert_eq!(
            Dtm::parse(b" 202001011230-0530 ")
                .expect("minute")
                .offset_minutes(),
            Some(-330)
        );
        assert_eq!(m.dtm("PID-9").expect("absent"), None);
        assert!(matches!(
            m.dtm("PID-8"),
            Err(TypedError::Dtm(DtmError::Syntax { .. }))
        ));
        assert_eq!(
            Dtm::parse(b"2024-0100").expect("offset after year").year(),
            2024
        );
    }

    #[test]
    fn malformed_dtm_are_errors() {
        let cases: &[&[u8]] = &[
            b"",
            b"\"\"",
            b"20",
            b"202",
            b"2024013",
            b"20240230",
            b"20230229",
            b"20241301",
            b"20240001",
            b"20240100",
            b"2024010124",
            b"202401012360",
            b"20240101235960",
            b"20240101235959.",
            b"20240101235959.1234567890",
            b"202401011200.5",
            b"20240101+01",
            b"20240101+2400",
            b"20240101+0160",
            b"2024AB01",
            b"20240101T1200",
            b"\xff\xfe",
            b"20240101+01+00",
            b"+0100",
        ];
        for raw in cases {
            assert!(
                Dtm::parse(raw).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(
            Dtm::parse(b"20240230"),
            Err(DtmError::OutOfRange {
                found: "20240230".into(),
                part: "day",
                value: 30
            })
        );
        assert!(Dtm::parse(b"20000229").is_ok() && Dtm::parse(b"19000229").is_err());
        // Milliseconds without the dot: only the lenient parser takes them.
        assert!(Dtm::parse(b"20110613122406637").is_err());
        let v = Dtm::parse_lenient(b"20110613122406637").expect("lenient");
        assert_eq!(v.to_string(), "20110613122406.637");
        assert!(Dtm::parse_lenient(b"2011061312240663712345").is_ok());
        assert!(Dtm::parse_lenient(b"20110613122406x").is_err());
        assert!(Dtm::parse_lenient(b"201106131224066371234567890").is_err());
    }

    fn dtm() -> impl Strategy<Value = Dtm> {
        (
            0u16..=9999,
            1u8..=12,
            1u8..=31,
            0u8..=23,
            0u8..=59,
            0u8..=59,
            (1u8..=9).prop_flat_map(|n| (0..10u32.pow(u32::from(n)), Just(n))),
            0usize..=6,
            prop::option::of(-1439i16..=1439),
        )
            .prop_map(|(y, mo, d, h, mi, s, frac, precision, offset)| {
                let d = d.min(days_in_month(y, mo));
                Dtm {
                    year: y,
                    month: (precision >= 1).then_some(mo),
                    day: (precision >= 2).then_some(d),
                    hour: (precision >= 3).then_some(h),
                    minute: (precision >= 4).then_some(mi),
                    second: (precision >= 5).then_some(s),
                    fraction: (precision >= 6).then_some(frac),
                    offset,
                }
            })
    }

    proptest! {
        #[test]
        fn dtm_format_parse_round_trip(v in dtm()) {
            let text = v.to_string();
            prop_assert_eq!(Dtm::parse(text.as_bytes()), Ok(v), "{}", text);
            if v.day.is_some() {
                let p = v.to_primitive().expect("complete");
                prop_assert_eq!(p.year(), i32::from(v.year));
                prop_assert_eq!(p.nanosecond(), v.nanosecond());
            }
        }

        #[test]
        fn dtm_parse_never_panics(raw in prop::collection::vec(any::<u8>(), 0..24)) {
            if let Ok(v) = Dtm::parse(&raw) {
                // Whatever parses formats back to something that parses to the same value.
                prop_assert_eq!(Dtm::parse(v.to_string().as_bytes()), Ok(v));
            }
        }

        #[test]
        fn dtm_digit_strings_never_panic(raw in "[0-9]{4,14}(\\.[0-9]{1,5})?([+-][0-9]{4})?") {
            let _ = Dtm::parse(raw.as_bytes());
        }
    }
}
