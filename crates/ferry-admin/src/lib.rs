//! The admin surface of a Ferry node: `GET /health` and `GET /metrics` (Prometheus).
//!
//! This crate builds the [`axum::Router`] only; the binary serves it on the admin listener with
//! the same TCP/TLS accept loop as every other Ferry HTTP listener. The REST API, users, roles
//! and the web console grow here (they are later issues).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ferry_engine::HealthProbe;

/// Build the admin router for an engine.
pub fn router(probe: HealthProbe) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(probe)
}

/// `200 ok` when every channel is deployed and the store accepts writes, `503` otherwise with
/// the reason in a small JSON body.
async fn health(State(probe): State<HealthProbe>) -> Response {
    let h = probe.health();
    let status = if h.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = format!(
        "{{\"status\":\"{}\",\"channels_deployed\":{},\"store_ok\":{}}}\n",
        if h.is_ok() { "ok" } else { "unavailable" },
        h.all_deployed,
        h.store_ok
    );
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Prometheus text exposition of the engine's counters.
async fn metrics(State(probe): State<HealthProbe>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        probe.stats().render_prometheus(),
    )
        .into_response()
}
