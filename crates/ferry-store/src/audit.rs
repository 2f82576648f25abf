//! The tamper-evident audit trail (PRODUCT.md §8 "Audit", SECURITY.md §2 IHE ATNA).
//!
//! Every record is sealed into a hash chain: `hash = SHA-256(prev_hash || encoding)`, where
//! `prev_hash` is the previous record's hash (32 zero bytes before the first record) and
//! `encoding` is the canonical, length-prefixed encoding of every field of the record,
//! sequence number and time included (see [`canonical_encoding`]). Appends go through the
//! store's single writer thread, so they are group-committed and durable before
//! [`Store::audit_append`](crate::Store::audit_append) returns, and records are numbered
//! 1, 2, 3… without gaps.
//!
//! **The chain head.** A one-row table `audit_head` holds the last sequence number and hash,
//! updated in the same transaction as the append. Deleting the last records therefore leaves
//! the head pointing past the end, which [`verify`] reports as truncation.
//!
//! **What verification finds** ([`verify`]): a record whose fields were edited (its hash no
//! longer matches), a deleted record (a gap in the numbers), records moved to other numbers
//! (a record's contents match its hash only under another sequence number), a record edited
//! and re-hashed (the next record's link no longer matches), records appended after the head,
//! and truncation of the last records.
//!
//! **What it cannot find.** The chain is not keyed: anyone who can write the database and
//! knows this algorithm can recompute every hash from some record onwards and update the head
//! consistently. Such a rewrite (or a truncation with the head moved back, or forged records
//! appended with the head moved forward) is only detectable against a copy of the head kept
//! outside the database: `ferry audit verify` prints the head, and `--expect-head <hash>`
//! checks that a head recorded earlier is still a record of the chain. Ship the head (or the
//! records) somewhere the database's writers cannot reach (syslog, a WORM bucket, a ticket).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::{Store, StoreError};

/// Tables of the audit trail, created when the store opens (independent of the message
/// schema's version).
pub(crate) const AUDIT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_log (
    seq       INTEGER PRIMARY KEY,
    time_ms   INTEGER NOT NULL,
    node      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT,
    source    TEXT,
    outcome   TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS audit_log_time ON audit_log (time_ms);
CREATE TABLE IF NOT EXISTS audit_shipping (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    shipped_upto INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
) STRICT;
";

/// The hash before the first record: 32 zero bytes, in hex.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The actor of events no person caused.
pub const SYSTEM_ACTOR: &str = "system";

/// Most problems a verification lists (the first is always the first break).
const MAX_PROBLEMS: usize = 100;

/// What happened. The stored form is the snake-case name ([`AuditAction::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    /// A user logged in.
    Login,
    /// A login attempt failed (wrong password, wrong TOTP, locked out…).
    LoginFailed,
    /// A user logged out.
    Logout,
    /// A session ended by idle or absolute timeout.
    SessionExpired,
    /// The configuration changed (details: the diff).
    ConfigChange,
    /// A channel was deployed.
    Deploy,
    /// A channel was undeployed.
    Undeploy,
    /// A channel was started.
    Start,
    /// A channel was stopped.
    Stop,
    /// A channel was paused.
    Pause,
    /// Someone viewed a message's content (PHI access).
    MessageView,
    /// Someone searched messages (PHI access).
    MessageSearch,
    /// Someone exported or downloaded messages (PHI access).
    MessageExport,
    /// Someone reprocessed messages.
    Reprocess,
    /// Someone deleted messages.
    MessageDelete,
    /// A user was created, changed or removed.
    UserChange,
    /// A user's roles changed.
    RoleChange,
    /// A request was refused for lack of permission.
    PermissionDenied,
    /// A TLS handshake was refused (bad or unknown certificate, protocol mismatch…).
    TlsRejected,
    /// Someone read the audit log.
    AuditView,
    /// Audit events were lost before they reached the store (buffer full).
    AuditDropped,
    /// The engine started (details: the configuration's hash).
    EngineStart,
    /// The engine stopped.
    EngineStop,
    /// Encryption keys were rotated.
    KeyRotation,
    /// Retention pruning ran on a channel (details: the cut-offs and how many messages lost
    /// their content or were deleted).
    RetentionPrune,
}

impl AuditAction {
    /// Every action, in declaration order.
    pub const ALL: [AuditAction; 25] = [
        AuditAction::Login,
        AuditAction::LoginFailed,
        AuditAction::Logout,
        AuditAction::SessionExpired,
        AuditAction::ConfigChange,
        AuditAction::Deploy,
        AuditAction::Undeploy,
        AuditAction::Start,
        AuditAction::Stop,
        AuditAction::Pause,
        AuditAction::MessageView,
        AuditAction::MessageSearch,
        AuditAction::MessageExport,
        AuditAction::Reprocess,
        AuditAction::MessageDelete,
        AuditAction::UserChange,
        AuditAction::RoleChange,
        AuditAction::PermissionDenied,
        AuditAction::TlsRejected,
        AuditAction::AuditView,
        AuditAction::AuditDropped,
        AuditAction::EngineStart,
        AuditAction::EngineStop,
        AuditAction::KeyRotation,
        AuditAction::RetentionPrune,
    ];

