//! Source filters: rules on HL7 paths that decide whether a channel takes a message.
//!
//! Every rule of a channel must pass; a message that fails one is stored with status
//! `FILTERED`, acknowledged positively (the sender did nothing wrong), and sent to no
//! destination. Rules read values with escapes decoded and in the message's charset
//! ([`Message::get_str`]); a path without a repetition reads the first one, as everywhere in
//! Ferry. An absent or empty value is the empty text for `equals`, `in`, `contains` and
//! `regex`, and "does not exist" for `exists`.

use ferry_hl7::{Message, Path};

/// One filter rule.
#[derive(Debug, Clone)]
pub enum FilterRule {
    /// The value equals this text.
    Equals(Path, String),
    /// The value is one of these texts.
    OneOf(Path, Vec<String>),
    /// The value contains this text.
    Contains(Path, String),
    /// The value matches this regular expression (unanchored).
    Regex(Path, regex::Regex),
    /// `true`: the path holds a non-empty value; `false`: it does not.
    Exists(Path, bool),
    /// At least one of these rules passes.
    Any(Vec<FilterRule>),
    /// The rule does not pass.
    Not(Box<FilterRule>),
}

impl FilterRule {
    /// Whether `message` passes this rule.
    pub fn passes(&self, message: &Message<'_>) -> bool {
        let text = |path: &Path| -> String {
            message
                .get_path(path)
                .map(|raw| message.text(raw).into_owned())
                .unwrap_or_default()
        };
        match self {
            FilterRule::Equals(path, value) => text(path) == *value,
            FilterRule::OneOf(path, values) => values.contains(&text(path)),
            FilterRule::Contains(path, value) => text(path).contains(value.as_str()),
            FilterRule::Regex(path, regex) => regex.is_match(&text(path)),
            FilterRule::Exists(path, wanted) => {
                let present = message.get_path(path).is_some_and(|raw| !raw.is_empty());
                present == *wanted
            }
            FilterRule::Any(rules) => rules.iter().any(|r| r.passes(message)),
            FilterRule::Not(rule) => !rule.passes(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Path {
        Path::parse(p).expect("path")
    }

    const ADT: &[u8] = b"MSH|^~\\&|HIS|GH|||20261125||ADT^A08^ADT_A01|1|P|2.5.1\rPID|1||42^^^GH^MR~7^^^SSA||DOE\\F\\X^JANE||19800101|F\r";

    #[test]
    fn each_operator_reads_decoded_values() {
        let m = Message::parse(ADT).expect("parse");
        let pass = |r: FilterRule| r.passes(&m);
        assert!(pass(FilterRule::Equals(path("MSH-9.2"), "A08".into())));
        assert!(!pass(FilterRule::Equals(path("MSH-9.2"), "A01".into())));
        assert!(pass(FilterRule::OneOf(
            path("MSH-9.2"),
            vec!["A01".into(), "A08".into()]
        )));
        assert!(pass(FilterRule::Equals(path("PID-5.1"), "DOE|X".into())));
        assert!(pass(FilterRule::Contains(path("PID-5.1"), "E|".into())));
        assert!(pass(FilterRule::Regex(
            path("PID-7"),
            regex::Regex::new("^19[0-9]{6}$").expect("regex")
        )));
        // PID-3 reads the first repetition; PID-3(2) the second.
        assert!(pass(FilterRule::Equals(path("PID-3.1"), "42".into())));
        assert!(pass(FilterRule::Equals(path("PID-3(2).4"), "SSA".into())));
        assert!(pass(FilterRule::Exists(path("PID-3.1"), true)));
        assert!(pass(FilterRule::Exists(path("PID-2"), false)));
        assert!(pass(FilterRule::Exists(path("ZZZ-1"), false)));
        assert!(!pass(FilterRule::Exists(path("PID-8"), false)));
        // Absent is the empty text.
        assert!(pass(FilterRule::Equals(path("PV1-2"), String::new())));
    }

    #[test]
    fn any_and_not() {
        let m = Message::parse(ADT).expect("parse");
        let a01 = FilterRule::Equals(path("MSH-9.2"), "A01".into());
        let a08 = FilterRule::Equals(path("MSH-9.2"), "A08".into());
        assert!(FilterRule::Any(vec![a01.clone(), a08.clone()]).passes(&m));
        assert!(!FilterRule::Any(vec![a01.clone()]).passes(&m));
        assert!(FilterRule::Not(Box::new(a01)).passes(&m));
        assert!(!FilterRule::Not(Box::new(a08)).passes(&m));
    }
}
