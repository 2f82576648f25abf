//! Alerts: rules over the engine's counters that notify people, throttled.
//!
//! [`start`] builds the `[[alert]]` rules and `[alerts.actions]` of a configuration (see
//! [`ferry_config::alerts`] for the TOML) and spawns a task that samples the engine's
//! [`Stats`] every `[alerts] interval`, keeps the previous sample and evaluates every rule on
//! the step between the two ([`rules`]). A firing rule goes through its [`rules::Throttle`]:
//! at most one notification per `throttle` window; the next notification after the window
//! says how many firings were held back. Each action of a notification is sent in its own
//! task, so a dead SMTP server never delays the webhook; failures are logged at WARN and
//! never stop the engine.
//!
//! Notifications hold the alert name, the rule, what was observed (counts, depths, error
//! reasons of connectors, certificate files), the time in UTC and the node: never message
//! content.
//!
//! Failed logins come from outside the engine: the admin interface calls
//! [`AlertSignals::failed_login`] on the handle [`start`] returns.

pub mod actions;
pub mod rules;
pub mod smtp;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_config::alerts::AlertCondition;
use ferry_config::{Config, DestinationConfig, SourceConfig};
use ferry_engine::{Shutdown, Stats};
use tokio::task::JoinHandle;

use crate::actions::Action;
use crate::rules::{Clock, Rule, Sample, Throttle, WatchedCert};

/// How often certificate files are read again.
const CERT_REFRESH: Duration = Duration::from_secs(3600);
/// Failed logins kept at most (older ones are dropped first).
const MAX_FAILED_LOGINS: usize = 10_000;

/// The handle between the alerts task and the rest of the node: events reported from outside
/// the engine go in (failed logins, from the admin interface), each alert's status comes out
/// (for `GET /api/v1/alerts`). Cheap to clone; every clone shares the same state.
#[derive(Debug, Clone, Default)]
pub struct AlertSignals {
    failed_logins: Arc<Mutex<VecDeque<Instant>>>,
    statuses: Arc<Mutex<Vec<AlertStatus>>>,
}

/// One configured alert as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertStatus {
    /// The `[[alert]]` name.
    pub name: String,
    /// The rule as one readable line.
    pub rule: String,
    /// The names of its actions.
    pub actions: Vec<String>,
    /// Its throttle window in seconds.
    pub throttle_secs: u64,
    /// How many times the rule fired since the node started.
    pub fired: u64,
    /// How many of those firings sent a notification (the others fell in the throttle window).
    pub notified: u64,
    /// When it last fired (UTC, RFC 3339), if ever.
    pub last_fired_at: Option<String>,
    /// What was observed then (counts, depths, error reasons; never message content).
    pub last_observed: Option<String>,
}

impl AlertSignals {
    /// A handle with nothing recorded.
    pub fn new() -> AlertSignals {
        AlertSignals::default()
    }

    /// Record one failed login attempt, now.
    pub fn failed_login(&self) {
        if let Ok(mut q) = self.failed_logins.lock() {
            if q.len() >= MAX_FAILED_LOGINS {
                q.pop_front();
            }
            q.push_back(Instant::now());
        }
    }

    /// Every configured alert's status, in configuration order (empty without alerts).
    pub fn statuses(&self) -> Vec<AlertStatus> {
        self.statuses.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn update_status(&self, index: usize, update: impl FnOnce(&mut AlertStatus)) {
        if let Ok(mut statuses) = self.statuses.lock()
            && let Some(status) = statuses.get_mut(index)
        {
            update(status);
        }
    }

    /// Failed logins newer than `keep` before `now` (older ones are forgotten).
    fn recent(&self, now: Instant, keep: Duration) -> VecDeque<Instant> {
        match self.failed_logins.lock() {
            Ok(mut q) => {
                while q
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) > keep)
                {
                    q.pop_front();
                }
                q.clone()
            }
            Err(_) => VecDeque::new(),
        }
    }
}

