//! `ferry audit verify|list`: check and read the tamper-evident audit trail.
//!
//! On SQLite both open the configured store file directly with writes disabled (no writer
//! thread, no schema changes), so they are safe beside a running `ferry run`; on PostgreSQL
//! (`[store] url`) they read the shared database like any node.

use std::path::PathBuf;
use std::process::ExitCode;

use ferry_store::audit::{self, AuditFilter, VerifyReport};
use ferry_store::{AuditAction, AuditRecord};

/// Arguments of `ferry audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AuditCommand {
    /// Check the hash chain: prints OK with the record count and head, or every break found
    /// (edited, deleted, reordered, inserted, truncated records); exits 1 on any break.
    Verify(VerifyArgs),
    /// Print audit records, oldest first.
    List(ListArgs),
}

/// Where the store is.
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// Configuration file naming the store (default: ./ferry.toml, or the embedded defaults).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The store file itself, instead of the configuration's `store.path`.
    #[arg(long)]
    store: Option<PathBuf>,
}

impl StoreArgs {
    /// `--store`, else the configured store (a PostgreSQL database when `[store] url` is
    /// set).
    /// With the store options (its keys: a PostgreSQL store is opened as a whole and reads
    /// its newest message back).
    fn location(&self) -> anyhow::Result<(super::StoreLocation, ferry_store::StoreOptions)> {
        match &self.store {
            Some(p) => Ok((
                super::StoreLocation::Sqlite(p.clone()),
                ferry_store::StoreOptions::default(),
            )),
            None => {
                let config = super::load_config(self.config.as_ref())?.0;
                Ok((
                    super::StoreLocation::of(&config)?,
                    super::keys::store_options(&config)?,
                ))
            }
        }
    }
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// A head printed by an earlier verify and kept outside the database (`SEQ:HASH` or
    /// `HASH`): it must still be a record of the chain, which detects a rewrite of the whole
    /// log or a truncation before it.
    #[arg(long, value_name = "HASH")]
    expect_head: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only records of the last DURATION ("15m", "24h").
    #[arg(long, value_name = "DURATION", value_parser = super::parse_duration)]
    since: Option<std::time::Duration>,
    /// Only this action (repeatable), e.g. `login_failed`.
    #[arg(long)]
    action: Vec<String>,
    /// Only this actor.
    #[arg(long)]
    actor: Option<String>,
    /// Only this target or targets under it (`channel/adt`).
    #[arg(long)]
    target: Option<String>,
    /// At most this many records.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

/// Run `ferry audit …`.
pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AuditCommand::Verify(v) => verify(v).await,
        AuditCommand::List(l) => list(l).await,
    }
}

async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let (location, options) = args.store.location()?;
    let expect = args.expect_head.clone();
    let report = match &location {
        super::StoreLocation::Sqlite(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || audit::verify_file(&path, expect.as_deref()))
                .await??
        }
        // PostgreSQL: one REPEATABLE READ snapshot, safe beside running nodes.
        super::StoreLocation::Postgres(_) => {
            let store = location.open_store(options)?;
            let report = store.audit_verify_expecting(expect).await;
            store.close().await?;
            report?
        }
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        print_report(&location.describe(), &report);
    }
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_report(store: &str, report: &VerifyReport) {
    let head = report
        .last
        .as_ref()
        .map_or_else(|| "none".to_owned(), ToString::to_string);
    if report.is_ok() {
        println!(
            "{store}: audit log OK: {} record{}, head {head}",
            report.records,
            if report.records == 1 { "" } else { "s" }
        );
        if let Some(at) = report.expected_head_at {
            println!("expected head found at record {at}");
        }
        println!("keep the head outside this database to detect a rewrite: --expect-head {head}");
        return;
    }
    println!(
        "{store}: audit log BROKEN: {} problem{} in {} record{}",
        report.problems.len(),
        if report.problems.len() == 1 { "" } else { "s" },
        report.records,
        if report.records == 1 { "" } else { "s" }
    );
    for problem in &report.problems {
        println!("  {problem}");
    }
    if report.more_problems {
        println!("  … and more");
    }
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let (location, options) = args.store.location()?;
    let actions = args
        .action
        .iter()
        .map(|a| a.parse::<AuditAction>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let since_ms = args.since.map(|d| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|n| n.as_millis() as i64)
            .unwrap_or(0);
        now - d.as_millis() as i64
    });
    let filter = AuditFilter {
        since_ms,
        actions,
        actor: args.actor,
        target: args.target,
        limit: Some(args.limit),
        ..AuditFilter::default()
    };
    let records = match &location {
        super::StoreLocation::Sqlite(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || audit::search_file(&path, &filter)).await??
        }
        super::StoreLocation::Postgres(_) => {
            let store = location.open_store(options)?;
            let records = store.audit_search(filter).await;
            store.close().await?;
            records?
        }
    };
    for record in &records {
        if args.json {
            println!("{}", record.to_json());
        } else {
            println!("{}", line(record));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn line(r: &AuditRecord) -> String {
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.time_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| r.time_ms.to_string());
    format!(
        "{:>6} {time} {} {} {} {}{}{}",
        r.seq,
        r.node,
        r.actor,
        r.action,
        r.outcome,
        r.target
            .as_deref()
            .map(|t| format!(" target={t}"))
            .unwrap_or_default(),
        r.source
            .as_deref()
            .map(|s| format!(" from={s}"))
            .unwrap_or_default(),
    ) + &if r.details == "{}" {
        String::new()
    } else {
        format!(" {}", r.details)
    }
}
