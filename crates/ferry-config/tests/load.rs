//! Loading configurations: the product example, defaults, interpolation, and every kind of
//! error with its position.

use std::path::Path;
use std::rc::Rc;

use ferry_config::{Config, DestinationConfig, NakAction, SourceConfig};

const PRODUCT_EXAMPLE: &str = r#"[store]
path = "data/ferry.db"              # SQLite, the default; `url = "postgres://…"` for PostgreSQL

[admin]
listen = "127.0.0.1:8480"           # health, metrics, REST API, web console

[[channel]]
name = "adt-to-cloud"
source = { type = "mllp", listen = "0.0.0.0:2575" }

  [[channel.destination]]
  name = "cloud"
  type = "http"
  url = "https://api.example.com/hl7"
  tls = { ca = "certs/ca.pem", cert = "certs/client.pem", key = "certs/client.key" }
  headers = { Authorization = "Bearer ${env:CLOUD_TOKEN}" }
"#;

fn env(vars: &[(&str, &str)]) -> ferry_config::EnvLookup {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Rc::new(move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
}

fn load(text: &str) -> Result<Config, String> {
    Config::from_str_with_env(
        text,
        Path::new("/etc/ferry/ferry.toml"),
        env(&[("CLOUD_TOKEN", "t0k3n")]),
    )
    .map_err(|e| e.to_string())
}

const MINIMAL_CHANNEL: &str = "[[channel]]\nname = \"a\"\nsource = { type = \"mllp\", listen = \"127.0.0.1:2575\" }\n\n  [[channel.destination]]\n  name = \"d\"\n  type = \"file\"\n  directory = \"out\"\n";

#[test]
fn the_product_example_loads_verbatim() {
    let config = load(PRODUCT_EXAMPLE).expect("loads");
    assert_eq!(config.store_path(), Path::new("/etc/ferry/data/ferry.db"));
    assert_eq!(config.admin.listen().to_string(), "127.0.0.1:8480");
    assert_eq!(config.channels.len(), 1);
    let channel = &config.channels[0];
    assert!(
        matches!(&channel.source, SourceConfig::Mllp(s) if s.listen.to_string() == "0.0.0.0:2575")
    );
    let DestinationConfig::Http(d) = &channel.destinations[0] else {
        panic!("http destination expected");
    };
    assert_eq!(d.url.as_str(), "https://api.example.com/hl7");
    assert_eq!(d.method, "POST");
    assert_eq!(d.headers["Authorization"].expose(), "Bearer t0k3n");
    let tls = d.tls.as_ref().expect("tls");
    assert_eq!(
        tls.ca.as_deref(),
        Some(Path::new("/etc/ferry/certs/ca.pem"))
    );
    assert!(
        !format!("{config:?}").contains("t0k3n"),
        "a secret leaked into Debug"
    );
    assert!(config.warnings().is_empty());
}

#[test]
fn defaults_are_documented_values() {
    let config = load(MINIMAL_CHANNEL).expect("loads");
    assert_eq!(config.store_path(), Path::new("/etc/ferry/data/ferry.db"));
    assert_eq!(config.admin.listen().to_string(), "127.0.0.1:8480");
    let SourceConfig::Mllp(s) = &config.channels[0].source else {
        panic!("mllp");
    };
    assert_eq!(s.max_frame_size.bytes(), 16 << 20);
    assert_eq!(s.read_timeout.get().as_secs(), 30);
    assert_eq!(s.idle_timeout.get().as_secs(), 600);
    assert_eq!(s.max_connections, 100);
    let retry = config.channels[0].destinations[0].retry();
    assert_eq!(
        (
            retry.initial.get().as_secs(),
            retry.max.get().as_secs(),
            retry.max_attempts
        ),
        (1, 300, 0)
    );
    let mllp = load(&MINIMAL_CHANNEL.replace(
        "type = \"file\"\n  directory = \"out\"",
        "type = \"mllp\"\n  address = \"his:2576\"",
    ))
    .expect("loads");
    let DestinationConfig::Mllp(d) = &mllp.channels[0].destinations[0] else {
        panic!("mllp");
    };
    assert!(d.keep_alive);
    assert_eq!(d.on_nak, NakAction::Retry);
    assert_eq!(d.response_timeout.get().as_secs(), 30);
}

#[test]
fn a_typo_is_an_error_with_line_and_suggestion() {
    let err = load(&MINIMAL_CHANNEL.replace("listen =", "listn =")).expect_err("typo");
    assert!(err.starts_with("/etc/ferry/ferry.toml:3:"), "{err}");
    assert!(err.contains("unknown field `listn`"), "{err}");
    assert!(err.contains("did you mean `listen`?"), "{err}");

    let err = load(&MINIMAL_CHANNEL.replace("directory =", "directroy =")).expect_err("typo");
    assert!(err.contains("did you mean `directory`?"), "{err}");

    let err =
        load(&MINIMAL_CHANNEL.replace("type = \"mllp\"", "type = \"mlp\"")).expect_err("variant");
    assert!(err.contains("unknown variant `mlp`"), "{err}");
    assert!(err.contains("did you mean `mllp`?"), "{err}");

    let err = load(&format!("[stor]\npath = \"x\"\n{MINIMAL_CHANNEL}")).expect_err("table");
    assert!(err.starts_with("/etc/ferry/ferry.toml:1:"), "{err}");
    assert!(err.contains("did you mean `store`?"), "{err}");
}

#[test]
fn values_with_their_own_syntax_explain_themselves() {
    let err = load(&MINIMAL_CHANNEL.replace(
        "listen = \"127.0.0.1:2575\"",
        "listen = \"127.0.0.1:2575\", read_timeout = 30",
    ))
    .expect_err("bare number");
    assert!(err.contains("durations are strings"), "{err}");
    let err =
        load(&MINIMAL_CHANNEL.replace("listen = \"127.0.0.1:2575\"", "listen = \"localhost\""))
            .expect_err("address");
    assert!(err.contains("expected IP:port"), "{err}");
    let err = load(&MINIMAL_CHANNEL.replace(
        "listen = \"127.0.0.1:2575\"",
        "listen = \"127.0.0.1:2575\", max_frame_size = \"big\"",
    ))
    .expect_err("size");
    assert!(err.contains("invalid size `big`"), "{err}");
}

#[test]
fn missing_secret_names_the_variable_and_line_but_no_value() {
    let err = Config::from_str_with_env(PRODUCT_EXAMPLE, Path::new("ferry.toml"), env(&[]))
        .expect_err("missing");
    let err = err.to_string();
    assert!(err.starts_with("ferry.toml:16:"), "{err}");
    assert!(
        err.contains("environment variable `CLOUD_TOKEN` is not set"),
        "{err}"
    );
}

#[test]
fn semantic_errors_name_channel_and_destination() {
    let twice = format!(
        "{MINIMAL_CHANNEL}\n{}",
        MINIMAL_CHANNEL.replace("2575", "2576")
    );
    assert!(
        load(&twice)
            .expect_err("dup")
            .contains("channel `a`: defined twice")
    );
    let no_dest =
        "[[channel]]\nname = \"a\"\nsource = { type = \"mllp\", listen = \"127.0.0.1:2575\" }\n";
    assert!(
        load(no_dest)
            .expect_err("no dest")
            .contains("has no destination")
    );
    let same_port = format!("[admin]\nlisten = \"127.0.0.1:2575\"\n{MINIMAL_CHANNEL}");
    assert!(
        load(&same_port)
            .expect_err("port")
            .contains("already used by [admin]")
    );
    let allow = MINIMAL_CHANNEL.replace(
        "listen = \"127.0.0.1:2575\"",
        "listen = \"127.0.0.1:2575\", tls = { cert = \"c\", key = \"k\", allowed_clients = [\"x\"] }",
    );
    assert!(
        load(&allow)
            .expect_err("allow")
            .contains("`allowed_clients` needs `client_ca`")
    );
    let http = MINIMAL_CHANNEL.replace(
        "type = \"file\"\n  directory = \"out\"",
        "type = \"http\"\n  url = \"ftp://x\"",
    );
    assert!(
        load(&http)
            .expect_err("url")
            .contains("destination `d`: url `ftp://x` must start with https://")
    );
    let plain = MINIMAL_CHANNEL.replace(
        "type = \"file\"\n  directory = \"out\"",
        "type = \"http\"\n  url = \"http://x/y\"",
    );
    assert_eq!(load(&plain).expect("plain http loads").warnings().len(), 1);
    let pg = format!("[store]\nurl = \"postgres://db/ferry\"\n{MINIMAL_CHANNEL}");
    let loaded = load(&pg).expect("postgres loads");
    assert!(loaded.store.url.is_some());
    let bad = format!("[store]\nurl = \"mysql://db/ferry\"\n{MINIMAL_CHANNEL}");
    let err = load(&bad).expect_err("not postgres");
    assert!(
        err.contains("/etc/ferry/ferry.toml:2:") && err.contains("postgres://"),
        "{err}"
    );
    let tls = format!(
        "[store]\nurl = \"postgres://db/ferry\"\n[store.tls]\nca = \"ca.pem\"\n{MINIMAL_CHANNEL}"
    );
    let loaded = load(&tls).expect("tls loads");
    let ca = loaded.store.tls.as_ref().and_then(|t| t.ca.clone());
    assert!(
        ca.is_some_and(|p| p.is_absolute()),
        "paths are made absolute"
    );
    let half = format!(
        "[store]\nurl = \"postgres://db/ferry\"\n[store.tls]\ncert = \"c.pem\"\n{MINIMAL_CHANNEL}"
    );
    assert!(
        load(&half)
            .expect_err("half")
            .contains("`cert` and `key` go together")
    );
    let unknown = format!(
        "[store]\nurl = \"postgres://db/ferry\"\n[store.tls]\nsslmode = \"x\"\n{MINIMAL_CHANNEL}"
    );
    assert!(
        load(&unknown).is_err(),
        "unknown [store.tls] fields are refused"
    );
    let mode = MINIMAL_CHANNEL.replace(
        "name = \"a\"\n",
        "name = \"a\"\nresponse = \"after-delivery\"\n",
    );
    load(&mode).expect("after-delivery relays the first destination by default");
    let unknown = MINIMAL_CHANNEL.replace(
        "name = \"a\"\n",
        "name = \"a\"\nresponse = \"after-delivery\"\nresponse_from = \"nope\"\n",
    );
    let err = load(&unknown).expect_err("unknown response_from");
    assert!(
        err.contains("response_from `nope` is not a destination"),
        "{err}"
    );
    let misplaced =
        MINIMAL_CHANNEL.replace("name = \"a\"\n", "name = \"a\"\nreject_filtered = true\n");
    let err = load(&misplaced).expect_err("reject_filtered without after-transform");
    assert!(err.contains("reject_filtered only applies"), "{err}");
}

#[test]
fn includes_add_channels_from_other_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("channels")).expect("dir");
    std::fs::write(dir.path().join("channels/a.toml"), MINIMAL_CHANNEL).expect("write");
    std::fs::write(
        dir.path().join("channels/b.toml"),
        MINIMAL_CHANNEL
            .replace("\"a\"", "\"b\"")
            .replace("2575", "2576"),
    )
    .expect("write");
    std::fs::write(dir.path().join("channels/ignored.txt"), "junk").expect("write");
    let main = dir.path().join("ferry.toml");
    std::fs::write(&main, "include = [\"channels/*.toml\"]\n").expect("write");
    let config = Config::load(&main).expect("loads");
    let names: Vec<&str> = config.channels.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    // Each channel's section comes from its own file.
    let b = config.channel_section("b").expect("section of b");
    assert!(b.starts_with("[[channel]]\n") && b.contains("2576"), "{b}");
    assert!(!b.contains("2575"), "{b}");
    assert_eq!(config.channel_section("nope"), None);
    std::fs::write(
        dir.path().join("channels/c.toml"),
        "[[channel]]\nname = \"c\"\nbogus = 1\n",
    )
    .expect("write");
    let err = Config::load(&main).expect_err("bad include").to_string();
    assert!(err.contains("c.toml:3:"), "{err}");
}

