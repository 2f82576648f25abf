//! `ferry test`: run channel test cases offline and show what differs.
//!
//! Interfaces get CI like code. Each channel's cases live in a directory beside the
//! configuration, `tests/<channel>/<case>/` by default (`--cases` changes the root):
//!
//! ```text
//! tests/adt-to-api/a01-admit/
//!   input.hl7            the message as a sender would send it (or input.json, input.txt)
//!   expect/api.json      what destination `api` must send (compared as JSON)
//!   expect/archive.hl7   what destination `archive` must send (compared segment by segment)
//!   expect/lab.filtered  destination `lab` must filter it out (empty file)
//! ```
//!
//! Expectations, one per destination, named after it: `.hl7` (segments compared after
//! normalising line ends, so files can be edited with any editor), `.json` (compared as JSON
//! values, key order ignored), `.txt` (exact text), `.filtered`, or `.error` (the destination's
//! transformer or encoder must fail; a non-empty file is text the error must contain). Instead
//! of per-destination files a case can expect the source to stop it: `expect/source.filtered`,
//! `expect/source.error` or `expect/source.rejected`. The value `{{any}}` as a whole HL7 field
//! or a whole JSON value matches anything (for timestamps and generated ids).
//!
//! The configuration is loaded as `ferry check` does, except that an unset `${env:…}` reads as
//! empty and no connector is built (no certificate is read, nothing connects), so cases run in
//! CI without production secrets. In `input.hl7` line ends become `\r`, as on the wire. Cases
//! run through the very pipeline `ferry run` deploys (filters, transformers, scripts,
//! encoders), without a network, a store or a listener. Exit status: 0 when every case passed;
//! 1 when one failed, none was found, or a directory under the cases root names no channel of
//! the configuration (its cases would otherwise go unrun in silence; a disabled channel's
//! directory is only noted); 2 when the configuration cannot be loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ferry_engine::{DestinationResult, Pipeline, Processed};
use serde_json::Value;

/// Arguments of `ferry test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Configuration file (default: ./ferry.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Root of the test cases (default: `tests` beside the configuration file).
    #[arg(long)]
    cases: Option<PathBuf>,
    /// Print results as JSON.
    #[arg(long)]
    json: bool,
    /// Test only this channel.
    channel: Option<String>,
}

/// The matcher for "any value here".
const ANY: &str = "{{any}}";

/// One failed expectation of a case.
#[derive(Debug, serde::Serialize)]
struct Failure {
    /// `source` or the destination's name.
    connector: String,
    /// What was expected, in words.
    expected: String,
    /// What happened, in words.
    actual: String,
    /// Line diff of expected (`-`) and actual (`+`) content, when both are content.
    diff: Vec<String>,
}

/// The result of one case.
#[derive(Debug, serde::Serialize)]
struct CaseResult {
    channel: String,
    case: String,
    passed: bool,
    failures: Vec<Failure>,
}

/// What a case expects of one connector.
#[derive(Debug)]
enum Expectation {
    Hl7(Vec<u8>),
    Json(Value),
    Text(Vec<u8>),
    Filtered,
    Error(String),
    Rejected,
}

impl Expectation {
    fn describe(&self) -> String {
        match self {
            Expectation::Hl7(_) => "this HL7 message".into(),
            Expectation::Json(_) => "this JSON".into(),
            Expectation::Text(_) => "this text".into(),
            Expectation::Filtered => "filtered".into(),
            Expectation::Error(t) if t.is_empty() => "an error".into(),
            Expectation::Error(t) => format!("an error containing `{t}`"),
            Expectation::Rejected => "rejected".into(),
        }
    }
}

