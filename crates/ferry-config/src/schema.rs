//! The configuration tables. Each field's doc comment is its reference documentation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use crate::values::{ByteSize, Duration, Secret, Text};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[store]`: where messages are kept.
    #[serde(default)]
    pub store: StoreConfig,
    /// `[admin]`: the admin listener (health, metrics).
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[audit]`: the audit trail (shipping to an external collector).
    #[serde(default)]
    pub audit: AuditConfig,
    /// `[cluster]`: run as one of several nodes on one PostgreSQL store.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// `include = ["channels/*.toml"]`: more files holding `[[channel]]` tables, relative to
    /// this file; `*` matches within a file name. Matched files are read in name order.
    #[serde(default)]
    pub include: Vec<Text>,
    /// `[[channel]]`: the channels, in order.
    #[serde(default, rename = "channel")]
    pub channels: Vec<ChannelConfig>,
    /// `[alerts]`: sampling interval, node name and the named notification actions (see
    /// [`crate::alerts`] for an example).
    #[serde(default)]
    pub alerts: crate::alerts::AlertsConfig,
    /// `[[alert]]`: rules that notify the actions of `[alerts.actions]` (see
    /// [`crate::alerts`]).
    #[serde(default, rename = "alert")]
    pub alert_rules: Vec<crate::alerts::AlertConfig>,
    /// `[retention]`: how long messages are kept, for every channel that does not say
    /// otherwise (its `retention = { … }`), and how the background pruner runs. Absent: every
    /// message is kept forever.
    #[serde(default)]
    pub retention: RetentionDefaults,
    /// Non-fatal findings of validation (for example plain-HTTP URLs).
    #[serde(skip)]
    pub(crate) warnings: Vec<String>,
    /// Each channel's `[[channel]]` section in canonical form, secrets redacted (see
    /// [`crate::section`]), by channel name.
    #[serde(skip)]
    pub(crate) channel_sections: BTreeMap<String, String>,
}

/// `[store]`: the durable message store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite database file, relative to the configuration file. Default `"data/ferry.db"`.
    /// Its directory is created if missing.
    pub path: Option<PathBuf>,
    /// PostgreSQL URL instead of SQLite, libpq's form
    /// (`postgres://user:password@host:5432/database`; give the password with `${env:…}` or
    /// `${file:…}`). Several Ferry nodes may share one database. Without `[store.tls]` the
    /// host must be loopback or a Unix socket: a password never crosses a network in clear.
    pub url: Option<Secret>,
    /// Encryption at rest of message content, maps, responses and error texts with
    /// AES-256-GCM, e.g. `encryption = { key = "${file:/etc/ferry/key}", key_id = "2026-12",
    /// old_keys = { "2026-06" = "${env:OLD_KEY}" } }`. Absent: content is stored in the clear
    /// (and a store holding encrypted records refuses to open).
    pub encryption: Option<EncryptionConfig>,
    /// `[store.tls]`: TLS to the PostgreSQL server of `url`, e.g. `tls = { ca = "db-ca.pem" }`
    /// or, with a client certificate, `tls = { ca = "db-ca.pem", cert = "ferry.pem", key =
    /// "ferry.key" }`. Absent: the connection is plain, which is only allowed to a loopback
    /// host or a Unix socket. Not used with `path` (SQLite).
    pub tls: Option<StoreTlsConfig>,
}

/// `[store.tls]`: how Ferry verifies the PostgreSQL server and, optionally, proves its own
/// identity to it. The server's certificate must chain to `ca` and name the host of `url`
/// (hostname verification cannot be turned off). Paths are relative to the configuration
/// file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreTlsConfig {
    /// CA bundle (PEM) trusted for the server's certificate. Default: the operating system's
    /// trust store.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) presented to the server, for certificate
    /// authentication. Needs `key`.
    pub cert: Option<PathBuf>,
    /// Private key (PEM, PKCS#8, PKCS#1 or SEC1; not encrypted) of `cert`.
    pub key: Option<PathBuf>,
}

/// `[cluster]`: several Ferry nodes sharing one PostgreSQL store (`[store] url`).
///
/// Every node runs every channel's listener and stores what it receives. Each destination
/// queue is delivered by exactly one node at a time, the holder of its lease, so order holds;
/// polling sources poll on one node only. When a node dies, its leases expire after
/// `lease_ttl` and the other nodes take its queues over. Statistics, the audit chain and
/// message history live in the shared store. Lifecycle changes made through one node's
/// admin API (start, pause, stop) apply to that node (each node's admin API is its own);
/// a stopped destination queue is simply worked by another node that holds it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Take part in a cluster. Requires `[store] url`. Default `false`: a single node works
    /// every queue.
    #[serde(default)]
    pub enabled: bool,
    /// This node's id, unique in the cluster and stable across restarts (so a restarted node
    /// gets its leases back at once). Default: `<hostname>-<pid>`.
    pub node_id: Option<Text>,
    /// How long a lease lasts without renewal, e.g. `"5s"` (the default). Leases are renewed
    /// every third of it; a dead node's queues are taken over after about
    /// `lease_ttl + lease_ttl / 3`. At least `"1s"`.
    pub lease_ttl: Option<Duration>,
    /// How often a node re-scans the queues it owns for messages other nodes received (their
    /// ingests do not wake it), e.g. `"200ms"` (the default).
    pub queue_poll: Option<Duration>,
}

/// The default `[cluster] lease_ttl`.
pub const DEFAULT_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(5);
/// The default `[cluster] queue_poll`.
pub const DEFAULT_QUEUE_POLL: std::time::Duration = std::time::Duration::from_millis(200);

impl ClusterConfig {
    /// `lease_ttl`, or its default.
    pub fn lease_ttl(&self) -> std::time::Duration {
        self.lease_ttl.map_or(DEFAULT_LEASE_TTL, |d| d.get())
    }

    /// `queue_poll`, or its default.
    pub fn queue_poll(&self) -> std::time::Duration {
        self.queue_poll.map_or(DEFAULT_QUEUE_POLL, |d| d.get())
    }
}

/// `[store] encryption`: the keys of encryption at rest.
///
/// A key is 32 random bytes written as 64 hexadecimal digits or as standard base64 (44
/// characters with the `=` padding), for example from `openssl rand -base64 32`. Give it with
/// `${file:…}` or `${env:…}`, never in the file itself. Rotation: make a new key the `key`
/// with a new `key_id`, move the previous one into `old_keys`, restart, and run `ferry keys
/// rotate` (or let `ferry run` re-encrypt in the background); remove the old key once
/// rotation reports done.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// The current key: encrypts every record written, decrypts those under `key_id`.
    pub key: Secret,
    /// The current key's id, stored with every record it encrypts: 1 to 64 letters, digits,
    /// `-`, `_` or `.` (a date such as `"2026-12"` works well). Required.
    pub key_id: Text,
    /// Previous keys by id: they only decrypt records written under them, until rotation has
    /// re-encrypted those under `key`. Default none.
    #[serde(default)]
    pub old_keys: BTreeMap<String, Secret>,
}