    /// The stored form, e.g. `"login_failed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Login => "login",
            AuditAction::LoginFailed => "login_failed",
            AuditAction::Logout => "logout",
            AuditAction::SessionExpired => "session_expired",
            AuditAction::ConfigChange => "config_change",
            AuditAction::Deploy => "deploy",
            AuditAction::Undeploy => "undeploy",
            AuditAction::Start => "start",
            AuditAction::Stop => "stop",
            AuditAction::Pause => "pause",
            AuditAction::MessageView => "message_view",
            AuditAction::MessageSearch => "message_search",
            AuditAction::MessageExport => "message_export",
            AuditAction::Reprocess => "reprocess",
            AuditAction::MessageDelete => "message_delete",
            AuditAction::UserChange => "user_change",
            AuditAction::RoleChange => "role_change",
            AuditAction::PermissionDenied => "permission_denied",
            AuditAction::TlsRejected => "tls_rejected",
            AuditAction::AuditView => "audit_view",
            AuditAction::AuditDropped => "audit_dropped",
            AuditAction::EngineStart => "engine_start",
            AuditAction::EngineStop => "engine_stop",
            AuditAction::KeyRotation => "key_rotation",
            AuditAction::RetentionPrune => "retention_prune",
        }
    }

    /// The DICOM PS3.15 / IHE ATNA event: (EventID code, EventTypeCode if any), per the
    /// mapping in SECURITY.md §2. For the ATNA (RFC 3881 XML) form of the syslog feed.
    pub fn atna_event(self) -> (u32, Option<u32>) {
        match self {
            AuditAction::EngineStart => (110100, Some(110120)),
            AuditAction::EngineStop => (110100, Some(110121)),
            AuditAction::Login | AuditAction::LoginFailed => (110114, Some(110122)),
            AuditAction::Logout | AuditAction::SessionExpired => (110114, Some(110123)),
            AuditAction::MessageView
            | AuditAction::Reprocess
            | AuditAction::MessageDelete
            | AuditAction::RetentionPrune => (110110, None),
            AuditAction::MessageSearch => (110112, None),
            AuditAction::MessageExport => (110106, None),
            AuditAction::ConfigChange
            | AuditAction::Deploy
            | AuditAction::Undeploy
            | AuditAction::Start
            | AuditAction::Stop
            | AuditAction::Pause => (110113, Some(110131)),
            AuditAction::KeyRotation => (110113, Some(110129)),
            AuditAction::UserChange => (110113, Some(110137)),
            AuditAction::RoleChange => (110113, Some(110136)),
            AuditAction::TlsRejected => (110113, Some(110126)),
            AuditAction::PermissionDenied => (110113, Some(110132)),
            AuditAction::AuditView => (110101, None),
            AuditAction::AuditDropped => (110100, Some(110133)),
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditAction {
    type Err = String;

    fn from_str(s: &str) -> Result<AuditAction, String> {
        AuditAction::ALL
            .iter()
            .copied()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown audit action `{s}`"))
    }
}

/// Whether the audited action succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditOutcome {
    /// It succeeded.
    Success,
    /// It failed or was refused.
    Failure,
}

impl AuditOutcome {
    /// The stored form: `"success"` or `"failure"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Success => "success",
            AuditOutcome::Failure => "failure",
        }
    }
}

impl fmt::Display for AuditOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditOutcome {
    type Err = String;

    fn from_str(s: &str) -> Result<AuditOutcome, String> {
        match s {
            "success" => Ok(AuditOutcome::Success),
            "failure" => Ok(AuditOutcome::Failure),
            other => Err(format!("unknown audit outcome `{other}`")),
        }
    }
}

/// An event to append, built with chained setters:
///
/// ```
/// use ferry_store::audit::{AuditAction, AuditEvent};
/// let event = AuditEvent::new(AuditAction::MessageView)
///     .actor("alice")
///     .target("channel/adt/message/42")
///     .source_address("192.0.2.7:51234")
///     .detail("stage", "raw");
/// assert_eq!(event.action(), AuditAction::MessageView);
/// ```
///
/// The store fills in the sequence number, the time and (unless [`node`](Self::node) was set)
/// this machine's host name.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    action: AuditAction,
    actor: String,
    node: Option<String>,
    target: Option<String>,
    source: Option<String>,
    outcome: AuditOutcome,
    details: serde_json::Map<String, serde_json::Value>,
}

