//! Reading a configuration: files, `include`, interpolation, relative paths, errors with
//! positions, and semantic validation.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::Deserialize;

use crate::schema::{
    ChannelConfig, Config, DestinationConfig, EncodeConfig, ResponseMode, SourceConfig,
    StoreConfig, TlsConfig, TransformConfig,
};
use crate::values::{EnvLookup, Interpolation, with_interpolation};

/// A configuration error. `Display` gives `file:line:column: message` where a position is
/// known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the error is in.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(
                f,
                "{}:{line}:{column}: {}",
                self.file.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// 1-based line and column of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Edit distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Add "did you mean `x`?" to serde's "unknown field/variant `y`, expected …" messages.
fn suggest(message: &str) -> String {
    let unknown = ["unknown field `", "unknown variant `"]
        .iter()
        .find_map(|p| message.split_once(p).map(|(_, rest)| rest));
    let Some(rest) = unknown else {
        return message.to_owned();
    };
    let Some((given, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|candidate| (distance(given, candidate), candidate))
        .min();
    match best {
        Some((d, candidate)) if d <= (given.len() / 3).max(2) => {
            format!("{}; did you mean `{candidate}`?", message.trim_end())
        }
        _ => message.to_owned(),
    }
}

/// The offset of the token an error is about, searched inside the error's span. Tables read
/// through a tagged enum (sources, destinations) report the whole table as the span; this
/// narrows it to the offending key or `${…}` reference.
fn narrow(text: &str, span: std::ops::Range<usize>, message: &str) -> usize {
    let named = |prefix: &str| {
        message
            .split_once(prefix)
            .and_then(|(_, rest)| rest.split_once('`'))
            .map(|(name, _)| name.to_owned())
    };
    let needle = if let Some(var) = named("environment variable `") {
        Some(format!("${{env:{var}}}"))
    } else if message.contains("secret file `") {
        Some("${file:".to_owned())
    } else {
        named("unknown field `")
    };
    let Some(needle) = needle else {
        return span.start;
    };
    // The table runs to the next table header after the span.
    let mut end = span.end.min(text.len());
    let mut offset = end;
    for line in text.get(end..).unwrap_or("").split_inclusive('\n') {
        if offset > end && line.trim_start().starts_with('[') {
            break;
        }
        offset += line.len();
    }
    end = offset.min(text.len());
    let region = text.get(span.start..end).unwrap_or("");
    region
        .match_indices(needle.as_str())
        .map(|(i, _)| span.start + i)
        .find(|&i| {
            // A key must stand at the start of its line or after `{`/`,`.
            !message.contains("unknown field")
                || text[..i]
                    .trim_end_matches([' ', '\t'])
                    .ends_with(['\n', '{', ','])
                || i == 0
        })
        .unwrap_or(span.start)
}

fn parse_error(file: &Path, text: &str, error: toml::de::Error) -> ConfigError {
    let message = error.message();
    ConfigError {
        file: file.to_owned(),
        position: error
            .span()
            .map(|s| position(text, narrow(text, s, message))),
        message: suggest(message),
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        position: None,
        message: format!("cannot read the file: {e}"),
    })
}

