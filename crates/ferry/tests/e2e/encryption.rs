//! Encryption at rest end to end, on the real binary: `ferry run` with `[store] encryption`
//! delivers the right bytes to a file destination while the store file holds no plaintext of
//! the patient; `ferry keys rotate` beside a running engine moves every record to the new key
//! so the old one can be removed; `ferry check` refuses a key of the wrong length.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Ferry, ferry_bin, send, toml_path, write_config};

const CANARY: &str = "CANARYSURNAME^WILHELMINA";
/// 32 bytes of 0x01, in hex.
const KEY_A_HEX: &str = "0101010101010101010101010101010101010101010101010101010101010101";
/// 32 bytes of 0x02, in base64.
const KEY_B_B64: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

fn message(control_id: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|HIS|GENERAL|FERRY|CLOUD|20261125083000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r\
         PID|1||{control_id}^^^GH^MR||{CANARY}||19800101|F\r\
         PV1|1|I|W^101^1\r"
    )
    .into_bytes()
}

/// A config with one channel (MLLP in, a `set` transform, a file destination) and the given
/// `encryption = …` value.
fn config(dir: &Path, encryption: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"[store]
path = {db}
encryption = {encryption}

[admin]
listen = "127.0.0.1:0"

[[channel]]
name = "adt"
source = {{ type = "mllp", listen = "127.0.0.1:0" }}

  [[channel.transform]]
  set = {{ field = "MSH-5", value = "ARCHIVE" }}

  [[channel.destination]]
  name = "files"
  type = "file"
  directory = {out}
"#,
            db = toml_path(&dir.join("ferry.db")),
            out = toml_path(&dir.join("out")),
        ),
    )
}

fn occurrences(db: &Path, needle: &[u8]) -> usize {
    ["", "-wal"]
        .iter()
        .filter_map(|suffix| {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            std::fs::read(Path::new(&name)).ok()
        })
        .map(|bytes| bytes.windows(needle.len()).filter(|w| *w == needle).count())
        .sum()
}

fn expected_delivery(control_id: &str) -> Vec<u8> {
    String::from_utf8(message(control_id))
        .expect("utf8")
        .replace("|FERRY|CLOUD|", "|ARCHIVE|CLOUD|")
        .into_bytes()
}

fn ferry_cli(args: &[&str], config: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(ferry_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .expect("run ferry");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_store_delivers_the_right_bytes_and_holds_no_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("store.key"), format!("{KEY_A_HEX}\n")).expect("key");
    let config = config(
        dir.path(),
        r#"{ key = "${file:store.key}", key_id = "2026-12" }"#,
    );
    let mut ferry = Ferry::start(&config, &[]);
    assert!(
        ferry.output().contains("encrypted, key `2026-12`"),
        "{}",
        ferry.output()
    );
    let mut conn = ferry.connect("adt").await;
    for i in 0..5 {
        let ack = send(&mut conn, &message(&format!("E{i}"))).await;
        assert_eq!(ack.code.as_str(), "AA");
    }
    let files = ferry.wait_files(&dir.path().join("out"), 5);
    let mut expected: Vec<Vec<u8>> = (0..5)
        .map(|i| expected_delivery(&format!("E{i}")))
        .collect();
    let mut got = files.clone();
    expected.sort();
    got.sort();
    assert_eq!(
        got, expected,
        "the destination gets the transformed plaintext"
    );
    let db = dir.path().join("ferry.db");
    assert_eq!(occurrences(&db, CANARY.as_bytes()), 0, "while running");
    assert!(ferry.terminate(), "{}", ferry.output());
    assert_eq!(occurrences(&db, CANARY.as_bytes()), 0, "after stopping");
    assert!(!ferry.output().contains(KEY_A_HEX));

    // Restarted without the key, the engine refuses the store instead of sending ciphertext.
    let plain = write_config(
        dir.path(),
        &std::fs::read_to_string(&config).expect("read").replace(
            "encryption = { key = \"${file:store.key}\", key_id = \"2026-12\" }\n",
            "",
        ),
    );
    let (ok, output) = ferry_cli(&["run"], &plain, &[]);
    assert!(!ok);
    assert!(
        output.contains("encrypted under key `2026-12`") && output.contains("without encryption"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_beside_a_running_engine_lets_the_old_key_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("OLD_KEY", KEY_A_HEX), ("NEW_KEY", KEY_B_B64)];
    let old_only = config(
        dir.path(),
        r#"{ key = "${env:OLD_KEY}", key_id = "2026-06" }"#,
    );
    let mut ferry = Ferry::start(&old_only, &env);
    let mut conn = ferry.connect("adt").await;
    for i in 0..20 {
        assert_eq!(
            send(&mut conn, &message(&format!("O{i}")))
                .await
                .code
                .as_str(),
            "AA"
        );
    }
    ferry.wait_files(&dir.path().join("out"), 20);
    assert!(ferry.terminate(), "{}", ferry.output());

    // New key current, old key kept for decryption; the engine runs and takes messages while
    // `ferry keys rotate` re-encrypts beside it.
    let both = config(
        dir.path(),
        r#"{ key = "${env:NEW_KEY}", key_id = "2026-12", old_keys = { "2026-06" = "${env:OLD_KEY}" } }"#,
    );
    let mut ferry = Ferry::start(&both, &env);
    let mut conn = ferry.connect("adt").await;
    let sender = tokio::spawn(async move {
        for i in 0..20 {
            assert_eq!(
                send(&mut conn, &message(&format!("N{i}")))
                    .await
                    .code
                    .as_str(),
                "AA"
            );
        }
    });
    let (ok, output) = ferry_cli(&["keys", "rotate", "--batch", "5"], &both, &env);
    assert!(ok, "{output}");
    assert!(
        output.contains("every record is under key `2026-12`"),
        "{output}"
    );
    sender.await.expect("sender");
    ferry.wait_files(&dir.path().join("out"), 40);
    assert!(ferry.terminate(), "{}", ferry.output());

    // The old key is gone from the configuration: everything still reads, nothing is left to
    // rotate, and the engine still starts.
    let new_only = config(
        dir.path(),
        r#"{ key = "${env:NEW_KEY}", key_id = "2026-12" }"#,
    );
    let (ok, output) = ferry_cli(&["keys", "rotate"], &new_only, &env);
    assert!(ok, "{output}");
    assert!(output.contains("0 records of"), "{output}");
    let mut ferry = Ferry::start(&new_only, &env);
    assert!(ferry.terminate(), "{}", ferry.output());
    assert_eq!(
        occurrences(&dir.path().join("ferry.db"), CANARY.as_bytes()),
        0
    );
    assert!(!output.contains(KEY_B_B64) && !output.contains(KEY_A_HEX));
}

#[test]
fn check_refuses_a_key_of_the_wrong_length() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 16 bytes: an AES-128 key.
    let short = "AwMDAwMDAwMDAwMDAwMDAw==";
    let config = config(dir.path(), r#"{ key = "${env:SHORT}", key_id = "k1" }"#);
    let (ok, output) = ferry_cli(&["check"], &config, &[("SHORT", short)]);
    assert!(!ok, "{output}");
    assert!(output.contains("key `k1` is 16 bytes"), "{output}");
    assert!(!output.contains(short), "the key never prints: {output}");
    let (ok, output) = ferry_cli(&["check"], &config, &[("SHORT", KEY_B_B64)]);
    assert!(ok, "{output}");
}
