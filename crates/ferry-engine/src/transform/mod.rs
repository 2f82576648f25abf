//! Transformations: the declarative steps that edit a message, the code tables they map
//! through, the templates that bridge HL7 and JSON, and the encoders of destinations.
//!
//! - [`Step`]: one declarative edit of a [`MessageBuf`] (`set`, `copy`, `delete`,
//!   `add_segment`, `drop_segment`, `rename_segment`, `map`); [`apply_all`] runs a list in
//!   order and names the step that failed.
//! - [`table`]: [`CodeTable`], `from,to` pairs from a CSV file.
//! - [`template`]: [`Hl7Template`] (JSON → HL7) and [`JsonTemplate`] (HL7 → JSON).
//! - [`encode`]: [`Encoder`], what a destination sends: the HL7 bytes, the lossless JSON
//!   form, or a JSON template.
//!
//! Steps work on [`MessageBuf`], so every byte a step does not touch stays as received.
//! Paths follow `ferry_hl7`: reading `PID-3` reads the first repetition, while setting or
//! deleting `PID-3` acts on the whole field (every repetition).
//!
//! What each step does when its path is absent:
//!
//! | step | path absent |
//! |---|---|
//! | `set` | the value is added: separators are padded and a missing segment is appended when it would be the next occurrence (as [`MessageBuf::set`] does) |
//! | `copy` | an absent or empty source empties the target if the target exists; otherwise nothing changes |
//! | `delete` | nothing changes |
//! | `add_segment` after/before `X` | an error: there is no `X` to place the segment by |
//! | `drop_segment`, `rename_segment` | nothing changes |
//! | `map` | an absent value in a present segment is looked up as the empty text; a missing segment changes nothing |

pub mod encode;
pub mod table;
pub mod template;

use std::fmt;
use std::sync::Arc;

use ferry_hl7::{EditError, MessageBuf, Path, PathError};

pub use encode::Encoder;
pub use table::CodeTable;
pub use template::{Hl7Template, JsonTemplate, TemplateError};

/// An HL7 path with the text it was written as (for messages and for the
/// [`MessageBuf`] calls that take text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    text: Box<str>,
    path: Path,
}

impl FieldPath {
    /// Parse a path such as `PID-5.1`, `OBX[2]-5` or `PID-3(2).1`.
    pub fn parse(text: &str) -> Result<FieldPath, PathError> {
        Ok(FieldPath {
            path: Path::parse(text)?,
            text: text.into(),
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A segment id, optionally with one occurrence: `NTE` (every NTE) or `OBX[2]` (the second).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRef {
    id: String,
    occurrence: Option<usize>,
}

impl SegmentRef {
    /// Parse `NTE` or `OBX[2]`. The id is three upper-case letters or digits; MSH is refused
    /// (it is the header and cannot be dropped or renamed).
    pub fn parse(text: &str) -> Result<SegmentRef, String> {
        let (id, occurrence) = match text.split_once('[') {
            None => (text, None),
            Some((id, rest)) => {
                let n = rest
                    .strip_suffix(']')
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        format!("`{text}`: the occurrence is a number ≥ 1 in brackets, like OBX[2]")
                    })?;
                (id, Some(n))
            }
        };
        segment_id(id)?;
        if id == "MSH" {
            return Err("the MSH segment cannot be dropped or renamed".to_owned());
        }
        Ok(SegmentRef {
            id: id.to_owned(),
            occurrence,
        })
    }

    /// The segment id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The occurrence (1-based), or `None` for every segment with the id.
    pub fn occurrence(&self) -> Option<usize> {
        self.occurrence
    }
}

impl fmt::Display for SegmentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.occurrence {
            Some(n) => write!(f, "{}[{n}]", self.id),
            None => f.write_str(&self.id),
        }
    }
}

/// Check a segment id: three upper-case letters or digits.
pub fn segment_id(id: &str) -> Result<(), String> {
    if id.len() == 3
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(format!(
            "`{id}` is not a segment id (three upper-case letters or digits)"
        ))
    }
}

/// What a `set` step writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetValue {
    /// Text, escaped with the message's delimiters (`|` becomes `\F\` …).
    Text(String),
    /// The HL7 explicit null `""` ("delete the value you hold").
    Null,
}

/// Where `add_segment` puts its segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// After the last segment of the message.
    End,
    /// After the last segment with this id.
    After(String),
    /// Before the first segment with this id (not MSH: it stays first).
    Before(String),
}

