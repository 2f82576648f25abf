//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test fixtures are known good

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_hl7::MessageBuf;
use ferry_script::{Script, ScriptContext, ScriptError, ScriptKind, ScriptLimits, Scripts, Source};

/// A small ADT^A01 with two OBX, an escaped value and a repeated PID-3.
pub const ADT: &str = "MSH|^~\\&|SEND|FAC|RECV|RFAC|20260101120000||ADT^A01|MSG1|P|2.5\r\
EVN|A01|20260101120000\r\
PID|1||123^^^H~456^^^X||DOE^JOHN^Q||19700101|M|||1 Main\\F\\St^^Town\r\
NTE|1||first\r\
PV1|1|I|WARD^1^2\r\
OBX|1|ST|A||one\r\
OBX|2|ST|B||two\r";

/// The corpus ADT^A01 used by the bench (hapi-hl7v2 ADT_A01 with two NTE added).
pub const CORPUS_ADT: &[u8] = include_bytes!("../data/adt_a01.hl7");

pub fn message(text: &str) -> MessageBuf {
    MessageBuf::parse(text.as_bytes().to_vec()).expect("test message parses")
}

pub fn scripts() -> Scripts {
    scripts_with(Vec::new(), ScriptLimits::default())
}

pub fn scripts_with(libraries: Vec<Source>, limits: ScriptLimits) -> Scripts {
    let mut config = BTreeMap::new();
    config.insert("facility".to_owned(), "NORTH".to_owned());
    config.insert("token".to_owned(), "s3cret".to_owned());
    Scripts::new(libraries, config, limits, false).expect("scripts")
}

pub fn small_limits() -> ScriptLimits {
    ScriptLimits {
        memory_bytes: 16 << 20,
        time: Duration::from_millis(200),
        ..ScriptLimits::default()
    }
}

pub fn compile(scripts: &Scripts, kind: ScriptKind, code: &str) -> Script {
    scripts
        .compile(kind, Source::new("test.js", code))
        .unwrap_or_else(|e| panic!("compile: {e}"))
}

pub fn context() -> ScriptContext {
    ScriptContext::new(message(ADT), "adt")
}

/// Run a transform on a fresh context of [`ADT`]; the context after it.
pub fn transform(code: &str) -> Result<ScriptContext, ScriptError> {
    let scripts = scripts();
    let script = compile(&scripts, ScriptKind::Transform, code);
    let mut ctx = context();
    scripts.transform(&script, &mut ctx)?;
    Ok(ctx)
}

/// Run a transform that must succeed; the context after it.
pub fn ok(code: &str) -> ScriptContext {
    transform(code).unwrap_or_else(|e| panic!("transform failed: {e}"))
}

/// Run a filter script on [`ADT`] and return what it decided.
pub fn filter(code: &str) -> Result<bool, ScriptError> {
    let scripts = scripts();
    let script = compile(&scripts, ScriptKind::Filter, code);
    scripts.filter(&script, &mut context())
}

/// The text at a path of the context's message.
pub fn get(ctx: &ScriptContext, path: &str) -> String {
    ctx.message
        .message()
        .get_str(path)
        .expect("path")
        .map(|c| c.into_owned())
        .unwrap_or_default()
}

/// A channel-map value as JSON text.
pub fn map(ctx: &ScriptContext, key: &str) -> String {
    ctx.channel_map
        .get(key)
        .map(|v| v.to_string())
        .unwrap_or_else(|| "<absent>".to_owned())
}
