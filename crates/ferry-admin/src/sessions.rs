//! Server-side sessions: opaque 256-bit ids (only their SHA-256 is stored), idle and absolute
//! expiry, rotation on login, deletion on logout and when the user is disabled.

use std::time::Duration;

use ferry_store::{Accounts, SessionRecord, StoreError, UserRecord};

use crate::auth::{self, CredentialError};
use crate::users::now_ms;

/// Session lifetimes.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    /// Ends after this long without an authenticated request.
    pub idle: Duration,
    /// Ends this long after login.
    pub absolute: Duration,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A session just created: the secrets go to the client once and are then only hashes.
#[derive(Debug)]
pub struct NewSession {
    /// The session id (cookie value or bearer token).
    pub id: String,
    /// The CSRF token cookie-authenticated unsafe requests must echo in `X-Ferry-CSRF`.
    pub csrf: String,
    /// When the session ends at the latest, Unix milliseconds.
    pub expires_at_ms: i64,
}

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Randomness failed.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Start a session for `user`, deleting the session the login came with (`previous`, a
/// session id), if any. Blocking.
pub fn start(
    accounts: &Accounts,
    policy: SessionPolicy,
    user: &UserRecord,
    previous: Option<&str>,
) -> Result<NewSession, SessionError> {
    let id = auth::random_secret()?;
    let csrf = auth::random_secret()?;
    let now = now_ms();
    let old = previous.map(auth::secret_hash);
    accounts.create_session(
        &SessionRecord {
            id_hash: auth::secret_hash(&id),
            user_id: user.id,
            csrf_hash: auth::secret_hash(&csrf),
            created_at_ms: now,
            last_seen_ms: now,
        },
        old.as_deref(),
    )?;
    Ok(NewSession {
        id,
        csrf,
        expires_at_ms: now.saturating_add(ms(policy.absolute)),
    })
}

/// Look a session id up; expired sessions and sessions of disabled users are deleted and
/// count as absent. Records activity. Blocking.
pub fn validate(
    accounts: &Accounts,
    policy: SessionPolicy,
    id: &str,
) -> Result<Option<(SessionRecord, UserRecord)>, StoreError> {
    let hash = auth::secret_hash(id);
    let Some((session, user)) = accounts.session(&hash)? else {
        return Ok(None);
    };
    let now = now_ms();
    let idle_for = now.saturating_sub(session.last_seen_ms);
    let age = now.saturating_sub(session.created_at_ms);
    if user.disabled || idle_for > ms(policy.idle) || age > ms(policy.absolute) {
        accounts.delete_session(&hash)?;
        return Ok(None);
    }
    // Record activity, but not on every request: a tenth of the idle timeout (at most 30 s)
    // of imprecision saves a write per request.
    if idle_for >= (ms(policy.idle) / 10).min(30_000) {
        accounts.touch_session(&hash, now)?;
    }
    Ok(Some((session, user)))
}

/// Delete a session (logout). Blocking.
pub fn end(accounts: &Accounts, id: &str) -> Result<bool, StoreError> {
    accounts.delete_session(&auth::secret_hash(id))
}
