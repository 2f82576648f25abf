//! Message search and export (PHI access): `GET /api/v1/channels/{channel}/messages` and
//! `GET /api/v1/channels/{channel}/messages/export`.
//!
//! Both take the same query parameters, parsed into one typed struct that refuses unknown
//! parameters (400), and run the store's bounded search ([`ferry_store::MessageQuery`]):
//!
//! | parameter | meaning |
//! |---|---|
//! | `status`, `connector` | a connector status (`QUEUED`, `SENT`, `ERROR`, `FILTERED`, …) at any connector, or at `connector` |
//! | `since_ms`, `until_ms` | received at or after / before, Unix milliseconds |
//! | `control_id` | MSH-10, exactly |
//! | `type` | MSH-9, exactly or as a `^`-prefix (`ADT^A01`, `ADT`) |
//! | `meta` | `key:value`, an indexed metadata value (the channel's `index`, e.g. `mrn:12345`) |
//! | `text` | a substring of the raw message (case-sensitive) |
//! | `before_id`, `after_id` | the window of ids (exclusive); results are newest first |
//! | `limit` | search: matches per page, default 100, at most 1000; export: messages in all, default 10,000, at most 1,000,000 |
//! | `max_examined` | search only: candidates examined per request, default 10,000, at most 100,000 |
//!
//! **Search** answers summaries (no content) with `examined` and `next_before_id`: pass the
//! latter as `before_id` with the same criteria to continue; `null` means nothing more
//! matches. **Export** streams the matching messages' raw content as NDJSON (one JSON object
//! per line: the summary fields and `raw`, or `raw_base64` when the bytes are not UTF-8), page
//! by page ([`EXPORT_PAGE`] messages at a time), so memory stays bounded whatever the count.
//!
//! **Audit.** A search records `message_search`, an export `message_export` (when its stream
//! ends, with how many messages it carried and whether it completed). Both record the names
//! of every criterion used, and the values only of those that do not identify a patient or
//! message — status, connector, times, message type, the id window: an MRN, a free text or an
//! MSH-10 is PHI, and the audit log is shipped to collectors that must hold none. The result
//! count and the newest/oldest id returned say what was disclosed; the ids lead back to the
//! messages for an investigation.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ferry_connectors::http::ConnectionInfo;
use ferry_store::{AuditAction, AuditEvent, FoundMessage, MessageQuery, Status, Store};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::api::{Api, ApiError, Principal, audit_event, json_response};

/// Matches per search page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// Most matches per search page.
pub const MAX_LIMIT: usize = ferry_store::MAX_SEARCH_LIMIT;
/// Candidates one search request examines unless `max_examined` says otherwise.
pub const DEFAULT_MAX_EXAMINED: usize = 10_000;
/// Messages one export carries unless `limit` says otherwise.
pub const DEFAULT_EXPORT_LIMIT: usize = 10_000;
/// Most messages one export carries.
pub const MAX_EXPORT_LIMIT: usize = 1_000_000;
/// Messages an export reads (and holds) at a time.
pub const EXPORT_PAGE: usize = 16;
/// Longest `text` criterion, in bytes.
pub const MAX_TEXT_BYTES: usize = 256;

/// The query parameters of both routes (see the module documentation).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessageParams {
    status: Option<String>,
    connector: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    control_id: Option<String>,
    #[serde(rename = "type")]
    message_type: Option<String>,
    meta: Option<String>,
    text: Option<String>,
    before_id: Option<i64>,
    after_id: Option<i64>,
    limit: Option<usize>,
    max_examined: Option<usize>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

impl MessageParams {
    /// The store query, checked; `limit` is validated by the caller (its range differs).
    fn query(&self, channel: &str) -> Result<MessageQuery, ApiError> {
        let status = self
            .status
            .as_deref()
            .map(|s| s.parse::<Status>().map_err(bad))
            .transpose()?;
        if self.connector.is_some() && status.is_none() {
            return Err(bad("`connector` needs `status`"));
        }
        let metadata = match &self.meta {
            None => Vec::new(),
            Some(m) => match m.split_once(':') {
                Some((k, v)) if !k.is_empty() && !v.is_empty() => {
                    vec![(k.to_owned(), v.to_owned())]
                }
                _ => return Err(bad("`meta` is `key:value`, e.g. `mrn:12345`")),
            },
        };
        if let Some(t) = &self.text
            && (t.is_empty() || t.len() > MAX_TEXT_BYTES)
        {
            return Err(bad(format!("`text` is 1 to {MAX_TEXT_BYTES} bytes")));
        }
        let non_empty = |name: &str, v: &Option<String>| match v {
            Some(s) if s.is_empty() => Err(bad(format!("`{name}` is empty"))),
            _ => Ok(()),
        };
        non_empty("control_id", &self.control_id)?;
        non_empty("type", &self.message_type)?;
        non_empty("connector", &self.connector)?;
        Ok(MessageQuery {
            channel: channel.to_owned(),
            status,
            connector: self.connector.clone(),
            received_since_ms: self.since_ms,
            received_until_ms: self.until_ms,
            control_id: self.control_id.clone(),
            message_type: self.message_type.clone(),
            metadata,
            text: self.text.clone().map(String::into_bytes),
            before_id: self.before_id,
            after_id: self.after_id,
            limit: DEFAULT_LIMIT,
            max_examined: DEFAULT_MAX_EXAMINED,
            with_raw: false,
        })
    }

