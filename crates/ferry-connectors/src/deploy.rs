//! From a validated configuration to running channels.
//!
//! Deployment is all-or-nothing: every destination client and every TLS configuration is built
//! (certificates and keys read and checked) before the engine starts, and every listener is
//! bound before the first one serves. [`check`] runs the same build without binding anything,
//! which is what `ferry check` reports on.

use std::net::SocketAddr;
use std::sync::Arc;

use ferry_config::{
    ChannelConfig, Config, DestinationConfig, EncodeConfig, FilterConfig, RetryConfig, SourceConfig,
};
use ferry_engine::transform::Encoder;
use ferry_engine::{
    ChannelSpec, Destination, DestinationProcessing, DestinationSpec, Engine, EngineError,
    FilterRule, MetadataIndex, ResponseMode, RetryPolicy, Router, Shutdown,
};
use ferry_hl7::Path;
use ferry_store::{AuditEvent, AuditSink, Store};
use ferry_tls::TlsError;
use tokio::task::JoinSet;

use crate::http::{
    HttpDestination, HttpDestinationSettings, HttpListener, HttpPoller, HttpPollerSettings,
};
use crate::mllp::{MllpDestination, MllpEndpoint, MllpSource, MllpSourceSettings, NakPolicy};

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

/// Deployed channels: the engine and the source tasks feeding it.
pub struct Runtime {
    engine: Engine,
    sources: JoinSet<()>,
    shutdown: Shutdown,
    listeners: Vec<ListenerInfo>,
    audit: AuditSink,
}

/// Audit events that listeners may queue before further ones are dropped (and counted).
const AUDIT_BUFFER: usize = 1024;

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// The engine (statistics, health, store).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Every listener opened, in configuration order.
    pub fn listeners(&self) -> &[ListenerInfo] {
        &self.listeners
    }

    /// The bound address of a channel's listener.
    pub fn listener(&self, channel: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.channel == channel)
            .map(|l| l.address)
    }

    /// The non-blocking audit sink the listeners record refused TLS handshakes into (give it
    /// to other listeners, such as the admin server's, with `with_audit`).
    pub fn audit_sink(&self) -> &AuditSink {
        &self.audit
    }

    /// The TLS configuration of the admin listener (HTTPS, ALPN `http/1.1`), on the same
    /// terms as a channel listener's: its certificates and CRLs are on the expiry gauge
    /// (channel `""`, connector `admin`), and its certificate, key and CRLs are reloaded
    /// when their files change (new handshakes only; open connections keep theirs), by a
    /// watcher that stops with this runtime.
    ///
    /// # Errors
    /// The files do not load.
    pub fn admin_tls(
        &mut self,
        tls: &ferry_config::TlsConfig,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let (config, cert) = crate::tls::server_reloadable(tls, &[b"http/1.1"])?;
        let stats = self.engine.stats();
        stats.certificates().replace(
            "",
            "admin",
            crate::tls::server_certificates("", "admin", tls),
        );
        self.sources.spawn(crate::tls::watch(
            vec![crate::tls::Watched {
                channel: String::new(),
                connector: "admin".to_owned(),
                tls: tls.clone(),
                cert,
            }],
            stats,
            self.shutdown.child_token(),
        ));
        Ok(config)
    }

    /// Stop cleanly: sources stop accepting and finish the message in hand, destination
    /// workers finish the attempt in flight, the store is flushed and closed.
    pub async fn shutdown(self) -> Result<(), EngineError> {
        self.shutdown_audited(None).await
    }

    /// [`shutdown`](Self::shutdown), appending `last` (e.g. `engine_stop`) to the audit trail
    /// once the sources have stopped and every queued audit event is written, just before
    /// the store closes. A failed append is logged, not returned.
    pub async fn shutdown_audited(mut self, last: Option<AuditEvent>) -> Result<(), EngineError> {
        self.shutdown.cancel();
        while self.sources.join_next().await.is_some() {}
        self.audit.close().await;
        if let Some(event) = last
            && let Err(error) = self.engine.store().audit_append(event).await
        {
            tracing::error!(%error, "could not append the last audit record");
        }
        self.engine.shutdown().await
    }
}

