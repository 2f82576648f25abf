//! `ferry run`: run the engine until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry_connectors::http::HttpListener;
use ferry_engine::Shutdown;
use ferry_store::Store;

/// Arguments of `ferry run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Configuration file (default: ./ferry.toml, or embedded defaults when it does not exist).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
    let store_path = config.store_path();
    let store = Store::open(&store_path)
        .with_context(|| format!("opening the store {}", store_path.display()))?;
    let accounts = ferry_store::Accounts::open(&store_path)
        .with_context(|| format!("opening the account tables of {}", store_path.display()))?;
    println!("ferry: store {}", store_path.display());
    let runtime = ferry_connectors::deploy(&config, store).await?;
    for listener in runtime.listeners() {
        println!(
            "ferry: channel {} listening on {}://{}",
            listener.channel, listener.scheme, listener.address
        );
    }

    let shutdown = Shutdown::new();
    let admin_tls = config
        .admin
        .tls
        .as_ref()
        .map(ferry_connectors::deploy::server_tls)
        .transpose()?;
    let scheme = if admin_tls.is_some() { "https" } else { "http" };
    let admin = HttpListener::bind(config.admin.listen(), admin_tls, Duration::from_secs(10))
        .await
        .with_context(|| format!("binding the admin listener {}", config.admin.listen()))?;
    println!(
        "ferry: admin listening on {scheme}://{}",
        admin.local_addr()?
    );
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
    );
    let admin_task = tokio::spawn(admin.serve(ferry_admin::app(admin_context), shutdown.clone()));
    println!("ferry: ready in {} ms", started.elapsed().as_millis());

    wait_for_signal().await;
    println!("ferry: stopping (no new connections; finishing in-flight messages)");
    shutdown.cancel();
    let result = runtime.shutdown().await;
    let _ = admin_task.await;
    result?;
    println!("ferry: stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
