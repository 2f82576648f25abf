//! Every step kind and every error, on real bytes.

use super::*;

const ADT: &str = "MSH|^~\\&|HIS|GH|LAB|GH|20261125||ADT^A01^ADT_A01|1|P|2.5.1\rEVN|A01\rPID|1||42^^^GH^MR~7^^^SSA||DOE^JANE||19800101|F\rNTE|1||first\rPV1|1|I|W1^101\rNTE|2||second\rOBX|1|NM|A||1\rOBX|2|NM|B||2\r";

fn buf() -> MessageBuf {
    MessageBuf::parse(ADT.as_bytes()).expect("parse")
}

fn fp(p: &str) -> FieldPath {
    FieldPath::parse(p).expect("path")
}

fn seg(s: &str) -> SegmentRef {
    SegmentRef::parse(s).expect("segment")
}

fn text(m: &MessageBuf, p: &str) -> Option<String> {
    m.message()
        .get_str(p)
        .expect("path")
        .map(|c| c.into_owned())
}

fn ids(m: &MessageBuf) -> Vec<String> {
    m.message()
        .segments()
        .map(|s| s.id_str().to_owned())
        .collect()
}

fn set(p: &str, v: &str) -> Step {
    Step::Set {
        path: fp(p),
        value: SetValue::Text(v.into()),
    }
}

#[test]
fn set_escapes_and_pads() {
    let mut m = buf();
    set("MSH-5", "SCHED|ULER").apply(&mut m).expect("set");
    assert_eq!(
        m.message().get("MSH-5").expect("p"),
        Some(&b"SCHED\\F\\ULER"[..])
    );
    assert_eq!(text(&m, "MSH-5").as_deref(), Some("SCHED|ULER"));
    // Absent: padded within the segment, a missing next segment appended.
    set("PV1-10", "X").apply(&mut m).expect("pad");
    assert_eq!(text(&m, "PV1-10").as_deref(), Some("X"));
    set("ZPI-2", "z").apply(&mut m).expect("append");
    assert_eq!(ids(&m).last().map(String::as_str), Some("ZPI"));
    assert_eq!(text(&m, "ZPI-2").as_deref(), Some("z"));
    // A whole-field set replaces every repetition.
    set("PID-3", "99").apply(&mut m).expect("whole");
    assert_eq!(m.message().get("PID-3(2)").expect("p"), None);
}

#[test]
fn set_null_writes_the_hl7_null() {
    let mut m = buf();
    Step::Set {
        path: fp("PID-8"),
        value: SetValue::Null,
    }
    .apply(&mut m)
    .expect("null");
    assert_eq!(m.message().get("PID-8").expect("p"), Some(&b"\"\""[..]));
}

#[test]
fn set_errors_name_the_step_and_leave_the_message() {
    let mut m = buf();
    let before = m.clone();
    let err = set("MSH-2", "x").apply(&mut m).expect_err("delimiters");
    assert_eq!(err.step, "set MSH-2");
    assert!(
        err.to_string().starts_with("set MSH-2: MSH-1 and MSH-2"),
        "{err}"
    );
    let err = set("OBX[5]-1", "x").apply(&mut m).expect_err("gap");
    assert!(
        err.to_string().contains("OBX[5] is not in the message"),
        "{err}"
    );
    assert_eq!(m, before);
}

#[test]
fn copy_keeps_components_and_escapes_at_the_same_level() {
    let mut m = MessageBuf::parse(
        &b"MSH|^~\\&|A|B|||1||ADT^A01|1|P|2.5\rPID|1||42^^^GH~7||DOE\\T\\X^JANE\r"[..],
    )
    .expect("parse");
    Step::Copy {
        from: fp("PID-5"),
        to: fp("NK1-2"),
    }
    .apply(&mut m)
    .expect("copy");
    assert_eq!(
        m.message().get("NK1-2").expect("p"),
        Some(&b"DOE\\T\\X^JANE"[..])
    );
    // A whole field copied to a whole field keeps every repetition.
    Step::Copy {
        from: fp("PID-3"),
        to: fp("PID-2"),
    }
    .apply(&mut m)
    .expect("copy field");
    assert_eq!(m.message().get("PID-2(2)").expect("p"), Some(&b"7"[..]));
    assert_eq!(
        m.message().segment("PID", 1).and_then(|s| s.field(2)),
        Some(&b"42^^^GH~7"[..])
    );
}

#[test]
fn copy_to_a_lower_level_takes_the_first_part() {
    let mut m = buf();
    Step::Copy {
        from: fp("PID-3"),
        to: fp("PID-2.1"),
    }
    .apply(&mut m)
    .expect("field to component");
    assert_eq!(m.message().get("PID-2").expect("p"), Some(&b"42"[..]));
    Step::Copy {
        from: fp("PID-3(2)"),
        to: fp("PID-4(1)"),
    }
    .apply(&mut m)
    .expect("repetition to repetition");
    assert_eq!(m.message().get("PID-4").expect("p"), Some(&b"7^^^SSA"[..]));
    Step::Copy {
        from: fp("PID-5"),
        to: fp("PV1-3.2.1"),
    }
    .apply(&mut m)
    .expect("to subcomponent");
    assert_eq!(m.message().get("PV1-3").expect("p"), Some(&b"W1^DOE"[..]));
}

