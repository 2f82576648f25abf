//! Rule evaluation: pure functions of two counter samples (and a clock), so every rule kind is
//! tested against synthetic samples without an engine.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferry_config::alerts::AlertCondition;
use ferry_engine::Stats;
use regex::Regex;

/// The counters of one destination at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationSample {
    /// Destination name.
    pub name: String,
    /// Messages that ended in `ERROR`.
    pub errored: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Messages waiting in the queue.
    pub queue_depth: i64,
    /// The most recent error reason.
    pub last_error: Option<String>,
}

/// The counters of one channel at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelSample {
    /// Channel name.
    pub name: String,
    /// Whether the channel is deployed.
    pub deployed: bool,
    /// Messages received.
    pub received: u64,
    /// Messages rejected at the source.
    pub rejected: u64,
    /// Messages a source step failed on.
    pub failed: u64,
    /// The destinations.
    pub destinations: Vec<DestinationSample>,
}

/// Every channel's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// The channels.
    pub channels: Vec<ChannelSample>,
}

impl Sample {
    /// Read the engine's counters now.
    pub fn take(stats: &Stats) -> Sample {
        let channels = stats
            .channels()
            .iter()
            .map(|c| ChannelSample {
                name: c.name.clone(),
                deployed: c.deployed.load(Ordering::Relaxed),
                received: c.received.load(Ordering::Relaxed),
                rejected: c.errored.load(Ordering::Relaxed),
                failed: c.failed.load(Ordering::Relaxed),
                destinations: c
                    .destinations
                    .iter()
                    .map(|(name, d)| DestinationSample {
                        name: name.clone(),
                        errored: d.errored.load(Ordering::Relaxed),
                        retries: d.retries.load(Ordering::Relaxed),
                        queue_depth: d.queue_depth.load(Ordering::Relaxed),
                        last_error: d.last_error(),
                    })
                    .collect(),
            })
            .collect();
        Sample { channels }
    }

    fn channel(&self, name: &str) -> Option<&ChannelSample> {
        self.channels.iter().find(|c| c.name == name)
    }
}

/// A name pattern where `*` matches any run of characters; `None` matches everything.
#[derive(Debug, Clone)]
pub struct NamePattern(Option<Vec<String>>);

impl NamePattern {
    /// Compile `pattern` (absent: match all).
    pub fn new(pattern: Option<&str>) -> NamePattern {
        NamePattern(pattern.map(|p| p.split('*').map(str::to_owned).collect()))
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let Some(parts) = &self.0 else {
            return true;
        };
        let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
            return true;
        };
        if parts.len() == 1 {
            return name == first;
        }
        let Some(mut rest) = name.strip_prefix(first.as_str()) else {
            return false;
        };
        for middle in &parts[1..parts.len() - 1] {
            match rest.find(middle.as_str()) {
                Some(i) => rest = &rest[i + middle.len()..],
                None => return false,
            }
        }
        rest.ends_with(last.as_str())
    }
}

/// A certificate watched for expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedCert {
    /// Its file.
    pub path: PathBuf,
    /// `notAfter`, Unix seconds; `None` when the file could not be read or parsed.
    pub not_after: Option<i64>,
}

/// A rule with the state it keeps between samples.
#[derive(Debug)]
pub enum Rule {
    /// `errors`.
    Errors {
        /// Channel pattern.
        channel: NamePattern,
        /// Destination pattern; `None` when the rule named none (source errors count too).
        destination: Option<NamePattern>,
        /// Required match of the last error reason.
        text: Option<Regex>,
    },
    /// `queue_depth`.
    QueueDepth {
        /// Bound.
        above: u64,
        /// Channel pattern.
        channel: NamePattern,
        /// Destination pattern.
        destination: NamePattern,
    },
    /// `no_inbound`.
    NoInbound {
        /// Channel pattern.
        channel: NamePattern,
        /// Quiet period.
        period: Duration,
        /// When each channel's received counter last moved (or when watching began).
        last_change: HashMap<String, Instant>,
        /// When watching began.
        since: Instant,
    },
    /// `certificate_expiry`.
    CertificateExpiry {
        /// Days of warning.
        within_days: u32,
        /// The certificates, refreshed by the runner.
        certs: Vec<WatchedCert>,
    },
    /// `failed_logins`.
    FailedLogins {
        /// Burst size.
        count: u32,
        /// Sliding window.
        within: Duration,
    },
}