/// The `[[channel]]` tables of an included file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelFile {
    #[serde(default, rename = "channel")]
    channels: Vec<ChannelConfig>,
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// Read, interpolate and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read(path)?;
        Config::from_str_with_env(&text, path, Rc::new(env_lookup))
    }

    /// [`load`](Self::load) for offline use (`ferry test`): an unset environment variable reads
    /// as the empty text instead of being an error, so channel tests run without production
    /// secrets. Never use this to run the engine.
    pub fn load_offline(path: &Path) -> Result<Config, ConfigError> {
        let text = read(path)?;
        Config::from_str_with_env(
            &text,
            path,
            Rc::new(|name: &str| Some(std::env::var(name).unwrap_or_default())),
        )
    }

    /// Parse configuration text as if read from `origin` (relative paths and `include`
    /// resolve against its directory), with `env` resolving `${env:…}`.
    pub fn from_str_with_env(
        text: &str,
        origin: &Path,
        env: EnvLookup,
    ) -> Result<Config, ConfigError> {
        let base = origin.parent().map(Path::to_path_buf).unwrap_or_default();
        let parse = |source: &str, file: &Path| -> Result<Config, ConfigError> {
            with_interpolation(
                Interpolation {
                    env: env.clone(),
                    base: base.clone(),
                },
                || toml::from_str::<Config>(source),
            )
            .map_err(|e| parse_error(file, source, e))
        };
        let mut config = parse(text, origin)?;
        let mut sources: Vec<(PathBuf, String, usize)> =
            vec![(origin.to_owned(), text.to_owned(), config.channels.len())];
        for pattern in config.include.clone() {
            for file in glob(&base, pattern.as_str(), origin)? {
                let included_text = read(&file)?;
                let included = with_interpolation(
                    Interpolation {
                        env: env.clone(),
                        base: base.clone(),
                    },
                    || toml::from_str::<ChannelFile>(&included_text),
                )
                .map_err(|e| parse_error(&file, &included_text, e))?;
                let n = included.channels.len();
                config.channels.extend(included.channels);
                sources.push((file, included_text, n));
            }
        }
        config.resolve_paths(&base);
        config.validate(&sources)?;
        config.channel_sections = sources
            .iter()
            .flat_map(|(_, text, _)| crate::section::channel_sections(text))
            .collect();
        Ok(config)
    }

    /// The configuration used when no file is given: SQLite at `data/ferry.db`, admin on
    /// 127.0.0.1:8480, no channels.
    pub fn embedded_default() -> Config {
        Config {
            store: StoreConfig::default(),
            admin: Default::default(),
            audit: Default::default(),
            cluster: Default::default(),
            include: Vec::new(),
            channels: Vec::new(),
            alerts: Default::default(),
            alert_rules: Vec::new(),
            retention: Default::default(),
            warnings: Vec::new(),
            channel_sections: Default::default(),
        }
    }

    /// The SQLite file to use.
    pub fn store_path(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from("data/ferry.db"))
    }

    /// Non-fatal findings (for example URLs over plain HTTP).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The `[[channel]]` section of channel `name` as written in its file, in a canonical
    /// form (keys sorted, comments and layout dropped) with literal secrets redacted and
    /// `${…}` references kept: what the audit trail diffs when a channel's configuration
    /// changes (see [`crate::section`]).
    pub fn channel_section(&self, name: &str) -> Option<&str> {
        self.channel_sections.get(name).map(String::as_str)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let fix_tls = |t: &mut TlsConfig| {
            for p in [&mut t.cert, &mut t.key, &mut t.ca, &mut t.client_ca]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
            t.crl.iter_mut().for_each(fix);
        };
        if self.store.url.is_none() {
            let mut p = self.store_path();
            fix(&mut p);
            self.store.path = Some(p);
        }
        if let Some(t) = self.store.tls.as_mut() {
            for p in [&mut t.ca, &mut t.cert, &mut t.key].into_iter().flatten() {
                fix(p);
            }
        }
        if let Some(t) = self.admin.tls.as_mut() {
            fix_tls(t);
        }
        if let Some(t) = self.audit.syslog.as_mut().and_then(|s| s.tls.as_mut()) {
            fix_tls(t);
        }
        for action in self.alerts.actions.values_mut() {
            let tls = match action {
                crate::alerts::AlertActionConfig::Email(e) => e.tls.as_mut(),
                crate::alerts::AlertActionConfig::Webhook(w) => w.tls.as_mut(),
                crate::alerts::AlertActionConfig::Syslog(s) => s.tls.as_mut(),
            };
            if let Some(t) = tls {
                fix_tls(t);
            }
        }
        for rule in &mut self.alert_rules {
            if let crate::alerts::AlertCondition::CertificateExpiry(c) = &mut rule.when {
                c.files.iter_mut().for_each(fix);
            }
        }
        let fix_transforms = |steps: &mut Vec<TransformConfig>| {
            for step in steps {
                let files = [
                    step.map.as_mut().map(|m| &mut m.table),
                    step.template.as_mut(),
                    step.js.as_mut(),
                ];
                for p in files.into_iter().flatten() {
                    fix(p);
                }
            }
        };
        let fix_filters = |filters: &mut Vec<crate::FilterConfig>| {
            let mut stack: Vec<&mut crate::FilterConfig> = filters.iter_mut().collect();
            while let Some(f) = stack.pop() {
                if let Some(p) = f.js.as_mut() {
                    fix(p);
                }
                if let Some(any) = f.any.as_mut() {
                    stack.extend(any.iter_mut());
                }
            }
        };
        for channel in &mut self.channels {
            fix_transforms(&mut channel.transforms);
            fix_filters(&mut channel.filters);
            if let Some(p) = channel.preprocess.as_mut().and_then(|p| p.js.as_mut()) {
                fix(p);
            }
            for p in &mut channel.scripts.libraries {
                fix(p);
            }
            for dest in &mut channel.destinations {
                fix_filters(dest.filters_mut());
                let (transforms, responses, encode) = dest.transforms_and_encode_mut();
                fix_transforms(transforms);
                fix_transforms(responses);
                if let EncodeConfig::Template(p) = encode {
                    fix(p);
                }
            }
            let tls = match &mut channel.source {
                SourceConfig::Mllp(s) => s.tls.as_mut(),
                SourceConfig::Http(s) => s.tls.as_mut(),
                SourceConfig::HttpPoll(s) => s.tls.as_mut(),
                SourceConfig::Channel(_) => None,
            };
            if let Some(t) = tls {
                fix_tls(t);
            }
            for dest in &mut channel.destinations {
                match dest {
                    DestinationConfig::Http(d) => {
                        if let Some(t) = d.tls.as_mut() {
                            fix_tls(t);
                        }
                    }
                    DestinationConfig::Mllp(d) => {
                        if let Some(t) = d.tls.as_mut() {
                            fix_tls(t);
                        }
                    }
                    DestinationConfig::File(d) => fix(&mut d.directory),
                    DestinationConfig::Channel(_) => {}
                }
            }
        }
    }

    fn validate(&mut self, sources: &[(PathBuf, String, usize)]) -> Result<(), ConfigError> {
        // Which file and line each channel came from, for error positions.
        let mut origins = Vec::new();
        for (file, text, n) in sources {
            for _ in 0..*n {
                origins.push((file.clone(), text.as_str()));
            }
        }
        let main_file = sources.first().map(|s| s.0.clone()).unwrap_or_default();
        let fail = |file: &Path, text: Option<&str>, needle: &str, message: String| {
            let position = text.and_then(|t| t.find(needle).map(|o| position(t, o)));
            ConfigError {
                file: file.to_owned(),
                position,
                message,
            }
        };
        if self.store.path.is_some() && self.store.url.is_some() {
            return Err(fail(
                &main_file,
                None,
                "",
                "[store]: set `path` (SQLite) or `url` (PostgreSQL), not both".into(),
            ));
        }
        if self.cluster.enabled && self.store.url.is_none() {
            return Err(fail(
                &main_file,
                Some(sources.first().map(|s| s.1.as_str()).unwrap_or("")),
                "[cluster]",
                "[cluster] enabled = true needs the shared PostgreSQL store: set [store] url \
                 (nodes on SQLite cannot share queues)"
                    .into(),
            ));
        }
        if self.cluster.lease_ttl() < std::time::Duration::from_secs(1)
            || self.cluster.queue_poll().is_zero()
        {
            return Err(fail(
                &main_file,
                Some(sources.first().map(|s| s.1.as_str()).unwrap_or("")),
                "[cluster]",
                "[cluster]: lease_ttl must be at least 1s and queue_poll above 0".into(),
            ));
        }
        if let Some(url) = &self.store.url {
            let url = url.expose();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(fail(
                    &main_file,
                    Some(sources.first().map(|s| s.1.as_str()).unwrap_or("")),
                    "url",
                    "[store] url: must start with postgres:// or postgresql://".into(),
                ));
            }
        }
        if let Some(e) = &self.store.encryption {
            e.keys().map_err(|m| {
                fail(
                    &main_file,
                    Some(sources.first().map(|s| s.1.as_str()).unwrap_or("")),
                    "encryption",
                    format!("[store] encryption: {m}"),
                )
            })?;
        }
        if let Some(t) = &self.store.tls
            && t.cert.is_some() != t.key.is_some()
        {
            return Err(fail(
                &main_file,
                None,
                "",
                "[store.tls]: `cert` and `key` go together (both or neither)".into(),
            ));
        }
        if let Some(t) = &self.admin.tls {
            listener_tls(t).map_err(|m| fail(&main_file, None, "", format!("[admin] tls: {m}")))?;
        }
        let main_text = sources.first().map(|s| s.1.as_str()).unwrap_or("");
        validate_retention(
            &crate::schema::RetentionConfig {
                content: self.retention.content,
                metadata: self.retention.metadata,
                prune_errored: None,
                prune_queued: None,
            },
            None,
        )
        .and_then(|()| {
            let r = &self.retention;
            if r.interval.get() < std::time::Duration::from_secs(1) {
                return Err("interval must be at least 1s".to_owned());
            }
            if !(1..=100_000).contains(&r.batch) {
                return Err(format!("batch must be 1 to 100000, not {}", r.batch));
            }
            Ok(())
        })
        .map_err(|m| {
            fail(
                &main_file,
                Some(main_text),
                "[retention]",
                format!("[retention]: {m}"),
            )
        })?;
        let mut names = HashSet::new();
        let mut listens = vec![(self.admin.listen, "[admin]".to_owned())];
        let mut warnings = Vec::new();
        for (i, channel) in self.channels.iter().enumerate() {
            let (file, text) = origins
                .get(i)
                .map(|(f, t)| (f.as_path(), Some(*t)))
                .unwrap_or((main_file.as_path(), None));
            let needle = format!("\"{}\"", channel.name);
            let err = |message: String| {
                fail(
                    file,
                    text,
                    &needle,
                    format!("channel `{}`: {message}", channel.name),
                )
            };
            if channel.name.is_empty()
                || !channel
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(fail(
                    file,
                    text,
                    &needle,
                    format!(
                        "channel name `{}` must be non-empty and use only letters, digits, `-`, `_` and `.`",
                        channel.name
                    ),
                ));
            }
            if !names.insert(channel.name.clone()) {
                return Err(err("defined twice (channel names must be unique)".into()));
            }
            if channel.response == ResponseMode::AfterDelivery {
                if let Some(from) = &channel.response_from
                    && !channel.destinations.iter().any(|d| d.name() == from)
                {
                    return Err(err(format!(
                        "response_from `{from}` is not a destination of this channel"
                    )));
                }
                positive(&[("response_timeout", channel.response_timeout)]).map_err(err)?;
            } else if channel.response_from.is_some() {
                return Err(err(
                    "response_from only applies to response = \"after-delivery\"".into(),
                ));
            }
            if channel.reject_filtered && channel.response != ResponseMode::AfterTransform {
                return Err(err(
                    "reject_filtered only applies to response = \"after-transform\"".into(),
                ));
            }
            let listen = match &channel.source {
                SourceConfig::Mllp(s) => {
                    if let Some(t) = &s.tls {
                        listener_tls(t).map_err(|m| err(format!("source tls: {m}")))?;
                    }
                    if s.max_connections == 0 {
                        return Err(err("source max_connections must be at least 1".into()));
                    }
                    positive(&[
                        ("read_timeout", s.read_timeout),
                        ("idle_timeout", s.idle_timeout),
                    ])
                    .map_err(|m| err(format!("source {m}")))?;
                    Some(s.listen)
                }
                SourceConfig::Http(s) => {
                    if let Some(t) = &s.tls {
                        listener_tls(t).map_err(|m| err(format!("source tls: {m}")))?;
                    }
                    if !s.path.starts_with('/') {
                        return Err(err(format!("source path `{}` must start with `/`", s.path)));
                    }
                    Some(s.listen)
                }
                SourceConfig::HttpPoll(s) => {
                    url_scheme(
                        s.url.as_str(),
                        &mut warnings,
                        &format!("channel `{}` source", channel.name),
                    )
                    .map_err(|m| err(format!("source {m}")))?;
                    if let Some(t) = &s.tls {
                        client_tls(t).map_err(|m| err(format!("source tls: {m}")))?;
                    }
                    positive(&[("interval", s.interval), ("timeout", s.timeout)])
                        .map_err(|m| err(format!("source {m}")))?;
                    None
                }
                SourceConfig::Channel(_) => None,
            };
            if let Some(addr) = listen {
                let owner = format!("channel `{}`", channel.name);
                if addr.port() != 0
                    && let Some((_, other)) = listens.iter().find(|(a, _)| *a == addr)
                {
                    return Err(err(format!(
                        "listen address {addr} is already used by {other}"
                    )));
                }
                listens.push((addr, owner));
            }
            if let Some(d) = &channel.dedupe {
                positive(&[("dedupe window", d.window)]).map_err(err)?;
            }
            if let Some(r) = &channel.retention {
                // The channel's own fields, and what they make of `[retention]`'s.
                validate_retention(r, Some(&self.retention))
                    .map_err(|m| err(format!("retention: {m}")))?;
            }
            let metadata = channel
                .retention
                .and_then(|r| r.metadata)
                .or(self.retention.metadata);
            if let (Some(d), Some(crate::schema::Keep::For(m))) = (&channel.dedupe, metadata)
                && m < d.window
            {
                warnings.push(format!(
                    "channel `{}`: retention keeps messages {m:?} but the dedupe window is {:?}: \
                     a copy of a pruned message is not recognised as a duplicate",
                    channel.name, d.window
                ));
            }
            if let Some(index) = &channel.index {
                if index.len() > MAX_INDEX_KEYS {
                    return Err(err(format!(
                        "index has {} keys; at most {MAX_INDEX_KEYS}",
                        index.len()
                    )));
                }
                if let Some(key) = index.keys().find(|k| !valid_index_key(k)) {
                    return Err(err(format!(
                        "index key `{key}`: use 1 to 32 letters, digits, `_` or `-`"
                    )));
                }
            }
            if channel.destinations.is_empty() {
                return Err(err(
                    "has no destination; add a [[channel.destination]]".into()
                ));
            }
            let mut dest_names = HashSet::new();
            for dest in &channel.destinations {
                let name = dest.name();
                let derr = |message: String| err(format!("destination `{name}`: {message}"));
                if name.is_empty() || name == ferry_source_name() {
                    return Err(derr(
                        "destination names must be non-empty and not `source`".into(),
                    ));
                }
                if !dest_names.insert(name.to_owned()) {
                    return Err(derr("defined twice in this channel".into()));
                }
                if !(1..=64).contains(&dest.workers()) {
                    return Err(derr(format!(
                        "workers must be between 1 and 64 ({} given)",
                        dest.workers()
                    )));
                }
                if dest.workers() == 1 && dest.order_by().is_some() {
                    warnings.push(format!(
                        "channel `{}` destination `{name}`: order_by has no effect with workers = 1",
                        channel.name
                    ));
                }
                let retry = dest.retry();
                if retry.multiplier < 1.0 || !retry.multiplier.is_finite() {
                    return Err(derr("retry multiplier must be at least 1.0".into()));
                }
                positive(&[("retry initial", retry.initial), ("retry max", retry.max)])
                    .map_err(derr)?;
                match dest {
                    DestinationConfig::Http(d) => {
                        url_scheme(
                            d.url.as_str(),
                            &mut warnings,
                            &format!("channel `{}` destination `{name}`", channel.name),
                        )
                        .map_err(derr)?;
                        if !matches!(d.method.as_str(), "POST" | "PUT" | "PATCH") {
                            return Err(derr(format!(
                                "method `{}` must be POST, PUT or PATCH",
                                d.method
                            )));
                        }
                        if let Some(t) = &d.tls {
                            client_tls(t).map_err(|m| derr(format!("tls: {m}")))?;
                        }
                        positive(&[("timeout", d.timeout)]).map_err(derr)?;
                    }
                    DestinationConfig::Mllp(d) => {
                        let address = d.address.as_str();
                        let port_ok = address.rsplit_once(':').is_some_and(|(h, p)| {
                            !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0)
                        });
                        if !port_ok {
                            return Err(derr(format!("address `{address}` must be host:port")));
                        }
                        if let Some(t) = &d.tls {
                            client_tls(t).map_err(|m| derr(format!("tls: {m}")))?;
                        }
                        positive(&[
                            ("response_timeout", d.response_timeout),
                            ("connect_timeout", d.connect_timeout),
                        ])
                        .map_err(derr)?;
                    }
                    DestinationConfig::File(d) => {
                        if d.file_name.is_empty() || d.file_name.contains('/') {
                            return Err(derr("file_name must be a file name, without `/`".into()));
                        }
                    }
                    DestinationConfig::Channel(d) if channel.enabled => {
                        let target = self.channels.iter().find(|c| c.name == d.channel);
                        match target {
                            _ if d.channel == channel.name => {
                                return Err(derr(format!(
                                    "routes to its own channel `{}` (a loop)",
                                    d.channel
                                )));
                            }
                            None => {
                                return Err(derr(format!("unknown channel `{}`", d.channel)));
                            }
                            Some(t) if !t.enabled => {
                                return Err(derr(format!(
                                    "channel `{}` is disabled (`enabled = false`)",
                                    d.channel
                                )));
                            }
                            Some(_) => {}
                        }
                    }
                    DestinationConfig::Channel(_) => {}
                }
            }
        }
        crate::alerts::validate(&self.alerts, &self.alert_rules, &mut warnings)
            .map_err(|m| fail(&main_file, None, "", m))?;
        self.warnings = warnings;
        Ok(())
    }
}

