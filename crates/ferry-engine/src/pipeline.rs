//! The processing pipeline of a channel: what happens to a message between "bytes arrived" and
//! "rows in the destination queues".
//!
//! ```text
//! raw ─ preprocessor ─ inbound conversion (JSON → HL7) ─ parse, check MSH-9/MSH-10
//!     ─ source filters ─ source transformer
//!     ─ for each destination, in order: filters ─ transformer ─ encoder ─ queue row
//! ```
//!
//! The pipeline is synchronous and pure: it reads the message and its maps and returns a
//! [`Processed`] outcome; it never touches the store or the network. [`ChannelIngest`]
//! (`ingest.rs`) runs it and commits the outcome in one transaction before answering, and
//! `ferry test` runs the very same pipeline offline to compare its outputs with expected files.
//!
//! **Destination chains.** Every destination starts from the message as the source
//! transformer left it (a destination's transformer never changes what another destination
//! sends). The channel map, however, flows along a *chain*: a destination with
//! `wait_for_previous = true` (the default) runs after the one before it and sees the channel
//! map as that one's transformer left it; a destination with `wait_for_previous = false` starts
//! a new chain from the channel map as the source transformer left it. Delivery is independent
//! either way: every destination has its own durable queue, so one destination being down
//! never holds up another.
//!
//! The kinds of step are plugged in through small traits ([`TransformStep`], [`FilterStep`],
//! [`Preprocess`], [`Convert`], [`Encode`]), so this module knows nothing about how a
//! declarative step or a script works.

use std::sync::Arc;

use ferry_hl7::ack::ErrorDetail;
use ferry_hl7::{Message, MessageBuf};
use serde_json::{Map, Value};

use crate::FilterRule;

/// What a transformer step works on: the message and the maps that travel with it.
#[derive(Debug, Clone)]
pub struct Context {
    /// The message being transformed.
    pub message: MessageBuf,
    /// The channel's name.
    pub channel: String,
    /// Values set by steps and scripts, carried along the destination chain.
    pub channel_map: Map<String, Value>,
    /// Facts about where the message came from (read-only for scripts).
    pub source_map: Map<String, Value>,
    /// Messages a script asked to route to other channels (`router.route`).
    pub routed: Vec<(String, Vec<u8>)>,
}

/// One step of a transformer: edits the message (and maps) in place.
pub trait TransformStep: Send + Sync {
    /// Apply the step. The error text names what failed; the pipeline adds which step.
    fn apply(&self, context: &mut Context) -> Result<(), String>;
    /// Whether the step may block for long (a script): the channel then processes messages on
    /// the blocking thread pool instead of the connection's task.
    fn blocks(&self) -> bool {
        false
    }
}

/// A filter that is not a declarative rule (a script).
pub trait FilterStep: Send + Sync {
    /// Whether the message passes.
    fn accepts(&self, context: &mut Context) -> Result<bool, String>;
}

/// A preprocessor: rewrites the raw bytes before they are parsed.
pub trait Preprocess: Send + Sync {
    /// The new bytes.
    fn preprocess(&self, raw: &[u8]) -> Result<Vec<u8>, String>;
}

/// An inbound conversion: turns a non-HL7 body (JSON) into an HL7 message.
pub trait Convert: Send + Sync {
    /// The HL7 bytes.
    fn to_hl7(&self, input: &[u8]) -> Result<Vec<u8>, String>;
}

/// A destination's encoder: the bytes a destination sends for a message.
pub trait Encode: Send + Sync {
    /// The bytes to send.
    fn encode(&self, message: &MessageBuf) -> Result<Vec<u8>, String>;
    /// Whether the output is the message's own HL7 bytes (then nothing extra is stored).
    fn is_identity(&self) -> bool {
        false
    }
}

