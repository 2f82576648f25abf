//! Sandboxed JavaScript transformers, filters and preprocessors for Ferry channels.
//!
//! Scripts run in [QuickJS] (ES2023, through `rquickjs`) with a memory cap, a wall-clock
//! limit per message and a stack cap, and with no file, network, timer or module access:
//! the only way out of a script is the API below. This page is the script writer's
//! reference.
//!
//! # Running scripts (for the engine)
//!
//! [`Scripts::new`] is called once per channel at deploy with the channel's libraries and
//! configuration map; [`Scripts::compile`] checks and registers each script (syntax errors are
//! reported with the script's name and line). Per message, [`Scripts::transform`],
//! [`Scripts::filter`] and [`Scripts::preprocess`] run a script synchronously on the calling
//! thread with a [`ScriptContext`] that carries the message and the maps.
//!
//! Each thread that runs scripts gets its own QuickJS runtime per [`Scripts`], created on
//! first use (about half a millisecond, plus the time the libraries take), with the
//! libraries evaluated once and each script compiled once; later calls only call a compiled
//! function. After a [`Timeout`](ScriptErrorKind::Timeout), a
//! [`Memory`](ScriptErrorKind::Memory) error or an [`Internal`](ScriptErrorKind::Internal)
//! fault the thread's runtime is dropped and the next message gets a fresh one. A runtime is
//! dropped with its thread, or on that thread's next script call after its [`Scripts`] was
//! dropped. [`Scripts::new`] and [`Scripts::compile`] create the runtime of the thread that
//! calls them (that is how they check the code), which stays for later calls on that thread.
//! Memory is bounded per runtime, so a channel may use up to `threads × memory_bytes`.
//!
//! Nothing a script does can panic the caller: wrong arguments are JavaScript exceptions,
//! and a panic inside Ferry's own host code is caught and reported as
//! [`Internal`](ScriptErrorKind::Internal). Script errors may quote message data; the crate
//! logs nothing of a message above DEBUG.
//!
//! # The script
//!
//! A script is the body of a function: `return` works, and `let`, `const` and `var` are
//! local to one message. Scripts and libraries run in **strict mode** (assigning an undeclared
//! variable is an error instead of a global that would leak into the next message). Line
//! numbers in errors are the script's own.
//!
//! Libraries ([`Scripts::new`]) are evaluated once per runtime before any script, as global
//! code: their top-level `function` and `var` declarations are visible to every script of the
//! channel. Do not keep per-message state in library globals: each thread has its own copy and
//! a runtime can be replaced at any time.
//!
//! | kind | run by | what it sees | what it returns |
//! |---|---|---|---|
//! | [`Transform`](ScriptKind::Transform) | [`Scripts::transform`] | `msg` (edited in place) | ignored (`return` just stops) |
//! | [`Filter`](ScriptKind::Filter) | [`Scripts::filter`] | `msg` | truthy = accept; no `return` = reject |
//! | [`Preprocessor`](ScriptKind::Preprocessor) | [`Scripts::preprocess`] | `message`: the raw text (no `msg`) | the new text; `undefined`/`null` = unchanged |
//! | [`ResponseTransform`](ScriptKind::ResponseTransform) | [`Scripts::transform`] | `msg`, `response`: the destination's response as text (UTF-8, invalid bytes replaced; `undefined` when none) | a string replaces the response; anything else keeps it |
//!
//! ```js
//! // transform
//! const SEX = {M: "male", F: "female"};
//! msg.set("MSH-5", configMap.get("receiver"));
//! msg.set("PID-2", msg.get("PID-3.1"));
//! msg.set("PID-8", SEX[msg.get("PID-8")] || "unknown");
//! // Views address OBX[index]: remove from the last one back so the others stay valid.
//! for (const obx of msg.segments("OBX").reverse()) {
//!     if (!obx.exists("5")) msg.removeSegment(obx);
//! }
//! if (msg.get("PV1-2") === "E") router.route("emergency", msg);
//! $c("patient", msg.get("PID-3.1"));
//!
//! // filter
//! return msg.get("PV1-2") === "I";
//!
//! // preprocessor
//! return message.replace(/\n/g, "\r");
//! ```
//!
//! # `msg`: the HL7 message
//!
//! Paths are Ferry's HL7 paths: `PID-5.1` or `PID.5.1`, segment occurrence `OBX[2]-5`, field
//! repetition `PID-3(2).1`, all 1-based. Reading a field reads its first repetition; setting
//! or deleting a field (`PID-3`) acts on the whole field, every repetition.
//!
//! | call | does |
//! |---|---|
//! | `msg.get(path)` | the text at `path`, escapes decoded (`\F\` → `\|` …) and read in the MSH-18 charset; `''` when absent |
//! | `msg.set(path, value)` | writes text (strings; numbers and booleans as `String(v)`), escaping delimiters; adds the separators, or the segment when it is the next occurrence, needed to reach `path` |
//! | `msg.setNull(path)` | writes the HL7 explicit null `""` |
//! | `msg.delete(path)` | empties the value (`PID-3(2)` removes that repetition); returns whether anything changed |
//! | `msg.exists(path)` | `true` when the value is present and not empty |
//! | `msg.count(id)` | how many segments have that id |
//! | `msg.segments([id])` | views of the segments with that id (all segments without it) |
//! | `msg.addSegment(text[, position])` | appends the ER7 segment `text` (`"ZPI\|1\|x"`), or inserts it at a 0-based position (not 0: MSH stays first) |
//! | `msg.removeSegment(id[, n])`, `msg.removeSegment(view)` | removes every segment with that id, or the `n`-th, or that one; returns how many went |
//! | `msg.renameSegment(from, to[, n])`, `msg.renameSegment(view, to)` | renames every `from` segment, or the `n`-th, or that one; returns how many |
//! | `msg.toString()`, `String(msg)` | the message as ER7 text |
//! | `msg.toJSON()`, `JSON.stringify(msg)` | Ferry's lossless JSON form of the message |
//!
//! A segment view has `id`, `index` (1-based among the segments with that id, as in
//! `OBX[2]`), `position` (0-based in the message), and `get`, `set`, `setNull`, `delete`,
//! `exists` with paths relative to the segment (`seg.get("5.1")`, `seg.set("3(2).1", v)`),
//! and `toString()`. A view addresses `ID[index]`: after adding, removing or renaming
//! segments, call `msg.segments()` again.
//!
//! A bad path, a value the message's charset cannot hold, or editing MSH-1/MSH-2 throws an
//! `Error` the script can catch; uncaught, it fails the message with the line it was thrown
//! on. Wrong argument types throw a `TypeError` naming the function.
//!
//! # Maps
//!
//! | call | does |
//! |---|---|
//! | `channelMap.get(k)`, `$c(k)` | the value stored under `k`, `undefined` when none |
//! | `channelMap.put(k, v)`, `$c(k, v)` | stores `v` (anything JSON can hold; it is stored as JSON and read back as a copy) |
//! | `channelMap.containsKey(k)`, `.remove(k)`, `.keys()` | as named |
//! | `sourceMap.get(k)`, `$s(k)`, `.containsKey(k)`, `.keys()` | what the source connector recorded (for example the remote address); read-only |
//! | `configMap.get(k)`, `$cfg(k)`, `.containsKey(k)`, `.keys()` | the channel's configuration strings (secrets already interpolated) |
//!
//! The channel map travels with the message through every step and to the destinations.
//!
//! # `logger` and `router`
//!
//! `logger.debug/info/warn/error(...)` joins its arguments with spaces and logs them through
//! `tracing` (target `ferry_script`, fields `channel`, `script`, `message_id`). Because script
//! output may hold PHI, `info`, `warn` and `error` are logged at DEBUG unless the channel sets
//! `log_phi_at_info` ([`Scripts::new`]).
//!
//! `router.route(channel, message)` queues `message` (a string, or `msg`) for `channel`; the
//! engine dispatches it after the script ([`ScriptContext::routed`]).
//!
//! # Errors
//!
//! An uncaught exception fails the message with a [`ScriptError`] that names the script and
//! the line (``channel `adt`, transform 3:12: TypeError: cannot read property 'x' of
//! null``; ``… (lib/util.js:2): Error: …`` when the line is in a library). A syntax error is
//! reported when the channel is deployed, not on the first message. A script that closes the
//! function it is wrapped in (an extra `}`) is refused as a syntax error. Time, memory and
//! stack limits give the kinds [`Timeout`](ScriptErrorKind::Timeout) (not catchable),
//! [`Memory`](ScriptErrorKind::Memory) and [`Stack`](ScriptErrorKind::Stack).
//!
//! # What is not there
//!
//! No `require`, `import`, `fetch`, `XMLHttpRequest`, `setTimeout`/`setInterval`, `std`, `os`
//! or any file or network access. `eval` and `new Function` work (on the same sandbox).
//! Promises and `async` functions work; their jobs run before the call returns, within the
//! time limit.
//!
//! [QuickJS]: https://github.com/quickjs-ng/quickjs

