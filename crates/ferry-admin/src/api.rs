//! The REST API under `/api/v1`: the request guard (authentication, policy, CSRF, body limit)
//! and the handlers.
//!
//! Order of work on every API request, before any handler runs and so before any body byte is
//! read: find the route's policy entry (none → 403), authenticate (none → 401), check the role
//! (→ 403), check CSRF for cookie sessions on unsafe methods (→ 403), check the caller's
//! channel scope against the route's [`ScopeRule`] (a `{channel}` outside it → 404 like an
//! unknown channel; a node-wide route → 403), refuse a declared body over the limit (→ 413).
//! Handlers then read at most [`BODY_LIMIT`] bytes and parse them only into typed structs that
//! refuse unknown fields.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::RequestExt as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, MatchedPath, Path, RawPathParams, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ferry_alerts::AlertSignals;
use ferry_connectors::http::ConnectionInfo;
use ferry_engine::{Engine, HealthProbe, ReprocessError, Stats};
use ferry_store::{
    Accounts, AuditAction, AuditEvent, AuditSink, ContentStage, SOURCE, Store, StoreError,
    UserRecord,
};
use http_body_util::BodyExt as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::auth::{self, Lockout, LockoutPolicy, TOKEN_PREFIX};
use crate::lifecycle;
use crate::policy::{self, Access, Role, ScopeRule};
use crate::scope::{ChannelScope, ScopeError};
use crate::sessions::{self, SessionCheck, SessionPolicy};
use crate::users::{self, UserError, now_ms};

/// Largest request body any route reads (JSON bodies are small).
pub const BODY_LIMIT: usize = 64 * 1024;
/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "ferry_session";
/// Header that cookie-authenticated unsafe requests must carry: the CSRF token of the login.
pub const CSRF_HEADER: &str = "x-ferry-csrf";

/// Everything the admin server needs from the rest of the node.
pub struct AdminContext {
    /// Health and counters.
    pub probe: HealthProbe,
    /// Counters of every channel.
    pub stats: Arc<Stats>,
    /// The message store (message metadata and content).
    pub store: Store,
    /// Users, sessions and API tokens.
    pub accounts: Accounts,
    /// The engine: the channels deployed now (for reprocessing), whenever they were deployed.
    pub engine: Engine,
    /// Channel lifecycle control (deploy, undeploy, start, stop, pause); `None`: those routes
    /// answer 503.
    pub lifecycle: Option<crate::lifecycle::LifecycleControl>,
    /// Session lifetimes.
    pub sessions: SessionPolicy,
    /// Failed-login lockout.
    pub lockout: LockoutPolicy,
    /// Whether the admin listener serves HTTPS (cookies get `Secure`, responses HSTS).
    pub tls: bool,
    /// Where the API's audit records go (logins, PHI access, changes); never waits on the
    /// store.
    pub audit: AuditSink,
    /// Where failed logins are reported for the `failed_logins` alert rules (a handle of its
    /// own, feeding nothing, unless [`with_alert_signals`](Self::with_alert_signals) set the
    /// one `ferry_alerts::start` returned).
    pub alerts: AlertSignals,
}

impl std::fmt::Debug for AdminContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminContext")
            .field("channels", &self.engine.channel_names())
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl AdminContext {
    /// The context of a running engine.
    pub fn new(
        engine: &Engine,
        accounts: Accounts,
        sessions: SessionPolicy,
        lockout: LockoutPolicy,
        tls: bool,
        audit: AuditSink,
    ) -> AdminContext {
        AdminContext {
            probe: engine.health_probe(),
            stats: engine.stats(),
            store: engine.store().clone(),
            accounts,
            engine: engine.clone(),
            lifecycle: None,
            sessions,
            lockout,
            tls,
            audit,
            alerts: AlertSignals::new(),
        }
    }

    /// Report failed logins to these alert signals (the handle `ferry_alerts::start`
    /// returned).
    pub fn with_alert_signals(mut self, alerts: AlertSignals) -> AdminContext {
        self.alerts = alerts;
        self
    }
}

pub(crate) struct Api {
    pub(crate) ctx: AdminContext,
    lockout: Lockout,
    /// Failed bootstrap attempts, counted under one key (the token is node-wide), with the
    /// login lockout's policy.
    pub(crate) bootstrap_lockout: Lockout,
    /// Last TOTP time step used per user id: a code is accepted once.
    totp_steps: Mutex<BTreeMap<i64, u64>>,
    openapi: String,
}

