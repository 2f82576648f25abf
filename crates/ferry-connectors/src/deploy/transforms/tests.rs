//! Configuration → steps: every kind, and every error as `ferry check` shows it.

use std::path::Path;
use std::rc::Rc;

use ferry_config::Config;
use ferry_hl7::MessageBuf;

use super::*;

fn config(dir: &Path, channel_extra: &str) -> Result<Config, String> {
    let text = format!(
        "[[channel]]\nname = \"c\"\nsource = {{ type = \"mllp\", listen = \"127.0.0.1:0\" }}\n{channel_extra}\n"
    );
    Config::from_str_with_env(&text, &dir.join("ferry.toml"), Rc::new(|_: &str| None))
        .map_err(|e| e.to_string())
}

const DEST: &str =
    "\n  [[channel.destination]]\n  name = \"d\"\n  type = \"file\"\n  directory = \"out\"\n";

/// The `ferry check` error for one channel.
fn check_error(dir: &Path, extra: &str) -> String {
    let config = config(dir, extra).expect("config loads");
    let channel = &config.channels[0];
    channel_transforms(channel)
        .expect_err("refused")
        .to_string()
}

fn files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("tables")).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("templates")).expect("mkdir");
    std::fs::write(dir.path().join("tables/pc.csv"), "from,to\nI,INPATIENT\n").expect("write");
    std::fs::write(dir.path().join("tables/bad.csv"), "I,A\nI,B\n").expect("write");
    std::fs::write(
        dir.path().join("templates/siu.hl7"),
        "MSH|^~\\&|F|H|||{{ now }}||SIU^S12|{{ control_id }}|P|2.5\nPID|1||{{ id }}\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("templates/bad.hl7"),
        "MSH|^~\\&\nPID|{{ id | nope }}\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("templates/p.json"),
        r#"{"mrn":"{{PID-3.1}}"}"#,
    )
    .expect("write");
    std::fs::write(
        dir.path().join("templates/bad.json"),
        r#"{"mrn":"{{PID-3.1"}"#,
    )
    .expect("write");
    std::fs::write(dir.path().join("adt.js"), "msg.set('PID-5.1', 'X');").expect("write");
    dir
}

#[test]
fn every_step_kind_is_built_and_runs() {
    let dir = files();
    let extra = r#"
  [[channel.transform]]
  template = "templates/siu.hl7"
  [[channel.transform]]
  set = { field = "MSH-5", value = "SCHED|ULER" }
  [[channel.transform]]
  set = { field = "PID-8", null = true }
  [[channel.transform]]
  copy = { from = "PID-3.1", to = "PID-2" }
  [[channel.transform]]
  add_segment = { text = "ZPI|1", after = "PID" }
  [[channel.transform]]
  add_segment = { text = "NTE|1||n", before = "ZPI" }
  [[channel.transform]]
  add_segment = { text = "OBX|1" }
  [[channel.transform]]
  rename_segment = { from = "ZPI", to = "ZP1" }
  [[channel.transform]]
  drop_segment = "NTE"
  [[channel.transform]]
  set = { field = "PV1-2", value = "I" }
  [[channel.transform]]
  map = { field = "PV1-2", table = "tables/pc.csv", default = "U" }
  [[channel.transform]]
  delete = { field = "PID-3" }
  [[channel.transform]]
  js = "adt.js"
  [[channel.transform]]
  js_inline = "msg.set('PID-5.2', 'Y');"
"#;
    let dest = format!(
        "{DEST}  encode = {{ template = \"templates/p.json\" }}\n    [[channel.destination.transform]]\n    drop_segment = \"ZP1\"\n"
    );
    let config = config(dir.path(), &format!("{extra}{dest}")).expect("loads");
    let t = channel_transforms(&config.channels[0]).expect("builds");
    assert_eq!(t.steps.len(), 14);
    let StepPlan::Template(template) = &t.steps[0] else {
        panic!("a template first");
    };
    let steps: Vec<Step> = t.steps[1..12]
        .iter()
        .map(|s| match s {
            StepPlan::Declarative(step) => step.clone(),
            other => panic!("declarative expected, got {other:?}"),
        })
        .collect();
    let body = template
        .render(&serde_json::json!({ "id": "42" }))
        .expect("renders");
    let mut msg = MessageBuf::parse(body).expect("parses");
    ferry_engine::apply_all(&steps, &mut msg).expect("applies");
    let m = msg.message();
    let get = |p: &str| m.get_str(p).expect("path").map(|c| c.into_owned());
    assert_eq!(get("MSH-5").as_deref(), Some("SCHED|ULER"));
    assert_eq!(m.get("PID-8").expect("path"), Some(&b"\"\""[..]));
    assert_eq!(get("PID-2").as_deref(), Some("42"));
    assert_eq!(get("PID-3").as_deref(), Some(""));
    assert_eq!(get("PV1-2").as_deref(), Some("INPATIENT"));
    let ids: Vec<&str> = m.segments().map(|s| s.id_str()).collect();
    assert_eq!(ids, ["MSH", "PID", "ZP1", "OBX", "PV1"]);
    assert_eq!(
        t.steps[12..]
            .iter()
            .map(|s| match s {
                StepPlan::Js(js) => (
                    js.name.ends_with("adt.js") || js.name == "js_inline",
                    js.code.clone()
                ),
                other => panic!("js expected, got {other:?}"),
            })
            .collect::<Vec<_>>(),
        [
            (true, "msg.set('PID-5.1', 'X');".to_owned()),
            (true, "msg.set('PID-5.2', 'Y');".to_owned())
        ]
    );
    let d = &t.destinations[0];
    assert_eq!(d.name, "d");
    assert!(matches!(
        d.steps.as_slice(),
        [StepPlan::Declarative(Step::DropSegment { .. })]
    ));
    assert_eq!(
        d.encoder.encode(msg.as_bytes()).expect("encodes"),
        br#"{"mrn":null}"#,
        "PID-3 was deleted"
    );
}

