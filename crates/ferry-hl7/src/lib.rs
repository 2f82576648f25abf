//! Ferry's HL7 v2 toolkit.
//!
//! HL7 v2 (ER7, the pipe-delimited form) is parsed straight from bytes: a [`Message`] keeps the
//! input slice and an index of its segments and field separators, and every field, component
//! or subcomponent is a sub-slice found on demand, so reading a field allocates nothing.
//! Delimiters come from the message itself (MSH-1 and MSH-2, including the v2.7+ truncation
//! character), and segments may end with CR, LF, CRLF or a mix, as real feeds do.
//!
//! - [`message`]: [`Message`], [`Segment`], [`Delimiters`], [`Value`] (empty vs `""` null),
//!   parse errors.
//! - [`edit`]: [`MessageBuf`], an owned message with set, delete and insert by path, and
//!   segment insert, remove and rename; untouched bytes stay exactly as received.
//! - [`json`]: the lossless JSON form (HL7 → JSON → HL7 gives the same bytes).
//! - [`path`]: `PID-5.1`, `PID.5.1`, `OBX[2]-5`, `PID-3(2).1` addressing.
//! - [`escape`]: decoding and encoding of `\F\ \S\ \T\ \R\ \E\ \Xhh\ \.br\` … with the message's
//!   own delimiters; unknown sequences (`\C..\`, `\M..\`) kept intact.
//! - [`charset`]: MSH-18 character sets (HL7 table 0211), strict decoders (true Latin-1), a
//!   fallback policy for feeds that lie, and [`charset::TextDecoder`] for field text.
//! - [`types`]: typed readers for TS/DTM (to `time` date-times, precision kept), XPN, CX/HD and
//!   CE/CWE, zero-copy with escapes decoded.
//! - [`batch`]: [`split_messages`] for bodies and files holding several messages or a batch,
//!   and [`parse_batch`], which reads FHS/BHS/BTS/FTS envelopes and checks their counts.
//! - [`ack`]: building acknowledgements (original and enhanced mode, version-correct ERR) and
//!   reading the ones downstream systems send back.
//! - [`dictionary`]: segments, fields, data types and message structures of v2.1–2.8.1
//!   (field names such as `PID-5` = "Patient Name", event → structure maps).
//! - [`validate`]: required fields, repetition limits, lengths and message structure, with
//!   the group each segment belongs to.
//!
//! This crate does no I/O and knows nothing of channels, stores or sockets.

pub mod ack;
pub mod batch;
pub mod charset;
pub mod dictionary;
pub mod edit;
pub mod escape;
pub mod json;
pub mod message;
pub mod path;
pub mod types;
pub mod validate;

pub use batch::{BatchFile, parse_batch, split_messages};
pub use edit::{EditError, MessageBuf};
pub use message::{Delimiters, Message, ParseError, Segment, Value};
pub use path::{Path, PathError};