/// The connector name reserved for sources in the store.
fn ferry_source_name() -> &'static str {
    "source"
}

/// A retention's periods are longer than zero and content is not kept longer than the message
/// (`defaults`: the `[retention]` values the channel's missing fields take).
fn validate_retention(
    r: &crate::schema::RetentionConfig,
    defaults: Option<&crate::schema::RetentionDefaults>,
) -> Result<(), String> {
    use crate::schema::Keep;
    for (name, keep) in [("content", r.content), ("metadata", r.metadata)] {
        if let Some(Keep::For(d)) = keep {
            positive(&[(name, d)])?;
        }
    }
    let content = r.content.or(defaults.and_then(|d| d.content));
    let metadata = r.metadata.or(defaults.and_then(|d| d.metadata));
    match (content, metadata) {
        (Some(Keep::For(c)), Some(Keep::For(m))) if m < c => Err(format!(
            "metadata ({m:?}) is shorter than content ({c:?}): a message cannot outlive its \
             metadata; make metadata at least as long"
        )),
        (Some(Keep::Forever), Some(Keep::For(m))) => Err(format!(
            "content is kept forever but metadata only {m:?}: a message cannot outlive its \
                 metadata"
        )),
        _ => Ok(()),
    }
}

fn positive(values: &[(&str, crate::values::Duration)]) -> Result<(), String> {
    for (name, value) in values {
        if value.get().is_zero() {
            return Err(format!("{name} must be longer than zero"));
        }
    }
    Ok(())
}

