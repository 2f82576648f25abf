//! How each kind of step plugs into the [pipeline](crate::Pipeline): declarative steps,
//! encoders and templates from [`transform`](crate::transform), and JavaScript from
//! `ferry-script`.
//!
//! A script runs synchronously on the thread that processes the message (the pipeline moves
//! channels with scripts to tokio's blocking pool), so its time limit never stalls a
//! connection's task. A script error carries the script's name and line; the pipeline adds
//! which step it was, and the message becomes `ERROR` with that text.

use std::sync::OnceLock;

use ferry_hl7::MessageBuf;
use ferry_script::{Script, ScriptContext, Scripts};

use crate::pipeline::{Context, Convert, Encode, FilterStep, Preprocess, TransformStep};
use crate::transform::{Encoder, Hl7Template, Step};

impl TransformStep for Step {
    fn apply(&self, context: &mut Context) -> Result<(), String> {
        Step::apply(self, &mut context.message).map_err(|e| e.to_string())
    }
}

impl Encode for Encoder {
    fn encode(&self, message: &MessageBuf) -> Result<Vec<u8>, String> {
        Encoder::encode(self, message.as_bytes())
    }

    fn is_identity(&self) -> bool {
        matches!(self, Encoder::Hl7)
    }
}

impl Convert for Hl7Template {
    fn to_hl7(&self, input: &[u8]) -> Result<Vec<u8>, String> {
        self.render_bytes(input).map_err(|e| e.to_string())
    }
}

/// A JavaScript transformer, filter, preprocessor or response transformer of a channel.
#[derive(Clone)]
pub struct ScriptStep {
    scripts: Scripts,
    script: Script,
}

impl std::fmt::Debug for ScriptStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptStep")
            .field("script", &self.script.name())
            .finish_non_exhaustive()
    }
}

impl ScriptStep {
    /// A compiled `script` of the channel's `scripts`.
    pub fn new(scripts: Scripts, script: Script) -> ScriptStep {
        ScriptStep { scripts, script }
    }

    /// Run with the pipeline's context: the message and maps move into the script's context
    /// and back, whatever the outcome (a failed script keeps the edits it made, as the message
    /// is stored as `ERROR` anyway).
    fn run<T>(
        &self,
        context: &mut Context,
        response: Option<Vec<u8>>,
        call: impl FnOnce(&Scripts, &Script, &mut ScriptContext) -> Result<T, ferry_script::ScriptError>,
    ) -> Result<(T, Option<Vec<u8>>), String> {
        let mut script_context = ScriptContext {
            message: take_message(context),
            channel: context.channel.clone(),
            message_id: None,
            channel_map: std::mem::take(&mut context.channel_map),
            source_map: std::mem::take(&mut context.source_map),
            response,
            routed: Vec::new(),
        };
        let result = call(&self.scripts, &self.script, &mut script_context);
        context.message = script_context.message;
        context.channel_map = script_context.channel_map;
        context.source_map = script_context.source_map;
        context.routed.extend(
            script_context
                .routed
                .into_iter()
                .map(|r| (r.channel, r.message)),
        );
        result
            .map(|t| (t, script_context.response))
            .map_err(|e| e.to_string())
    }
}

/// A tiny message to hold the place of the one a script is working on (`None` cannot happen:
/// the literal parses; callers then copy the message instead).
fn placeholder() -> Option<MessageBuf> {
    static EMPTY: OnceLock<Option<MessageBuf>> = OnceLock::new();
    EMPTY
        .get_or_init(|| MessageBuf::parse(&b"MSH|^~\\&|\r"[..]).ok())
        .clone()
}

/// Take the message out of the context, leaving a placeholder.
fn take_message(context: &mut Context) -> MessageBuf {
    match placeholder() {
        Some(p) => std::mem::replace(&mut context.message, p),
        None => context.message.clone(),
    }
}

impl TransformStep for ScriptStep {
    fn apply(&self, context: &mut Context) -> Result<(), String> {
        self.run(context, None, |s, script, c| s.transform(script, c))
            .map(|_| ())
    }

