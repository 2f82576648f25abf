//! One QuickJS runtime per thread per [`Scripts`](crate::Scripts): created lazily, the
//! prelude and the libraries evaluated once, every script compiled once, and the whole runtime
//! thrown away after a timeout, an out-of-memory or an internal fault so the next message
//! starts clean.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::Instant;

use ferry_hl7::MessageBuf;
use rquickjs::context::EvalOptions;
use rquickjs::convert::Coerced;
use rquickjs::{
    CatchResultExt, CaughtError, Context, Ctx, Exception, FromJs, Function, Persistent, Runtime,
    Value,
};

use crate::host::{CallState, Shared};
use crate::{Inner, Script, ScriptContext, ScriptError, ScriptErrorKind};

thread_local! {
    /// This thread's runtimes, keyed by [`Inner::id`].
    static ENGINES: RefCell<HashMap<u64, Engine>> = RefCell::new(HashMap::new());
}

/// The message of a panic payload.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

/// Options for evaluating Ferry code: global, strict, with this file name in stack traces.
pub(crate) fn eval_options(filename: &str) -> EvalOptions {
    let mut options = EvalOptions::default();
    options.global = true;
    options.strict = true;
    options.filename = Some(filename.to_owned());
    options
}

/// What a script returned, read inside the context.
pub(crate) struct Returned {
    /// JavaScript truthiness (`!!value`).
    pub truthy: bool,
    /// `undefined` or `null`.
    pub nothing: bool,
    /// The value when it is a string.
    pub text: Option<String>,
    /// `typeof`-like name, for errors.
    pub type_name: &'static str,
}

/// A runtime with its context and compiled scripts. Field order is drop order: the compiled
/// functions must go before the context and the runtime that own them.
pub(crate) struct Engine {
    compiled: HashMap<u64, Persistent<Function<'static>>>,
    /// File names given to QuickJS → the source names they stand for.
    files: HashMap<String, String>,
    shared: Rc<Shared>,
    context: Context,
    /// Held so it outlives everything above; dropped last.
    _runtime: Runtime,
    owner: Weak<Inner>,
}

fn internal(what: &str, e: impl std::fmt::Display) -> ScriptError {
    ScriptError::new(
        ScriptErrorKind::Internal,
        what,
        format!("script engine: {e}"),
    )
}