/// One notification, as every action renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The alert's name.
    pub alert: String,
    /// The rule, as configured (`queue_depth above 2 (channel *, destination *)`).
    pub rule: String,
    /// What was observed, one finding per line.
    pub observed: String,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// The node that fired.
    pub node: String,
    /// Firings held back by the throttle since the previous notification of this alert.
    pub suppressed: u64,
}

impl Notification {
    /// The mail subject.
    pub fn subject(&self) -> String {
        format!("[ferry] ALERT {} on {}", self.alert, self.node)
    }

    /// The plain-text body (mail).
    pub fn text(&self) -> String {
        let mut out = format!(
            "Alert: {}\nRule: {}\nNode: {}\nTime (UTC): {}\n",
            self.alert, self.rule, self.node, self.at
        );
        if self.suppressed > 0 {
            out.push_str(&format!(
                "Suppressed: {} earlier firing(s) since the previous notification (throttle)\n",
                self.suppressed
            ));
        }
        out.push_str("\nObserved:\n");
        for line in self.observed.lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// The JSON document (webhook).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "alert": self.alert,
            "rule": self.rule,
            "observed": self.observed.lines().collect::<Vec<_>>(),
            "at": self.at,
            "node": self.node,
            "suppressed": self.suppressed,
        })
    }

    /// An RFC 5424 message (facility local0, severity alert) framed by octet counting
    /// (RFC 6587 §3.4.1 / RFC 5425 §4.3).
    pub fn syslog_frame(&self) -> String {
        let host: String = self
            .node
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(255)
            .collect();
        let host = if host.is_empty() {
            "-".to_owned()
        } else {
            host
        };
        let observed = self.observed.replace('\n', "; ");
        let message = format!(
            "<129>1 {} {host} ferry - ALERT - alert={:?} rule={:?} suppressed={} observed={:?}",
            self.at, self.alert, self.rule, self.suppressed, observed
        );
        format!("{} {message}", message.len())
    }
}

/// Why the alerts could not start.
#[derive(Debug, thiserror::Error)]
#[error("alert configuration: {0}")]
pub struct AlertError(String);

/// The actions of an alert with their configured names.
type NamedActions = Vec<(String, Arc<Action>)>;

struct AlertState {
    name: String,
    rule_text: String,
    rule: Rule,
    throttle: Throttle,
    actions: NamedActions,
}