/// One filter of a channel or destination.
#[derive(Clone)]
pub enum Filter {
    /// A declarative rule on an HL7 path.
    Rule(FilterRule),
    /// A script.
    Step(Arc<dyn FilterStep>),
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Filter::Rule(rule) => f.debug_tuple("Rule").field(rule).finish(),
            Filter::Step(_) => f.write_str("Step(..)"),
        }
    }
}

impl From<FilterRule> for Filter {
    fn from(rule: FilterRule) -> Filter {
        Filter::Rule(rule)
    }
}

/// The processing of one destination.
#[derive(Clone, Default)]
pub struct DestinationProcessing {
    /// The destination's name.
    pub name: String,
    /// Continue the channel map of the destination before it (`true`, the default), or start
    /// a new chain from the source transformer's map.
    pub wait_for_previous: bool,
    /// Filters: every one must pass, else the destination's row is `FILTERED`.
    pub filters: Vec<Filter>,
    /// Transformer steps, in order.
    pub transform: Vec<Arc<dyn TransformStep>>,
    /// Encoder; `None` sends the transformed HL7 bytes.
    pub encoder: Option<Arc<dyn Encode>>,
}

/// The processing of a channel, from raw bytes to destination payloads.
#[derive(Clone, Default)]
pub struct Pipeline {
    /// The channel's name.
    pub channel: String,
    /// Rewrites the raw bytes before anything else.
    pub preprocessor: Option<Arc<dyn Preprocess>>,
    /// Converts a non-HL7 body into HL7 before parsing (`None`: the body is HL7).
    pub inbound: Option<Arc<dyn Convert>>,
    /// Source filters: every one must pass, else the message is `FILTERED`.
    pub filters: Vec<Filter>,
    /// Source transformer steps, in order.
    pub transform: Vec<Arc<dyn TransformStep>>,
    /// Destinations, in order.
    pub destinations: Vec<DestinationProcessing>,
}

impl DestinationProcessing {
    /// Only declarative filters and the HL7 as it is: nothing to edit, encode or run.
    fn reads_only(&self) -> bool {
        self.transform.is_empty()
            && self.encoder.as_ref().is_none_or(|e| e.is_identity())
            && self.filters.iter().all(|f| matches!(f, Filter::Rule(_)))
    }
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("channel", &self.channel)
            .field("filters", &self.filters.len())
            .field("transform", &self.transform.len())
            .field("destinations", &self.destinations.len())
            .finish_non_exhaustive()
    }
}

/// What happened at one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationResult {
    /// The destination takes the message: it is queued. `encoded` holds the bytes to send when
    /// they differ from the source's transformed message.
    Queued {
        /// The destination's own bytes, if its transformer or encoder changed them.
        encoded: Option<Vec<u8>>,
    },
    /// Filter `rule` (1-based) refused the message.
    Filtered {
        /// The failing filter's number.
        rule: usize,
    },
    /// The transformer or encoder failed.
    Failed {
        /// Why, naming the step.
        reason: String,
    },
}

/// The outcome of processing one message.
#[derive(Debug)]
pub enum Processed {
    /// The input is not an acceptable message (cannot be parsed, lacks MSH-9/MSH-10, the
    /// inbound conversion or preprocessor refused it): stored as `ERROR`, answered `AR`.
    Rejected {
        /// The message as parsed, when it could be (to address the NAK).
        message: Option<MessageBuf>,
        /// The ERR segment's content.
        detail: Option<ErrorDetail>,
        /// Why.
        reason: String,
    },
    /// A source filter refused it: stored as `FILTERED`.
    Filtered {
        /// The received message.
        message: MessageBuf,
        /// The failing filter's number (1-based).
        rule: usize,
    },
    /// A source filter script or transformer step failed: stored as `ERROR` with the reason.
    Failed {
        /// The received message.
        message: MessageBuf,
        /// Why, naming the step.
        reason: String,
    },
    /// Accepted: the destinations' results, in order.
    Accepted(Box<Accepted>),
}