fn url_scheme(url: &str, warnings: &mut Vec<String>, what: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        Ok(())
    } else if url.starts_with("http://") {
        warnings.push(format!(
            "{what} sends over plain HTTP ({url}); use https:// outside a test bench"
        ));
        Ok(())
    } else {
        Err(format!("url `{url}` must start with https:// (or http://)"))
    }
}

fn listener_tls(t: &TlsConfig) -> Result<(), String> {
    if t.cert.is_none() || t.key.is_none() {
        return Err("a listener needs both `cert` and `key`".into());
    }
    if !t.allowed_clients.is_empty() && t.client_ca.is_none() {
        return Err(
            "`allowed_clients` needs `client_ca` (the CA client certificates must chain to)".into(),
        );
    }
    if !t.crl.is_empty() && t.client_ca.is_none() {
        return Err(
            "`crl` needs `client_ca` (revocation lists are checked for client certificates)".into(),
        );
    }
    if t.ca.is_some() {
        return Err("`ca` is for clients; a listener verifies clients with `client_ca`".into());
    }
    Ok(())
}

fn client_tls(t: &TlsConfig) -> Result<(), String> {
    if t.cert.is_some() != t.key.is_some() {
        return Err("`cert` and `key` go together (both or neither)".into());
    }
    if t.client_ca.is_some() || !t.allowed_clients.is_empty() || !t.crl.is_empty() {
        return Err("`client_ca`, `allowed_clients` and `crl` are for listeners; a client trusts its server with `ca`".into());
    }
    Ok(())
}