    /// `detail`s for the audit record: every criterion's name, and the values of those that
    /// identify no one.
    fn audit(&self, mut event: AuditEvent) -> AuditEvent {
        let mut criteria = Vec::new();
        let mut values = Map::new();
        let mut shown = |name: &str, v: Option<Value>| {
            if let Some(v) = v {
                criteria.push(Value::from(name));
                values.insert(name.to_owned(), v);
            }
        };
        shown("status", self.status.clone().map(Value::from));
        shown("connector", self.connector.clone().map(Value::from));
        shown("since_ms", self.since_ms.map(Value::from));
        shown("until_ms", self.until_ms.map(Value::from));
        shown("type", self.message_type.clone().map(Value::from));
        shown("before_id", self.before_id.map(Value::from));
        shown("after_id", self.after_id.map(Value::from));
        shown("limit", self.limit.map(Value::from));
        shown("max_examined", self.max_examined.map(Value::from));
        if self.control_id.is_some() {
            criteria.push("control_id".into());
        }
        if let Some((key, _)) = self.meta.as_deref().and_then(|m| m.split_once(':')) {
            criteria.push(format!("meta:{key}").into());
        }
        if self.text.is_some() {
            criteria.push("text".into());
        }
        event = event.detail("criteria", criteria);
        if !values.is_empty() {
            event = event.detail("filters", Value::Object(values));
        }
        event
    }
}

fn parse(params: Result<Query<MessageParams>, QueryRejection>) -> Result<MessageParams, ApiError> {
    params.map(|Query(p)| p).map_err(|e| bad(e.body_text()))
}

fn summary(m: &FoundMessage) -> Map<String, Value> {
    let connectors: Vec<Value> = m
        .connectors
        .iter()
        .map(|c| json!({ "name": c.connector, "status": c.status.as_str() }))
        .collect();
    let mut o = Map::new();
    o.insert("id".into(), m.id.into());
    o.insert("received_at_ms".into(), m.received_at_ms.into());
    o.insert("control_id".into(), m.control_id.clone().into());
    o.insert("message_type".into(), m.message_type.clone().into());
    o.insert("connectors".into(), Value::Array(connectors));
    // Retention pruning deleted the content: the browser says so instead of showing nothing.
    if m.content_pruned {
        o.insert("content_pruned".into(), true.into());
    }
    o
}

/// `GET /api/v1/channels/{channel}/messages`.
pub(crate) async fn search(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    conn: Option<Extension<ConnectionInfo>>,
    Path(channel): Path<String>,
    params: Result<Query<MessageParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    if api.ctx.stats.channel(&channel).is_none() {
        return Err(ApiError::not_found());
    }
    let params = parse(params)?;
    let mut query = params.query(&channel)?;
    query.limit = match params.limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => return Err(bad(format!("`limit` is 1 to {MAX_LIMIT}"))),
    };
    query.max_examined = match params.max_examined {
        None => DEFAULT_MAX_EXAMINED,
        Some(n) if (1..=ferry_store::MAX_SEARCH_EXAMINED).contains(&n) => n,
        Some(_) => {
            return Err(bad(format!(
                "`max_examined` is 1 to {}",
                ferry_store::MAX_SEARCH_EXAMINED
            )));
        }
    };
    let page = api.ctx.store.search_messages(query).await?;
    let messages: Vec<Value> = page
        .messages
        .iter()
        .map(|m| Value::Object(summary(m)))
        .collect();
    tracing::info!(by = %p.name, channel = %channel, results = messages.len(), "messages searched (PHI access)");
    let event = audit_event(AuditAction::MessageSearch, &p.name, conn.as_deref())
        .target(format!("channel/{channel}/messages"))
        .detail("results", messages.len())
        .detail("examined", page.examined);
    let event = with_range(params.audit(event), &page.messages);
    api.audit(event);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "channel": channel,
            "messages": messages,
            "examined": page.examined,
            "next_before_id": page.next_before_id,
        }),
    ))
}