/// One declarative transformation step.
#[derive(Debug, Clone)]
pub enum Step {
    /// Set the value at a path. A whole-field path (`PID-3`) replaces every repetition.
    Set {
        /// Where.
        path: FieldPath,
        /// What: text or the HL7 null.
        value: SetValue,
    },
    /// Copy the raw (still escaped) value at `from` to `to`, so components, subcomponents and
    /// escape sequences survive. A whole-field `from` copies every repetition when `to` is a
    /// whole field. When `to` addresses a lower level than `from` holds, the value is cut to
    /// what fits there, the way HL7 reads a lower level of a value: a repetition target gets
    /// the first repetition, a component target the first component of that, a subcomponent
    /// target its first subcomponent (`PID-3` = `42^^^GH~7` copied to `PID-2.1` writes
    /// `42`). An absent or empty `from` empties `to` if `to` exists, else changes nothing.
    Copy {
        /// Read from here.
        from: FieldPath,
        /// Write here.
        to: FieldPath,
    },
    /// Empty the value at a path (`PID-3(2)` removes that repetition). Absent: no change.
    Delete {
        /// Where.
        path: FieldPath,
    },
    /// Add a segment given as ER7 text (`ZPI|1|x`), written with the message's segment
    /// terminator. The text is taken as is: it must use the message's delimiters.
    AddSegment {
        /// The segment, without terminator.
        text: String,
        /// Where it goes.
        placement: Placement,
    },
    /// Remove every segment with an id, or one occurrence (`OBX[2]`).
    DropSegment {
        /// Which.
        segment: SegmentRef,
    },
    /// Rename every segment with id `from` (or one occurrence, `ZPI[2]`) to `to`.
    RenameSegment {
        /// Which segments.
        from: SegmentRef,
        /// The new id (three upper-case letters or digits).
        to: String,
    },
    /// Map the value at a path through a code table. The value is read with escapes decoded
    /// and written back escaped; a whole-field path maps the first repetition and leaves the
    /// others alone. An unmapped value is kept, or replaced by `default` when one is given.
    Map {
        /// Where.
        path: FieldPath,
        /// The table.
        table: Arc<CodeTable>,
        /// The value written for codes the table does not have.
        default: Option<String>,
    },
}

/// Why a step failed. The message is as it was before the failing step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    /// The step, as `kind target` (`set PID-5.1`, `copy PID-3.1 to PID-2`).
    pub step: String,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.reason)
    }
}

impl std::error::Error for StepError {}

impl Step {
    /// The step as `kind target`, as it appears in errors.
    pub fn describe(&self) -> String {
        match self {
            Step::Set { path, .. } => format!("set {path}"),
            Step::Copy { from, to } => format!("copy {from} to {to}"),
            Step::Delete { path } => format!("delete {path}"),
            Step::AddSegment { text, placement } => {
                let id = text.get(..3).unwrap_or(text);
                match placement {
                    Placement::End => format!("add_segment {id}"),
                    Placement::After(a) => format!("add_segment {id} after {a}"),
                    Placement::Before(b) => format!("add_segment {id} before {b}"),
                }
            }
            Step::DropSegment { segment } => format!("drop_segment {segment}"),
            Step::RenameSegment { from, to } => format!("rename_segment {from} to {to}"),
            Step::Map { path, table, .. } => format!("map {path} through {}", table.name()),
        }
    }

    /// Apply the step to `msg`. On error the message is unchanged.
    pub fn apply(&self, msg: &mut MessageBuf) -> Result<(), StepError> {
        self.apply_inner(msg).map_err(|reason| StepError {
            step: self.describe(),
            reason,
        })
    }

    fn apply_inner(&self, msg: &mut MessageBuf) -> Result<(), String> {
        let edit = |e: EditError| e.to_string();
        match self {
            Step::Set { path, value } => match value {
                SetValue::Text(text) => msg.set(path.as_str(), text).map_err(edit),
                SetValue::Null => msg.set_null(path.as_str()).map_err(edit),
            },
            Step::Copy { from, to } => copy(msg, from, to),
            Step::Delete { path } => msg.delete(path.as_str()).map(drop).map_err(edit),
            Step::AddSegment { text, placement } => add_segment(msg, text, placement),
            Step::DropSegment { segment } => {
                match segment.occurrence {
                    Some(n) => {
                        msg.remove_segment(&segment.id, n).map_err(edit)?;
                    }
                    None => while msg.remove_segment(&segment.id, 1).map_err(edit)? {},
                }
                Ok(())
            }
            Step::RenameSegment { from, to } => {
                if from.id == *to {
                    return Ok(());
                }
                match from.occurrence {
                    Some(n) => {
                        msg.rename_segment(&from.id, n, to).map_err(edit)?;
                    }
                    None => while msg.rename_segment(&from.id, 1, to).map_err(edit)? {},
                }
                Ok(())
            }
            Step::Map {
                path,
                table,
                default,
            } => map(msg, path, table, default.as_deref()),
        }
    }
}

