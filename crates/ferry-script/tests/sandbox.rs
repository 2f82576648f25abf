//! The sandbox: time, memory and stack limits (and recovery after them), no I/O or module
//! loading, errors with the right line, and garbage thrown at every host function.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixtures are known good

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry_script::{ScriptErrorKind, ScriptKind, ScriptLimits, Scripts, Source};
use serde_json::json;

const NEXT: &str = r#"msg.set("PID-2", "next"); channelMap.put("lib", typeof LIB);"#;

/// After a failure, the same `Scripts` on the same thread must transform the next message.
fn next_message_works(scripts: &Scripts) {
    let next = compile(scripts, ScriptKind::Transform, NEXT);
    let mut ctx = context();
    scripts
        .transform(&next, &mut ctx)
        .unwrap_or_else(|e| panic!("next message: {e}"));
    assert_eq!(get(&ctx, "PID-2"), "next");
    assert_eq!(
        ctx.channel_map["lib"],
        json!("number"),
        "the fresh runtime has the libraries"
    );
}

fn limited() -> Scripts {
    scripts_with(vec![Source::new("lib.js", "var LIB = 1;")], small_limits())
}

#[test]
fn an_endless_loop_is_stopped_near_the_time_limit_and_the_next_message_runs() {
    let scripts = limited();
    let spin = compile(&scripts, ScriptKind::Transform, "while (true) {}");
    let mut ctx = context();
    let started = Instant::now();
    let err = scripts.transform(&spin, &mut ctx).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind, ScriptErrorKind::Timeout, "{err}");
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(
        took < Duration::from_millis(600),
        "stopped near the 200 ms limit, took {took:?}"
    );
    assert!(err.to_string().contains("time limit"), "{err}");
    assert_eq!(
        get(&ctx, "PID-5.1"),
        "DOE",
        "the context gets its message back"
    );
    next_message_works(&scripts);
}

#[test]
fn a_timeout_cannot_be_caught_by_the_script() {
    let scripts = limited();
    let s = compile(
        &scripts,
        ScriptKind::Transform,
        "for (;;) { try { while (true) {} } catch (e) { channelMap.put('caught', 1); } }",
    );
    let mut ctx = context();
    assert_eq!(
        scripts.transform(&s, &mut ctx).unwrap_err().kind,
        ScriptErrorKind::Timeout
    );
    assert!(!ctx.channel_map.contains_key("caught"));
    // A promise job that spins is stopped too.
    let job = compile(
        &scripts,
        ScriptKind::Transform,
        "Promise.resolve().then(() => { while (true) {} });",
    );
    assert_eq!(
        scripts.transform(&job, &mut context()).unwrap_err().kind,
        ScriptErrorKind::Timeout
    );
    next_message_works(&scripts);
}

#[test]
fn a_memory_bomb_is_stopped_with_kind_memory_and_the_next_message_runs() {
    let scripts = limited();
    let bomb = compile(
        &scripts,
        ScriptKind::Transform,
        r#"let a = []; while (true) a.push("x".repeat(1e6));"#,
    );
    let err = scripts.transform(&bomb, &mut context()).unwrap_err();
    assert_eq!(err.kind, ScriptErrorKind::Memory, "{err}");
    next_message_works(&scripts);
    // Twice in a row on the same thread.
    let err = scripts.transform(&bomb, &mut context()).unwrap_err();
    assert_eq!(err.kind, ScriptErrorKind::Memory, "{err}");
    next_message_works(&scripts);
}

#[test]
fn one_huge_allocation_is_a_memory_error() {
    let scripts = limited();
    let s = compile(
        &scripts,
        ScriptKind::Transform,
        r#"const s = "x".repeat(64 * 1024 * 1024);"#,
    );
    let err = scripts.transform(&s, &mut context()).unwrap_err();
    assert_eq!(err.kind, ScriptErrorKind::Memory, "{err}");
    next_message_works(&scripts);
}

