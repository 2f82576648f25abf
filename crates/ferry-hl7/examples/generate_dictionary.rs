//! Generates `src/dictionary/data/dictionary.txt` from the hl7-dictionary JSON files (MIT) and
//! the HAPI event → structure maps.
//!
//! ```text
//! cargo run -p ferry-hl7 --example generate_dictionary -- \
//!     /work/shared/corpus/structures crates/ferry-hl7/src/dictionary/data
//! ```
//!
//! The output format is described in `src/dictionary/mod.rs`. The generator is deterministic
//! (JSON objects are read into sorted maps), and a test regenerates the file and compares it
//! with the committed one. Table *values* (`tables.json`) are never read: only the table
//! numbers that fields carry.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Versions with their own JSON data, and the event map file each uses.
const DATA_VERSIONS: &[(&str, &str)] = &[
    ("2.1", "2.1"),
    ("2.2", "2.2"),
    ("2.3", "2.3"),
    ("2.3.1", "2.3.1"),
    ("2.4", "2.4"),
    ("2.5", "2.5"),
    ("2.5.1", "2.5.1"),
    ("2.6", "2.6"),
    ("2.7", "2.7"),
    // HAPI has no 2.7.1 event map; 2.7.1 is a technical correction of 2.7.
    ("2.7.1", "2.7"),
];

/// Versions without segment data: (version, definitions borrowed from, event map).
const BORROWED_VERSIONS: &[(&str, &str, &str)] =
    &[("2.8", "2.7.1", "2.8"), ("2.8.1", "2.7.1", "2.8.1")];

#[derive(Default)]
struct Interner {
    list: Vec<String>,
    index: HashMap<String, usize>,
}

impl Interner {
    fn get(&mut self, s: &str) -> usize {
        let s = normalize(s);
        if let Some(i) = self.index.get(&s) {
            return *i;
        }
        let i = self.list.len();
        self.list.push(s.clone());
        self.index.insert(s, i);
        i
    }
}

/// Dedup of whole definition lines across versions.
#[derive(Default)]
struct Defs {
    list: Vec<String>,
    index: HashMap<String, usize>,
}

impl Defs {
    fn get(&mut self, line: String) -> usize {
        if let Some(i) = self.index.get(&line) {
            return *i;
        }
        let i = self.list.len();
        self.list.push(line.clone());
        self.index.insert(line, i);
        i
    }
}

fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn num(v: Option<&Value>) -> String {
    v.and_then(Value::as_u64)
        .map(|n| n.to_string())
        .unwrap_or_default()
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn read_json(path: &Path) -> Result<Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// `desc,datatype,opt,rep,len,table` with the description interned.
fn item(strings: &mut Interner, f: &Value) -> String {
    format!(
        "{},{},{},{},{},{}",
        strings.get(text(f, "desc")),
        text(f, "datatype"),
        num(f.get("opt")),
        num(f.get("rep")),
        num(f.get("len")),
        num(f.get("table")),
    )
}

fn suffix(e: &Value) -> &'static str {
    let min = e.get("min").and_then(Value::as_u64).unwrap_or(0);
    let max = e.get("max").and_then(Value::as_u64).unwrap_or(0);
    match (min >= 1, max == 1) {
        (true, true) => "",
        (false, true) => "?",
        (true, false) => "+",
        (false, false) => "*",
    }
}

fn grammar(out: &mut String, elements: &[Value]) {
    for e in elements {
        if !out.is_empty() && !out.ends_with('(') {
            out.push(' ');
        }
        if let Some(choices) = e.get("compounds").and_then(Value::as_array) {
            let names: Vec<&str> = choices.iter().map(|c| text(c, "name")).collect();
            let _ = write!(out, "<{}>{}", names.join("|"), suffix(e));
        } else if let Some(children) = e.get("children").and_then(Value::as_array) {
            // Group names are path steps: a `/` inside one (three 2.7 groups) becomes `_`.
            let name = text(e, "name").replace('/', "_").to_ascii_uppercase();
            let _ = write!(out, "{name}{}(", suffix(e));
            grammar(out, children);
            out.push(')');
        } else {
            let _ = write!(out, "{}{}", text(e, "name"), suffix(e));
        }
    }
}

