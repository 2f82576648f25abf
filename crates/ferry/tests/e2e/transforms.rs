//! `ferry check` on `[[channel.transform]]` steps: files named by steps are read relative to
//! the configuration file, and a bad one is reported with channel, transform number and line.

use crate::common;

use std::process::Command;

use common::{ferry_bin, write_config};

const CONFIG: &str = r#"[store]
path = "data/ferry.db"

[[channel]]
name = "adt"
source = { type = "mllp", listen = "127.0.0.1:0" }

  [[channel.transform]]
  set = { field = "MSH-5", value = "SCHEDULER" }

  [[channel.transform]]
  map = { field = "PV1-2", table = "tables/patient-class.csv", default = "U" }

  [[channel.destination]]
  name = "api"
  type = "file"
  directory = "out"
  encode = { template = "templates/patient.json" }
"#;

fn check(dir: &std::path::Path) -> (bool, String, String) {
    let config = write_config(dir, CONFIG);
    let out = Command::new(ferry_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("run ferry check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_reads_tables_and_templates_and_reports_their_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    std::fs::create_dir_all(p.join("tables")).expect("mkdir");
    std::fs::create_dir_all(p.join("templates")).expect("mkdir");
    std::fs::write(p.join("tables/patient-class.csv"), "from,to\nI,IN\nO,OUT\n").expect("write");
    std::fs::write(p.join("templates/patient.json"), r#"{"mrn":"{{PID-3.1}}"}"#).expect("write");
    let (ok, stdout, stderr) = check(p);
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("ok (1 channel)"), "{stdout}");

    std::fs::write(p.join("tables/patient-class.csv"), "from,to\nI,IN\nI,OUT\n").expect("write");
    let (ok, _, stderr) = check(p);
    assert!(!ok);
    assert!(
        stderr.contains("channel `adt`, transform 2: code table ")
            && stderr.contains("patient-class.csv, line 3: `I` is already mapped on line 2"),
        "{stderr}"
    );

    std::fs::write(p.join("tables/patient-class.csv"), "I,IN\n").expect("write");
    std::fs::write(
        p.join("templates/patient.json"),
        r#"{"mrn":"{{PID-3.1 | shout}}"}"#,
    )
    .expect("write");
    let (ok, _, stderr) = check(p);
    assert!(!ok);
    assert!(
        stderr.contains("channel `adt`, destination api, encode: template ")
            && stderr.contains("unknown filter `shout`"),
        "{stderr}"
    );

    std::fs::remove_file(p.join("tables/patient-class.csv")).expect("remove");
    let (ok, _, stderr) = check(p);
    assert!(!ok);
    assert!(
        stderr.contains("channel `adt`, transform 2: cannot read code table ")
            && stderr.contains("patient-class.csv"),
        "{stderr}"
    );
}
