//! HL7 paths: `SEG-F.C.S` or `SEG.F.C.S`, with a segment occurrence `OBX[2]` and a field
//! repetition `PID-3(2)`. Every number is 1-based, like HL7.

/// A parsed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    segment: [u8; 3],
    /// Segment occurrence (1-based; `OBX[2]` is the second OBX).
    pub occurrence: usize,
    /// Field number (1-based).
    pub field: usize,
    /// Field repetition (1-based; `PID-3(2)`).
    pub repetition: usize,
    /// Component (1-based), if addressed.
    pub component: Option<usize>,
    /// Subcomponent (1-based), if addressed.
    pub subcomponent: Option<usize>,
    /// Whether the text named a repetition (`PID-3(1)`) rather than the field (`PID-3`).
    explicit_repetition: bool,
}

/// Why a path is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid HL7 path `{path}`: {reason}")]
pub struct PathError {
    /// The path as given.
    pub path: String,
    /// What is wrong.
    pub reason: &'static str,
}

fn number(text: &str) -> Option<usize> {
    if text.is_empty() || text.len() > 6 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|n| *n >= 1)
}

impl Path {
    /// Parse `PID-5`, `PID-5.1`, `PID.5.1.2`, `OBX[2]-5`, `PID-3(2).1`.
    pub fn parse(text: &str) -> Result<Path, PathError> {
        let err = |reason| PathError {
            path: text.to_owned(),
            reason,
        };
        let bytes = text.as_bytes();
        if bytes.len() < 5 {
            return Err(err("too short; expected something like PID-5.1"));
        }
        let id = [bytes[0], bytes[1], bytes[2]];
        if !id
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err(err("a path starts with a three-character segment id"));
        }
        let mut rest = &text[3..];
        let mut occurrence = 1;
        if let Some(inner) = rest.strip_prefix('[') {
            let close = inner.find(']').ok_or_else(|| err("unclosed `[`"))?;
            occurrence = number(&inner[..close])
                .ok_or_else(|| err("segment occurrence must be a number ≥ 1"))?;
            rest = &inner[close + 1..];
        }
        let rest = rest
            .strip_prefix('-')
            .or_else(|| rest.strip_prefix('.'))
            .ok_or_else(|| err("expected `-` or `.` after the segment id"))?;
        let (field_part, tail) = match rest.find(['(', '.']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let field = number(field_part).ok_or_else(|| err("field must be a number ≥ 1"))?;
        let mut tail = tail;
        let mut repetition = 1;
        let explicit_repetition = tail.starts_with('(');
        if let Some(inner) = tail.strip_prefix('(') {
            let close = inner.find(')').ok_or_else(|| err("unclosed `(`"))?;
            repetition =
                number(&inner[..close]).ok_or_else(|| err("repetition must be a number ≥ 1"))?;
            tail = &inner[close + 1..];
        }
        let mut parts = match tail {
            "" => None,
            t => Some(
                t.strip_prefix('.')
                    .ok_or_else(|| err("unexpected characters after the field"))?
                    .split('.'),
            ),
        };
        let component = parts
            .as_mut()
            .and_then(Iterator::next)
            .map(|c| number(c).ok_or_else(|| err("component must be a number ≥ 1")))
            .transpose()?;
        let subcomponent = parts
            .as_mut()
            .and_then(Iterator::next)
            .map(|s| number(s).ok_or_else(|| err("subcomponent must be a number ≥ 1")))
            .transpose()?;
        if parts.as_mut().and_then(Iterator::next).is_some() {
            return Err(err("too many levels; a path ends at the subcomponent"));
        }
        Ok(Path {
            segment: id,
            occurrence,
            field,
            repetition,
            component,
            subcomponent,
            explicit_repetition,
        })
    }

    /// Whether the path names a repetition explicitly (`PID-3(2)`). Reading `PID-3` gives
    /// the first repetition; setting or deleting `PID-3` acts on the whole field.
    pub fn has_explicit_repetition(&self) -> bool {
        self.explicit_repetition
    }

    /// The path addresses a whole field: no repetition, component or subcomponent named.
    pub fn is_whole_field(&self) -> bool {
        !self.explicit_repetition && self.component.is_none()
    }

    /// The segment id as bytes.
    pub fn segment_id(&self) -> &[u8] {
        &self.segment
    }

    /// The segment id.
    pub fn segment_str(&self) -> &str {
        std::str::from_utf8(&self.segment).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let p = Path::parse("PID-5.1").expect("path");
        assert_eq!(
            (p.segment_str(), p.field, p.component, p.subcomponent),
            ("PID", 5, Some(1), None)
        );
        assert_eq!(Path::parse("PID.5.1"), Path::parse("PID-5.1"));
        let p = Path::parse("OBX[2]-5").expect("path");
        assert_eq!((p.occurrence, p.field, p.component), (2, 5, None));
        let p = Path::parse("PID-3(2).1").expect("path");
        assert_eq!((p.repetition, p.component), (2, Some(1)));
        let p = Path::parse("ERR-1.4.2").expect("path");
        assert_eq!(p.subcomponent, Some(2));
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "",
            "PID",
            "pid-5",
            "PID-0",
            "PID-x",
            "PID-5.0",
            "PID-5.1.2.3",
            "PID[2-5",
            "PID-3(2",
            "PID-5x",
        ] {
            assert!(Path::parse(bad).is_err(), "{bad}");
        }
    }
}
