//! Channel lifecycle routes: `POST /api/v1/channels/{channel}/start|stop|pause|deploy|undeploy`
//! (PRODUCT.md §8; the states are Mirth Connect's STARTED, PAUSED, STOPPED and undeployed).
//!
//! - `start`: a paused or stopped channel accepts and delivers again.
//! - `pause`: the source accepts nothing new (listeners refuse connections, pollers stop);
//!   destination queues keep draining.
//! - `stop`: the source stops, then the destination workers; queued messages stay queued.
//! - `undeploy`: the channel leaves the runtime; its stored messages stay.
//! - `deploy`: the configuration file is read again and checked whole, exactly as
//!   `ferry check` checks it; on an error the answer is 422 with that error and nothing
//!   changes. Then the channel is (re)built from the file and started. A channel that is new
//!   in the file may be deployed this way too: its name in the path is all it needs, and the
//!   answer names its listener. When the channel's section differs from what was deployed, a
//!   `config_change` record with the unified diff of the section (secrets redacted) precedes
//!   the `deploy` record.
//!
//! Every call, whatever its outcome, is one audit record (`start`, `stop`, `pause`,
//! `undeploy`, `deploy`) with the caller, its address and the outcome. None of these routes
//! reads a request body. Changes are serialised; a stop may take as long as the messages in
//! flight need to be stored and answered (bounded by the drain times of
//! [`ferry_connectors::runtime`]).

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use ferry_connectors::http::ConnectionInfo;
use ferry_connectors::{ChannelControl, DeployError, LifecycleError};
use ferry_engine::{ChannelState, EngineError, Transition};
use ferry_store::AuditAction;
use serde_json::{Value, json};

use crate::api::{AdminContext, Api, ApiError, Principal, audit_event, blocking, json_response};

/// Longest diff kept in a `config_change` audit record; a longer one is cut (and says so).
pub const MAX_AUDIT_DIFF_BYTES: usize = 32 * 1024;

/// What the lifecycle routes act on.
#[derive(Clone)]
pub struct LifecycleControl {
    /// The runtime's channel control.
    pub control: ChannelControl,
    /// The configuration file deploys read (`None`: running on the embedded defaults, so
    /// `deploy` answers 409).
    pub config_path: Option<PathBuf>,
}

impl std::fmt::Debug for LifecycleControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LifecycleControl")
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

impl AdminContext {
    /// Enable the lifecycle routes on `control`, deploying from the configuration file at
    /// `config_path`.
    pub fn with_lifecycle(
        mut self,
        control: ChannelControl,
        config_path: Option<PathBuf>,
    ) -> AdminContext {
        self.lifecycle = Some(LifecycleControl {
            control,
            config_path,
        });
        self
    }
}

#[derive(Debug, Clone, Copy)]
enum Change {
    Start,
    Stop,
    Pause,
    Undeploy,
}

impl Change {
    fn action(self) -> AuditAction {
        match self {
            Change::Start => AuditAction::Start,
            Change::Stop => AuditAction::Stop,
            Change::Pause => AuditAction::Pause,
            Change::Undeploy => AuditAction::Undeploy,
        }
    }
}

fn state_name(state: Option<ChannelState>) -> &'static str {
    state.map_or("undeployed", ChannelState::as_str)
}

fn control(api: &Api) -> Result<&LifecycleControl, ApiError> {
    api.ctx.lifecycle.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "channel lifecycle control is not available on this node",
        )
    })
}

/// The status and message of a failed change.
fn refusal(error: &LifecycleError) -> ApiError {
    let status = match error {
        LifecycleError::UnknownChannel(_) | LifecycleError::NotInConfig(_) => StatusCode::NOT_FOUND,
        LifecycleError::Disabled(_) | LifecycleError::Deploy(DeployError::Bind { .. }) => {
            StatusCode::CONFLICT
        }
        LifecycleError::Deploy(_) => StatusCode::UNPROCESSABLE_ENTITY,
        LifecycleError::Engine(EngineError::ShuttingDown) => StatusCode::SERVICE_UNAVAILABLE,
        LifecycleError::Engine(e) => return ApiError::internal(e),
    };
    ApiError::new(status, error.to_string())
}

