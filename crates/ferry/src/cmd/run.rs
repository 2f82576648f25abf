//! `ferry run`: run the engine until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry_connectors::http::HttpListener;
use ferry_engine::Shutdown;
use ferry_store::{AuditAction, AuditEvent, Store};

/// Arguments of `ferry run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Configuration file (default: ./ferry.toml, or embedded defaults when it does not exist).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// Logging to stderr, filtered by `FERRY_LOG` (else `RUST_LOG`, else `info`), e.g.
/// `FERRY_LOG=trace` or `FERRY_LOG=ferry_engine=debug`. Message content (errors that may quote
/// a message, script `logger` lines) stays out of the logs at every level unless
/// `FERRY_LOG_PHI=1` opts in (or, for script `logger` lines, the channel's `log_phi_at_info`).
fn init_logging() {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let phi = std::env::var("FERRY_LOG_PHI").is_ok_and(|v| v == "1" || v == "true");
    if !phi {
        // Script `logger` output may quote the message and goes out at DEBUG unless the
        // channel sets `log_phi_at_info` (its own opt-in): without FERRY_LOG_PHI those
        // DEBUG lines are dropped, whatever FERRY_LOG says.
        if let Ok(cap) = "ferry_script=info".parse() {
            filter = filter.add_directive(cap);
        }
    }
    ferry_engine::phi::allow_in_logs(phi);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    if phi {
        tracing::warn!(
            "FERRY_LOG_PHI is set: errors that quote message content are logged in full"
        );
    }
}