impl Api {
    /// Queue an audit record (never waits; a full buffer is counted and reported by the sink).
    pub(crate) fn audit(&self, event: AuditEvent) {
        self.ctx.audit.record(event);
    }
}

/// `429 Too Many Requests` with `message` and a `Retry-After` of `wait`, rounded up to whole
/// seconds: the answer of a locked-out login or bootstrap attempt.
pub(crate) fn too_many_attempts(message: &str, wait: std::time::Duration) -> Response {
    let mut r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, message).into_response();
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// An audit event of `action` by `actor` from the request's peer address.
pub(crate) fn audit_event(
    action: AuditAction,
    actor: &str,
    conn: Option<&ConnectionInfo>,
) -> AuditEvent {
    let event = AuditEvent::new(action).actor(actor);
    match conn {
        Some(c) => event.peer(c.peer),
        None => event,
    }
}

/// How the caller authenticated.
#[derive(Clone)]
pub enum Credential {
    /// A login session.
    Session {
        /// The session id (kept to end it on logout).
        id: String,
        /// SHA-256 of its CSRF token.
        csrf_hash: Vec<u8>,
        /// Whether it came in the cookie (then unsafe methods need the CSRF header).
        cookie: bool,
    },
    /// An API token.
    Token {
        /// Its id.
        id: i64,
    },
}

/// The authenticated caller of a request.
#[derive(Clone)]
pub struct Principal {
    /// User name, or the API token's name.
    pub name: String,
    /// The role it acts with.
    pub role: Role,
    /// The channels it reaches (the user's or the token's scope).
    pub scope: ChannelScope,
    /// How it authenticated.
    pub credential: Credential,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// An error answer: a status and a short JSON `{"error": …}` body.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub(crate) fn internal(what: impl std::fmt::Display) -> ApiError {
        tracing::error!("admin API: {what}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
    pub(crate) fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not found")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, &json!({ "error": self.message }))
    }
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut body = value.to_string();
    body.push('\n');
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

/// Read a JSON body of at most [`BODY_LIMIT`] bytes into `T`.
pub(crate) async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be application/json",
        ));
    }
    let bytes = read_body(body).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid request body ({:?} at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        )
    })
}

async fn read_body(body: Body) -> Result<bytes::Bytes, ApiError> {
    http_body_util::Limited::new(body, BODY_LIMIT)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large"))
}

/// The API router (its routes are exactly the policy table's).
pub(crate) fn router(ctx: AdminContext) -> Router {
    let lockout = Lockout::new(ctx.lockout);
    let bootstrap_lockout = Lockout::new(ctx.lockout);
    auth::warm_up();
    let api = Arc::new(Api {
        ctx,
        lockout,
        bootstrap_lockout,
        totp_steps: Mutex::new(BTreeMap::new()),
        openapi: crate::openapi::document().to_string(),
    });
    Router::new()
        .route("/api/v1/session", post(login).get(whoami).delete(logout))
        .route("/api/v1/bootstrap", post(crate::bootstrap::bootstrap))
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{name}/disable", post(disable_user))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/api/v1/channels", get(list_channels))
        .route("/api/v1/channels/{channel}", get(lifecycle::get_channel))
        .route("/api/v1/channels/{channel}/stats", get(channel_stats))
        .route("/api/v1/alerts", get(crate::alerts::list_alerts))
        .route(
            "/api/v1/channels/{channel}/messages",
            get(crate::messages::search),
        )
        .route(
            "/api/v1/channels/{channel}/messages/export",
            get(crate::messages::export),
        )
        .route("/api/v1/channels/{channel}/messages/{id}", get(get_message))
        .route(
            "/api/v1/channels/{channel}/messages/{id}/reprocess",
            post(reprocess),
        )
        .route("/api/v1/channels/{channel}/start", post(lifecycle::start))
        .route("/api/v1/channels/{channel}/stop", post(lifecycle::stop))
        .route("/api/v1/channels/{channel}/pause", post(lifecycle::pause))
        .route("/api/v1/channels/{channel}/deploy", post(lifecycle::deploy))
        .route(
            "/api/v1/channels/{channel}/undeploy",
            post(lifecycle::undeploy),
        )
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/audit", get(crate::audit::search))
        .route("/api/v1/audit/verify", get(crate::audit::verify))
        .route("/api/v1/roles", get(crate::roles::list))
        .route_layer(axum::middleware::from_fn_with_state(api.clone(), guard))
        .with_state(api)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Authenticate from the `Authorization: Bearer` header (an API token or a session id) or the
