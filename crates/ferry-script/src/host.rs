//! The Rust side of the script API: the functions the prelude (`prelude.js`) builds `msg`,
//! `channelMap`, `sourceMap`, `configMap`, `logger` and `router` from.
//!
//! Every function checks its arguments itself and throws a `TypeError` naming the function
//! when they are wrong, so garbage from a script becomes a catchable exception, never a panic.
//! The per-message state is borrowed only while Rust code runs (never across a call back
//! into JavaScript), and a failed borrow throws instead of panicking.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use ferry_hl7::MessageBuf;
use ferry_hl7::charset::Charset;
use rquickjs::convert::Coerced;
use rquickjs::function::Rest;
use rquickjs::{Array, Ctx, Exception, FromJs, Function, Object, Value};
use serde_json::{Map, Value as Json};

use crate::Routed;

/// What one call of a script may touch, swapped in from the [`ScriptContext`] before the call
/// and back out after it.
///
/// [`ScriptContext`]: crate::ScriptContext
pub(crate) struct CallState {
    pub message: MessageBuf,
    /// False in preprocessors: there is no parsed message yet.
    pub msg_available: bool,
    pub channel: String,
    pub script: String,
    pub message_id: Option<i64>,
    pub channel_map: Map<String, Json>,
    pub source_map: Map<String, Json>,
    pub routed: Vec<Routed>,
    /// Bytes this call added to the channel map and the routed messages, which live outside
    /// the QuickJS heap and so outside its memory limit.
    pub host_bytes: usize,
}

/// State shared by the host functions and the interrupt handler of one runtime.
pub(crate) struct Shared {
    pub state: RefCell<CallState>,
    pub config_map: Arc<BTreeMap<String, String>>,
    pub log_phi_at_info: bool,
    /// [`ScriptLimits::memory_bytes`](crate::ScriptLimits::memory_bytes), also applied to
    /// what scripts store on the Rust side (the message, the channel map, routed messages).
    pub memory_limit: usize,
    /// [`ScriptLimits::time`](crate::ScriptLimits::time): how long one call may run.
    pub time_limit: std::time::Duration,
    /// When the running call must stop; `None` between calls.
    pub deadline: Cell<Option<Instant>>,
    /// Set by the interrupt handler when it stopped a script.
    pub interrupted: Cell<bool>,
    /// A host function panicked during this call (which one, and the panic message).
    pub panicked: RefCell<Option<String>>,
}

type JsResult<T> = rquickjs::Result<T>;

fn type_error<T>(ctx: &Ctx<'_>, message: &str) -> JsResult<T> {
    Err(Exception::throw_type(ctx, message))
}

fn describe(v: &Value<'_>) -> &'static str {
    v.type_name()
}

/// Argument `i` as a string, or a `TypeError` naming `func` and `what`.
fn arg_str(
    ctx: &Ctx<'_>,
    args: &[Value<'_>],
    i: usize,
    func: &str,
    what: &str,
) -> JsResult<String> {
    match args.get(i) {
        Some(v) => match v.as_string() {
            Some(s) => match s.to_string() {
                Ok(s) => Ok(s),
                Err(_) => type_error(ctx, &format!("{func}: {what} is not valid text")),
            },
            None => type_error(
                ctx,
                &format!("{func}: {what} must be a string, got {}", describe(v)),
            ),
        },
        None => type_error(ctx, &format!("{func}: missing argument {what}")),
    }
}

/// Argument `i` as a non-negative integer; `default` when absent or undefined.
fn arg_count(
    ctx: &Ctx<'_>,
    args: &[Value<'_>],
    i: usize,
    func: &str,
    what: &str,
    default: Option<usize>,
) -> JsResult<usize> {
    match args.get(i) {
        Some(v) if !v.is_undefined() => match v.as_number() {
            Some(n) if n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n <= 1e9 => Ok(n as usize),
            _ => type_error(
                ctx,
                &format!(
                    "{func}: {what} must be a whole number >= 0, got {}",
                    describe(v)
                ),
            ),
        },
        _ => match default {
            Some(d) => Ok(d),
            None => type_error(ctx, &format!("{func}: missing argument {what}")),
        },
    }
}

/// A value to write with `msg.set`: strings as they are, numbers and booleans as JavaScript
/// writes them (`String(v)`); anything else is refused.
fn arg_value<'js>(ctx: &Ctx<'js>, args: &[Value<'js>], i: usize, func: &str) -> JsResult<String> {
    let Some(v) = args.get(i) else {
        return type_error(ctx, &format!("{func}: missing argument value"));
    };
    if v.is_string() || v.is_number() || v.is_bool() || v.is_big_int() {
        let Coerced(s) = Coerced::<String>::from_js(ctx, v.clone())?;
        return Ok(s);
    }
    if v.is_undefined() || v.is_null() {
        return type_error(
            ctx,
            &format!(
                "{func}: value is {}; use msg.setNull(path) for the HL7 null or msg.delete(path) to empty it",
                describe(v)
            ),
        );
    }
    type_error(
        ctx,
        &format!(
            "{func}: value must be a string, number or boolean, got {}",
            describe(v)
        ),
    )
}

fn string<'js>(ctx: &Ctx<'js>, s: &str) -> JsResult<Value<'js>> {
    Ok(rquickjs::String::from_str(ctx.clone(), s)?.into_value())
}

fn strings<'js>(ctx: &Ctx<'js>, items: impl IntoIterator<Item = String>) -> JsResult<Value<'js>> {
    let array = Array::new(ctx.clone())?;
    for (i, s) in items.into_iter().enumerate() {
        array.set(i, string(ctx, &s)?)?;
    }
    Ok(array.into_value())
}