/// An accepted message.
#[derive(Debug)]
pub struct Accepted {
    /// The message as received (and converted), which the acknowledgement answers.
    pub received: MessageBuf,
    /// The message after the preprocessor, inbound conversion and source transformer, when it
    /// differs from the raw input.
    pub transformed: Option<Vec<u8>>,
    /// Per destination, in the pipeline's order.
    pub destinations: Vec<DestinationResult>,
    /// Messages scripts routed to other channels.
    pub routed: Vec<(String, Vec<u8>)>,
    /// The channel map after the source transformer.
    pub channel_map: Map<String, Value>,
}

impl Pipeline {
    /// A pipeline that only checks and queues (no filters, no steps) for `destinations`.
    pub fn plain(channel: &str, destinations: &[&str]) -> Pipeline {
        Pipeline {
            channel: channel.to_owned(),
            destinations: destinations
                .iter()
                .map(|d| DestinationProcessing {
                    name: (*d).to_owned(),
                    wait_for_previous: true,
                    ..DestinationProcessing::default()
                })
                .collect(),
            ..Pipeline::default()
        }
    }

    /// Whether any step may block (a script), so the caller should run [`Pipeline::process`]
    /// on a blocking thread.
    pub fn blocks(&self) -> bool {
        let filters_block =
            |filters: &[Filter]| filters.iter().any(|f| matches!(f, Filter::Step(_)));
        self.preprocessor.is_some()
            || filters_block(&self.filters)
            || self.transform.iter().any(|s| s.blocks())
            || self
                .destinations
                .iter()
                .any(|d| filters_block(&d.filters) || d.transform.iter().any(|s| s.blocks()))
    }

    /// Process one message. Never panics on any input.
    pub fn process(&self, raw: &[u8], source_map: Map<String, Value>) -> Processed {
        let preprocessed;
        let mut bytes = raw;
        if let Some(pre) = &self.preprocessor {
            match pre.preprocess(bytes) {
                Ok(b) => {
                    preprocessed = b;
                    bytes = &preprocessed;
                }
                Err(e) => return rejected(None, None, format!("preprocessor: {e}")),
            }
        }
        let converted;
        if let Some(inbound) = &self.inbound {
            match inbound.to_hl7(bytes) {
                Ok(b) => {
                    converted = b;
                    bytes = &converted;
                }
                Err(e) => return rejected(None, None, format!("inbound conversion: {e}")),
            }
        }
        let received = match MessageBuf::parse(bytes) {
            Ok(m) => m,
            Err(e) => return rejected(None, None, format!("message rejected: {e}")),
        };
        if let Err((detail, reason)) = check_header(&received.message()) {
            return rejected(Some(received), Some(detail), reason);
        }
        // The received message is what the ACK answers. Without source steps or filter scripts
        // (which could edit it) it is also the working message, so it is not copied.
        let reads_only =
            self.transform.is_empty() && self.filters.iter().all(|f| matches!(f, Filter::Rule(_)));
        let (message, mut kept) = if reads_only {
            (received, None)
        } else {
            (received.clone(), Some(received))
        };
        let mut context = Context {
            message,
            channel: self.channel.clone(),
            channel_map: Map::new(),
            source_map,
            routed: Vec::new(),
        };
        let received_of =
            |context: Context, kept: Option<MessageBuf>| kept.unwrap_or(context.message);
        match first_failing(&self.filters, &mut context) {
            Ok(None) => {}
            Ok(Some(rule)) => {
                return Processed::Filtered {
                    message: received_of(context, kept.take()),
                    rule,
                };
            }
            Err(reason) => {
                return Processed::Failed {
                    message: received_of(context, kept.take()),
                    reason,
                };
            }
        }
        if let Err(reason) = run_steps("transform", &self.transform, &mut context) {
            return Processed::Failed {
                message: received_of(context, kept.take()),
                reason,
            };
        }
        // Compared with the raw input: a preprocessor or an inbound conversion changes the
        // bytes too, and queues must send the result, not what arrived.
        let transformed =
            (context.message.as_bytes() != raw).then(|| context.message.as_bytes().to_vec());
        let source_map_after = context.channel_map.clone();
        let mut chain_map = source_map_after.clone();
        let mut routed = std::mem::take(&mut context.routed);
        let mut results = Vec::with_capacity(self.destinations.len());
        for dest in &self.destinations {
            if !dest.wait_for_previous {
                chain_map = source_map_after.clone();
            }
            // A destination that only filters with rules and sends the HL7 as it is needs no
            // copy of the message.
            if dest.reads_only() {
                let message = context.message.message();
                let result = match dest.filters.iter().position(|f| match f {
                    Filter::Rule(rule) => !rule.passes(&message),
                    Filter::Step(_) => false,
                }) {
                    Some(i) => DestinationResult::Filtered { rule: i + 1 },
                    None => DestinationResult::Queued { encoded: None },
                };
                results.push(result);
                continue;
            }
            let mut ctx = Context {
                message: context.message.clone(),
                channel: self.channel.clone(),
                channel_map: std::mem::take(&mut chain_map),
                source_map: context.source_map.clone(),
                routed: Vec::new(),
            };
            let result = destination(dest, &mut ctx);
            chain_map = ctx.channel_map;
            routed.append(&mut ctx.routed);
            results.push(result);
        }
        Processed::Accepted(Box::new(Accepted {
            transformed,
            received: received_of(context, kept.take()),
            destinations: results,
            routed,
            channel_map: source_map_after,
        }))
    }
}