#[test]
fn a_missing_file_says_so() {
    let err = Config::load(Path::new("/nonexistent/ferry.toml"))
        .expect_err("missing")
        .to_string();
    assert!(
        err.contains("/nonexistent/ferry.toml: cannot read the file"),
        "{err}"
    );
}

#[test]
fn dedupe_is_off_by_default_and_its_window_is_checked() {
    let config = load(MINIMAL_CHANNEL).expect("loads");
    assert_eq!(config.channels[0].dedupe, None);
    let with = |table: &str| {
        load(&MINIMAL_CHANNEL.replace("source = {", &format!("dedupe = {table}\nsource = {{")))
    };
    let config = with("{ window = \"2h\" }").expect("loads");
    let window = config.channels[0].dedupe.as_ref().map(|d| d.window.get());
    assert_eq!(window, Some(std::time::Duration::from_secs(7200)));
    let config = with("{}").expect("loads");
    let window = config.channels[0].dedupe.as_ref().map(|d| d.window.get());
    assert_eq!(window, Some(std::time::Duration::from_secs(86_400)));
    let error = with("{ window = \"0s\" }").expect_err("zero window");
    assert!(
        error.contains("channel `a`: dedupe window must be longer than zero"),
        "{error}"
    );
    let error = with("{ windw = \"1h\" }").expect_err("typo");
    assert!(error.contains("windw"), "{error}");
}