/// A file name QuickJS can print in a stack trace and [`locate`] can find again.
fn file_name(files: &mut HashMap<String, String>, name: &str) -> String {
    let mut base: String = name
        .chars()
        .map(|c| {
            if matches!(c, ':' | '(' | ')' | '\n' | '\r' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect();
    if base.is_empty() {
        base.push('_');
    }
    let mut candidate = base.clone();
    let mut n = 1;
    while let Some(existing) = files.get(&candidate) {
        if existing == name {
            return candidate;
        }
        n += 1;
        candidate = format!("{base}#{n}");
    }
    files.insert(candidate.clone(), name.to_owned());
    candidate
}

/// The first stack frame in one of our files: (file name, line).
fn locate<'a>(stack: &str, files: &'a HashMap<String, String>) -> Option<(&'a str, u32)> {
    for frame in stack.lines() {
        let frame = frame.trim();
        let Some(frame) = frame.strip_prefix("at ") else {
            continue;
        };
        let loc = match (frame.ends_with(')'), frame.rfind('(')) {
            (true, Some(open)) => &frame[open + 1..frame.len() - 1],
            _ => frame,
        };
        // `file:line:col` or `file:line`.
        for parts in [3, 2] {
            let mut it = loc.rsplitn(parts, ':');
            let pieces: Vec<&str> = it.by_ref().collect();
            if pieces.len() != parts {
                continue;
            }
            let file = pieces[parts - 1];
            let line = pieces[parts - 2];
            if let (Some(name), Ok(line)) = (files.get(file), line.parse::<u32>()) {
                return Some((name.as_str(), line));
            }
        }
    }
    None
}

impl Engine {
    fn create(inner: &Arc<Inner>) -> Result<Engine, ScriptError> {
        let what = "script runtime";
        let runtime = Runtime::new().map_err(|e| internal(what, e))?;
        runtime.set_memory_limit(inner.limits.memory_bytes);
        runtime.set_max_stack_size(inner.limits.stack_bytes);
        let placeholder =
            MessageBuf::parse(b"MSH|^~\\&|\r".to_vec()).map_err(|e| internal(what, e))?;
        let shared = Rc::new(Shared {
            state: RefCell::new(CallState {
                message: placeholder,
                msg_available: false,
                channel: String::new(),
                script: String::new(),
                message_id: None,
                channel_map: Default::default(),
                source_map: Default::default(),
                routed: Vec::new(),
                host_bytes: 0,
            }),
            config_map: Arc::clone(&inner.config_map),
            log_phi_at_info: inner.log_phi_at_info,
            memory_limit: inner.limits.memory_bytes,
            time_limit: inner.limits.time,
            deadline: Cell::new(None),
            interrupted: Cell::new(false),
            panicked: RefCell::new(None),
        });
        let sh = Rc::clone(&shared);
        runtime.set_interrupt_handler(Some(Box::new(move || match sh.deadline.get() {
            Some(deadline) if Instant::now() >= deadline => {
                sh.interrupted.set(true);
                true
            }
            _ => false,
        })));
        let context = Context::full(&runtime).map_err(|e| internal(what, e))?;
        let mut engine = Engine {
            compiled: HashMap::new(),
            files: HashMap::new(),
            shared,
            context,
            _runtime: runtime,
            owner: Arc::downgrade(inner),
        };
        engine.guarded(what, |e| {
            let shared = Rc::clone(&e.shared);
            e.context.with(|ctx| {
                crate::host::install(&ctx, &shared)
                    .catch(&ctx)
                    .map_err(|c| e.error(&ctx, c, "<ferry prelude>", ScriptErrorKind::Internal))
            })
        })?;
        for library in &inner.libraries {
            let file = file_name(&mut engine.files, &library.name);
            // Parse it as a function body first (nothing runs), so a syntax error is told
            // apart from a SyntaxError the library throws while it runs (`JSON.parse`).
            let check = format!("(function () {{{}\n}})", library.code);
            engine.guarded(&library.name, |e| {
                e.context.with(|ctx| {
                    ctx.eval_with_options::<(), _>(check, eval_options(&file))
                        .catch(&ctx)
                        .map_err(|c| e.error(&ctx, c, &library.name, ScriptErrorKind::Syntax))
                })
            })?;
            engine.guarded(&library.name, |e| {
                e.context.with(|ctx| {
                    ctx.eval_with_options::<(), _>(library.code.as_str(), eval_options(&file))
                        .catch(&ctx)
                        .map_err(|c| e.error(&ctx, c, &library.name, ScriptErrorKind::Runtime))
                })
            })?;
        }
        Ok(engine)
    }

    /// Run `f` under the time limit, turning a panic into an [`ScriptErrorKind::Internal`].
    fn guarded<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Engine) -> Result<T, ScriptError>,
    ) -> Result<T, ScriptError> {
        self.shared.interrupted.set(false);
        self.shared
            .deadline
            .set(Instant::now().checked_add(self.shared.time_limit));
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| f(self)));
        self.shared.deadline.set(None);
        if let Some(why) = self.shared.panicked.take() {
            return Err(ScriptError::new(
                ScriptErrorKind::Internal,
                what,
                format!("internal error in the script host: {why}"),
            ));
        }
        match outcome {
            Ok(r) => r,
            Err(panic) => {
                let why = panic_text(&*panic);
                Err(ScriptError::new(
                    ScriptErrorKind::Internal,
                    what,
                    format!("internal error in the script host: {why}"),
                ))
            }
        }
    }

    /// Turn a caught JavaScript error into a [`ScriptError`] for `script`.
    fn error<'js>(
        &self,
        ctx: &Ctx<'js>,
        caught: CaughtError<'js>,
        script: &str,
        default: ScriptErrorKind,
    ) -> ScriptError {
        if self.shared.interrupted.get() {
            return ScriptError::new(
                ScriptErrorKind::Timeout,
                script,
                format!(
                    "the script ran longer than its time limit of {:?} and was stopped",
                    self.shared.time_limit
                ),
            );
        }
        let mut error = ScriptError::new(default, script, String::new());
        match caught {
            CaughtError::Exception(e) => {
                let name: Option<String> = e.get("name").ok();
                let message = e.message().unwrap_or_default();
                let name = name.unwrap_or_else(|| "Error".to_owned());
                error.message = format!("{name}: {message}");
                if message.contains("out of memory") {
                    error.kind = ScriptErrorKind::Memory;
                } else if name == "RangeError" && message.contains("stack") {
                    error.kind = ScriptErrorKind::Stack;
                } else if name == "SyntaxError" && default != ScriptErrorKind::Runtime {
                    error.kind = ScriptErrorKind::Syntax;
                } else if default == ScriptErrorKind::Syntax {
                    error.kind = ScriptErrorKind::Runtime;
                }
                if let Some((file, line)) =
                    e.stack().as_deref().and_then(|s| locate(s, &self.files))
                {
                    error.line = Some(line);
                    if file != script {
                        error.file = Some(file.to_owned());
                    }
                }
            }
            CaughtError::Value(v) => {
                if default == ScriptErrorKind::Syntax {
                    error.kind = ScriptErrorKind::Runtime;
                }
                let text = Coerced::<String>::from_js(ctx, v)
                    .map(|c| c.0)
                    .unwrap_or_else(|_| "a value that cannot be shown".to_owned());
                error.message = format!("uncaught exception: {text}");
            }
            CaughtError::Error(rquickjs::Error::Allocation) => {
                error.kind = ScriptErrorKind::Memory;
                error.message = "out of memory".to_owned();
            }
            CaughtError::Error(e) => {
                error.kind = ScriptErrorKind::Internal;
                error.message = format!("script engine: {e}");
            }
        }
        error
    }

    /// Compile `script` into this runtime unless it already is.
    pub(crate) fn ensure_compiled(&mut self, script: &Script) -> Result<(), ScriptError> {
        if self.compiled.contains_key(&script.def.id) {
            return Ok(());
        }
        let file = file_name(&mut self.files, &script.def.name);
        // The header shares line 1 with the script, so line numbers are the user's own.
        let code = format!("(function (message, response) {{{}\n}})", script.def.code);
        let name = script.def.name.as_str();
        let saved = self.guarded(name, |e| {
            e.context.with(|ctx| {
                let f = ctx
                    .eval_with_options::<Value<'_>, _>(code.as_str(), eval_options(&file))
                    .and_then(|v| {
                        // A script with an extra `}` closes the wrapper: what comes back is
                        // then not the function wrapped around the whole script.
                        let whole = v.as_function().is_some()
                            && Coerced::<String>::from_js(&ctx, v.clone())
                                .is_ok_and(|s| code.get(1..code.len() - 1) == Some(s.0.as_str()));
                        if whole {
                            Function::from_js(&ctx, v)
                        } else {
                            Err(Exception::throw_syntax(
                                &ctx,
                                "unbalanced `}`: the script closes the function it runs in",
                            ))
                        }
                    })
                    .catch(&ctx);
                f.map(|f| Persistent::save(&ctx, f))
                    .map_err(|c| e.error(&ctx, c, name, ScriptErrorKind::Syntax))
            })
        })?;
        self.compiled.insert(script.def.id, saved);
        Ok(())
    }

    /// Call a compiled script with `message` and `response` as its arguments, then run the
    /// promise jobs it queued, all under the time limit.
    pub(crate) fn call(
        &mut self,
        script: &Script,
        message: Option<&str>,
        response: Option<&str>,
    ) -> Result<Returned, ScriptError> {
        self.ensure_compiled(script)?;
        let name = script.def.name.as_str();
        let Some(function) = self.compiled.get(&script.def.id).cloned() else {
            return Err(internal(name, "compiled script missing"));
        };
        self.guarded(name, |e| {
            e.context.with(|ctx| {
                let result = (|| {
                    let f = function.restore(&ctx)?;
                    let arg = |s: Option<&str>| -> rquickjs::Result<Value<'_>> {
                        match s {
                            Some(s) => Ok(rquickjs::String::from_str(ctx.clone(), s)?.into_value()),
                            None => Ok(Value::new_undefined(ctx.clone())),
                        }
                    };
                    let value: Value<'_> = f.call((arg(message)?, arg(response)?))?;
                    while ctx.execute_pending_job() {}
                    let Coerced(truthy) = Coerced::<bool>::from_js(&ctx, value.clone())?;
                    let text = match value.as_string() {
                        Some(s) => Some(s.to_string()?),
                        None => None,
                    };
                    Ok(Returned {
                        truthy,
                        nothing: value.is_undefined() || value.is_null(),
                        text,
                        type_name: value.type_name(),
                    })
                })()
                .catch(&ctx);
                match result {
                    // A job stopped by the interrupt handler does not surface as an error.
                    Ok(_) if e.shared.interrupted.get() => Err(e.error(
                        &ctx,
                        CaughtError::Error(rquickjs::Error::Unknown),
                        name,
                        ScriptErrorKind::Runtime,
                    )),
                    Ok(r) => Ok(r),
                    Err(c) => Err(e.error(&ctx, c, name, ScriptErrorKind::Runtime)),
                }
            })
        })
    }

    /// Move the context's message and maps into the runtime for one call.
    pub(crate) fn swap_in(
        &self,
        ctx: &mut ScriptContext,
        script: &Script,
        msg_available: bool,
    ) -> Result<(), ScriptError> {
        let Ok(mut s) = self.shared.state.try_borrow_mut() else {
            return Err(internal(&script.def.name, "message state busy"));
        };
        std::mem::swap(&mut s.message, &mut ctx.message);
        s.msg_available = msg_available;
        s.channel.clone_from(&ctx.channel);
        s.script.clone_from(&script.def.name);
        s.message_id = ctx.message_id;
        s.channel_map = std::mem::take(&mut ctx.channel_map);
        s.source_map = std::mem::take(&mut ctx.source_map);
        s.routed = std::mem::take(&mut ctx.routed);
        s.host_bytes = 0;
        Ok(())
    }

    /// Give the context back what [`swap_in`](Self::swap_in) took, with the script's edits.
    pub(crate) fn swap_out(&self, ctx: &mut ScriptContext) {
        if let Ok(mut s) = self.shared.state.try_borrow_mut() {
            std::mem::swap(&mut s.message, &mut ctx.message);
            s.msg_available = false;
            ctx.channel_map = std::mem::take(&mut s.channel_map);
            ctx.source_map = std::mem::take(&mut s.source_map);
            ctx.routed = std::mem::take(&mut s.routed);
        }
    }
}

