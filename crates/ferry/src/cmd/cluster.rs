//! `ferry cluster status`: the nodes sharing the configured PostgreSQL store and who works
//! which queue.
//!
//! Reads the cluster tables with a connection of its own; it never joins the cluster, so it
//! is safe beside running nodes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use ferry_config::Config;
use ferry_store::cluster::{Cluster, ClusterStatus};
use ferry_store::postgres::PgOptions;

/// Arguments of `ferry cluster`.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ClusterCommand {
    /// Nodes with their last heartbeat (alive or dead), and each lease's owner, epoch and
    /// expiry.
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Configuration file naming the store (`[store] url`; default ./ferry.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The PostgreSQL URL itself, instead of the configuration's `[store] url` (loopback, or
    /// give the configuration for TLS).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

/// The database options a configuration's `[store]` names, TLS from `[store.tls]` (`None`:
/// SQLite, no cluster).
///
/// # Errors
/// When a `[store.tls]` file cannot be loaded.
pub fn pg_options(config: &Config) -> anyhow::Result<Option<PgOptions>> {
    // One reading of `[store]` for the whole binary: the one `ferry run` opens the store by.
    Ok(match super::StoreLocation::of(config)? {
        super::StoreLocation::Postgres(pg) => Some(pg),
        super::StoreLocation::Sqlite(_) => None,
    })
}

/// `[cluster] node_id`, or `<hostname>-<pid>`.
pub fn node_id(config: &Config) -> String {
    if let Some(id) = &config.cluster.node_id {
        return id.as_str().to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ferry".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Run `ferry cluster`.
pub async fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ClusterCommand::Status(args) => status(args).await,
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let options = match &args.url {
        Some(url) => PgOptions {
            url: url.clone(),
            tls: None,
        },
        None => {
            let (config, _) = super::load_config(args.config.as_ref())?;
            pg_options(&config)?.context(
                "the configuration has no [store] url: a cluster needs the PostgreSQL store",
            )?
        }
    };
    let status = tokio::task::spawn_blocking(move || Cluster::status_of(&options))
        .await
        .context("reading the cluster status")??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&status))?);
    } else {
        print!("{}", render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

fn to_json(status: &ClusterStatus) -> serde_json::Value {
    serde_json::json!({
        "nodes": status.nodes.iter().map(|n| serde_json::json!({
            "node": n.node,
            "address": n.address,
            "alive": n.alive(),
            "stopped": n.stopped,
            "started_ms": n.started_ms,
            "heartbeat_ms": n.heartbeat_ms,
            "heartbeat_age_ms": n.heartbeat_age_ms,
            "lease_ttl_ms": n.lease_ttl_ms,
        })).collect::<Vec<_>>(),
        "leases": status.leases.iter().map(|l| serde_json::json!({
            "resource": l.resource,
            "owner": l.owner,
            "held": l.held(),
            "epoch": l.epoch,
            "acquired_ms": l.acquired_ms,
            "expires_ms": l.expires_ms,
            "expires_in_ms": l.expires_in_ms,
        })).collect::<Vec<_>>(),
        "channels": status.channels.iter().map(|c| serde_json::json!({
            "channel": c.channel,
            "state": c.state,
            "changed_by": c.changed_by,
            "changed_ms": c.changed_ms,
        })).collect::<Vec<_>>(),
    })
}

fn render(status: &ClusterStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "NODES");
    if status.nodes.is_empty() {
        let _ = writeln!(out, "  (none has joined)");
    }
    for n in &status.nodes {
        let state = if n.alive() {
            "alive"
        } else if n.stopped {
            "stopped"
        } else {
            "dead"
        };
        let owned = status
            .leases
            .iter()
            .filter(|l| l.held() && l.owner == n.node)
            .count();
        let _ = writeln!(
            out,
            "  {:<24} {:<8} last heartbeat {:>7.1}s ago  leases {:<3} admin {}",
            n.node,
            state,
            n.heartbeat_age_ms as f64 / 1000.0,
            owned,
            n.address
        );
    }
    let _ = writeln!(out, "LEASES");
    if status.leases.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for l in &status.leases {
        let expiry = if l.held() {
            format!("expires in {:.1}s", l.expires_in_ms as f64 / 1000.0)
        } else {
            format!("expired {:.1}s ago", -l.expires_in_ms as f64 / 1000.0)
        };
        let _ = writeln!(
            out,
            "  {:<40} owner {:<24} epoch {:<5} {expiry}",
            l.resource, l.owner, l.epoch
        );
    }
    if !status.channels.is_empty() {
        let _ = writeln!(out, "CHANNEL STATES");
        for c in &status.channels {
            let _ = writeln!(
                out,
                "  {:<24} {:<8} set by {}",
                c.channel, c.state, c.changed_by
            );
        }
    }
    out
}