impl AuditEvent {
    /// An event of `action` by [`SYSTEM_ACTOR`] with outcome success and no details.
    pub fn new(action: AuditAction) -> AuditEvent {
        AuditEvent {
            action,
            actor: SYSTEM_ACTOR.to_owned(),
            node: None,
            target: None,
            source: None,
            outcome: AuditOutcome::Success,
            details: serde_json::Map::new(),
        }
    }

    /// Who did it: a user name, an API token's name, or [`SYSTEM_ACTOR`].
    pub fn actor(mut self, actor: impl Into<String>) -> AuditEvent {
        self.actor = actor.into();
        self
    }

    /// The node that recorded it (default: the host name).
    pub fn node(mut self, node: impl Into<String>) -> AuditEvent {
        self.node = Some(node.into());
        self
    }

    /// What it was done to, e.g. `channel/adt`, `channel/adt/message/42`, `user/bob`.
    pub fn target(mut self, target: impl Into<String>) -> AuditEvent {
        self.target = Some(target.into());
        self
    }

    /// The network address it came from (`ip:port` or `ip`).
    pub fn source_address(mut self, source: impl Into<String>) -> AuditEvent {
        self.source = Some(source.into());
        self
    }

    /// [`source_address`](Self::source_address) from a socket address.
    pub fn peer(self, peer: SocketAddr) -> AuditEvent {
        self.source_address(peer.to_string())
    }

    /// Set the outcome.
    pub fn outcome(mut self, outcome: AuditOutcome) -> AuditEvent {
        self.outcome = outcome;
        self
    }

    /// Outcome failure.
    pub fn failure(self) -> AuditEvent {
        self.outcome(AuditOutcome::Failure)
    }

    /// Add one detail (a JSON value under `key`). Never put message content or secrets here:
    /// the audit log is shipped to collectors that must not hold PHI.
    pub fn detail(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> AuditEvent {
        self.details.insert(key.into(), value.into());
        self
    }

    /// Replace all details with the members of a JSON object (a non-object is stored under
    /// `"value"`).
    pub fn details(mut self, details: serde_json::Value) -> AuditEvent {
        self.details = match details {
            serde_json::Value::Object(map) => map,
            serde_json::Value::Null => serde_json::Map::new(),
            other => {
                let mut map = serde_json::Map::new();
                map.insert("value".into(), other);
                map
            }
        };
        self
    }

    /// The action.
    pub fn action(&self) -> AuditAction {
        self.action
    }
}

/// A sealed record of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Sequence number: 1, 2, 3… without gaps.
    pub seq: i64,
    /// When it was appended, UTC milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The node that recorded it.
    pub node: String,
    /// Who did it (`system` for the engine itself).
    pub actor: String,
    /// What happened (the stored name; see [`AuditRecord::action`]).
    pub action: String,
    /// What it was done to.
    pub target: Option<String>,
    /// The network address it came from.
    pub source: Option<String>,
    /// `success` or `failure`.
    pub outcome: String,
    /// Details, a JSON object as stored.
    pub details: String,
    /// The previous record's hash (hex; [`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// `SHA-256(prev_hash || canonical encoding)`, hex.
    pub hash: String,
}

impl AuditRecord {
    /// The action, when this Ferry knows its name.
    pub fn action(&self) -> Option<AuditAction> {
        self.action.parse().ok()
    }

    /// The record as a JSON object (what `ferry audit list --json` prints and the syslog
    /// feed ships); `details` is embedded as JSON when it parses.
    pub fn to_json(&self) -> serde_json::Value {
        let details = serde_json::from_str::<serde_json::Value>(&self.details)
            .unwrap_or_else(|_| serde_json::Value::String(self.details.clone()));
        serde_json::json!({
            "seq": self.seq,
            "time_ms": self.time_ms,
            "node": self.node,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "source": self.source,
            "outcome": self.outcome,
            "details": details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        })
    }

    /// Recompute this record's hash from its fields and `prev_hash` (`None` when `prev_hash`
    /// is not 64 hex digits).
    pub fn compute_hash(&self) -> Option<String> {
        self.compute_hash_as(self.seq)
    }

    fn compute_hash_as(&self, seq: i64) -> Option<String> {
        let prev = hex_decode(&self.prev_hash)?;
        let mut hasher = Sha256::new();
        hasher.update(prev);
        hasher.update(canonical_encoding(self, seq));
        Some(hex_encode(&hasher.finalize()))
    }
}