/// Start everything, print where it listens, wait for a stop signal, stop cleanly.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    init_logging();
    let (config, path) = super::load_config(args.config.as_ref())?;
    match &path {
        Some(p) => println!("ferry: configuration {}", p.display()),
        None => println!(
            "ferry: no ferry.toml found and no --config given; running on embedded defaults \
             (SQLite store {}, admin on {}, no channels)",
            config.store_path().display(),
            config.admin.listen()
        ),
    }
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let location = super::StoreLocation::of(&config)?;
    let options = super::keys::store_options(&config)?;
    let store = location.open_store(options.clone())?;
    // The same keys encrypt the users' TOTP secrets.
    let accounts = location.open_accounts(options).await?;
    match store.current_key_id() {
        Some(id) => println!(
            "ferry: store {} (encrypted, key `{id}`)",
            location.describe()
        ),
        None => println!("ferry: store {}", location.describe()),
    }
    // Records under old keys (or from before encryption) are re-encrypted while running.
    let rotation = store
        .current_key_id()
        .is_some()
        .then(|| super::keys::spawn_background_rotation(store.clone()));
    // The first record of every run names the exact configuration it runs on.
    let config_sha256 = match &path {
        Some(p) => ferry_store::audit::sha256_hex(
            &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        ),
        None => "embedded-defaults".to_owned(),
    };
    let start = store
        .audit_append(
            AuditEvent::new(AuditAction::EngineStart)
                .detail("version", env!("CARGO_PKG_VERSION"))
                .detail(
                    "config",
                    path.as_ref()
                        .map_or_else(|| "(embedded)".to_owned(), |p| p.display().to_string()),
                )
                .detail("config_sha256", config_sha256.clone()),
        )
        .await
        .context("recording engine_start in the audit trail")?;
    tracing::info!(seq = start.seq, "audit: engine_start recorded");
    let cluster = join_cluster(&config).await?;
    let runtime = ferry_connectors::deploy_clustered(&config, store.clone(), cluster).await?;
    // Retention pruning every `[retention] interval`, for each channel with a retention.
    let pruner = super::prune::spawn_background_pruner(
        store.clone(),
        &config,
        runtime.engine().stats().clone(),
    );
    if pruner.is_some() {
        println!(
            "ferry: retention pruning every {} s",
            config.retention.interval.get().as_secs()
        );
    }
    let shutdown = Shutdown::new();
    // The admin API reports every failed login into these signals (`failed_logins` rules).
    let (alert_signals, alerts_task) =
        ferry_alerts::start(&config, runtime.engine().stats(), shutdown.clone())?;
    if alerts_task.is_some() {
        println!(
            "ferry: {} alert(s) watching every {} ms",
            config.alert_rules.len(),
            config.alerts.interval.get().as_millis()
        );
    }
    for listener in runtime.listeners() {
        println!(
            "ferry: channel {} listening on {}://{}",
            listener.channel, listener.scheme, listener.address
        );
    }
    for channel in config.channels.iter().filter(|c| c.enabled) {
        let mut event = AuditEvent::new(AuditAction::Deploy)
            .target(format!("channel/{}", channel.name))
            .detail("config_sha256", config_sha256.clone());
        if let Some(address) = runtime.listener(&channel.name) {
            event = event.detail("listen", address.to_string());
        }
        if let Err(error) = store.audit_append(event).await {
            tracing::error!(channel = %channel.name, %error, "could not record deploy in the audit trail");
        }
    }

    // Reloaded like the channel listeners' certificates, and on the expiry gauge.
    let admin_tls = config
        .admin
        .tls
        .as_ref()
        .map(|tls| runtime.admin_tls(tls))
        .transpose()
        .context("[admin] tls")?;
    let scheme = if admin_tls.is_some() { "https" } else { "http" };
    let admin = HttpListener::bind(config.admin.listen(), admin_tls, Duration::from_secs(10))
        .await
        .with_context(|| format!("binding the admin listener {}", config.admin.listen()))?
        .with_audit(runtime.audit_sink().clone(), "admin");
    println!(
        "ferry: admin listening on {scheme}://{}",
        admin.local_addr()?
    );
    bootstrap(&store, &accounts).await?;
    let admin_config = &config.admin;
    let admin_context = ferry_admin::AdminContext::new(
        runtime.engine(),
        accounts,
        ferry_admin::sessions::SessionPolicy {
            idle: admin_config.session_idle_timeout.get(),
            absolute: admin_config.session_absolute_timeout.get(),
        },
        ferry_admin::auth::LockoutPolicy {
            threshold: admin_config.lockout_threshold,
            base: admin_config.lockout_base.get(),
            max: admin_config.lockout_max.get(),
        },
        scheme == "https",
        runtime.audit_sink().clone(),
    )
    .with_alert_signals(alert_signals)
    // Deploys re-read this file; with the embedded defaults there is none to read.
    .with_lifecycle(runtime.control(), path.clone());
    let admin_task = tokio::spawn(admin.serve(ferry_admin::app(admin_context), shutdown.clone()));
    let shipper = match &config.audit.syslog {
        Some(syslog) => {
            let settings =
                ferry_connectors::syslog::settings(syslog).map_err(anyhow::Error::msg)?;
            let format = match syslog.format {
                ferry_config::AuditSyslogFormat::Json => "JSON",
                ferry_config::AuditSyslogFormat::Atna => "IHE ATNA",
            };
            println!(
                "ferry: audit records shipped to syslog-tls://{} ({format})",
                syslog.address
            );
            Some(tokio::spawn(
                ferry_connectors::syslog::SyslogShipper::new(settings)
                    .run(store.clone(), shutdown.clone()),
            ))
        }
        None => None,
    };
    // The handlers are in place before `ready` is printed: a SIGTERM sent as soon as it is
    // seen must stop cleanly, not kill the process with the default action.
    let stop = stop_signal();
    println!("ferry: ready in {} ms", started.elapsed().as_millis());

    stop.await;
    println!("ferry: stopping (no new connections; finishing in-flight messages)");
    shutdown.cancel();
    if let Some(rotation) = rotation {
        rotation.abort();
        let _ = rotation.await;
    }
    if let Some(pruner) = pruner {
        pruner.abort();
        let _ = pruner.await;
    }
    if let Some(shipper) = shipper {
        let _ = shipper.await;
    }
    let stop = AuditEvent::new(AuditAction::EngineStop)
        .detail("reason", "signal")
        .detail("uptime_ms", started.elapsed().as_millis() as u64)
        .detail("config_sha256", config_sha256);
    let result = runtime.shutdown_audited(Some(stop)).await;
    let _ = admin_task.await;
    if let Some(task) = alerts_task {
        let _ = task.await;
    }
    result?;
    println!("ferry: stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

/// With `[cluster] enabled`, join the cluster on the `[store] url` database.
async fn join_cluster(
    config: &ferry_config::Config,
) -> anyhow::Result<Option<ferry_engine::cluster::ClusterHandle>> {
    if !config.cluster.enabled {
        return Ok(None);
    }
    let options = super::cluster::pg_options(config)?
        .context("[cluster] enabled = true needs [store] url")?;
    let settings = ferry_engine::cluster::ClusterSettings {
        node_id: super::cluster::node_id(config),
        address: config.admin.listen().to_string(),
        lease_ttl: config.cluster.lease_ttl(),
        queue_poll: config.cluster.queue_poll(),
    };
    println!(
        "ferry: cluster node {} (leases of {} ms)",
        settings.node_id,
        settings.lease_ttl.as_millis()
    );
    let handle = ferry_engine::cluster::ClusterHandle::join(options, settings)
        .await
        .context("joining the cluster")?;
    Ok(Some(handle))
}

/// On a store without users, issue the one-time bootstrap token and print it (to stdout,
/// once: only its hash is stored); with users, make sure none is left.
async fn bootstrap(store: &Store, accounts: &ferry_store::Accounts) -> anyhow::Result<()> {
    let a = accounts.clone();
    let issued = tokio::task::spawn_blocking(move || {
        ferry_admin::bootstrap::issue(&a, ferry_admin::users::now_ms())
    })
    .await
    .context("issuing the bootstrap token")?
    .context("issuing the bootstrap token")?;
    let Some(issued) = issued else {
        return Ok(());
    };
    let minutes = ferry_admin::bootstrap::TOKEN_LIFETIME.as_secs() / 60;
    println!(
        "ferry: no admin user yet; one-time bootstrap token (valid {minutes} min, shown once): {}",
        issued.token
    );
    println!(
        "ferry: create the first admin with POST /api/v1/bootstrap \
         {{\"token\", \"name\", \"password\"}}, or `ferry user add NAME --role admin`"
    );
    // That a token was issued (never its value) is part of the trail.
    store
        .audit_append(
            AuditEvent::new(AuditAction::UserChange)
                .target("bootstrap")
                .detail("kind", "bootstrap_token")
                .detail("change", "issued")
                .detail("expires_at_ms", issued.expires_at_ms),
        )
        .await
        .context("recording the bootstrap token in the audit trail")?;
    Ok(())
}

/// Install the SIGTERM and SIGINT handlers now and return what waits for either.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (term, interrupt) {
                (Ok(mut term), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