#[test]
fn the_index_is_absent_by_default_and_its_keys_are_checked() {
    let config = load(MINIMAL_CHANNEL).expect("loads");
    assert_eq!(
        config.channels[0].index, None,
        "deploy indexes the MRN then"
    );
    let with = |table: &str| {
        load(&MINIMAL_CHANNEL.replace("source = {", &format!("index = {table}\nsource = {{")))
    };
    let config = with("{ mrn = \"PID-3.1\", visit_no = \"PV1-19\" }").expect("loads");
    let index = config.channels[0].index.as_ref().expect("index");
    let pairs: Vec<(&str, &str)> = index
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(pairs, [("mrn", "PID-3.1"), ("visit_no", "PV1-19")]);
    let config = with("{}").expect("loads");
    assert_eq!(config.channels[0].index.as_ref().map(|i| i.len()), Some(0));
    let error = with("{ \"mr:n\" = \"PID-3.1\" }").expect_err("colon");
    assert!(
        error.contains("channel `a`: index key `mr:n`: use 1 to 32 letters"),
        "{error}"
    );
    let many: Vec<String> = (0..17).map(|i| format!("k{i} = \"PID-3\"")).collect();
    let error = with(&format!("{{ {} }}", many.join(", "))).expect_err("17 keys");
    assert!(error.contains("index has 17 keys; at most 16"), "{error}");
}

