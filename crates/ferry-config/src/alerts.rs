//! `[alerts]` and `[[alert]]`: rules that watch the engine's counters and notify people.
//!
//! An alert is a rule (`when`), the actions that notify (`actions`, names of
//! `[alerts.actions.NAME]` tables) and a throttle: at most one notification per alert per
//! `throttle` window; the first notification after a quiet window says how many firings were
//! suppressed in between. A failing action (SMTP down) never blocks the others.
//!
//! Notifications carry the alert name, the rule, what was observed (counts, queue depth, the
//! last error reason), the time (UTC) and the node, never message content.
//!
//! ```toml
//! [alerts]
//! interval = "5s"            # how often the counters are sampled (default 5s)
//! node = "ferry-01"          # name in notifications (default: the host name)
//!
//! [alerts.actions.mail-oncall]
//! email = { smtp = "smtp.example.org:587", from = "ferry@example.org",
//!           to = ["oncall@example.org"], username = "ferry",
//!           password = "${env:SMTP_PASSWORD}", tls = { ca = "smtp-ca.pem" } }
//!
//! [alerts.actions.webhook-ops]
//! webhook = { url = "https://ops.example.org/hooks/ferry",
//!             headers = { Authorization = "Bearer ${env:OPS_TOKEN}" } }
//!
//! [alerts.actions.siem]
//! syslog = { address = "siem.example.org:6514", tls = { ca = "siem-ca.pem" } }
//!
//! [[alert]]
//! name = "adt-delivery-errors"
//! when = { errors = { channel = "adt*", text = "refused|timed out" } }
//! actions = ["mail-oncall", "webhook-ops"]
//! throttle = "15m"
//!
//! [[alert]]
//! name = "lab-backlog"
//! when = { queue_depth = { above = 1000, channel = "lab" } }
//! actions = ["mail-oncall"]
//!
//! [[alert]]
//! name = "adt-silent"
//! when = { no_inbound = { channel = "adt-in", for = "15m" } }
//! actions = ["mail-oncall"]
//!
//! [[alert]]
//! name = "certificates"
//! when = { certificate_expiry = { within_days = 14 } }
//! actions = ["mail-oncall"]
//! throttle = "24h"
//!
//! [[alert]]
//! name = "login-burst"
//! when = { failed_logins = { count = 10, within = "5m" } }
//! actions = ["siem", "mail-oncall"]
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::schema::TlsConfig;
use crate::values::{Duration, Secret, Text};

/// `[alerts]`: settings shared by every alert, and the named actions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// How often the rules sample the engine's counters. Default `"5s"`; must be longer than
    /// zero. A rule sees what changed between two samples.
    #[serde(default = "five_seconds")]
    pub interval: Duration,
    /// The node name in notifications. Default: the host name (`/etc/hostname`, then
    /// `$HOSTNAME`, then `"ferry"`).
    pub node: Option<String>,
    /// `[alerts.actions.NAME]`: the notification targets that `[[alert]] actions` name.
    #[serde(default)]
    pub actions: BTreeMap<String, AlertActionConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            interval: five_seconds(),
            node: None,
            actions: BTreeMap::new(),
        }
    }
}

/// One `[[alert]]`: a rule, its actions and its throttle.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Unique name; the subject of every notification.
    pub name: String,
    /// The condition: exactly one of `errors`, `queue_depth`, `no_inbound`,
    /// `certificate_expiry`, `failed_logins`.
    pub when: AlertCondition,
    /// Names of `[alerts.actions.NAME]` tables to notify; at least one.
    pub actions: Vec<String>,
    /// At most one notification per this window; firings inside it are counted and reported
    /// with the next notification. Default `"15m"`.
    #[serde(default = "fifteen_minutes")]
    pub throttle: Duration,
}

/// What an alert watches (`when = { KIND = { … } }`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AlertCondition {
    /// Errors appeared since the previous sample.
    Errors(ErrorsRule),
    /// A destination's queue is deeper than a bound.
    QueueDepth(QueueDepthRule),
    /// A channel received nothing for a period.
    NoInbound(NoInboundRule),
    /// A certificate used by the configuration expires soon.
    CertificateExpiry(CertificateExpiryRule),
    /// Failed logins to the admin interface came in a burst.
    FailedLogins(FailedLoginsRule),
}