mod engine;
mod error;
mod host;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use error::{ScriptError, ScriptErrorKind};

/// Per-message limits of a script runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptLimits {
    /// Memory cap of one runtime (its scripts, libraries and data), default 32 MiB. Reaching it
    /// fails the message with [`ScriptErrorKind::Memory`]. The same number caps what a script
    /// keeps outside the JavaScript heap: the size of the message it edits, and the bytes one
    /// call adds to the channel map and to routed messages.
    pub memory_bytes: usize,
    /// Wall-clock time one call (one script on one message) may take, default 1 s. Past it the
    /// script is stopped, uncatchably, with [`ScriptErrorKind::Timeout`].
    pub time: Duration,
    /// Native stack the interpreter may use, default 512 KiB; deeper recursion fails with
    /// [`ScriptErrorKind::Stack`]. Keep it well under the calling thread's stack size (tokio's
    /// blocking threads have 2 MiB).
    pub stack_bytes: usize,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            memory_bytes: 32 << 20,
            time: Duration::from_secs(1),
            stack_bytes: 512 << 10,
        }
    }
}

/// A script's or library's code and the name errors give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// How errors name it: a file path, or ``channel `c`, transform 3``.
    pub name: String,
    /// The JavaScript code.
    pub code: String,
}

impl Source {
    /// A source from a name and code.
    pub fn new(name: impl Into<String>, code: impl Into<String>) -> Source {
        Source {
            name: name.into(),
            code: code.into(),
        }
    }
}