/// session cookie. A session found ended (idle, absolute timeout, user disabled) is audited as
/// `session_expired`, once: the check deletes it.
async fn authenticate(
    api: &Arc<Api>,
    headers: &HeaderMap,
    conn: Option<&ConnectionInfo>,
) -> Result<Option<Principal>, ApiError> {
    let (secret, cookie) = match (bearer(headers), session_cookie(headers)) {
        (Some(b), _) => (b.to_owned(), false),
        (None, Some(c)) => (c.to_owned(), true),
        (None, None) => return Ok(None),
    };
    let accounts = api.ctx.accounts.clone();
    if secret.starts_with(TOKEN_PREFIX) && !cookie {
        let token =
            blocking(move || Ok(accounts.active_token(&auth::secret_hash(&secret))?)).await?;
        return Ok(token.and_then(|t| {
            Some(Principal {
                role: Role::parse(&t.role)?,
                name: t.name,
                scope: ChannelScope::from_stored(t.channels),
                credential: Credential::Token { id: t.id },
            })
        }));
    }
    let policy = api.ctx.sessions;
    let (check, secret) =
        blocking(move || Ok((sessions::validate(&accounts, policy, &secret)?, secret))).await?;
    let found = match check {
        SessionCheck::Valid(s, u) => Some((secret, s, u)),
        SessionCheck::Ended { user, reason } => {
            tracing::info!(user = %user.name, reason = reason.as_str(), "admin session ended");
            api.audit(
                audit_event(AuditAction::SessionExpired, &user.name, conn)
                    .target(format!("user/{}", user.name))
                    .failure()
                    .detail("reason", reason.as_str())
                    .detail("via", if cookie { "cookie" } else { "bearer" }),
            );
            None
        }
        SessionCheck::Unknown => None,
    };
    Ok(found.and_then(|(id, s, u)| {
        Some(Principal {
            role: Role::parse(&u.role)?,
            name: u.name,
            scope: ChannelScope::from_stored(u.channels),
            credential: Credential::Session {
                id,
                csrf_hash: s.csrf_hash,
                cookie,
            },
        })
    }))
}

async fn guard(State(api): State<Arc<Api>>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| policy::lookup(req.method(), m.as_str()));
    let Some(route) = route else {
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden").into_response();
    };
    if route.access != Access::Public {
        let conn = req.extensions().get::<ConnectionInfo>().cloned();
        let principal = match authenticate(&api, req.headers(), conn.as_ref()).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                return ApiError::new(StatusCode::UNAUTHORIZED, "authentication required")
                    .into_response();
            }
            Err(e) => return e.into_response(),
        };
        // Method and route pattern, never the query string.
        let uri_path = req.uri().path().to_owned();
        let denied = |reason: &str| {
            api.audit(
                audit_event(
                    AuditAction::PermissionDenied,
                    &principal.name,
                    conn.as_ref(),
                )
                .target(uri_path.clone())
                .failure()
                .detail("method", route.method)
                .detail("route", route.path)
                .detail("role", principal.role.as_str())
                .detail("reason", reason),
            );
        };
        if !route.access.allows(principal.role) {
            denied("role");
            return ApiError::new(StatusCode::FORBIDDEN, "forbidden").into_response();
        }
        if let Credential::Session {
            csrf_hash,
            cookie: true,
            ..
        } = &principal.credential
        {
            let safe = matches!(*req.method(), Method::GET | Method::HEAD);
            let sent = req
                .headers()
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(auth::secret_hash);
            if !safe && !sent.is_some_and(|h| auth::hashes_equal(&h, csrf_hash)) {
                denied("csrf");
                return ApiError::new(StatusCode::FORBIDDEN, "missing or wrong X-Ferry-CSRF")
                    .into_response();
            }
        }
        if !principal.scope.is_all() {
            match policy::scope_rule(route) {
                ScopeRule::PathChannel => {
                    // A value that is not decodable names no channel in any scope.
                    let in_scope = match req.extract_parts::<RawPathParams>().await {
                        Ok(params) => params
                            .iter()
                            .any(|(k, v)| k == "channel" && principal.scope.allows(v)),
                        Err(_) => false,
                    };
                    if !in_scope {
                        // Exactly what an unknown channel answers: the scope does not tell
                        // which other channels exist.
                        denied("scope");
                        return ApiError::not_found().into_response();
                    }
                }
                ScopeRule::Refused => {
                    denied("scope");
                    return ApiError::new(
                        StatusCode::FORBIDDEN,
                        "not available to callers limited to some channels",
                    )
                    .into_response();
                }
                ScopeRule::Filtered | ScopeRule::NoChannelData => {}
            }
        }
        req.extensions_mut().insert(principal);
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large")
            .into_response();
    }
    next.run(req).await
}