fn destination(dest: &DestinationProcessing, ctx: &mut Context) -> DestinationResult {
    match first_failing(&dest.filters, ctx) {
        Ok(None) => {}
        Ok(Some(rule)) => return DestinationResult::Filtered { rule },
        Err(reason) => return DestinationResult::Failed { reason },
    }
    let before = (!dest.transform.is_empty()).then(|| ctx.message.as_bytes().to_vec());
    if let Err(reason) = run_steps("transform", &dest.transform, ctx) {
        return DestinationResult::Failed { reason };
    }
    let encoded = match &dest.encoder {
        Some(encoder) if !encoder.is_identity() => match encoder.encode(&ctx.message) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                return DestinationResult::Failed {
                    reason: format!("encode: {e}"),
                };
            }
        },
        _ => before
            .filter(|b| b.as_slice() != ctx.message.as_bytes())
            .map(|_| ctx.message.as_bytes().to_vec()),
    };
    DestinationResult::Queued { encoded }
}

fn rejected(message: Option<MessageBuf>, detail: Option<ErrorDetail>, reason: String) -> Processed {
    Processed::Rejected {
        message,
        detail,
        reason,
    }
}

/// Run steps in order; the error names the failing step (`transform 3: …`).
fn run_steps(
    what: &str,
    steps: &[Arc<dyn TransformStep>],
    context: &mut Context,
) -> Result<(), String> {
    for (i, step) in steps.iter().enumerate() {
        step.apply(context)
            .map_err(|e| format!("{what} {}: {e}", i + 1))?;
    }
    Ok(())
}

/// The 1-based number of the first filter the message fails; an error if a script failed.
fn first_failing(filters: &[Filter], context: &mut Context) -> Result<Option<usize>, String> {
    for (i, filter) in filters.iter().enumerate() {
        let passes = match filter {
            Filter::Rule(rule) => rule.passes(&context.message.message()),
            Filter::Step(step) => step
                .accepts(context)
                .map_err(|e| format!("filter {}: {e}", i + 1))?,
        };
        if !passes {
            return Ok(Some(i + 1));
        }
    }
    Ok(None)
}

