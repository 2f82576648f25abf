//! The audit log over the REST API: `GET /api/v1/audit` searches it a page at a time and
//! `GET /api/v1/audit/verify` checks its hash chain. The policy table lets admins and
//! auditors in; every read is itself recorded (`audit_view`), after it, so a page never holds
//! its own record.
//!
//! Both read through the store (`Store::audit_search`, `Store::audit_verify_expecting`), the
//! same queries as `ferry audit list|verify`. A page holds at most [`MAX_LIMIT`] records;
//! verification walks the chain row by row in one read snapshot and keeps only the first 100
//! problems, so neither holds more than a page in memory whatever the log's size.
//!
//! Query strings are parsed into typed structs that refuse unknown parameters (a typo is a
//! `400`, not a silently wider search).

use std::sync::Arc;

use axum::extract::{Extension, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use ferry_connectors::http::ConnectionInfo;
use ferry_store::{AuditAction, AuditFilter, AuditOutcome};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api::{Api, ApiError, Principal, audit_event, json_response};

/// Records per page when the query names no `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;

/// The query of `GET /api/v1/audit` (every parameter optional; see the OpenAPI document).
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    /// Only records at or after this time: RFC 3339 or Unix milliseconds.
    since: Option<String>,
    /// Only records before this time: RFC 3339 or Unix milliseconds.
    until: Option<String>,
    /// Only these actions, comma separated (repeated `action` parameters are joined first).
    action: Option<String>,
    /// Only this actor.
    actor: Option<String>,
    /// Only this target or targets under it.
    target: Option<String>,
    /// `success` or `failure`.
    outcome: Option<String>,
    /// Only records after this sequence number (the cursor of the previous page).
    after_seq: Option<i64>,
    /// Records per page, 1 to [`MAX_LIMIT`].
    limit: Option<usize>,
}

/// The query of `GET /api/v1/audit/verify`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct VerifyQuery {
    /// A head kept outside the database (`SEQ:HASH` or `HASH`).
    expect_head: Option<String>,
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// Parse a query string into `T`. Repeated parameters named in `repeatable` are joined with
/// commas first; any other repeated parameter, an unknown one or a bad value is an error
/// that names it.
fn parse_query<T: DeserializeOwned + Default>(
    raw: Option<&str>,
    repeatable: &[&str],
) -> Result<T, String> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(T::default());
    };
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw).map_err(|e| format!("invalid query string: {e}"))?;
    let mut merged: Vec<(String, String)> = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        if repeatable.contains(&key.as_str())
            && let Some((_, joined)) = merged.iter_mut().find(|(k, _)| *k == key)
        {
            joined.push(',');
            joined.push_str(&value);
            continue;
        }
        merged.push((key, value));
    }
    let encoded =
        serde_urlencoded::to_string(&merged).map_err(|e| format!("invalid query string: {e}"))?;
    serde_urlencoded::from_str(&encoded).map_err(|e| format!("invalid query: {e}"))
}

/// A time parameter: Unix milliseconds, or an RFC 3339 date-time (`2026-11-25T08:30:00Z`).
/// A `+` of an offset that arrived as a space (unencoded in the URL) is read as `+`.
fn parse_time(name: &str, text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    let parsed = time::OffsetDateTime::parse(text, rfc3339)
        .or_else(|e| time::OffsetDateTime::parse(&text.replace(' ', "+"), rfc3339).map_err(|_| e))
        .map_err(|e| {
            format!("`{name}` is neither Unix milliseconds nor an RFC 3339 date-time: {e}")
        })?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| format!("`{name}` is out of range"))
}

fn non_empty(name: &str, value: Option<String>) -> Result<Option<String>, String> {
    match value {
        Some(v) if v.is_empty() => Err(format!("`{name}` is empty")),
        v => Ok(v),
    }
}

