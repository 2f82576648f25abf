//! `ferry hl7`: look inside HL7 v2 files from the command line.
//!
//! Every subcommand reads a file (or `-` for standard input) that may hold one message,
//! several, or a batch, and works on each message in turn. Output is for people by default
//! and JSON with `--json`. Exit status: 0 when every message parsed (and, for `validate`,
//! had no error), 1 when one did not, 2 when the file could not be read or an argument is
//! wrong.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use ferry_hl7::dictionary::{self, Version};
use ferry_hl7::validate::Severity;
use ferry_hl7::{Message, Value, json, split_messages};

/// Arguments of `ferry hl7`.
#[derive(Debug, clap::Args)]
pub struct Hl7Args {
    #[command(subcommand)]
    command: Hl7Command,
}

#[derive(Debug, clap::Subcommand)]
enum Hl7Command {
    /// Show every segment and field of each message, with field names.
    Parse(FileArgs),
    /// Print the value at one or more paths (`PID-5.1`, `OBX[2]-5`, `PID-3(2).1`).
    Get(GetArgs),
    /// Check each message against the HL7 dictionary of its version.
    Validate(FileArgs),
    /// Print the lossless JSON form of each message.
    ToJson(ToJsonArgs),
    /// Turn the lossless JSON form back into HL7 (writes the bytes to standard output).
    FromJson(ToJsonArgs),
}

#[derive(Debug, clap::Args)]
struct FileArgs {
    /// File holding one or more messages (`-` reads standard input).
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct GetArgs {
    /// File holding one or more messages (`-` reads standard input).
    file: PathBuf,
    /// Paths to read.
    #[arg(required = true)]
    paths: Vec<String>,
    /// Print the raw ER7 value (escape sequences kept) instead of decoded text.
    #[arg(long)]
    raw: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ToJsonArgs {
    /// Input file (`-` reads standard input).
    file: PathBuf,
    /// Add segment and field names from the dictionary (`to-json`; ignored by `from-json`).
    #[arg(long)]
    names: bool,
}

/// Run `ferry hl7 …`.
pub fn run(args: Hl7Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Hl7Command::Parse(a) => parse(&a),
        Hl7Command::Get(a) => get(&a),
        Hl7Command::Validate(a) => validate(&a),
        Hl7Command::ToJson(a) => to_json(&a),
        Hl7Command::FromJson(a) => from_json(&a),
    }
}

/// The input's bytes; an input without any HL7 message in it is an error (exit 2).
fn read_input(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let bytes = if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
        bytes
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
    };
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        anyhow::bail!("{}: empty input, no message to read", path.display());
    }
    Ok(bytes)
}

/// Each message of the input: its 1-based number and its parse.
fn messages(bytes: &[u8]) -> Vec<(usize, Result<Message<'_>, ferry_hl7::ParseError>)> {
    split_messages(bytes)
        .map(Message::parse)
        .enumerate()
        .map(|(i, m)| (i + 1, m))
        .collect()
}

/// Decoded text of a raw value, in the message's character set (MSH-18).
fn text(message: &Message<'_>, raw: &[u8]) -> String {
    message.text(raw).into_owned()
}

/// The dictionary version for a message: its MSH-12, or 2.5.1 when that is missing or unknown
/// (the same rule as validation).
fn version(message: &Message<'_>) -> Version {
    message
        .version()
        .and_then(Version::parse)
        .unwrap_or(Version::V2_5_1)
}

