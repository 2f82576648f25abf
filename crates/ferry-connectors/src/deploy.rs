//! From a validated configuration to running channels.
//!
//! Deployment is all-or-nothing: every destination client and every TLS configuration is built
//! (certificates and keys read and checked) before the engine starts, and every listener is
//! bound before the first one serves ([`crate::runtime::deploy`]). [`check`] runs the same
//! build without binding anything, which is what `ferry check` reports on ([`check_file`]).

use std::net::SocketAddr;
use std::sync::Arc;

use ferry_config::{
    ChannelConfig, Config, DestinationConfig, EncodeConfig, FilterConfig, RetryConfig, SourceConfig,
};
use ferry_engine::transform::Encoder;
use ferry_engine::{
    ChannelSpec, Destination, DestinationProcessing, DestinationSpec, EngineError, FilterRule,
    MetadataIndex, ResponseMode, RetryPolicy, Router,
};
use ferry_hl7::Path;
use ferry_tls::TlsError;

use crate::http::{HttpDestination, HttpDestinationSettings, HttpPoller, HttpPollerSettings};
use crate::mllp::{MllpDestination, MllpEndpoint, MllpSourceSettings, NakPolicy};

mod processing;
mod transforms;

pub use transforms::{
    ChannelTransforms, DestinationTransforms, JsSource, StepPlan, channel_transforms, encoder,
    transform_steps,
};

/// Why a configuration could not be deployed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// A TLS file could not be loaded or does not fit.
    #[error("channel `{channel}`, {connector}: TLS: {source}")]
    Tls {
        /// Channel name.
        channel: String,
        /// `source` or `destination <name>`.
        connector: String,
        /// Cause (boxed: TLS errors carry paths and are large).
        source: Box<TlsError>,
    },
    /// A URL or address is invalid.
    #[error("channel `{channel}`, {connector}: {message}")]
    Invalid {
        /// Channel name.
        channel: String,
        /// `source` or `destination <name>`.
        connector: String,
        /// What is wrong.
        message: String,
    },
    /// A listener could not bind.
    #[error("channel `{channel}`: cannot listen on {address}: {source}")]
    Bind {
        /// Channel name.
        channel: String,
        /// Address.
        address: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The engine failed to start.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A listener that a deployed channel opened.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// Channel name.
    pub channel: String,
    /// `mllp`, `mllps`, `http` or `https`.
    pub scheme: &'static str,
    /// Bound address (the real port when the configuration said 0).
    pub address: SocketAddr,
}

/// What a channel's source binds and serves; kept to start it again after a pause or stop.
#[derive(Clone)]
pub(crate) enum SourcePlan {
    Mllp(MllpSourceSettings),
    Http {
        listen: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        path: String,
        max_body_bytes: usize,
        read_timeout: std::time::Duration,
    },
    Poll(HttpPoller),
    /// `type = "channel"`: nothing to bind; receives what is routed to it.
    Channel,
}

impl SourcePlan {
    /// The listener's scheme (`None`: the source does not listen).
    pub(crate) fn scheme(&self) -> Option<&'static str> {
        match self {
            SourcePlan::Mllp(s) if s.tls.is_some() => Some("mllps"),
            SourcePlan::Mllp(_) => Some("mllp"),
            SourcePlan::Http { tls: Some(_), .. } => Some("https"),
            SourcePlan::Http { .. } => Some("http"),
            SourcePlan::Poll(_) | SourcePlan::Channel => None,
        }
    }
}

/// One channel built from its configuration, nothing bound or running yet.
pub(crate) struct ChannelPlan {
    pub(crate) spec: ChannelSpec,
    pub(crate) source: SourcePlan,
    /// Per connector, the certificates its TLS loaded (for the expiry gauge).
    pub(crate) certificates: Vec<(String, Vec<ferry_engine::CertificateGauge>)>,
    /// The listener certificate to reload when its files change.
    pub(crate) watched: Option<crate::tls::Watched>,
}