/// Files matching `pattern` (relative to `base`), `*` allowed in the file name only.
fn glob(base: &Path, pattern: &str, origin: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let full = base.join(pattern);
    let dir = full.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if dir.to_string_lossy().contains('*') {
        return Err(ConfigError {
            file: origin.to_owned(),
            position: None,
            message: format!("include `{pattern}`: `*` is allowed only in the file name"),
        });
    }
    if !name.contains('*') {
        return Ok(vec![full]);
    }
    let (prefix, suffix) = name.split_once('*').unwrap_or((&name, ""));
    let entries = std::fs::read_dir(&dir).map_err(|e| ConfigError {
        file: origin.to_owned(),
        position: None,
        message: format!("include `{pattern}`: cannot read {}: {e}", dir.display()),
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().map(|n| n.to_string_lossy()).is_some_and(|n| {
                n.starts_with(prefix)
                    && n.ends_with(suffix)
                    && n.len() >= prefix.len() + suffix.len()
            })
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Most keys a channel's `index` may name.
const MAX_INDEX_KEYS: usize = 16;

/// An `index` key: 1 to 32 ASCII letters, digits, `_` or `-` (it appears in search URLs as
/// `meta=key:value`, so no `:`).
fn valid_index_key(key: &str) -> bool {
    (1..=32).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