/// `POST /api/v1/session` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    user: String,
    password: String,
    #[serde(default)]
    totp: Option<String>,
}

fn unix_secs() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
}

/// Why a login failed, as recorded in the audit trail (the answer is the same 401 for every
/// one of them, so a caller learns nothing about which names exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoginFailure {
    /// Unknown user or wrong password (deliberately one category).
    BadCredentials,
    /// The right password of a disabled user.
    Disabled,
    /// The stored role is not one this Ferry knows.
    AccountInvalid,
    /// The TOTP code was missing.
    MfaMissing,
    /// The TOTP code was wrong.
    MfaWrong,
    /// The TOTP code was used before.
    MfaReplayed,
    /// The role requires MFA but the user has no TOTP secret.
    MfaNotEnrolled,
}

impl LoginFailure {
    /// The `reason` detail: `bad_credentials`, `disabled`, `account_invalid` or `mfa`.
    fn reason(self) -> &'static str {
        match self {
            LoginFailure::BadCredentials => "bad_credentials",
            LoginFailure::Disabled => "disabled",
            LoginFailure::AccountInvalid => "account_invalid",
            LoginFailure::MfaMissing
            | LoginFailure::MfaWrong
            | LoginFailure::MfaReplayed
            | LoginFailure::MfaNotEnrolled => "mfa",
        }
    }

    /// The `mfa` detail for the MFA failures.
    fn mfa(self) -> Option<&'static str> {
        match self {
            LoginFailure::MfaMissing => Some("missing"),
            LoginFailure::MfaWrong => Some("wrong"),
            LoginFailure::MfaReplayed => Some("replayed"),
            LoginFailure::MfaNotEnrolled => Some("not_enrolled"),
            _ => None,
        }
    }
}

/// The actor of a login attempt: the name given, when it is one a user could have (a name
/// that cannot exist is not copied into the audit trail).
pub(crate) fn login_actor(name: &str) -> &str {
    if users::valid_name(name) {
        name
    } else {
        "(invalid user name)"
    }
}

impl Api {
    /// Check password, account state and TOTP of a login attempt. Consumes the TOTP step on
    /// success, so a code is accepted once.
    fn check_login(
        &self,
        record: Option<UserRecord>,
        password_ok: bool,
        totp: Option<&str>,
    ) -> Result<UserRecord, LoginFailure> {
        let u = match record {
            Some(u) if password_ok => u,
            _ => return Err(LoginFailure::BadCredentials),
        };
        if u.disabled {
            return Err(LoginFailure::Disabled);
        }
        let role = Role::parse(&u.role).ok_or(LoginFailure::AccountInvalid)?;
        match &u.totp_secret {
            Some(secret) => {
                let code = totp.ok_or(LoginFailure::MfaMissing)?;
                let step =
                    auth::check_totp(secret, code, unix_secs()).ok_or(LoginFailure::MfaWrong)?;
                // The map stays consistent whatever panicked while holding it.
                let mut steps = self
                    .totp_steps
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if steps.get(&u.id).is_some_and(|last| *last >= step) {
                    return Err(LoginFailure::MfaReplayed); // a code is good once
                }
                steps.insert(u.id, step);
            }
            None if role.requires_mfa() => return Err(LoginFailure::MfaNotEnrolled),
            None => {}
        }
        Ok(u)
    }

    /// Record a failed login: audit (never the password) and the failed-login alert signal.
    pub(crate) fn login_failed(
        &self,
        user: &str,
        conn: Option<&ConnectionInfo>,
        reason: &str,
        extra: impl FnOnce(AuditEvent) -> AuditEvent,
    ) {
        self.ctx.alerts.failed_login();
        let actor = login_actor(user);
        self.audit(extra(
            audit_event(AuditAction::LoginFailed, actor, conn)
                .target(format!("user/{actor}"))
                .failure()
                .detail("reason", reason),
        ));
    }
}