#[test]
fn lanes_default_to_one_and_order_by_without_lanes_warns() {
    let config = load(MINIMAL_CHANNEL).expect("loads");
    let dest = &config.channels[0].destinations[0];
    assert_eq!((dest.workers(), dest.order_by()), (1, None));
    assert!(config.warnings().is_empty());
    let lone = MINIMAL_CHANNEL.to_owned() + "  order_by = \"PV1-19\"\n";
    let config = load(&lone).expect("loads");
    assert_eq!(
        config.channels[0].destinations[0].order_by(),
        Some("PV1-19")
    );
    assert!(
        config.warnings()[0].contains("order_by has no effect with workers = 1"),
        "{:?}",
        config.warnings()
    );
    let keyed = MINIMAL_CHANNEL.to_owned() + "  workers = 8\n";
    let config = load(&keyed).expect("loads");
    assert_eq!(config.channels[0].destinations[0].workers(), 8);
    let error = load(&(MINIMAL_CHANNEL.to_owned() + "  workers = 65\n")).expect_err("65");
    assert!(
        error.contains("destination `d`: workers must be between 1 and 64 (65 given)"),
        "{error}"
    );
}

const TRANSFORMS: &str = r#"[[channel]]
name = "adt-to-api"
source = { type = "mllp", listen = "127.0.0.1:2575" }

  [[channel.transform]]
  set = { field = "MSH-5", value = "SCHEDULER" }

  [[channel.transform]]
  set = { field = "PID-8", null = true }

  [[channel.transform]]
  copy = { from = "PID-3.1", to = "PID-2" }

  [[channel.transform]]
  delete = { field = "PV1-3" }

  [[channel.transform]]
  add_segment = { text = "ZPI|1", after = "PID" }

  [[channel.transform]]
  drop_segment = "NTE"

  [[channel.transform]]
  rename_segment = { from = "ZPI", to = "ZP1" }

  [[channel.transform]]
  map = { field = "PV1-2", table = "tables/patient-class.csv", default = "U" }

  [[channel.transform]]
  js = "transforms/adt.js"

  [[channel.transform]]
  js_inline = '''msg.set("PID-5.1", "DOE")'''

  [[channel.destination]]
  name = "api"
  type = "http"
  url = "https://api.example.com/adt"
  encode = { template = "templates/patient.json" }

    [[channel.destination.transform]]
    map = { field = "PID-8", table = "/srv/tables/sex.csv" }

  [[channel.destination]]
  name = "lossless"
  type = "file"
  directory = "out"
  encode = "json"

  [[channel.destination]]
  name = "mllp"
  type = "mllp"
  address = "127.0.0.1:2576"