    fn blocks(&self) -> bool {
        true
    }
}

impl FilterStep for ScriptStep {
    fn accepts(&self, context: &mut Context) -> Result<bool, String> {
        self.run(context, None, |s, script, c| s.filter(script, c))
            .map(|(accepts, _)| accepts)
    }
}

impl Preprocess for ScriptStep {
    /// The script gets the raw bytes as text: UTF-8 when they are valid UTF-8, otherwise one
    /// character per byte (Latin-1), which the result is written back in, so an 8-bit feed
    /// (ISO 8859-1, Windows-1252) passes through a preprocessor without a byte changed that the
    /// script did not change.
    fn preprocess(&self, raw: &[u8]) -> Result<Vec<u8>, String> {
        let (text, utf8) = match std::str::from_utf8(raw) {
            Ok(t) => (t.to_owned(), true),
            Err(_) => (raw.iter().map(|&b| char::from(b)).collect(), false),
        };
        let holder = placeholder().ok_or("internal error: no placeholder message")?;
        let mut context = ScriptContext::new(holder, "");
        let out = self
            .scripts
            .preprocess(&self.script, &text, &mut context)
            .map_err(|e| e.to_string())?;
        if utf8 {
            return Ok(out.into_bytes());
        }
        out.chars()
            .map(|c| {
                u8::try_from(u32::from(c)).map_err(|_| {
                    format!(
                        "the preprocessor returned U+{:04X}, which the message's 8-bit text cannot hold",
                        u32::from(c)
                    )
                })
            })
            .collect()
    }
}

/// A JavaScript response transformer: the script sees the response both as `msg` (parsed) and
/// as `response` (text). A string it returns replaces the response; otherwise its edits to
/// `msg` are the new response.
#[derive(Clone, Debug)]
pub struct ResponseScript(pub ScriptStep);

impl TransformStep for ResponseScript {
    fn apply(&self, context: &mut Context) -> Result<(), String> {
        let before = context.message.as_bytes().to_vec();
        let (_, response) = self.0.run(context, Some(before.clone()), |s, script, c| {
            s.transform(script, c)
        })?;
        match response {
            Some(text) if text != before => {
                context.message = MessageBuf::parse(text)
                    .map_err(|e| format!("the response the script returned is not HL7: {e}"))?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn blocks(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_script::{ScriptKind, ScriptLimits, Source};
    use std::collections::BTreeMap;

    fn preprocessor(code: &str) -> ScriptStep {
        let scripts = Scripts::new(Vec::new(), BTreeMap::new(), ScriptLimits::default(), false)
            .expect("scripts");
        let script = scripts
            .compile(ScriptKind::Preprocessor, Source::new("pre.js", code))
            .expect("compile");
        ScriptStep::new(scripts, script)
    }

    #[test]
    fn a_preprocessor_keeps_8_bit_bytes_it_did_not_touch() {
        let step = preprocessor(r#"return message.replace(/\n/g, "\r");"#);
        // "MÜLLER" in ISO 8859-1: 0xDC is not valid UTF-8 on its own.
        let raw = b"MSH|^~\\&|A|B|||x||ADT^A01|1|P|2.5|||||||8859/1\nPID|1||1||M\xDCLLER\n";
        let out = step.preprocess(raw).expect("preprocess");
        assert_eq!(
            out,
            b"MSH|^~\\&|A|B|||x||ADT^A01|1|P|2.5|||||||8859/1\rPID|1||1||M\xDCLLER\r"
        );
        let utf8 = "PID|1||1||MÜLLER\n".as_bytes();
        assert_eq!(
            step.preprocess(utf8).expect("utf-8"),
            "PID|1||1||MÜLLER\r".as_bytes()
        );
        let wide = preprocessor(r#"return message + "€";"#);
        let err = wide
            .preprocess(b"\xDC")
            .expect_err("cannot be written in 8 bits");
        assert!(err.contains("U+20AC"), "{err}");
    }
}