#[test]
fn errors_name_the_channel_the_transform_and_the_cause() {
    let dir = files();
    let p = dir.path();
    let cases: &[(&str, &str)] = &[
        (
            "[[channel.transform]]\nset = { field = \"MSH-5\", value = \"x\" }\nmap = { field = \"PV1-2\", table = \"tables/pc.csv\" }",
            "channel `c`, transform 1: a transform has exactly one of `set`, `copy`, `delete`, `add_segment`, `drop_segment`, `rename_segment`, `map`, `template`, `js`, `js_inline` (2 given: `set`, `map`)",
        ),
        (
            "[[channel.transform]]\ndrop_segment = \"NTE\"\n[[channel.transform]]\n",
            "channel `c`, transform 2: a transform has exactly one of",
        ),
        (
            "[[channel.transform]]\nmap = { field = \"PV1-2\", table = \"tables/missing.csv\" }",
            "channel `c`, transform 1: cannot read code table ",
        ),
        (
            "[[channel.transform]]\nmap = { field = \"PV1-2\", table = \"tables/bad.csv\" }",
            "bad.csv, line 2: `I` is already mapped on line 1",
        ),
        (
            "[[channel.transform]]\nset = { field = \"PID5\", value = \"x\" }",
            "channel `c`, transform 1: `set`: invalid HL7 path `PID5`",
        ),
        (
            "[[channel.transform]]\nset = { field = \"MSH-2\", value = \"x\" }",
            "`set`: MSH-2 holds the message's delimiters",
        ),
        (
            "[[channel.transform]]\nset = { field = \"PID-5\" }",
            "`set` needs a `value`",
        ),
        (
            "[[channel.transform]]\nset = { field = \"PID-5\", value = \"x\", null = true }",
            "`set` takes `value` or `null = true`, not both",
        ),
        (
            "[[channel.transform]]\ncopy = { from = \"PID-3.1\", to = \"pid-2\" }",
            "`copy`: invalid HL7 path `pid-2`",
        ),
        (
            "[[channel.transform]]\ndelete = { field = \"MSH-1\" }",
            "`delete`: MSH-1 holds",
        ),
        (
            "[[channel.transform]]\nadd_segment = { text = \"zpi|1\" }",
            "`add_segment` text: `zpi` is not a segment id",
        ),
        (
            "[[channel.transform]]\nadd_segment = { text = \"ZPIX|1\" }",
            "`X` after the segment id",
        ),
        (
            "[[channel.transform]]\nadd_segment = { text = \"ZPI|1\\rZP2|1\" }",
            "without line breaks",
        ),
        (
            "[[channel.transform]]\nadd_segment = { text = \"MSH|^~\\\\&\" }",
            "cannot add a second MSH",
        ),
        (
            "[[channel.transform]]\nadd_segment = { text = \"ZPI|1\", after = \"PID\", before = \"PV1\" }",
            "not both",
        ),
        (
            "[[channel.transform]]\nadd_segment = { text = \"ZPI|1\", before = \"MSH\" }",
            "nothing goes before MSH",
        ),
        (
            "[[channel.transform]]\nadd_segment = { text = \"ZPI|1\", after = \"pid\" }",
            "`add_segment`: `pid` is not a segment id",
        ),
        (
            "[[channel.transform]]\ndrop_segment = \"MSH\"",
            "`drop_segment`: the MSH segment cannot be dropped",
        ),
        (
            "[[channel.transform]]\ndrop_segment = \"OBX[0]\"",
            "`drop_segment`: `OBX[0]`: the occurrence",
        ),
        (
            "[[channel.transform]]\nrename_segment = { from = \"ZPI\", to = \"Z1\" }",
            "`rename_segment`: `Z1` is not a segment id",
        ),
        (
            "[[channel.transform]]\nrename_segment = { from = \"ZPI\", to = \"MSH\" }",
            "no segment can become MSH",
        ),
        (
            "[[channel.transform]]\ntemplate = \"templates/bad.hl7\"",
            "channel `c`, transform 1: template ",
        ),
        (
            "[[channel.transform]]\ntemplate = \"templates/nope.hl7\"",
            "cannot read template ",
        ),
        (
            "[[channel.transform]]\ndrop_segment = \"NTE\"\n[[channel.transform]]\ntemplate = \"templates/siu.hl7\"",
            "channel `c`, transform 2: `template` builds the message",
        ),
        (
            "[[channel.transform]]\njs = \"nope.js\"",
            "channel `c`, transform 1: cannot read script ",
        ),
        (
            "[[channel.transform]]\njs_inline = \"  \"",
            "`js_inline` is empty",
        ),
    ];
    for (extra, want) in cases {
        let err = check_error(p, &format!("{extra}\n{DEST}"));
        assert!(err.contains(want), "{extra}\n  got: {err}\n  want: {want}");
    }
    let err = check_error(
        p,
        &format!("[[channel.transform]]\ntemplate = \"templates/bad.hl7\"\n{DEST}"),
    );
    assert!(
        err.contains("bad.hl7, line 2: unknown filter `nope`"),
        "{err}"
    );
}