/// Decoded key material; wiped when dropped.
pub type KeyBytes = zeroize::Zeroizing<Vec<u8>>;

impl EncryptionConfig {
    /// The current key id and key, then each old key id and key, decoded. Errors name the key
    /// id, never the value.
    pub fn keys(&self) -> Result<Vec<(String, KeyBytes)>, String> {
        let mut out = Vec::with_capacity(1 + self.old_keys.len());
        let current = self.key_id.as_str();
        check_key_id(current)?;
        out.push((current.to_owned(), decode_key(current, self.key.expose())?));
        for (id, key) in &self.old_keys {
            check_key_id(id)?;
            if id == current {
                return Err(format!("key id `{id}` is both `key_id` and in `old_keys`"));
            }
            out.push((id.clone(), decode_key(id, key.expose())?));
        }
        Ok(out)
    }
}

fn check_key_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid key id `{id}`: use 1 to 64 letters, digits, `-`, `_` or `.`"
        ))
    }
}

fn decode_key(id: &str, text: &str) -> Result<KeyBytes, String> {
    use base64::Engine as _;
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut out = Vec::with_capacity(32);
        for pair in text.as_bytes().chunks(2) {
            let digits = std::str::from_utf8(pair).map_err(|_| "not hex".to_owned())?;
            out.push(u8::from_str_radix(digits, 16).map_err(|_| "not hex".to_owned())?);
        }
        KeyBytes::new(out)
    } else {
        KeyBytes::new(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| {
                    format!(
                        "key `{id}` is neither 64 hex digits nor base64 (the value is not shown)"
                    )
                })?,
        )
    };
    if bytes.len() != 32 {
        return Err(format!(
            "key `{id}` is {} bytes; AES-256 needs exactly 32 (64 hex digits or 44 base64 characters)",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// `[audit]`: the tamper-evident audit trail. Records are always kept in the store; this
/// section only says where else to send them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `[audit.syslog]`: ship every record to a syslog collector over TLS.
    pub syslog: Option<AuditSyslogConfig>,
}

/// `[audit.syslog]`: syslog RFC 5424 over TLS (RFC 5425 octet-counting framing), one audit
/// record per message (facility 10), as JSON or as an IHE ATNA audit message (`format`).
/// Records written while the collector is unreachable stay in the store and are sent once it
/// is back, oldest first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSyslogConfig {
    /// Collector address, `host:port` (the registered syslog-TLS port is 6514).
    pub address: String,
    /// Name the collector's certificate must carry. Default: the host part of `address`.
    pub server_name: Option<String>,
    /// Trust for the collector (`ca`; default: the system's roots) and, for mTLS, this node's
    /// `cert` and `key`.
    pub tls: Option<TlsConfig>,
    /// What each message carries. `"json"` (the default): the whole record as JSON, MSGID
    /// `ferry-audit`, sequence number and chain hashes included. `"atna"`: the DICOM PS3.15
    /// A.5 / RFC 3881 `AuditMessage` XML that an IHE ATNA Audit Record Repository reads,
    /// MSGID `IHE+RFC-3881`, with the record's sequence number in `[meta sequenceId]` (the
    /// chain hashes stay on the node: `ferry audit verify`).
    #[serde(default)]
    pub format: AuditSyslogFormat,
}

/// The form of the messages of `[audit.syslog]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSyslogFormat {
    /// One JSON audit record per message (MSGID `ferry-audit`).
    #[default]
    Json,
    /// One IHE ATNA (DICOM PS3.15 A.5, RFC 3881) `AuditMessage` XML per message (MSGID
    /// `IHE+RFC-3881`).
    Atna,
}

/// `[admin]`: the admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on, `IP:port`. Default `"127.0.0.1:8480"`. Port 0 picks a free port.
    #[serde(default = "default_admin_listen", deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate and key (and mTLS with `client_ca`).
    pub tls: Option<TlsConfig>,
    /// A REST API session ends after this long without an authenticated request. Default
    /// `"15m"`.
    #[serde(default = "default_session_idle")]
    pub session_idle_timeout: Duration,
    /// A REST API session ends this long after login, however active. Default `"8h"`.
    #[serde(default = "default_session_absolute")]
    pub session_absolute_timeout: Duration,
    /// Consecutive failed logins for one user name that lock it. Default `5`.
    #[serde(default = "default_lockout_threshold")]
    pub lockout_threshold: u32,
    /// How long the first lockout lasts; each further lockout of the same name (without a
    /// successful login in between) doubles it, up to `lockout_max`. Default `"1m"`.
    #[serde(default = "default_lockout_base")]
    pub lockout_base: Duration,
    /// The longest lockout. Default `"15m"`.
    #[serde(default = "default_lockout_max")]
    pub lockout_max: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            tls: None,
            session_idle_timeout: default_session_idle(),
            session_absolute_timeout: default_session_absolute(),
            lockout_threshold: default_lockout_threshold(),
            lockout_base: default_lockout_base(),
            lockout_max: default_lockout_max(),
        }
    }
}

fn default_session_idle() -> Duration {
    Duration::secs(15 * 60)
}

fn default_session_absolute() -> Duration {
    Duration::secs(8 * 3600)
}

fn default_lockout_threshold() -> u32 {
    5
}

fn default_lockout_base() -> Duration {
    Duration::secs(60)
}

fn default_lockout_max() -> Duration {
    Duration::secs(15 * 60)
}

impl AdminConfig {
    /// The listen address.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8480))
}

/// A `tls = { … }` table. The same keys everywhere; which are required depends on where it is:
/// a listener needs `cert` and `key` (and `client_ca` to require client certificates); a
/// client uses `ca` to trust the server (default: the operating system's trust store) and
/// `cert` + `key` to present its own identity. Paths are relative to the configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Own certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Own private key (PEM, PKCS#8, PKCS#1 or SEC1; not encrypted).
    pub key: Option<PathBuf>,
    /// CA bundle (PEM) trusted for the peer's certificate (clients).
    pub ca: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates must chain to (listeners). Setting it makes
    /// client certificates required (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Client identities allowed in (listeners with `client_ca`): each entry is matched against
    /// the certificate's subject CN and its subject alternative names (DNS names ignore case).
    /// Empty: any certificate from `client_ca` is allowed.
    #[serde(default)]
    pub allowed_clients: Vec<String>,
    /// Certificate revocation lists (listeners with `client_ca`), each a PEM (`X509 CRL`
    /// blocks) or DER file: a client certificate they revoke is refused in the handshake and
    /// recorded as `tls_rejected`. Fail closed: once set, a client certificate that no listed
    /// CRL covers (give one CRL per issuing CA) and every certificate of a CRL whose
    /// `nextUpdate` has passed are refused too. The files are re-read when they change,
    /// without a restart; each CRL's `nextUpdate` is on `ferry_tls_certificate_expiry_days`
    /// (`kind="crl"`). Empty: no revocation check.
    #[serde(default)]
    pub crl: Vec<PathBuf>,
}

