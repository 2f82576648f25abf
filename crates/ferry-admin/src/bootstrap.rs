//! The one-time bootstrap token (PRODUCT.md §8: "the first admin is created by `ferry user
//! add` or a one-time bootstrap token").
//!
//! When `ferry run` starts on a store without users, [`issue`] makes a random 256-bit token,
//! stores only its SHA-256 with an expiry ([`TOKEN_LIFETIME`]) and hands it back to be printed
//! once. A later start with still no users issues a new one (the old one dies); a start with
//! users removes any token left.
//!
//! `POST /api/v1/bootstrap` (public: the token is the credential) with
//! `{"token", "name", "password"}` creates the first admin and answers, like `ferry user add`,
//! with the TOTP secret and `otpauth://` URI, shown once. The store checks the token, inserts
//! the user and deletes the token in one transaction, so the token works once; it is also
//! dead as soon as any user exists, however that user was made.
//!
//! A wrong, expired or used token is `401`, whatever the reason (the reason goes to the audit
//! trail as a `login_failed` record, target `bootstrap`, and to the failed-login alerts).
//! Failures count against one lockout with the login's policy: after `lockout_threshold`
//! failures the route answers `429` with `Retry-After`, doubling up to `lockout_max`. The
//! hashes are compared in constant time. A name or password that would be refused is `400`
//! only once the token was found right, so they say nothing to someone without it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use ferry_connectors::http::ConnectionInfo;
use ferry_store::{Accounts, AuditAction, BootstrapRefusal, NewUser, StoreError};
use serde::Deserialize;
use serde_json::json;

use crate::api::{Api, ApiError, audit_event, blocking, json_response, login_actor, read_json};
use crate::auth::{self, CredentialError};
use crate::policy::Role;
use crate::users::{self, UserError, now_ms};

/// Prefix of bootstrap tokens (API tokens have `ferry_t_`).
pub const TOKEN_PREFIX: &str = "ferry_b_";
/// How long a bootstrap token works after `ferry run` printed it.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The lockout key every bootstrap attempt counts under.
const LOCKOUT_KEY: &str = "bootstrap";

/// A bootstrap token just issued: print it once, keep it nowhere.
pub struct IssuedToken {
    /// The token (`ferry_b_` + 64 hex digits).
    pub token: String,
    /// When it stops working, Unix milliseconds.
    pub expires_at_ms: i64,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// Why a bootstrap token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// No randomness.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// At start: when the store has no user, issue a new bootstrap token (replacing any earlier
/// one) and return it; when it has users, remove any token left and return `None`. Blocking.
pub fn issue(accounts: &Accounts, now_ms: i64) -> Result<Option<IssuedToken>, IssueError> {
    let token = format!("{TOKEN_PREFIX}{}", auth::random_secret()?);
    let lifetime = i64::try_from(TOKEN_LIFETIME.as_millis()).unwrap_or(i64::MAX);
    let expires_at_ms = now_ms.saturating_add(lifetime);
    let stored = accounts.set_bootstrap_token(&auth::secret_hash(&token), now_ms, expires_at_ms)?;
    Ok(stored.then_some(IssuedToken {
        token,
        expires_at_ms,
    }))
}

/// `POST /api/v1/bootstrap` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BootstrapRequest {
    token: String,
    name: String,
    password: String,
}

/// What the blocking part of a bootstrap found.
enum Outcome {
    Created(users::CreatedUser),
    Refused(BootstrapRefusal),
    Invalid(UserError),
}

fn invalid_token() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid bootstrap token")
}

/// Check the token against the pending one (constant time, before any argon2 work), then
/// make the admin's credentials and let the store create the user and consume the token in
/// one transaction (which checks everything again: two racing requests create one user).
fn run(accounts: &Accounts, req: &BootstrapRequest) -> Result<Outcome, ApiError> {
    let presented = auth::secret_hash(&req.token);
    let matches = |stored: &[u8]| auth::hashes_equal(&presented, stored);
    let now = now_ms();
    let Some(pending) = accounts.bootstrap_token()? else {
        return Ok(Outcome::Refused(BootstrapRefusal::NoToken));
    };
    if !matches(&pending.token_hash) {
        return Ok(Outcome::Refused(BootstrapRefusal::WrongToken));
    }
    if now >= pending.expires_at_ms {
        return Ok(Outcome::Refused(BootstrapRefusal::Expired));
    }
    let role = Role::Admin;
    let made = match users::credentials(&req.name, role, &req.password) {
        Ok(made) => made,
        Err(e @ (UserError::BadName | UserError::BadPassword)) => return Ok(Outcome::Invalid(e)),
        Err(e) => return Err(ApiError::internal(e)),
    };
    let created = accounts.bootstrap_user(
        &NewUser {
            name: &req.name,
            role: role.as_str(),
            password_hash: &made.password_hash,
            totp_secret: made.totp_secret.as_deref(),
            created_at_ms: now,
            channels: None,
        },
        now,
        matches,
    )?;
    Ok(match created {
        Ok(_) => Outcome::Created(users::CreatedUser {
            name: req.name.clone(),
            role,
            totp_secret: made.totp_secret,
            otpauth_uri: made.otpauth_uri,
            scope: crate::scope::ChannelScope::All,
        }),
        Err(refusal) => Outcome::Refused(refusal),
    })
}