impl Shared {
    fn with_state<'js, T>(
        &self,
        ctx: &Ctx<'js>,
        f: impl FnOnce(&mut CallState) -> Result<T, String>,
    ) -> JsResult<T> {
        let outcome = match self.state.try_borrow_mut() {
            Ok(mut state) => f(&mut state),
            Err(_) => Err("ferry: the message state is busy (re-entrant call)".to_owned()),
        };
        outcome.map_err(|m| Exception::throw_message(ctx, &m))
    }

    /// The message, or an error in preprocessors.
    fn with_msg<'js, T>(
        &self,
        ctx: &Ctx<'js>,
        f: impl FnOnce(&mut MessageBuf) -> Result<T, String>,
    ) -> JsResult<T> {
        self.with_state(ctx, |state| {
            if !state.msg_available {
                return Err(
                    "msg is not available in a preprocessor (or in a library's top-level code): the message is not parsed yet; a preprocessor edits the `message` text and returns it"
                        .to_owned(),
                );
            }
            f(&mut state.message)
        })
    }
}

/// The message may not grow past the memory limit: its bytes are outside the QuickJS heap.
fn check_growth(m: &MessageBuf, adding: usize, limit: usize, func: &str) -> Result<(), String> {
    if m.as_bytes().len().saturating_add(adding) > limit {
        return Err(format!(
            "{func}: out of memory: the message would grow past the script memory limit of {limit} bytes"
        ));
    }
    Ok(())
}

/// Count `bytes` more of channel map or routed data against the memory limit.
fn charge(s: &mut CallState, bytes: usize, limit: usize, func: &str) -> Result<(), String> {
    s.host_bytes = s.host_bytes.saturating_add(bytes);
    if s.host_bytes > limit {
        return Err(format!(
            "{func}: out of memory: this script stored more than the script memory limit of {limit} bytes"
        ));
    }
    Ok(())
}

fn text_of(message: &MessageBuf) -> String {
    let m = message.message();
    let charset = m.declared_charset().unwrap_or(Charset::Utf8);
    match charset.decode(message.as_bytes()) {
        Ok(text) => text.into_owned(),
        Err(_) => String::from_utf8_lossy(message.as_bytes()).into_owned(),
    }
}

fn encode_segment<'a>(message: &MessageBuf, text: &'a str) -> Result<Cow<'a, [u8]>, String> {
    let charset = message
        .message()
        .declared_charset()
        .unwrap_or(Charset::Utf8);
    charset.encode(text).map_err(|e| {
        format!(
            "msg.addSegment: `{}` cannot be written in the message's charset {}",
            e.character,
            charset.code()
        )
    })
}

fn map_of(state: &CallState, which: usize) -> &Map<String, Json> {
    if which == 1 {
        &state.source_map
    } else {
        &state.channel_map
    }
}