/// When the source answers the sender.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResponseMode {
    /// Answer once the message is durably stored (store and forward). The default.
    #[default]
    OnReceive,
    /// Answer with the outcome of the source filter and transformer: `AE` when a step failed,
    /// `AR` for a filtered message when `reject_filtered = true` (else `AA`).
    AfterTransform,
    /// Wait until the destination named by `response_from` (default: the first) has finished
    /// the message and relay its response: a downstream HL7 ACK as received, otherwise `AA`
    /// when delivered and `AE` when it failed or `response_timeout` passed.
    AfterDelivery,
}

/// A `[[channel]]`: one source, its destinations, and settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// Unique name: letters, digits, `-`, `_`, `.`. Appears in logs, metrics and the store.
    pub name: String,
    /// Set to `false` to keep the channel in the file without deploying it. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where messages come from: `{ type = "mllp" | "http" | "http-poll", … }`.
    pub source: SourceConfig,
    /// When the sender gets its acknowledgement: `"on-receive"` (the default: positive once
    /// durably stored), `"after-transform"` or `"after-delivery"`. In enhanced mode (MSH-15
    /// set) the first answer is always the commit ACK `CA`, followed by the application ACK
    /// with this outcome when MSH-16 asks for it (`AL`, `ER`, `SU`).
    #[serde(default)]
    pub response: ResponseMode,
    /// `response = "after-delivery"`: the destination whose response is relayed. Default: the
    /// channel's first destination.
    pub response_from: Option<String>,
    /// `response = "after-delivery"`: longest wait for the destination; then the answer is
    /// `AE` and the message stays stored and queued. Default `"30s"`.
    #[serde(default = "thirty_seconds")]
    pub response_timeout: Duration,
    /// `response = "after-transform"`: answer a message a source filter refused with `AR`
    /// instead of `AA`. Default `false`.
    #[serde(default)]
    pub reject_filtered: bool,
    /// `[[channel.filter]]`: rules on HL7 paths. Every one must pass, else the message is
    /// stored as `FILTERED`, acknowledged `AA`, and sent to no destination.
    #[serde(default, rename = "filter")]
    pub filters: Vec<FilterConfig>,
    /// `[[channel.transform]]`: steps that edit the message after the source filters, in
    /// order, before it is queued for the destinations.
    #[serde(default, rename = "transform")]
    pub transforms: Vec<TransformConfig>,
    /// `preprocess = { js = "pre.js" }` (or `js_inline`): a JavaScript preprocessor that gets
    /// the raw text as `message` before anything parses it and returns the text to use. The
    /// raw message is stored as received.
    pub preprocess: Option<ScriptConfig>,
    /// `[channel.scripts]`: settings of the channel's JavaScript (libraries, config map,
    /// limits).
    #[serde(default)]
    pub scripts: ScriptSettings,
    /// `[[channel.destination]]`: where messages go, each with its own durable queue.
    #[serde(default, rename = "destination")]
    pub destinations: Vec<DestinationConfig>,
    /// `dedupe = { window = "24h" }`: duplicate detection; absent means off, present means on.
    /// An accepted message whose MSH-3, MSH-4 and MSH-10 (as received) equal those of a message
    /// accepted on this channel within the window is answered with that message's ACK, byte
    /// for byte, and not dispatched again. It is still stored (source status `FILTERED`, error
    /// `duplicate of message N`, no destination rows) and counted in
    /// `ferry_messages_duplicate_total`. The window is measured from the original (the first
    /// dispatched message), not from later duplicates. Rejected and source-filtered messages
    /// are never originals.
    pub dedupe: Option<DedupeConfig>,
    /// `index = { mrn = "PID-3.1", visit = "PV1-19" }` (or a `[channel.index]` table): the
    /// metadata stored with every received message for exact-match search in the admin API
    /// (`GET /api/v1/channels/{channel}/messages?meta=mrn:12345`). Each key (1 to 32 letters,
    /// digits, `_` or `-`) names an HL7 path; its value is read with escapes decoded, from the
    /// first repetition unless the path names one (`PID-3(2).1`), and indexed when present,
    /// non-empty and at most 256 bytes. At most 16 keys. Absent: `{ mrn = "PID-3.1" }`, the
    /// patient's first identifier; `index = {}` indexes nothing. With `[store] encryption`
    /// the store keeps a keyed blind index (HMAC-SHA256) of each value, never the value in
    /// the clear. Messages stored before a key was added are not indexed under it.
    pub index: Option<BTreeMap<String, String>>,
    /// `retention = { content = "30d", metadata = "90d" }`: how long this channel's messages
    /// are kept, overriding `[retention]` field by field (a field left out takes the
    /// `[retention]` value; `"forever"` keeps for good whatever `[retention]` says). See
    /// [`RetentionConfig`].
    pub retention: Option<RetentionConfig>,
}

/// A retention period: a [`Duration`] (`"30d"`, `"12h"`) or `"forever"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Keep for good.
    Forever,
    /// Keep for this long after the message was received.
    For(Duration),
}

impl Keep {
    /// The period, `None` for [`Keep::Forever`].
    pub fn period(self) -> Option<std::time::Duration> {
        match self {
            Keep::Forever => None,
            Keep::For(d) => Some(d.get()),
        }
    }
}

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Keep, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "forever" {
            return Ok(Keep::Forever);
        }
        Duration::parse(&text)
            .map(Keep::For)
            .map_err(|e| serde::de::Error::custom(format!("{e}, or \"forever\"")))
    }
}

/// `retention = { … }` on a channel: how long its messages are kept. Each field left out
/// takes its value from `[retention]`.
///
/// ```toml
/// retention = { content = "30d", metadata = "90d" }
/// ```
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// How long a message's content (the raw message, transformed and encoded content,
    /// responses, maps) is kept after it was received; then the content is deleted and the
    /// message stays browsable by its metadata and statuses, marked `content_pruned`.
    /// `"forever"` keeps it.
    pub content: Option<Keep>,
    /// How long a message is kept at all after it was received; then it is deleted with its
    /// statuses, search metadata and dedupe key. Must not be shorter than `content`.
    /// `"forever"` keeps it.
    pub metadata: Option<Keep>,
    /// Also prune messages with a connector in `ERROR` (a rejected message, a delivery that
    /// failed for good). Default `false`: they are kept until asked, to be looked at and
    /// reprocessed.
    pub prune_errored: Option<bool>,
    /// Also prune messages still waiting at a destination (`QUEUED`, or received and not yet
    /// processed). Default `false`. When `true`, a queued message whose content is pruned can
    /// no longer be sent: its destination is set to `ERROR`; a deleted one leaves its queue.
    pub prune_queued: Option<bool>,
}