/// Apply `steps` in order. On failure, the 1-based number of the step that failed and why;
/// the steps before it have been applied, the failing one left the message unchanged.
pub fn apply_all(steps: &[Step], msg: &mut MessageBuf) -> Result<(), (usize, StepError)> {
    for (i, step) in steps.iter().enumerate() {
        step.apply(msg).map_err(|e| (i + 1, e))?;
    }
    Ok(())
}

/// Which structural level a path addresses (field < repetition < component < subcomponent).
fn depth(path: &Path) -> u8 {
    match (path.component, path.subcomponent) {
        (_, Some(_)) => 3,
        (Some(_), None) => 2,
        _ if path.has_explicit_repetition() => 1,
        _ => 0,
    }
}

fn copy(msg: &mut MessageBuf, from: &FieldPath, to: &FieldPath) -> Result<(), String> {
    let view = msg.message();
    let source = if from.path.is_whole_field() {
        // The whole field, every repetition (reading `PID-3` alone gives the first one).
        view.segment(from.path.segment_str(), from.path.occurrence)
            .and_then(|s| s.field(from.path.field))
    } else {
        view.get_path(&from.path)
    };
    let Some(raw) = source.filter(|r| !r.is_empty()) else {
        let target_exists = view.locate_range(&to.path).is_some();
        if target_exists {
            return msg.set_raw_path(&to.path, b"").map_err(|e| e.to_string());
        }
        return Ok(());
    };
    // Cut the value to what the target level can hold.
    let d = *view.delimiters();
    let (have, want) = (depth(&from.path), depth(&to.path));
    let first = |raw: &'_ [u8], sep: Option<u8>| -> Vec<u8> {
        match sep {
            Some(sep) => view.parts(raw, sep).next().unwrap_or_default().to_vec(),
            None => raw.to_vec(),
        }
    };
    let mut value = raw.to_vec();
    if have < 1 && want >= 1 {
        value = first(&value, d.repetition);
    }
    if have < 2 && want >= 2 {
        value = first(&value, Some(d.component));
    }
    if have < 3 && want >= 3 {
        value = first(&value, d.subcomponent);
    }
    msg.set_raw_path(&to.path, &value)
        .map_err(|e| e.to_string())
}

fn add_segment(msg: &mut MessageBuf, text: &str, placement: &Placement) -> Result<(), String> {
    let edit = |e: EditError| e.to_string();
    let positions = |id: &str| -> Vec<usize> {
        msg.message()
            .segments()
            .enumerate()
            .filter(|(_, s)| s.id_str() == id)
            .map(|(i, _)| i)
            .collect()
    };
    match placement {
        Placement::End => msg.append_segment(text.as_bytes()).map_err(edit),
        Placement::After(id) => {
            let at = positions(id)
                .last()
                .copied()
                .ok_or_else(|| format!("the message has no {id} segment to add it after"))?;
            msg.insert_segment(at + 1, text.as_bytes()).map_err(edit)
        }
        Placement::Before(id) => {
            let at = positions(id)
                .first()
                .copied()
                .ok_or_else(|| format!("the message has no {id} segment to add it before"))?;
            msg.insert_segment(at, text.as_bytes()).map_err(edit)
        }
    }
}

fn map(
    msg: &mut MessageBuf,
    path: &FieldPath,
    table: &CodeTable,
    default: Option<&str>,
) -> Result<(), String> {
    let view = msg.message();
    if view
        .segment(path.path.segment_str(), path.path.occurrence)
        .is_none()
    {
        return Ok(());
    }
    let current = view
        .get_path(&path.path)
        .map(|raw| view.text(raw).into_owned())
        .unwrap_or_default();
    let Some(new) = table.get(&current).or(default) else {
        return Ok(());
    };
    if new == current {
        return Ok(());
    }
    let new = new.to_owned();
    // A whole-field path maps the first repetition only; the others stay.
    let result = if path.path.is_whole_field() {
        msg.set(&format!("{}(1)", path.as_str()), &new)
    } else {
        msg.set(path.as_str(), &new)
    };
    result.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