/// What a rule observed when it fired: one line per finding, never message content.
pub type Observation = String;

/// Inputs of one evaluation besides the samples.
#[derive(Debug, Clone, Copy)]
pub struct Clock<'a> {
    /// Monotonic now.
    pub now: Instant,
    /// Wall-clock now, Unix seconds (certificate expiry).
    pub unix_now: i64,
    /// Failed logins recorded so far (oldest first), for `failed_logins`.
    pub failed_logins: &'a VecDeque<Instant>,
}

impl Rule {
    /// The rule of a configured condition, watching from `now`.
    ///
    /// # Errors
    /// The message of an invalid `errors.text` regex.
    pub fn new(condition: &AlertCondition, now: Instant) -> Result<Rule, String> {
        Ok(match condition {
            AlertCondition::Errors(e) => Rule::Errors {
                channel: NamePattern::new(e.channel.as_deref()),
                destination: e.destination.as_deref().map(|d| NamePattern::new(Some(d))),
                text: e
                    .text
                    .as_deref()
                    .map(Regex::new)
                    .transpose()
                    .map_err(|e| format!("errors.text is not a valid regex: {e}"))?,
            },
            AlertCondition::QueueDepth(q) => Rule::QueueDepth {
                above: q.above,
                channel: NamePattern::new(q.channel.as_deref()),
                destination: NamePattern::new(q.destination.as_deref()),
            },
            AlertCondition::NoInbound(n) => Rule::NoInbound {
                channel: NamePattern::new(Some(&n.channel)),
                period: n.period.get(),
                last_change: HashMap::new(),
                since: now,
            },
            AlertCondition::CertificateExpiry(c) => Rule::CertificateExpiry {
                within_days: c.within_days,
                certs: Vec::new(),
            },
            AlertCondition::FailedLogins(f) => Rule::FailedLogins {
                count: f.count,
                within: f.within.get(),
            },
        })
    }

