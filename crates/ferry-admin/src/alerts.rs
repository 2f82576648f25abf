//! `GET /api/v1/alerts`: every configured alert with its rule, actions, throttle and what it
//! has done since the node started (firings, notifications sent, the last observation).
//! Observations hold counts, queue depths, connector error reasons and certificate files,
//! never message content.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use crate::api::{Api, json_response};

pub(crate) async fn list_alerts(State(api): State<Arc<Api>>) -> Response {
    let list: Vec<Value> = api
        .ctx
        .alerts
        .statuses()
        .into_iter()
        .map(|a| {
            json!({
                "name": a.name,
                "rule": a.rule,
                "actions": a.actions,
                "throttle_secs": a.throttle_secs,
                "fired": a.fired,
                "notified": a.notified,
                "last_fired_at": a.last_fired_at,
                "last_observed": a.last_observed,
            })
        })
        .collect();
    json_response(StatusCode::OK, &Value::Array(list))
}