/// The newest and oldest id a page disclosed.
fn with_range(event: AuditEvent, messages: &[FoundMessage]) -> AuditEvent {
    match (messages.first(), messages.last()) {
        (Some(newest), Some(oldest)) => event
            .detail("newest_id", newest.id)
            .detail("oldest_id", oldest.id),
        _ => event,
    }
}

/// Records the export's audit event when its stream ends, however it ends (finished, failed,
/// or the client went away): what was disclosed is known only then.
struct ExportAudit {
    api: Arc<Api>,
    event: Option<AuditEvent>,
    exported: u64,
    newest: Option<i64>,
    oldest: Option<i64>,
    complete: bool,
}

impl Drop for ExportAudit {
    fn drop(&mut self) {
        let Some(mut event) = self.event.take() else {
            return;
        };
        event = event
            .detail("exported", self.exported)
            .detail("complete", self.complete);
        if let (Some(n), Some(o)) = (self.newest, self.oldest) {
            event = event.detail("newest_id", n).detail("oldest_id", o);
        }
        if !self.complete {
            event = event.failure();
        }
        self.api.audit(event);
    }
}

/// Where an export is.
struct Export {
    store: Store,
    query: MessageQuery,
    remaining: usize,
    done: bool,
    failed: bool,
    audit: ExportAudit,
}

/// One NDJSON line of an exported message.
fn export_line(m: &FoundMessage, out: &mut Vec<u8>) {
    let mut o = summary(m);
    match m.raw.as_deref().map(std::str::from_utf8) {
        Some(Ok(text)) => {
            o.insert("raw".into(), text.into());
        }
        Some(Err(_)) => {
            let bytes = m.raw.as_deref().unwrap_or_default();
            o.insert(
                "raw_base64".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into(),
            );
        }
        None => {}
    }
    if serde_json::to_writer(&mut *out, &Value::Object(o)).is_ok() {
        out.push(b'\n');
    }
}

impl Export {
    /// The next chunk of NDJSON; `None` at the end.
    async fn next(&mut self) -> Option<Result<bytes::Bytes, std::io::Error>> {
        while !self.done && self.remaining > 0 {
            self.query.limit = self.remaining.min(EXPORT_PAGE);
            let page = match self.store.search_messages(self.query.clone()).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::error!(%error, "admin API: message export failed");
                    self.done = true;
                    self.failed = true;
                    return Some(Err(std::io::Error::other("the export failed")));
                }
            };
            match page.next_before_id {
                Some(cursor) => self.query.before_id = Some(cursor),
                None => self.done = true,
            }
            if page.messages.is_empty() {
                continue;
            }
            let mut out = Vec::new();
            for m in &page.messages {
                export_line(m, &mut out);
                self.audit.newest.get_or_insert(m.id);
                self.audit.oldest = Some(m.id);
            }
            self.remaining -= page.messages.len();
            self.audit.exported += page.messages.len() as u64;
            return Some(Ok(out.into()));
        }
        self.audit.complete = !self.failed;
        None
    }
}