async fn login(
    State(api): State<Arc<Api>>,
    conn: Option<Extension<ConnectionInfo>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let conn = conn.as_deref();
    let LoginRequest {
        user,
        password,
        totp,
    } = read_json(&headers, body).await?;
    if let Some(wait) = api.lockout.locked_for(&user, Instant::now()) {
        tracing::warn!(user = %user, "admin login refused: locked after repeated failures");
        api.login_failed(&user, conn, "locked", |e| {
            e.detail("retry_after_s", wait.as_secs())
        });
        return Ok(too_many_attempts(
            "too many failed logins; try again later",
            wait,
        ));
    }
    let accounts = api.ctx.accounts.clone();
    let name = user.clone();
    let (record, password_ok) = blocking(move || {
        let record = accounts.user_by_name(&name)?;
        let ok =
            auth::verify_password(&password, record.as_ref().map(|u| u.password_hash.as_str()));
        Ok((record, ok))
    })
    .await?;
    let record = match api.check_login(record, password_ok, totp.as_deref()) {
        Ok(record) => record,
        Err(failure) => {
            let locked = api.lockout.failure(&user, Instant::now());
            tracing::warn!(user = %user, "admin login failed");
            api.login_failed(&user, conn, failure.reason(), |mut e| {
                if let Some(mfa) = failure.mfa() {
                    e = e.detail("mfa", mfa);
                }
                if locked {
                    e = e.detail("lockout", "engaged");
                }
                e
            });
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid credentials",
            ));
        }
    };
    api.lockout.success(&user);
    let accounts = api.ctx.accounts.clone();
    let policy = api.ctx.sessions;
    let previous = session_cookie(&headers).map(str::to_owned);
    let rec = record.clone();
    let session = blocking(move || {
        sessions::start(&accounts, policy, &rec, previous.as_deref()).map_err(ApiError::internal)
    })
    .await?;
    tracing::info!(user = %record.name, role = %record.role, "admin login");
    api.audit(
        audit_event(AuditAction::Login, &record.name, conn)
            .target(format!("user/{}", record.name))
            .detail("role", record.role.clone())
            .detail("mfa", record.totp_secret.is_some()),
    );
    let mut cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        session.id,
        policy.absolute.as_secs()
    );
    if api.ctx.tls {
        cookie.push_str("; Secure");
    }
    let mut response = json_response(
        StatusCode::OK,
        &json!({
            "user": record.name,
            "role": record.role,
            "channels": ChannelScope::from_stored(record.channels.clone()).to_json(),
            "session": session.id,
            "csrf": session.csrf,
            "expires_at_ms": session.expires_at_ms,
        }),
    );
    let value = HeaderValue::from_str(&cookie).map_err(ApiError::internal)?;
    response.headers_mut().insert(header::SET_COOKIE, value);
    Ok(response)
}

async fn whoami(Extension(p): Extension<Principal>) -> Response {
    let via = match p.credential {
        Credential::Session { .. } => "session",
        Credential::Token { .. } => "token",
    };
    json_response(
        StatusCode::OK,
        &json!({
            "user": p.name,
            "role": p.role.as_str(),
            "channels": p.scope.to_json(),
            "auth": via,
        }),
    )
}

async fn logout(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    conn: Option<Extension<ConnectionInfo>>,
) -> Result<Response, ApiError> {
    let Credential::Session { id, .. } = p.credential else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "an API token has no session; revoke the token instead",
        ));
    };
    let accounts = api.ctx.accounts.clone();
    blocking(move || Ok(sessions::end(&accounts, &id)?)).await?;
    tracing::info!(user = %p.name, "admin logout");
    api.audit(
        audit_event(AuditAction::Logout, &p.name, conn.as_deref())
            .target(format!("user/{}", p.name)),
    );
    let mut r = StatusCode::NO_CONTENT.into_response();
    let mut clear = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if api.ctx.tls {
        clear.push_str("; Secure");
    }
    let value = HeaderValue::from_str(&clear).map_err(ApiError::internal)?;
    r.headers_mut().insert(header::SET_COOKIE, value);
    Ok(r)
}

/// A scoped caller sees and changes only the accounts whose own scope lies within its own
/// (so it learns no channel name outside it, and cannot touch broader accounts).
fn within(p: &Principal, channels: Option<Vec<String>>) -> Option<ChannelScope> {
    let scope = ChannelScope::from_stored(channels);
    p.scope.covers(&scope).then_some(scope)
}

async fn list_users(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
) -> Result<Response, ApiError> {
    let accounts = api.ctx.accounts.clone();
    let users = blocking(move || Ok(accounts.users()?)).await?;
    let list: Vec<Value> = users
        .into_iter()
        .filter_map(|u| {
            let scope = within(&p, u.channels)?;
            Some(json!({
                "name": u.name,
                "role": u.role,
                "mfa": u.totp_secret.is_some(),
                "disabled": u.disabled,
                "created_at_ms": u.created_at_ms,
                "channels": scope.to_json(),
            }))
        })
        .collect();
    Ok(json_response(StatusCode::OK, &Value::Array(list)))
}