/// `[retention]`: defaults of every channel's retention, and the background pruner.
///
/// ```toml
/// [retention]
/// content = "30d"
/// metadata = "90d"
/// interval = "1h"
/// batch = 1000
/// ```
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionDefaults {
    /// Content retention of channels that do not set their own (see
    /// [`RetentionConfig::content`]). Default: forever.
    pub content: Option<Keep>,
    /// Message retention of channels that do not set their own (see
    /// [`RetentionConfig::metadata`]). Default: forever.
    pub metadata: Option<Keep>,
    /// Default of [`RetentionConfig::prune_errored`]. Default `false`.
    #[serde(default)]
    pub prune_errored: bool,
    /// Default of [`RetentionConfig::prune_queued`]. Default `false`.
    #[serde(default)]
    pub prune_queued: bool,
    /// How often `ferry run` prunes every channel that has a retention: the first run starts
    /// one interval after startup. Default `"1h"`; at least `"1s"`.
    #[serde(default = "one_hour")]
    pub interval: Duration,
    /// Messages pruned per write transaction (each batch is one short transaction between
    /// ingests, so ingest waits for at most one batch). Default `1000`; 1 to 100000.
    #[serde(default = "thousand")]
    pub batch: u32,
}

impl Default for RetentionDefaults {
    fn default() -> RetentionDefaults {
        RetentionDefaults {
            content: None,
            metadata: None,
            prune_errored: false,
            prune_queued: false,
            interval: one_hour(),
            batch: thousand(),
        }
    }
}

fn one_hour() -> Duration {
    Duration::secs(3600)
}

fn thousand() -> u32 {
    1000
}

/// A channel's effective retention: its `retention = { … }` over `[retention]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Delete content this long after receipt (`None`: keep).
    pub content: Option<std::time::Duration>,
    /// Delete messages this long after receipt (`None`: keep).
    pub metadata: Option<std::time::Duration>,
    /// Prune messages with a connector in `ERROR` too.
    pub prune_errored: bool,
    /// Prune messages still queued too.
    pub prune_queued: bool,
}

impl Retention {
    /// Whether anything is ever pruned.
    pub fn is_forever(&self) -> bool {
        self.content.is_none() && self.metadata.is_none()
    }
}

impl Config {
    /// The effective retention of `channel` (its own fields over `[retention]`).
    pub fn retention_for(&self, channel: &ChannelConfig) -> Retention {
        let d = &self.retention;
        let c = channel.retention.unwrap_or_default();
        Retention {
            content: c.content.or(d.content).and_then(Keep::period),
            metadata: c.metadata.or(d.metadata).and_then(Keep::period),
            prune_errored: c.prune_errored.unwrap_or(d.prune_errored),
            prune_queued: c.prune_queued.unwrap_or(d.prune_queued),
        }
    }
}

/// `dedupe = { … }` on a channel.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// How long a message stays an original that later copies are duplicates of. Default
    /// `"24h"`; must be longer than zero.
    #[serde(default = "one_day")]
    pub window: Duration,
}

/// One `[[channel.filter]]` rule: a `field` (an HL7 path such as `MSH-9.2` or `PID-3(2).1`)
/// and exactly one test of its value, or `any` (a list of rules of which one must pass).
/// Values are read with escapes decoded; a path without a repetition reads the first one; an
/// absent value is the empty text.
///
/// ```toml
/// [[channel.filter]]
/// field = "MSH-9.2"
/// in = ["A01", "A04", "A08"]
///
/// [[channel.filter]]
/// any = [{ field = "PV1-2", equals = "I" }, { field = "PV1-2", equals = "E" }]
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The HL7 path whose value is tested. Required with every test but `any`.
    pub field: Option<String>,
    /// Passes when the value equals this text.
    pub equals: Option<String>,
    /// Passes when the value is one of these texts.
    #[serde(rename = "in")]
    pub one_of: Option<Vec<String>>,
    /// Passes when the value contains this text.
    pub contains: Option<String>,
    /// Passes when the value matches this regular expression (Rust `regex` syntax,
    /// unanchored: use `^…$` to match the whole value).
    pub regex: Option<String>,
    /// `true`: passes when the path holds a non-empty value; `false`: when it does not.
    pub exists: Option<bool>,
    /// Passes when at least one of these rules passes.
    pub any: Option<Vec<FilterConfig>>,
    /// `js = "filters/inpatient.js"`: a JavaScript filter (sandboxed; `return true` passes).
    pub js: Option<PathBuf>,
    /// `js_inline = 'return msg.get("PV1-2") === "I";'`: a JavaScript filter written here.
    pub js_inline: Option<String>,
    /// `true` inverts the rule. Default `false`.
    #[serde(default)]
    pub not: bool,
}

fn yes() -> bool {
    true
}

/// One `[[channel.transform]]` (or `[[channel.destination.transform]]`) step: a table with
/// **exactly one** of the keys below. Steps run in the order written. Paths are HL7 paths
/// (`PID-5.1`, `OBX[2]-5`, `PID-3(2).1`); setting or deleting a whole field (`PID-3`) acts
/// on every repetition. Files (`table`, `template`, `js`) are relative to the configuration
/// file and are read when the configuration is deployed, so `ferry check` reports a missing
/// or malformed one.
///
/// ```toml
/// [[channel.transform]]
/// set = { field = "MSH-5", value = "SCHEDULER" }
///
/// [[channel.transform]]
/// map = { field = "PV1-2", table = "tables/patient-class.csv", default = "U" }
///
/// [[channel.transform]]
/// drop_segment = "NTE"
/// ```
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// `set = { field = "MSH-5", value = "SCHEDULER" }`: write text at a path (delimiters
    /// in it are escaped); `null = true` instead of `value` writes the HL7 null `""`. A value
    /// that is not there yet is added (separators padded, a missing segment appended).
    pub set: Option<SetConfig>,
    /// `copy = { from = "PID-3.1", to = "PID-2" }`: copy the raw value, components and
    /// escapes included. A target at a lower level than the source gets the first
    /// repetition / component / subcomponent. An absent source empties an existing target.
    pub copy: Option<CopyConfig>,
    /// `delete = { field = "PV1-3" }`: empty the value at a path; `PID-3(2)` removes that
    /// repetition. An absent value is no change.
    pub delete: Option<DeleteConfig>,
    /// `add_segment = { text = "ZPI|1", after = "PID" }`: add a segment written as ER7 (in
    /// the message's delimiters). `after = "X"`: after the last X; `before = "X"`: before the
    /// first X; neither: at the end. A message without X is an error.
    pub add_segment: Option<AddSegmentConfig>,
    /// `drop_segment = "NTE"`: remove every NTE segment; `"OBX[2]"` removes only the second
    /// OBX.
    pub drop_segment: Option<String>,
    /// `rename_segment = { from = "ZPI", to = "ZP1" }`: rename every ZPI (or one, with
    /// `from = "ZPI[2]"`).
    pub rename_segment: Option<RenameSegmentConfig>,
    /// `map = { field = "PV1-2", table = "tables/patient-class.csv", default = "U" }`: map
    /// the value through a code table (CSV, one `from,to` per line, optional `from,to`
    /// header, `#` comments). Unmapped values are kept unless `default` is given.
    pub map: Option<MapConfig>,
    /// `template = "templates/siu.hl7"`: build the HL7 message from a JSON body with an HL7
    /// template (placeholders `{{ a.b[0].c | dtm }}`, `{{#each items}}` blocks). Only as the
    /// first transform of a channel, whose source receives JSON.
    pub template: Option<PathBuf>,
    /// `js = "transforms/adt.js"`: a JavaScript transform (the sandboxed script engine).
    pub js: Option<PathBuf>,
    /// `js_inline = '''…'''`: a JavaScript transform written in the configuration file.
    pub js_inline: Option<String>,
}