/// The store filter of a search query (with `limit` + 1, to know whether a page follows) and
/// the page size.
fn search_filter(raw: Option<&str>) -> Result<(AuditFilter, usize), String> {
    let q: SearchQuery = parse_query(raw, &["action"])?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(format!("`limit` is 1 to {MAX_LIMIT}"));
    }
    let actions = match non_empty("action", q.action)? {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|a| a.trim().parse::<AuditAction>())
            .collect::<Result<Vec<_>, _>>()?,
    };
    let outcome = non_empty("outcome", q.outcome)?
        .map(|o| o.parse::<AuditOutcome>())
        .transpose()?;
    let filter = AuditFilter {
        after_seq: q.after_seq,
        since_ms: q.since.map(|t| parse_time("since", &t)).transpose()?,
        until_ms: q.until.map(|t| parse_time("until", &t)).transpose()?,
        actions,
        actor: non_empty("actor", q.actor)?,
        target: non_empty("target", q.target)?,
        outcome,
        limit: Some(limit + 1),
    };
    Ok((filter, limit))
}

/// What the `audit_view` record says about a search (no secrets: names, times, actions).
fn filter_details(filter: &AuditFilter, limit: usize) -> Value {
    json!({
        "since_ms": filter.since_ms,
        "until_ms": filter.until_ms,
        "actions": filter.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        "actor": filter.actor,
        "target": filter.target,
        "outcome": filter.outcome.map(AuditOutcome::as_str),
        "after_seq": filter.after_seq,
        "limit": limit,
    })
}

/// `GET /api/v1/audit`: `{"records": [...], "next_after_seq": N | null}`.
pub(crate) async fn search(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    conn: Option<Extension<ConnectionInfo>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (filter, limit) = search_filter(raw.as_deref()).map_err(bad_request)?;
    let details = filter_details(&filter, limit);
    let mut records = api.ctx.store.audit_search(filter).await?;
    let next_after_seq = if records.len() > limit {
        records.truncate(limit);
        records.last().map(|r| r.seq)
    } else {
        None
    };
    api.audit(
        audit_event(AuditAction::AuditView, &p.name, conn.as_deref())
            .target("audit")
            .detail("query", "search")
            .detail("filter", details)
            .detail("records", records.len()),
    );
    let list: Vec<Value> = records.iter().map(|r| r.to_json()).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "records": list, "next_after_seq": next_after_seq }),
    ))
}