/// What a script is for, which decides how it is run and what its return value means (see
/// the [crate documentation](crate#the-script)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScriptKind {
    /// Edits `msg`; run with [`Scripts::transform`].
    Transform,
    /// Returns truthy to accept the message; run with [`Scripts::filter`].
    Filter,
    /// Rewrites the raw text before parsing; run with [`Scripts::preprocess`].
    Preprocessor,
    /// Sees a destination's `response`, may replace it; run with [`Scripts::transform`].
    ResponseTransform,
}

/// A compiled script, registered with [`Scripts::compile`]. Cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Script {
    def: Arc<ScriptDef>,
}

#[derive(Debug)]
struct ScriptDef {
    id: u64,
    kind: ScriptKind,
    name: String,
    code: String,
}

impl Script {
    /// The script's [`Source::name`].
    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// What the script is for.
    pub fn kind(&self) -> ScriptKind {
        self.def.kind
    }
}

/// One message's view for a script: the message, the maps, and what the script produced.
#[derive(Debug, Clone)]
pub struct ScriptContext {
    /// The message being transformed (transformers edit it in place, filters read it).
    /// After a failed script it holds the edits made before the failure.
    pub message: ferry_hl7::MessageBuf,
    /// The channel's name (logged with `logger` output).
    pub channel: String,
    /// The message's id in the store, when it has one (logged with `logger` output).
    pub message_id: Option<i64>,
    /// `channelMap`: read and written by scripts, carried across steps and to destinations.
    pub channel_map: serde_json::Map<String, serde_json::Value>,
    /// `sourceMap`: what the source connector recorded; read-only in scripts.
    pub source_map: serde_json::Map<String, serde_json::Value>,
    /// For response transformers: the destination's response (an HL7 ACK or a body); the
    /// script sees it as text (`response`) and may replace it.
    pub response: Option<Vec<u8>>,
    /// `router.route(channel, message)` calls, in order, for the engine to dispatch after the
    /// script.
    pub routed: Vec<Routed>,
}

