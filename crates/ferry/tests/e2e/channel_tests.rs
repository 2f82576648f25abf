//! `ferry test`: channel test cases run offline through the deployed pipeline, with a readable
//! diff and a non-zero exit on any mismatch.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{config_with_channels, ferry_bin, toml_path};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

const ADMIT: &str = "MSH|^~\\&|HIS|GH|FERRY|CLOUD|20261125083000||ADT^A01^ADT_A01|C1|P|2.5.1\nPID|1||42^^^GH^MR||DOE^JANE||19800101|F\nPV1|1|I|W^101^1\n";

fn channel(dir: &Path) -> std::path::PathBuf {
    config_with_channels(
        dir,
        &format!(
            r#"
[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.filter]]
  field = "MSH-9.1"
  equals = "ADT"

  [[channel.destination]]
  name = "archive"
  type = "file"
  directory = {}

  [[channel.destination]]
  name = "inpatients"
  type = "file"
  directory = {}

    [[channel.destination.filter]]
    field = "PV1-2"
    equals = "I"
"#,
            toml_path(&dir.join("a")),
            toml_path(&dir.join("b"))
        ),
    )
}

fn ferry_test(config: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(ferry_bin())
        .arg("test")
        .arg("--config")
        .arg(config)
        .args(extra)
        .output()
        .expect("run ferry test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn passing_cases_exit_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = channel(dir.path());
    let case = dir.path().join("tests/adt/admit");
    write(&case.join("input.hl7"), ADMIT);
    write(&case.join("expect/archive.hl7"), ADMIT);
    write(
        &case.join("expect/inpatients.hl7"),
        &ADMIT.replace("20261125083000||", "{{any}}||"),
    );
    let outpatient = dir.path().join("tests/adt/outpatient");
    write(
        &outpatient.join("input.hl7"),
        &ADMIT.replace("PV1|1|I|", "PV1|1|O|"),
    );
    write(
        &outpatient.join("expect/archive.hl7"),
        &ADMIT.replace("PV1|1|I|", "PV1|1|O|"),
    );
    write(&outpatient.join("expect/inpatients.filtered"), "");
    let lab = dir.path().join("tests/adt/not-adt");
    write(
        &lab.join("input.hl7"),
        &ADMIT.replace("ADT^A01^ADT_A01", "ORU^R01"),
    );
    write(&lab.join("expect/source.filtered"), "");
    let (code, out) = ferry_test(&config, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("adt/admit ... ok"), "{out}");
    assert!(out.contains("adt/outpatient ... ok"), "{out}");
    assert!(out.contains("3 cases: 3 passed, 0 failed"), "{out}");
}

#[test]
fn a_mismatch_shows_a_diff_and_exits_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = channel(dir.path());
    let case = dir.path().join("tests/adt/admit");
    write(&case.join("input.hl7"), ADMIT);
    write(
        &case.join("expect/archive.hl7"),
        &ADMIT.replace("DOE^JANE", "ROE^JANE"),
    );
    write(&case.join("expect/inpatients.filtered"), "");
    let (code, out) = ferry_test(&config, &["adt"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("adt/admit ... FAILED"), "{out}");
    assert!(
        out.contains("- PID|1||42^^^GH^MR||ROE^JANE||19800101|F")
            && out.contains("+ PID|1||42^^^GH^MR||DOE^JANE||19800101|F"),
        "the diff names the differing segment: {out}"
    );
    assert!(
        out.contains("inpatients: expected filtered, got a message to send"),
        "{out}"
    );
    let (code, out) = ferry_test(&config, &["--json"]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json report");
    assert_eq!(report[0]["passed"], false);
    assert_eq!(report[0]["failures"][0]["connector"], "archive");
}

#[test]
fn missing_expectations_and_cases_fail_rather_than_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = channel(dir.path());
    let (code, out) = ferry_test(&config, &[]);
    assert_eq!(code, 1, "no cases is not a pass: {out}");
    assert!(out.contains("no test cases found"), "{out}");
    let case = dir.path().join("tests/adt/admit");
    write(&case.join("input.hl7"), ADMIT);
    write(&case.join("expect/archive.hl7"), ADMIT);
    let (code, out) = ferry_test(&config, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("inpatients: expected an expectation"), "{out}");
    let (code, out) = ferry_test(&config, &["nope"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no enabled channel `nope`"), "{out}");
}

/// Regression: a case directory named after no channel was skipped in silence, so a typo in
/// its name (or a renamed channel) turned its cases into a pass.
#[test]
fn a_directory_named_after_no_channel_fails_instead_of_being_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_channels(
        dir.path(),
        &format!(
            r#"
[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "archive"
  type = "file"
  directory = {out}

[[channel]]
name = "old-feed"
enabled = false
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.destination]]
  name = "archive"
  type = "file"
  directory = {out}
"#,
            out = toml_path(&dir.path().join("out"))
        ),
    );
    for channel in ["adt", "old-feed"] {
        let case = dir.path().join(format!("tests/{channel}/admit"));
        write(&case.join("input.hl7"), ADMIT);
        write(&case.join("expect/archive.hl7"), ADMIT);
    }
    let (code, out) = ferry_test(&config, &[]);
    assert_eq!(code, 0, "a disabled channel's cases are skipped: {out}");
    assert!(out.contains("1 case: 1 passed, 0 failed"), "{out}");
    assert!(
        out.contains("channel `old-feed` is disabled; its cases were not run"),
        "{out}"
    );
    let typo = dir.path().join("tests/atd/admit");
    write(&typo.join("input.hl7"), ADMIT);
    write(&typo.join("expect/archive.hl7"), ADMIT);
    let (code, out) = ferry_test(&config, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("no channel `atd` in") && out.contains("its cases were not run"),
        "{out}"
    );
    let (code, out) = ferry_test(&config, &["adt"]);
    assert_eq!(
        code, 0,
        "testing one channel looks at its directory only: {out}"
    );
}
