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
//!
//! **Channel scope.** A user or token may be limited to a list of channels: the `channels`
//! column of `admin_users` and `admin_tokens`, `NULL` for every channel, else a JSON array of
//! channel names. A value that is not such an array is an error when read
//! ([`StoreError::Corrupt`]), never "every channel". The columns were added after the tables
//! first shipped; [`ensure_schema`] adds them to older stores (`ALTER TABLE … ADD COLUMN`,
//! once, inside a write transaction so two processes opening the store together do not race).
//!
//! **Bootstrap token.** While the store has no user, `admin_bootstrap` holds at most one row:
//! the SHA-256 of a one-time token and its expiry. [`Accounts::bootstrap_user`] checks it and
//! creates the first user in one transaction and deletes the token in the same transaction,
//! so it works once.
//!
//! **Encryption at rest.** Opened with a keyring ([`Accounts::open_with`]), TOTP secrets are
//! stored as `ferry:enc1:` + base64 of an AES-256-GCM envelope bound to the user's name (see
//! [`crypto`](crate::crypto)); plaintext secrets of older stores stay readable and are
//! re-encrypted by key rotation ([`Store::rotate_batch`](crate::Store::rotate_batch)).
//!
//! **PostgreSQL.** [`Accounts::open_postgres`] keeps the same tables in a PostgreSQL database
//! that several nodes share; the SQL is in `postgres/accounts.rs`, and every method here
//! dispatches to it. Same answers, with uniqueness and the single use of the bootstrap token
//! holding across connections.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use crate::crypto::{self, AccountField, Keyring};
use crate::postgres::PgOptions;
use crate::postgres::accounts::PgAccounts;
use crate::{StoreError, StoreOptions};

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
CREATE TABLE IF NOT EXISTS admin_bootstrap (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    token_hash    BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
) STRICT;
";

/// Columns added to the account tables after they first shipped: (table, column, type).
/// Additive only; `NULL` in an added column means what the store meant before it existed.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // The channel scope: NULL = every channel, else a JSON array of channel names.
    ("admin_users", "channels", "TEXT"),
    ("admin_tokens", "channels", "TEXT"),
];

/// The table of user TOTP secrets and its column (what their envelopes are bound to).
pub(crate) const TOTP_TABLE: &str = "admin_users";
/// See [`TOTP_TABLE`].
pub(crate) const TOTP_COLUMN: &str = "totp_secret";

/// Where the TOTP secret of user `name` is stored.
pub(crate) fn totp_field(name: &str) -> AccountField<'_> {
    AccountField {
        table: TOTP_TABLE,
        column: TOTP_COLUMN,
        row: name,
    }
}

fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
        params![table, column],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(StoreError::sqlite("reading the account tables' columns"))
}

/// Create the account tables if they do not exist, and add the columns of [`ADDED_COLUMNS`]
/// that an older store lacks.
pub(crate) fn ensure_schema(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(ACCOUNTS_SCHEMA)
        .map_err(StoreError::sqlite("creating the account tables"))?;
    let mut missing = false;
    for (table, column, _) in ADDED_COLUMNS {
        missing |= !has_column(conn, table, column)?;
    }
    if !missing {
        return Ok(());
    }
    // Checked again holding the write lock: another process may have added them meanwhile.
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)
        .map_err(StoreError::sqlite("migrating the account tables"))?;
    for (table, column, kind) in ADDED_COLUMNS {
        if !has_column(&tx, table, column)? {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))
                .map_err(StoreError::sqlite("adding a column to the account tables"))?;
        }
    }
    tx.commit()
        .map_err(StoreError::sqlite("migrating the account tables"))
}

/// A channel scope as stored: `None` (every channel) or a JSON array.
pub(crate) fn scope_to_sql(channels: Option<&[String]>) -> Option<String> {
    channels.map(|c| serde_json::Value::from(c.to_vec()).to_string())
}

/// Read a stored channel scope; anything but `NULL` or a JSON array of strings is an error.
fn scope_from_sql(text: Option<String>) -> rusqlite::Result<Option<Vec<String>>> {
    text.map(|t| {
        serde_json::from_str::<Vec<String>>(&t).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("a channel scope is not a JSON array of names: {e}").into(),
            )
        })
    })
    .transpose()
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
    /// Base32 TOTP secret, when the user has MFA (decrypted, when the store encrypts it).
    pub totp_secret: Option<String>,
    /// Disabled users cannot log in and have no sessions.
    pub disabled: bool,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// The channels the user is limited to; `None`: every channel.
    pub channels: Option<Vec<String>>,
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
            .field("channels", &self.channels)
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
    /// Base32 TOTP secret, if any (encrypted before it is stored, when the store encrypts).
    pub totp_secret: Option<&'a str>,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// Limit the user to these channels; `None`: every channel.
    pub channels: Option<&'a [String]>,
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
    /// The channels the token is limited to; `None`: every channel.
    pub channels: Option<Vec<String>>,
}

/// The pending one-time bootstrap token, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapRecord {
    /// SHA-256 of the token.
    pub token_hash: Vec<u8>,
    /// When it was issued, Unix milliseconds.
    pub created_at_ms: i64,
    /// When it stops working, Unix milliseconds.
    pub expires_at_ms: i64,
}