#[test]
fn copy_from_absent_empties_an_existing_target_only() {
    let mut m = buf();
    Step::Copy {
        from: fp("PID-30"),
        to: fp("PID-8"),
    }
    .apply(&mut m)
    .expect("copy");
    assert_eq!(m.message().get("PID-8").expect("p"), Some(&b""[..]));
    let before = m.clone();
    Step::Copy {
        from: fp("ZZZ-1"),
        to: fp("PID-40"),
    }
    .apply(&mut m)
    .expect("copy");
    assert_eq!(m, before, "an absent target stays absent");
}

#[test]
fn copy_errors_name_both_paths() {
    let mut m = buf();
    let err = Step::Copy {
        from: fp("PID-5"),
        to: fp("MSH-1"),
    }
    .apply(&mut m)
    .expect_err("delimiters");
    assert!(
        err.to_string().starts_with("copy PID-5 to MSH-1: "),
        "{err}"
    );
}

#[test]
fn delete_empties_and_absent_is_a_no_op() {
    let mut m = buf();
    Step::Delete { path: fp("PID-5") }
        .apply(&mut m)
        .expect("delete");
    assert_eq!(m.message().get("PID-5").expect("p"), Some(&b""[..]));
    Step::Delete {
        path: fp("PID-3(1)"),
    }
    .apply(&mut m)
    .expect("repetition");
    assert_eq!(m.message().get("PID-3.4").expect("p"), Some(&b"SSA"[..]));
    let before = m.clone();
    Step::Delete { path: fp("ZZZ-3") }
        .apply(&mut m)
        .expect("absent");
    Step::Delete { path: fp("PID-90") }
        .apply(&mut m)
        .expect("absent");
    assert_eq!(m, before);
    let err = Step::Delete { path: fp("MSH-2") }
        .apply(&mut m)
        .expect_err("msh");
    assert!(err.to_string().starts_with("delete MSH-2: "), "{err}");
}

#[test]
fn add_segment_at_the_end_after_and_before() {
    let mut m = buf();
    let add = |text: &str, placement| Step::AddSegment {
        text: text.into(),
        placement,
    };
    add("ZPI|1|x", Placement::End).apply(&mut m).expect("end");
    add("ZP2|1", Placement::After("PID".into()))
        .apply(&mut m)
        .expect("after");
    add("ZP3|1", Placement::After("NTE".into()))
        .apply(&mut m)
        .expect("after last");
    add("ZP4|1", Placement::Before("NTE".into()))
        .apply(&mut m)
        .expect("before first");
    assert_eq!(
        ids(&m),
        [
            "MSH", "EVN", "PID", "ZP2", "ZP4", "NTE", "PV1", "NTE", "ZP3", "OBX", "OBX", "ZPI"
        ]
    );
    assert_eq!(text(&m, "ZPI-2").as_deref(), Some("x"));
    // The message keeps its terminator.
    assert!(m.as_bytes().ends_with(b"ZPI|1|x\r"));
    assert!(!m.as_bytes().contains(&b'\n'));
}

#[test]
fn add_segment_errors() {
    let mut m = buf();
    let before = m.clone();
    let err = Step::AddSegment {
        text: "ZPI|1".into(),
        placement: Placement::After("IN1".into()),
    }
    .apply(&mut m)
    .expect_err("no anchor");
    assert_eq!(
        err.to_string(),
        "add_segment ZPI after IN1: the message has no IN1 segment to add it after"
    );
    let err = Step::AddSegment {
        text: "ZPI|1".into(),
        placement: Placement::Before("MSH".into()),
    }
    .apply(&mut m)
    .expect_err("before msh");
    assert!(err.to_string().contains("MSH segment must stay"), "{err}");
    let err = Step::AddSegment {
        text: "zz|1".into(),
        placement: Placement::End,
    }
    .apply(&mut m)
    .expect_err("bad id");
    assert!(
        err.to_string()
            .starts_with("add_segment zz|: not a segment"),
        "{err}"
    );
    assert_eq!(m, before);
}

#[test]
fn drop_segment_all_or_one() {
    let mut m = buf();
    Step::DropSegment {
        segment: seg("OBX[2]"),
    }
    .apply(&mut m)
    .expect("one");
    assert_eq!(text(&m, "OBX-3").as_deref(), Some("A"));
    assert_eq!(m.message().segment("OBX", 2).map(|_| ()), None);
    Step::DropSegment {
        segment: seg("NTE"),
    }
    .apply(&mut m)
    .expect("all");
    assert_eq!(ids(&m), ["MSH", "EVN", "PID", "PV1", "OBX"]);
    let before = m.clone();
    Step::DropSegment {
        segment: seg("NTE"),
    }
    .apply(&mut m)
    .expect("absent");
    Step::DropSegment {
        segment: seg("OBX[7]"),
    }
    .apply(&mut m)
    .expect("absent");
    assert_eq!(m, before);
}