    /// Evaluate on the step from `previous` to `current`; `Some` when the rule fires.
    pub fn evaluate(
        &mut self,
        previous: &Sample,
        current: &Sample,
        clock: Clock<'_>,
    ) -> Option<Observation> {
        let mut found = Vec::new();
        match self {
            Rule::Errors {
                channel,
                destination,
                text,
            } => {
                for c in current.channels.iter().filter(|c| channel.matches(&c.name)) {
                    let before = previous.channel(&c.name);
                    if destination.is_none() && text.is_none() {
                        let (r0, f0) = before.map(|b| (b.rejected, b.failed)).unwrap_or((0, 0));
                        let n = c.rejected.saturating_sub(r0) + c.failed.saturating_sub(f0);
                        if n > 0 {
                            found.push(format!(
                                "channel {}: {n} message(s) rejected or failed at the source",
                                c.name
                            ));
                        }
                    }
                    for d in &c.destinations {
                        if !destination.as_ref().is_none_or(|p| p.matches(&d.name)) {
                            continue;
                        }
                        let (e0, t0) = before
                            .and_then(|b| b.destinations.iter().find(|x| x.name == d.name))
                            .map(|x| (x.errored, x.retries))
                            .unwrap_or((0, 0));
                        let n = d.errored.saturating_sub(e0) + d.retries.saturating_sub(t0);
                        if n == 0 {
                            continue;
                        }
                        let reason = d.last_error.as_deref().unwrap_or("");
                        if text.as_ref().is_some_and(|re| !re.is_match(reason)) {
                            continue;
                        }
                        found.push(format!(
                            "channel {} destination {}: {n} failed delivery attempt(s); last error: {}",
                            c.name,
                            d.name,
                            clip(reason, 300)
                        ));
                    }
                }
            }
            Rule::QueueDepth {
                above,
                channel,
                destination,
            } => {
                for c in current.channels.iter().filter(|c| channel.matches(&c.name)) {
                    for d in c
                        .destinations
                        .iter()
                        .filter(|d| destination.matches(&d.name))
                    {
                        let depth = u64::try_from(d.queue_depth).unwrap_or(0);
                        if depth > *above {
                            found.push(format!(
                                "channel {} destination {}: queue depth {depth} (above {above})",
                                c.name, d.name
                            ));
                        }
                    }
                }
            }
            Rule::NoInbound {
                channel,
                period,
                last_change,
                since,
            } => {
                for c in current.channels.iter().filter(|c| channel.matches(&c.name)) {
                    let moved = previous
                        .channel(&c.name)
                        .is_some_and(|b| b.received != c.received);
                    let last = last_change.entry(c.name.clone()).or_insert(*since);
                    if moved || !c.deployed {
                        *last = clock.now;
                        continue;
                    }
                    let quiet = clock.now.saturating_duration_since(*last);
                    if quiet >= *period {
                        found.push(format!(
                            "channel {}: no inbound message for {} s (limit {} s); {} received in total",
                            c.name,
                            quiet.as_secs(),
                            period.as_secs(),
                            c.received
                        ));
                    }
                }
            }
            Rule::CertificateExpiry { within_days, certs } => {
                let horizon = clock
                    .unix_now
                    .saturating_add(i64::from(*within_days) * 86_400);
                for cert in certs.iter() {
                    match cert.not_after {
                        Some(t) if t <= clock.unix_now => found.push(format!(
                            "certificate {} expired {} day(s) ago",
                            cert.path.display(),
                            (clock.unix_now - t) / 86_400
                        )),
                        Some(t) if t <= horizon => found.push(format!(
                            "certificate {} expires in {} day(s) (within {within_days})",
                            cert.path.display(),
                            (t - clock.unix_now) / 86_400
                        )),
                        Some(_) => {}
                        None => found.push(format!(
                            "certificate {} cannot be read or parsed",
                            cert.path.display()
                        )),
                    }
                }
            }
            Rule::FailedLogins { count, within } => {
                let recent = clock
                    .failed_logins
                    .iter()
                    .filter(|t| clock.now.saturating_duration_since(**t) <= *within)
                    .count();
                if recent >= *count as usize {
                    found.push(format!(
                        "{recent} failed login(s) within {} s (limit {count})",
                        within.as_secs()
                    ));
                }
            }
        }
        (!found.is_empty()).then(|| found.join("\n"))
    }
}

fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// At most one notification per window per alert; counts the firings it held back.
#[derive(Debug, Clone)]
pub struct Throttle {
    window: Duration,
    last_sent: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// A throttle with this window.
    pub fn new(window: Duration) -> Throttle {
        Throttle {
            window,
            last_sent: None,
            suppressed: 0,
        }
    }

