//! Templates against corpus messages, escapes that must round-trip, and every syntax error.

use super::*;
use serde_json::json;

fn corpus(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../../shared/corpus/messages/microsoft-fhir-converter/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn render_json(template: &str, msg: &[u8]) -> Value {
    let t = JsonTemplate::parse(template, "t.json").expect("template parses");
    let m = Message::parse(msg).expect("message parses");
    let out = t.render(&m).expect("renders");
    serde_json::from_slice(&out).expect("output is JSON")
}

const SIU: &str = "MSH|^~\\&|FERRY|HOSP|SCHED|HOSP|{{ now }}||SIU^S12^SIU_S12|{{ control_id }}|P|2.5.1\n\
SCH|{{ appointment.id }}||||||{{ appointment.reason? }}\n\
PID|1||{{ patient.id }}^^^HOSP^MR||{{ patient.family | upper }}^{{ patient.given | default(\"UNKNOWN\") }}||{{ patient.birthDate | dtm }}\n\
{{#each results}}\n\
OBX|{{ @index1 }}|NM|{{ code }}||{{ value }}|{{ unit? }}|||||F|||{{ time | dtm }}\n\
{{/each}}\n";

fn siu_data() -> Value {
    json!({
        "appointment": { "id": "A-1" },
        "patient": { "id": 42, "family": "Doe", "given": null, "birthDate": "1980-01-02" },
        "results": [
            { "code": "GLU", "value": 5.4, "unit": "mmol/L", "time": "2026-12-02T14:30:00+01:00" },
            { "code": "NA", "value": 140, "time": "2026-12-02T14:31:05Z" }
        ]
    })
}

#[test]
fn hl7_template_renders_a_parseable_message() {
    let t = Hl7Template::parse(SIU, "siu.hl7").expect("parses");
    let out = t.render(&siu_data()).expect("renders");
    assert!(!out.contains(&b'\n'), "segments end with CR only");
    assert!(out.ends_with(b"\r"));
    let m = Message::parse(&out).expect("output parses");
    let get = |p: &str| m.get_str(p).expect("path").map(|c| c.into_owned());
    assert_eq!(m.segment_count(), 5);
    assert_eq!(get("SCH-1").as_deref(), Some("A-1"));
    assert_eq!(
        get("SCH-7").as_deref(),
        Some(""),
        "optional and missing is empty"
    );
    assert_eq!(
        get("PID-3.1").as_deref(),
        Some("42"),
        "numbers are written as JSON writes them"
    );
    assert_eq!(get("PID-5.1").as_deref(), Some("DOE"));
    assert_eq!(
        get("PID-5.2").as_deref(),
        Some("UNKNOWN"),
        "null takes the default"
    );
    assert_eq!(get("PID-7").as_deref(), Some("19800102"));
    assert_eq!(get("OBX-1").as_deref(), Some("1"));
    assert_eq!(get("OBX[2]-1").as_deref(), Some("2"));
    assert_eq!(get("OBX-5").as_deref(), Some("5.4"));
    assert_eq!(get("OBX[2]-5").as_deref(), Some("140"));
    assert_eq!(get("OBX-6").as_deref(), Some("mmol/L"));
    assert_eq!(get("OBX[2]-6").as_deref(), Some(""));
    assert_eq!(get("OBX-14").as_deref(), Some("20261202143000+0100"));
    assert_eq!(get("OBX[2]-14").as_deref(), Some("20261202143105+0000"));
    // now: an HL7 DTM in UTC; control_id: 20 digits, unique.
    let now = get("MSH-7").expect("now");
    assert_eq!(now.len(), 19, "{now}");
    assert!(
        now.ends_with("+0000") && Dtm::parse(now.as_bytes()).is_ok(),
        "{now}"
    );
    let id = get("MSH-10").expect("control id");
    assert_eq!(id.len(), 20);
    assert!(id.bytes().all(|b| b.is_ascii_digit()), "{id}");
    let again = Message::parse(&t.render(&siu_data()).expect("again"))
        .expect("parses")
        .control_id()
        .map(str::to_owned);
    assert_ne!(again.as_deref(), Some(id.as_str()));
}

#[test]
fn delimiters_in_json_values_are_escaped_and_read_back() {
    let t = Hl7Template::parse(
        "MSH|^~\\&|A|B|||1||ADT^A08|1|P|2.5\r\nPID|1||{{ id }}||{{ name }}^{{ given }}\r\nNTE|1||{{ note }}\r\n",
        "t.hl7",
    )
    .expect("parses");
    let hostile = [
        "|^~\\&",
        "a|b^c~d\\e&f",
        "line one\nline two",
        "cr\rinside",
        "\\F\\ looks like an escape",
        "{{ not a placeholder }}",
        "ünïcödé ✓",
        "",
    ];
    for value in hostile {
        let out = t
            .render(&json!({ "id": value, "name": value, "given": "G", "note": value }))
            .expect("renders");
        let m = Message::parse(&out).expect("parses");
        assert_eq!(m.segment_count(), 3, "{value:?} must not add segments");
        for path in ["PID-3", "PID-5.1", "NTE-3"] {
            let read = m.get_str(path).expect("path").map(|c| c.into_owned());
            assert_eq!(read.as_deref(), Some(value), "{path} of {value:?}");
        }
        assert_eq!(m.get_str("PID-5.2").expect("path").as_deref(), Some("G"));
    }
}

#[test]
fn hl7_template_uses_its_own_delimiters() {
    let t = Hl7Template::parse("MSH#*@!%#A\nPID#1##{{ v }}\n", "odd.hl7").expect("parses");
    let out = t.render(&json!({ "v": "x#y*z|" })).expect("renders");
    assert_eq!(out, b"MSH#*@!%#A\rPID#1##x!F!y!S!z|\r");
    let m = Message::parse(&out).expect("parses");
    assert_eq!(m.get_str("PID-3").expect("path").as_deref(), Some("x#y*z|"));
}

#[test]
fn nested_each_root_paths_this_and_index() {
    let t = Hl7Template::parse(
        "MSH|^~\\&|A|{{ $.site }}|||1||ORU^R01|1|P|2.5\n\
         {{#each orders}}\n\
         OBR|{{ @index1 }}|{{ id }}|{{ $.site }}\n\
         {{#each notes?}}\n\
         NTE|{{ @index }}||{{ this }}\n\
         {{/each}}\n\
         {{/each}}\n",
        "t.hl7",
    )
    .expect("parses");
    let data = json!({ "site": "S", "orders": [
        { "id": "o1", "notes": ["a", "b"] }, { "id": "o2" }
    ]});
    let out = t.render(&data).expect("renders");
    assert_eq!(
        String::from_utf8(out).expect("utf-8"),
        "MSH|^~\\&|A|S|||1||ORU^R01|1|P|2.5\rOBR|1|o1|S\rNTE|0||a\rNTE|1||b\rOBR|2|o2|S\r"
    );
}

#[test]
fn hl7_render_errors_name_the_line_and_path() {
    let t = Hl7Template::parse(SIU, "siu.hl7").expect("parses");
    let mut data = siu_data();
    data["patient"]
        .as_object_mut()
        .expect("object")
        .remove("family");
    let err = t.render(&data).expect_err("missing");
    assert_eq!(
        err.to_string(),
        "template siu.hl7: line 3: `patient.family` is missing (end the placeholder with `?` to allow that)"
    );
    let mut data = siu_data();
    data["patient"]["birthDate"] = json!("02/01/1980");
    let err = t.render(&data).expect_err("bad date");
    assert!(
        err.to_string()
            .contains("line 3: `patient.birthDate` | dtm: not an ISO 8601"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("1980"),
        "no content in errors: {err}"
    );
    let mut data = siu_data();
    data["results"] = json!({ "not": "an array" });
    let err = t.render(&data).expect_err("not array");
    assert!(
        err.to_string()
            .contains("line 4: each `results`: not an array"),
        "{err}"
    );
    let mut data = siu_data();
    data.as_object_mut().expect("object").remove("results");
    let err = t.render(&data).expect_err("missing array");
    assert!(
        err.to_string()
            .contains("line 4: each `results`: missing value"),
        "{err}"
    );
    let mut data = siu_data();
    data["patient"]["id"] = json!({ "a": 1 });
    let err = t.render(&data).expect_err("object");
    assert!(
        err.to_string()
            .contains("`patient.id` is an object or array"),
        "{err}"
    );
    let t = Hl7Template::parse("MSH|^~\\&|{{ @index1 }}\n", "t.hl7").expect("parses");
    let err = t.render(&json!({})).expect_err("index outside each");
    assert!(err.to_string().contains("only defined inside"), "{err}");
}

#[test]
fn hl7_template_syntax_errors_have_lines() {
    let cases = [
        ("PID|1\n", "line 1: the first segment must be MSH"),
        (
            "\n{{#each x}}\nMSH|^~\\&\n{{/each}}\n",
            "line 2: the first segment must be MSH, outside any block",
        ),
        ("MSH|^~\\&\nPID|{{ a \n", "line 2: a `{{` without its `}}`"),
        ("MSH|^~\\&\nPID|a }}\n", "line 2: a `}}` without its `{{`"),
        (
            "MSH|^~\\&\nPID|{{ a | shout }}\n",
            "line 2: unknown filter `shout`",
        ),
        (
            "MSH|^~\\&\nPID|{{ a | default }}\n",
            "line 2: `default` takes a value",
        ),
        (
            "MSH|^~\\&\nPID|{{ a | default(x) }}\n",
            "line 2: filter `default(x)`: the argument is a double-quoted string",
        ),
        (
            "MSH|^~\\&\nPID|{{ a | upper(\"x\") }}\n",
            "line 2: filter `upper` takes no argument",
        ),
        (
            "MSH|^~\\&\nPID|{{ }}\n",
            "line 2: `{{ }}`: the placeholder names nothing",
        ),
        (
            "MSH|^~\\&\nPID|{{ a..b }}\n",
            "line 2: `a..b` is not a data path",
        ),
        (
            "MSH|^~\\&\nPID|{{ a[x] }}\n",
            "line 2: `a[x]` is not a data path",
        ),
        (
            "MSH|^~\\&\n{{#each a}}\nPID|1\n",
            "line 2: `{{#each …}}` is never closed",
        ),
        (
            "MSH|^~\\&\n{{/each}}\n",
            "line 2: `{{/each}}` without an open",
        ),
        (
            "MSH|^~\\&\nPID|1 {{#each a}}\n",
            "line 2: blocks are `{{#each path}}`",
        ),
        (
            "MSH|^~\\&\n{{#if a}}\n",
            "line 2: blocks are `{{#each path}}`",
        ),
        (
            "MSH|{{ enc }}|A\n",
            "line 1: MSH-2 (the encoding characters) must be written literally",
        ),
        ("", "no MSH segment"),
    ];
    for (text, want) in cases {
        let err = Hl7Template::parse(text, "t.hl7").expect_err(want);
        assert!(err.starts_with("template t.hl7"), "{err}");
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn filter_arguments_may_hold_pipes_braces_and_quotes() {
    let t = Hl7Template::parse(
        "MSH|^~\\&\nNTE|{{ a | default(\"x|y}}\\\"z\") | lower }}\nNTE|{{ b? | upper }}|{{ c | upper ? }}\n",
        "t.hl7",
    )
    .expect("parses");
    let out = t.render(&json!({ "b": "q" })).expect("renders");
    let m = Message::parse(&out).expect("parses");
    assert_eq!(m.get_str("NTE-1").expect("p").as_deref(), Some("x|y}}\"z"));
    assert_eq!(m.get_str("NTE[2]-1").expect("p").as_deref(), Some("Q"));
    assert_eq!(m.get_str("NTE[2]-2").expect("p").as_deref(), Some(""));
}

#[test]
fn iso_dates_become_dtm() {
    let cases = [
        ("2026-12-02", "20261202"),
        ("2026-12", "202612"),
        ("2026", "2026"),
        ("2026-12-02T14:30", "202612021430"),
        ("2026-12-02T14:30:00", "20261202143000"),
        ("2026-12-02T14:30:00+01:00", "20261202143000+0100"),
        ("2026-12-02T14:30:00-0530", "20261202143000-0530"),
        ("2026-12-02 14:30:00Z", "20261202143000+0000"),
        ("2026-12-02T14:30:00.123456Z", "20261202143000.1234+0000"),
        ("20261202143000+0100", "20261202143000+0100"),
    ];
    for (iso, dtm) in cases {
        assert_eq!(iso_to_dtm(iso).as_deref(), Ok(dtm), "{iso}");
    }
    for bad in [
        "02/12/2026",
        "2026-13-01",
        "2026-02-30",
        "2026-12-02T25:00",
        "2026-12-02T14:30:00+1",
        "x",
        "2026-12-02T",
        "2026-12-02T14:30:00.Z",
    ] {
        assert!(iso_to_dtm(bad).is_err(), "{bad}");
    }
}

#[test]
fn dtm_becomes_iso() {
    let cases = [
        ("20261202", "2026-12-02"),
        ("202612", "2026-12"),
        ("2026", "2026"),
        ("2026120214", "2026-12-02T14:00"),
        ("202612021430", "2026-12-02T14:30"),
        ("20261202143000+0100", "2026-12-02T14:30:00+01:00"),
        ("20261202143000.12-0500", "2026-12-02T14:30:00.12-05:00"),
    ];
    for (dtm, iso) in cases {
        assert_eq!(dtm_to_iso(dtm).as_deref(), Ok(iso), "{dtm}");
    }
    assert!(dtm_to_iso("2026-12-02").is_err());
    assert_eq!(
        dtm_to_iso("20261340"),
        Err("not a valid HL7 date-time: the month is out of range".to_owned())
    );
    assert_eq!(
        iso_to_dtm("2026-02-30"),
        Err("not a valid date or date-time: the day is out of range".to_owned())
    );
}

#[test]
fn json_template_on_a_corpus_adt() {
    let msg = corpus("ADT-A01-02.hl7");
    let out = render_json(
        r#"{
          "type": "{{MSH-9.1}}^{{MSH-9.2}}",
          "sent": "{{MSH-7 | date}}",
          "mrn": "{{PID-3.1}}",
          "family": "{{PID-5.1.1 | upper}}",
          "given": "{{PID-5.2}}",
          "born": "{{PID-7 | date}}",
          "missing": "{{PID-99}}",
          "fallback": "{{PID-99 | default(\"none\")}}",
          "literal": 3, "flag": true, "nothing": null, "list": ["x", "{{PID-8}}"],
          "ids": { "$each": "PID-3", "item": { "id": "{{.1}}", "type": "{{PID-3.5}}", "whole": "{{.}}" } }
        }"#,
        &msg,
    );
    assert_eq!(
        out,
        json!({
            "type": "ADT^A01",
            "sent": "1989-08-18T11:26+02:15",
            "mrn": "PATID1234",
            "family": "EVERYMAN",
            "given": "ADAM",
            "born": out["born"].clone(),
            "missing": null,
            "fallback": "none",
            "literal": 3, "flag": true, "nothing": null, "list": ["x", out["list"][1].clone()],
            "ids": [
                { "id": "PATID1234", "type": "MR", "whole": "PATID1234^5^M11^test1&2.16.1&HCD^MR^GOOD HEALTH HOSPITAL" },
                { "id": "123456789", "type": "SS", "whole": "123456789^^^USSSA^SS" }
            ]
        })
    );
    let m = Message::parse(&msg).expect("parses");
    let born = m
        .get_str("PID-7")
        .expect("p")
        .map(|c| c.into_owned())
        .unwrap_or_default();
    assert_eq!(
        out["born"],
        json!(dtm_to_iso(&born).expect("corpus PID-7 is a DTM"))
    );
}

#[test]
fn json_template_on_a_corpus_oru_with_segment_each() {
    let msg = corpus("LAB-ORU-1.hl7");
    let out = render_json(
        r#"{"id":"{{MSH-10}}","patient":"{{PID-5.2}} {{PID-5.1}}",
            "results":{"$each":"OBX","item":{"n":"{{OBX-1 | number}}","code":"{{-3.1}}","name":"{{OBX-3.2 | lower}}",
              "value":"{{-5 | number}}","unit":"{{-6}}","at":"{{-14 | date}}"}}}"#,
        &msg,
    );
    let results = out["results"].as_array().expect("array");
    assert_eq!(results.len(), 10, "one item per OBX");
    assert_eq!(out["id"], "182");
    assert_eq!(out["patient"], "DONALD DUCK");
    assert_eq!(
        results[0],
        json!({"n": 1, "code": "11156-7", "name": "leukocytes", "value": null, "unit": null, "at": null})
    );
    assert_eq!(
        results[1],
        json!({"n": 2, "code": "11273-0", "name": "erythrocytes", "value": 4.06, "unit": "tera.l-1", "at": "2014-10-06T06:27:00+07:00"})
    );
    assert_eq!(results[9]["code"], "30180-4");
    assert_eq!(results[9]["value"], json!(0));
    // Key order is the template's.
    let t = JsonTemplate::parse(r#"{"z":"{{MSH-10}}","a":1}"#, "t").expect("parses");
    let m = Message::parse(&msg).expect("parses");
    assert_eq!(t.render(&m).expect("renders"), br#"{"z":"182","a":1}"#);
}

#[test]
fn json_template_decodes_escapes_and_nulls() {
    let msg = b"MSH|^~\\&|A|B|||1||ADT^A08|1|P|2.5\rPID|1||\"\"||DOE\\F\\X\\S\\Y^  Jane  ||19800101|F|||a\\T\\b~c\r";
    let out = render_json(
        r#"{"id":"{{PID-3}}","family":"{{PID-5.1}}","given":"{{PID-5.2 | trim}}","blank":"{{PID-6}}",
            "mixed":"[{{PID-6}}]", "sex":"{{PID-8 | lower}}",
            "addr":{"$each":"PID-11","item":"{{.1}}"},"none":{"$each":"PID-3","item":"{{.}}"}}"#,
        msg,
    );
    assert_eq!(
        out,
        json!({"id": null, "family": "DOE|X^Y", "given": "Jane", "blank": null, "mixed": "[]",
               "sex": "f", "addr": ["a&b", "c"], "none": []})
    );
}

#[test]
fn json_round_trip_of_hostile_values_through_both_templates() {
    let to_hl7 = Hl7Template::parse(
        "MSH|^~\\&|A|B|||1||ADT^A08|1|P|2.5\nPID|1||{{ v }}||{{ v }}^{{ v }}\n",
        "in.hl7",
    )
    .expect("parses");
    let to_json = JsonTemplate::parse(
        r#"{"a":"{{PID-3}}","b":"{{PID-5.1}}","c":"{{PID-5.2}}"}"#,
        "out.json",
    )
    .expect("parses");
    for v in [
        "|^~\\&",
        "\"quoted\" {braces}",
        "tab\there",
        "日本語 ✓",
        "\\E\\",
    ] {
        let hl7 = to_hl7.render(&json!({ "v": v })).expect("renders");
        let m = Message::parse(&hl7).expect("parses");
        let back: Value =
            serde_json::from_slice(&to_json.render(&m).expect("renders")).expect("json");
        assert_eq!(back, json!({"a": v, "b": v, "c": v}), "{v:?}");
    }
}

#[test]
fn number_and_date_filters_refuse_what_they_cannot_read() {
    let msg = b"MSH|^~\\&|A|B|||1||ORU^R01|1|P|2.5\rOBX|1|NM|X||+012.50|u|||||F|||notadate\rOBX|2|NM|Y||-7\rOBX|3|ST|Z||high\r";
    let m = Message::parse(msg).expect("parses");
    let t = JsonTemplate::parse(
        r#"{"v":{"$each":"OBX","item":"{{-5 | number}}"}}"#,
        "n.json",
    )
    .expect("parses");
    let err = t.render(&m).expect_err("high is no number");
    assert_eq!(
        err.to_string(),
        "template n.json: `-5` | number: not a number"
    );
    assert!(
        !err.to_string().contains("high"),
        "errors never quote message content"
    );
    let t = JsonTemplate::parse(
        r#"{"v":"{{OBX-5 | number}}","w":"{{OBX[2]-5 | number}}","x":"{{OBX[9]-5 | number}}"}"#,
        "n.json",
    )
    .expect("parses");
    assert_eq!(
        t.render(&m).expect("renders"),
        br#"{"v":12.5,"w":-7,"x":null}"#
    );
    let t = JsonTemplate::parse(r#"{"d":"{{OBX-14 | date}}"}"#, "d.json").expect("parses");
    let err = t.render(&m).expect_err("bad date");
    assert!(
        err.to_string()
            .starts_with("template d.json: `OBX-14` | date: not an HL7 date-time"),
        "{err}"
    );
    assert!(!err.to_string().contains("notadate"), "{err}");
}

#[test]
fn json_template_syntax_errors() {
    let cases = [
        ("{", "not JSON"),
        (r#"{"a":1,"a":2}"#, "duplicate key `a`"),
        (r#"{"a":"{{PID-5"}"#, "at $.a: a `{{` without its `}}`"),
        (r#"{"a":"{{XX-5}}"}"#, "at $.a: invalid HL7 path `XX-5`"),
        (r#"{"a":"{{PID-5 | dtm}}"}"#, "at $.a: unknown filter `dtm`"),
        (r#"{"a":"{{PID-5?}}"}"#, "optional already"),
        (
            r#"{"a":"{{-5}}"}"#,
            "at $.a: `-5` (a field of the current segment) needs an enclosing segment `$each`",
        ),
        (
            r#"{"a":"{{.1}}"}"#,
            "at $.a: `.1` (the current repetition) needs an enclosing field `$each`",
        ),
        (
            r#"{"a":{"$each":"PID-3","item":"{{.x}}"}}"#,
            "at $.a.$each.item: `.x`: components are numbers",
        ),
        (
            r#"{"a":{"$each":"OBX"}}"#,
            "exactly the keys `$each` and `item`",
        ),
        (
            r#"{"a":{"$each":"OBX","item":1,"x":2}}"#,
            "exactly the keys",
        ),
        (r#"{"a":{"$each":3,"item":1}}"#, "`$each` names a segment"),
        (
            r#"{"a":{"$each":"obx","item":1}}"#,
            "`obx` is not a segment id",
        ),
        (
            r#"{"a":{"$each":"PID-3.1","item":1}}"#,
            "names the field only",
        ),
        (
            r#"{"a":{"$each":"-3","item":1}}"#,
            "needs an enclosing segment `$each`",
        ),
        (
            r#"["{{PID-3}}", {"b":["{{PID-3 | nope}}"]}]"#,
            "at $[1].b[0]: unknown filter `nope`",
        ),
    ];
    for (text, want) in cases {
        let err = JsonTemplate::parse(text, "t.json").expect_err(want);
        assert!(err.starts_with("template t.json: "), "{err}");
        assert!(err.contains(want), "{text}: {err}");
    }
}

#[test]
fn nested_field_each_inside_a_segment_each() {
    let msg =
        b"MSH|^~\\&|A|B|||1||ORU^R01|1|P|2.5\rOBX|1|CE|X||a^1~b^2\rOBX|2|CE|Y||c^3\rOBX|3|CE|Z||\r";
    let out = render_json(
        r#"{"obs":{"$each":"OBX","item":{"id":"{{-3}}","codes":{"$each":"-5","item":{"code":"{{.1}}","n":"{{OBX-5.2 | number}}"}}}}}"#,
        msg,
    );
    assert_eq!(
        out,
        json!({"obs": [
            {"id": "X", "codes": [{"code": "a", "n": 1}, {"code": "b", "n": 2}]},
            {"id": "Y", "codes": [{"code": "c", "n": 3}]},
            {"id": "Z", "codes": []}
        ]})
    );
}

#[test]
fn load_names_a_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Hl7Template::load(&dir.path().join("none.hl7")).expect_err("missing");
    assert!(
        err.starts_with("cannot read template ") && err.contains("none.hl7"),
        "{err}"
    );
    let err = JsonTemplate::load(&dir.path().join("none.json")).expect_err("missing");
    assert!(err.contains("none.json"), "{err}");
    let path = dir.path().join("p.json");
    std::fs::write(&path, "\u{feff}{\"a\":\"{{PID-3}}\"}").expect("write");
    JsonTemplate::load(&path).expect("a BOM is tolerated");
}

#[test]
fn hl7_template_writes_the_charset_msh18_declares() {
    let t = Hl7Template::parse(
        "MSH|^~\\&|A|B|||1||ADT^A08|1|P|2.5||||||8859/1\nPID|1||{{ v }}\n",
        "latin.hl7",
    )
    .expect("parses");
    let out = t.render(&json!({ "v": "Müller" })).expect("renders");
    assert!(out.ends_with(b"PID|1||M\xfcller\r"), "{out:?}");
    let m = Message::parse(&out).expect("parses");
    assert_eq!(m.get_str("PID-3").expect("p").as_deref(), Some("Müller"));
    let err = t.render(&json!({ "v": "日本" })).expect_err("not latin-1");
    assert!(err.to_string().contains("(8859/1) cannot write"), "{err}");
    assert!(!err.to_string().contains("日"), "{err}");
    let err = Hl7Template::parse(
        "MSH|^~\\&|A|B|||1||ADT^A08|1|P|2.5||||||{{ cs }}\n",
        "t.hl7",
    )
    .expect_err("placeholder in MSH-18");
    assert!(
        err.contains("line 1: MSH-18 (the character set) must be written literally"),
        "{err}"
    );
    let err = Hl7Template::parse("MSH|^~\\&|A|B|||1||ADT^A08|1|P|2.5||||||KLINGON\n", "t.hl7")
        .expect_err("unknown charset");
    assert!(err.contains("line 1: MSH-18: "), "{err}");
}

#[test]
fn render_bytes_parses_the_body_and_hides_its_content() {
    let t = Hl7Template::parse("MSH|^~\\&|A\nPID|1||{{ id }}\n", "t.hl7").expect("parses");
    let out = t.render_bytes(br#"{"id":"42"}"#).expect("renders");
    assert_eq!(out, b"MSH|^~\\&|A\rPID|1||42\r");
    let err = t.render_bytes(b"{\"id\": SECRET}").expect_err("not json");
    assert!(
        err.to_string()
            .starts_with("template t.hl7: the body is not JSON (Syntax error at line 1, column"),
        "{err}"
    );
    assert!(!err.to_string().contains("SECRET"), "{err}");
}
