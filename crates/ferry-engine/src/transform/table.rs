//! Code tables: `from,to` pairs read from a CSV file, for the `map` step.
//!
//! The format is deliberately small: one `from,to` pair per line, an optional header row that
//! is exactly `from,to`, blank lines and lines starting with `#` skipped, a UTF-8 byte-order
//! mark tolerated, and RFC 4180 quoting (`"a,b"`, `"say ""hi"""`) for codes that hold commas,
//! quotes or spaces at their ends. A value is taken as written (no trimming outside quotes,
//! so `I, Inpatient` maps `I` to ` Inpatient`; quote it if you mean the spaces). A `from` that
//! appears twice is an error naming both lines: a table that maps one code two ways is a bug
//! in the table, not something to resolve silently.
//!
//! The parser is our own (about 80 lines) rather than the `csv` crate: the files are small,
//! the dialect is fixed (comma, double quote, no multi-line records, exactly two columns), and
//! owning it gives errors that name the file, the line and the column count without mapping
//! another crate's error type. Quoted values may not span lines; a table of codes has no use
//! for that and refusing it keeps line numbers exact.
//!
//! Lookups borrow: [`CodeTable::get`] takes `&str` and returns `&str`, with no allocation per
//! call (`HashMap<Box<str>, Box<str>>` looked up through `Borrow<str>`).

use std::collections::HashMap;
use std::path::Path;

/// A code table: `from` → `to`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodeTable {
    name: String,
    entries: HashMap<Box<str>, Box<str>>,
}

impl CodeTable {
    /// Read and parse a CSV file (see the module documentation for the format). Errors name
    /// the file and, for content errors, the line.
    pub fn load(path: &Path) -> Result<CodeTable, String> {
        let text = std::fs::read(path)
            .map_err(|e| format!("cannot read code table {}: {e}", path.display()))?;
        let text = String::from_utf8(text).map_err(|e| {
            format!(
                "code table {}: not UTF-8 (byte {})",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        CodeTable::parse(&text, &path.display().to_string())
    }

    /// Parse CSV text; `origin` names it in errors (usually the file name).
    pub fn parse(text: &str, origin: &str) -> Result<CodeTable, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut entries: HashMap<Box<str>, Box<str>> = HashMap::new();
        let mut lines_of: HashMap<Box<str>, usize> = HashMap::new();
        let mut first_record = true;
        for (i, line) in text.split('\n').enumerate() {
            let number = i + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let fields = split_record(line)
                .map_err(|e| format!("code table {origin}, line {number}: {e}"))?;
            let [from, to]: [String; 2] = fields.try_into().map_err(|f: Vec<String>| {
                format!(
                    "code table {origin}, line {number}: expected two columns `from,to`, found {}",
                    f.len()
                )
            })?;
            if std::mem::take(&mut first_record) && from == "from" && to == "to" {
                continue;
            }
            if let Some(previous) = lines_of.get(from.as_str()) {
                return Err(format!(
                    "code table {origin}, line {number}: `{from}` is already mapped on line {previous}"
                ));
            }
            lines_of.insert(from.clone().into_boxed_str(), number);
            entries.insert(from.into_boxed_str(), to.into_boxed_str());
        }
        Ok(CodeTable {
            name: origin.to_owned(),
            entries,
        })
    }

    /// A table from pairs (for tests and programmatic use); a later duplicate replaces an
    /// earlier one.
    pub fn from_pairs<'a>(
        name: &str,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> CodeTable {
        CodeTable {
            name: name.to_owned(),
            entries: pairs
                .into_iter()
                .map(|(f, t)| (Box::from(f), Box::from(t)))
                .collect(),
        }
    }

    /// The `to` value for `from`, if mapped. Does not allocate.
    pub fn get(&self, from: &str) -> Option<&str> {
        self.entries.get(from).map(|v| &**v)
    }

    /// Where the table came from (its file name), for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table maps nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Split one CSV line into its fields (RFC 4180 quoting, comma separator).
fn split_record(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::with_capacity(2);
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("unclosed quote".to_owned()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => {
                    return Err(format!(
                        "`{c}` after a closing quote (expected `,` or the line end)"
                    ));
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => {
                        return Err(
                            "a quote inside an unquoted value (quote the whole value and double the quote)"
                                .to_owned(),
                        );
                    }
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_comments_blank_lines_bom_and_quotes() {
        let text = "\u{feff}from,to\r\n# patient class\r\n\r\nI,Inpatient\nO,\"Out, patient\"\n\"E\",\"say \"\"hi\"\"\"\n,empty\n";
        let t = CodeTable::parse(text, "pc.csv").expect("parses");
        assert_eq!(t.len(), 4);
        assert_eq!(t.get("I"), Some("Inpatient"));
        assert_eq!(t.get("O"), Some("Out, patient"));
        assert_eq!(t.get("E"), Some("say \"hi\""));
        assert_eq!(t.get(""), Some("empty"));
        assert_eq!(t.get("from"), None, "the header is not a mapping");
        assert_eq!(t.get("X"), None);
        assert_eq!(t.name(), "pc.csv");
    }

    #[test]
    fn a_header_only_counts_on_the_first_record() {
        let t = CodeTable::parse("a,b\nfrom,to\n", "t").expect("parses");
        assert_eq!(t.get("from"), Some("to"));
        assert_eq!(t.get("a"), Some("b"));
    }

    #[test]
    fn values_are_taken_as_written() {
        let t = CodeTable::parse("I, Inpatient\n", "t").expect("parses");
        assert_eq!(t.get("I"), Some(" Inpatient"));
    }

    #[test]
    fn errors_name_the_table_and_line() {
        let err = CodeTable::parse("from,to\nI,In\nO,Out\nI,Again\n", "pc.csv").expect_err("dup");
        assert_eq!(
            err,
            "code table pc.csv, line 4: `I` is already mapped on line 2"
        );
        let err = CodeTable::parse("a,b,c\n", "t.csv").expect_err("three");
        assert_eq!(
            err,
            "code table t.csv, line 1: expected two columns `from,to`, found 3"
        );
        let err = CodeTable::parse("# c\nonly\n", "t.csv").expect_err("one");
        assert_eq!(
            err,
            "code table t.csv, line 2: expected two columns `from,to`, found 1"
        );
        let err = CodeTable::parse("\"a,b\n", "t.csv").expect_err("unclosed");
        assert_eq!(err, "code table t.csv, line 1: unclosed quote");
        let err = CodeTable::parse("\"a\"x,b\n", "t.csv").expect_err("after quote");
        assert!(err.contains("line 1: `x` after a closing quote"), "{err}");
        let err = CodeTable::parse("a\"b,c\n", "t.csv").expect_err("bare quote");
        assert!(
            err.contains("line 1: a quote inside an unquoted value"),
            "{err}"
        );
    }

    #[test]
    fn load_reads_a_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pc.csv");
        std::fs::write(&path, "I,Inpatient\n").expect("write");
        let t = CodeTable::load(&path).expect("loads");
        assert_eq!(t.get("I"), Some("Inpatient"));
        let err = CodeTable::load(&dir.path().join("missing.csv")).expect_err("missing");
        assert!(err.starts_with("cannot read code table "), "{err}");
        assert!(err.contains("missing.csv"), "{err}");
        std::fs::write(&path, b"I,\xff\n").expect("write");
        let err = CodeTable::load(&path).expect_err("not utf-8");
        assert!(err.contains("not UTF-8"), "{err}");
    }
}