pub(crate) async fn bootstrap(
    State(api): State<Arc<Api>>,
    conn: Option<Extension<ConnectionInfo>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let conn = conn.as_deref();
    let req: BootstrapRequest = read_json(&headers, body).await?;
    let actor = login_actor(&req.name).to_owned();
    if let Some(wait) = api
        .bootstrap_lockout
        .locked_for(LOCKOUT_KEY, Instant::now())
    {
        tracing::warn!("admin bootstrap refused: locked after repeated failures");
        api.login_failed(&req.name, conn, "locked", |e| {
            e.target("bootstrap")
                .detail("bootstrap", true)
                .detail("retry_after_s", wait.as_secs())
        });
        return Ok(crate::api::too_many_attempts(
            "too many failed attempts; try again later",
            wait,
        ));
    }
    let accounts = api.ctx.accounts.clone();
    let (outcome, req) = blocking(move || Ok((run(&accounts, &req)?, req))).await?;
    let event = audit_event(AuditAction::UserChange, &actor, conn)
        .target(format!("user/{actor}"))
        .detail("kind", "user")
        .detail("change", "created")
        .detail("role", Role::Admin.as_str())
        .detail("channels", serde_json::Value::Null)
        .detail("bootstrap", true);
    match outcome {
        Outcome::Created(created) => {
            api.bootstrap_lockout.success(LOCKOUT_KEY);
            tracing::info!(user = %created.name, "first admin created with the bootstrap token");
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
        Outcome::Invalid(e) => {
            let error = match e {
                UserError::BadName => "bad_name",
                _ => "bad_password",
            };
            api.audit(event.failure().detail("error", error));
            Err(ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
        }
        Outcome::Refused(refusal) => {
            let locked = api.bootstrap_lockout.failure(LOCKOUT_KEY, Instant::now());
            tracing::warn!(reason = refusal.as_str(), "admin bootstrap refused");
            api.login_failed(&req.name, conn, "bootstrap_token", |mut e| {
                e = e.target("bootstrap").detail("bootstrap", refusal.as_str());
                if locked {
                    e = e.detail("lockout", "engaged");
                }
                e
            });
            Err(invalid_token())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_issued_only_while_there_is_no_user_and_its_value_is_not_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ferry.db");
        let accounts = Accounts::open(&path).expect("accounts");
        issue_and_use(&accounts, |token| {
            let bytes = std::fs::read(&path).expect("file");
            let wal = std::fs::read(dir.path().join("ferry.db-wal")).unwrap_or_default();
            for b in [bytes, wal] {
                assert!(!b.windows(20).any(|w| w == &token.as_bytes()[8..28]));
            }
        });
    }

    #[test]
    fn a_token_is_issued_only_while_there_is_no_user_and_its_value_is_not_stored_on_postgres() {
        let db = ferry_testkit::postgres::TestDb::new();
        let pg = ferry_store::postgres::PgOptions {
            url: db.url().to_owned(),
            tls: None,
        };
        let accounts = Accounts::open_postgres(pg, Default::default()).expect("accounts");
        issue_and_use(&accounts, |token| {
            // The only row is the hash; no column of it holds the token.
            let row = db
                .client()
                .query_one(
                    "SELECT count(*), bool_or(position($1 in encode(token_hash, 'escape')) > 0)
                     FROM admin_bootstrap",
                    &[&&token[8..28]],
                )
                .expect("raw");
            assert_eq!(row.get::<_, i64>(0), 1);
            assert_eq!(row.get::<_, Option<bool>>(1), Some(false));
        });
    }

    /// `not_stored` checks, backend by backend, that the token's value is nowhere stored.
    fn issue_and_use(accounts: &Accounts, not_stored: impl FnOnce(&str)) {
        let first = issue(accounts, 1_000)
            .expect("issue")
            .expect("no users yet");
        assert!(first.token.starts_with(TOKEN_PREFIX));
        assert_eq!(first.token.len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(first.expires_at_ms, 1_000 + 3_600_000);
        assert!(!format!("{first:?}").contains(&first.token));
        let pending = accounts.bootstrap_token().expect("read").expect("pending");
        assert_eq!(pending.token_hash, auth::secret_hash(&first.token));
        not_stored(&first.token);
        // A second start with still no users replaces it (the requests below run at the
        // real time, so it is issued now).
        let second = issue(accounts, now_ms())
            .expect("issue")
            .expect("still none");
        assert_ne!(second.token, first.token);
        let req = |token: &str| BootstrapRequest {
            token: token.to_owned(),
            name: "root".into(),
            password: "correct horse battery".into(),
        };
        assert!(matches!(
            run(accounts, &req(&first.token)).expect("run"),
            Outcome::Refused(BootstrapRefusal::WrongToken)
        ));
        // An expired token is refused, and a right one issued now works.
        let lifetime = i64::try_from(TOKEN_LIFETIME.as_millis()).expect("ms");
        let old = issue(accounts, now_ms() - lifetime - 1)
            .expect("issue")
            .expect("none");
        assert!(matches!(
            run(accounts, &req(&old.token)).expect("run"),
            Outcome::Refused(BootstrapRefusal::Expired)
        ));
        let second = issue(accounts, now_ms())
            .expect("issue")
            .expect("still none");
        let short = BootstrapRequest {
            password: "short".into(),
            ..req(&second.token)
        };
        assert!(matches!(
            run(accounts, &short).expect("run"),
            Outcome::Invalid(UserError::BadPassword)
        ));
        let Outcome::Created(created) = run(accounts, &req(&second.token)).expect("run") else {
            panic!("the right token creates the admin");
        };
        assert_eq!(created.role, Role::Admin);
        assert!(created.totp_secret.is_some(), "admins get MFA");
        assert!(matches!(
            run(accounts, &req(&second.token)).expect("run"),
            Outcome::Refused(BootstrapRefusal::NoToken)
        ));
        assert!(
            issue(accounts, 3_000).expect("issue").is_none(),
            "users exist"
        );
    }
}