/// The canonical encoding of a record under sequence number `seq`: a version tag, then every
/// field in a fixed order, integers as 8 bytes big-endian, strings as a 4-byte big-endian
/// length and their UTF-8 bytes, optional strings behind a 0/1 tag. Unambiguous: no two
/// different records encode alike.
pub fn canonical_encoding(record: &AuditRecord, seq: i64) -> Vec<u8> {
    fn text(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn optional(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                text(out, s);
            }
        }
    }
    let mut out = Vec::with_capacity(128 + record.details.len());
    out.extend_from_slice(b"ferry-audit/1\0");
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&record.time_ms.to_be_bytes());
    text(&mut out, &record.node);
    text(&mut out, &record.actor);
    text(&mut out, &record.action);
    optional(&mut out, record.target.as_deref());
    optional(&mut out, record.source.as_deref());
    text(&mut out, &record.outcome);
    text(&mut out, &record.details);
    out
}

/// SHA-256 of `bytes` in lower-case hex (for details such as a configuration's hash).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex_encode(&Sha256::digest(bytes))
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

fn hex_decode(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// This machine's host name, read once (`localhost` when it cannot be found).
pub fn default_node() -> &'static str {
    static NODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NODE.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".to_owned())
    })
}

/// The chain head: the last sealed record's number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    /// Sequence number of the last record.
    pub seq: i64,
    /// Its hash (hex).
    pub hash: String,
}

impl fmt::Display for AuditHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

fn read_head(conn: &Connection) -> Result<Option<AuditHead>, StoreError> {
    conn.prepare_cached("SELECT seq, hash FROM audit_head WHERE id = 1")
        .and_then(|mut s| {
            s.query_row([], |r| {
                Ok(AuditHead {
                    seq: r.get(0)?,
                    hash: r.get(1)?,
                })
            })
            .optional()
        })
        .map_err(StoreError::sqlite("reading the audit chain head"))
}

/// Seal and insert one record, and move the head, on the writer's connection inside its
/// transaction. The record follows the head (not the last row): if rows after the head were
/// deleted, the gap stays visible.
pub(crate) fn append(conn: &Connection, event: &AuditEvent) -> Result<AuditRecord, StoreError> {
    let head = match read_head(conn)? {
        Some(h) => Some(h),
        // No head yet: a log created before the head existed, or the first record.
        None => conn
            .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .and_then(|mut s| {
                s.query_row([], |r| {
                    Ok(AuditHead {
                        seq: r.get(0)?,
                        hash: r.get(1)?,
                    })
                })
                .optional()
            })
            .map_err(StoreError::sqlite("reading the last audit record"))?,
    };
    let (seq, prev_hash) = match head {
        Some(h) => (h.seq + 1, h.hash),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let mut record = AuditRecord {
        seq,
        time_ms: now_ms(),
        node: event
            .node
            .clone()
            .unwrap_or_else(|| default_node().to_owned()),
        actor: event.actor.clone(),
        action: event.action.as_str().to_owned(),
        target: event.target.clone(),
        source: event.source.clone(),
        outcome: event.outcome.as_str().to_owned(),
        details: serde_json::Value::Object(event.details.clone()).to_string(),
        prev_hash,
        hash: String::new(),
    };
    record.hash = record
        .compute_hash()
        .ok_or_else(|| StoreError::Corrupt("the audit chain head is not a SHA-256 hash".into()))?;
    conn.prepare_cached(
        "INSERT INTO audit_log \
         (seq, time_ms, node, actor, action, target, source, outcome, details, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .and_then(|mut s| {
        s.execute(params![
            record.seq,
            record.time_ms,
            record.node,
            record.actor,
            record.action,
            record.target,
            record.source,
            record.outcome,
            record.details,
            record.prev_hash,
            record.hash
        ])
    })
    .map_err(StoreError::sqlite("appending an audit record"))?;
    conn.prepare_cached(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2) \
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
    )
    .and_then(|mut s| s.execute(params![record.seq, record.hash]))
    .map_err(StoreError::sqlite("moving the audit chain head"))?;
    Ok(record)
}

/// Move the shipping cursor forward (never back) to `seq`.
pub(crate) fn set_shipped(conn: &Connection, seq: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO audit_shipping (id, shipped_upto) VALUES (1, ?1) \
         ON CONFLICT (id) DO UPDATE SET shipped_upto = MAX(shipped_upto, excluded.shipped_upto)",
    )
    .and_then(|mut s| s.execute([seq]))
    .map(|_| ())
    .map_err(StoreError::sqlite("moving the audit shipping cursor"))
}

/// The last record shipped to the collector (0: none yet).
pub(crate) fn shipped_upto(conn: &Connection) -> Result<i64, StoreError> {
    conn.prepare_cached("SELECT shipped_upto FROM audit_shipping WHERE id = 1")
        .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
        .map(|v| v.unwrap_or(0))
        .map_err(StoreError::sqlite("reading the audit shipping cursor"))
}

const SELECT_RECORD: &str = "SELECT seq, time_ms, node, actor, action, target, source, outcome, \
     details, prev_hash, hash FROM audit_log";

fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.get(0)?,
        time_ms: r.get(1)?,
        node: r.get(2)?,
        actor: r.get(3)?,
        action: r.get(4)?,
        target: r.get(5)?,
        source: r.get(6)?,
        outcome: r.get(7)?,
        details: r.get(8)?,
        prev_hash: r.get(9)?,
        hash: r.get(10)?,
    })
}

/// Which records [`search`] returns, in sequence order. Every set criterion must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only records with a sequence number above this.
    pub after_seq: Option<i64>,
    /// Only records at or after this time (UTC ms).
    pub since_ms: Option<i64>,
    /// Only records before this time (UTC ms).
    pub until_ms: Option<i64>,
    /// Only these actions (any of them); empty = all.
    pub actions: Vec<AuditAction>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this target, or targets under it (`channel/adt` matches `channel/adt/message/1`).
    pub target: Option<String>,
    /// Only this outcome.
    pub outcome: Option<AuditOutcome>,
    /// At most this many records (default 1000).
    pub limit: Option<usize>,
}

/// Records matching `filter`, in sequence order.
pub(crate) fn search(
    conn: &Connection,
    filter: &AuditFilter,
) -> Result<Vec<AuditRecord>, StoreError> {
    let mut sql = format!("{SELECT_RECORD} WHERE 1 = 1");
    let mut values: Vec<rusqlite::types::Value> = Vec::new();
    let mut push = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
        values.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", values.len())));
    };
    if let Some(after) = filter.after_seq {
        push(&mut sql, " AND seq > ?", after.into());
    }
    if let Some(since) = filter.since_ms {
        push(&mut sql, " AND time_ms >= ?", since.into());
    }
    if let Some(until) = filter.until_ms {
        push(&mut sql, " AND time_ms < ?", until.into());
    }
    if let Some(actor) = &filter.actor {
        push(&mut sql, " AND actor = ?", actor.clone().into());
    }
    if let Some(outcome) = filter.outcome {
        push(
            &mut sql,
            " AND outcome = ?",
            outcome.as_str().to_owned().into(),
        );
    }
    if let Some(target) = &filter.target {
        push(&mut sql, " AND (target = ?", target.clone().into());
        // Prefix match without LIKE's wildcards: `target/` ≤ t < `target0` (`0` follows `/`).
        push(&mut sql, " OR (target >= ?", format!("{target}/").into());
        push(&mut sql, " AND target < ?))", format!("{target}0").into());
    }
    if !filter.actions.is_empty() {
        sql.push_str(" AND action IN (");
        for (i, action) in filter.actions.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            push(&mut sql, "?", action.as_str().to_owned().into());
        }
        sql.push(')');
    }
    let limit = filter.limit.unwrap_or(1000).min(i64::MAX as usize) as i64;
    push(&mut sql, " ORDER BY seq LIMIT ?", limit.into());
    let mut stmt = conn
        .prepare(&sql)
        .map_err(StoreError::sqlite("preparing an audit search"))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(values), record_from_row)
        .map_err(StoreError::sqlite("searching the audit log"))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::sqlite("reading an audit record"))
}

/// What is wrong with the chain at some record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// The record's fields do not match its hash: it was edited (or forged with a wrong hash).
    Edited,
    /// Sequence numbers are missing: records were deleted.
    Deleted,
    /// The record's contents match its hash only under another sequence number: records
    /// were swapped or renumbered (which is also how a record gets inserted in the middle).
    Reordered,
    /// The record's own hash is consistent but does not follow from the previous record: the
    /// previous record was edited and re-hashed, or replaced by a forged one.
    ChainBroken,
    /// Records exist after the chain head: appended outside the store (forged).
    Inserted,
    /// The head names records that no longer exist: the last records were deleted.
    Truncated,
    /// The head's hash is not the last record's: the last record was replaced or re-hashed.
    HeadMismatch,
    /// The head row is missing although records exist.
    HeadMissing,
    /// The head given with `--expect-head` is not a record of the chain: the log was
    /// rewritten or truncated before that point.
    ExpectedHeadMissing,
}

impl ProblemKind {
    /// A short name: `edited`, `deleted`, `reordered`, `chain_broken`, `inserted`,
    /// `truncated`, `head_mismatch`, `head_missing`, `expected_head_missing`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Edited => "edited",
            ProblemKind::Deleted => "deleted",
            ProblemKind::Reordered => "reordered",
            ProblemKind::ChainBroken => "chain_broken",
            ProblemKind::Inserted => "inserted",
            ProblemKind::Truncated => "truncated",
            ProblemKind::HeadMismatch => "head_mismatch",
            ProblemKind::HeadMissing => "head_missing",
            ProblemKind::ExpectedHeadMissing => "expected_head_missing",
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One break of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditProblem {
    /// The record where the break shows (for `Deleted`/`Truncated`, the first missing number).
    pub seq: i64,
    /// What kind of break.
    pub kind: ProblemKind,
    /// A sentence saying what is wrong.
    pub detail: String,
}

impl fmt::Display for AuditProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {}: {} ({})", self.seq, self.detail, self.kind)
    }
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Records read.
    pub records: u64,
    /// The last record's number and hash (what to keep outside the database).
    pub last: Option<AuditHead>,
    /// The stored chain head.
    pub head: Option<AuditHead>,
    /// Every break found, first break first (at most 100 listed; see `more_problems`).
    pub problems: Vec<AuditProblem>,
    /// More breaks were found than are listed.
    pub more_problems: bool,
    /// With an expected head: the number of the record holding it, when found.
    pub expected_head_at: Option<i64>,
}