fn field_name(message: &Message<'_>, segment: &str, field: usize) -> Option<&'static str> {
    dictionary::field_name(version(message), segment, field)
}

fn summary(message: &Message<'_>) -> String {
    format!(
        "{}, MSH-10 {}, version {}, {} segments, {} bytes",
        message.message_type().unwrap_or("(no MSH-9)"),
        message.control_id().unwrap_or("(none)"),
        message.version().unwrap_or("(none)"),
        message.segment_count(),
        message.as_bytes().len()
    )
}

/// What a subcommand prints for a file of messages: text as it goes, or one JSON array at
/// the end; the exit status is 1 when any message failed.
struct Report {
    json: bool,
    failed: bool,
    items: Vec<serde_json::Value>,
}

impl Report {
    fn new(json: bool) -> Report {
        Report {
            json,
            failed: false,
            items: Vec::new(),
        }
    }

    /// The message, or `None` after reporting why it does not parse.
    fn parsed<'m, 'a>(
        &mut self,
        n: usize,
        total: usize,
        parsed: &'m Result<Message<'a>, ferry_hl7::ParseError>,
    ) -> Option<&'m Message<'a>> {
        match parsed {
            Ok(m) => Some(m),
            Err(e) => {
                self.failed = true;
                if self.json {
                    self.items
                        .push(serde_json::json!({ "message": n, "error": e.to_string() }));
                } else {
                    println!("message {n} of {total}: error: {e}");
                }
                None
            }
        }
    }

    fn finish(self) -> anyhow::Result<ExitCode> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(&self.items)?);
        }
        Ok(if self.failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    }
}