/// A script given by file or inline: exactly one of `js` and `js_inline`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScriptConfig {
    /// The script file, relative to the configuration file.
    pub js: Option<PathBuf>,
    /// The script's code, written here.
    pub js_inline: Option<String>,
}

/// `[channel.scripts]`: how the channel's JavaScript runs.
///
/// ```toml
/// [channel.scripts]
/// libraries = ["scripts/lib/dates.js"]
/// config = { receiver = "SCHEDULER", api_key = "${env:API_KEY}" }
/// memory_limit = "32MiB"
/// time_limit = "1s"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptSettings {
    /// Files of shared functions, evaluated before every script of the channel (their
    /// top-level `function` declarations are visible to all of them), relative to the
    /// configuration file.
    #[serde(default)]
    pub libraries: Vec<PathBuf>,
    /// The `configMap` scripts read: names to strings; values may use `${env:…}`/`${file:…}`
    /// and are never logged.
    #[serde(default)]
    pub config: BTreeMap<String, Secret>,
    /// Most memory one script runtime may use; beyond it the message is `ERROR`. Default
    /// `"32MiB"`.
    #[serde(default = "default_script_memory")]
    pub memory_limit: ByteSize,
    /// Longest time one script may run on one message; beyond it the script is stopped and
    /// the message is `ERROR`. Default `"1s"`.
    #[serde(default = "one_second")]
    pub time_limit: Duration,
    /// `true` lets `logger.info/warn/error` log at their own level. By default they log at
    /// DEBUG, since what a script logs may hold patient data.
    #[serde(default)]
    pub log_phi_at_info: bool,
}

impl Default for ScriptSettings {
    fn default() -> Self {
        ScriptSettings {
            libraries: Vec::new(),
            config: BTreeMap::new(),
            memory_limit: default_script_memory(),
            time_limit: one_second(),
            log_phi_at_info: false,
        }
    }
}

fn default_script_memory() -> ByteSize {
    ByteSize::new(32 * 1024 * 1024)
}

/// `set = { … }`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    /// The HL7 path to write.
    pub field: String,
    /// The text to write (escaped with the message's delimiters).
    pub value: Option<String>,
    /// `true`: write the HL7 null `""` instead of a value. Default `false`.
    #[serde(default)]
    pub null: bool,
}

/// `copy = { … }`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CopyConfig {
    /// The HL7 path to read.
    pub from: String,
    /// The HL7 path to write.
    pub to: String,
}

/// `delete = { … }`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeleteConfig {
    /// The HL7 path to empty.
    pub field: String,
}

/// `add_segment = { … }`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AddSegmentConfig {
    /// The segment as ER7 text without terminator, e.g. `"ZPI|1|x"`.
    pub text: String,
    /// Put it after the last segment with this id.
    pub after: Option<String>,
    /// Put it before the first segment with this id (not MSH).
    pub before: Option<String>,
}

/// `rename_segment = { … }`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RenameSegmentConfig {
    /// The segments to rename: an id (`ZPI`, every one) or one occurrence (`ZPI[2]`).
    pub from: String,
    /// The new segment id (three upper-case letters or digits).
    pub to: String,
}

/// `map = { … }`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MapConfig {
    /// The HL7 path whose value is mapped (read with escapes decoded; a whole field maps its
    /// first repetition).
    pub field: String,
    /// The code table: a CSV file relative to the configuration file.
    pub table: PathBuf,
    /// The value written for codes the table does not map. Absent: such values are kept.
    pub default: Option<String>,
}

/// `encode = …` of a destination: what it sends.
///
/// - `encode = "hl7"` (the default): the HL7 message as it is.
/// - `encode = "json"`: the lossless JSON form (HL7 → JSON → HL7 gives the same bytes).
/// - `encode = { template = "templates/patient.json" }`: a JSON document written by a JSON
///   template (placeholders `"{{PID-5.1}}"`, filters `date`, `number`, `upper`, `lower`,
///   `trim`, `default("…")`, repeating groups `{ "$each": "OBX", "item": … }`), relative to
///   the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EncodeConfig {
    /// `"hl7"`.
    #[default]
    Hl7,
    /// `"json"`.
    Json,
    /// `{ template = "…" }`.
    Template(PathBuf),
}

/// The table form of `encode`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EncodeTable {
    /// The JSON template file.
    template: PathBuf,
}

