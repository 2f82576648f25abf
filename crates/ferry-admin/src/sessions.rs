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

/// Why a session that was presented no longer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// No authenticated request for longer than the idle timeout.
    Idle,
    /// Older than the absolute timeout.
    Absolute,
    /// Its user was disabled.
    UserDisabled,
}

impl SessionEnd {
    /// The name recorded in the audit trail: `idle`, `absolute`, `user_disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEnd::Idle => "idle",
            SessionEnd::Absolute => "absolute",
            SessionEnd::UserDisabled => "user_disabled",
        }
    }
}

/// What [`validate`] found for a session id.
#[derive(Debug)]
pub enum SessionCheck {
    /// A live session (its activity recorded) and its user.
    Valid(SessionRecord, UserRecord),
    /// The session existed but had ended; this call deleted it, so a session's end is
    /// reported once (a later request with the same id finds [`SessionCheck::Unknown`]).
    Ended {
        /// Whose session it was.
        user: UserRecord,
        /// Why it ended.
        reason: SessionEnd,
    },
    /// No such session (never issued, logged out, or already found ended).
    Unknown,
}

/// Look a session id up; expired sessions and sessions of disabled users are deleted and
/// reported as [`SessionCheck::Ended`]. Records activity. Blocking.
pub fn validate(
    accounts: &Accounts,
    policy: SessionPolicy,
    id: &str,
) -> Result<SessionCheck, StoreError> {
    let hash = auth::secret_hash(id);
    let Some((session, user)) = accounts.session(&hash)? else {
        return Ok(SessionCheck::Unknown);
    };
    let now = now_ms();
    let idle_for = now.saturating_sub(session.last_seen_ms);
    let age = now.saturating_sub(session.created_at_ms);
    let ended = if user.disabled {
        Some(SessionEnd::UserDisabled)
    } else if age > ms(policy.absolute) {
        Some(SessionEnd::Absolute)
    } else if idle_for > ms(policy.idle) {
        Some(SessionEnd::Idle)
    } else {
        None
    };
    if let Some(reason) = ended {
        // Two requests racing with the same ended session: only the one that deleted it
        // reports the end.
        return Ok(if accounts.delete_session(&hash)? {
            SessionCheck::Ended { user, reason }
        } else {
            SessionCheck::Unknown
        });
    }
    // Record activity, but not on every request: a tenth of the idle timeout (at most 30 s)
    // of imprecision saves a write per request.
    if idle_for >= (ms(policy.idle) / 10).min(30_000) {
        accounts.touch_session(&hash, now)?;
    }
    Ok(SessionCheck::Valid(session, user))
}

/// Delete a session (logout). Blocking.
pub fn end(accounts: &Accounts, id: &str) -> Result<bool, StoreError> {
    accounts.delete_session(&auth::secret_hash(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_store::NewUser;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A user and a session of it created `age_ms` ago and last seen `idle_ms` ago.
    fn session(accounts: &Accounts, name: &str, age_ms: i64, idle_ms: i64) -> String {
        let now = now_ms();
        let user_id = accounts
            .create_user(&NewUser {
                name,
                role: "viewer",
                password_hash: "unused",
                totp_secret: None,
                created_at_ms: now,
                channels: None,
            })
            .expect("create user")
            .expect("new name");
        let id = auth::random_secret().expect("id");
        accounts
            .create_session(
                &SessionRecord {
                    id_hash: auth::secret_hash(&id),
                    user_id,
                    csrf_hash: auth::secret_hash("csrf"),
                    created_at_ms: now - age_ms,
                    last_seen_ms: now - idle_ms,
                },
                None,
            )
            .expect("create session");
        id
    }

    #[test]
    fn an_ended_session_is_reported_once_with_its_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        ended_sessions(&Accounts::open(&dir.path().join("a.db")).expect("accounts"));
    }

    #[test]
    fn an_ended_session_is_reported_once_with_its_reason_on_postgres() {
        let db = ferry_testkit::postgres::TestDb::new();
        let pg = ferry_store::postgres::PgOptions {
            url: db.url().to_owned(),
            tls: None,
        };
        ended_sessions(&Accounts::open_postgres(pg, Default::default()).expect("accounts"));
    }

    fn ended_sessions(accounts: &Accounts) {
        let policy = SessionPolicy {
            idle: HOUR,
            absolute: 8 * HOUR,
        };
        let live = session(accounts, "live", 60_000, 1_000);
        let idle = session(accounts, "idle", 2 * 3_600_000, 3_600_001);
        let old = session(accounts, "old", 8 * 3_600_000 + 1, 1_000);
        let check = |id: &str| validate(accounts, policy, id).expect("validate");
        assert!(matches!(check(&live), SessionCheck::Valid(_, u) if u.name == "live"));
        assert!(matches!(
            check(&idle),
            SessionCheck::Ended { user, reason: SessionEnd::Idle } if user.name == "idle"
        ));
        assert!(matches!(
            check(&old),
            SessionCheck::Ended {
                reason: SessionEnd::Absolute,
                ..
            }
        ));
        assert!(
            matches!(check(&idle), SessionCheck::Unknown),
            "the end is reported once: the first check deleted the session"
        );
        assert!(matches!(check("never issued"), SessionCheck::Unknown));
        assert!(accounts.disable_user("live").expect("disable"));
        assert!(
            !matches!(check(&live), SessionCheck::Valid(..)),
            "a disabled user's session is dead"
        );
    }
}