/// `errors = { … }`: fires when errors were counted since the previous sample. Counted are the
/// failed delivery attempts of the matching destinations (retried or final), and, when no
/// `destination` or `text` is given, messages the matching channels rejected or failed in
/// their source filter or transformer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsRule {
    /// Channel name pattern; `*` matches any run of characters (`"adt*"`). Default: every
    /// channel.
    pub channel: Option<String>,
    /// Destination name pattern (`*` allowed). Default: every destination.
    pub destination: Option<String>,
    /// Regular expression the destination's most recent error reason must match (for example
    /// `"refused|timed out"`). Source errors carry no reason and are not counted with `text`.
    pub text: Option<String>,
}

/// `queue_depth = { … }`: fires while a matching destination's queue holds more than `above`
/// messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDepthRule {
    /// The bound: fires when the depth is strictly greater.
    pub above: u64,
    /// Channel name pattern (`*` allowed). Default: every channel.
    pub channel: Option<String>,
    /// Destination name pattern (`*` allowed). Default: every destination.
    pub destination: Option<String>,
}

/// `no_inbound = { … }`: fires when a matching deployed channel's received counter did not
/// move for `for`. The clock starts when Ferry starts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoInboundRule {
    /// Channel name pattern (`*` allowed).
    pub channel: String,
    /// The quiet period, e.g. `"15m"`; must be longer than zero.
    #[serde(rename = "for")]
    pub period: Duration,
}

/// `certificate_expiry = { … }`: fires when a certificate expires within `within_days` (or has
/// expired). Checked at start and every hour. The certificates are every `cert` of a `tls`
/// table in the configuration (admin, sources, destinations) plus `files`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateExpiryRule {
    /// Days before `notAfter` from which the alert fires.
    pub within_days: u32,
    /// More PEM certificate files to watch, relative to the configuration file.
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

/// `failed_logins = { … }`: fires when at least `count` failed logins happened within
/// `within` (reported by the admin interface).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedLoginsRule {
    /// Failed logins that make a burst; at least 1.
    pub count: u32,
    /// The sliding window, e.g. `"5m"`; must be longer than zero.
    pub within: Duration,
}

/// `[alerts.actions.NAME]`: one notification target, exactly one of `email`, `webhook`,
/// `syslog`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AlertActionConfig {
    /// Send a mail over SMTP.
    Email(EmailAction),
    /// POST a JSON document.
    Webhook(WebhookAction),
    /// Send an RFC 5424 syslog message over TCP (RFC 6587 octet counting) or TLS (RFC 5425).
    Syslog(SyslogAction),
}

/// `email = { … }`: SMTP submission.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailAction {
    /// The submission server, `host:port` (usually port 587).
    pub smtp: Text,
    /// Upgrade the connection with STARTTLS before anything else is sent. Default `true`; the
    /// server must offer it or the mail is not sent. `false` sends in plain text and is only
    /// allowed without `username` (credentials never travel unencrypted).
    #[serde(default = "yes")]
    pub starttls: bool,
    /// The envelope and header sender.
    pub from: Text,
    /// Recipients; at least one.
    pub to: Vec<Text>,
    /// Login for `AUTH PLAIN` (only ever sent over TLS). Default: no authentication.
    pub username: Option<Text>,
    /// Password for `username`, e.g. `"${env:SMTP_PASSWORD}"`.
    pub password: Option<Secret>,
    /// Trust for the server's certificate (`ca`) and an optional client identity. Default:
    /// the operating system's trust store.
    pub tls: Option<TlsConfig>,
    /// Longest time for the whole conversation. Default `"30s"`.
    #[serde(default = "thirty_seconds")]
    pub timeout: Duration,
}

/// `webhook = { … }`: an HTTP POST of a JSON document.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookAction {
    /// The URL (`https://…`; `http://` is accepted with a warning).
    pub url: Text,
    /// Extra request headers (values may hold secrets: `"Bearer ${env:TOKEN}"`).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Trust for the server's certificate and an optional client identity. Default: the
    /// operating system's trust store.
    pub tls: Option<TlsConfig>,
    /// Longest time per attempt. Default `"10s"`. Failed attempts are retried three times with
    /// growing delays.
    #[serde(default = "ten_seconds")]
    pub timeout: Duration,
}