/// Read the input and run `each` on every message that parses (the others are reported as
/// errors); the report decides the output form and the exit status.
fn for_each_message(
    file: &PathBuf,
    json: bool,
    mut each: impl FnMut(&mut Report, usize, usize, &Message<'_>),
) -> anyhow::Result<ExitCode> {
    let bytes = read_input(file)?;
    let all = messages(&bytes);
    let total = all.len();
    let mut report = Report::new(json);
    for (n, parsed) in &all {
        if let Some(message) = report.parsed(*n, total, parsed) {
            each(&mut report, *n, total, message);
        }
    }
    report.finish()
}

fn parse(args: &FileArgs) -> anyhow::Result<ExitCode> {
    for_each_message(&args.file, args.json, |report, n, total, message| {
        if args.json {
            report.items.push(parse_json(n, message));
            return;
        }
        println!("message {n} of {total}: {}", summary(message));
        for segment in message.segments() {
            let id = segment.id_str();
            println!("{id}");
            for f in 1..=segment.field_count() {
                let raw = segment.field(f).unwrap_or_default();
                if raw.is_empty() {
                    continue;
                }
                let label = format!("{id}-{f}");
                let name = field_name(message, id, f).unwrap_or("");
                let shown = if id == "MSH" && f <= 2 {
                    String::from_utf8_lossy(raw).into_owned()
                } else {
                    text(message, raw)
                };
                println!("  {label:<9} {name:<36} {shown}");
                if id != "MSH" || f > 2 {
                    print_parts(message, &label, raw);
                }
            }
        }
    })
}

/// Components (and repetitions) of a field that has any, one line each.
fn print_parts(message: &Message<'_>, label: &str, raw: &[u8]) {
    let d = message.delimiters();
    let reps: Vec<&[u8]> = match d.repetition {
        Some(r) => message.parts(raw, r).collect(),
        None => vec![raw],
    };
    let has_parts = reps.len() > 1 || message.parts(raw, d.component).nth(1).is_some();
    if !has_parts {
        return;
    }
    for (r, rep) in reps.iter().enumerate() {
        let rep_label = if reps.len() > 1 {
            format!("{label}({})", r + 1)
        } else {
            label.to_owned()
        };
        let comps: Vec<&[u8]> = message.parts(rep, d.component).collect();
        if comps.len() == 1 {
            if !rep.is_empty() {
                println!("    {rep_label:<14} {}", text(message, rep));
            }
            continue;
        }
        for (c, comp) in comps.iter().enumerate() {
            if !comp.is_empty() {
                println!(
                    "    {:<14} {}",
                    format!("{rep_label}.{}", c + 1),
                    text(message, comp)
                );
            }
        }
    }
}

fn parse_json(n: usize, message: &Message<'_>) -> serde_json::Value {
    let segments: Vec<serde_json::Value> = message
        .segments()
        .map(|segment| {
            let id = segment.id_str();
            let fields: Vec<serde_json::Value> = (1..=segment.field_count())
                .filter_map(|f| {
                    let raw = segment.field(f)?;
                    if raw.is_empty() {
                        return None;
                    }
                    Some(serde_json::json!({
                        "path": format!("{id}-{f}"),
                        "name": field_name(message, id, f),
                        "raw": String::from_utf8_lossy(raw),
                        "text": if id == "MSH" && f <= 2 {
                            String::from_utf8_lossy(raw).into_owned()
                        } else {
                            text(message, raw)
                        },
                    }))
                })
                .collect();
            serde_json::json!({ "id": id, "fields": fields })
        })
        .collect();
    serde_json::json!({
        "message": n,
        "type": message.message_type(),
        "control_id": message.control_id(),
        "version": message.version(),
        "segments": segments,
    })
}

fn get(args: &GetArgs) -> anyhow::Result<ExitCode> {
    let paths: Vec<ferry_hl7::Path> = args
        .paths
        .iter()
        .map(|p| ferry_hl7::Path::parse(p))
        .collect::<Result<_, _>>()?;
    for_each_message(&args.file, args.json, |report, n, total, message| {
        let several = total > 1 || paths.len() > 1;
        for (text_path, path) in args.paths.iter().zip(&paths) {
            let value = Value::from_raw(message.get_path(path));
            let shown = match value {
                Value::Present(raw) if args.raw => String::from_utf8_lossy(raw).into_owned(),
                Value::Present(raw) => text(message, raw),
                _ => String::new(),
            };
            let state = match value {
                Value::Absent => "absent",
                Value::Empty => "empty",
                Value::Null => "null",
                Value::Present(_) => "present",
            };
            if args.json {
                report.items.push(serde_json::json!({
                    "message": n, "path": text_path, "state": state, "value": shown,
                }));
            } else if several {
                let shown = if state == "present" {
                    shown
                } else {
                    format!("({state})")
                };
                println!("{n}\t{text_path}\t{shown}");
            } else {
                println!("{shown}");
            }
        }
    })
}

fn validate(args: &FileArgs) -> anyhow::Result<ExitCode> {
    for_each_message(&args.file, args.json, |report, n, total, message| {
        let issues = ferry_hl7::validate::validate(message);
        let errors = issues
            .iter()
            .filter(|i| i.severity == Severity::Error)
            .count();
        report.failed |= errors > 0;
        if args.json {
            let list: Vec<serde_json::Value> = issues
                .iter()
                .map(|i| {
                    serde_json::json!({
                        "severity": match i.severity {
                            Severity::Error => "error",
                            Severity::Warning => "warning",
                        },
                        "code": i.code.as_str(),
                        "segment_index": i.location.segment_index,
                        "segment": i.location.segment_id,
                        "field": i.location.field,
                        "repetition": i.location.repetition,
                        "message": i.message,
                    })
                })
                .collect();
            report.items.push(serde_json::json!({
                "message": n,
                "valid": errors == 0,
                "version": version(message).as_str(),
                "issues": list,
            }));
            return;
        }
        let warnings = issues.len() - errors;
        let verdict = if errors == 0 { "valid" } else { "invalid" };
        println!(
            "message {n} of {total}: {verdict} as v{} ({errors} error{}, {warnings} warning{}) — {}",
            version(message),
            if errors == 1 { "" } else { "s" },
            if warnings == 1 { "" } else { "s" },
            summary(message)
        );
        for issue in &issues {
            println!("  {issue}");
        }
    })
}

fn to_json(args: &ToJsonArgs) -> anyhow::Result<ExitCode> {
    let bytes = read_input(&args.file)?;
    let mut docs = Vec::new();
    for (n, parsed) in messages(&bytes) {
        match parsed {
            Ok(m) if args.names => docs.push(json::to_json_annotated(&m)),
            Ok(m) => docs.push(json::to_json(&m)),
            Err(e) => {
                eprintln!("message {n}: {e}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    let out = if docs.len() == 1 {
        docs.remove(0)
    } else {
        serde_json::Value::Array(docs)
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

fn from_json(args: &ToJsonArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let bytes = read_input(&args.file)?;
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{}: not JSON: {e}", args.file.display());
            return Ok(ExitCode::from(1));
        }
    };
    let docs = match value {
        serde_json::Value::Array(docs) => docs,
        one => vec![one],
    };
    let mut out = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        match json::from_json(doc) {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(e) => {
                eprintln!("message {}: {e}", i + 1);
                return Ok(ExitCode::from(1));
            }
        }
    }
    std::io::stdout().write_all(&out)?;
    Ok(ExitCode::SUCCESS)
}