impl<'de> Deserialize<'de> for EncodeConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<EncodeConfig, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = EncodeConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"hl7\", \"json\" or { template = \"…\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EncodeConfig, E> {
                match v {
                    "hl7" => Ok(EncodeConfig::Hl7),
                    "json" => Ok(EncodeConfig::Json),
                    "fhir" => Err(E::custom(
                        "encode = \"fhir\" is not supported by this version yet",
                    )),
                    other => Err(E::unknown_variant(other, &["hl7", "json"])),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<EncodeConfig, A::Error> {
                let table =
                    EncodeTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(EncodeConfig::Template(table.template))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A channel's source, chosen by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SourceConfig {
    /// `type = "mllp"`: an MLLP listener (optionally TLS/mTLS).
    Mllp(MllpSourceConfig),
    /// `type = "http"`: an HL7-over-HTTP listener (optionally HTTPS/mTLS).
    Http(HttpSourceConfig),
    /// `type = "http-poll"`: GET a URL on an interval.
    HttpPoll(HttpPollSourceConfig),
    /// `type = "channel"`: no listener; the channel receives only what other channels route to
    /// it (`channel` destinations, scripts). It counts as deployed once the engine runs.
    Channel(ChannelSourceConfig),
}

/// `source = { type = "channel" }`: takes no other keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChannelSourceConfig {}

/// `source = { type = "mllp", … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpSourceConfig {
    /// Address to listen on, `IP:port`, e.g. `"0.0.0.0:2575"`.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// TLS (`cert`, `key`) and mTLS (`client_ca`, `allowed_clients`).
    pub tls: Option<TlsConfig>,
    /// Largest message accepted; larger frames are answered `AR` and the connection closed.
    /// Default `"16MiB"`.
    #[serde(default = "default_frame_size")]
    pub max_frame_size: ByteSize,
    /// Time allowed to finish a frame (or a TLS handshake) once it started. Default `"30s"`.
    #[serde(default = "thirty_seconds")]
    pub read_timeout: Duration,
    /// A connection silent this long between messages is closed. Default `"10m"`.
    #[serde(default = "ten_minutes")]
    pub idle_timeout: Duration,
    /// Most simultaneous connections; more are closed at once. Default 100.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

/// `source = { type = "http", … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// Address to listen on, `IP:port`.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// HTTPS (`cert`, `key`) and mTLS (`client_ca`, `allowed_clients`).
    pub tls: Option<TlsConfig>,
    /// Path that accepts `POST`s. Default `"/"`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Largest request body; larger ones get 413. Default `"16MiB"`.
    #[serde(default = "default_frame_size")]
    pub max_body_size: ByteSize,
    /// Time allowed for a TLS handshake. Default `"30s"`.
    #[serde(default = "thirty_seconds")]
    pub read_timeout: Duration,
}

/// `source = { type = "http-poll", … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpPollSourceConfig {
    /// URL to GET, `https://…` (or `http://…`, with a warning).
    pub url: Text,
    /// Time between polls. Default `"10s"`.
    #[serde(default = "ten_seconds")]
    pub interval: Duration,
    /// Trust (`ca`) and client identity (`cert`, `key`).
    pub tls: Option<TlsConfig>,
    /// Request headers; values may use `${env:…}`/`${file:…}` and are never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Whole-request timeout. Default `"30s"`.
    #[serde(default = "thirty_seconds")]
    pub timeout: Duration,
}

/// A channel destination, chosen by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DestinationConfig {
    /// `type = "http"`: POST each message to a URL.
    Http(HttpDestinationConfig),
    /// `type = "mllp"`: send each message over MLLP and check its ACK.
    Mllp(MllpDestinationConfig),
    /// `type = "file"`: write each message to a file in a directory.
    File(FileDestinationConfig),
    /// `type = "channel"`: hand each message to another channel of this engine.
    Channel(ChannelDestinationConfig),
}

/// The same expression on whichever destination table `$d` is (the settings every kind has).
macro_rules! each_destination {
    ($self:expr, $d:ident => $e:expr) => {
        match $self {
            DestinationConfig::Http($d) => $e,
            DestinationConfig::Mllp($d) => $e,
            DestinationConfig::File($d) => $e,
            DestinationConfig::Channel($d) => $e,
        }
    };
}

impl DestinationConfig {
    /// The destination's name.
    pub fn name(&self) -> &str {
        each_destination!(self, d => &d.name)
    }

    /// The destination's retry settings.
    pub fn retry(&self) -> &RetryConfig {
        each_destination!(self, d => &d.retry)
    }

    /// The destination's filters.
    pub fn filters(&self) -> &[FilterConfig] {
        each_destination!(self, d => &d.filters)
    }

    /// Mutable access to the filters, for resolving relative paths.
    pub(crate) fn filters_mut(&mut self) -> &mut Vec<FilterConfig> {
        each_destination!(self, d => &mut d.filters)
    }

    /// The destination's delivery lanes (`workers`).
    pub fn workers(&self) -> usize {
        each_destination!(self, d => d.workers)
    }

    /// The destination's lane key path (`order_by`), as written.
    pub fn order_by(&self) -> Option<&str> {
        each_destination!(self, d => d.order_by.as_deref())
    }

    /// The destination's transformation steps.
    pub fn transforms(&self) -> &[TransformConfig] {
        each_destination!(self, d => &d.transforms)
    }

    /// How the destination encodes what it sends.
    pub fn encode(&self) -> &EncodeConfig {
        each_destination!(self, d => &d.encode)
    }

    /// The destination's response transformer steps.
    pub fn response_transforms(&self) -> &[TransformConfig] {
        each_destination!(self, d => &d.response_transforms)
    }

    /// Whether the destination continues the channel map of the one before it.
    pub fn wait_for_previous(&self) -> bool {
        each_destination!(self, d => d.wait_for_previous)
    }

    /// Mutable access to the transforms, response transforms and the encoding, for resolving
    /// relative paths.
    pub(crate) fn transforms_and_encode_mut(
        &mut self,
    ) -> (
        &mut Vec<TransformConfig>,
        &mut Vec<TransformConfig>,
        &mut EncodeConfig,
    ) {
        each_destination!(self, d => (&mut d.transforms, &mut d.response_transforms, &mut d.encode))
    }
}

/// `type = "http"` destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpDestinationConfig {
    /// Unique within the channel; names the destination's queue.
    pub name: String,
    /// `[[channel.destination.filter]]`: rules (as for `[[channel.filter]]`) that must all
    /// pass for this destination to get a message; otherwise its status here is `FILTERED`.
    #[serde(default, rename = "filter")]
    pub filters: Vec<FilterConfig>,
    /// `[[channel.destination.transform]]`: steps (as for `[[channel.transform]]`) applied to
    /// this destination's copy of the message only, after its filters.
    #[serde(default, rename = "transform")]
    pub transforms: Vec<TransformConfig>,
    /// What is sent: `"hl7"` (the default), `"json"` or `{ template = "…" }`. The request's
    /// `Content-Type` follows: `application/hl7-v2` for `"hl7"`, `application/json` for the
    /// other two (a `Content-Type` in `headers` wins).
    #[serde(default)]
    pub encode: EncodeConfig,
    /// `[[channel.destination.response_transform]]`: steps (as for `[[channel.transform]]`,
    /// JavaScript included) run on each final HL7 response (the ACK) before it is stored and,
    /// with `response = "after-delivery"`, relayed. A failing step marks the message `ERROR`.
    #[serde(default, rename = "response_transform")]
    pub response_transforms: Vec<TransformConfig>,
    /// `true` (the default): this destination's transformer runs after the one before it and
    /// sees the channel map as that one left it. `false`: it starts a new chain from the
    /// channel map as the source transformer left it. Delivery is independent either way: each
    /// destination has its own durable queue.
    #[serde(default = "yes")]
    pub wait_for_previous: bool,
    /// Target URL, `https://…` (or `http://…`, with a warning).
    pub url: Text,
    /// HTTP method: `POST` (default), `PUT` or `PATCH`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Request headers; values may use `${env:…}`/`${file:…}` and are never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Trust (`ca`, default the OS store) and client identity (`cert`, `key`).
    pub tls: Option<TlsConfig>,
    /// Whole-request timeout; a timeout is retried. Default `"30s"`.
    #[serde(default = "thirty_seconds")]
    pub timeout: Duration,
    /// Retry of failed deliveries. Default: forever, 1 s doubling to 5 min.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Delivery lanes, 1 to 64. Default 1: one message in flight and the whole queue in
    /// message-id order (a retry holds up everything behind it). More: messages with the same
    /// `order_by` value are delivered in order, one at a time; different values concurrently on
    /// up to this many lanes (values are hashed to lanes, so two keys may share one); a message
    /// being retried holds up only its lane. Delivery stays at-least-once across restarts.
    #[serde(default = "one")]
    pub workers: usize,
    /// The HL7 path whose value keys the lanes when `workers` is above 1. Default `"PID-3.1"`
    /// (the patient's first identifier). A message that does not parse, or has no value at the
    /// path, goes to the first lane. Ignored with `workers = 1`.
    pub order_by: Option<String>,
}