/// Why [`Accounts::bootstrap_user`] created no user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapRefusal {
    /// A user exists: bootstrapping is over.
    UsersExist,
    /// No token is pending (never issued, or used).
    NoToken,
    /// The token expired.
    Expired,
    /// The presented token is not the pending one.
    WrongToken,
}

impl BootstrapRefusal {
    /// The name recorded in the audit trail: `users_exist`, `no_token`, `expired`, `wrong`.
    pub fn as_str(self) -> &'static str {
        match self {
            BootstrapRefusal::UsersExist => "users_exist",
            BootstrapRefusal::NoToken => "no_token",
            BootstrapRefusal::Expired => "expired",
            BootstrapRefusal::WrongToken => "wrong",
        }
    }
}

/// The account tables, on a dedicated connection (SQLite or PostgreSQL). Cheap to clone.
#[derive(Clone)]
pub struct Accounts {
    inner: Backend,
    keyring: Option<Arc<Keyring>>,
}

/// Where the account tables are.
#[derive(Clone)]
enum Backend {
    /// In the SQLite store file.
    Sqlite(Arc<Mutex<Connection>>),
    /// In a PostgreSQL database shared by the nodes.
    Postgres(Arc<PgAccounts>),
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").finish_non_exhaustive()
    }
}

/// A user from the columns of [`USER_COLUMNS`] starting at `at` (the TOTP secret as stored:
/// [`Accounts::reveal`] opens it).
fn user_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        id: r.get(at)?,
        name: r.get(at + 1)?,
        role: r.get(at + 2)?,
        password_hash: r.get(at + 3)?,
        totp_secret: r.get(at + 4)?,
        disabled: r.get::<_, i64>(at + 5)? != 0,
        created_at_ms: r.get(at + 6)?,
        channels: scope_from_sql(r.get(at + 7)?)?,
    })
}

fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRecord> {
    user_at(r, 0)
}

fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        created_by: r.get(3)?,
        created_at_ms: r.get(4)?,
        revoked_at_ms: r.get(5)?,
        channels: scope_from_sql(r.get(6)?)?,
    })
}

pub(crate) const USER_COLUMNS: &str =
    "id, name, role, password_hash, totp_secret, disabled, created_at_ms, channels";
pub(crate) const TOKEN_COLUMNS: &str =
    "id, name, role, created_by, created_at_ms, revoked_at_ms, channels";

/// Insert a user (its TOTP secret already sealed); `None` when the name is taken.
fn insert_user(
    c: &Connection,
    user: &NewUser<'_>,
    totp_secret: Option<&str>,
) -> Result<Option<i64>, StoreError> {
    let n = c
        .execute(
            "INSERT INTO admin_users
                 (name, role, password_hash, totp_secret, created_at_ms, channels)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO NOTHING",
            params![
                user.name,
                user.role,
                user.password_hash,
                totp_secret,
                user.created_at_ms,
                scope_to_sql(user.channels),
            ],
        )
        .map_err(StoreError::sqlite("creating a user"))?;
    Ok((n == 1).then(|| c.last_insert_rowid()))
}

impl Accounts {
    /// Open the account tables of the store at `path` (creating the file, WAL mode and the
    /// tables as needed), without encryption. Works beside a running [`Store`](crate::Store)
    /// on the same file.
    pub fn open(path: &Path) -> Result<Accounts, StoreError> {
        Accounts::open_with(path, StoreOptions::default())
    }