/// Why a parsed message is refused before it is dispatched.
pub(crate) fn check_header(message: &Message<'_>) -> Result<(), (ErrorDetail, String)> {
    if message.message_type().is_none_or(str::is_empty) {
        return Err((
            ErrorDetail::required_field_missing("MSH", 9),
            "MSH-9 (message type) is required".to_owned(),
        ));
    }
    if message.control_id().is_none_or(str::is_empty) {
        return Err((
            ErrorDetail::required_field_missing("MSH", 10),
            "MSH-10 (message control id) is required".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_hl7::Path;

    const ADT: &[u8] = b"MSH|^~\\&|HIS|GH|||20261125||ADT^A08^ADT_A01|1|P|2.5.1\rPID|1||42^^^GH^MR||DOE^JANE||19800101|F\rPV1|1|I\r";

    /// A transformer step that sets a field, and records the channel map it saw.
    struct SetField {
        path: &'static str,
        value: &'static str,
        note: Option<&'static str>,
    }

    impl TransformStep for SetField {
        fn apply(&self, context: &mut Context) -> Result<(), String> {
            context
                .message
                .set(self.path, self.value)
                .map_err(|e| e.to_string())?;
            if let Some(key) = self.note {
                let seen = context.channel_map.len();
                context
                    .channel_map
                    .insert(key.to_owned(), Value::from(seen as u64));
            }
            Ok(())
        }
    }

    fn set(path: &'static str, value: &'static str) -> Arc<dyn TransformStep> {
        Arc::new(SetField {
            path,
            value,
            note: None,
        })
    }

    fn equals(path: &str, value: &str) -> Filter {
        Filter::Rule(FilterRule::Equals(
            Path::parse(path).expect("path"),
            value.to_owned(),
        ))
    }

    fn accepted(processed: Processed) -> Accepted {
        match processed {
            Processed::Accepted(a) => *a,
            other => panic!("expected Accepted, got {other:?}"),
        }
    }

    #[test]
    fn every_source_filter_must_pass_and_the_first_failing_is_named() {
        let mut pipeline = Pipeline::plain("c", &["d"]);
        pipeline.filters = vec![equals("MSH-9.2", "A08"), equals("PV1-2", "O")];
        match pipeline.process(ADT, Map::new()) {
            Processed::Filtered { rule, .. } => assert_eq!(rule, 2),
            other => panic!("expected Filtered, got {other:?}"),
        }
        pipeline.filters = vec![equals("MSH-9.2", "A08"), equals("PV1-2", "I")];
        let a = accepted(pipeline.process(ADT, Map::new()));
        assert_eq!(a.transformed, None, "nothing changed, nothing extra stored");
        assert_eq!(
            a.destinations,
            vec![DestinationResult::Queued { encoded: None }]
        );
    }

    #[test]
    fn source_steps_run_in_order_and_destinations_start_from_their_result() {
        let mut pipeline = Pipeline::plain("c", &["plain", "own"]);
        pipeline.transform = vec![set("MSH-5", "FIRST"), set("MSH-5", "SCHEDULER")];
        pipeline.destinations[1].transform = vec![set("PID-8", "U")];
        let a = accepted(pipeline.process(ADT, Map::new()));
        let transformed = a
            .transformed
            .expect("the source transformer changed the message");
        let t = Message::parse(&transformed).expect("parse");
        assert_eq!(
            t.get_str("MSH-5").ok().flatten().as_deref(),
            Some("SCHEDULER")
        );
        assert_eq!(t.get_str("PID-8").ok().flatten().as_deref(), Some("F"));
        assert_eq!(
            a.destinations[0],
            DestinationResult::Queued { encoded: None }
        );
        let DestinationResult::Queued { encoded: Some(own) } = &a.destinations[1] else {
            panic!(
                "the destination transformer's bytes are kept: {:?}",
                a.destinations[1]
            );
        };
        let own = Message::parse(own).expect("parse");
        assert_eq!(
            own.get_str("MSH-5").ok().flatten().as_deref(),
            Some("SCHEDULER")
        );
        assert_eq!(own.get_str("PID-8").ok().flatten().as_deref(), Some("U"));
        // The acknowledgement answers what was received.
        assert_eq!(a.received.as_bytes(), ADT);
    }

    #[test]
    fn a_failing_step_is_named_and_only_its_destination_fails() {
        let mut pipeline = Pipeline::plain("c", &["a", "b"]);
        pipeline.destinations[0].transform = vec![set("MSH-5", "X"), set("NOT A PATH", "x")];
        let a = accepted(pipeline.process(ADT, Map::new()));
        match &a.destinations[0] {
            DestinationResult::Failed { reason } => {
                assert!(reason.starts_with("transform 2: "), "{reason}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert_eq!(
            a.destinations[1],
            DestinationResult::Queued { encoded: None }
        );
        pipeline.transform = vec![set("BAD PATH", "x")];
        match pipeline.process(ADT, Map::new()) {
            Processed::Failed { reason, message } => {
                assert!(reason.starts_with("transform 1: "), "{reason}");
                assert_eq!(message.as_bytes(), ADT);
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn the_channel_map_follows_the_chain_and_a_new_chain_starts_from_the_source() {
        let noting = |key: &'static str| -> Arc<dyn TransformStep> {
            Arc::new(SetField {
                path: "ZZZ-1",
                value: "x",
                note: Some(key),
            })
        };
        let mut pipeline = Pipeline::plain("c", &["a", "b", "c"]);
        pipeline.transform = vec![noting("source")];
        pipeline.destinations[0].transform = vec![noting("a")];
        pipeline.destinations[1].transform = vec![noting("b")];
        pipeline.destinations[2].transform = vec![noting("c")];
        pipeline.destinations[2].wait_for_previous = false;
        let a = accepted(pipeline.process(ADT, Map::new()));
        assert_eq!(
            a.channel_map.keys().collect::<Vec<_>>(),
            ["source"],
            "the source's map is what the source transformer left"
        );
        // Observe the maps directly with a step that fails when the map is not as expected.
        struct Expect(&'static [&'static str]);
        impl TransformStep for Expect {
            fn apply(&self, context: &mut Context) -> Result<(), String> {
                let keys: Vec<&str> = context.channel_map.keys().map(String::as_str).collect();
                if keys == self.0 {
                    Ok(())
                } else {
                    Err(format!("saw {keys:?}"))
                }
            }
        }
        pipeline.destinations[1].transform = vec![Arc::new(Expect(&["a", "source"])), noting("b")];
        pipeline.destinations[2].transform = vec![Arc::new(Expect(&["source"]))];
        let a = accepted(pipeline.process(ADT, Map::new()));
        assert!(
            a.destinations
                .iter()
                .all(|d| matches!(d, DestinationResult::Queued { .. })),
            "{:?}",
            a.destinations
        );
        pipeline.destinations[2].wait_for_previous = true;
        let a = accepted(pipeline.process(ADT, Map::new()));
        assert!(
            matches!(&a.destinations[2], DestinationResult::Failed { reason } if reason.contains("saw [\"a\", \"b\", \"source\"]")),
            "{:?}",
            a.destinations[2]
        );
    }

    #[test]
    fn unparseable_or_headerless_input_is_rejected_with_the_reason() {
        let pipeline = Pipeline::plain("c", &["d"]);
        match pipeline.process(b"not hl7", Map::new()) {
            Processed::Rejected {
                message, reason, ..
            } => {
                assert!(message.is_none());
                assert!(reason.starts_with("message rejected"), "{reason}");
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        match pipeline.process(b"MSH|^~\\&|A|B|||x||ADT^A01||P|2.5\r", Map::new()) {
            Processed::Rejected {
                message, reason, ..
            } => {
                assert!(message.is_some());
                assert!(reason.contains("MSH-10"), "{reason}");
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
    }
}
