//! [`ScriptError`]: what went wrong in a script, where, and of which kind.

use std::fmt;

/// The kind of a [`ScriptError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ScriptErrorKind {
    /// The script (or a library) does not parse; reported at deploy by
    /// [`Scripts::new`](crate::Scripts::new) and [`Scripts::compile`](crate::Scripts::compile).
    Syntax,
    /// An exception the script did not catch (including errors thrown by `msg` functions, and
    /// a filter or preprocessor returning a value of the wrong type).
    Runtime,
    /// The script ran past [`ScriptLimits::time`](crate::ScriptLimits::time). Not catchable by
    /// the script; that thread's runtime is discarded.
    Timeout,
    /// The script's runtime reached [`ScriptLimits::memory_bytes`]; that thread's runtime is
    /// discarded.
    ///
    /// [`ScriptLimits::memory_bytes`]: crate::ScriptLimits::memory_bytes
    Memory,
    /// Recursion too deep for [`ScriptLimits::stack_bytes`](crate::ScriptLimits::stack_bytes).
    Stack,
    /// The API was used the wrong way round, for example a filter script passed to
    /// [`Scripts::transform`](crate::Scripts::transform).
    Usage,
    /// A fault inside Ferry (a host function panicked, the engine could not be created). That
    /// thread's runtime is discarded; the process carries on.
    Internal,
}

impl ScriptErrorKind {
    /// A short lower-case name (`syntax`, `runtime`, `timeout`, `memory`, `stack`, `usage`,
    /// `internal`), for logs and statistics.
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptErrorKind::Syntax => "syntax",
            ScriptErrorKind::Runtime => "runtime",
            ScriptErrorKind::Timeout => "timeout",
            ScriptErrorKind::Memory => "memory",
            ScriptErrorKind::Stack => "stack",
            ScriptErrorKind::Usage => "usage",
            ScriptErrorKind::Internal => "internal",
        }
    }
}

/// A script failed to compile or to run.
///
/// Displays as `SCRIPT:LINE: MESSAGE` when the line is in the script itself,
/// `SCRIPT (LIBRARY:LINE): MESSAGE` when it is in a library the script called, and
/// `SCRIPT: MESSAGE` when no line is known, where `SCRIPT` is the [`Source::name`] of the
/// script, for example ``channel `adt`, transform 3:12: TypeError: cannot read property 'x' of
/// undefined``.
///
/// The message is the JavaScript error (`Name: message`). It may quote values the script
/// handled, so treat it as possibly holding PHI.
///
/// [`Source::name`]: crate::Source::name
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    /// What kind of failure.
    pub kind: ScriptErrorKind,
    /// The [`Source::name`](crate::Source::name) of the script (or library) that failed.
    pub script: String,
    /// The name of the source that holds [`line`](Self::line) when it is not `script` (an
    /// error inside a library function the script called); `None` when it is the script
    /// itself.
    pub file: Option<String>,
    /// 1-based line of the error in `file` (or in the script), when known.
    pub line: Option<u32>,
    /// What went wrong, `Name: message` for JavaScript errors.
    pub message: String,
}

impl ScriptError {
    pub(crate) fn new(kind: ScriptErrorKind, script: &str, message: impl Into<String>) -> Self {
        ScriptError {
            kind,
            script: script.to_owned(),
            file: None,
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => {
                write!(f, "{} ({}:{}): {}", self.script, file, line, self.message)
            }
            (None, Some(line)) => write!(f, "{}:{}: {}", self.script, line, self.message),
            (_, None) => write!(f, "{}: {}", self.script, self.message),
        }
    }
}

impl std::error::Error for ScriptError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_script_the_file_and_the_line() {
        let mut e = ScriptError::new(
            ScriptErrorKind::Runtime,
            "channel `c`, transform 3",
            "TypeError: x",
        );
        assert_eq!(e.to_string(), "channel `c`, transform 3: TypeError: x");
        e.line = Some(12);
        assert_eq!(e.to_string(), "channel `c`, transform 3:12: TypeError: x");
        e.file = Some("lib/util.js".into());
        assert_eq!(
            e.to_string(),
            "channel `c`, transform 3 (lib/util.js:12): TypeError: x"
        );
        assert_eq!(ScriptErrorKind::Memory.as_str(), "memory");
    }
}