impl VerifyReport {
    /// True when the chain is intact.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The first break.
    pub fn first_problem(&self) -> Option<&AuditProblem> {
        self.problems.first()
    }

    /// The report as JSON (what `ferry audit verify --json` prints and
    /// `GET /api/v1/audit/verify` answers): `ok`, `records`, `head` (the last record),
    /// `stored_head`, `expected_head_at`, `problems` (`seq`, `kind`, `detail`) and
    /// `more_problems`.
    pub fn to_json(&self) -> serde_json::Value {
        let head = |h: &AuditHead| serde_json::json!({"seq": h.seq, "hash": h.hash});
        serde_json::json!({
            "ok": self.is_ok(),
            "records": self.records,
            "head": self.last.as_ref().map(head),
            "stored_head": self.head.as_ref().map(head),
            "expected_head_at": self.expected_head_at,
            "problems": self.problems.iter().map(|p| serde_json::json!({
                "seq": p.seq,
                "kind": p.kind.as_str(),
                "detail": p.detail,
            })).collect::<Vec<_>>(),
            "more_problems": self.more_problems,
        })
    }

    fn problem(&mut self, seq: i64, kind: ProblemKind, detail: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(AuditProblem { seq, kind, detail });
        } else {
            self.more_problems = true;
        }
    }
}

fn seq_with_hash(conn: &Connection, column: &str, hash: &str) -> Result<Option<i64>, StoreError> {
    conn.prepare(&format!(
        "SELECT seq FROM audit_log WHERE {column} = ?1 ORDER BY seq LIMIT 1"
    ))
    .and_then(|mut s| s.query_row([hash], |r| r.get(0)).optional())
    .map_err(StoreError::sqlite("looking up an audit record by hash"))
}

/// Whether the audit tables exist (a store written by a Ferry before the audit trail).
pub(crate) fn tables_exist(conn: &Connection) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'audit_log'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(StoreError::sqlite("looking for the audit log"))
}

/// Check the whole chain in one read transaction (a consistent snapshot beside a running
/// writer). `expect_head` is a hash (or `seq:hash`, as printed) recorded earlier outside the
/// database: it must be the hash of a record of the intact chain.
pub(crate) fn verify(
    conn: &Connection,
    expect_head: Option<&str>,
) -> Result<VerifyReport, StoreError> {
    conn.execute_batch("BEGIN")
        .map_err(StoreError::sqlite("starting the audit verification"))?;
    let result = verify_in_snapshot(conn, expect_head);
    let _ = conn.execute_batch("COMMIT");
    result
}