/// Run the test cases.
pub async fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("ferry.toml"));
    let config = match ferry_config::Config::load_offline(&path) {
        Ok(c) => c,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(2));
        }
    };
    let pipelines = match ferry_connectors::deploy::pipelines(&config) {
        Ok(p) => p,
        Err(error) => {
            eprintln!("{}: {error}", path.display());
            return Ok(ExitCode::from(2));
        }
    };
    let root = args.cases.clone().unwrap_or_else(|| {
        path.parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
            .join("tests")
    });
    if let Some(wanted) = &args.channel
        && !pipelines.iter().any(|p| &p.channel == wanted)
    {
        eprintln!(
            "ferry test: no enabled channel `{wanted}` in {}",
            path.display()
        );
        return Ok(ExitCode::from(2));
    }
    let mut results = Vec::new();
    for pipeline in &pipelines {
        if args
            .channel
            .as_ref()
            .is_some_and(|c| c != &pipeline.channel)
        {
            continue;
        }
        let dir = root.join(&pipeline.channel);
        for case in case_dirs(&dir)? {
            results.push(run_case(pipeline, &case));
        }
    }
    // A directory named after no channel would be skipped in silence, so a typo in a channel's
    // directory name (or a renamed channel) would read as a pass.
    let mut stray = Vec::new();
    let mut notes = Vec::new();
    if args.channel.is_none() {
        for dir in case_dirs(&root)? {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if pipelines.iter().any(|p| p.channel == name) {
                continue;
            }
            if config.channels.iter().any(|c| c.name == name && !c.enabled) {
                notes.push(format!(
                    "ferry test: {}: channel `{name}` is disabled; its cases were not run",
                    dir.display()
                ));
            } else {
                stray.push(format!(
                    "ferry test: {}: no channel `{name}` in {}; its cases were not run",
                    dir.display(),
                    path.display()
                ));
            }
        }
    }
    report(&results, args.json, &root);
    for line in notes.iter().chain(&stray) {
        eprintln!("{line}");
    }
    if results.is_empty() || !stray.is_empty() || results.iter().any(|r| !r.passed) {
        Ok(ExitCode::from(1))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

fn report(results: &[CaseResult], json: bool, root: &Path) {
    if json {
        let text = serde_json::to_string_pretty(results).unwrap_or_else(|_| "[]".into());
        println!("{text}");
        return;
    }
    if results.is_empty() {
        println!("no test cases found under {}", root.display());
        return;
    }
    for r in results {
        let verdict = if r.passed { "ok" } else { "FAILED" };
        println!("{}/{} ... {verdict}", r.channel, r.case);
        for f in &r.failures {
            println!(
                "  {}: expected {}, got {}",
                f.connector, f.expected, f.actual
            );
            for line in &f.diff {
                println!("    {line}");
            }
        }
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    println!(
        "{} case{}: {} passed, {failed} failed",
        results.len(),
        if results.len() == 1 { "" } else { "s" },
        results.len() - failed
    );
}

/// The case directories of a channel, in name order (none when the directory is missing).
fn case_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", dir.display())),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| anyhow::anyhow!("reading {}: {e}", dir.display()))?;
        if entry.path().is_dir() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn run_case(pipeline: &Pipeline, dir: &Path) -> CaseResult {
    let case = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut result = CaseResult {
        channel: pipeline.channel.clone(),
        case,
        passed: false,
        failures: Vec::new(),
    };
    let fail = |connector: &str, expected: String, actual: String| Failure {
        connector: connector.to_owned(),
        expected,
        actual,
        diff: Vec::new(),
    };
    let input = match read_input(dir) {
        Ok(i) => i,
        Err(e) => {
            result
                .failures
                .push(fail("case", "an input file".into(), e));
            return result;
        }
    };
    let expectations = match read_expectations(dir) {
        Ok(e) => e,
        Err(e) => {
            result
                .failures
                .push(fail("case", "readable expectations".into(), e));
            return result;
        }
    };
    let processed = pipeline.process(&input, serde_json::Map::new());
    let source = expectations.get("source");
    let stopped = |actual: String| -> Option<Failure> {
        match source {
            Some(Expectation::Filtered) if actual.starts_with("filtered") => None,
            Some(Expectation::Rejected) if actual.starts_with("rejected") => None,
            Some(Expectation::Error(t))
                if actual.starts_with("error") && actual.contains(t.as_str()) =>
            {
                None
            }
            Some(e) => Some(fail("source", e.describe(), actual)),
            None => Some(fail("source", "accepted".into(), actual)),
        }
    };
    match processed {
        Processed::Rejected { reason, .. } => {
            result
                .failures
                .extend(stopped(format!("rejected ({reason})")));
        }
        Processed::Filtered { rule, .. } => {
            result
                .failures
                .extend(stopped(format!("filtered (by filter {rule})")));
        }
        Processed::Failed { reason, .. } => {
            result.failures.extend(stopped(format!("error ({reason})")));
        }
        Processed::Accepted(accepted) => {
            if let Some(e) = source {
                result
                    .failures
                    .push(fail("source", e.describe(), "accepted".into()));
            }
            let base = accepted
                .transformed
                .clone()
                .unwrap_or_else(|| accepted.received.as_bytes().to_vec());
            for (dest, outcome) in pipeline.destinations.iter().zip(&accepted.destinations) {
                let Some(expected) = expectations.get(dest.name.as_str()) else {
                    if source.is_none() {
                        result.failures.push(fail(
                            &dest.name,
                            format!(
                                "an expectation (add expect/{0}.hl7, .json, .txt, .filtered or .error)",
                                dest.name
                            ),
                            describe(outcome),
                        ));
                    }
                    continue;
                };
                let sent = match outcome {
                    DestinationResult::Queued { encoded } => {
                        Some(encoded.as_deref().unwrap_or(&base))
                    }
                    _ => None,
                };
                if let Some(f) = compare(&dest.name, expected, outcome, sent) {
                    result.failures.push(f);
                }
            }
            for name in expectations.keys() {
                if name != "source" && !pipeline.destinations.iter().any(|d| &d.name == name) {
                    result.failures.push(fail(
                        name,
                        "a destination of this name".into(),
                        "the channel has none".into(),
                    ));
                }
            }
        }
    }
    result.passed = result.failures.is_empty();
    result
}

fn describe(outcome: &DestinationResult) -> String {
    match outcome {
        DestinationResult::Queued { .. } => "a message to send".into(),
        DestinationResult::Filtered { rule } => format!("filtered (by filter {rule})"),
        DestinationResult::Failed { reason } => format!("error ({reason})"),
    }
}

fn compare(
    name: &str,
    expected: &Expectation,
    outcome: &DestinationResult,
    sent: Option<&[u8]>,
) -> Option<Failure> {
    let fail = |diff: Vec<String>, actual: String| {
        Some(Failure {
            connector: name.to_owned(),
            expected: expected.describe(),
            actual,
            diff,
        })
    };
    match (expected, outcome, sent) {
        (Expectation::Filtered, DestinationResult::Filtered { .. }, _) => None,
        (Expectation::Error(t), DestinationResult::Failed { reason }, _)
            if reason.contains(t.as_str()) =>
        {
            None
        }
        (Expectation::Hl7(want), _, Some(got)) => {
            let (want, got) = (segments(want), segments(got));
            if want.len() == got.len() && want.iter().zip(&got).all(|(w, g)| segment_matches(w, g))
            {
                None
            } else {
                fail(diff_lines(&want, &got), "a different message".into())
            }
        }
        (Expectation::Json(want), _, Some(got)) => match serde_json::from_slice::<Value>(got) {
            Ok(got) if json_matches(want, &got) => None,
            Ok(got) => fail(
                diff_lines(&pretty(want), &pretty(&got)),
                "different JSON".into(),
            ),
            Err(e) => fail(Vec::new(), format!("output that is not JSON ({e})")),
        },
        (Expectation::Text(want), _, Some(got)) => {
            if want == got {
                None
            } else {
                let lines = |b: &[u8]| -> Vec<String> {
                    String::from_utf8_lossy(b)
                        .lines()
                        .map(str::to_owned)
                        .collect()
                };
                fail(
                    diff_lines(&lines(want), &lines(got)),
                    "different text".into(),
                )
            }
        }
        (_, outcome, _) => fail(Vec::new(), describe(outcome)),
    }
}

fn pretty(v: &Value) -> Vec<String> {
    serde_json::to_string_pretty(v)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// An HL7 message's segments as text, whatever its line ends.
fn segments(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split(['\r', '\n'])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A segment equals the expected one, where a whole field `{{any}}` matches anything.
fn segment_matches(want: &str, got: &str) -> bool {
    if want == got {
        return true;
    }
    let (w, g): (Vec<&str>, Vec<&str>) = (want.split('|').collect(), got.split('|').collect());
    w.len() == g.len() && w.iter().zip(&g).all(|(w, g)| *w == ANY || w == g)
}

/// JSON equality where the string `{{any}}` matches any value.
fn json_matches(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::String(s), _) if s == ANY => true,
        (Value::Object(w), Value::Object(g)) => {
            w.len() == g.len()
                && w.iter()
                    .all(|(k, v)| g.get(k).is_some_and(|gv| json_matches(v, gv)))
        }
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(w, g)| json_matches(w, g))
        }
        (w, g) => w == g,
    }
}