"#;

#[test]
fn transforms_and_encodings_load_with_paths_resolved() {
    use ferry_config::{EncodeConfig, MapConfig, SetConfig, TransformConfig};
    use std::path::PathBuf;
    let config = load(TRANSFORMS).expect("loads");
    let channel = &config.channels[0];
    let t = &channel.transforms;
    assert_eq!(t.len(), 10);
    assert_eq!(
        t[0].set,
        Some(SetConfig {
            field: "MSH-5".into(),
            value: Some("SCHEDULER".into()),
            null: false
        })
    );
    assert!(
        t[1].set
            .as_ref()
            .is_some_and(|s| s.null && s.value.is_none())
    );
    assert_eq!(t[2].copy.as_ref().map(|c| c.to.as_str()), Some("PID-2"));
    assert_eq!(
        t[3].delete.as_ref().map(|d| d.field.as_str()),
        Some("PV1-3")
    );
    assert_eq!(
        t[4].add_segment.as_ref().and_then(|a| a.after.as_deref()),
        Some("PID")
    );
    assert_eq!(t[5].drop_segment.as_deref(), Some("NTE"));
    assert_eq!(
        t[6].rename_segment.as_ref().map(|r| r.to.as_str()),
        Some("ZP1")
    );
    assert_eq!(
        t[7].map,
        Some(MapConfig {
            field: "PV1-2".into(),
            table: PathBuf::from("/etc/ferry/tables/patient-class.csv"),
            default: Some("U".into()),
        })
    );
    assert_eq!(
        t[8].js.as_deref(),
        Some(Path::new("/etc/ferry/transforms/adt.js"))
    );
    assert_eq!(
        t[9].js_inline.as_deref(),
        Some("msg.set(\"PID-5.1\", \"DOE\")")
    );
    assert_eq!(
        t[9],
        TransformConfig {
            js_inline: t[9].js_inline.clone(),
            ..Default::default()
        },
        "one key per table"
    );
    let d = &channel.destinations;
    assert_eq!(
        d[0].encode(),
        &EncodeConfig::Template(PathBuf::from("/etc/ferry/templates/patient.json"))
    );
    assert_eq!(
        d[0].transforms()[0].map.as_ref().map(|m| m.table.clone()),
        Some(PathBuf::from("/srv/tables/sex.csv")),
        "absolute paths stay"
    );
    assert_eq!(d[1].encode(), &EncodeConfig::Json);
    assert!(d[1].transforms().is_empty());
    assert_eq!(d[2].encode(), &EncodeConfig::Hl7, "hl7 is the default");
}

#[test]
fn transform_typos_are_errors_with_suggestions() {
    let err = load(&TRANSFORMS.replace("drop_segment =", "drop_segmnt =")).expect_err("step key");
    assert!(err.contains("unknown field `drop_segmnt`"), "{err}");
    assert!(err.contains("did you mean `drop_segment`?"), "{err}");
    assert!(err.starts_with("/etc/ferry/ferry.toml:"), "{err}");

    let err =
        load(&TRANSFORMS.replace("field = \"PV1-2\"", "feild = \"PV1-2\"")).expect_err("inner");
    assert!(err.contains("did you mean `field`?"), "{err}");

    let err =
        load(&TRANSFORMS.replace("encode = \"json\"", "encode = \"jsn\"")).expect_err("encode");
    assert!(err.contains("unknown variant `jsn`"), "{err}");
    assert!(err.contains("did you mean `json`?"), "{err}");

    let err = load(&TRANSFORMS.replace("{ template = \"templates", "{ templat = \"templates"))
        .expect_err("encode table");
    assert!(err.contains("did you mean `template`?"), "{err}");

    let err =
        load(&TRANSFORMS.replace("encode = \"json\"", "encode = \"fhir\"")).expect_err("fhir");
    assert!(
        err.contains("encode = \"fhir\" is not supported by this version yet"),
        "{err}"
    );

    let err = load(&TRANSFORMS.replace("encode = \"json\"", "encode = 3")).expect_err("type");
    assert!(err.contains("\"hl7\", \"json\" or { template"), "{err}");
}