    /// [`open`](Self::open) with the store's options: with a keyring, TOTP secrets are
    /// encrypted at rest. A stored encrypted secret is read back at open, so a wrong or
    /// missing key refuses the account tables ([`StoreError::Crypto`]) instead of failing
    /// the first admin login.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Accounts, StoreError> {
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
        let keyring = options.keyring.map(Arc::new);
        probe(&conn, keyring.as_deref())?;
        Ok(Accounts {
            inner: Backend::Sqlite(Arc::new(Mutex::new(conn))),
            keyring,
        })
    }

    /// Open the account tables in the PostgreSQL database of `pg` (creating them as needed),
    /// with the store's options, as [`open_with`](Self::open_with) does for SQLite: same
    /// tables, same answers, and a wrong or missing key refuses them at open. Several nodes
    /// may share the tables. Call it, and every method of the handle it returns, off the
    /// threads that drive async tasks (the synchronous PostgreSQL client runs its own).
    ///
    /// # Errors
    /// [`StoreError::Config`] for an unusable URL; [`StoreError::Postgres`] when the server
    /// cannot be reached or the tables cannot be created; [`StoreError::Crypto`] as
    /// [`open_with`](Self::open_with).
    pub fn open_postgres(pg: PgOptions, options: StoreOptions) -> Result<Accounts, StoreError> {
        let pg = PgAccounts::open(pg)?;
        let keyring = options.keyring.map(Arc::new);
        check_probe(pg.newest_sealed_totp()?, keyring.as_deref())?;
        Ok(Accounts {
            inner: Backend::Postgres(Arc::new(pg)),
            keyring,
        })
    }

    /// Open the stored TOTP secret of a user read from the table.
    fn reveal(&self, mut user: UserRecord) -> Result<UserRecord, StoreError> {
        if let Some(stored) = user.totp_secret.take() {
            user.totp_secret = Some(crypto::open_text(
                self.keyring.as_deref(),
                &totp_field(&user.name),
                stored,
            )?);
        }
        Ok(user)
    }

    /// The TOTP secret as it is stored for user `name`: sealed when there is a keyring.
    fn seal_totp(&self, name: &str, secret: Option<&str>) -> Result<Option<String>, StoreError> {
        match (secret, self.keyring.as_deref()) {
            (Some(s), Some(ring)) => ring.seal_text(&totp_field(name), s).map(Some),
            (s, _) => Ok(s.map(str::to_owned)),
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Backend::Sqlite(conn) = &self.inner else {
            return Err(StoreError::Fatal(
                "an SQLite operation on PostgreSQL account tables".into(),
            ));
        };
        let mut conn = conn
            .lock()
            .map_err(|_| StoreError::Fatal("the account connection mutex is poisoned".into()))?;
        f(&mut conn)
    }

    /// Create a user. `Ok(None)` when the name is taken.
    pub fn create_user(&self, user: &NewUser<'_>) -> Result<Option<i64>, StoreError> {
        let totp = self.seal_totp(user.name, user.totp_secret)?;
        if let Backend::Postgres(pg) = &self.inner {
            return pg.create_user(user, totp.as_deref());
        }
        self.with(|c| insert_user(c, user, totp.as_deref()))
    }

    /// One user by name.
    pub fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let user = match &self.inner {
            Backend::Postgres(pg) => pg.user_by_name(name)?,
            Backend::Sqlite(_) => self.with(|c| {
                c.query_row(
                    &format!("SELECT {USER_COLUMNS} FROM admin_users WHERE name = ?1"),
                    [name],
                    user_from_row,
                )
                .optional()
                .map_err(StoreError::sqlite("reading a user"))
            })?,
        };
        user.map(|u| self.reveal(u)).transpose()
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let users = match &self.inner {
            Backend::Postgres(pg) => pg.users()?,
            Backend::Sqlite(_) => self.with(|c| {
                let mut st = c
                    .prepare(&format!(
                        "SELECT {USER_COLUMNS} FROM admin_users ORDER BY name"
                    ))
                    .map_err(StoreError::sqlite("listing users"))?;
                st.query_map([], user_from_row)
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(StoreError::sqlite("listing users"))
            })?,
        };
        users.into_iter().map(|u| self.reveal(u)).collect()
    }

    /// Store a new bootstrap token (replacing any earlier one) when the store has no user,
    /// or, when it has users, delete any bootstrap token left. One transaction. Returns
    /// whether the token was stored.
    pub fn set_bootstrap_token(
        &self,
        token_hash: &[u8],
        created_at_ms: i64,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError> {
        if let Backend::Postgres(pg) = &self.inner {
            return pg.set_bootstrap_token(token_hash, created_at_ms, expires_at_ms);
        }
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(StoreError::sqlite("issuing a bootstrap token"))?;
            let users: i64 = tx
                .query_row("SELECT COUNT(*) FROM admin_users", [], |r| r.get(0))
                .map_err(StoreError::sqlite("counting users"))?;
            tx.execute("DELETE FROM admin_bootstrap", [])
                .map_err(StoreError::sqlite("removing the bootstrap token"))?;
            if users == 0 {
                tx.execute(
                    "INSERT INTO admin_bootstrap (id, token_hash, created_at_ms, expires_at_ms)
                     VALUES (1, ?1, ?2, ?3)",
                    params![token_hash, created_at_ms, expires_at_ms],
                )
                .map_err(StoreError::sqlite("issuing a bootstrap token"))?;
            }
            tx.commit()
                .map_err(StoreError::sqlite("issuing a bootstrap token"))?;
            Ok(users == 0)
        })
    }

    /// The pending bootstrap token, while the store has no user (expired or not).
    pub fn bootstrap_token(&self) -> Result<Option<BootstrapRecord>, StoreError> {
        if let Backend::Postgres(pg) = &self.inner {
            return pg.bootstrap_token();
        }
        self.with(|c| {
            c.query_row(
                "SELECT token_hash, created_at_ms, expires_at_ms FROM admin_bootstrap
                 WHERE id = 1 AND NOT EXISTS (SELECT 1 FROM admin_users)",
                [],
                |r| {
                    Ok(BootstrapRecord {
                        token_hash: r.get(0)?,
                        created_at_ms: r.get(1)?,
                        expires_at_ms: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(StoreError::sqlite("reading the bootstrap token"))
        })
    }

    /// Create the first user with the bootstrap token, in one write transaction: there must
    /// be no user yet, a token pending, not expired at `now_ms`, and `matches` (the caller's
    /// constant-time comparison) must accept its stored hash. Then the user is inserted and
    /// the token deleted, in the same transaction: a token creates one user, once, however
    /// many requests race with it.
    pub fn bootstrap_user(
        &self,
        user: &NewUser<'_>,
        now_ms: i64,
        matches: impl FnOnce(&[u8]) -> bool,
    ) -> Result<Result<i64, BootstrapRefusal>, StoreError> {
        let totp = self.seal_totp(user.name, user.totp_secret)?;
        if let Backend::Postgres(pg) = &self.inner {
            return pg.bootstrap_user(user, totp.as_deref(), now_ms, matches);
        }
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(StoreError::sqlite("bootstrapping the first user"))?;
            let users: i64 = tx
                .query_row("SELECT COUNT(*) FROM admin_users", [], |r| r.get(0))
                .map_err(StoreError::sqlite("counting users"))?;
            if users > 0 {
                return Ok(Err(BootstrapRefusal::UsersExist));
            }
            let pending: Option<(Vec<u8>, i64)> = tx
                .query_row(
                    "SELECT token_hash, expires_at_ms FROM admin_bootstrap WHERE id = 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(StoreError::sqlite("reading the bootstrap token"))?;
            let Some((hash, expires_at_ms)) = pending else {
                return Ok(Err(BootstrapRefusal::NoToken));
            };
            // Compared before the expiry is looked at, so the work done does not depend on it.
            let right = matches(&hash);
            if !right {
                return Ok(Err(BootstrapRefusal::WrongToken));
            }
            if now_ms >= expires_at_ms {
                return Ok(Err(BootstrapRefusal::Expired));
            }
            let Some(id) = insert_user(&tx, user, totp.as_deref())? else {
                return Ok(Err(BootstrapRefusal::UsersExist));
            };
            tx.execute("DELETE FROM admin_bootstrap", [])
                .map_err(StoreError::sqlite("removing the used bootstrap token"))?;
            tx.commit()
                .map_err(StoreError::sqlite("bootstrapping the first user"))?;
            Ok(Ok(id))
        })
    }

    /// Disable a user and delete all their sessions, in one transaction. `false` when there is
    /// no such user.
    pub fn disable_user(&self, name: &str) -> Result<bool, StoreError> {
        if let Backend::Postgres(pg) = &self.inner {
            return pg.disable_user(name);
        }
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
        if let Backend::Postgres(pg) = &self.inner {
            return pg.create_session(session, replaces);
        }
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
        let found = match &self.inner {
            Backend::Postgres(pg) => pg.session(id_hash)?,
            Backend::Sqlite(_) => self.with(|c| {
                c.query_row(
                    "SELECT s.id_hash, s.user_id, s.csrf_hash, s.created_at_ms, s.last_seen_ms,
                        u.id, u.name, u.role, u.password_hash, u.totp_secret, u.disabled,
                        u.created_at_ms, u.channels
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
                            user_at(r, 5)?,
                        ))
                    },
                )
                .optional()
                .map_err(StoreError::sqlite("reading a session"))
            })?,
        };
        found.map(|(s, u)| Ok((s, self.reveal(u)?))).transpose()
    }

    /// Record activity on a session (for the idle timeout).
    pub fn touch_session(&self, id_hash: &[u8], now_ms: i64) -> Result<(), StoreError> {
        if let Backend::Postgres(pg) = &self.inner {
            return pg.touch_session(id_hash, now_ms);
        }
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
        if let Backend::Postgres(pg) = &self.inner {
            return pg.delete_session(id_hash);
        }
        self.with(|c| {
            c.execute("DELETE FROM admin_sessions WHERE id_hash = ?1", [id_hash])
                .map(|n| n > 0)
                .map_err(StoreError::sqlite("deleting a session"))
        })
    }

    /// Store a new API token for every channel; returns its id.
    pub fn create_token(
        &self,
        name: &str,
        role: &str,
        token_hash: &[u8],
        created_by: &str,
        created_at_ms: i64,
    ) -> Result<i64, StoreError> {
        self.create_scoped_token(name, role, token_hash, created_by, created_at_ms, None)
    }

    /// Store a new API token limited to `channels` (`None`: every channel); returns its id.
    pub fn create_scoped_token(
        &self,
        name: &str,
        role: &str,
        token_hash: &[u8],
        created_by: &str,
        created_at_ms: i64,
        channels: Option<&[String]>,
    ) -> Result<i64, StoreError> {
        if let Backend::Postgres(pg) = &self.inner {
            return pg.create_scoped_token(
                name,
                role,
                token_hash,
                created_by,
                created_at_ms,
                channels,
            );
        }
        self.with(|c| {
            c.execute(
                "INSERT INTO admin_tokens
                     (name, role, token_hash, created_by, created_at_ms, channels)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    name,
                    role,
                    token_hash,
                    created_by,
                    created_at_ms,
                    scope_to_sql(channels)
                ],
            )
            .map_err(StoreError::sqlite("creating a token"))?;
            Ok(c.last_insert_rowid())
        })
    }

    /// A token that is not revoked, by its hash.
    pub fn active_token(&self, token_hash: &[u8]) -> Result<Option<TokenRecord>, StoreError> {
        if let Backend::Postgres(pg) = &self.inner {
            return pg.active_token(token_hash);
        }
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

    /// One token (revoked or not), by id.
    pub fn token(&self, id: i64) -> Result<Option<TokenRecord>, StoreError> {
        if let Backend::Postgres(pg) = &self.inner {
            return pg.token(id);
        }
        self.with(|c| {
            c.query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM admin_tokens WHERE id = ?1"),
                [id],
                token_from_row,
            )
            .optional()
            .map_err(StoreError::sqlite("reading a token"))
        })
    }

    /// Every token (revoked ones too), by id.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        if let Backend::Postgres(pg) = &self.inner {
            return pg.tokens();
        }
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
        if let Backend::Postgres(pg) = &self.inner {
            return pg.revoke_token(id, now_ms);
        }
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