/// `GET /api/v1/channels/{channel}`: the channel's state, listener, destinations and the
/// configuration section it runs from (canonical TOML, literal secrets redacted).
pub(crate) async fn get_channel(
    State(api): State<Arc<Api>>,
    Path(channel): Path<String>,
) -> Result<Response, ApiError> {
    let stats = api
        .ctx
        .stats
        .channel(&channel)
        .ok_or_else(ApiError::not_found)?;
    let control = api.ctx.lifecycle.as_ref().map(|l| &l.control);
    let (section, listener) = match control {
        Some(c) => (c.section(&channel).await, c.listener(&channel)),
        None => (None, None),
    };
    let destinations: Vec<&str> = stats.destinations.iter().map(|(n, _)| n.as_str()).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "name": channel,
            "state": stats.state().as_str(),
            "listener": listener.map(|l| format!("{}://{}", l.scheme, l.address)),
            "destinations": destinations,
            "config": section,
        }),
    ))
}

fn answer(channel: &str, t: &Transition) -> Value {
    json!({
        "channel": channel,
        "state": state_name(t.to),
        "previous": state_name(t.from),
        "changed": t.changed(),
        "drained": t.drained,
    })
}

async fn change(
    api: Arc<Api>,
    p: Principal,
    conn: Option<Extension<ConnectionInfo>>,
    channel: String,
    what: Change,
) -> Result<Response, ApiError> {
    let event =
        audit_event(what.action(), &p.name, conn.as_deref()).target(format!("channel/{channel}"));
    let control = match control(&api) {
        Ok(c) => c.control.clone(),
        Err(e) => {
            api.audit(
                event
                    .failure()
                    .detail("error", "lifecycle control not available"),
            );
            return Err(e);
        }
    };
    let result = match what {
        Change::Start => control.start(&channel).await,
        Change::Stop => control.stop(&channel).await,
        Change::Pause => control.pause(&channel).await,
        Change::Undeploy => control.undeploy(&channel).await,
    };
    match result {
        Ok(t) => {
            tracing::info!(by = %p.name, %channel, from = state_name(t.from), to = state_name(t.to),
                action = %what.action(), "channel lifecycle changed");
            api.audit(
                event
                    .detail("from", state_name(t.from))
                    .detail("to", state_name(t.to))
                    .detail("drained", t.drained),
            );
            Ok(json_response(StatusCode::OK, &answer(&channel, &t)))
        }
        Err(error) => {
            tracing::warn!(by = %p.name, %channel, %error, action = %what.action(),
                "channel lifecycle change refused");
            api.audit(event.failure().detail("error", error.to_string()));
            Err(refusal(&error))
        }
    }
}

/// `POST /api/v1/channels/{channel}/start`.
pub(crate) async fn start(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    conn: Option<Extension<ConnectionInfo>>,
    Path(channel): Path<String>,
) -> Result<Response, ApiError> {
    change(api, p, conn, channel, Change::Start).await
}

/// `POST /api/v1/channels/{channel}/stop`.
pub(crate) async fn stop(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    conn: Option<Extension<ConnectionInfo>>,
    Path(channel): Path<String>,
) -> Result<Response, ApiError> {
    change(api, p, conn, channel, Change::Stop).await
}

/// `POST /api/v1/channels/{channel}/pause`.
pub(crate) async fn pause(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    conn: Option<Extension<ConnectionInfo>>,
    Path(channel): Path<String>,
) -> Result<Response, ApiError> {
    change(api, p, conn, channel, Change::Pause).await
}

/// `POST /api/v1/channels/{channel}/undeploy`.
pub(crate) async fn undeploy(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    conn: Option<Extension<ConnectionInfo>>,
    Path(channel): Path<String>,
) -> Result<Response, ApiError> {
    change(api, p, conn, channel, Change::Undeploy).await
}

/// Cut a diff to [`MAX_AUDIT_DIFF_BYTES`] on a character boundary.
fn bounded(diff: String) -> String {
    if diff.len() <= MAX_AUDIT_DIFF_BYTES {
        return diff;
    }
    let mut end = MAX_AUDIT_DIFF_BYTES;
    while !diff.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n... (diff cut at {MAX_AUDIT_DIFF_BYTES} of {} bytes)\n",
        &diff[..end],
        diff.len()
    )
}