fn verify_in_snapshot(
    conn: &Connection,
    expect_head: Option<&str>,
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    if !tables_exist(conn)? {
        return Ok(report);
    }
    let expected = expect_head.map(|e| {
        let hash = e.rsplit(':').next().unwrap_or(e);
        hash.trim().to_ascii_lowercase()
    });
    let mut stmt = conn
        .prepare(&format!("{SELECT_RECORD} ORDER BY seq"))
        .map_err(StoreError::sqlite("preparing the audit scan"))?;
    let mut rows = stmt
        .query([])
        .map_err(StoreError::sqlite("scanning the audit log"))?;
    let mut expected_seq = 1i64;
    let mut prev_hash = GENESIS_HASH.to_owned();
    // Whether the previous record was already reported: a broken link right after it is the
    // same tampering seen from the next record, not a second one.
    let mut prev_flagged = false;
    while let Some(row) = rows
        .next()
        .map_err(StoreError::sqlite("scanning the audit log"))?
    {
        let record = record_from_row(row).map_err(StoreError::sqlite("reading an audit record"))?;
        report.records += 1;
        let mut flagged = false;
        if record.seq != expected_seq {
            if record.seq > expected_seq {
                let detail = if record.seq == expected_seq + 1 {
                    format!("record {expected_seq} is missing (deleted)")
                } else {
                    format!(
                        "records {expected_seq} to {} are missing (deleted)",
                        record.seq - 1
                    )
                };
                report.problem(expected_seq, ProblemKind::Deleted, detail);
            } else {
                report.problem(
                    record.seq,
                    ProblemKind::Reordered,
                    format!(
                        "sequence number {} where {expected_seq} was expected",
                        record.seq
                    ),
                );
            }
            flagged = true;
        }
        let self_ok = record.compute_hash().as_deref() == Some(record.hash.as_str());
        if !self_ok {
            // Sealed under another number? Try the number after the record its `prev_hash`
            // names, and the number before the record that names its hash.
            let mut sealed_as = None;
            let candidates = [
                seq_with_hash(conn, "hash", &record.prev_hash)?.map(|s| s + 1),
                seq_with_hash(conn, "prev_hash", &record.hash)?.map(|s| s - 1),
                (record.prev_hash == GENESIS_HASH).then_some(1),
            ];
            for candidate in candidates.into_iter().flatten() {
                if candidate != record.seq
                    && record.compute_hash_as(candidate).as_deref() == Some(record.hash.as_str())
                {
                    sealed_as = Some(candidate);
                    break;
                }
            }
            match sealed_as {
                Some(original) => report.problem(
                    record.seq,
                    ProblemKind::Reordered,
                    format!(
                        "record {} holds the record sealed as number {original} (records \
                         swapped or renumbered{})",
                        record.seq,
                        if original < record.seq {
                            "; something was inserted before it"
                        } else {
                            ""
                        }
                    ),
                ),
                None => report.problem(
                    record.seq,
                    ProblemKind::Edited,
                    format!(
                        "record {} does not match its hash: its fields were edited",
                        record.seq
                    ),
                ),
            }
            flagged = true;
        } else if record.prev_hash != prev_hash && !flagged && !prev_flagged {
            let detail = match seq_with_hash(conn, "hash", &record.prev_hash)? {
                Some(j) if j != record.seq - 1 => format!(
                    "record {} follows record {j}, not record {} (records reordered)",
                    record.seq,
                    record.seq - 1
                ),
                _ if record.seq == 1 => {
                    "the first record does not start the chain (records before it were replaced)"
                        .to_owned()
                }
                _ => format!(
                    "record {} does not follow from record {}: record {} was edited and \
                     re-hashed, or replaced",
                    record.seq,
                    record.seq - 1,
                    record.seq - 1
                ),
            };
            report.problem(record.seq, ProblemKind::ChainBroken, detail);
            flagged = true;
        }
        if let Some(e) = &expected
            && report.expected_head_at.is_none()
            && record.hash == *e
        {
            report.expected_head_at = Some(record.seq);
        }
        prev_flagged = flagged;
        prev_hash = record.hash.clone();
        expected_seq = record.seq.saturating_add(1);
        report.last = Some(AuditHead {
            seq: record.seq,
            hash: record.hash,
        });
    }
    drop(rows);
    drop(stmt);
    report.head = read_head(conn)?;
    match (&report.head, &report.last) {
        (None, None) => {}
        (None, Some(last)) => report.problem(
            last.seq,
            ProblemKind::HeadMissing,
            "the chain head row was deleted; truncation cannot be ruled out".to_owned(),
        ),
        (Some(head), None) => report.problem(
            1,
            ProblemKind::Truncated,
            format!(
                "the chain head names record {} but the log is empty (all records deleted)",
                head.seq
            ),
        ),
        (Some(head), Some(last)) => {
            if head.seq > last.seq {
                let detail = if head.seq == last.seq + 1 {
                    format!(
                        "record {} is missing: the log ends before the chain head (truncated)",
                        head.seq
                    )
                } else {
                    format!(
                        "records {} to {} are missing: the log ends before the chain head \
                         (truncated)",
                        last.seq + 1,
                        head.seq
                    )
                };
                report.problem(last.seq + 1, ProblemKind::Truncated, detail);
            } else if head.seq < last.seq {
                report.problem(
                    head.seq + 1,
                    ProblemKind::Inserted,
                    format!(
                        "records {} to {} come after the chain head (record {}): appended \
                         outside Ferry",
                        head.seq + 1,
                        last.seq,
                        head.seq
                    ),
                );
            } else if head.hash != last.hash {
                report.problem(
                    last.seq,
                    ProblemKind::HeadMismatch,
                    format!(
                        "record {} is not the record the chain head sealed (replaced or \
                         re-hashed)",
                        last.seq
                    ),
                );
            }
        }
    }
    if let Some(e) = expected
        && report.expected_head_at.is_none()
    {
        report.problem(
            report.last.as_ref().map_or(1, |l| l.seq),
            ProblemKind::ExpectedHeadMissing,
            format!(
                "no record has the expected hash {e}: the log was rewritten or truncated \
                 before it"
            ),
        );
    }
    Ok(report)
}

/// Verify the audit log of the store file at `path` without starting a store: opens the file
/// (which must exist) with writes disabled (`query_only`), so it is safe beside a running
/// `ferry run`.
pub fn verify_file(
    path: &std::path::Path,
    expect_head: Option<&str>,
) -> Result<VerifyReport, StoreError> {
    let conn = open_existing(path)?;
    verify(&conn, expect_head)
}