/// `POST /api/v1/users` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUserRequest {
    name: String,
    role: String,
    password: String,
    /// Limit the user to these channels (absent: every channel).
    #[serde(default)]
    channels: Option<Vec<String>>,
}

/// The scope a create request asks for, checked against the caller's own: `Err` is the
/// answer and the audit `error` detail.
fn requested_scope(
    p: &Principal,
    channels: Option<Vec<String>>,
) -> Result<ChannelScope, (ApiError, &'static str)> {
    let scope = ChannelScope::requested(channels).map_err(|e| {
        let error = match e {
            ScopeError::Empty => "empty_scope",
            ScopeError::BadName(_) => "bad_channel",
            ScopeError::TooMany => "scope_too_large",
        };
        (ApiError::new(StatusCode::BAD_REQUEST, e.to_string()), error)
    })?;
    if !p.scope.covers(&scope) {
        // The same answer whether or not the channels beyond the scope exist.
        return Err((
            ApiError::new(
                StatusCode::FORBIDDEN,
                "the channels asked for reach beyond your own scope (name channels within it)",
            ),
            "beyond_scope",
        ));
    }
    Ok(scope)
}

async fn create_user(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    conn: Option<Extension<ConnectionInfo>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: CreateUserRequest = read_json(&headers, body).await?;
    // Every understood attempt is audited, refused ones with the reason; the target is the
    // name only when it is a valid one.
    let target = format!("user/{}", login_actor(&req.name));
    let event = audit_event(AuditAction::UserChange, &p.name, conn.as_deref())
        .target(target)
        .detail("kind", "user")
        .detail("change", "created")
        .detail("role", req.role.clone());
    let Some(role) = Role::parse(&req.role) else {
        api.audit(event.failure().detail("error", "unknown_role"));
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "unknown role"));
    };
    let scope = match requested_scope(&p, req.channels.clone()) {
        Ok(scope) => scope,
        Err((answer, error)) => {
            api.audit(event.failure().detail("error", error));
            return Err(answer);
        }
    };
    let event = event.detail("channels", scope.to_json());
    let accounts = api.ctx.accounts.clone();
    let result = blocking(move || {
        Ok(users::create_scoped_user(
            &accounts,
            &req.name,
            role,
            &req.password,
            &scope,
            now_ms(),
        ))
    })
    .await?;
    let created = match result {
        Ok(created) => created,
        Err(e) => {
            let (status, error) = match e {
                UserError::BadName => (StatusCode::BAD_REQUEST, "bad_name"),
                UserError::BadPassword => (StatusCode::BAD_REQUEST, "bad_password"),
                UserError::Exists => (StatusCode::CONFLICT, "exists"),
                e => {
                    api.audit(event.failure().detail("error", "internal"));
                    return Err(ApiError::internal(e));
                }
            };
            api.audit(event.failure().detail("error", error));
            return Err(ApiError::new(status, e.to_string()));
        }
    };
    tracing::info!(by = %p.name, user = %created.name, role = created.role.as_str(), channels = %created.scope.describe(), "admin user created");
    api.audit(event.detail("mfa", created.totp_secret.is_some()));
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "name": created.name,
            "role": created.role.as_str(),
            "channels": created.scope.to_json(),
            "totp_secret": created.totp_secret,
            "otpauth_uri": created.otpauth_uri,
        }),
    ))
}