/// Install the host functions on a fresh object and run the prelude with it.
pub(crate) fn install<'js>(ctx: &Ctx<'js>, shared: &Rc<Shared>) -> JsResult<()> {
    let host = Object::new(ctx.clone())?;
    // Each host function runs inside `catch_unwind`: a panic (a bug in Ferry) is recorded in
    // `Shared::panicked`, which fails the message as Internal however the script handles the
    // exception thrown here, and the deadline is moved to now so the interrupt handler stops
    // the script at its next poll.
    macro_rules! host_fn {
        ($name:literal, |$ctx:ident, $args:ident, $sh:ident| $body:expr) => {{
            let shared_fn = Rc::clone(shared);
            let f = Function::new(
                ctx.clone(),
                move |$ctx: Ctx<'js>, rest: Rest<Value<'js>>| -> JsResult<Value<'js>> {
                    let $args: &[Value<'js>] = &rest.0;
                    let $sh: &Shared = &shared_fn;
                    let ctx_for_panic = $ctx.clone();
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| $body)) {
                        Ok(result) => result,
                        Err(panic) => {
                            let why = crate::engine::panic_text(&*panic);
                            shared_fn
                                .panicked
                                .replace(Some(format!("{}: {why}", $name)));
                            shared_fn.deadline.set(Some(Instant::now()));
                            Err(Exception::throw_internal(
                                &ctx_for_panic,
                                "internal error in the script host",
                            ))
                        }
                    }
                },
            )?
            .with_name($name)?;
            host.set($name, f)?;
        }};
    }

    host_fn!("get", |ctx, args, sh| {
        let path = arg_str(&ctx, args, 0, "msg.get", "path")?;
        let text = sh.with_msg(&ctx, |m| match m.message().get_str(&path) {
            Ok(v) => Ok(v.map(Cow::into_owned).unwrap_or_default()),
            Err(e) => Err(format!("msg.get: {e}")),
        })?;
        string(&ctx, &text)
    });
    host_fn!("set", |ctx, args, sh| {
        let path = arg_str(&ctx, args, 0, "msg.set", "path")?;
        let value = arg_value(&ctx, args, 1, "msg.set")?;
        sh.with_msg(&ctx, |m| {
            check_growth(m, value.len(), sh.memory_limit, "msg.set")?;
            m.set(&path, &value).map_err(|e| format!("msg.set: {e}"))
        })?;
        Ok(Value::new_undefined(ctx.clone()))
    });
    host_fn!("setNull", |ctx, args, sh| {
        let path = arg_str(&ctx, args, 0, "msg.setNull", "path")?;
        sh.with_msg(&ctx, |m| {
            m.set_null(&path).map_err(|e| format!("msg.setNull: {e}"))
        })?;
        Ok(Value::new_undefined(ctx.clone()))
    });
    host_fn!("delete", |ctx, args, sh| {
        let path = arg_str(&ctx, args, 0, "msg.delete", "path")?;
        let changed = sh.with_msg(&ctx, |m| {
            m.delete(&path).map_err(|e| format!("msg.delete: {e}"))
        })?;
        Ok(Value::new_bool(ctx.clone(), changed))
    });
    host_fn!("exists", |ctx, args, sh| {
        let path = arg_str(&ctx, args, 0, "msg.exists", "path")?;
        let present = sh.with_msg(&ctx, |m| match m.get(&path) {
            Ok(v) => Ok(v.is_some_and(|raw| !raw.is_empty())),
            Err(e) => Err(format!("msg.exists: {e}")),
        })?;
        Ok(Value::new_bool(ctx.clone(), present))
    });
    host_fn!("count", |ctx, args, sh| {
        let id = arg_str(&ctx, args, 0, "msg.count", "segment id")?;
        let n = sh.with_msg(&ctx, |m| {
            Ok(m.message()
                .segments()
                .filter(|s| s.id() == id.as_bytes())
                .count())
        })?;
        Ok(Value::new_number(ctx.clone(), n as f64))
    });
    host_fn!("segmentIds", |ctx, _args, sh| {
        let ids = sh.with_msg(&ctx, |m| {
            Ok(m.message()
                .segments()
                .map(|s| String::from_utf8_lossy(s.id()).into_owned())
                .collect::<Vec<_>>())
        })?;
        strings(&ctx, ids)
    });
    host_fn!("segmentText", |ctx, args, sh| {
        let id = arg_str(&ctx, args, 0, "segment.toString", "segment id")?;
        let index = arg_count(&ctx, args, 1, "segment.toString", "index", None)?;
        let text = sh.with_msg(&ctx, |m| {
            let msg = m.message();
            let Some(seg) = msg.segment(&id, index) else {
                return Ok(String::new());
            };
            let charset = msg.declared_charset().unwrap_or(Charset::Utf8);
            Ok(match charset.decode(seg.as_bytes()) {
                Ok(t) => t.into_owned(),
                Err(_) => String::from_utf8_lossy(seg.as_bytes()).into_owned(),
            })
        })?;
        string(&ctx, &text)
    });
    host_fn!("addSegment", |ctx, args, sh| {
        let text = arg_str(&ctx, args, 0, "msg.addSegment", "segment text")?;
        let position = match args.get(1) {
            Some(v) if !v.is_undefined() => Some(arg_count(
                &ctx,
                args,
                1,
                "msg.addSegment",
                "position",
                None,
            )?),
            _ => None,
        };
        sh.with_msg(&ctx, |m| {
            check_growth(m, text.len(), sh.memory_limit, "msg.addSegment")?;
            let bytes = encode_segment(m, &text)?.into_owned();
            match position {
                Some(p) => m.insert_segment(p, &bytes),
                None => m.append_segment(&bytes),
            }
            .map_err(|e| format!("msg.addSegment: {e}"))
        })?;
        Ok(Value::new_undefined(ctx.clone()))
    });
    host_fn!("removeSegment", |ctx, args, sh| {
        let id = arg_str(&ctx, args, 0, "msg.removeSegment", "segment id")?;
        let occurrence = arg_count(&ctx, args, 1, "msg.removeSegment", "occurrence", Some(0))?;
        let removed = sh.with_msg(&ctx, |m| {
            let fail = |e: ferry_hl7::EditError| format!("msg.removeSegment: {e}");
            if occurrence > 0 {
                return m
                    .remove_segment(&id, occurrence)
                    .map(usize::from)
                    .map_err(fail);
            }
            let mut n = 0;
            while m.remove_segment(&id, 1).map_err(fail)? {
                n += 1;
            }
            Ok(n)
        })?;
        Ok(Value::new_number(ctx.clone(), removed as f64))
    });
    host_fn!("renameSegment", |ctx, args, sh| {
        let from = arg_str(&ctx, args, 0, "msg.renameSegment", "segment id")?;
        let to = arg_str(&ctx, args, 1, "msg.renameSegment", "new id")?;
        let occurrence = arg_count(&ctx, args, 2, "msg.renameSegment", "occurrence", Some(0))?;
        let renamed = sh.with_msg(&ctx, |m| {
            let fail = |e: ferry_hl7::EditError| format!("msg.renameSegment: {e}");
            if occurrence > 0 {
                return m
                    .rename_segment(&from, occurrence, &to)
                    .map(usize::from)
                    .map_err(fail);
            }
            if from == to {
                return Ok(m
                    .message()
                    .segments()
                    .filter(|s| s.id() == from.as_bytes())
                    .count());
            }
            let mut n = 0;
            while m.rename_segment(&from, 1, &to).map_err(fail)? {
                n += 1;
            }
            Ok(n)
        })?;
        Ok(Value::new_number(ctx.clone(), renamed as f64))
    });
    host_fn!("toString", |ctx, _args, sh| {
        let text = sh.with_msg(&ctx, |m| Ok(text_of(m)))?;
        string(&ctx, &text)
    });
    host_fn!("toJSON", |ctx, _args, sh| {
        let json = sh.with_msg(&ctx, |m| Ok(ferry_hl7::json::to_json_string(&m.message())))?;
        string(&ctx, &json)
    });

    host_fn!("mapGet", |ctx, args, sh| {
        let which = arg_count(&ctx, args, 0, "map.get", "map", None)?;
        let key = arg_str(&ctx, args, 1, "map.get", "key")?;
        let json = sh.with_state(&ctx, |s| {
            Ok(map_of(s, which).get(&key).map(Json::to_string))
        })?;
        match json {
            Some(j) => string(&ctx, &j),
            None => Ok(Value::new_undefined(ctx.clone())),
        }
    });
    host_fn!("mapPut", |ctx, args, sh| {
        let key = arg_str(&ctx, args, 0, "channelMap.put", "key")?;
        let json = arg_str(&ctx, args, 1, "channelMap.put", "value")?;
        sh.with_state(&ctx, |s| {
            charge(s, key.len() + json.len(), sh.memory_limit, "channelMap.put")?;
            let value: Json = serde_json::from_str(&json)
                .map_err(|e| format!("channelMap.put: value is not storable: {e}"))?;
            s.channel_map.insert(key, value);
            Ok(())
        })?;
        Ok(Value::new_undefined(ctx.clone()))
    });
    host_fn!("mapRemove", |ctx, args, sh| {
        let key = arg_str(&ctx, args, 0, "channelMap.remove", "key")?;
        let old = sh.with_state(&ctx, |s| {
            Ok(s.channel_map.remove(&key).map(|v| v.to_string()))
        })?;
        match old {
            Some(j) => string(&ctx, &j),
            None => Ok(Value::new_undefined(ctx.clone())),
        }
    });
    host_fn!("mapKeys", |ctx, args, sh| {
        let which = arg_count(&ctx, args, 0, "map.keys", "map", None)?;
        let keys = sh.with_state(&ctx, |s| {
            Ok(map_of(s, which).keys().cloned().collect::<Vec<_>>())
        })?;
        strings(&ctx, keys)
    });
    host_fn!("configGet", |ctx, args, sh| {
        let key = arg_str(&ctx, args, 0, "configMap.get", "key")?;
        match sh.config_map.get(&key) {
            Some(v) => string(&ctx, v),
            None => Ok(Value::new_undefined(ctx.clone())),
        }
    });
    host_fn!("configKeys", |ctx, _args, sh| {
        strings(&ctx, sh.config_map.keys().cloned())
    });
    host_fn!("log", |ctx, args, sh| {
        let level = arg_count(&ctx, args, 0, "logger", "level", None)?;
        let text = arg_str(&ctx, args, 1, "logger", "text")?;
        sh.with_state(&ctx, |s| {
            log(level, sh.log_phi_at_info, s, &text);
            Ok(())
        })?;
        Ok(Value::new_undefined(ctx.clone()))
    });
    host_fn!("route", |ctx, args, sh| {
        let channel = arg_str(&ctx, args, 0, "router.route", "channel")?;
        let text = arg_str(&ctx, args, 1, "router.route", "message")?;
        sh.with_state(&ctx, |s| {
            charge(
                s,
                channel.len() + text.len(),
                sh.memory_limit,
                "router.route",
            )?;
            s.routed.push(Routed {
                channel,
                message: text.into_bytes(),
            });
            Ok(())
        })?;
        Ok(Value::new_undefined(ctx.clone()))
    });

    // Test builds only: a host function that panics, to prove a panic is contained.
    #[cfg(test)]
    {
        host_fn!("testPanic", |_ctx, _args, _sh| {
            if _args.is_empty() {
                panic!("host function panicked on purpose");
            }
            Ok(Value::new_undefined(_ctx.clone()))
        });
        let f: Function<'js> = host.get("testPanic")?;
        ctx.globals().set("__ferryTestPanic", f)?;
    }

    let prelude: Function<'js> = ctx.eval_with_options(
        include_str!("prelude.js"),
        crate::engine::eval_options("<ferry prelude>"),
    )?;
    prelude.call::<_, ()>((host,))
}

/// `logger.*`: script text may hold PHI, so it goes out at DEBUG unless the channel allows
/// PHI at INFO and above.
fn log(level: usize, phi_at_info: bool, s: &CallState, text: &str) {
    let level = if phi_at_info { level } else { 0 };
    let (channel, script, id) = (s.channel.as_str(), s.script.as_str(), s.message_id);
    match level {
        0 => tracing::debug!(target: "ferry_script", channel, script, message_id = id, "{text}"),
        1 => tracing::info!(target: "ferry_script", channel, script, message_id = id, "{text}"),
        2 => tracing::warn!(target: "ferry_script", channel, script, message_id = id, "{text}"),
        _ => tracing::error!(target: "ferry_script", channel, script, message_id = id, "{text}"),
    }
}