/// `syslog = { … }`: a collector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogAction {
    /// The collector, `host:port`.
    pub address: Text,
    /// Connect with TLS (RFC 5425) trusting `ca`. Absent: plain TCP.
    pub tls: Option<TlsConfig>,
    /// Longest time to connect and send. Default `"10s"`.
    #[serde(default = "ten_seconds")]
    pub timeout: Duration,
}

impl AlertCondition {
    /// The rule's kind as written in the configuration (`"queue_depth"`).
    pub fn kind(&self) -> &'static str {
        match self {
            AlertCondition::Errors(_) => "errors",
            AlertCondition::QueueDepth(_) => "queue_depth",
            AlertCondition::NoInbound(_) => "no_inbound",
            AlertCondition::CertificateExpiry(_) => "certificate_expiry",
            AlertCondition::FailedLogins(_) => "failed_logins",
        }
    }
}

/// Check the alert tables: unique names, known actions, sensible numbers, no
/// plaintext authentication.
pub(crate) fn validate(
    alerts: &AlertsConfig,
    rules: &[AlertConfig],
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    if alerts.interval.get().is_zero() {
        return Err("[alerts] interval must be longer than zero".into());
    }
    for (name, action) in &alerts.actions {
        let err = |m: &str| format!("[alerts.actions.{name}]: {m}");
        match action {
            AlertActionConfig::Email(e) => {
                if e.to.is_empty() {
                    return Err(err("email needs at least one address in `to`"));
                }
                if !e.smtp.as_str().contains(':') {
                    return Err(err("email `smtp` must be host:port (usually port 587)"));
                }
                if !e.starttls && e.username.is_some() {
                    return Err(err(
                        "email with `username` needs `starttls = true`: credentials are never sent unencrypted",
                    ));
                }
                if e.password.is_some() && e.username.is_none() {
                    return Err(err("email `password` without `username`"));
                }
                if !e.starttls {
                    warnings.push(err("email sends in plain text (starttls = false)"));
                }
            }
            AlertActionConfig::Webhook(w) => {
                let url = w.url.as_str();
                if url.starts_with("http://") {
                    warnings.push(err(&format!(
                        "webhook posts over plain HTTP ({url}); use https:// outside a test bench"
                    )));
                } else if !url.starts_with("https://") {
                    return Err(err("webhook `url` must start with https:// or http://"));
                }
            }
            AlertActionConfig::Syslog(s) => {
                if !s.address.as_str().contains(':') {
                    return Err(err("syslog `address` must be host:port"));
                }
            }
        }
    }
    let mut names = std::collections::HashSet::new();
    for rule in rules {
        let err = |m: &str| format!("alert `{}`: {m}", rule.name);
        if rule.name.is_empty() {
            return Err("[[alert]] needs a non-empty `name`".into());
        }
        if !names.insert(rule.name.as_str()) {
            return Err(err("defined twice (alert names must be unique)"));
        }
        if rule.actions.is_empty() {
            return Err(err("needs at least one action"));
        }
        for action in &rule.actions {
            if !alerts.actions.contains_key(action) {
                return Err(err(&format!(
                    "action `{action}` is not defined (add [alerts.actions.{action}])"
                )));
            }
        }
        if rule.throttle.get().is_zero() {
            return Err(err("throttle must be longer than zero"));
        }
        match &rule.when {
            // The regex of `errors.text` is compiled (and reported) when the alerts start.
            AlertCondition::Errors(_) | AlertCondition::QueueDepth(_) => {}
            AlertCondition::NoInbound(n) => {
                if n.period.get().is_zero() {
                    return Err(err("no_inbound.for must be longer than zero"));
                }
            }
            AlertCondition::CertificateExpiry(_) => {}
            AlertCondition::FailedLogins(f) => {
                if f.count == 0 {
                    return Err(err("failed_logins.count must be at least 1"));
                }
                if f.within.get().is_zero() {
                    return Err(err("failed_logins.within must be longer than zero"));
                }
            }
        }
    }
    Ok(())
}

fn yes() -> bool {
    true
}
fn five_seconds() -> Duration {
    Duration::secs(5)
}
fn ten_seconds() -> Duration {
    Duration::secs(10)
}
fn thirty_seconds() -> Duration {
    Duration::secs(30)
}
fn fifteen_minutes() -> Duration {
    Duration::secs(15 * 60)
}