#[test]
fn listener_crls_resolve_relative_paths_and_need_client_ca() {
    let tls = MINIMAL_CHANNEL.replace(
        "listen = \"127.0.0.1:2575\"",
        "listen = \"127.0.0.1:2575\", tls = { cert = \"c.pem\", key = \"c.key\", client_ca = \"ca.pem\", \
         crl = [\"crl/ca.crl.pem\", \"/pki/root.crl\"] }",
    );
    let config = load(&tls).expect("a listener with CRLs loads");
    let SourceConfig::Mllp(source) = &config.channels[0].source else {
        panic!("mllp source");
    };
    let crl = &source.tls.as_ref().expect("tls").crl;
    assert_eq!(
        crl,
        &[
            Path::new("/etc/ferry/crl/ca.crl.pem").to_path_buf(),
            Path::new("/pki/root.crl").to_path_buf()
        ]
    );

    let without_ca = MINIMAL_CHANNEL.replace(
        "listen = \"127.0.0.1:2575\"",
        "listen = \"127.0.0.1:2575\", tls = { cert = \"c\", key = \"k\", crl = [\"x.crl\"] }",
    );
    assert!(
        load(&without_ca)
            .expect_err("crl without client_ca")
            .contains("`crl` needs `client_ca`")
    );
    let on_a_client = MINIMAL_CHANNEL.replace(
        "type = \"file\"\n  directory = \"out\"",
        "type = \"http\"\n  url = \"https://x/y\"\n  tls = { crl = [\"x.crl\"] }",
    );
    assert!(
        load(&on_a_client)
            .expect_err("crl on a client")
            .contains("`crl` are for listeners")
    );
}

#[test]
fn a_cluster_needs_the_postgresql_store() {
    let err = load("[cluster]\nenabled = true\n").expect_err("SQLite cannot be shared");
    assert!(err.contains("[store] url"), "{err}");
    let err = load("[cluster]\nlease_ttl = \"100ms\"\n").expect_err("too short");
    assert!(err.contains("lease_ttl"), "{err}");
    let err = load("[cluster]\nleases = 3\n").expect_err("unknown field");
    assert!(err.contains("leases"), "{err}");
}

#[test]
fn cluster_defaults() {
    let config = load("[cluster]\nnode_id = \"n1\"\n").expect("loads");
    assert!(!config.cluster.enabled);
    assert_eq!(config.cluster.lease_ttl(), ferry_config::DEFAULT_LEASE_TTL);
    assert_eq!(
        config.cluster.queue_poll(),
        ferry_config::DEFAULT_QUEUE_POLL
    );
    assert_eq!(
        config.cluster.node_id.as_ref().map(|t| t.as_str()),
        Some("n1")
    );
}

#[test]
fn retention_is_forever_by_default_and_channels_override_the_defaults_field_by_field() {
    use ferry_config::Retention;
    let day = |n: u64| Some(std::time::Duration::from_secs(n * 86_400));
    let config = load(MINIMAL_CHANNEL).expect("loads");
    assert!(config.retention_for(&config.channels[0]).is_forever());
    assert_eq!(config.retention.interval.get().as_secs(), 3600);
    assert_eq!(config.retention.batch, 1000);

    let text = format!(
        "[retention]\ncontent = \"30d\"\nmetadata = \"90d\"\ninterval = \"10m\"\nbatch = 500\n\n{}",
        MINIMAL_CHANNEL.replace(
            "source = {",
            "retention = { metadata = \"120d\", prune_errored = true }\nsource = {"
        )
    );
    let config = load(&text).expect("loads");
    assert_eq!(
        config.retention_for(&config.channels[0]),
        Retention {
            content: day(30),
            metadata: day(120),
            prune_errored: true,
            prune_queued: false,
        }
    );
    assert_eq!(config.retention.batch, 500);
    // "forever" keeps whatever [retention] says.
    let text = format!(
        "[retention]\nmetadata = \"90d\"\n\n{}",
        MINIMAL_CHANNEL.replace(
            "source = {",
            "retention = { metadata = \"forever\" }\nsource = {"
        )
    );
    let config = load(&text).expect("loads");
    assert!(config.retention_for(&config.channels[0]).is_forever());
}