enum SourcePlan {
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

struct ChannelPlan {
    spec: ChannelSpec,
    source: SourcePlan,
    /// Per connector, the certificates its TLS loaded (for the expiry gauge).
    certificates: Vec<(String, Vec<ferry_engine::CertificateGauge>)>,
    /// The listener certificate to reload when its files change.
    watched: Option<crate::tls::Watched>,
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
/// admin server uses [`Runtime::admin_tls`]).
pub fn server_tls(tls: &ferry_config::TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    crate::tls::server(tls, &[b"http/1.1"])
}

/// Deploy every enabled channel of `config` on `store`.
pub async fn deploy(config: &Config, store: Store) -> Result<Runtime, DeployError> {
    // Channel destinations hold the router before the engine that fills it exists.
    let router = Router::new();
    let mut plans = Vec::new();
    for channel in config.channels.iter().filter(|c| c.enabled) {
        plans.push(plan(channel, &router)?);
    }
    let mut sources = Vec::with_capacity(plans.len());
    let mut specs = Vec::with_capacity(plans.len());
    let mut certificates = Vec::new();
    let mut watched = Vec::new();
    for p in plans {
        sources.push((p.spec.name.clone(), p.source));
        certificates.push((p.spec.name.clone(), p.certificates));
        watched.extend(p.watched);
        specs.push(p.spec);
    }
    let audit = AuditSink::spawn(store.clone(), AUDIT_BUFFER);
    let engine = Engine::start_with_router(store, specs, router).await?;
    engine.stats().attach_audit_dropped(audit.dropped_counter());
    let stats = engine.stats();
    for (channel, connectors) in certificates {
        for (connector, certs) in connectors {
            stats.certificates().replace(&channel, &connector, certs);
        }
    }
    let shutdown = Shutdown::new();
    let mut tasks = JoinSet::new();
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    // Bind everything first, so a port in use fails the deploy before anything serves.
    for (channel, source) in sources {
        let Some(ingest) = engine.ingest(&channel) else {
            continue;
        };
        let bind_error = |address, source| DeployError::Bind {
            channel: channel.clone(),
            address,
            source,
        };
        match source {
            SourcePlan::Mllp(settings) => {
                let scheme = if settings.tls.is_some() {
                    "mllps"
                } else {
                    "mllp"
                };
                let listen = settings.listen;
                let src = match MllpSource::bind(settings).await {
                    Ok(s) => s.with_audit(audit.clone()),
                    Err(e) => return Err(abort(engine, bind_error(listen, e)).await),
                };
                let address = src.local_addr().unwrap_or(listen);
                listeners.push(ListenerInfo {
                    channel: channel.clone(),
                    scheme,
                    address,
                });
                bound.push((ingest, Bound::Mllp(src)));
            }
            SourcePlan::Http {
                listen,
                tls,
                path,
                max_body_bytes,
                read_timeout,
            } => {
                let scheme = if tls.is_some() { "https" } else { "http" };
                let listener = match HttpListener::bind(listen, tls, read_timeout).await {
                    Ok(l) => l.with_audit(audit.clone(), format!("channel/{channel}")),
                    Err(e) => return Err(abort(engine, bind_error(listen, e)).await),
                };
                let address = listener.local_addr().unwrap_or(listen);
                listeners.push(ListenerInfo {
                    channel: channel.clone(),
                    scheme,
                    address,
                });
                bound.push((ingest, Bound::Http(listener, path, max_body_bytes)));
            }
            SourcePlan::Poll(poller) => bound.push((ingest, Bound::Poll(poller))),
            SourcePlan::Channel => bound.push((ingest, Bound::Channel)),
        }
    }
    for (ingest, source) in bound {
        let stop = shutdown.child_token();
        ingest.set_deployed(true);
        match source {
            Bound::Mllp(src) => {
                tasks.spawn(src.run(ingest, stop));
            }
            Bound::Http(listener, path, max_body) => {
                let router = crate::http::source_router(ingest, &path, max_body);
                tasks.spawn(listener.serve(router, stop));
            }
            Bound::Poll(poller) => {
                tasks.spawn(poller.run(ingest, stop));
            }
            // Deployed as soon as the engine runs: it is fed by the router.
            Bound::Channel => {}
        }
    }
    tasks.spawn(crate::tls::watch(
        watched,
        engine.stats(),
        shutdown.child_token(),
    ));
    Ok(Runtime {
        engine,
        sources: tasks,
        shutdown,
        listeners,
        audit,
    })
}

enum Bound {
    Mllp(MllpSource),
    Http(HttpListener, String, usize),
    Poll(HttpPoller),
    Channel,
}

async fn abort(engine: Engine, error: DeployError) -> DeployError {
    if let Err(e) = engine.shutdown().await {
        tracing::warn!(error = %e, "engine shutdown after a failed deploy");
    }
    error
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

fn plan(channel: &ChannelConfig, router: &Router) -> Result<ChannelPlan, DeployError> {
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