/// Read back one encrypted TOTP secret, so a wrong or missing key fails at open.
fn probe(conn: &Connection, keyring: Option<&Keyring>) -> Result<(), StoreError> {
    let sealed: Option<(String, String)> = conn
        .query_row(
            "SELECT name, totp_secret FROM admin_users
             WHERE substr(totp_secret, 1, ?1) = ?2 ORDER BY id DESC LIMIT 1",
            params![crypto::TEXT_PREFIX.len() as i64, crypto::TEXT_PREFIX],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(StoreError::sqlite("reading a TOTP secret"))?;
    check_probe(sealed, keyring)
}

/// Open the newest encrypted TOTP secret (user name, stored text), if there is one.
fn check_probe(
    sealed: Option<(String, String)>,
    keyring: Option<&Keyring>,
) -> Result<(), StoreError> {
    if let Some((name, secret)) = sealed {
        crypto::open_text(keyring, &totp_field(&name), secret).map_err(|e| match e {
            StoreError::Crypto(m) => {
                StoreError::Crypto(format!("refusing to open the account tables: {m}"))
            }
            other => other,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use ferry_testkit::postgres::TestDb;

    /// The database a test runs on, kept alive for the test, with raw SQL for the checks the
    /// API does not offer (the statements used are the same text on both).
    enum Db {
        Sqlite(tempfile::TempDir),
        Postgres(TestDb),
    }

    impl Db {
        fn sqlite() -> Db {
            Db::Sqlite(tempfile::tempdir().expect("tempdir"))
        }

        fn postgres() -> Db {
            Db::Postgres(TestDb::new())
        }

        fn path(dir: &tempfile::TempDir) -> std::path::PathBuf {
            dir.path().join("ferry.db")
        }

        fn open_with(&self, options: StoreOptions) -> Result<Accounts, StoreError> {
            match self {
                Db::Sqlite(dir) => Accounts::open_with(&Db::path(dir), options),
                Db::Postgres(db) => Accounts::open_postgres(
                    PgOptions {
                        url: db.url().to_owned(),
                        tls: None,
                    },
                    options,
                ),
            }
        }

        fn open(&self) -> Accounts {
            self.open_with(StoreOptions::default()).expect("accounts")
        }

        /// Run one statement outside the store.
        fn exec(&self, sql: &str) {
            match self {
                Db::Sqlite(dir) => {
                    Connection::open(Db::path(dir))
                        .and_then(|c| c.execute_batch(sql))
                        .expect(sql);
                }
                Db::Postgres(db) => db.client().batch_execute(sql).expect(sql),
            }
        }

        /// The one text value `sql` selects, read outside the store.
        fn text(&self, sql: &str) -> String {
            match self {
                Db::Sqlite(dir) => Connection::open(Db::path(dir))
                    .and_then(|c| c.query_row(sql, [], |r| r.get(0)))
                    .expect(sql),
                Db::Postgres(db) => db.client().query_one(sql, &[]).expect(sql).get(0),
            }
        }
    }

    /// Each test body runs once on SQLite and once on PostgreSQL.
    macro_rules! on_both {
        ($($name:ident),* $(,)?) => {
            mod sqlite {
                $(#[test]
                fn $name() {
                    super::$name(super::Db::sqlite());
                })*
            }
            mod postgres {
                $(#[test]
                fn $name() {
                    super::$name(super::Db::postgres());
                })*
            }
        };
    }

    on_both!(
        users_sessions_tokens_round_trip_and_disable_kills_sessions,
        scopes_round_trip_and_an_empty_scope_is_no_channel,
        a_damaged_scope_is_an_error_not_every_channel,
        a_bootstrap_token_creates_one_first_user_once,
        a_bootstrap_token_is_dead_once_a_user_exists_another_way,
        totp_secrets_are_encrypted_at_rest_and_need_the_key,
        racing_bootstraps_create_one_admin_and_racing_creates_one_user,
        users_are_listed_by_name_in_byte_order,
    );

    fn users_sessions_tokens_round_trip_and_disable_kills_sessions(db: Db) {
        // On SQLite, the account tables work beside a running store on the same file.
        let store = match &db {
            Db::Sqlite(dir) => Some(crate::Store::open(&Db::path(dir)).expect("store")),
            Db::Postgres(_) => None,
        };
        let a = db.open();
        let new = NewUser {
            name: "alice",
            role: "admin",
            password_hash: "$argon2id$x",
            totp_secret: Some("ABC"),
            created_at_ms: 1,
            channels: None,
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

    fn user<'a>(name: &'a str, channels: Option<&'a [String]>) -> NewUser<'a> {
        NewUser {
            name,
            role: "operator",
            password_hash: "$argon2id$x",
            totp_secret: None,
            created_at_ms: 1,
            channels,
        }
    }

    /// The account tables as they were before the channel scope (and bootstrap) existed.
    const OLD_SCHEMA: &str = "
        CREATE TABLE admin_users (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, role TEXT NOT NULL,
            password_hash TEXT NOT NULL, totp_secret TEXT,
            disabled INTEGER NOT NULL DEFAULT 0, created_at_ms INTEGER NOT NULL) STRICT;
        CREATE TABLE admin_tokens (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL,
            token_hash BLOB NOT NULL UNIQUE, created_by TEXT NOT NULL,
            created_at_ms INTEGER NOT NULL, revoked_at_ms INTEGER) STRICT;
        INSERT INTO admin_users (name, role, password_hash, created_at_ms)
            VALUES ('old', 'admin', 'h', 1);
        INSERT INTO admin_tokens (name, role, token_hash, created_by, created_at_ms)
            VALUES ('ci', 'viewer', x'03', 'old', 1);
    ";

    #[test]
    fn an_older_sqlite_store_gains_the_scope_columns_and_keeps_every_account_unscoped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ferry.db");
        Connection::open(&path)
            .and_then(|c| c.execute_batch(OLD_SCHEMA))
            .expect("old layout");
        let a = Accounts::open(&path).expect("migrated");
        let old = a.user_by_name("old").expect("read").expect("kept");
        assert_eq!(old.channels, None, "an existing user keeps every channel");
        assert_eq!(
            a.active_token(&[3]).expect("t").expect("kept").channels,
            None
        );
        // Opening again (and a second handle) finds nothing to do.
        drop(Accounts::open(&path).expect("again"));
        scopes(&a, "old");
    }

    fn scopes_round_trip_and_an_empty_scope_is_no_channel(db: Db) {
        let a = db.open();
        a.create_user(&user("old", None))
            .expect("create")
            .expect("new");
        scopes(&a, "old");
    }

    /// Scoped users and tokens read back as written, by every query.
    fn scopes(a: &Accounts, creator: &str) {
        let scope = vec!["a".to_owned(), "b".to_owned()];
        a.create_user(&user("scoped", Some(&scope)))
            .expect("create")
            .expect("new");
        assert_eq!(
            a.user_by_name("scoped").expect("read").expect("u").channels,
            Some(scope.clone())
        );
        let id = a
            .create_scoped_token("t", "viewer", &[4; 32], creator, 2, Some(&scope[..1]))
            .expect("token");
        let listed = a.tokens().expect("tokens");
        assert_eq!(
            listed.iter().find(|t| t.id == id).expect("t").channels,
            Some(vec!["a".into()])
        );
        assert_eq!(
            a.token(id).expect("token").map(|t| t.name),
            Some("t".into())
        );
        assert_eq!(a.token(id + 100).expect("token"), None);
        // An empty scope is a scope (no channel), never "every channel".
        a.create_user(&user("none", Some(&[])))
            .expect("create")
            .expect("new");
        assert_eq!(
            a.user_by_name("none").expect("read").expect("u").channels,
            Some(Vec::new())
        );
    }

    fn a_damaged_scope_is_an_error_not_every_channel(db: Db) {
        let a = db.open();
        a.create_user(&user("olga", Some(&["a".to_owned()])))
            .expect("create")
            .expect("new");
        db.exec("UPDATE admin_users SET channels = 'a,b'");
        let err = a.user_by_name("olga").expect_err("damaged scope");
        assert!(err.to_string().contains("channel scope"), "{err}");
    }

    fn a_bootstrap_token_creates_one_first_user_once(db: Db) {
        let a = db.open();
        let right = |h: &[u8]| h == [7u8; 32];
        let first = NewUser {
            role: "admin",
            ..user("root", None)
        };
        assert_eq!(
            a.bootstrap_user(&first, 10, right).expect("none"),
            Err(BootstrapRefusal::NoToken)
        );
        assert!(a.set_bootstrap_token(&[7; 32], 0, 100).expect("issue"));
        assert_eq!(
            a.bootstrap_token().expect("read").map(|b| b.expires_at_ms),
            Some(100)
        );
        assert_eq!(
            a.bootstrap_user(&first, 10, |h| h == [8u8; 32])
                .expect("wrong"),
            Err(BootstrapRefusal::WrongToken)
        );
        assert_eq!(
            a.bootstrap_user(&first, 100, right).expect("expired"),
            Err(BootstrapRefusal::Expired)
        );
        assert!(
            a.users().expect("users").is_empty(),
            "refusals create nobody"
        );
        let id = a
            .bootstrap_user(&first, 99, right)
            .expect("bootstrap")
            .expect("created");
        assert_eq!(a.user_by_name("root").expect("u").map(|u| u.id), Some(id));
        assert_eq!(a.bootstrap_token().expect("read"), None, "used up");
        let second = NewUser {
            role: "admin",
            ..user("eve", None)
        };
        assert_eq!(
            a.bootstrap_user(&second, 99, right).expect("again"),
            Err(BootstrapRefusal::UsersExist)
        );
        // With a user, no token is issued and any left is removed.
        assert!(!a.set_bootstrap_token(&[9; 32], 0, 100).expect("issue"));
        assert_eq!(a.bootstrap_token().expect("read"), None);
    }

    fn a_bootstrap_token_is_dead_once_a_user_exists_another_way(db: Db) {
        let a = db.open();
        assert!(a.set_bootstrap_token(&[7; 32], 0, 100).expect("issue"));
        a.create_user(&user("olga", None))
            .expect("create")
            .expect("new");
        assert_eq!(a.bootstrap_token().expect("read"), None);
        let first = user("root", None);
        assert_eq!(
            a.bootstrap_user(&first, 1, |_| true).expect("refused"),
            Err(BootstrapRefusal::UsersExist)
        );
    }

    fn ring(id: &str, byte: u8) -> StoreOptions {
        StoreOptions {
            keyring: Some(
                Keyring::new(id, crate::Key::from_bytes(&[byte; 32]).expect("key")).expect("ring"),
            ),
        }
    }

    fn totp_secrets_are_encrypted_at_rest_and_need_the_key(db: Db) {
        const SECRET: &str = "CANARYTOTPSECRETQWERTYUIOPASDFGH";
        let a = db.open_with(ring("k1", 1)).expect("accounts");
        let root = NewUser {
            totp_secret: Some(SECRET),
            ..user("root", None)
        };
        a.create_user(&root).expect("create").expect("new");
        let stored = db.text("SELECT totp_secret FROM admin_users");
        assert!(stored.starts_with(crypto::TEXT_PREFIX), "{stored}");
        assert!(!stored.contains("CANARY"));
        let read = a.user_by_name("root").expect("read").expect("u");
        assert_eq!(read.totp_secret.as_deref(), Some(SECRET));
        assert_eq!(
            a.users().expect("users")[0].totp_secret.as_deref(),
            Some(SECRET)
        );
        drop(a);

        let err = db.open_with(StoreOptions::default()).expect_err("no key");
        assert!(
            err.to_string()
                .contains("refusing to open the account tables"),
            "{err}"
        );
        let err = db.open_with(ring("k1", 2)).expect_err("wrong key");
        assert!(err.to_string().contains("fails authentication"), "{err}");
        assert!(!err.to_string().contains("CANARY"));
    }

    #[tokio::test]
    async fn rotation_re_encrypts_totp_secrets_and_plaintext_ones() {
        const OLD: &str = "OLDPLAINTEXTTOTPSECRETAAAAAAAAAA";
        const NEW: &str = "SEALEDTOTPSECRETBBBBBBBBBBBBBBBB";
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ferry.db");
        // One secret from before encryption, one under the old key.
        Accounts::open(&path)
            .expect("plain")
            .create_user(&NewUser {
                totp_secret: Some(OLD),
                ..user("plain", None)
            })
            .expect("create")
            .expect("new");
        Accounts::open_with(&path, ring("old", 1))
            .expect("old key")
            .create_user(&NewUser {
                totp_secret: Some(NEW),
                ..user("sealed", None)
            })
            .expect("create")
            .expect("new");
        let mut both = ring("new", 2);
        both.keyring = both.keyring.map(|r| {
            r.with_old("old", crate::Key::from_bytes(&[1; 32]).expect("key"))
                .expect("old")
        });
        let store = crate::Store::open_with(&path, both).expect("store");
        assert_eq!(store.rotation_pending().await.expect("pending"), 2);
        let mut rotated = 0;
        loop {
            let p = store.rotate_batch(1).await.expect("rotate");
            rotated += p.rotated;
            if p.done {
                break;
            }
        }
        assert_eq!(rotated, 2);
        assert_eq!(store.rotation_pending().await.expect("pending"), 0);
        store.close().await.expect("close");
        // Only the new key is needed now, and both secrets read back.
        let a = Accounts::open_with(&path, ring("new", 2)).expect("new key only");
        let secret = |n: &str| a.user_by_name(n).expect("read").expect("u").totp_secret;
        assert_eq!(secret("plain").as_deref(), Some(OLD));
        assert_eq!(secret("sealed").as_deref(), Some(NEW));
        let bytes = std::fs::read(&path).expect("file");
        assert!(!bytes.windows(OLD.len()).any(|w| w == OLD.as_bytes()));
    }

    /// Two handles on one database (two nodes) race, from a thread each, many times.
    fn racing_bootstraps_create_one_admin_and_racing_creates_one_user(db: Db) {
        const ROUNDS: usize = 15;
        let nodes = [db.open(), db.open()];
        let barrier = std::sync::Barrier::new(nodes.len());
        let race = |f: &(dyn Fn(usize, &Accounts) -> Option<i64> + Sync)| -> Vec<Option<i64>> {
            std::thread::scope(|s| {
                let handles: Vec<_> = nodes
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            barrier.wait();
                            f(i, a)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("racer"))
                    .collect()
            })
        };
        let right = |h: &[u8]| h == [7u8; 32];
        for round in 0..ROUNDS {
            db.exec("DELETE FROM admin_users");
            assert!(
                nodes[0]
                    .set_bootstrap_token(&[7; 32], 0, 100)
                    .expect("issue")
            );
            let names = [format!("root{round}a"), format!("root{round}b")];
            let got = race(&|i, a| {
                let first = NewUser {
                    role: "admin",
                    ..user(&names[i], None)
                };
                match a.bootstrap_user(&first, 10, right).expect("bootstrap") {
                    Ok(id) => Some(id),
                    Err(BootstrapRefusal::UsersExist | BootstrapRefusal::NoToken) => None,
                    Err(other) => panic!("round {round}: refused with {other:?}"),
                }
            });
            assert_eq!(
                got.iter().filter(|g| g.is_some()).count(),
                1,
                "round {round}: one bootstrap wins: {got:?}"
            );
            let users = nodes[1].users().expect("users");
            assert_eq!(users.len(), 1, "round {round}: one admin: {users:?}");
            assert_eq!(Some(users[0].id), got.into_iter().flatten().next());
            assert_eq!(nodes[0].bootstrap_token().expect("read"), None, "used up");
        }
        for round in 0..ROUNDS {
            let name = format!("same{round}");
            let got = race(&|_, a| a.create_user(&user(&name, None)).expect("create"));
            assert_eq!(
                got.iter().filter(|g| g.is_some()).count(),
                1,
                "round {round}: one create wins: {got:?}"
            );
            assert_eq!(
                nodes[0].user_by_name(&name).expect("read").map(|u| u.id),
                got.into_iter().flatten().next()
            );
        }
    }

    fn users_are_listed_by_name_in_byte_order(db: Db) {
        let a = db.open();
        for name in ["bob", "Zed", "alice", "_x", "Alice"] {
            a.create_user(&user(name, None))
                .expect("create")
                .expect("new");
        }
        let names: Vec<String> = a
            .users()
            .expect("users")
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(names, ["Alice", "Zed", "_x", "alice", "bob"]);
    }

    #[test]
    fn postgres_rotation_re_encrypts_totp_secrets_and_plaintext_ones() {
        const OLD: &str = "OLDPLAINTEXTTOTPSECRETAAAAAAAAAA";
        const NEW: &str = "SEALEDTOTPSECRETBBBBBBBBBBBBBBBB";
        let db = Db::postgres();
        // One secret from before encryption, one under the old key, one user without MFA.
        db.open()
            .create_user(&user("nomfa", None))
            .expect("create")
            .expect("new");
        db.open()
            .create_user(&NewUser {
                totp_secret: Some(OLD),
                ..user("plain", None)
            })
            .expect("create")
            .expect("new");
        db.open_with(ring("old", 1))
            .expect("old key")
            .create_user(&NewUser {
                totp_secret: Some(NEW),
                ..user("sealed", None)
            })
            .expect("create")
            .expect("new");
        let mut both = ring("new", 2);
        both.keyring = both.keyring.map(|r| {
            r.with_old("old", crate::Key::from_bytes(&[1; 32]).expect("key"))
                .expect("old")
        });
        let keyring = both.keyring.as_ref().expect("ring");
        let Db::Postgres(test_db) = &db else {
            unreachable!("a PostgreSQL test")
        };
        let mut client = test_db.client();
        assert_eq!(
            crate::postgres::accounts::totp_pending(&mut client, keyring).expect("pending"),
            2
        );
        // In batches of one, as the store's rotation walks its cursor, in a transaction.
        let (mut after, mut rotated, mut batches) = (0, 0, 0);
        loop {
            let mut tx = client.transaction().expect("tx");
            let b = crate::postgres::accounts::rotate_totp_batch(&mut tx, keyring, after, 1)
                .expect("rotate");
            tx.commit().expect("commit");
            rotated += b.rotated;
            after = b.last_id;
            batches += 1;
            if b.scanned < 1 {
                break;
            }
        }
        assert_eq!((rotated, batches), (2, 3));
        assert_eq!(
            crate::postgres::accounts::totp_pending(&mut client, keyring).expect("pending"),
            0
        );
        // A second pass finds everything under the current key.
        let again = crate::postgres::accounts::rotate_totp_batch(&mut client, keyring, 0, 10)
            .expect("again");
        assert_eq!((again.scanned, again.rotated), (2, 0));
        // Only the new key is needed now, and both secrets read back.
        let a = db.open_with(ring("new", 2)).expect("new key only");
        let secret = |n: &str| a.user_by_name(n).expect("read").expect("u").totp_secret;
        assert_eq!(secret("plain").as_deref(), Some(OLD));
        assert_eq!(secret("sealed").as_deref(), Some(NEW));
        assert_eq!(secret("nomfa"), None);
        let stored = db.text("SELECT string_agg(totp_secret, ' ') FROM admin_users");
        assert!(!stored.contains(OLD) && !stored.contains(NEW));
    }

    #[test]
    fn a_broken_postgres_connection_is_replaced() {
        let test_db = TestDb::new();
        let name = format!("ferry_{}", test_db.schema());
        let a = Accounts::open_postgres(
            PgOptions {
                url: format!("{}&application_name={name}", test_db.url()),
                tls: None,
            },
            StoreOptions::default(),
        )
        .expect("accounts");
        a.create_user(&user("olga", None))
            .expect("create")
            .expect("new");
        // Kill the handle's connection from outside, as a server restart or a proxy would.
        let killed: i64 = test_db
            .client()
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE application_name = $1",
                &[&name],
            )
            .expect("terminate")
            .get(0);
        assert_eq!(killed, 1, "the handle's connection was found");
        // The next call may fail (the connection is gone) or already reconnect; the one
        // after works.
        let _ = a.user_by_name("olga");
        assert_eq!(
            a.user_by_name("olga").expect("reconnected").map(|u| u.name),
            Some("olga".into())
        );
    }
}