/// `POST /api/v1/channels/{channel}/deploy`: re-read and check the configuration file, then
/// (re)deploy the channel from it.
pub(crate) async fn deploy(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    conn: Option<Extension<ConnectionInfo>>,
    Path(channel): Path<String>,
) -> Result<Response, ApiError> {
    let target = format!("channel/{channel}");
    let event = || audit_event(AuditAction::Deploy, &p.name, conn.as_deref()).target(&target);
    let refuse = |error: ApiError, why: String| -> Result<Response, ApiError> {
        tracing::warn!(by = %p.name, %channel, error = %why, "channel deploy refused");
        api.audit(event().failure().detail("error", why));
        Err(error)
    };
    let lifecycle = match control(&api) {
        Ok(l) => l.clone(),
        Err(e) => return refuse(e, "lifecycle control not available".into()),
    };
    let Some(path) = lifecycle.config_path.clone() else {
        let why = "running on the embedded defaults: there is no configuration file to deploy from";
        return refuse(ApiError::new(StatusCode::CONFLICT, why), why.into());
    };
    let file = path.clone();
    let checked = blocking(move || {
        let checked = ferry_connectors::check_file(&file);
        let sha256 = std::fs::read(&file)
            .map(|bytes| ferry_store::audit::sha256_hex(&bytes))
            .unwrap_or_default();
        Ok((checked, sha256))
    })
    .await?;
    let (config, sha256) = match checked {
        (Ok(config), sha256) => (config, sha256),
        (Err(error), sha256) => {
            let why = error.to_string();
            tracing::warn!(by = %p.name, %channel, error = %why, "channel deploy refused: the configuration does not check");
            api.audit(
                event()
                    .failure()
                    .detail("error", why.clone())
                    .detail("config_sha256", sha256),
            );
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, why));
        }
    };
    let deployed = match lifecycle.control.deploy(&config, &channel).await {
        Ok(d) => d,
        Err(error) => {
            let why = error.to_string();
            return refuse(refusal(&error), why);
        }
    };
    let changed = deployed.previous_section != deployed.section;
    let diff = if changed {
        ferry_config::diff::unified(
            deployed.previous_section.as_deref().unwrap_or(""),
            deployed.section.as_deref().unwrap_or(""),
            "deployed",
            &path.display().to_string(),
        )
    } else {
        String::new()
    };
    if changed {
        api.audit(
            audit_event(AuditAction::ConfigChange, &p.name, conn.as_deref())
                .target(&target)
                .detail(
                    "change",
                    if deployed.previous_section.is_some() {
                        "modified"
                    } else {
                        "added"
                    },
                )
                .detail("diff", bounded(diff.clone()))
                .detail("config_sha256", sha256.clone()),
        );
    }
    let t = deployed.transition;
    let listener = deployed
        .listener
        .as_ref()
        .map(|l| format!("{}://{}", l.scheme, l.address));
    let mut record = event()
        .detail("from", state_name(t.from))
        .detail("to", state_name(t.to))
        .detail("drained", t.drained)
        .detail("config_changed", changed)
        .detail("config_sha256", sha256);
    if let Some(l) = &listener {
        record = record.detail("listen", l.clone());
    }
    api.audit(record);
    tracing::info!(by = %p.name, %channel, from = state_name(t.from), config_changed = changed,
        "channel deployed");
    let mut body = answer(&channel, &t);
    if let Some(o) = body.as_object_mut() {
        o.insert("config_changed".into(), changed.into());
        o.insert("diff".into(), diff.into());
        o.insert("listener".into(), listener.into());
    }
    Ok(json_response(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_diffs_are_cut_on_a_character_boundary() {
        let short = "ab".to_owned();
        assert_eq!(bounded(short.clone()), short);
        let long = "é".repeat(MAX_AUDIT_DIFF_BYTES);
        let cut = bounded(long);
        assert!(cut.len() < MAX_AUDIT_DIFF_BYTES + 100);
        assert!(cut.ends_with("bytes)\n"), "{}", &cut[cut.len() - 40..]);
    }
}