/// What an MLLP destination does with a negative ACK.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NakAction {
    /// Retry with backoff (the receiver may recover). The default.
    #[default]
    Retry,
    /// Mark the message `ERROR` and continue with the queue.
    Error,
}

/// `type = "mllp"` destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpDestinationConfig {
    /// Unique within the channel; names the destination's queue.
    pub name: String,
    /// `[[channel.destination.filter]]`: rules (as for `[[channel.filter]]`) that must all
    /// pass for this destination to get a message; otherwise its status here is `FILTERED`.
    #[serde(default, rename = "filter")]
    pub filters: Vec<FilterConfig>,
    /// `[[channel.destination.transform]]`: steps (as for `[[channel.transform]]`) applied to
    /// this destination's copy of the message only, after its filters.
    #[serde(default, rename = "transform")]
    pub transforms: Vec<TransformConfig>,
    /// What is sent: `"hl7"` (the default), `"json"` or `{ template = "…" }`.
    #[serde(default)]
    pub encode: EncodeConfig,
    /// `[[channel.destination.response_transform]]`: steps (as for `[[channel.transform]]`,
    /// JavaScript included) run on each final HL7 response (the ACK) before it is stored and,
    /// with `response = "after-delivery"`, relayed. A failing step marks the message `ERROR`.
    #[serde(default, rename = "response_transform")]
    pub response_transforms: Vec<TransformConfig>,
    /// `true` (the default): this destination's transformer runs after the one before it and
    /// sees the channel map as that one left it. `false`: it starts a new chain from the
    /// channel map as the source transformer left it. Delivery is independent either way: each
    /// destination has its own durable queue.
    #[serde(default = "yes")]
    pub wait_for_previous: bool,
    /// `host:port` of the receiver.
    pub address: Text,
    /// Use TLS: trust (`ca`) and client identity (`cert`, `key`). Absent: plain TCP.
    pub tls: Option<TlsConfig>,
    /// Name the server certificate must carry. Default: the host part of `address`.
    pub server_name: Option<String>,
    /// Time to wait for the ACK; a timeout is retried. Default `"30s"`.
    #[serde(default = "thirty_seconds")]
    pub response_timeout: Duration,
    /// Time to establish the connection. Default `"10s"`.
    #[serde(default = "ten_seconds")]
    pub connect_timeout: Duration,
    /// Keep the connection open between messages. Default `true`.
    #[serde(default = "yes")]
    pub keep_alive: bool,
    /// On `AE`/`AR`/`CE`/`CR`: `"retry"` (default) or `"error"`.
    #[serde(default)]
    pub on_nak: NakAction,
    /// Largest ACK accepted. Default `"16MiB"`.
    #[serde(default = "default_frame_size")]
    pub max_frame_size: ByteSize,
    /// Retry of failed deliveries. Default: forever, 1 s doubling to 5 min.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Delivery lanes, 1 to 64. Default 1: one message in flight and the whole queue in
    /// message-id order (a retry holds up everything behind it). More: messages with the same
    /// `order_by` value are delivered in order, one at a time; different values concurrently on
    /// up to this many lanes (values are hashed to lanes, so two keys may share one); a message
    /// being retried holds up only its lane. Delivery stays at-least-once across restarts.
    #[serde(default = "one")]
    pub workers: usize,
    /// The HL7 path whose value keys the lanes when `workers` is above 1. Default `"PID-3.1"`
    /// (the patient's first identifier). A message that does not parse, or has no value at the
    /// path, goes to the first lane. Ignored with `workers = 1`.
    pub order_by: Option<String>,
}

/// `type = "file"` destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDestinationConfig {
    /// Unique within the channel; names the destination's queue.
    pub name: String,
    /// `[[channel.destination.filter]]`: rules (as for `[[channel.filter]]`) that must all
    /// pass for this destination to get a message; otherwise its status here is `FILTERED`.
    #[serde(default, rename = "filter")]
    pub filters: Vec<FilterConfig>,
    /// `[[channel.destination.transform]]`: steps (as for `[[channel.transform]]`) applied to
    /// this destination's copy of the message only, after its filters.
    #[serde(default, rename = "transform")]
    pub transforms: Vec<TransformConfig>,
    /// What is sent: `"hl7"` (the default), `"json"` or `{ template = "…" }`.
    #[serde(default)]
    pub encode: EncodeConfig,
    /// `[[channel.destination.response_transform]]`: steps (as for `[[channel.transform]]`,
    /// JavaScript included) run on each final HL7 response (the ACK) before it is stored and,
    /// with `response = "after-delivery"`, relayed. A failing step marks the message `ERROR`.
    #[serde(default, rename = "response_transform")]
    pub response_transforms: Vec<TransformConfig>,
    /// `true` (the default): this destination's transformer runs after the one before it and
    /// sees the channel map as that one left it. `false`: it starts a new chain from the
    /// channel map as the source transformer left it. Delivery is independent either way: each
    /// destination has its own durable queue.
    #[serde(default = "yes")]
    pub wait_for_previous: bool,
    /// Directory to write into (created if missing), relative to the configuration file.
    pub directory: PathBuf,
    /// File name pattern; `{channel}`, `{id}` and `{control_id}` are replaced. Default
    /// `"{channel}-{id}.hl7"` (unique per message, so a resend overwrites instead of
    /// duplicating).
    #[serde(default = "default_file_name")]
    pub file_name: String,
    /// Retry of failed writes. Default: forever, 1 s doubling to 5 min.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Delivery lanes, 1 to 64. Default 1: one message in flight and the whole queue in
    /// message-id order (a retry holds up everything behind it). More: messages with the same
    /// `order_by` value are delivered in order, one at a time; different values concurrently on
    /// up to this many lanes (values are hashed to lanes, so two keys may share one); a message
    /// being retried holds up only its lane. Delivery stays at-least-once across restarts.
    #[serde(default = "one")]
    pub workers: usize,
    /// The HL7 path whose value keys the lanes when `workers` is above 1. Default `"PID-3.1"`
    /// (the patient's first identifier). A message that does not parse, or has no value at the
    /// path, goes to the first lane. Ignored with `workers = 1`.
    pub order_by: Option<String>,
}

