//! Credentials: argon2id password hashes, TOTP, random secrets (session ids, CSRF tokens, API
//! tokens) stored only as SHA-256 hashes, and the failed-login lockout.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHasher as _, PasswordVerifier as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Prefix of API tokens, so a bearer credential says which table it belongs to.
pub const TOKEN_PREFIX: &str = "ferry_t_";

/// Errors making credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The operating system's random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// Building the TOTP failed.
    #[error("TOTP: {0}")]
    Totp(String),
}

/// 32 random bytes, hex encoded (256 bits).
pub fn random_secret() -> Result<String, CredentialError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| CredentialError::Random(e.to_string()))?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// SHA-256 of a secret: what the store keeps of session ids, CSRF tokens and API tokens.
pub fn secret_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Constant-time comparison of two hashes.
pub fn hashes_equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Argon2id with the OWASP minimum parameters (m = 19 MiB, t = 2, p = 1: the crate defaults).
fn argon2() -> Argon2<'static> {
    Argon2::default()
}

/// Hash a password into a PHC string.
pub fn hash_password(password: &str) -> Result<String, CredentialError> {
    argon2()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| CredentialError::Hash(e.to_string()))
}

/// A hash of a password nobody knows, verified against for unknown users so that an unknown
/// name costs the same argon2 work as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let secret = random_secret().unwrap_or_else(|_| "ferry-dummy-password".to_owned());
        hash_password(&secret).unwrap_or_default()
    })
}

/// Verify `password` against `hash`, or against the dummy hash when `hash` is `None` (then the
/// answer is always `false`, after the same work).
pub fn verify_password(password: &str, hash: Option<&str>) -> bool {
    let ok = argon2()
        .verify_password(password.as_bytes(), hash.unwrap_or(dummy_hash()))
        .is_ok();
    ok && hash.is_some()
}

/// Warm the dummy hash (so the first unknown-user login is not slower than the others).
pub fn warm_up() {
    let _ = dummy_hash();
}

/// A new random TOTP secret, base32.
pub fn new_totp_secret() -> String {
    totp_rs::Secret::generate().to_base32()
}

fn totp(secret_b32: &str, account: &str) -> Result<totp_rs::Totp, CredentialError> {
    let secret = totp_rs::Secret::try_from_base32(secret_b32)
        .map_err(|e| CredentialError::Totp(e.to_string()))?;
    totp_rs::Builder::new()
        .with_secret(secret)
        .with_account_name(account)
        .with_issuer(Some("Ferry"))
        .build()
        .map_err(|e| CredentialError::Totp(e.to_string()))
}

/// The `otpauth://` URI an authenticator app enrols from.
pub fn otpauth_uri(secret_b32: &str, account: &str) -> Result<String, CredentialError> {
    totp(secret_b32, account)?
        .to_url()
        .map_err(|e| CredentialError::Totp(e.to_string()))
}

/// Check a TOTP code (SHA-1, 6 digits, 30 s, ±1 step). Returns the time step it matched.
pub fn check_totp(secret_b32: &str, code: &str, unix_secs: u64) -> Option<u64> {
    totp(secret_b32, "")
        .ok()
        .and_then(|t| t.check(code, unix_secs))
}

/// The TOTP code of a secret at a time (what an authenticator app shows; for clients and
/// tests).
pub fn totp_code(secret_b32: &str, unix_secs: u64) -> Result<String, CredentialError> {
    Ok(totp(secret_b32, "")?.generate(unix_secs).to_string())
}

/// Lockout settings.
#[derive(Debug, Clone, Copy)]
pub struct LockoutPolicy {
    /// Consecutive failures that lock a name.
    pub threshold: u32,
    /// The first lock's length; doubled on each further lock.
    pub base: Duration,
    /// The longest lock.
    pub max: Duration,
}

#[derive(Debug, Default)]
struct LockState {
    failures: u32,
    locks: u32,
    locked_until: Option<Instant>,
}

/// Failed-login counters per user *name* (known or not, so locking reveals nothing about
/// which names exist). Kept in memory: a restart clears them.
#[derive(Debug)]
pub struct Lockout {
    policy: LockoutPolicy,
    state: Mutex<HashMap<String, LockState>>,
}

/// Bound on tracked names; beyond it, names not currently locked are forgotten.
const MAX_TRACKED: usize = 100_000;

impl Lockout {
    /// Empty counters.
    pub fn new(policy: LockoutPolicy) -> Lockout {
        Lockout {
            policy,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// How long `name` stays locked, if it is.
    pub fn locked_for(&self, name: &str, now: Instant) -> Option<Duration> {
        let state = self.state.lock().ok()?;
        let until = state.get(name)?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Count a failure; locks the name when it reaches the threshold. Returns whether this
    /// failure engaged a lock (for the audit record).
    pub fn failure(&self, name: &str, now: Instant) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        if state.len() >= MAX_TRACKED {
            state.retain(|_, s| s.locked_until.is_some_and(|u| u > now));
        }
        let s = state.entry(name.to_owned()).or_default();
        s.failures += 1;
        if s.failures >= self.policy.threshold.max(1) {
            s.failures = 0;
            let factor = 1u32.checked_shl(s.locks.min(16)).unwrap_or(u32::MAX);
            let length = self.policy.base.saturating_mul(factor).min(self.policy.max);
            s.locks = s.locks.saturating_add(1);
            s.locked_until = Some(now + length);
            return true;
        }
        false
    }

    /// A successful login clears the name's counters.
    pub fn success(&self, name: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockout_doubles_up_to_the_maximum() {
        let l = Lockout::new(LockoutPolicy {
            threshold: 2,
            base: Duration::from_secs(60),
            max: Duration::from_secs(150),
        });
        let t = Instant::now();
        assert!(!l.failure("a", t));
        assert_eq!(l.locked_for("a", t), None);
        assert!(l.failure("a", t), "the second failure engages the lock");
        assert_eq!(l.locked_for("a", t), Some(Duration::from_secs(60)));
        let t2 = t + Duration::from_secs(61);
        assert_eq!(l.locked_for("a", t2), None);
        l.failure("a", t2);
        l.failure("a", t2);
        assert_eq!(l.locked_for("a", t2), Some(Duration::from_secs(120)));
        let t3 = t2 + Duration::from_secs(121);
        l.failure("a", t3);
        l.failure("a", t3);
        assert_eq!(l.locked_for("a", t3), Some(Duration::from_secs(150)));
        l.success("a");
        assert_eq!(l.locked_for("a", t3), None);
    }

    #[test]
    fn passwords_and_totp_verify() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", Some(&h)));
        assert!(!verify_password("wrong horse", Some(&h)));
        assert!(!verify_password("correct horse", None));
        let secret = new_totp_secret();
        let code = totp(&secret, "x")
            .expect("totp")
            .generate(1_000_000)
            .to_string();
        assert!(check_totp(&secret, &code, 1_000_000).is_some());
        assert!(check_totp(&secret, &code, 2_000_000).is_none());
        assert!(
            otpauth_uri(&secret, "alice")
                .expect("uri")
                .starts_with("otpauth://totp/")
        );
        assert_eq!(secret_hash("a").len(), 32);
        assert_eq!(random_secret().expect("random").len(), 64);
    }
}