/// `GET /api/v1/channels/{channel}/messages/export`.
pub(crate) async fn export(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    conn: Option<Extension<ConnectionInfo>>,
    Path(channel): Path<String>,
    params: Result<Query<MessageParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    if api.ctx.stats.channel(&channel).is_none() {
        return Err(ApiError::not_found());
    }
    let params = parse(params)?;
    if params.max_examined.is_some() {
        return Err(bad(
            "`max_examined` is for searches; an export walks until it is done",
        ));
    }
    let mut query = params.query(&channel)?;
    query.with_raw = true;
    query.max_examined = DEFAULT_MAX_EXAMINED;
    let remaining = match params.limit {
        None => DEFAULT_EXPORT_LIMIT,
        Some(n) if (1..=MAX_EXPORT_LIMIT).contains(&n) => n,
        Some(_) => return Err(bad(format!("`limit` is 1 to {MAX_EXPORT_LIMIT}"))),
    };
    tracing::info!(by = %p.name, channel = %channel, "messages exported (PHI access)");
    let event = params.audit(
        audit_event(AuditAction::MessageExport, &p.name, conn.as_deref())
            .target(format!("channel/{channel}/messages"))
            .detail("format", "ndjson"),
    );
    let export = Export {
        store: api.ctx.store.clone(),
        query,
        remaining,
        done: false,
        failed: false,
        audit: ExportAudit {
            api: api.clone(),
            event: Some(event),
            exported: 0,
            newest: None,
            oldest: None,
            complete: false,
        },
    };
    let stream = futures::stream::unfold(export, |mut export| async move {
        export.next().await.map(|chunk| (chunk, export))
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    let disposition = format!("attachment; filename=\"{channel}-messages.ndjson\"");
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_store::ConnectorStatus;

    fn found(raw: &[u8]) -> FoundMessage {
        FoundMessage {
            id: 7,
            received_at_ms: 1_000,
            control_id: Some("C7".into()),
            message_type: Some("ADT^A01".into()),
            connectors: vec![ConnectorStatus {
                connector: "source".into(),
                status: Status::Transformed,
            }],
            content_pruned: false,
            raw: Some(raw.to_vec()),
        }
    }

    fn line(m: &FoundMessage) -> Value {
        let mut out = Vec::new();
        export_line(m, &mut out);
        assert_eq!(out.last(), Some(&b'\n'), "one line per message");
        serde_json::from_slice(&out).expect("json")
    }

    #[test]
    fn an_export_line_carries_the_raw_bytes_losslessly() {
        let utf8 = line(&found(b"MSH|^~\\&|A\rPID|1||\xC3\xA9\r"));
        assert_eq!(utf8["raw"], "MSH|^~\\&|A\rPID|1||\u{e9}\r");
        assert_eq!(utf8["id"], 7);
        assert_eq!(utf8["connectors"][0]["status"], "TRANSFORMED");
        // ISO-8859-1 é is not UTF-8: the bytes go as base64, not replaced.
        let latin1 = line(&found(b"MSH|^~\\&|A\rPID|1||\xE9\r"));
        assert!(latin1.get("raw").is_none());
        let b64 = latin1["raw_base64"].as_str().expect("base64");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("decode");
        assert_eq!(bytes, b"MSH|^~\\&|A\rPID|1||\xE9\r");
    }

    #[test]
    fn a_message_whose_content_was_pruned_says_so() {
        let mut pruned = found(b"");
        pruned.content_pruned = true;
        pruned.raw = None;
        let out = line(&pruned);
        assert_eq!(out["content_pruned"], true);
        assert!(out.get("raw").is_none() && out.get("raw_base64").is_none());
        assert!(line(&found(b"MSH|")).get("content_pruned").is_none());
    }

    #[test]
    fn the_documented_query_parameters_are_the_accepted_ones() {
        let doc = crate::openapi::document();
        for path in [
            "/api/v1/channels/{channel}/messages",
            "/api/v1/channels/{channel}/messages/export",
        ] {
            let mut names = Vec::new();
            for p in doc["paths"][path]["get"]["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .filter(|p| p["in"] == "query")
            {
                let name = p["name"].as_str().expect("name");
                let value = match name {
                    "status" => "SENT",
                    "meta" => "mrn:1",
                    n if n.ends_with("_ms") || n.ends_with("_id") => "1",
                    "limit" | "max_examined" => "1",
                    _ => "x",
                };
                let query = format!("{name}={value}");
                let parsed: MessageParams = parse_query(&query)
                    .unwrap_or_else(|e| panic!("{path}: documented `{name}` refused: {e}"));
                // `connector` needs `status`.
                let parsed = MessageParams {
                    status: parsed.status.or(Some("SENT".into())),
                    ..parsed
                };
                parsed
                    .query("c")
                    .unwrap_or_else(|e| panic!("{path}: `{query}`: {e:?}"));
                names.push(name.to_owned());
            }
            assert!(names.contains(&"meta".to_owned()), "{path}: {names:?}");
            assert_eq!(
                names.contains(&"max_examined".to_owned()),
                !path.ends_with("export"),
                "max_examined is for searches only"
            );
        }
        let unknown = parse_query("mrn=1").expect_err("unknown parameter");
        assert!(unknown.contains("mrn"), "{unknown}");
    }

    /// What the `Query` extractor does with a query string.
    fn parse_query(query: &str) -> Result<MessageParams, String> {
        let uri: axum::http::Uri = format!("/x?{query}").parse().map_err(|e| format!("{e}"))?;
        Query::<MessageParams>::try_from_uri(&uri)
            .map(|Query(p)| p)
            .map_err(|e| e.body_text())
    }

    #[test]
    fn the_audit_keeps_criterion_names_and_only_values_that_identify_no_one() {
        let params = MessageParams {
            status: Some("ERROR".into()),
            connector: Some("cloud".into()),
            since_ms: Some(5),
            control_id: Some("MSG-SECRET".into()),
            meta: Some("mrn:MRN-SECRET".into()),
            text: Some("DOE^SECRET".into()),
            ..MessageParams::default()
        };
        let event = params.audit(AuditEvent::new(AuditAction::MessageSearch));
        let shown = format!("{event:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        for name in [
            "status",
            "connector",
            "since_ms",
            "control_id",
            "meta:mrn",
            "text",
        ] {
            assert!(shown.contains(name), "{name} in {shown}");
        }
        assert!(
            shown.contains("ERROR") && shown.contains("cloud"),
            "{shown}"
        );
    }
}
