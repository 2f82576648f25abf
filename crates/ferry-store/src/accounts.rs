//! Admin accounts: users, sessions and API tokens of the admin REST API.
//!
//! The tables are created with `CREATE TABLE IF NOT EXISTS` whenever the store (or an
//! [`Accounts`] handle) opens, outside the numbered message schema, so they need no schema
//! version of their own.
//!
//! **Writes.** Account writes are rare (a login, a logout, a user created), and unlike message
//! writes they are not on an acknowledgement path, so they do not go through the group-committing
//! writer thread. [`Accounts`] owns one dedicated connection behind a mutex; its transactions are
//! short `BEGIN IMMEDIATE … COMMIT`s, and SQLite's write lock (with the 10 s busy timeout every
//! store connection has) serialises them with the message writer.
//!
//! The store only keeps what it is given: password hashes, SHA-256 hashes of session ids and
//! tokens. Hashing and role names belong to the admin crate.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use crate::StoreError;

const ACCOUNTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS admin_users (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    totp_secret   TEXT,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS admin_sessions (
    id_hash       BLOB PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES admin_users (id) ON DELETE CASCADE,
    csrf_hash     BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS admin_sessions_user ON admin_sessions (user_id);
CREATE TABLE IF NOT EXISTS admin_tokens (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    token_hash    BLOB NOT NULL UNIQUE,
    created_by    TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
) STRICT;
";

/// Create the account tables if they do not exist.
pub(crate) fn ensure_schema(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(ACCOUNTS_SCHEMA)
        .map_err(StoreError::sqlite("creating the account tables"))
}

/// An admin user as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Row id.
    pub id: i64,
    /// Login name (unique).
    pub name: String,
    /// Role name, as the admin crate spells it.
    pub role: String,
    /// PHC string of the password hash.
    pub password_hash: String,
    /// Base32 TOTP secret, when the user has MFA.
    pub totp_secret: Option<String>,
    /// Disabled users cannot log in and have no sessions.
    pub disabled: bool,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash and the TOTP secret are never printed.
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("mfa", &self.totp_secret.is_some())
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// A user to create.
pub struct NewUser<'a> {
    /// Login name.
    pub name: &'a str,
    /// Role name.
    pub role: &'a str,
    /// PHC string of the password hash.
    pub password_hash: &'a str,
    /// Base32 TOTP secret, if any.
    pub totp_secret: Option<&'a str>,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
}

/// A server-side session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// SHA-256 of the session id.
    pub id_hash: Vec<u8>,
    /// The user it belongs to.
    pub user_id: i64,
    /// SHA-256 of the CSRF token handed out at login.
    pub csrf_hash: Vec<u8>,
    /// Login time, Unix milliseconds.
    pub created_at_ms: i64,
    /// Last authenticated request, Unix milliseconds.
    pub last_seen_ms: i64,
}

/// An API token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Row id (what revocation names).
    pub id: i64,
    /// Free-form label.
    pub name: String,
    /// Role name the token acts with.
    pub role: String,
    /// Name of the admin who created it.
    pub created_by: String,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// Revocation time, Unix milliseconds; revoked tokens authenticate nothing.
    pub revoked_at_ms: Option<i64>,
}

/// The account tables, on a dedicated connection. Cheap to clone.
#[derive(Clone)]
pub struct Accounts {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").finish_non_exhaustive()
    }
}

fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        password_hash: r.get(3)?,
        totp_secret: r.get(4)?,
        disabled: r.get::<_, i64>(5)? != 0,
        created_at_ms: r.get(6)?,
    })
}

fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        created_by: r.get(3)?,
        created_at_ms: r.get(4)?,
        revoked_at_ms: r.get(5)?,
    })
}

const USER_COLUMNS: &str = "id, name, role, password_hash, totp_secret, disabled, created_at_ms";
const TOKEN_COLUMNS: &str = "id, name, role, created_by, created_at_ms, revoked_at_ms";