/// A line diff (longest common subsequence): unchanged lines with two spaces, removed with
/// `- `, added with `+ `. Inputs are test files, small enough for the quadratic table.
fn diff_lines(want: &[String], got: &[String]) -> Vec<String> {
    let (n, m) = (want.len(), got.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if want[i] == got[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && want[i] == got[j] {
            out.push(format!("  {}", want[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("+ {}", got[j]));
            j += 1;
        } else {
            out.push(format!("- {}", want[i]));
            i += 1;
        }
    }
    out
}

/// The case's input: `input.hl7` (line ends become `\r`), `input.json` or `input.txt`.
fn read_input(dir: &Path) -> Result<Vec<u8>, String> {
    let hl7 = dir.join("input.hl7");
    if hl7.exists() {
        let bytes = std::fs::read(&hl7).map_err(|e| format!("{}: {e}", hl7.display()))?;
        return Ok(wire_line_ends(&bytes));
    }
    for name in ["input.json", "input.txt"] {
        let p = dir.join(name);
        if p.exists() {
            return std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()));
        }
    }
    Err(format!(
        "{} has no input.hl7, input.json or input.txt",
        dir.display()
    ))
}

/// CRLF and LF as `\r`, the HL7 segment end.
fn wire_line_ends(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                out.push(b'\r');
                i += 1;
            }
            b'\n' => out.push(b'\r'),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// `expect/<connector>.<kind>` files by connector name.
fn read_expectations(dir: &Path) -> Result<BTreeMap<String, Expectation>, String> {
    let expect = dir.join("expect");
    let entries = std::fs::read_dir(&expect).map_err(|e| format!("{}: {e}", expect.display()))?;
    let mut out = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let (Some(stem), Some(ext)) = (
            path.file_stem().map(|s| s.to_string_lossy().into_owned()),
            path.extension().map(|s| s.to_string_lossy().into_owned()),
        ) else {
            continue;
        };
        let read = || std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()));
        let expectation = match ext.as_str() {
            "hl7" => Expectation::Hl7(read()?),
            "json" => Expectation::Json(
                serde_json::from_slice(&read()?)
                    .map_err(|e| format!("{}: not JSON: {e}", path.display()))?,
            ),
            "txt" => Expectation::Text(read()?),
            "filtered" => Expectation::Filtered,
            "error" => Expectation::Error(String::from_utf8_lossy(&read()?).trim().to_owned()),
            "rejected" if stem == "source" => Expectation::Rejected,
            _ => {
                return Err(format!(
                    "{}: unknown expectation (use .hl7, .json, .txt, .filtered, .error, or source.rejected)",
                    path.display()
                ));
            }
        };
        if out.insert(stem.clone(), expectation).is_some() {
            return Err(format!(
                "{}: two expectations for `{stem}`",
                expect.display()
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_marks_removed_and_added_lines() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let diff = diff_lines(
            &s(&["MSH", "PID|1", "PV1"]),
            &s(&["MSH", "PID|2", "PV1", "ZPI"]),
        );
        assert_eq!(diff, ["  MSH", "+ PID|2", "- PID|1", "  PV1", "+ ZPI"]);
    }

    #[test]
    fn any_matches_a_whole_field_or_value_only() {
        assert!(segment_matches(
            "MSH|^~\\&|{{any}}|X",
            "MSH|^~\\&|20261202|X"
        ));
        assert!(!segment_matches("MSH|^~\\&|{{any}}|X", "MSH|^~\\&|1|Y"));
        assert!(!segment_matches("PID|{{any}}", "PID|1|2"));
        let want: Value = serde_json::json!({"id": "{{any}}", "name": "DOE"});
        assert!(json_matches(
            &want,
            &serde_json::json!({"name": "DOE", "id": 7})
        ));
        assert!(!json_matches(
            &want,
            &serde_json::json!({"name": "ROE", "id": 7})
        ));
        assert!(!json_matches(&want, &serde_json::json!({"name": "DOE"})));
    }

    #[test]
    fn input_line_ends_become_segment_ends() {
        assert_eq!(
            wire_line_ends(b"MSH|x\r\nPID|1\nPV1\r"),
            b"MSH|x\rPID|1\rPV1\r"
        );
    }
}