/// Search the audit log of the store file at `path` (see [`verify_file`]).
pub fn search_file(
    path: &std::path::Path,
    filter: &AuditFilter,
) -> Result<Vec<AuditRecord>, StoreError> {
    let conn = open_existing(path)?;
    if !tables_exist(&conn)? {
        return Ok(Vec::new());
    }
    search(&conn, filter)
}

fn open_existing(path: &std::path::Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Io {
            context: format!("opening the store {}", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    // Read-write without create: a WAL database needs its -shm file, which a purely read-only
    // connection cannot create after a clean shutdown removed it; `query_only` forbids writes.
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(StoreError::sqlite("opening the store"))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(StoreError::sqlite("setting busy_timeout"))?;
    conn.pragma_update(None, "query_only", true)
        .map_err(StoreError::sqlite("making the connection read-only"))?;
    Ok(conn)
}

/// A non-blocking way to append audit events from places that must never wait on the store
/// (accept loops): events go into a bounded buffer drained by one task that appends them.
/// When the buffer is full the event is dropped, counted ([`AuditSink::dropped`]) and logged
/// at WARN, never silently; the next event that gets through is preceded by an
/// [`AuditAction::AuditDropped`] record saying how many were lost.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<SinkCommand>,
    dropped: Arc<AtomicU64>,
}

enum SinkCommand {
    Event(Box<AuditEvent>),
    Close(oneshot::Sender<()>),
}

impl fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditSink")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl AuditSink {
    /// Start the appending task on the current tokio runtime, with room for `capacity`
    /// waiting events.
    pub fn spawn(store: Store, capacity: usize) -> AuditSink {
        let (tx, mut rx) = mpsc::channel::<SinkCommand>(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        tokio::spawn(async move {
            let mut reported = 0u64;
            while let Some(command) = rx.recv().await {
                // Losses are recorded before the next event that got through (and at close).
                let lost = counter.load(Ordering::Relaxed);
                if lost > reported {
                    let note = AuditEvent::new(AuditAction::AuditDropped)
                        .failure()
                        .detail("dropped", lost - reported)
                        .detail("dropped_total", lost);
                    if store.audit_append(note).await.is_ok() {
                        reported = lost;
                    }
                }
                match command {
                    SinkCommand::Event(event) => {
                        let action = event.action();
                        if let Err(error) = store.audit_append(*event).await {
                            tracing::error!(%action, %error, "could not append an audit record");
                        }
                    }
                    SinkCommand::Close(done) => {
                        let _ = done.send(());
                        return;
                    }
                }
            }
        });
        AuditSink { tx, dropped }
    }

    /// Queue `event` without waiting. Returns false (and counts and logs the loss) when the
    /// buffer is full or the sink is closed.
    pub fn record(&self, event: AuditEvent) -> bool {
        let action = event.action();
        match self.tx.try_send(SinkCommand::Event(Box::new(event))) {
            Ok(()) => true,
            Err(_) => {
                let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(%action, dropped_total = total,
                    "audit buffer full or closed: audit event dropped");
                false
            }
        }
    }

    /// Events dropped because the buffer was full (or the sink closed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The counter behind [`dropped`](Self::dropped), for a metrics exporter.
    pub fn dropped_counter(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }

    /// Append everything queued before this call, then stop the task. Later
    /// [`record`](Self::record)s are dropped (and counted).
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(SinkCommand::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let bytes: Vec<u8> = (0u8..32).map(|b| b.wrapping_mul(37)).collect();
        let text = hex_encode(&bytes);
        assert_eq!(hex_decode(&text).map(|a| a.to_vec()), Some(bytes));
        assert_eq!(hex_decode("zz"), None);
        assert_eq!(hex_decode(&"G".repeat(64)), None);
    }

    #[test]
    fn actions_round_trip() {
        for action in AuditAction::ALL {
            assert_eq!(action.as_str().parse::<AuditAction>(), Ok(action));
        }
    }

    #[test]
    fn encoding_is_unambiguous_between_fields() {
        let base = AuditRecord {
            seq: 1,
            time_ms: 0,
            node: "n".into(),
            actor: "ab".into(),
            action: "c".into(),
            target: None,
            source: Some(String::new()),
            outcome: "success".into(),
            details: "{}".into(),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        let shifted = AuditRecord {
            actor: "a".into(),
            action: "bc".into(),
            ..base.clone()
        };
        let absent = AuditRecord {
            source: None,
            ..base.clone()
        };
        assert_ne!(
            canonical_encoding(&base, 1),
            canonical_encoding(&shifted, 1)
        );
        assert_ne!(canonical_encoding(&base, 1), canonical_encoding(&absent, 1));
        assert_ne!(base.compute_hash(), base.compute_hash_as(2));
    }
}