impl Accounts {
    /// Open the account tables of the store at `path` (creating the file, WAL mode and the
    /// tables as needed). Works beside a running [`Store`](crate::Store) on the same file.
    pub fn open(path: &Path) -> Result<Accounts, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
                context: format!("creating {}", parent.display()),
                source,
            })?;
        }
        let conn =
            Connection::open(path).map_err(StoreError::sqlite("opening the account store"))?;
        crate::schema::pragmas(&conn)?;
        ensure_schema(&conn)?;
        Ok(Accounts {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| StoreError::Fatal("the account connection mutex is poisoned".into()))?;
        f(&mut conn)
    }

    /// Create a user. `Ok(None)` when the name is taken.
    pub fn create_user(&self, user: &NewUser<'_>) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            let n = c
                .execute(
                    "INSERT INTO admin_users (name, role, password_hash, totp_secret, created_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (name) DO NOTHING",
                    params![
                        user.name,
                        user.role,
                        user.password_hash,
                        user.totp_secret,
                        user.created_at_ms
                    ],
                )
                .map_err(StoreError::sqlite("creating a user"))?;
            Ok((n == 1).then(|| c.last_insert_rowid()))
        })
    }

    /// One user by name.
    pub fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {USER_COLUMNS} FROM admin_users WHERE name = ?1"),
                [name],
                user_from_row,
            )
            .optional()
            .map_err(StoreError::sqlite("reading a user"))
        })
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.with(|c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {USER_COLUMNS} FROM admin_users ORDER BY name"
                ))
                .map_err(StoreError::sqlite("listing users"))?;
            st.query_map([], user_from_row)
                .and_then(|rows| rows.collect())
                .map_err(StoreError::sqlite("listing users"))
        })
    }

    /// Disable a user and delete all their sessions, in one transaction. `false` when there is
    /// no such user.
    pub fn disable_user(&self, name: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(StoreError::sqlite("disabling a user"))?;
            let id: Option<i64> = tx
                .query_row("SELECT id FROM admin_users WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(StoreError::sqlite("disabling a user"))?;
            let Some(id) = id else { return Ok(false) };
            tx.execute("UPDATE admin_users SET disabled = 1 WHERE id = ?1", [id])
                .map_err(StoreError::sqlite("disabling a user"))?;
            tx.execute("DELETE FROM admin_sessions WHERE user_id = ?1", [id])
                .map_err(StoreError::sqlite("ending a disabled user's sessions"))?;
            tx.commit()
                .map_err(StoreError::sqlite("disabling a user"))?;
            Ok(true)
        })
    }

    /// Store a new session; `replaces` (the hash of the session the login came with, if any) is
    /// deleted in the same transaction, so a login always rotates the session id.
    pub fn create_session(
        &self,
        session: &SessionRecord,
        replaces: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(StoreError::sqlite("creating a session"))?;
            if let Some(old) = replaces {
                tx.execute("DELETE FROM admin_sessions WHERE id_hash = ?1", [old])
                    .map_err(StoreError::sqlite("rotating a session"))?;
            }
            tx.execute(
                "INSERT INTO admin_sessions (id_hash, user_id, csrf_hash, created_at_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    session.id_hash,
                    session.user_id,
                    session.csrf_hash,
                    session.created_at_ms,
                    session.last_seen_ms
                ],
            )
            .map_err(StoreError::sqlite("creating a session"))?;
            tx.commit().map_err(StoreError::sqlite("creating a session"))
        })
    }

    /// A session and its user, by the hash of the session id.
    pub fn session(
        &self,
        id_hash: &[u8],
    ) -> Result<Option<(SessionRecord, UserRecord)>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT s.id_hash, s.user_id, s.csrf_hash, s.created_at_ms, s.last_seen_ms,
                        u.id, u.name, u.role, u.password_hash, u.totp_secret, u.disabled,
                        u.created_at_ms
                 FROM admin_sessions s JOIN admin_users u ON u.id = s.user_id
                 WHERE s.id_hash = ?1",
                [id_hash],
                |r| {
                    Ok((
                        SessionRecord {
                            id_hash: r.get(0)?,
                            user_id: r.get(1)?,
                            csrf_hash: r.get(2)?,
                            created_at_ms: r.get(3)?,
                            last_seen_ms: r.get(4)?,
                        },
                        UserRecord {
                            id: r.get(5)?,
                            name: r.get(6)?,
                            role: r.get(7)?,
                            password_hash: r.get(8)?,
                            totp_secret: r.get(9)?,
                            disabled: r.get::<_, i64>(10)? != 0,
                            created_at_ms: r.get(11)?,
                        },
                    ))
                },
            )
            .optional()
            .map_err(StoreError::sqlite("reading a session"))
        })
    }

    /// Record activity on a session (for the idle timeout).
    pub fn touch_session(&self, id_hash: &[u8], now_ms: i64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE admin_sessions SET last_seen_ms = ?2 WHERE id_hash = ?1",
                params![id_hash, now_ms],
            )
            .map(drop)
            .map_err(StoreError::sqlite("touching a session"))
        })
    }

    /// Delete a session (logout, expiry). `false` when it did not exist.
    pub fn delete_session(&self, id_hash: &[u8]) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM admin_sessions WHERE id_hash = ?1", [id_hash])
                .map(|n| n > 0)
                .map_err(StoreError::sqlite("deleting a session"))
        })
    }

    /// Store a new API token; returns its id.
    pub fn create_token(
        &self,
        name: &str,
        role: &str,
        token_hash: &[u8],
        created_by: &str,
        created_at_ms: i64,
    ) -> Result<i64, StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO admin_tokens (name, role, token_hash, created_by, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, role, token_hash, created_by, created_at_ms],
            )
            .map_err(StoreError::sqlite("creating a token"))?;
            Ok(c.last_insert_rowid())
        })
    }

    /// A token that is not revoked, by its hash.
    pub fn active_token(&self, token_hash: &[u8]) -> Result<Option<TokenRecord>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!(
                    "SELECT {TOKEN_COLUMNS} FROM admin_tokens
                     WHERE token_hash = ?1 AND revoked_at_ms IS NULL"
                ),
                [token_hash],
                token_from_row,
            )
            .optional()
            .map_err(StoreError::sqlite("reading a token"))
        })
    }

    /// Every token (revoked ones too), by id.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.with(|c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM admin_tokens ORDER BY id"
                ))
                .map_err(StoreError::sqlite("listing tokens"))?;
            st.query_map([], token_from_row)
                .and_then(|rows| rows.collect())
                .map_err(StoreError::sqlite("listing tokens"))
        })
    }

    /// Revoke a token. `false` when there is no such token or it was already revoked.
    pub fn revoke_token(&self, id: i64, now_ms: i64) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE admin_tokens SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
                params![id, now_ms],
            )
            .map(|n| n > 0)
            .map_err(StoreError::sqlite("revoking a token"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_sessions_tokens_round_trip_and_disable_kills_sessions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ferry.db");
        let store = crate::Store::open(&path).expect("store");
        let a = Accounts::open(&path).expect("accounts");
        let new = NewUser {
            name: "alice",
            role: "admin",
            password_hash: "$argon2id$x",
            totp_secret: Some("ABC"),
            created_at_ms: 1,
        };
        let id = a.create_user(&new).expect("create").expect("new");
        assert_eq!(
            a.create_user(&new).expect("again"),
            None,
            "names are unique"
        );
        let s = SessionRecord {
            id_hash: vec![1; 32],
            user_id: id,
            csrf_hash: vec![2; 32],
            created_at_ms: 5,
            last_seen_ms: 5,
        };
        a.create_session(&s, None).expect("session");
        a.touch_session(&s.id_hash, 9).expect("touch");
        let (got, user) = a.session(&s.id_hash).expect("read").expect("some");
        assert_eq!(got.last_seen_ms, 9);
        assert_eq!(user.name, "alice");
        assert!(a.disable_user("alice").expect("disable"));
        assert!(a.session(&s.id_hash).expect("read").is_none());
        assert!(a.user_by_name("alice").expect("u").expect("u").disabled);
        assert!(!a.disable_user("bob").expect("disable"));

        let t = a
            .create_token("ci", "viewer", &[3; 32], "alice", 7)
            .expect("token");
        assert_eq!(a.active_token(&[3; 32]).expect("t").map(|t| t.id), Some(t));
        assert!(a.revoke_token(t, 8).expect("revoke"));
        assert!(a.active_token(&[3; 32]).expect("t").is_none());
        assert!(!a.revoke_token(t, 9).expect("revoke twice"));
        drop(store);
    }
}