/// `type = "channel"` destination: route each message to another channel of the same engine.
/// Delivering is receiving on the target channel, which stores the message durably before it
/// answers; this destination is drained from the sending channel's durable queue, so routing
/// survives a crash and is at-least-once. The target's positive ACK → `SENT` (the ACK is the
/// stored response); `AE` (its store failed) → retry; `AR` (it rejected the message) → `ERROR`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelDestinationConfig {
    /// Unique within the channel; names the destination's queue.
    pub name: String,
    /// `[[channel.destination.filter]]`: rules (as for `[[channel.filter]]`) that must all
    /// pass for this destination to get a message; otherwise its status here is `FILTERED`.
    #[serde(default, rename = "filter")]
    pub filters: Vec<FilterConfig>,
    /// `[[channel.destination.transform]]`: steps (as for `[[channel.transform]]`) applied to
    /// this destination's copy of the message only, after its filters.
    #[serde(default, rename = "transform")]
    pub transforms: Vec<TransformConfig>,
    /// What is handed to the target channel: `"hl7"` (the default), `"json"` or
    /// `{ template = "…" }`.
    #[serde(default)]
    pub encode: EncodeConfig,
    /// `[[channel.destination.response_transform]]`: steps (as for `[[channel.transform]]`,
    /// JavaScript included) run on each final HL7 response (the ACK) before it is stored and,
    /// with `response = "after-delivery"`, relayed. A failing step marks the message `ERROR`.
    #[serde(default, rename = "response_transform")]
    pub response_transforms: Vec<TransformConfig>,
    /// `true` (the default): this destination's transformer runs after the one before it and
    /// sees the channel map as that one left it. `false`: it starts a new chain from the
    /// channel map as the source transformer left it. Delivery is independent either way: each
    /// destination has its own durable queue.
    #[serde(default = "yes")]
    pub wait_for_previous: bool,
    /// Name of the target channel: an enabled channel of this configuration other than this
    /// one (any source type; usually `source = { type = "channel" }`).
    pub channel: String,
    /// Retry when the target cannot store the message. Default: forever, 1 s doubling to 5 min.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Delivery lanes, 1 to 64. Default 1: one message in flight and the whole queue in
    /// message-id order (a retry holds up everything behind it). More: messages with the same
    /// `order_by` value are delivered in order, one at a time; different values concurrently on
    /// up to this many lanes (values are hashed to lanes, so two keys may share one); a message
    /// being retried holds up only its lane. Delivery stays at-least-once across restarts.
    #[serde(default = "one")]
    pub workers: usize,
    /// The HL7 path whose value keys the lanes when `workers` is above 1. Default `"PID-3.1"`
    /// (the patient's first identifier). A message that does not parse, or has no value at the
    /// path, goes to the first lane. Ignored with `workers = 1`.
    pub order_by: Option<String>,
}

/// `retry = { … }`: exponential backoff of a destination.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First delay. Default `"1s"`.
    #[serde(default = "one_second")]
    pub initial: Duration,
    /// Longest delay. Default `"5m"`.
    #[serde(default = "five_minutes")]
    pub max: Duration,
    /// Growth factor between delays. Default 2.0.
    #[serde(default = "two")]
    pub multiplier: f64,
    /// Attempts before the message is marked `ERROR`; 0 (the default) retries forever.
    #[serde(default)]
    pub max_attempts: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: one_second(),
            max: five_minutes(),
            multiplier: two(),
            max_attempts: 0,
        }
    }
}

fn one() -> usize {
    1
}
fn default_frame_size() -> ByteSize {
    ByteSize::new(16 * 1024 * 1024)
}
fn default_max_connections() -> usize {
    100
}
fn default_path() -> String {
    "/".to_owned()
}
fn default_method() -> String {
    "POST".to_owned()
}
fn default_file_name() -> String {
    "{channel}-{id}.hl7".to_owned()
}
fn one_second() -> Duration {
    Duration::secs(1)
}
fn ten_seconds() -> Duration {
    Duration::secs(10)
}
fn thirty_seconds() -> Duration {
    Duration::secs(30)
}
fn one_day() -> Duration {
    Duration::secs(24 * 3600)
}
fn five_minutes() -> Duration {
    Duration::secs(300)
}
fn ten_minutes() -> Duration {
    Duration::secs(600)
}
fn two() -> f64 {
    2.0
}

/// An `IP:port` listen address.
fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = Text::deserialize(d)?;
    text.as_str().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid address `{text}`: expected IP:port, like \"0.0.0.0:2575\" or \"127.0.0.1:8480\""
        ))
    })
}

#[cfg(test)]
mod encryption_tests {
    use super::*;

    fn config(key: &str, id: &str, old: &[(&str, &str)]) -> EncryptionConfig {
        EncryptionConfig {
            key: Secret::from(key),
            key_id: Text::from(id),
            old_keys: old
                .iter()
                .map(|(i, k)| ((*i).to_owned(), Secret::from(*k)))
                .collect(),
        }
    }

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
    const B64: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    #[test]
    fn keys_are_hex_or_base64_of_32_bytes() {
        let keys = config(HEX, "2026-12", &[("2026-06", B64)])
            .keys()
            .expect("keys");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].0, "2026-12");
        assert_eq!(keys[0].1[1], 0x11);
        assert_eq!(keys[1].1.as_slice(), &[2u8; 32]);
    }

    #[test]
    fn bad_keys_are_refused_without_showing_them() {
        let short = "AwMDAwMDAwMDAwMDAwMDAw==";
        let err = config(short, "k", &[]).keys().expect_err("16 bytes");
        assert!(err.contains("16 bytes") && !err.contains(short), "{err}");
        let err = config("not a key!", "k", &[]).keys().expect_err("garbage");
        assert!(!err.contains("not a key"), "{err}");
        assert!(config(HEX, "bad id", &[]).keys().is_err());
        assert!(config(HEX, "", &[]).keys().is_err());
        let err = config(HEX, "k", &[("k", B64)]).keys().expect_err("twice");
        assert!(err.contains("both"), "{err}");
        assert!(!format!("{:?}", config(HEX, "k", &[])).contains("0011"));
    }
}