/// Why a configuration file does not pass `ferry check`; `Display` is what `ferry check`
/// prints (`file:line:column: message` where the position is known).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The file does not load (syntax, unknown key, bad value, failed validation).
    #[error("{0}")]
    Config(#[from] ferry_config::ConfigError),
    /// A channel cannot be built (a certificate, script, table or URL).
    #[error("{}: {error}", path.display())]
    Deploy {
        /// The configuration file.
        path: std::path::PathBuf,
        /// What failed.
        error: DeployError,
    },
    /// The audit syslog settings are invalid.
    #[error("{}: {message}", path.display())]
    Syslog {
        /// The configuration file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Load `path` and check it as `ferry check` does: parse and validate, then build every
/// enabled channel's connectors (certificates and keys read, scripts compiled, URLs parsed)
/// without binding or connecting, and the audit syslog settings. Reads files: call it off the
/// async threads.
pub fn check_file(path: &std::path::Path) -> Result<Config, CheckError> {
    let config = Config::load(path)?;
    check(&config).map_err(|error| CheckError::Deploy {
        path: path.to_owned(),
        error,
    })?;
    if let Some(syslog) = &config.audit.syslog {
        crate::syslog::settings(syslog).map_err(|message| CheckError::Syslog {
            path: path.to_owned(),
            message,
        })?;
    }
    Ok(config)
}

/// Build every connector of the configuration without binding or connecting: what
/// `ferry check` runs.
pub fn check(config: &Config) -> Result<(), DeployError> {
    let router = Router::new();
    for channel in config.channels.iter().filter(|c| c.enabled) {
        plan(channel, &router)?;
    }
    Ok(())
}

/// The processing pipeline of every enabled channel, built exactly as `deploy` builds it
/// (filters, transformers, scripts, encoders) but without its connectors, so nothing binds or
/// connects and no certificate is read: what `ferry test` runs offline.
pub fn pipelines(config: &Config) -> Result<Vec<ferry_engine::Pipeline>, DeployError> {
    config
        .channels
        .iter()
        .filter(|c| c.enabled)
        .map(|c| {
            let p = processing::processing(c)?;
            Ok(ferry_engine::Pipeline {
                destinations: p
                    .destinations
                    .into_iter()
                    .map(|(processing, _)| processing)
                    .collect(),
                ..p.source
            })
        })
        .collect()
}

/// The TLS configuration of a listener that is not a channel, loaded once (no reload; the
/// admin server uses [`crate::Runtime::admin_tls`]).
pub fn server_tls(tls: &ferry_config::TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    crate::tls::server(tls, &[b"http/1.1"])
}

fn retry_policy(retry: &RetryConfig) -> RetryPolicy {
    RetryPolicy {
        initial: retry.initial.get(),
        max: retry.max.get(),
        multiplier: retry.multiplier,
        max_attempts: retry.max_attempts,
    }
}

/// A `[[channel.filter]]` as an engine rule: exactly one test, a valid path, a valid regex.
pub(crate) fn filter_rule(f: &FilterConfig) -> Result<FilterRule, String> {
    let tests = [
        f.equals.is_some(),
        f.one_of.is_some(),
        f.contains.is_some(),
        f.regex.is_some(),
        f.exists.is_some(),
        f.any.is_some(),
    ]
    .iter()
    .filter(|t| **t)
    .count();
    if tests != 1 {
        return Err(format!(
            "a filter has exactly one of `equals`, `in`, `contains`, `regex`, `exists`, `any` ({tests} given)"
        ));
    }
    let path = || -> Result<Path, String> {
        let field = f
            .field
            .as_deref()
            .ok_or("`field` (an HL7 path such as \"MSH-9.2\") is required")?;
        Path::parse(field).map_err(|e| e.to_string())
    };
    let rule = if let Some(v) = &f.equals {
        FilterRule::Equals(path()?, v.clone())
    } else if let Some(v) = &f.one_of {
        FilterRule::OneOf(path()?, v.clone())
    } else if let Some(v) = &f.contains {
        FilterRule::Contains(path()?, v.clone())
    } else if let Some(v) = &f.regex {
        let regex = regex::Regex::new(v).map_err(|e| format!("`regex`: {e}"))?;
        FilterRule::Regex(path()?, regex)
    } else if let Some(v) = f.exists {
        FilterRule::Exists(path()?, v)
    } else {
        if f.field.is_some() {
            return Err("`any` takes its fields in its own rules, not `field`".to_owned());
        }
        let rules = f.any.as_deref().unwrap_or_default();
        if rules.is_empty() {
            return Err("`any` needs at least one rule".to_owned());
        }
        FilterRule::Any(
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| filter_rule(r).map_err(|e| format!("any[{i}]: {e}")))
                .collect::<Result<_, _>>()?,
        )
    };
    Ok(if f.not {
        FilterRule::Not(Box::new(rule))
    } else {
        rule
    })
}

pub(crate) fn plan(channel: &ChannelConfig, router: &Router) -> Result<ChannelPlan, DeployError> {
    // Filters, transformers, scripts and encoders: files read, paths, templates and scripts
    // checked, so `ferry check` and a deploy refuse a bad one.
    let processing = processing::processing(channel)?;
    let mut destination_processing = processing.destinations.into_iter();
    let name = channel.name.clone();
    let tls_error = |connector: String| {
        let channel = name.clone();
        move |source: TlsError| DeployError::Tls {
            channel,
            connector,
            source: Box::new(source),
        }
    };
    let invalid = |connector: &str, message: String| DeployError::Invalid {
        channel: name.clone(),
        connector: connector.to_owned(),
        message,
    };
    let mut certificates = Vec::new();
    let source_tls = match &channel.source {
        SourceConfig::Mllp(s) => s
            .tls
            .as_ref()
            .map(|t| crate::tls::server_certificates(&name, "source", t)),
        SourceConfig::Http(s) => s
            .tls
            .as_ref()
            .map(|t| crate::tls::server_certificates(&name, "source", t)),
        SourceConfig::HttpPoll(s) => Some(crate::tls::client_certificates(
            &name,
            "source",
            s.tls.as_ref(),
        )),
        SourceConfig::Channel(_) => None,
    };
    if let Some(certs) = source_tls {
        certificates.push(("source".to_owned(), certs));
    }
    let mut watched = None;
    let mut watch = |t: &ferry_config::TlsConfig, alpn: &[&[u8]]| {
        let (config, cert) = crate::tls::server_reloadable(t, alpn)?;
        watched = Some(crate::tls::Watched {
            channel: name.clone(),
            connector: "source".to_owned(),
            tls: t.clone(),
            cert,
        });
        Ok::<_, TlsError>(config)
    };
    let source = match &channel.source {
        SourceConfig::Mllp(s) => SourcePlan::Mllp(MllpSourceSettings {
            listen: s.listen,
            tls: s
                .tls
                .as_ref()
                .map(|t| watch(t, &[]))
                .transpose()
                .map_err(tls_error("source".into()))?,
            max_frame_bytes: s.max_frame_size.bytes(),
            read_timeout: s.read_timeout.get(),
            idle_timeout: s.idle_timeout.get(),
            max_connections: s.max_connections,
        }),
        SourceConfig::Http(s) => SourcePlan::Http {
            listen: s.listen,
            tls: s
                .tls
                .as_ref()
                .map(|t| watch(t, &[b"http/1.1"]))
                .transpose()
                .map_err(tls_error("source".into()))?,
            path: s.path.clone(),
            max_body_bytes: s.max_body_size.bytes(),
            read_timeout: s.read_timeout.get(),
        },
        SourceConfig::HttpPoll(s) => {
            let url = reqwest::Url::parse(s.url.as_str())
                .map_err(|e| invalid("source", format!("invalid url: {e}")))?;
            let tls = crate::tls::client(s.tls.as_ref()).map_err(tls_error("source".into()))?;
            let poller = HttpPoller::new(HttpPollerSettings {
                url,
                interval: s.interval.get(),
                headers: s
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                    .collect(),
                tls,
                timeout: s.timeout.get(),
                max_body_bytes: ferry_mllp::DEFAULT_MAX_FRAME_BYTES,
            })
            .map_err(|e| invalid("source", e.to_string()))?;
            SourcePlan::Poll(poller)
        }
        SourceConfig::Channel(_) => SourcePlan::Channel,
    };
    let mut destinations = Vec::with_capacity(channel.destinations.len());
    for dest in &channel.destinations {
        let connector = format!("destination `{}`", dest.name());
        let dest_tls = match dest {
            DestinationConfig::Http(d) => d.tls.as_ref(),
            DestinationConfig::Mllp(d) => d.tls.as_ref(),
            _ => None,
        };
        if dest_tls.is_some() {
            certificates.push((
                dest.name().to_owned(),
                crate::tls::client_certificates(&name, dest.name(), dest_tls),
            ));
        }
        let sender: Arc<dyn Destination> = match dest {
            DestinationConfig::Http(d) => {
                let url = reqwest::Url::parse(d.url.as_str())
                    .map_err(|e| invalid(&connector, format!("invalid url: {e}")))?;
                let method = reqwest::Method::from_bytes(d.method.as_bytes())
                    .map_err(|_| invalid(&connector, format!("invalid method `{}`", d.method)))?;
                let tls =
                    crate::tls::client(d.tls.as_ref()).map_err(tls_error(connector.clone()))?;
                Arc::new(
                    HttpDestination::new(HttpDestinationSettings {
                        url,
                        method,
                        headers: d
                            .headers
                            .iter()
                            .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                            .collect(),
                        tls,
                        timeout: d.timeout.get(),
                        // JSON (lossless or from a template) is sent as JSON, not as HL7.
                        content_type: match &d.encode {
                            EncodeConfig::Hl7 => Encoder::Hl7,
                            EncodeConfig::Json | EncodeConfig::Template(_) => Encoder::Json,
                        }
                        .content_type(),
                    })
                    .map_err(|e| invalid(&connector, e.to_string()))?,
                )
            }
            DestinationConfig::Mllp(d) => {
                let address = d.address.as_str().to_owned();
                let host = address
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_owned())
                    .ok_or_else(|| {
                        invalid(&connector, format!("address `{address}` has no port"))
                    })?;
                let tls = match &d.tls {
                    None => None,
                    Some(t) => {
                        let config =
                            crate::tls::client(Some(t)).map_err(tls_error(connector.clone()))?;
                        let server_name = d.server_name.clone().unwrap_or(host);
                        let name = ferry_tls::server_name(&server_name)
                            .map_err(tls_error(connector.clone()))?;
                        Some((config, name))
                    }
                };
                let endpoint = MllpEndpoint {
                    address,
                    tls,
                    connect_timeout: d.connect_timeout.get(),
                    max_frame_bytes: d.max_frame_size.bytes(),
                };
                let on_nak = match d.on_nak {
                    ferry_config::NakAction::Retry => NakPolicy::Retry,
                    ferry_config::NakAction::Error => NakPolicy::Error,
                };
                Arc::new(MllpDestination::new(
                    endpoint,
                    d.response_timeout.get(),
                    d.keep_alive,
                    on_nak,
                ))
            }
            DestinationConfig::File(d) => Arc::new(crate::file::FileDestination::new(
                d.directory.clone(),
                d.file_name.clone(),
            )),
            DestinationConfig::Channel(d) => Arc::new(crate::channel::ChannelDestination::new(
                router.clone(),
                d.channel.clone(),
            )),
        };
        let order_by = dest
            .order_by()
            .map(|p| Path::parse(p).map_err(|e| invalid(&connector, format!("order_by: {e}"))))
            .transpose()?;
        let (processing, response_transform) = destination_processing
            .next()
            .unwrap_or_else(|| (DestinationProcessing::default(), Vec::new()));
        destinations.push(DestinationSpec {
            workers: dest.workers(),
            order_by,
            name: dest.name().to_owned(),
            sender,
            retry: retry_policy(dest.retry()),
            processing,
            response_transform,
        });
    }
    let response = match channel.response {
        ferry_config::ResponseMode::OnReceive => ResponseMode::OnReceive,
        ferry_config::ResponseMode::AfterTransform => ResponseMode::AfterTransform {
            reject_filtered: channel.reject_filtered,
        },
        ferry_config::ResponseMode::AfterDelivery => {
            let destination = match &channel.response_from {
                None => 0,
                Some(from) => channel
                    .destinations
                    .iter()
                    .position(|d| d.name() == from)
                    .ok_or_else(|| {
                        invalid(
                            "response_from",
                            format!("`{from}` is not a destination of this channel"),
                        )
                    })?,
            };
            ResponseMode::AfterDelivery {
                destination,
                timeout: channel.response_timeout.get(),
            }
        }
    };
    // No `index` is the MRN (`MetadataIndex::default`); `index = {}` is nothing.
    let index = match &channel.index {
        None => MetadataIndex::default(),
        Some(fields) => MetadataIndex::new(
            fields
                .iter()
                .map(|(key, path)| {
                    Path::parse(path)
                        .map(|p| (key.clone(), p))
                        .map_err(|e| invalid(&format!("index `{key}`"), e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(ChannelPlan {
        spec: ChannelSpec {
            name: channel.name.clone(),
            destinations,
            source: processing.source,
            response,
            dedupe_window: channel.dedupe.as_ref().map(|d| d.window.get()),
            index,
        },
        source,
        certificates,
        watched,
    })
}