#[test]
fn retention_errors_name_the_file_and_line() {
    let error = load(&MINIMAL_CHANNEL.replace(
        "source = {",
        "retention = { content = \"90d\", metadata = \"30d\" }\nsource = {",
    ))
    .expect_err("metadata shorter than content");
    assert!(error.starts_with("/etc/ferry/ferry.toml:2:"), "{error}");
    assert!(
        error.contains("channel `a`: retention: metadata"),
        "{error}"
    );
    let error = load(
        &MINIMAL_CHANNEL.replace("source = {", "retention = { content = \"0s\" }\nsource = {"),
    )
    .expect_err("zero");
    assert!(
        error.contains("content must be longer than zero"),
        "{error}"
    );
    let error = load(&MINIMAL_CHANNEL.replace(
        "source = {",
        "retention = { contents = \"1d\" }\nsource = {",
    ))
    .expect_err("unknown field");
    assert!(error.contains("contents"), "{error}");
    let error = load(&format!("[retention]\nbatch = 0\n\n{MINIMAL_CHANNEL}")).expect_err("batch");
    assert!(error.starts_with("/etc/ferry/ferry.toml:1:"), "{error}");
    assert!(
        error.contains("[retention]: batch must be 1 to 100000"),
        "{error}"
    );
    let error = load(&format!(
        "[retention]\ncontent = \"soon\"\n\n{MINIMAL_CHANNEL}"
    ))
    .expect_err("bad duration");
    assert!(error.contains("forever"), "{error}");
}

#[test]
fn store_tls_resolves_relative_paths_and_needs_cert_with_key() {
    let text = format!(
        "[store]\npath = \"ferry.db\"\ntls = {{ ca = \"pki/db-ca.pem\", cert = \"/pki/ferry.pem\", \
         key = \"ferry.key\" }}\n{MINIMAL_CHANNEL}"
    );
    let config = load(&text).expect("[store.tls] loads");
    assert_eq!(
        config.store.tls,
        Some(ferry_config::StoreTlsConfig {
            ca: Some(Path::new("/etc/ferry/pki/db-ca.pem").to_path_buf()),
            cert: Some(Path::new("/pki/ferry.pem").to_path_buf()),
            key: Some(Path::new("/etc/ferry/ferry.key").to_path_buf()),
        })
    );
    let table = format!("[store]\n[store.tls]\nca = \"ca.pem\"\n{MINIMAL_CHANNEL}");
    let config = load(&table).expect("a [store.tls] table loads");
    let tls = config.store.tls.expect("tls");
    assert_eq!(tls.ca, Some(Path::new("/etc/ferry/ca.pem").to_path_buf()));
    assert_eq!((tls.cert, tls.key), (None, None));

    let half = format!("[store]\ntls = {{ cert = \"c.pem\" }}\n{MINIMAL_CHANNEL}");
    assert!(
        load(&half)
            .expect_err("cert without key")
            .contains("`cert` and `key` go together"),
    );
    let typo = format!("[store]\ntls = {{ cafile = \"c.pem\" }}\n{MINIMAL_CHANNEL}");
    let err = load(&typo).expect_err("unknown key");
    assert!(err.contains("cafile"), "{err}");
}

#[test]
fn a_dedupe_window_longer_than_retention_is_a_warning() {
    let text = MINIMAL_CHANNEL.replace(
        "source = {",
        "dedupe = { window = \"2d\" }\nretention = { metadata = \"1d\" }\nsource = {",
    );
    let config = load(&text).expect("loads");
    assert!(
        config
            .warnings()
            .iter()
            .any(|w| w.contains("channel `a`") && w.contains("dedupe window")),
        "{:?}",
        config.warnings()
    );
}
