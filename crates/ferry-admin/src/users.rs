//! Creating users, shared by `ferry user add` and `POST /api/v1/users`.

use ferry_store::{Accounts, NewUser, StoreError};

use crate::auth::{self, CredentialError};
use crate::policy::Role;
use crate::scope::ChannelScope;

/// Shortest accepted password (ASVS 6.2.1 asks for at least 8; Ferry asks for 12).
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest accepted password (argon2 copes, but there is no reason for more).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Why a user could not be created.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The name is not 1–64 of letters, digits, `.`, `_`, `-`, `@`.
    #[error("a user name is 1 to 64 letters, digits, `.`, `_`, `-` or `@`")]
    BadName,
    /// The password is too short or too long.
    #[error("a password is 12 to 1024 characters")]
    BadPassword,
    /// The name is taken.
    #[error("a user with that name exists")]
    Exists,
    /// Hashing or TOTP failed.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A user that was just created: what must be shown to them once.
#[derive(Debug)]
pub struct CreatedUser {
    /// The user name.
    pub name: String,
    /// The role.
    pub role: Role,
    /// The base32 TOTP secret (admins), shown once.
    pub totp_secret: Option<String>,
    /// Its `otpauth://` URI.
    pub otpauth_uri: Option<String>,
    /// The channels the user reaches.
    pub scope: ChannelScope,
}

/// Whether `name` is an acceptable user name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// Validate, hash the password (argon2id), make a TOTP secret when the role requires MFA, and
/// store the user, reaching every channel. Blocking (argon2 and SQLite): call it off the async
/// threads.
pub fn create_user(
    accounts: &Accounts,
    name: &str,
    role: Role,
    password: &str,
    now_ms: i64,
) -> Result<CreatedUser, UserError> {
    create_scoped_user(accounts, name, role, password, &ChannelScope::All, now_ms)
}

/// A user's credentials, checked and made, before it is stored.
pub(crate) struct Credentials {
    pub(crate) password_hash: String,
    pub(crate) totp_secret: Option<String>,
    pub(crate) otpauth_uri: Option<String>,
}

/// Check name and password, hash the password, and make a TOTP secret when the role
/// requires MFA. Blocking (argon2).
pub(crate) fn credentials(
    name: &str,
    role: Role,
    password: &str,
) -> Result<Credentials, UserError> {
    if !valid_name(name) {
        return Err(UserError::BadName);
    }
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&password.chars().count()) {
        return Err(UserError::BadPassword);
    }
    let password_hash = auth::hash_password(password)?;
    let totp_secret = role.requires_mfa().then(auth::new_totp_secret);
    let otpauth_uri = match &totp_secret {
        Some(s) => Some(auth::otpauth_uri(s, name)?),
        None => None,
    };
    Ok(Credentials {
        password_hash,
        totp_secret,
        otpauth_uri,
    })
}

/// [`create_user`] limited to the channels of `scope`.
pub fn create_scoped_user(
    accounts: &Accounts,
    name: &str,
    role: Role,
    password: &str,
    scope: &ChannelScope,
    now_ms: i64,
) -> Result<CreatedUser, UserError> {
    let made = credentials(name, role, password)?;
    let channels = scope.to_stored();
    let created = accounts.create_user(&NewUser {
        name,
        role: role.as_str(),
        password_hash: &made.password_hash,
        totp_secret: made.totp_secret.as_deref(),
        created_at_ms: now_ms,
        channels: channels.as_deref(),
    })?;
    if created.is_none() {
        return Err(UserError::Exists);
    }
    Ok(CreatedUser {
        name: name.to_owned(),
        role,
        totp_secret: made.totp_secret,
        otpauth_uri: made.otpauth_uri,
        scope: scope.clone(),
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