#[test]
fn destination_errors_name_the_destination() {
    let dir = files();
    let p = dir.path();
    let err = check_error(
        p,
        &format!("{DEST}    [[channel.destination.transform]]\n    drop_segment = \"nte\"\n"),
    );
    assert!(
        err.starts_with(
            "channel `c`, destination d, transform 1: `drop_segment`: `nte` is not a segment id"
        ),
        "{err}"
    );
    let err = check_error(
        p,
        &format!(
            "{DEST}    [[channel.destination.transform]]\n    template = \"templates/siu.hl7\"\n"
        ),
    );
    assert!(
        err.starts_with("channel `c`, destination d, transform 1: `template`"),
        "{err}"
    );
    let err = check_error(
        p,
        &format!("{DEST}  encode = {{ template = \"templates/bad.json\" }}\n"),
    );
    assert!(
        err.starts_with("channel `c`, destination d, encode: template "),
        "{err}"
    );
    assert!(err.contains("a `{{` without its `}}`"), "{err}");
    let err = check_error(
        p,
        &format!("{DEST}  encode = {{ template = \"templates/none.json\" }}\n"),
    );
    assert!(
        err.contains("destination d, encode: cannot read template"),
        "{err}"
    );
}

#[test]
fn check_reports_transform_errors() {
    let dir = files();
    let config = config(
        dir.path(),
        &format!("[[channel.transform]]\nmap = {{ field = \"PV1-2\", table = \"tables/bad.csv\" }}\n{DEST}"),
    )
    .expect("loads");
    let err = crate::deploy::check(&config)
        .expect_err("refused")
        .to_string();
    assert!(
        err.starts_with("channel `c`, transform 1: code table "),
        "{err}"
    );
    let config = config_ok(dir.path());
    crate::deploy::check(&config).expect("a good channel passes");
}

fn config_ok(dir: &Path) -> Config {
    config(
        dir,
        &format!("[[channel.transform]]\nmap = {{ field = \"PV1-2\", table = \"tables/pc.csv\" }}\n{DEST}  encode = \"json\"\n"),
    )
    .expect("loads")
}