#[test]
fn deep_recursion_is_a_stack_error_not_a_crash() {
    let scripts = limited();
    let s = compile(
        &scripts,
        ScriptKind::Transform,
        "function f(n) { return f(n + 1) + 1; }\nf(0);",
    );
    let err = scripts.transform(&s, &mut context()).unwrap_err();
    assert_eq!(err.kind, ScriptErrorKind::Stack, "{err}");
    next_message_works(&scripts);
    // Deep recursion through a host call (segment views call back into Rust).
    let s = compile(
        &scripts,
        ScriptKind::Transform,
        "function g() { msg.segments('PID')[0].get('5.1'); return g(); }\ng();",
    );
    let err = scripts.transform(&s, &mut context()).unwrap_err();
    assert_eq!(err.kind, ScriptErrorKind::Stack, "{err}");
    next_message_works(&scripts);
}

#[test]
fn no_modules_io_or_timers() {
    let ctx = ok(r#"
        const probe = (f) => { try { f(); return "present"; } catch (e) { return e.name; } };
        channelMap.put("require", probe(() => require("fs")));
        channelMap.put("fetch", probe(() => fetch("http://example.com")));
        channelMap.put("std", probe(() => std.open("/etc/passwd", "r")));
        channelMap.put("os", probe(() => os.exec(["ls"])));
        channelMap.put("setTimeout", typeof setTimeout);
        channelMap.put("setInterval", typeof setInterval);
        channelMap.put("xhr", typeof XMLHttpRequest);
        channelMap.put("process", typeof process);
        channelMap.put("Deno", typeof Deno);
        import("x").then(() => channelMap.put("import", "loaded"),
                         (e) => channelMap.put("import", "refused: " + e));
    "#);
    for name in ["require", "fetch", "std", "os"] {
        assert_eq!(ctx.channel_map[name], json!("ReferenceError"), "{name}");
    }
    for name in ["setTimeout", "setInterval", "xhr", "process", "Deno"] {
        assert_eq!(ctx.channel_map[name], json!("undefined"), "{name}");
    }
    let import = ctx.channel_map["import"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(import.starts_with("refused"), "{import}");
    // A static import does not even compile.
    let scripts = scripts();
    let err = scripts
        .compile(
            ScriptKind::Transform,
            Source::new("imp.js", "import fs from 'fs';"),
        )
        .unwrap_err();
    assert_eq!(err.kind, ScriptErrorKind::Syntax, "{err}");
}

#[test]
fn eval_works_inside_the_sandbox() {
    let ctx = ok(
        r#"channelMap.put("e", eval("1 + 2")); channelMap.put("f", new Function("return 4")());"#,
    );
    assert_eq!(ctx.channel_map["e"], json!(3));
    assert_eq!(ctx.channel_map["f"], json!(4));
}

#[test]
fn syntax_errors_are_reported_at_compile_with_the_line() {
    let scripts = scripts();
    let err = scripts
        .compile(
            ScriptKind::Transform,
            Source::new(
                "channel `adt`, transform 3",
                "msg.set('PID-1', 'a');\n\nlet x = ;\n",
            ),
        )
        .unwrap_err();
    assert_eq!(err.kind, ScriptErrorKind::Syntax);
    assert_eq!(err.script, "channel `adt`, transform 3");
    assert_eq!(err.line, Some(3), "{err}");
    assert!(
        err.to_string()
            .starts_with("channel `adt`, transform 3:3: SyntaxError"),
        "{err}"
    );
    // On line 1, where the wrapper's header is.
    let err = scripts
        .compile(ScriptKind::Filter, Source::new("f.js", "return ) ;"))
        .unwrap_err();
    assert_eq!(
        (err.kind, err.line),
        (ScriptErrorKind::Syntax, Some(1)),
        "{err}"
    );
    // A script cannot close the function it is wrapped in.
    let err = scripts
        .compile(
            ScriptKind::Transform,
            Source::new("x.js", "});\n(function(){"),
        )
        .unwrap_err();
    assert_eq!(err.kind, ScriptErrorKind::Syntax, "{err}");
    assert!(err.message.contains("unbalanced"), "{err}");
}

#[test]
fn a_library_with_a_syntax_error_fails_at_deploy() {
    let err = Scripts::new(
        vec![
            Source::new("lib/ok.js", "var A = 1;"),
            Source::new("lib/bad.js", "\nfunction (\n"),
        ],
        Default::default(),
        ScriptLimits::default(),
        false,
    )
    .unwrap_err();
    assert_eq!(err.kind, ScriptErrorKind::Syntax, "{err}");
    assert_eq!(err.script, "lib/bad.js");
    assert_eq!(err.line, Some(2), "{err}");
    let err = Scripts::new(
        vec![Source::new("lib/throws.js", "\n\nnull.x;")],
        Default::default(),
        ScriptLimits::default(),
        false,
    )
    .unwrap_err();
    assert_eq!(
        (err.kind, err.line),
        (ScriptErrorKind::Runtime, Some(3)),
        "{err}"
    );
}

#[test]
fn runtime_errors_carry_the_line_in_the_script_or_the_library() {
    let err = transform("const a = 1;\nconst b = 2;\nnull.x;\n").unwrap_err();
    assert_eq!(err.kind, ScriptErrorKind::Runtime);
    assert_eq!(err.line, Some(3), "{err}");
    assert_eq!(err.file, None);
    assert!(err.message.starts_with("TypeError:"), "{err}");
    assert!(
        err.to_string().starts_with("test.js:3: TypeError:"),
        "{err}"
    );

    // Uncaught error from a host function: the line of the call.
    let err = transform("\n\nmsg.set('PID-x', 'a');").unwrap_err();
    assert_eq!(
        (err.kind, err.line),
        (ScriptErrorKind::Runtime, Some(3)),
        "{err}"
    );
    assert!(err.message.contains("invalid HL7 path"), "{err}");
    // Through a segment view (the prelude's frames are skipped).
    let err = transform("\nmsg.segments('PID')[0].get(5);").unwrap_err();
    assert_eq!(err.line, Some(2), "{err}");

    // Thrown from a library function: the library's line, and the script's name.
    let scripts = scripts_with(
        vec![Source::new(
            "lib/util.js",
            "function check(v) {\n  if (!v) throw new Error('empty value');\n}",
        )],
        ScriptLimits::default(),
    );
    let s = scripts
        .compile(
            ScriptKind::Transform,
            Source::new("channel `c`, transform 3", "check(msg.get('PID-2'));"),
        )
        .unwrap();
    let err = scripts.transform(&s, &mut context()).unwrap_err();
    assert_eq!(err.line, Some(2));
    assert_eq!(err.file.as_deref(), Some("lib/util.js"));
    assert_eq!(
        err.to_string(),
        "channel `c`, transform 3 (lib/util.js:2): Error: empty value"
    );

    // A thrown non-Error value.
    let err = transform("throw 'plain text';").unwrap_err();
    assert_eq!(err.kind, ScriptErrorKind::Runtime);
    assert!(err.message.contains("plain text"), "{err}");
}

#[test]
fn garbage_arguments_to_every_host_function_throw_catchable_errors() {
    // Every API function with no arguments, wrong types, objects with throwing toString,
    // symbols, huge and negative numbers. Each call must throw (or return) and the script
    // must reach its end; nothing may panic.
    let ctx = ok(r#"
        const weird = [undefined, null, 1, -1, 1e300, NaN, true, {}, [], Symbol("s"),
            { toString() { throw new Error("boom"); } }, () => 1, 123n, "", "PID-999999999", "ZZZ[0]-1",
            "PID-1.2.3.4.5", "\u0000", "x".repeat(10000)];
        const fns = {
            "msg.get": msg.get, "msg.set": msg.set, "msg.setNull": msg.setNull,
            "msg.delete": msg.delete, "msg.exists": msg.exists, "msg.count": msg.count,
            "msg.segments": msg.segments, "msg.addSegment": msg.addSegment,
            "msg.removeSegment": msg.removeSegment, "msg.renameSegment": msg.renameSegment,
            "msg.toString": msg.toString, "msg.toJSON": msg.toJSON,
            "channelMap.get": channelMap.get, "channelMap.put": channelMap.put,
            "channelMap.remove": channelMap.remove, "channelMap.containsKey": channelMap.containsKey,
            "sourceMap.get": sourceMap.get, "configMap.get": configMap.get,
            "$c": $c, "$s": $s, "$cfg": $cfg, "logger.info": logger.info,
            "router.route": router.route,
        };
        let calls = 0, threw = 0;
        for (const [name, f] of Object.entries(fns)) {
            const attempt = (...args) => {
                calls++;
                try { f(...args); } catch (e) { threw++; if (!(e instanceof Error)) throw e; }
            };
            attempt();
            for (const a of weird) {
                attempt(a);
                attempt(a, a);
                attempt("PID-5", a);
                attempt(a, "x", a);
            }
        }
        const seg = msg.segments("PID")[0];
        for (const a of weird) {
            for (const m of ["get", "set", "setNull", "delete", "exists"]) {
                calls++;
                try { seg[m](a, a); } catch (e) { threw++; }
            }
        }
        channelMap.put("calls", calls);
        channelMap.put("threw", threw);
        channelMap.put("end", "reached");
    "#);
    assert_eq!(map(&ctx, "end"), r#""reached""#);
    let threw = ctx.channel_map["threw"].as_u64().unwrap();
    assert!(threw > 500, "most garbage calls throw: {threw}");
    // The message still parses.
    assert!(ferry_hl7::MessageBuf::parse(ctx.message.as_bytes().to_vec()).is_ok());
}

#[test]
fn host_functions_taken_off_their_object_still_work_or_throw() {
    let ctx = ok(r#"
        const { get, set } = msg;
        set("PID-2", "loose");
        channelMap.put("v", get("PID-2"));
        try { get.call(42, {}) } catch (e) { channelMap.put("bad", e.name); }
        try { new msg.get("PID-1") } catch (e) { channelMap.put("new", e.name); }
    "#);
    assert_eq!(map(&ctx, "v"), r#""loose""#);
    assert_eq!(map(&ctx, "bad"), r#""TypeError""#);
}

#[test]
fn data_kept_outside_the_js_heap_counts_against_the_memory_limit() {
    // The message, the channel map and routed messages live in Rust, not in QuickJS's heap:
    // without a cap, a loop could grow them until the time limit.
    let limits = ScriptLimits {
        memory_bytes: 4 << 20,
        time: Duration::from_secs(5),
        ..ScriptLimits::default()
    };
    let scripts = scripts_with(vec![Source::new("lib.js", "var LIB = 1;")], limits);
    for code in [
        r#"const big = "x".repeat(1e6); while (true) msg.addSegment("ZZZ|" + big);"#,
        r#"const big = "x".repeat(1e6); for (let i = 0; ; i++) msg.set("ZZZ[1]-" + (i + 1), big);"#,
        r#"const big = "x".repeat(1e6); for (let i = 0; ; i++) channelMap.put("k" + i, big);"#,
        r#"const big = "x".repeat(1e6); while (true) router.route("c", big);"#,
    ] {
        let s = compile(&scripts, ScriptKind::Transform, code);
        let mut ctx = context();
        let err = scripts.transform(&s, &mut ctx).unwrap_err();
        assert_eq!(err.kind, ScriptErrorKind::Memory, "{code}: {err}");
        assert!(ctx.message.as_bytes().len() <= 4 << 20, "{code}");
        next_message_works(&scripts);
    }
}