/// The alert rules of one configuration with their state.
pub struct Alerts {
    alerts: Vec<AlertState>,
    node: String,
    interval: Duration,
    signals: AlertSignals,
    cert_files: Vec<PathBuf>,
    longest_login_window: Duration,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts")
            .field(
                "alerts",
                &self.alerts.iter().map(|a| &a.name).collect::<Vec<_>>(),
            )
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Alerts {
    /// Build the rules and actions of `config`, fed by `signals`.
    ///
    /// # Errors
    /// An invalid `errors.text` regex, unreadable TLS files of an action, invalid headers.
    pub fn new(config: &Config, signals: AlertSignals) -> Result<Alerts, AlertError> {
        let node = config.alerts.node.clone().unwrap_or_else(host_name);
        let now = Instant::now();
        let mut built = std::collections::HashMap::new();
        for (name, action) in &config.alerts.actions {
            let action = Action::new(action, &node)
                .map_err(|e| AlertError(format!("[alerts.actions.{name}]: {e}")))?;
            built.insert(name.clone(), Arc::new(action));
        }
        let mut alerts = Vec::new();
        let mut cert_files = config_cert_files(config);
        let mut longest_login_window = Duration::ZERO;
        for rule in &config.alert_rules {
            let err = |m: String| AlertError(format!("alert `{}`: {m}", rule.name));
            match &rule.when {
                AlertCondition::CertificateExpiry(c) => cert_files.extend(c.files.iter().cloned()),
                AlertCondition::FailedLogins(f) => {
                    longest_login_window = longest_login_window.max(f.within.get());
                }
                _ => {}
            }
            let actions = rule
                .actions
                .iter()
                .map(|a| {
                    built
                        .get(a)
                        .map(|x| (a.clone(), x.clone()))
                        .ok_or_else(|| err(format!("action `{a}` is not defined")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            alerts.push(AlertState {
                name: rule.name.clone(),
                rule_text: describe(&rule.when),
                rule: Rule::new(&rule.when, now).map_err(err)?,
                throttle: Throttle::new(rule.throttle.get()),
                actions,
            });
        }
        cert_files.sort();
        cert_files.dedup();
        if let Ok(mut statuses) = signals.statuses.lock() {
            *statuses = alerts
                .iter()
                .zip(&config.alert_rules)
                .map(|(a, rule)| AlertStatus {
                    name: a.name.clone(),
                    rule: a.rule_text.clone(),
                    actions: a.actions.iter().map(|(n, _)| n.clone()).collect(),
                    throttle_secs: rule.throttle.get().as_secs(),
                    fired: 0,
                    notified: 0,
                    last_fired_at: None,
                    last_observed: None,
                })
                .collect();
        }
        Ok(Alerts {
            alerts,
            node,
            interval: config.alerts.interval.get(),
            signals,
            cert_files,
            longest_login_window,
        })
    }

    /// Whether any alert is configured.
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
    }

    /// Read every watched certificate's `notAfter` into the certificate rules.
    fn refresh_certs(&mut self) {
        if !self
            .alerts
            .iter()
            .any(|a| matches!(a.rule, Rule::CertificateExpiry { .. }))
        {
            return;
        }
        let watched: Vec<WatchedCert> = self
            .cert_files
            .iter()
            .map(|path| WatchedCert {
                path: path.clone(),
                not_after: ferry_tls::load_certs(path)
                    .ok()
                    .and_then(|certs| certs.first().and_then(ferry_tls::not_after)),
            })
            .collect();
        for alert in &mut self.alerts {
            if let Rule::CertificateExpiry { certs, .. } = &mut alert.rule {
                *certs = watched.clone();
            }
        }
    }

    /// Evaluate every rule on the step `previous` → `current` and pass firings through the
    /// throttles: the notifications to send now, with their actions.
    fn step(
        &mut self,
        previous: &Sample,
        current: &Sample,
        now: Instant,
    ) -> Vec<(Notification, NamedActions)> {
        let logins = self.signals.recent(now, self.longest_login_window);
        let unix_now = time::OffsetDateTime::now_utc().unix_timestamp();
        let at = utc_now();
        let mut out = Vec::new();
        for (index, alert) in self.alerts.iter_mut().enumerate() {
            let clock = Clock {
                now,
                unix_now,
                failed_logins: &logins,
            };
            let Some(observed) = alert.rule.evaluate(previous, current, clock) else {
                continue;
            };
            let notify = alert.throttle.fire(now);
            self.signals.update_status(index, |s| {
                s.fired += 1;
                s.notified += u64::from(notify.is_some());
                s.last_fired_at = Some(at.clone());
                s.last_observed = Some(observed.clone());
            });
            match notify {
                Some(suppressed) => {
                    tracing::info!(alert = %alert.name, rule = %alert.rule_text, suppressed,
                        "alert fired; notifying");
                    out.push((
                        Notification {
                            alert: alert.name.clone(),
                            rule: alert.rule_text.clone(),
                            observed,
                            at: at.clone(),
                            node: self.node.clone(),
                            suppressed,
                        },
                        alert.actions.clone(),
                    ));
                }
                None => {
                    tracing::debug!(alert = %alert.name, "alert fired within its throttle window; suppressed");
                }
            }
        }
        out
    }

    /// Run until `shutdown`: sample `stats` every interval, notify.
    pub async fn run(mut self, stats: Arc<Stats>, shutdown: Shutdown) {
        let mut previous = Sample::take(&stats);
        self.refresh_certs();
        let mut certs_read = Instant::now();
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let now = Instant::now();
            if now.saturating_duration_since(certs_read) >= CERT_REFRESH {
                self.refresh_certs();
                certs_read = now;
            }
            let current = Sample::take(&stats);
            for (notification, actions) in self.step(&previous, &current, now) {
                let notification = Arc::new(notification);
                for (name, action) in actions {
                    let notification = notification.clone();
                    tokio::spawn(async move {
                        match action.notify(&notification).await {
                            Ok(()) => tracing::info!(alert = %notification.alert, action = %name,
                                "alert notification sent"),
                            Err(error) => tracing::warn!(alert = %notification.alert,
                                action = %name, %error, "alert notification failed"),
                        }
                    });
                }
            }
            previous = current;
        }
    }
}

/// Build the alerts of `config` and, when there are any, spawn their task. The returned
/// signals feed the `failed_logins` rules.
///
/// # Errors
/// As [`Alerts::new`].
pub fn start(
    config: &Config,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) -> Result<(AlertSignals, Option<JoinHandle<()>>), AlertError> {
    let signals = AlertSignals::new();
    let alerts = Alerts::new(config, signals.clone())?;
    if alerts.is_empty() {
        return Ok((signals, None));
    }
    Ok((signals, Some(tokio::spawn(alerts.run(stats, shutdown)))))
}

/// The rule as one readable line.
fn describe(condition: &AlertCondition) -> String {
    let or_all = |p: &Option<String>| p.clone().unwrap_or_else(|| "*".to_owned());
    match condition {
        AlertCondition::Errors(e) => format!(
            "errors (channel {}, destination {}{})",
            or_all(&e.channel),
            or_all(&e.destination),
            e.text
                .as_ref()
                .map(|t| format!(", text /{t}/"))
                .unwrap_or_default()
        ),
        AlertCondition::QueueDepth(q) => format!(
            "queue_depth above {} (channel {}, destination {})",
            q.above,
            or_all(&q.channel),
            or_all(&q.destination)
        ),
        AlertCondition::NoInbound(n) => format!(
            "no_inbound for {} s (channel {})",
            n.period.get().as_secs(),
            n.channel
        ),
        AlertCondition::CertificateExpiry(c) => {
            format!("certificate_expiry within {} days", c.within_days)
        }
        AlertCondition::FailedLogins(f) => format!(
            "failed_logins {} within {} s",
            f.count,
            f.within.get().as_secs()
        ),
    }
}

/// Every `cert` of a `tls` table in the configuration.
fn config_cert_files(config: &Config) -> Vec<PathBuf> {
    let mut tables = vec![config.admin.tls.as_ref()];
    for channel in &config.channels {
        tables.push(match &channel.source {
            SourceConfig::Mllp(s) => s.tls.as_ref(),
            SourceConfig::Http(s) => s.tls.as_ref(),
            SourceConfig::HttpPoll(s) => s.tls.as_ref(),
            SourceConfig::Channel(_) => None,
        });
        for dest in &channel.destinations {
            tables.push(match dest {
                DestinationConfig::Http(d) => d.tls.as_ref(),
                DestinationConfig::Mllp(d) => d.tls.as_ref(),
                DestinationConfig::File(_) | DestinationConfig::Channel(_) => None,
            });
        }
    }
    tables
        .into_iter()
        .flatten()
        .filter_map(|t| t.cert.clone())
        .collect()
}

fn utc_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "ferry".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // configurations in tests are known good
mod tests {
    use super::*;
    use std::path::Path;
    use std::rc::Rc;

    fn config(text: &str) -> Config {
        Config::from_str_with_env(text, Path::new("/tmp/ferry.toml"), Rc::new(|_: &str| None))
            .unwrap()
    }

    const ACTION: &str = r#"
[alerts.actions.hook]
webhook = { url = "http://127.0.0.1:9/x" }
"#;

    #[test]
    fn failed_logins_reported_through_signals_fire_the_rule_once_per_window() {
        let config = config(&format!(
            r#"{ACTION}
[[alert]]
name = "logins"
when = {{ failed_logins = {{ count = 3, within = "5m" }} }}
actions = ["hook"]
throttle = "1h"
"#
        ));
        let signals = AlertSignals::new();
        let mut alerts = Alerts::new(&config, signals.clone()).unwrap();
        let s = Sample::default();
        signals.failed_login();
        signals.failed_login();
        assert!(alerts.step(&s, &s, Instant::now()).is_empty());
        signals.failed_login();
        let fired = alerts.step(&s, &s, Instant::now());
        assert_eq!(fired.len(), 1);
        let (n, actions) = &fired[0];
        assert_eq!(n.alert, "logins");
        assert!(n.observed.contains("3 failed login(s)"), "{}", n.observed);
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].0, "hook");
        // Still a burst, but throttled.
        signals.failed_login();
        assert!(alerts.step(&s, &s, Instant::now()).is_empty());
    }

    #[test]
    fn certificate_expiry_reads_the_configured_certificate_files() {
        let pki = ferry_testkit::TestPki::new("expiry");
        let server = pki.server(&["localhost"]);
        let rule = |days: u32| {
            format!(
                r#"{ACTION}
[admin]
listen = "127.0.0.1:0"
tls = {{ cert = {cert:?}, key = {key:?} }}

[[alert]]
name = "certs"
when = {{ certificate_expiry = {{ within_days = {days}, files = ["/nonexistent/ferry-test.pem"] }} }}
actions = ["hook"]
"#,
                cert = server.cert.display().to_string(),
                key = server.key.display().to_string(),
            )
        };
        let s = Sample::default();
        // A fresh TestPki certificate is valid for more than a day, far less than 100 years.
        let mut far = Alerts::new(&config(&rule(36_500)), AlertSignals::new()).unwrap();
        far.refresh_certs();
        let fired = far.step(&s, &s, Instant::now());
        let observed = &fired[0].0.observed;
        let cert_name = server.cert.display().to_string();
        assert!(
            observed.contains(&format!("certificate {cert_name} expires in")),
            "{observed}"
        );
        assert!(
            observed.contains("ferry-test.pem cannot be read"),
            "{observed}"
        );
        let mut near = Alerts::new(&config(&rule(1)), AlertSignals::new()).unwrap();
        near.refresh_certs();
        let fired = near.step(&s, &s, Instant::now());
        let observed = &fired[0].0.observed;
        assert!(!observed.contains(&cert_name), "{observed}");
    }

    #[test]
    fn an_invalid_text_regex_is_refused_at_start() {
        let config = config(&format!(
            r#"{ACTION}
[[alert]]
name = "bad"
when = {{ errors = {{ text = "(unclosed" }} }}
actions = ["hook"]
"#
        ));
        let err = Alerts::new(&config, AlertSignals::new()).unwrap_err();
        assert!(err.to_string().contains("alert `bad`"), "{err}");
    }

    #[test]
    fn notifications_render_without_surprises() {
        let n = Notification {
            alert: "a".into(),
            rule: "queue_depth above 2 (channel *, destination *)".into(),
            observed: "one\ntwo".into(),
            at: "2026-12-02T05:00:00Z".into(),
            node: "node 1".into(),
            suppressed: 4,
        };
        assert_eq!(n.subject(), "[ferry] ALERT a on node 1");
        let text = n.text();
        assert!(text.contains("Suppressed: 4 earlier firing(s)"), "{text}");
        assert!(text.contains("Observed:\n  one\n  two\n"), "{text}");
        assert_eq!(n.json()["observed"][1], "two");
        let frame = n.syslog_frame();
        let (len, msg) = frame.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(
            msg.starts_with("<129>1 2026-12-02T05:00:00Z node1 ferry - ALERT - "),
            "{msg}"
        );
    }
}
