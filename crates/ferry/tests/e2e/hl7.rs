//! `ferry hl7`: parse, get, to-json and from-json on real files, through the real binary.

use crate::common;

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use common::{adt, ferry_bin};

fn hl7(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(ferry_bin())
        .arg("hl7")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry hl7");
    let written = child.stdin.take().expect("stdin").write_all(stdin);
    // A command that refuses its arguments exits without reading its input: a closed pipe
    // is its answer, not the test's failure (its exit status is checked by the caller).
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.expect("write stdin"),
    }
    child.wait_with_output().expect("ferry hl7")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn get_prints_decoded_values_and_states() {
    let mut message = adt("MSG1");
    message.extend_from_slice(b"NTE|1||a \\F\\ b\r");
    let out = hl7(&["get", "-", "PID-5.1"], &message);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "DOE\n");

    let out = hl7(
        &["get", "-", "NTE-3", "PID-5.2", "PID-40", "--json"],
        &message,
    );
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["value"], "a | b");
    assert_eq!(v[1]["value"], "JANE");
    assert_eq!(v[2]["state"], "absent");

    let out = hl7(&["get", "-", "NTE-3", "--raw"], &message);
    assert_eq!(stdout(&out), "a \\F\\ b\n");

    let out = hl7(&["get", "-", "PID-0"], &message);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid HL7 path"));
}

#[test]
fn parse_shows_segments_fields_and_components() {
    let out = hl7(&["parse", "-"], &adt("MSG7"));
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.starts_with("message 1 of 1: ADT^A01^ADT_A01, MSH-10 MSG7"),
        "{text}"
    );
    assert!(text.contains("PID-5.1"), "{text}");
    assert!(text.contains("JANE"), "{text}");

    let out = hl7(&["parse", "-", "--json"], &adt("MSG7"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["control_id"], "MSG7");

    let out = hl7(&["parse", "-"], b"this is not HL7");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("does not start with an MSH segment"),
        "{out:?}"
    );
}

const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/corpus/messages"
);

#[test]
fn validate_reports_issues_with_field_names_and_exit_status() {
    let good =
        std::fs::read(format!("{CORPUS}/microsoft-fhir-converter/ADT-A01-02.hl7")).expect("corpus");
    let out = hl7(&["validate", "-"], &good);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("valid as v2.8 (0 errors"),
        "{}",
        stdout(&out)
    );

    // PID-3 and PID-5 are required in v2.5.1; an unknown segment in the middle of an ADT.
    let bad = b"MSH|^~\\&|A|B|C|D|20261125||ADT^A01^ADT_A01|X1|P|2.5.1\rEVN|A01|20261125\rPID|1\rPV1|1|I\r";
    let out = hl7(&["validate", "-"], bad);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("PID-5 (Patient Name) is required"), "{text}");
    let out = hl7(&["validate", "-", "--json"], bad);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["valid"], false);
    assert!(
        v[0]["issues"]
            .as_array()
            .is_some_and(|i| i.iter().any(|i| i["code"] == "RequiredFieldMissing"))
    );

    let out = hl7(&["validate", "-"], b"  \n");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty input"));
}

#[test]
fn parse_names_fields_and_get_decodes_the_declared_charset() {
    let out = hl7(&["parse", "-"], &adt("N1"));
    assert!(stdout(&out).contains("Patient Name"), "{}", stdout(&out));
    let dir = format!("{CORPUS}/ssmix2-jp/999/901/9999013/-/ADT-00");
    let file = std::fs::read_dir(&dir)
        .expect("ssmix2 dir")
        .flatten()
        .next()
        .expect("a file")
        .path();
    let bytes = std::fs::read(file).expect("read");
    // ISO-2022-JP, read raw: the parser follows the shift state, get decodes MSH-18.
    let out = hl7(&["get", "-", "PID-5(1).1", "PID-5(2).2"], &bytes);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "1\tPID-5(1).1\t患者\n1\tPID-5(2).2\tタロウ\n");
}

#[test]
fn json_round_trip_through_the_binary_is_byte_exact() {
    let mut file = adt("A");
    file.extend_from_slice(b"\n");
    file.extend_from_slice(
        &adt("B")
            .iter()
            .map(|b| if *b == b'\r' { b'\n' } else { *b })
            .collect::<Vec<_>>(),
    );
    let out = hl7(&["to-json", "-"], &file);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    let back = hl7(&["from-json", "-"], &out.stdout);
    assert!(back.status.success(), "{back:?}");
    assert_eq!(back.stdout, file);

    let bad = hl7(
        &["from-json", "-"],
        br#"{"segments":[{"id":"PID","fields":[]}]}"#,
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("first segment must be MSH"));
}
