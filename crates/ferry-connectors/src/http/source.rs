//! The HL7-over-HTTP listener source.
//!
//! `POST <path>` with an HL7 v2 message as the body is answered with the channel's ACK as the
//! body and the HL7-over-HTTP status convention: `AA`/`CA` → 200, `AR`/`CR` → 400,
//! `AE`/`CE` → 500. The body size is limited before it is read into memory (413 beyond it).
//! Other methods get 405 and other paths 404, without touching the body.
//!
//! A request sent as `Content-Type: application/json` (a channel whose first transformer step
//! is a JSON → HL7 template) is answered in JSON with the same status:
//! `{"code": "AA", "message_id": 12, "control_id": "…", "text": null}`.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_engine::ChannelIngest;
use ferry_hl7::ack::{self, AckCode};

/// The media type of HL7 v2 (ER7) bodies.
pub const HTTP_HL7_CONTENT_TYPE: &str = "application/hl7-v2";

#[derive(Clone)]
struct SourceState {
    ingest: ChannelIngest,
    max_body_bytes: usize,
}

/// The router of an HTTP listener source for `ingest`, answering on `path`.
pub fn router(ingest: ChannelIngest, path: &str, max_body_bytes: usize) -> Router {
    let state = SourceState {
        ingest,
        max_body_bytes,
    };
    Router::new()
        .route(path, axum::routing::any(receive))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

async fn receive(
    State(state): State<SourceState>,
    method: Method,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "POST")],
            "only POST is accepted here\n",
        )
            .into_response();
    }
    let bytes = match axum::body::to_bytes(body, state.max_body_bytes).await {
        Ok(b) => b,
        Err(error) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_large {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "body exceeds the maximum size of {} bytes\n",
                        state.max_body_bytes
                    ),
                )
                    .into_response()
            } else {
                (StatusCode::BAD_REQUEST, "could not read the request body\n").into_response()
            };
        }
    };
    let reply = state.ingest.receive(&bytes).await;
    // HTTP has one answer: in enhanced mode the application ACK, when asked for, replaces the
    // commit ACK.
    let (code, body) = match reply.application_ack {
        Some(application) => (
            ack::parse_ack(&application).map_or(reply.code, |s| s.code),
            application,
        ),
        None => (reply.code, reply.ack),
    };
    let status = match code {
        AckCode::AA | AckCode::CA => StatusCode::OK,
        AckCode::AR | AckCode::CR => StatusCode::BAD_REQUEST,
        AckCode::AE | AckCode::CE => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let wants_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if wants_json {
        let summary = ack::parse_ack(&body).ok();
        let answer = serde_json::json!({
            "code": code.as_str(),
            "message_id": reply.message_id,
            "control_id": summary.as_ref().map(|s| s.control_id.clone()).filter(|c| !c.is_empty()),
            "text": summary.and_then(|s| s.text.or(s.error_text)),
        });
        return (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            answer.to_string(),
        )
            .into_response();
    }
    (
        status,
        [(header::CONTENT_TYPE, HTTP_HL7_CONTENT_TYPE)],
        body,
    )
        .into_response()
}