#[test]
fn rename_segment_all_or_one() {
    let mut m = buf();
    Step::RenameSegment {
        from: seg("NTE[2]"),
        to: "ZNT".into(),
    }
    .apply(&mut m)
    .expect("one");
    assert_eq!(ids(&m)[5], "ZNT");
    assert_eq!(ids(&m)[3], "NTE");
    Step::RenameSegment {
        from: seg("OBX"),
        to: "ZBX".into(),
    }
    .apply(&mut m)
    .expect("all");
    assert_eq!(&ids(&m)[6..], ["ZBX", "ZBX"]);
    // Same name: nothing to do (and no endless loop).
    let before = m.clone();
    Step::RenameSegment {
        from: seg("ZBX"),
        to: "ZBX".into(),
    }
    .apply(&mut m)
    .expect("same");
    assert_eq!(m, before);
    let err = Step::RenameSegment {
        from: seg("PID"),
        to: "pid".into(),
    }
    .apply(&mut m)
    .expect_err("bad id");
    assert!(
        err.to_string()
            .starts_with("rename_segment PID to pid: not a segment"),
        "{err}"
    );
    let err = Step::RenameSegment {
        from: seg("PID"),
        to: "MSH".into(),
    }
    .apply(&mut m)
    .expect_err("to msh");
    assert!(err.to_string().contains("MSH segment must stay"), "{err}");
}

#[test]
fn segment_refs_parse_and_refuse() {
    assert_eq!(seg("OBX[2]").occurrence(), Some(2));
    assert_eq!(seg("NTE").occurrence(), None);
    assert_eq!(seg("NTE").id(), "NTE");
    assert_eq!(seg("OBX[2]").to_string(), "OBX[2]");
    for bad in ["MSH", "nte", "OBX[0]", "OBX[", "OBX[x]", "OBXX", "OB"] {
        assert!(SegmentRef::parse(bad).is_err(), "{bad}");
    }
}

fn table() -> Arc<CodeTable> {
    Arc::new(
        CodeTable::parse("from,to\nI,INPATIENT\nO,OUT|PATIENT\n,EMPTY\n", "pc.csv").expect("table"),
    )
}

#[test]
fn map_through_a_table_with_and_without_default() {
    let mut m = buf();
    let map = |p: &str, default: Option<&str>| Step::Map {
        path: fp(p),
        table: table(),
        default: default.map(str::to_owned),
    };
    map("PV1-2", None).apply(&mut m).expect("mapped");
    assert_eq!(text(&m, "PV1-2").as_deref(), Some("INPATIENT"));
    // Unmapped: kept, or the default.
    map("PID-8", None).apply(&mut m).expect("kept");
    assert_eq!(text(&m, "PID-8").as_deref(), Some("F"));
    map("PID-8", Some("U")).apply(&mut m).expect("default");
    assert_eq!(text(&m, "PID-8").as_deref(), Some("U"));
    // Mapped values are escaped.
    set("PV1-2", "O").apply(&mut m).expect("set");
    map("PV1-2", None).apply(&mut m).expect("mapped");
    assert_eq!(
        m.message().get("PV1-2").expect("p"),
        Some(&b"OUT\\F\\PATIENT"[..])
    );
    // An absent value in a present segment is the empty text.
    map("PV1-20", None).apply(&mut m).expect("empty");
    assert_eq!(text(&m, "PV1-20").as_deref(), Some("EMPTY"));
    // A missing segment changes nothing.
    let before = m.clone();
    map("IN1-2", Some("U"))
        .apply(&mut m)
        .expect("missing segment");
    assert_eq!(m, before);
}

#[test]
fn map_of_a_whole_field_maps_the_first_repetition_only() {
    let mut m = buf();
    let t = Arc::new(CodeTable::from_pairs("ids", [("42^^^GH^MR", "43")]));
    Step::Map {
        path: fp("PID-3"),
        table: t,
        default: None,
    }
    .apply(&mut m)
    .expect("map");
    assert_eq!(
        m.message().segment("PID", 1).and_then(|s| s.field(3)),
        Some(&b"43~7^^^SSA"[..])
    );
}

#[test]
fn map_errors_name_the_table() {
    let mut m = buf();
    let err = Step::Map {
        path: fp("MSH-2"),
        table: table(),
        default: Some("x".into()),
    }
    .apply(&mut m)
    .expect_err("msh-2");
    assert!(
        err.to_string().starts_with("map MSH-2 through pc.csv: "),
        "{err}"
    );
}

#[test]
fn apply_all_runs_in_order_and_numbers_the_failure() {
    let mut m = buf();
    let steps = [
        set("MSH-5", "A"),
        set("MSH-5", "B"),
        Step::Delete { path: fp("MSH-1") },
        set("MSH-5", "C"),
    ];
    let (n, err) = apply_all(&steps, &mut m).expect_err("third fails");
    assert_eq!(n, 3);
    assert_eq!(err.step, "delete MSH-1");
    assert_eq!(
        text(&m, "MSH-5").as_deref(),
        Some("B"),
        "steps before ran, after did not"
    );
    apply_all(&steps[..2], &mut m).expect("all pass");
    apply_all(&[], &mut m).expect("nothing to do");
}