/// Run `f` with this thread's engine for `inner`, creating it if needed, and discard the engine
/// after a timeout, an out-of-memory or an internal fault.
pub(crate) fn with_engine<T>(
    inner: &Arc<Inner>,
    f: impl FnOnce(&mut Engine) -> Result<T, ScriptError>,
) -> Result<T, ScriptError> {
    let busy = || {
        ScriptError::new(
            ScriptErrorKind::Usage,
            "scripts",
            "a script cannot run scripts (re-entrant call on this thread)",
        )
    };
    let outcome = ENGINES.try_with(|engines| {
        let Ok(mut engines) = engines.try_borrow_mut() else {
            return Err(busy());
        };
        // Runtimes of channels that were undeployed.
        engines.retain(|_, e| e.owner.strong_count() > 0);
        let engine = match engines.entry(inner.id) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Engine::create(inner)?),
        };
        let result = f(engine);
        if let Err(e) = &result
            && matches!(
                e.kind,
                ScriptErrorKind::Timeout | ScriptErrorKind::Memory | ScriptErrorKind::Internal
            )
        {
            engines.remove(&inner.id);
        }
        result
    });
    outcome.unwrap_or_else(|_| Err(busy()))
}

/// Whether this thread currently holds a runtime for `inner` (tests prove a discard).
#[cfg(test)]
pub(crate) fn has_engine(inner: &Arc<Inner>) -> bool {
    ENGINES.with(|e| e.borrow().contains_key(&inner.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_unique_and_locatable() {
        let mut files = HashMap::new();
        let a = file_name(&mut files, "channel `c`, transform (3): x");
        assert_eq!(a, "channel `c`, transform _3__ x");
        assert_eq!(file_name(&mut files, "channel `c`, transform (3): x"), a);
        let b = file_name(&mut files, "channel `c`, transform _3__ x");
        assert_ne!(a, b);
        let stack = format!("    at get (native)\n    at <anonymous> ({b}:12:7)\n    at {a}:3:1\n");
        assert_eq!(
            locate(&stack, &files),
            Some(("channel `c`, transform _3__ x", 12))
        );
        let stack = format!("    at {a}:3:1\n");
        assert_eq!(
            locate(&stack, &files),
            Some(("channel `c`, transform (3): x", 3))
        );
        assert_eq!(locate("    at other.js:1:1", &files), None);
    }
}
