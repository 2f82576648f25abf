//! The script API, one function at a time: msg, segment views, maps, logger, router, and the
//! four script kinds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixtures are known good

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use ferry_script::{ScriptContext, ScriptErrorKind, ScriptKind, ScriptLimits, Scripts, Source};
use serde_json::json;

#[test]
fn msg_get_reads_components_repetitions_and_decodes_escapes() {
    let ctx = ok(r#"
        channelMap.put("name", msg.get("PID-5.1"));
        channelMap.put("given", msg.get("PID.5.2"));
        channelMap.put("id2", msg.get("PID-3(2).1"));
        channelMap.put("id", msg.get("PID-3.1"));
        channelMap.put("street", msg.get("PID-11.1"));
        channelMap.put("obx2", msg.get("OBX[2]-5"));
        channelMap.put("absent", msg.get("ZZZ-1"));
        channelMap.put("empty", msg.get("PID-2"));
        channelMap.put("type", msg.get("MSH-9.2"));
    "#);
    assert_eq!(map(&ctx, "name"), r#""DOE""#);
    assert_eq!(map(&ctx, "given"), r#""JOHN""#);
    assert_eq!(map(&ctx, "id2"), r#""456""#);
    assert_eq!(map(&ctx, "id"), r#""123""#);
    assert_eq!(map(&ctx, "street"), r#""1 Main|St""#, "\\F\\ decoded");
    assert_eq!(map(&ctx, "obx2"), r#""two""#);
    assert_eq!(map(&ctx, "absent"), r#""""#);
    assert_eq!(map(&ctx, "empty"), r#""""#);
    assert_eq!(map(&ctx, "type"), r#""A01""#);
}

#[test]
fn msg_set_escapes_coerces_numbers_and_adds_what_is_missing() {
    let ctx = ok(r#"
        msg.set("PID-5.1", "SMITH|JONES");
        msg.set("PID-8", "F");
        msg.set("PV1-44", 20260102);
        msg.set("PID-30", true);
        msg.set("ZPI-2", "new");
    "#);
    assert_eq!(get(&ctx, "PID-5.1"), "SMITH|JONES");
    let raw = String::from_utf8_lossy(ctx.message.as_bytes()).into_owned();
    assert!(raw.contains("SMITH\\F\\JONES^JOHN"), "{raw}");
    assert_eq!(get(&ctx, "PID-8"), "F");
    assert_eq!(get(&ctx, "PV1-44"), "20260102");
    assert_eq!(get(&ctx, "PID-30"), "true");
    assert_eq!(get(&ctx, "ZPI-2"), "new");
}

#[test]
fn msg_set_errors_are_catchable_exceptions_with_a_clear_message() {
    let ctx = ok(r##"
        try { msg.set("PID-x", "a"); } catch (e) { channelMap.put("bad", e.message); }
        try { msg.set("MSH-1", "#"); } catch (e) { channelMap.put("msh", e.message); }
        try { msg.set("OBX[5]-1", "a"); } catch (e) { channelMap.put("gap", e.message); }
        try { msg.set("PID-5", undefined); } catch (e) { channelMap.put("undef", e.name + ": " + e.message); }
    "##);
    assert!(
        map(&ctx, "bad").contains("msg.set: invalid HL7 path `PID-x`"),
        "{}",
        map(&ctx, "bad")
    );
    assert!(
        map(&ctx, "msh").contains("MSH-1 and MSH-2"),
        "{}",
        map(&ctx, "msh")
    );
    assert!(map(&ctx, "gap").contains("OBX[5]"), "{}", map(&ctx, "gap"));
    assert!(
        map(&ctx, "undef").starts_with(r#""TypeError: msg.set: value is undefined"#),
        "{}",
        map(&ctx, "undef")
    );
    assert_eq!(
        get(&ctx, "PID-5.1"),
        "DOE",
        "a refused edit changes nothing"
    );
}

#[test]
fn set_null_delete_and_exists() {
    let ctx = ok(r#"
        msg.setNull("PID-8");
        channelMap.put("d1", msg.delete("PID-5.2"));
        channelMap.put("d2", msg.delete("ZZZ-1"));
        channelMap.put("d3", msg.delete("PID-3(1)"));
        channelMap.put("e1", msg.exists("PID-5.1"));
        channelMap.put("e2", msg.exists("PID-5.2"));
        channelMap.put("e3", msg.exists("ZZZ-1"));
        channelMap.put("e4", msg.exists("PID-8"));
    "#);
    let raw = String::from_utf8_lossy(ctx.message.as_bytes()).into_owned();
    assert!(raw.contains("|\"\"|"), "explicit null: {raw}");
    assert_eq!(get(&ctx, "PID-5.2"), "");
    assert_eq!(get(&ctx, "PID-5.3"), "Q");
    assert_eq!(
        get(&ctx, "PID-3.1"),
        "456",
        "the first repetition went, the second moved up"
    );
    assert_eq!(map(&ctx, "d1"), "true");
    assert_eq!(map(&ctx, "d2"), "false");
    assert_eq!(map(&ctx, "d3"), "true");
    assert_eq!(map(&ctx, "e1"), "true");
    assert_eq!(map(&ctx, "e2"), "false");
    assert_eq!(map(&ctx, "e3"), "false");
    assert_eq!(map(&ctx, "e4"), "true", "the explicit null is a value");
}

#[test]
fn count_and_segment_views() {
    let ctx = ok(r#"
        channelMap.put("obx", msg.count("OBX"));
        channelMap.put("none", msg.count("ZZZ"));
        const all = msg.segments();
        channelMap.put("ids", all.map(s => s.id).join(","));
        const obx = msg.segments("OBX");
        channelMap.put("views", obx.map(s => s.id + s.index + "@" + s.position).join(","));
        channelMap.put("values", obx.map(s => s.get("5")).join(","));
        obx[1].set("5.2", "x^y");
        channelMap.put("exists", obx[0].exists("3.1") && !obx[0].exists("9"));
        channelMap.put("text", String(obx[0]));
        obx[0].setNull("6");
        obx[0].delete("3");
    "#);
    assert_eq!(map(&ctx, "obx"), "2");
    assert_eq!(map(&ctx, "none"), "0");
    assert_eq!(map(&ctx, "ids"), r#""MSH,EVN,PID,NTE,PV1,OBX,OBX""#);
    assert_eq!(map(&ctx, "views"), r#""OBX1@5,OBX2@6""#);
    assert_eq!(map(&ctx, "values"), r#""one,two""#);
    assert_eq!(get(&ctx, "OBX[2]-5.2"), "x^y");
    assert_eq!(get(&ctx, "OBX[2]-5.1"), "two");
    assert_eq!(map(&ctx, "exists"), "true");
    assert_eq!(map(&ctx, "text"), r#""OBX|1|ST|A||one""#);
    assert_eq!(get(&ctx, "OBX-6"), "\"\"");
    assert_eq!(get(&ctx, "OBX-3"), "");
}

#[test]
fn add_remove_and_rename_segments() {
    let ctx = ok(r#"
        msg.addSegment("ZPI|1|x");
        msg.addSegment("ZAA|first", 1);
        channelMap.put("r1", msg.removeSegment("OBX", 2));
        channelMap.put("r2", msg.removeSegment("NTE"));
        channelMap.put("r3", msg.removeSegment("NTE"));
        const [evn] = msg.segments("EVN");
        channelMap.put("r4", msg.removeSegment(evn));
        channelMap.put("n1", msg.renameSegment("ZPI", "ZPX"));
        const [pv1] = msg.segments("PV1");
        channelMap.put("n2", msg.renameSegment(pv1, "ZV1"));
        try { msg.renameSegment("OBX", "obx"); } catch (e) { channelMap.put("bad", e.message); }
        try { msg.addSegment("ZPI|1", 0); } catch (e) { channelMap.put("first", e.message); }
        try { msg.removeSegment("MSH"); } catch (e) { channelMap.put("msh", e.message); }
    "#);
    let ids: Vec<String> = ctx
        .message
        .message()
        .segments()
        .map(|s| s.id_str().to_owned())
        .collect();
    assert_eq!(ids, ["MSH", "ZAA", "PID", "ZV1", "OBX", "ZPX"]);
    assert_eq!(get(&ctx, "ZPX-2"), "x");
    assert_eq!(get(&ctx, "OBX-5"), "one");
    assert_eq!(map(&ctx, "r1"), "1");
    assert_eq!(map(&ctx, "r2"), "1");
    assert_eq!(map(&ctx, "r3"), "0");
    assert_eq!(map(&ctx, "r4"), "1");
    assert_eq!(map(&ctx, "n1"), "1");
    assert_eq!(map(&ctx, "n2"), "1");
    assert!(
        map(&ctx, "bad").contains("not a segment id"),
        "{}",
        map(&ctx, "bad")
    );
    assert!(
        map(&ctx, "first").contains("msg.addSegment"),
        "{}",
        map(&ctx, "first")
    );
    assert!(
        map(&ctx, "msh").contains("msg.removeSegment"),
        "{}",
        map(&ctx, "msh")
    );
}

#[test]
fn to_string_and_to_json() {
    let ctx = ok(r#"
        channelMap.put("er7", msg.toString());
        channelMap.put("same", String(msg) === msg.toString());
        const j = msg.toJSON();
        channelMap.put("json", typeof j === "object" && j !== null);
        channelMap.put("roundtrip", JSON.stringify(msg) === JSON.stringify(j));
    "#);
    assert_eq!(
        map(&ctx, "er7"),
        serde_json::Value::String(ADT.to_owned()).to_string()
    );
    assert_eq!(map(&ctx, "same"), "true");
    assert_eq!(map(&ctx, "json"), "true");
    assert_eq!(map(&ctx, "roundtrip"), "true");
    // The JSON form is Ferry's lossless one: it goes back to the same bytes.
    let scripts = scripts();
    let s = compile(
        &scripts,
        ScriptKind::Transform,
        "channelMap.put('j', JSON.stringify(msg));",
    );
    let mut c = context();
    scripts.transform(&s, &mut c).unwrap();
    let text = c.channel_map["j"].as_str().unwrap().to_owned();
    assert_eq!(
        ferry_hl7::json::from_json_str(&text).unwrap(),
        ADT.as_bytes()
    );
}

#[test]
fn channel_map_both_spellings_values_and_carrying_across_steps() {
    let scripts = scripts();
    let first = compile(
        &scripts,
        ScriptKind::Transform,
        r#"
        channelMap.put("a", {n: 1, list: ["x", 2]});
        $c("b", "two");
        channelMap.put("gone", 1);
        channelMap.remove("gone");
        "#,
    );
    let second = compile(
        &scripts,
        ScriptKind::Transform,
        r#"
        const a = channelMap.get("a");
        a.n = 99; // a copy: the stored value does not change
        channelMap.put("seen", [channelMap.get("a").n, $c("b"), channelMap.containsKey("b"),
            channelMap.containsKey("gone"), channelMap.get("nope") === undefined,
            channelMap.keys().join(","), channelMap.get("pre")]);
        try { channelMap.put("f", () => 1); } catch (e) { channelMap.put("fn", e.name); }
        "#,
    );
    let mut ctx = context();
    ctx.channel_map
        .insert("pre".into(), json!("from the engine"));
    scripts.transform(&first, &mut ctx).unwrap();
    scripts.transform(&second, &mut ctx).unwrap();
    assert_eq!(ctx.channel_map["a"], json!({"n": 1, "list": ["x", 2]}));
    assert_eq!(ctx.channel_map["b"], json!("two"));
    assert_eq!(
        ctx.channel_map["seen"],
        json!([1, "two", true, false, true, "a,b,pre", "from the engine"])
    );
    assert_eq!(ctx.channel_map["fn"], json!("TypeError"));
    assert!(!ctx.channel_map.contains_key("gone"));
}

#[test]
fn source_map_is_read_only_and_config_map_reads_config() {
    let scripts = scripts();
    let s = compile(
        &scripts,
        ScriptKind::Transform,
        r#"
        channelMap.put("addr", sourceMap.get("remote_address"));
        channelMap.put("addr2", $s("remote_address"));
        channelMap.put("skeys", sourceMap.keys());
        try { sourceMap.put("x", 1); } catch (e) { channelMap.put("ro", e.message); }
        channelMap.put("fac", configMap.get("facility"));
        channelMap.put("fac2", $cfg("facility"));
        channelMap.put("ckeys", configMap.keys());
        channelMap.put("none", configMap.get("missing") === undefined && !configMap.containsKey("missing"));
        "#,
    );
    let mut ctx = context();
    ctx.source_map
        .insert("remote_address".into(), json!("10.0.0.7:51000"));
    scripts.transform(&s, &mut ctx).unwrap();
    assert_eq!(ctx.channel_map["addr"], json!("10.0.0.7:51000"));
    assert_eq!(ctx.channel_map["addr2"], json!("10.0.0.7:51000"));
    assert_eq!(ctx.channel_map["skeys"], json!(["remote_address"]));
    assert_eq!(ctx.channel_map["ro"], json!("sourceMap is read-only"));
    assert_eq!(ctx.channel_map["fac"], json!("NORTH"));
    assert_eq!(ctx.channel_map["fac2"], json!("NORTH"));
    assert_eq!(ctx.channel_map["ckeys"], json!(["facility", "token"]));
    assert_eq!(ctx.channel_map["none"], json!(true));
    assert_eq!(
        ctx.source_map.len(),
        1,
        "the source map is handed back unchanged"
    );
}

#[test]
fn router_route_collects_messages_for_the_engine() {
    let ctx = ok(r#"
        router.route("billing", "MSH|^~\\&|X\rPID|1\r");
        router.route("archive", msg);
        try { router.route(1, "x"); } catch (e) { channelMap.put("bad", e.name); }
        try { router.route("x"); } catch (e) { channelMap.put("missing", e.name); }
    "#);
    assert_eq!(ctx.routed.len(), 2);
    assert_eq!(ctx.routed[0].channel, "billing");
    assert_eq!(ctx.routed[0].message, b"MSH|^~\\&|X\rPID|1\r");
    assert_eq!(ctx.routed[1].channel, "archive");
    assert_eq!(ctx.routed[1].message, ADT.as_bytes());
    assert_eq!(map(&ctx, "bad"), r#""TypeError""#);
    assert_eq!(map(&ctx, "missing"), r#""TypeError""#);
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Run `logger` calls with a subscriber that records events at `max` and above.
fn logged(phi_at_info: bool, max: tracing::Level) -> String {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(max)
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let scripts = Scripts::new(
            Vec::new(),
            Default::default(),
            ScriptLimits::default(),
            phi_at_info,
        )
        .unwrap();
        let s = compile(
            &scripts,
            ScriptKind::Transform,
            r#"logger.debug("d-line"); logger.info("patient", msg.get("PID-5.1"), 42);
               logger.warn("w-line"); logger.error("e-line");"#,
        );
        let mut ctx = context();
        ctx.message_id = Some(7);
        scripts.transform(&s, &mut ctx).unwrap();
    });
    let bytes = out.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn logger_keeps_script_output_at_debug_unless_phi_is_allowed_at_info() {
    let info = logged(false, tracing::Level::INFO);
    assert!(!info.contains("patient"), "PHI must not reach INFO: {info}");
    assert!(!info.contains("e-line"), "{info}");

    let debug = logged(false, tracing::Level::DEBUG);
    for line in ["d-line", "patient DOE 42", "w-line", "e-line"] {
        let found = debug
            .lines()
            .find(|l| l.contains(line))
            .unwrap_or_else(|| panic!("{line} in {debug}"));
        assert!(found.contains("DEBUG"), "{found}");
        assert!(found.contains("channel=\"adt\""), "{found}");
        assert!(found.contains("message_id=7"), "{found}");
    }

    let allowed = logged(true, tracing::Level::INFO);
    assert!(!allowed.contains("d-line"), "{allowed}");
    let level = |text: &str| {
        allowed
            .lines()
            .find(|l| l.contains(text))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert!(level("patient DOE 42").contains(" INFO "), "{allowed}");
    assert!(level("w-line").contains(" WARN "), "{allowed}");
    assert!(level("e-line").contains("ERROR"), "{allowed}");
}

#[test]
fn filters_return_truthy_to_accept() {
    assert_eq!(
        filter(r#"return msg.get("PV1-2") === "I";"#).ok(),
        Some(true)
    );
    assert_eq!(
        filter(r#"return msg.get("PV1-2") === "O";"#).ok(),
        Some(false)
    );
    assert_eq!(filter("return 'yes';").ok(), Some(true));
    assert_eq!(filter("return 0;").ok(), Some(false));
    assert_eq!(filter("return {};").ok(), Some(true));
    assert_eq!(
        filter("msg.get('PID-1');").ok(),
        Some(false),
        "no return rejects"
    );
    assert_eq!(
        filter("return Promise.resolve(false);").ok(),
        Some(true),
        "an object is truthy"
    );
}

#[test]
fn preprocessors_rewrite_the_raw_text() {
    let scripts = scripts();
    let mut ctx = context();
    let fix = compile(
        &scripts,
        ScriptKind::Preprocessor,
        r#"return message.replace(/\n/g, "\r");"#,
    );
    let out = scripts
        .preprocess(&fix, "MSH|^~\\&|A\nPID|1\n", &mut ctx)
        .unwrap();
    assert_eq!(out, "MSH|^~\\&|A\rPID|1\r");

    let same = compile(
        &scripts,
        ScriptKind::Preprocessor,
        "if (message.length > 1000) return 'x';",
    );
    assert_eq!(
        scripts.preprocess(&same, "MSH|x", &mut ctx).unwrap(),
        "MSH|x"
    );

    let bad = compile(&scripts, ScriptKind::Preprocessor, "return 42;");
    let err = scripts.preprocess(&bad, "MSH|x", &mut ctx).unwrap_err();
    assert_eq!(err.kind, ScriptErrorKind::Runtime);
    assert!(err.message.contains("must return a string"), "{err}");

    let no_msg = compile(
        &scripts,
        ScriptKind::Preprocessor,
        "\nreturn msg.get('PID-1');",
    );
    let err = scripts.preprocess(&no_msg, "MSH|x", &mut ctx).unwrap_err();
    assert!(
        err.message.contains("not available in a preprocessor"),
        "{err}"
    );
    assert_eq!(err.line, Some(2));
    assert_eq!(get(&ctx, "PID-5.1"), "DOE", "ctx.message is untouched");
}

#[test]
fn response_transformers_see_and_replace_the_response() {
    let scripts = scripts();
    let s = compile(
        &scripts,
        ScriptKind::ResponseTransform,
        r#"channelMap.put("ack", response.split("|")[0]); msg.set("ZRS-1", "seen");
           return response.replace("AA", "CA");"#,
    );
    let mut ctx = context();
    ctx.response = Some(b"MSA|AA|MSG1".to_vec());
    scripts.transform(&s, &mut ctx).unwrap();
    assert_eq!(ctx.response.as_deref(), Some(&b"MSA|CA|MSG1"[..]));
    assert_eq!(map(&ctx, "ack"), r#""MSA""#);
    assert_eq!(get(&ctx, "ZRS-1"), "seen");

    let keep = compile(
        &scripts,
        ScriptKind::ResponseTransform,
        "channelMap.put('r', response === undefined);",
    );
    let mut ctx = context();
    scripts.transform(&keep, &mut ctx).unwrap();
    assert_eq!(ctx.response, None);
    assert_eq!(map(&ctx, "r"), "true");
}

#[test]
fn a_script_must_be_run_by_its_own_kind() {
    let scripts = scripts();
    let f = compile(&scripts, ScriptKind::Filter, "return true;");
    let err = scripts.transform(&f, &mut context()).unwrap_err();
    assert_eq!(err.kind, ScriptErrorKind::Usage);
    let t = compile(&scripts, ScriptKind::Transform, "");
    assert_eq!(
        scripts.filter(&t, &mut context()).unwrap_err().kind,
        ScriptErrorKind::Usage
    );
    assert_eq!(
        scripts
            .preprocess(&t, "x", &mut context())
            .unwrap_err()
            .kind,
        ScriptErrorKind::Usage
    );
    assert_eq!(t.kind(), ScriptKind::Transform);
    assert_eq!(t.name(), "test.js");
}

#[test]
fn locals_do_not_leak_between_messages_and_strict_mode_stops_accidental_globals() {
    let scripts = scripts();
    let s = compile(
        &scripts,
        ScriptKind::Transform,
        r#"var seen; let n = (typeof counter === "undefined") ? 0 : 1;
           channelMap.put("state", [seen === undefined, n]); seen = 1;
           try { counter = 1; } catch (e) { channelMap.put("strict", e.name); }"#,
    );
    for _ in 0..2 {
        let mut ctx = context();
        scripts.transform(&s, &mut ctx).unwrap();
        assert_eq!(ctx.channel_map["state"], json!([true, 0]));
        assert_eq!(ctx.channel_map["strict"], json!("ReferenceError"));
    }
    // The API objects cannot be replaced either.
    let ctx = ok(
        r#"try { msg.get = () => "x"; } catch (e) { channelMap.put("frozen", e.name); }
                    try { msg = 1; } catch (e) { channelMap.put("const", e.name); }"#,
    );
    assert_eq!(map(&ctx, "frozen"), r#""TypeError""#);
    assert_eq!(map(&ctx, "const"), r#""TypeError""#);
}

#[test]
fn libraries_are_shared_by_every_script() {
    let scripts = scripts_with(
        vec![
            Source::new(
                "lib/names.js",
                "function upper(s) { return s.toUpperCase(); }\nvar SUFFIX = '!';",
            ),
            Source::new(
                "lib/more.js",
                "function shout(s) { return upper(s) + SUFFIX; }",
            ),
        ],
        ScriptLimits::default(),
    );
    let s = compile(
        &scripts,
        ScriptKind::Transform,
        r#"msg.set("PID-5.2", shout(msg.get("PID-5.2")));"#,
    );
    let mut ctx = ScriptContext::new(message(ADT), "adt");
    scripts.transform(&s, &mut ctx).unwrap();
    assert_eq!(get(&ctx, "PID-5.2"), "JOHN!");
}

#[test]
fn scripts_run_on_many_threads_at_once() {
    let scripts = scripts_with(
        vec![Source::new("lib.js", "var K = 'k';")],
        ScriptLimits::default(),
    );
    let s = compile(
        &scripts,
        ScriptKind::Transform,
        r#"msg.set("PID-2", K + msg.get("PID-1"));"#,
    );
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let (scripts, s) = (scripts.clone(), s.clone());
            std::thread::spawn(move || {
                for i in 0..50 {
                    let mut ctx = context();
                    let n = format!("{t}-{i}");
                    ctx.message.set("PID-1", &n).unwrap();
                    scripts.transform(&s, &mut ctx).unwrap();
                    assert_eq!(get(&ctx, "PID-2"), format!("k{n}"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn async_code_runs_to_completion_within_the_call() {
    let ctx = ok(r#"
        (async () => { await null; channelMap.put("later", "done"); })();
        Promise.resolve(1).then(v => msg.set("PID-2", String(v + 1)));
    "#);
    assert_eq!(map(&ctx, "later"), r#""done""#);
    assert_eq!(get(&ctx, "PID-2"), "2");
}

#[test]
fn msg_reads_and_writes_in_the_msh_18_charset() {
    let mut bytes =
        b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5|||||FR|8859/1\rPID|1||1||Ren".to_vec();
    bytes.extend_from_slice(&[0xE9]); // é in ISO-8859-1
    bytes.extend_from_slice(b"^Zo\r");
    let scripts = scripts();
    let s = compile(
        &scripts,
        ScriptKind::Transform,
        r#"channelMap.put("name", msg.get("PID-5.1"));
           msg.set("PID-5.2", "Zoë");
           try { msg.set("PID-5.3", "日本"); } catch (e) { channelMap.put("bad", e.message); }
           channelMap.put("text", msg.toString().includes("Zoë"));"#,
    );
    let mut ctx = ScriptContext::new(ferry_hl7::MessageBuf::parse(bytes).unwrap(), "c");
    scripts.transform(&s, &mut ctx).unwrap();
    assert_eq!(ctx.channel_map["name"], json!("René"));
    assert!(
        ctx.message.as_bytes().ends_with(b"^Zo\xEB\r"),
        "written as Latin-1: {:?}",
        ctx.message.as_bytes()
    );
    let bad = ctx.channel_map["bad"].as_str().unwrap_or_default();
    assert!(bad.starts_with("msg.set:"), "{bad}");
    assert_eq!(ctx.channel_map["text"], json!(true));
}

#[test]
fn the_example_transform_of_the_crate_docs_runs() {
    let mut config = std::collections::BTreeMap::new();
    config.insert("receiver".to_owned(), "SCHEDULER".to_owned());
    let scripts = Scripts::new(Vec::new(), config, ScriptLimits::default(), false).unwrap();
    let s = compile(
        &scripts,
        ScriptKind::Transform,
        r#"const SEX = {M: "male", F: "female"};
msg.set("MSH-5", configMap.get("receiver"));
msg.set("PID-2", msg.get("PID-3.1"));
msg.set("PID-8", SEX[msg.get("PID-8")] || "unknown");
// Views address OBX[index]: remove from the last one back so the others stay valid.
for (const obx of msg.segments("OBX").reverse()) {
    if (!obx.exists("5")) msg.removeSegment(obx);
}
if (msg.get("PV1-2") === "E") router.route("emergency", msg);
$c("patient", msg.get("PID-3.1"));"#,
    );
    let text = ADT
        .replace("OBX|2|ST|B||two", "OBX|2|ST|B||")
        .replace("PV1|1|I", "PV1|1|E");
    let mut ctx = ScriptContext::new(message(&text), "adt");
    scripts.transform(&s, &mut ctx).unwrap();
    assert_eq!(get(&ctx, "MSH-5"), "SCHEDULER");
    assert_eq!(get(&ctx, "PID-2"), "123");
    assert_eq!(get(&ctx, "PID-8"), "male");
    assert_eq!(
        ctx.message
            .message()
            .segments()
            .filter(|s| s.id() == b"OBX")
            .count(),
        1
    );
    assert_eq!(get(&ctx, "OBX-5"), "one");
    assert_eq!(ctx.routed.len(), 1);
    assert_eq!(ctx.channel_map["patient"], json!("123"));
}