    /// The rule fired at `now`: `Some(n)` to notify (n firings were suppressed since the last
    /// notification), `None` to hold it back.
    pub fn fire(&mut self, now: Instant) -> Option<u64> {
        match self.last_sent {
            Some(t) if now.saturating_duration_since(t) < self.window => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_sent = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // synthetic samples are known good
mod tests {
    use super::*;
    use ferry_config::alerts::{
        CertificateExpiryRule, ErrorsRule, FailedLoginsRule, NoInboundRule, QueueDepthRule,
    };

    fn dest(
        name: &str,
        errored: u64,
        retries: u64,
        depth: i64,
        err: Option<&str>,
    ) -> DestinationSample {
        DestinationSample {
            name: name.into(),
            errored,
            retries,
            queue_depth: depth,
            last_error: err.map(str::to_owned),
        }
    }

    fn channel(name: &str, received: u64, destinations: Vec<DestinationSample>) -> ChannelSample {
        ChannelSample {
            name: name.into(),
            deployed: true,
            received,
            rejected: 0,
            failed: 0,
            destinations,
        }
    }

    fn sample(channels: Vec<ChannelSample>) -> Sample {
        Sample { channels }
    }

    fn eval(rule: &mut Rule, a: &Sample, b: &Sample, now: Instant) -> Option<String> {
        let logins = VecDeque::new();
        rule.evaluate(
            a,
            b,
            Clock {
                now,
                unix_now: 1_800_000_000,
                failed_logins: &logins,
            },
        )
    }

    #[test]
    fn patterns_match_with_stars() {
        assert!(NamePattern::new(None).matches("x"));
        assert!(NamePattern::new(Some("adt*")).matches("adt-in"));
        assert!(NamePattern::new(Some("adt*")).matches("adt"));
        assert!(!NamePattern::new(Some("adt*")).matches("lab"));
        assert!(NamePattern::new(Some("*-in")).matches("adt-in"));
        assert!(NamePattern::new(Some("a*d*n")).matches("adt-in"));
        assert!(!NamePattern::new(Some("a*x*n")).matches("adt-in"));
        assert!(NamePattern::new(Some("lab")).matches("lab"));
        assert!(!NamePattern::new(Some("lab")).matches("lab2"));
    }

    #[test]
    fn errors_fire_on_a_delta_and_filter_by_channel_and_text() {
        let now = Instant::now();
        let condition = AlertCondition::Errors(ErrorsRule {
            channel: Some("adt*".into()),
            destination: None,
            text: Some("refused".into()),
        });
        let mut rule = Rule::new(&condition, now).unwrap();
        let a = sample(vec![
            channel(
                "adt-in",
                5,
                vec![dest("his", 0, 1, 0, Some("connection refused"))],
            ),
            channel("lab", 5, vec![dest("lis", 0, 0, 0, None)]),
        ]);
        // No change: silent.
        assert_eq!(eval(&mut rule, &a, &a, now), None);
        // A retry with a matching reason fires and names the reason.
        let b = sample(vec![
            channel(
                "adt-in",
                5,
                vec![dest("his", 0, 3, 0, Some("connection refused"))],
            ),
            channel(
                "lab",
                5,
                vec![dest("lis", 4, 0, 0, Some("connection refused"))],
            ),
        ]);
        let seen = eval(&mut rule, &a, &b, now).unwrap();
        assert!(seen.contains("adt-in destination his: 2 failed"), "{seen}");
        assert!(seen.contains("connection refused"));
        assert!(!seen.contains("lab"), "other channel excluded: {seen}");
        // A reason that does not match the text is ignored.
        let c = sample(vec![
            channel("adt-in", 5, vec![dest("his", 1, 3, 0, Some("HTTP 500"))]),
            channel("lab", 5, vec![]),
        ]);
        assert_eq!(eval(&mut rule, &b, &c, now), None);
    }

    #[test]
    fn errors_without_destination_count_source_rejections() {
        let now = Instant::now();
        let mut rule = Rule::new(&AlertCondition::Errors(ErrorsRule::default()), now).unwrap();
        let a = sample(vec![channel("adt", 1, vec![])]);
        let mut b = a.clone();
        b.channels[0].rejected = 2;
        let seen = eval(&mut rule, &a, &b, now).unwrap();
        assert!(seen.contains("2 message(s) rejected"), "{seen}");
        let mut only_dest = Rule::new(
            &AlertCondition::Errors(ErrorsRule {
                destination: Some("*".into()),
                ..ErrorsRule::default()
            }),
            now,
        )
        .unwrap();
        assert_eq!(eval(&mut only_dest, &a, &b, now), None);
    }

    #[test]
    fn queue_depth_fires_strictly_above() {
        let now = Instant::now();
        let mut rule = Rule::new(
            &AlertCondition::QueueDepth(QueueDepthRule {
                above: 2,
                channel: None,
                destination: Some("api".into()),
            }),
            now,
        )
        .unwrap();
        let two = sample(vec![channel("c", 0, vec![dest("api", 0, 0, 2, None)])]);
        let three = sample(vec![channel(
            "c",
            0,
            vec![dest("api", 0, 0, 3, None), dest("other", 0, 0, 99, None)],
        )]);
        assert_eq!(eval(&mut rule, &two, &two, now), None);
        let seen = eval(&mut rule, &two, &three, now).unwrap();
        assert!(seen.contains("queue depth 3 (above 2)"), "{seen}");
        assert!(!seen.contains("other"));
    }

    #[test]
    fn no_inbound_fires_after_the_quiet_period_and_resets_on_traffic() {
        let t0 = Instant::now();
        let mut rule = Rule::new(
            &AlertCondition::NoInbound(NoInboundRule {
                channel: "adt".into(),
                period: ferry_config::Duration::secs(60),
            }),
            t0,
        )
        .unwrap();
        let a = sample(vec![channel("adt", 4, vec![])]);
        assert_eq!(eval(&mut rule, &a, &a, t0 + Duration::from_secs(30)), None);
        let seen = eval(&mut rule, &a, &a, t0 + Duration::from_secs(61)).unwrap();
        assert!(seen.contains("no inbound message for 61 s"), "{seen}");
        // A message arrives: quiet again from then.
        let b = sample(vec![channel("adt", 5, vec![])]);
        assert_eq!(eval(&mut rule, &a, &b, t0 + Duration::from_secs(62)), None);
        assert_eq!(eval(&mut rule, &b, &b, t0 + Duration::from_secs(100)), None);
        assert!(eval(&mut rule, &b, &b, t0 + Duration::from_secs(123)).is_some());
    }

    #[test]
    fn certificate_expiry_reports_soon_expired_and_unreadable() {
        let now = Instant::now();
        let mut rule = Rule::new(
            &AlertCondition::CertificateExpiry(CertificateExpiryRule {
                within_days: 14,
                files: vec![],
            }),
            now,
        )
        .unwrap();
        let unix = 1_800_000_000;
        let cert = |p: &str, t: Option<i64>| WatchedCert {
            path: p.into(),
            not_after: t,
        };
        if let Rule::CertificateExpiry { certs, .. } = &mut rule {
            *certs = vec![cert("far.pem", Some(unix + 90 * 86_400))];
        }
        let s = Sample::default();
        assert_eq!(eval(&mut rule, &s, &s, now), None);
        if let Rule::CertificateExpiry { certs, .. } = &mut rule {
            *certs = vec![
                cert("far.pem", Some(unix + 90 * 86_400)),
                cert("soon.pem", Some(unix + 13 * 86_400 + 5)),
                cert("gone.pem", Some(unix - 2 * 86_400)),
                cert("bad.pem", None),
            ];
        }
        let seen = eval(&mut rule, &s, &s, now).unwrap();
        assert!(seen.contains("soon.pem expires in 13 day(s)"), "{seen}");
        assert!(seen.contains("gone.pem expired 2 day(s) ago"), "{seen}");
        assert!(seen.contains("bad.pem cannot be read"), "{seen}");
        assert!(!seen.contains("far.pem"));
    }

    #[test]
    fn failed_logins_fire_on_a_burst_within_the_window() {
        let t0 = Instant::now();
        let mut rule = Rule::new(
            &AlertCondition::FailedLogins(FailedLoginsRule {
                count: 3,
                within: ferry_config::Duration::secs(60),
            }),
            t0,
        )
        .unwrap();
        let s = Sample::default();
        let logins: VecDeque<Instant> = [0, 50, 100, 110]
            .into_iter()
            .map(|s| t0 + Duration::from_secs(s))
            .collect();
        let at = |now: u64, rule: &mut Rule| {
            rule.evaluate(
                &s,
                &s,
                Clock {
                    now: t0 + Duration::from_secs(now),
                    unix_now: 0,
                    failed_logins: &logins,
                },
            )
        };
        // At 110 s the window (50..110) holds three.
        let seen = at(110, &mut rule).unwrap();
        assert!(seen.contains("3 failed login(s)"), "{seen}");
        // At 160 s only 100 and 110 remain.
        assert_eq!(at(160, &mut rule), None);
    }

    #[test]
    fn throttle_sends_once_per_window_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(60));
        assert_eq!(t.fire(t0), Some(0));
        assert_eq!(t.fire(t0 + Duration::from_secs(10)), None);
        assert_eq!(t.fire(t0 + Duration::from_secs(59)), None);
        assert_eq!(t.fire(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(t.fire(t0 + Duration::from_secs(61)), None);
    }
}