fn events(dir: &Path, file: &str) -> Result<String, String> {
    let path = dir.join("hapi-eventmap").join(format!("{file}.properties"));
    let body = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut pairs: Vec<String> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (event, structure) = l.trim().split_once('\t')?;
            let structure = structure.trim();
            // HAPI writes `?` for events it has no structure for.
            (structure != "?" && !structure.is_empty())
                .then(|| format!("{}={structure}", event.trim()))
        })
        .collect();
    pairs.sort();
    pairs.dedup();
    Ok(pairs.join(" "))
}

/// Builds the whole data file from the `structures` directory.
pub fn generate(dir: &Path) -> Result<String, String> {
    let lib = dir.join("hl7-dictionary").join("lib");
    let mut strings = Interner::default();
    let mut types = Defs::default();
    let mut segments = Defs::default();
    let mut structures = Defs::default();
    let mut versions = String::new();
    for (version, event_file) in DATA_VERSIONS {
        let vdir = lib.join(version);
        let fields = read_json(&vdir.join("fields.json"))?;
        let segs = read_json(&vdir.join("segments.json"))?;
        let msgs = read_json(&vdir.join("messages.json"))?;
        let mut type_ids = Vec::new();
        for (code, def) in fields.as_object().into_iter().flatten() {
            let comps: Vec<String> = def
                .get("subfields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| item(&mut strings, c))
                .collect();
            let line = format!(
                "{code}\t{}\t{}",
                strings.get(text(def, "desc")),
                comps.join(";")
            );
            type_ids.push(types.get(line).to_string());
        }
        let mut seg_ids = Vec::new();
        for (id, def) in segs.as_object().into_iter().flatten() {
            let items: Vec<String> = def
                .get("fields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|f| item(&mut strings, f))
                .collect();
            let line = format!(
                "{id}\t{}\t{}",
                strings.get(text(def, "desc")),
                items.join(";")
            );
            seg_ids.push(segments.get(line).to_string());
        }
        let mut struct_ids = Vec::new();
        for (name, def) in msgs.as_object().into_iter().flatten() {
            let elements = def
                .get("segments")
                .and_then(|s| s.get("segments"))
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut g = String::new();
            grammar(&mut g, elements);
            let line = format!("{name}\t{}\t{g}", strings.get(text(def, "desc")));
            struct_ids.push(structures.get(line).to_string());
        }
        let _ = writeln!(versions, "@version {version}");
        let _ = writeln!(versions, "types {}", type_ids.join(" "));
        let _ = writeln!(versions, "segments {}", seg_ids.join(" "));
        let _ = writeln!(versions, "structures {}", struct_ids.join(" "));
        let _ = writeln!(versions, "events {}", events(dir, event_file)?);
    }
    for (version, base, event_file) in BORROWED_VERSIONS {
        let _ = writeln!(versions, "@version {version} {base}");
        let _ = writeln!(versions, "events {}", events(dir, event_file)?);
    }
    let mut out = String::new();
    out.push_str("ferry-hl7-dictionary 1\n");
    out.push_str(
        "# Generated by crates/ferry-hl7/examples/generate_dictionary.rs from hl7-dictionary \
         (MIT, see LICENSE-hl7-dictionary.md) and the HAPI event maps. Do not edit.\n",
    );
    let _ = writeln!(out, "@strings {}", strings.list.len());
    for s in &strings.list {
        out.push_str(s);
        out.push('\n');
    }
    for (name, defs) in [
        ("types", &types),
        ("segments", &segments),
        ("structures", &structures),
    ] {
        let _ = writeln!(out, "@{name} {}", defs.list.len());
        for l in &defs.list {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str(&versions);
    Ok(out)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [source, target] = args.as_slice() else {
        eprintln!("usage: generate_dictionary <structures dir> <output dir>");
        std::process::exit(2);
    };
    let source = PathBuf::from(source);
    let target = PathBuf::from(target);
    let result = generate(&source).and_then(|data| {
        std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
        std::fs::write(target.join("dictionary.txt"), &data).map_err(|e| e.to_string())?;
        let licence = std::fs::read(source.join("hl7-dictionary").join("LICENSE.md"))
            .map_err(|e| e.to_string())?;
        std::fs::write(target.join("LICENSE-hl7-dictionary.md"), licence)
            .map_err(|e| e.to_string())?;
        Ok(data.len())
    });
    match result {
        Ok(n) => println!(
            "wrote {} ({n} bytes)",
            target.join("dictionary.txt").display()
        ),
        Err(e) => {
            eprintln!("generate_dictionary: {e}");
            std::process::exit(1);
        }
    }
}