async fn disable_user(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    conn: Option<Extension<ConnectionInfo>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let accounts = api.ctx.accounts.clone();
    let n = name.clone();
    let event = audit_event(AuditAction::UserChange, &p.name, conn.as_deref())
        .target(format!("user/{}", login_actor(&name)))
        .detail("kind", "user")
        .detail("change", "disabled");
    let scope = p.scope.clone();
    let outcome = blocking(move || {
        // A scoped caller may disable only users within its scope; others look unknown.
        if !scope.is_all() {
            let user = accounts.user_by_name(&n)?;
            if !user.is_some_and(|u| scope.covers(&ChannelScope::from_stored(u.channels))) {
                return Ok(Err("not_found_in_scope"));
            }
        }
        Ok(if accounts.disable_user(&n)? {
            Ok(())
        } else {
            Err("not_found")
        })
    })
    .await?;
    if let Err(error) = outcome {
        api.audit(event.failure().detail("error", error));
        return Err(ApiError::not_found());
    }
    tracing::info!(by = %p.name, user = %name, "admin user disabled, sessions ended");
    api.audit(event);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_tokens(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
) -> Result<Response, ApiError> {
    let accounts = api.ctx.accounts.clone();
    let tokens = blocking(move || Ok(accounts.tokens()?)).await?;
    let list: Vec<Value> = tokens
        .into_iter()
        .filter_map(|t| {
            let scope = within(&p, t.channels)?;
            Some(json!({
                "id": t.id,
                "name": t.name,
                "role": t.role,
                "created_by": t.created_by,
                "created_at_ms": t.created_at_ms,
                "revoked_at_ms": t.revoked_at_ms,
                "channels": scope.to_json(),
            }))
        })
        .collect();
    Ok(json_response(StatusCode::OK, &Value::Array(list)))
}

/// `POST /api/v1/tokens` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTokenRequest {
    name: String,
    role: String,
    /// Limit the token to these channels (absent: every channel).
    #[serde(default)]
    channels: Option<Vec<String>>,
}

async fn create_token(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    conn: Option<Extension<ConnectionInfo>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: CreateTokenRequest = read_json(&headers, body).await?;
    let event = audit_event(AuditAction::UserChange, &p.name, conn.as_deref())
        .detail("kind", "token")
        .detail("change", "created")
        .detail("role", req.role.clone());
    let Some(role) = Role::parse(&req.role) else {
        api.audit(event.failure().detail("error", "unknown_role"));
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "unknown role"));
    };
    if req.name.is_empty() || req.name.len() > 128 || req.name.chars().any(char::is_control) {
        api.audit(event.failure().detail("error", "bad_name"));
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a token name is 1 to 128 printable characters",
        ));
    }
    // Never broader than the caller: a scoped admin cannot mint its way out of its scope.
    let scope = match requested_scope(&p, req.channels.clone()) {
        Ok(scope) => scope,
        Err((answer, error)) => {
            api.audit(event.failure().detail("error", error));
            return Err(answer);
        }
    };
    let event = event.detail("channels", scope.to_json());
    let token = format!(
        "{TOKEN_PREFIX}{}",
        auth::random_secret().map_err(ApiError::internal)?
    );
    let accounts = api.ctx.accounts.clone();
    let hash = auth::secret_hash(&token);
    let (name, by) = (req.name.clone(), p.name.clone());
    let channels = scope.to_stored();
    let id = blocking(move || {
        Ok(accounts.create_scoped_token(
            &name,
            role.as_str(),
            &hash,
            &by,
            now_ms(),
            channels.as_deref(),
        )?)
    })
    .await?;
    tracing::info!(by = %p.name, id, role = role.as_str(), channels = %scope.describe(), "admin API token created");
    // The token's name (never its value): it is the actor of what the token does.
    api.audit(
        event
            .target(format!("token/{id}"))
            .detail("name", req.name.clone()),
    );
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "id": id,
            "name": req.name,
            "role": role.as_str(),
            "channels": scope.to_json(),
            "token": token,
        }),
    ))
}

async fn revoke_token(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    conn: Option<Extension<ConnectionInfo>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::not_found())?;
    let accounts = api.ctx.accounts.clone();
    let event = audit_event(AuditAction::UserChange, &p.name, conn.as_deref())
        .target(format!("token/{id}"))
        .detail("kind", "token")
        .detail("change", "revoked");
    let scope = p.scope.clone();
    let outcome = blocking(move || {
        // A scoped caller may revoke only tokens within its scope; others look unknown.
        if !scope.is_all() {
            let token = accounts.token(id)?;
            if !token.is_some_and(|t| scope.covers(&ChannelScope::from_stored(t.channels))) {
                return Ok(Err("not_found_in_scope"));
            }
        }
        Ok(if accounts.revoke_token(id, now_ms())? {
            Ok(())
        } else {
            Err("not_found")
        })
    })
    .await?;
    if let Err(error) = outcome {
        api.audit(event.failure().detail("error", error));
        return Err(ApiError::not_found());
    }
    tracing::info!(by = %p.name, id, "admin API token revoked");
    api.audit(event);
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn channel_summary(c: &ferry_engine::ChannelStats) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    json!({
        "name": c.name,
        "state": c.state().as_str(),
        "deployed": c.deployed.load(Relaxed),
        "received": c.received.load(Relaxed),
        "filtered": c.filtered.load(Relaxed),
        "errored": c.errored.load(Relaxed),
        "failed": c.failed.load(Relaxed),
        "duplicates": c.duplicates.load(Relaxed),
    })
}

