//! The admin surface of a Ferry node: `GET /health` and `GET /metrics` (Prometheus), and the
//! authenticated REST API under `/api/v1` (users, sessions, API tokens, roles, channels and
//! their lifecycle, messages, the audit log),
//! described by the OpenAPI document at `/api/v1/openapi.json`.
//!
//! This crate builds the [`axum::Router`] only; the binary serves it on the admin listener with
//! the same TCP/TLS accept loop as every other Ferry HTTP listener.
//!
//! - [`policy`]: roles and the route × role table; deny by default.
//! - [`auth`]: argon2id, TOTP, hashed secrets, lockout.
//! - [`sessions`]: server-side sessions with idle and absolute expiry.
//! - [`users`]: creating users (shared with `ferry user add`).
//! - [`scope`]: per-channel scope of users and tokens.
//! - [`bootstrap`]: the one-time bootstrap token that creates the first admin.
//! - [`api`]: the request guard and the handlers.
//! - `messages`: message search and export (PHI access, audited).
//! - [`audit`]: searching and verifying the audit log (`/api/v1/audit`).
//! - [`roles`]: the roles (`/api/v1/roles`).
//! - [`lifecycle`]: deploy, undeploy, start, stop and pause of channels.
//! - [`openapi`]: the OpenAPI document.

mod alerts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod lifecycle;
mod messages;
pub mod openapi;
pub mod policy;
pub mod roles;
pub mod scope;
pub mod sessions;
pub mod users;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ferry_engine::HealthProbe;

pub use api::AdminContext;

/// Build the admin router with only `/health` and `/metrics` (no REST API).
pub fn router(probe: HealthProbe) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(probe)
        .layer(axum::middleware::from_fn_with_state(
            false,
            security_headers,
        ))
}

/// Build the full admin router: `/health`, `/metrics` (unauthenticated, no PHI) and the REST
/// API, with security headers on every response.
pub fn app(ctx: AdminContext) -> Router {
    let tls = ctx.tls;
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(ctx.probe.clone())
        .merge(api::router(ctx))
        .layer(axum::middleware::from_fn_with_state(tls, security_headers))
}

/// `X-Content-Type-Options`, `Cache-Control: no-store`, a deny-all CSP, `Referrer-Policy` and,
/// over TLS, HSTS.
async fn security_headers(State(tls): State<bool>, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if tls {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    response
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