/// `GET /api/v1/audit/verify`: the verification report (`200` whatever it found; `ok` says).
pub(crate) async fn verify(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    conn: Option<Extension<ConnectionInfo>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q: VerifyQuery = parse_query(raw.as_deref(), &[]).map_err(bad_request)?;
    let expect_head = non_empty("expect_head", q.expect_head).map_err(bad_request)?;
    let expected = expect_head.is_some();
    let report = api.ctx.store.audit_verify_expecting(expect_head).await?;
    if !report.is_ok() {
        tracing::warn!(
            problems = report.problems.len(),
            first = ?report.first_problem().map(ToString::to_string),
            "audit log verification found breaks"
        );
    }
    api.audit(
        audit_event(AuditAction::AuditView, &p.name, conn.as_deref())
            .target("audit")
            .detail("query", "verify")
            .detail("expect_head", expected)
            .detail("ok", report.is_ok())
            .detail("records", report.records),
    );
    Ok(json_response(StatusCode::OK, &report.to_json()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(q: &str) -> Result<AuditFilter, String> {
        search_filter(Some(q)).map(|(f, _)| f)
    }

    #[test]
    fn no_query_is_the_first_page_of_everything() {
        let (f, limit) = search_filter(None).expect("empty");
        assert_eq!(limit, DEFAULT_LIMIT);
        assert_eq!(
            f,
            AuditFilter {
                limit: Some(DEFAULT_LIMIT + 1),
                ..AuditFilter::default()
            }
        );
        assert_eq!(search_filter(Some("")).expect("empty").1, DEFAULT_LIMIT);
    }

    #[test]
    fn actions_repeat_or_come_as_a_comma_list() {
        let want = vec![
            AuditAction::Login,
            AuditAction::LoginFailed,
            AuditAction::Logout,
        ];
        assert_eq!(
            filter("action=login&action=login_failed,logout")
                .expect("ok")
                .actions,
            want
        );
        assert_eq!(
            filter("action=login%2Clogin_failed&action=logout")
                .expect("ok")
                .actions,
            want
        );
        let e = filter("action=login&action=nope").expect_err("unknown action");
        assert!(e.contains("unknown audit action `nope`"), "{e}");
        assert!(filter("action=").is_err(), "an empty action list");
    }

    #[test]
    fn every_parameter_is_typed_and_unknown_ones_are_refused() {
        let f = filter(
            "since=1000&until=2026-11-25T08:30:00Z&actor=olga&target=user&outcome=failure\
             &after_seq=7&limit=5",
        )
        .expect("ok");
        assert_eq!(f.since_ms, Some(1000));
        assert_eq!(f.until_ms, Some(1_795_595_400_000));
        assert_eq!(f.actor.as_deref(), Some("olga"));
        assert_eq!(f.target.as_deref(), Some("user"));
        assert_eq!(f.outcome, Some(AuditOutcome::Failure));
        assert_eq!(f.after_seq, Some(7));
        assert_eq!(
            f.limit,
            Some(6),
            "one more than the page, to know a next page exists"
        );
        let e = filter("actr=olga").expect_err("typo");
        assert!(e.contains("unknown field `actr`"), "{e}");
        let e = filter("actor=a&actor=b").expect_err("twice");
        assert!(e.contains("duplicate field `actor`"), "{e}");
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=ten",
            "after_seq=x",
            "outcome=maybe",
            "since=yesterday",
            "until=2026-13-01T00:00:00Z",
            "actor=",
        ] {
            assert!(filter(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(search_filter(Some("limit=1000")).expect("max").1, MAX_LIMIT);
    }

    #[test]
    fn times_take_offsets_even_with_an_unencoded_plus() {
        let utc = filter("since=2026-11-25T08:30:00Z").expect("utc").since_ms;
        let plus = filter("since=2026-11-25T09:30:00%2B01:00")
            .expect("encoded +")
            .since_ms;
        let space = filter("since=2026-11-25T09:30:00+01:00")
            .expect("+ decoded as a space")
            .since_ms;
        assert_eq!(utc, Some(1_795_595_400_000));
        assert_eq!(plus, utc);
        assert_eq!(space, utc);
        assert_eq!(
            filter("since=-5").expect("negative ms").since_ms,
            Some(-5),
            "milliseconds before 1970 are still milliseconds"
        );
    }

    #[test]
    fn verify_takes_only_an_expected_head() {
        let q: VerifyQuery = parse_query(Some("expect_head=3:ab"), &[]).expect("ok");
        assert_eq!(q.expect_head.as_deref(), Some("3:ab"));
        assert!(parse_query::<VerifyQuery>(Some("head=1"), &[]).is_err());
        assert_eq!(
            parse_query::<VerifyQuery>(None, &[]).expect("none"),
            VerifyQuery::default()
        );
    }

    #[test]
    fn the_documented_query_parameters_are_the_accepted_ones() {
        let doc = crate::openapi::document();
        for (path, accepts) in [
            (
                "/api/v1/audit",
                (|q: &str| search_filter(Some(q)).map(drop)) as fn(&str) -> Result<(), String>,
            ),
            ("/api/v1/audit/verify", |q: &str| {
                parse_query::<VerifyQuery>(Some(q), &[]).map(drop)
            }),
        ] {
            let params = doc["paths"][path]["get"]["parameters"]
                .as_array()
                .expect("parameters");
            assert!(!params.is_empty(), "{path}");
            for p in params {
                let name = p["name"].as_str().expect("name");
                let value = match name {
                    "since" | "until" | "after_seq" | "limit" => "1",
                    "action" => "login",
                    "outcome" => "success",
                    _ => "x",
                };
                accepts(&format!("{name}={value}"))
                    .unwrap_or_else(|e| panic!("{path}: documented `{name}` refused: {e}"));
            }
        }
    }
}