async fn list_channels(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
) -> Response {
    let list: Vec<Value> = api
        .ctx
        .stats
        .channels()
        .iter()
        .filter(|c| p.scope.allows(&c.name))
        .map(|c| channel_summary(c))
        .collect();
    json_response(StatusCode::OK, &Value::Array(list))
}

async fn channel_stats(
    State(api): State<Arc<Api>>,
    Path(channel): Path<String>,
) -> Result<Response, ApiError> {
    use std::sync::atomic::Ordering::Relaxed;
    let c = api
        .ctx
        .stats
        .channel(&channel)
        .ok_or_else(ApiError::not_found)?;
    let mut v = channel_summary(&c);
    let destinations: Vec<Value> = c
        .destinations
        .iter()
        .map(|(name, d)| {
            json!({
                "name": name,
                "sent": d.sent.load(Relaxed),
                "errored": d.errored.load(Relaxed),
                "retries": d.retries.load(Relaxed),
                "queue_depth": d.queue_depth.load(Relaxed),
                "filtered": d.filtered.load(Relaxed),
            })
        })
        .collect();
    if let Some(o) = v.as_object_mut() {
        o.insert("destinations".into(), Value::Array(destinations));
    }
    Ok(json_response(StatusCode::OK, &v))
}

async fn get_message(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    conn: Option<Extension<ConnectionInfo>>,
    Path((channel, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let stats = api
        .ctx
        .stats
        .channel(&channel)
        .ok_or_else(ApiError::not_found)?;
    let id: i64 = id.parse().map_err(|_| ApiError::not_found())?;
    let store = &api.ctx.store;
    let mut connectors = Vec::new();
    let names = std::iter::once(SOURCE).chain(stats.destinations.iter().map(|(n, _)| n.as_str()));
    for name in names {
        if let Some(r) = store.connector(&channel, id, name).await? {
            connectors.push(json!({
                "name": name,
                "status": r.status.as_str(),
                "attempts": r.attempts,
                "error": r.error,
                "updated_at_ms": r.updated_at_ms,
            }));
        }
    }
    if connectors.is_empty() {
        return Err(ApiError::not_found());
    }
    let raw = store
        .content(&channel, id, SOURCE, ContentStage::Raw)
        .await?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    tracing::info!(by = %p.name, channel = %channel, id, "message viewed (PHI access)");
    api.audit(
        audit_event(AuditAction::MessageView, &p.name, conn.as_deref())
            .target(format!("channel/{channel}/message/{id}"))
            .detail("stage", "raw"),
    );
    Ok(json_response(
        StatusCode::OK,
        &json!({ "channel": channel, "id": id, "connectors": connectors, "raw": raw }),
    ))
}

/// `POST …/reprocess` body (optional).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReprocessRequest {
    #[serde(default)]
    destinations: Option<Vec<String>>,
}

async fn reprocess(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    conn: Option<Extension<ConnectionInfo>>,
    Path((channel, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ingest = api
        .ctx
        .engine
        .ingest(&channel)
        .ok_or_else(ApiError::not_found)?;
    let id: i64 = id.parse().map_err(|_| ApiError::not_found())?;
    let req: ReprocessRequest = if headers.contains_key(header::CONTENT_TYPE) {
        read_json(&headers, body).await?
    } else {
        ReprocessRequest::default()
    };
    let reply = match ingest.reprocess(id, req.destinations.as_deref()).await {
        Ok(reply) => reply,
        Err(ReprocessError::UnknownMessage(_)) => return Err(ApiError::not_found()),
        Err(e @ ReprocessError::UnknownDestination(_)) => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, e.to_string()));
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    tracing::info!(by = %p.name, channel = %channel, id, new = ?reply.message_id, "message reprocessed (PHI access)");
    let mut event = audit_event(AuditAction::Reprocess, &p.name, conn.as_deref())
        .target(format!("channel/{channel}/message/{id}"))
        .detail("new_message_id", reply.message_id);
    if let Some(only) = &req.destinations {
        event = event.detail("destinations", only.clone());
    }
    api.audit(event);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "original": id,
            "message_id": reply.message_id,
            "ack_code": reply.code.as_str(),
        }),
    ))
}

async fn openapi(State(api): State<Arc<Api>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        api.openapi.clone(),
    )
        .into_response()
}