impl ScriptContext {
    /// A context for `message` on `channel`, with empty maps and nothing routed.
    pub fn new(message: ferry_hl7::MessageBuf, channel: impl Into<String>) -> ScriptContext {
        ScriptContext {
            message,
            channel: channel.into(),
            message_id: None,
            channel_map: serde_json::Map::new(),
            source_map: serde_json::Map::new(),
            response: None,
            routed: Vec::new(),
        }
    }
}

/// A message a script sent to another channel with `router.route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The channel to send it to.
    pub channel: String,
    /// The message text, UTF-8.
    pub message: Vec<u8>,
}

/// A channel's scripts: built once at deploy, used from any thread. `Send + Sync + Clone`
/// (an `Arc` inside); each thread that runs a script gets its own runtime (see the
/// [crate documentation](crate#running-scripts-for-the-engine)).
#[derive(Debug, Clone)]
pub struct Scripts {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    libraries: Vec<Source>,
    config_map: Arc<BTreeMap<String, String>>,
    limits: ScriptLimits,
    log_phi_at_info: bool,
}

/// Names the libraries and the configuration keys, never the configuration values: they may
/// hold interpolated secrets.
impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scripts")
            .field("id", &self.id)
            .field(
                "libraries",
                &self
                    .libraries
                    .iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("config_keys", &self.config_map.keys().collect::<Vec<_>>())
            .field("limits", &self.limits)
            .field("log_phi_at_info", &self.log_phi_at_info)
            .finish()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

impl Scripts {
    /// Check the libraries (shared function files evaluated, in order, before every script)
    /// by evaluating them in a runtime on this thread, and keep the configuration map.
    ///
    /// `log_phi_at_info` lets `logger.info/warn/error` log at their own level; otherwise they
    /// log at DEBUG because script output may hold PHI.
    pub fn new(
        libraries: Vec<Source>,
        config_map: BTreeMap<String, String>,
        limits: ScriptLimits,
        log_phi_at_info: bool,
    ) -> Result<Scripts, ScriptError> {
        let scripts = Scripts {
            inner: Arc::new(Inner {
                id: next_id(),
                libraries,
                config_map: Arc::new(config_map),
                limits,
                log_phi_at_info,
            }),
        };
        engine::with_engine(&scripts.inner, |_| Ok(()))?;
        Ok(scripts)
    }

    /// The limits every runtime of these scripts has.
    pub fn limits(&self) -> &ScriptLimits {
        &self.inner.limits
    }

    /// Compile-check a script (a [`ScriptErrorKind::Syntax`] error names the script and the
    /// line) and register it. Nothing of the script runs.
    pub fn compile(&self, kind: ScriptKind, source: Source) -> Result<Script, ScriptError> {
        let script = Script {
            def: Arc::new(ScriptDef {
                id: next_id(),
                kind,
                name: source.name,
                code: source.code,
            }),
        };
        engine::with_engine(&self.inner, |e| e.ensure_compiled(&script))?;
        Ok(script)
    }

    fn check_kind(script: &Script, wanted: &[ScriptKind], call: &str) -> Result<(), ScriptError> {
        if wanted.contains(&script.def.kind) {
            return Ok(());
        }
        Err(ScriptError::new(
            ScriptErrorKind::Usage,
            &script.def.name,
            format!(
                "a {:?} script cannot be run by Scripts::{call}",
                script.def.kind
            ),
        ))
    }

    /// Run a transformer (or a response transformer) on `ctx.message`, edited in place,
    /// synchronously on the calling thread.
    pub fn transform(&self, script: &Script, ctx: &mut ScriptContext) -> Result<(), ScriptError> {
        Self::check_kind(
            script,
            &[ScriptKind::Transform, ScriptKind::ResponseTransform],
            "transform",
        )?;
        let response = match (&ctx.response, script.def.kind) {
            (Some(r), ScriptKind::ResponseTransform) => {
                Some(String::from_utf8_lossy(r).into_owned())
            }
            _ => None,
        };
        let returned = self.run(script, ctx, true, None, response.as_deref())?;
        if script.def.kind == ScriptKind::ResponseTransform
            && let Some(text) = returned.text
        {
            ctx.response = Some(text.into_bytes());
        }
        Ok(())
    }

    /// Run a filter: the script's `return` value, truthy = accept (no `return` rejects).
    pub fn filter(&self, script: &Script, ctx: &mut ScriptContext) -> Result<bool, ScriptError> {
        Self::check_kind(script, &[ScriptKind::Filter], "filter")?;
        Ok(self.run(script, ctx, true, None, None)?.truthy)
    }

    /// Run a preprocessor on the raw text before parsing: the script sees it as `message` (a
    /// string) and returns the new text; `undefined` or `null` keeps it unchanged. `msg` is
    /// not available (`ctx.message` is neither read nor changed); the maps are.
    pub fn preprocess(
        &self,
        script: &Script,
        raw: &str,
        ctx: &mut ScriptContext,
    ) -> Result<String, ScriptError> {
        Self::check_kind(script, &[ScriptKind::Preprocessor], "preprocess")?;
        let returned = self.run(script, ctx, false, Some(raw), None)?;
        match returned.text {
            Some(text) => Ok(text),
            None if returned.nothing => Ok(raw.to_owned()),
            None => Err(ScriptError::new(
                ScriptErrorKind::Runtime,
                &script.def.name,
                format!(
                    "TypeError: a preprocessor must return a string (or nothing), not {}",
                    returned.type_name
                ),
            )),
        }
    }

    fn run(
        &self,
        script: &Script,
        ctx: &mut ScriptContext,
        msg_available: bool,
        message: Option<&str>,
        response: Option<&str>,
    ) -> Result<engine::Returned, ScriptError> {
        engine::with_engine(&self.inner, |e| {
            e.swap_in(ctx, script, msg_available)?;
            let result = e.call(script, message, response);
            e.swap_out(ctx);
            result
        })
    }

    /// Whether the calling thread holds a runtime for these scripts.
    #[cfg(test)]
    fn has_runtime_here(&self) -> bool {
        engine::has_engine(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> ferry_hl7::MessageBuf {
        match ferry_hl7::MessageBuf::parse(
            b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5\rPID|1||123\r".to_vec(),
        ) {
            Ok(m) => m,
            Err(e) => panic!("test message: {e}"),
        }
    }

    #[test]
    fn a_timeout_discards_the_runtime_and_the_next_message_gets_a_fresh_one() {
        let limits = ScriptLimits {
            time: Duration::from_millis(300),
            ..ScriptLimits::default()
        };
        let scripts = Scripts::new(
            vec![Source::new("lib.js", "var LIB = 1;")],
            BTreeMap::new(),
            limits,
            false,
        )
        .map_err(|e| e.to_string());
        let Ok(scripts) = scripts else {
            panic!("{scripts:?}")
        };
        assert!(scripts.has_runtime_here());
        let spin = scripts.compile(
            ScriptKind::Transform,
            Source::new("spin", "while (true) {}"),
        );
        let Ok(spin) = spin else { panic!("{spin:?}") };
        let mut ctx = ScriptContext::new(msg(), "c");
        let err = scripts.transform(&spin, &mut ctx).err().map(|e| e.kind);
        assert_eq!(err, Some(ScriptErrorKind::Timeout));
        assert!(
            !scripts.has_runtime_here(),
            "the runtime that timed out is discarded"
        );
        let ok = scripts.compile(
            ScriptKind::Transform,
            Source::new("ok", "msg.set('PID-2', String(LIB));"),
        );
        let Ok(ok) = ok else { panic!("{ok:?}") };
        assert!(
            scripts.has_runtime_here(),
            "a fresh runtime, with the libraries"
        );
        assert_eq!(
            scripts.transform(&ok, &mut ctx).map_err(|e| e.to_string()),
            Ok(())
        );
        assert_eq!(
            ctx.message
                .message()
                .get_str("PID-2")
                .ok()
                .flatten()
                .as_deref(),
            Some("1")
        );

        let bomb = scripts.compile(
            ScriptKind::Transform,
            Source::new(
                "bomb",
                r#"let a = []; while (true) a.push("x".repeat(1e6));"#,
            ),
        );
        let Ok(bomb) = bomb else { panic!("{bomb:?}") };
        assert!(scripts.has_runtime_here());
        let err = scripts.transform(&bomb, &mut ctx).err().map(|e| e.kind);
        assert_eq!(err, Some(ScriptErrorKind::Memory));
        assert!(
            !scripts.has_runtime_here(),
            "the runtime that ran out of memory is discarded"
        );
        assert_eq!(
            scripts.transform(&ok, &mut ctx).map_err(|e| e.to_string()),
            Ok(())
        );
        assert!(scripts.has_runtime_here());
    }

    #[test]
    fn a_panic_in_a_host_function_is_an_internal_error_and_the_process_carries_on() {
        let Ok(scripts) = Scripts::new(Vec::new(), BTreeMap::new(), ScriptLimits::default(), false)
        else {
            panic!("scripts")
        };
        let boom = scripts.compile(
            ScriptKind::Transform,
            Source::new(
                "boom",
                "msg.set('PID-2', 'before');\ntry { __ferryTestPanic(); } catch (e) {}",
            ),
        );
        let Ok(boom) = boom else { panic!("{boom:?}") };
        let mut ctx = ScriptContext::new(msg(), "c");
        let err = scripts.transform(&boom, &mut ctx).err();
        assert_eq!(
            err.as_ref().map(|e| e.kind),
            Some(ScriptErrorKind::Internal),
            "{err:?}"
        );
        assert!(err.is_some_and(|e| e.message.contains("panicked on purpose")));
        assert_eq!(
            ctx.message
                .message()
                .get_str("PID-2")
                .ok()
                .flatten()
                .as_deref(),
            Some("before"),
            "the context gets its message back"
        );
        assert!(!scripts.has_runtime_here(), "the runtime is discarded");
        let ok = scripts.compile(
            ScriptKind::Transform,
            Source::new("ok", "msg.set('PID-2', 'after');"),
        );
        let Ok(ok) = ok else { panic!("{ok:?}") };
        assert_eq!(
            scripts.transform(&ok, &mut ctx).map_err(|e| e.to_string()),
            Ok(())
        );
        assert_eq!(
            ctx.message
                .message()
                .get_str("PID-2")
                .ok()
                .flatten()
                .as_deref(),
            Some("after")
        );
    }

    #[test]
    fn debug_output_does_not_show_configuration_values() {
        let mut config = BTreeMap::new();
        config.insert("api_token".to_owned(), "s3cret-value".to_owned());
        let Ok(scripts) = Scripts::new(Vec::new(), config, ScriptLimits::default(), false) else {
            panic!("scripts")
        };
        let shown = format!("{scripts:?}");
        assert!(shown.contains("api_token"), "{shown}");
        assert!(!shown.contains("s3cret-value"), "{shown}");
    }

    #[test]
    fn scripts_and_script_are_send_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Scripts>();
        check::<Script>();
        check::<ScriptError>();
    }
}
