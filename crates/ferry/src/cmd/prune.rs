//! `ferry prune`: retention pruning now, with the configured rules; and the background pruner
//! of `ferry run`.
//!
//! Both prune a channel in bounded batches ([`Store::prune_batch`], one short write
//! transaction each, a pause between them so ingest keeps the writer), then give the freed
//! pages back to the file system in bounded steps ([`Store::vacuum_step`]). Every channel run
//! that pruned something (or failed) is one `retention_prune` audit record.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use ferry_config::{Config, Retention};
use ferry_store::{AuditAction, AuditEvent, PruneProgress, PruneRule, Store, StoreError};

/// Pause between two batches: ingest and deliveries queued meanwhile get the writer.
const PAUSE: Duration = Duration::from_millis(5);
/// Free pages handed back per vacuum step (16 MiB with 4 KiB pages).
const VACUUM_PAGES: u64 = 4096;

/// Arguments of `ferry prune`.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Configuration file (default: ./ferry.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Prune only this channel (default: every channel with a retention).
    channel: Option<String>,
    /// Count what would be pruned, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Afterwards rewrite the whole file with `VACUUM` (a store created before retention
    /// pruning existed needs it once to shrink, and is switched to incremental vacuum).
    /// Needs the store to itself: stop `ferry run` first.
    #[arg(long)]
    vacuum: bool,
}

/// The channels with something to prune, and their effective retention.
pub fn plans(config: &Config) -> Vec<(String, Retention)> {
    config
        .channels
        .iter()
        .filter(|c| c.enabled)
        .map(|c| (c.name.clone(), config.retention_for(c)))
        .filter(|(_, r)| !r.is_forever())
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The store's rule for `retention` at `now_ms`: cut-offs `now - period`.
pub fn rule(retention: &Retention, now_ms: i64) -> PruneRule {
    let before = |period: Option<Duration>| {
        period.map(|p| now_ms.saturating_sub(i64::try_from(p.as_millis()).unwrap_or(i64::MAX)))
    };
    PruneRule {
        content_before_ms: before(retention.content),
        metadata_before_ms: before(retention.metadata),
        include_errored: retention.prune_errored,
        include_queued: retention.prune_queued,
    }
}

/// Prune `channel` under `rule` until done, `batch` messages per transaction, pausing
/// between batches. Returns the totals (and, on error, the totals so far with the error).
pub async fn prune_channel(
    store: &Store,
    channel: &str,
    rule: PruneRule,
    batch: usize,
) -> (PruneProgress, Option<StoreError>) {
    let mut total = PruneProgress::default();
    loop {
        match store.prune_batch(channel, rule, batch.max(1)).await {
            Ok(p) => {
                total.content_pruned += p.content_pruned;
                total.messages_deleted += p.messages_deleted;
                if p.done {
                    total.done = true;
                    return (total, None);
                }
            }
            Err(e) => return (total, Some(e)),
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// Hand free pages back in bounded steps until none are left (or the store cannot shrink in
/// steps). Returns the pages freed.
pub async fn vacuum(store: &Store) -> Result<u64, StoreError> {
    let mut freed = 0;
    loop {
        let v = store.vacuum_step(VACUUM_PAGES).await?;
        freed += v.freed_pages;
        if v.freed_pages == 0 || v.free_pages == 0 {
            return Ok(freed);
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// The audit record of one channel's run.
fn audit_event(
    channel: &str,
    rule: &PruneRule,
    total: &PruneProgress,
    error: Option<&StoreError>,
    actor: &str,
) -> AuditEvent {
    let mut event = AuditEvent::new(AuditAction::RetentionPrune)
        .actor(actor)
        .target(format!("channel/{channel}"))
        .detail("content_pruned", total.content_pruned)
        .detail("messages_deleted", total.messages_deleted)
        .detail("include_errored", rule.include_errored)
        .detail("include_queued", rule.include_queued);
    if let Some(ms) = rule.content_before_ms {
        event = event.detail("content_before_ms", ms);
    }
    if let Some(ms) = rule.metadata_before_ms {
        event = event.detail("metadata_before_ms", ms);
    }
    if let Some(e) = error {
        event = event.failure().detail("error", e.to_string());
    }
    event
}

/// Prune every channel of `plans` once, counting into `stats` and auditing each channel that
/// pruned something or failed. Returns the totals.
async fn run_once(
    store: &Store,
    plans: &[(String, Retention)],
    batch: usize,
    stats: &ferry_engine::Stats,
) -> PruneProgress {
    let mut all = PruneProgress::default();
    for (channel, retention) in plans {
        let rule = rule(retention, now_ms());
        let (total, error) = prune_channel(store, channel, rule, batch).await;
        if let Some(c) = stats.channel(channel) {
            c.pruned_content
                .fetch_add(total.content_pruned, Ordering::Relaxed);
            c.pruned_messages
                .fetch_add(total.messages_deleted, Ordering::Relaxed);
        }
        all.content_pruned += total.content_pruned;
        all.messages_deleted += total.messages_deleted;
        if let Some(error) = &error {
            tracing::warn!(%channel, %error, "retention pruning failed; retried next interval");
        } else if total.content_pruned + total.messages_deleted > 0 {
            tracing::info!(
                %channel,
                content_pruned = total.content_pruned,
                messages_deleted = total.messages_deleted,
                "retention pruning"
            );
        }
        if (error.is_some() || total.content_pruned + total.messages_deleted > 0)
            && let Err(e) = store
                .audit_append(audit_event(
                    channel,
                    &rule,
                    &total,
                    error.as_ref(),
                    ferry_store::audit::SYSTEM_ACTOR,
                ))
                .await
        {
            tracing::error!(%channel, error = %e, "could not record retention pruning in the audit trail");
        }
    }
    if all.content_pruned + all.messages_deleted > 0
        && let Err(error) = vacuum(store).await
    {
        tracing::warn!(%error, "handing pruned space back failed; retried next interval");
    }
    all
}

/// The background pruner of `ferry run`: every `[retention] interval` (the first one interval
/// after startup), prune every channel with a retention. `None` when no channel has one.
pub fn spawn_background_pruner(
    store: Store,
    config: &Config,
    stats: Arc<ferry_engine::Stats>,
) -> Option<tokio::task::JoinHandle<()>> {
    let plans = plans(config);
    if plans.is_empty() {
        return None;
    }
    let interval = config.retention.interval.get();
    let batch = config.retention.batch as usize;
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            run_once(&store, &plans, batch, &stats).await;
        }
    }))
}

/// Run `ferry prune`.
pub async fn run(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let (config, _) = super::load_config(args.config.as_ref())?;
    let mut plans = plans(&config);
    if let Some(only) = &args.channel {
        if !config.channels.iter().any(|c| &c.name == only) {
            anyhow::bail!("no channel `{only}` in the configuration");
        }
        plans.retain(|(name, _)| name == only);
    }
    let path = config.store_path();
    let options = super::keys::store_options(&config)?;
    let store = Store::open_with(&path, options)
        .with_context(|| format!("opening the store {}", path.display()))?;
    if plans.is_empty() {
        println!("ferry prune: no channel has a retention; nothing to prune");
    }
    let batch = config.retention.batch as usize;
    let started = Instant::now();
    let mut failed = false;
    let mut pruned_any = false;
    for (channel, retention) in &plans {
        let rule = rule(retention, now_ms());
        if args.dry_run {
            let would = store.prune_count(channel, rule).await?;
            println!(
                "ferry prune: channel {channel}: would delete {} messages and the content of {} more",
                would.messages_deleted, would.content_pruned
            );
            continue;
        }
        let t = Instant::now();
        let (total, error) = prune_channel(&store, channel, rule, batch).await;
        pruned_any |= total.content_pruned + total.messages_deleted > 0;
        println!(
            "ferry prune: channel {channel}: deleted {} messages, pruned the content of {} in {} ms",
            total.messages_deleted,
            total.content_pruned,
            t.elapsed().as_millis()
        );
        if error.is_some() || total.content_pruned + total.messages_deleted > 0 {
            store
                .audit_append(audit_event(channel, &rule, &total, error.as_ref(), "cli"))
                .await
                .context("recording retention pruning in the audit trail")?;
        }
        if let Some(error) = error {
            eprintln!("ferry prune: channel {channel}: {error}");
            failed = true;
        }
    }
    if pruned_any {
        let freed = vacuum(&store).await?;
        println!("ferry prune: {freed} free pages handed back to the file system");
    }
    let free = store.vacuum_step(0).await?;
    if !free.incremental && free.free_pages > 0 && !args.vacuum {
        println!(
            "ferry prune: the store was created before incremental vacuum: {} free pages stay \
             in the file (reused by new messages) until `ferry prune --vacuum` with the engine \
             stopped",
            free.free_pages
        );
    }
    if args.vacuum && !args.dry_run {
        // The engine is stopped (VACUUM needs the file to itself): close properly.
        store.close().await?;
        let (before, after) = ferry_store::vacuum_file(&path)
            .with_context(|| format!("vacuuming {} (is `ferry run` stopped?)", path.display()))?;
        println!("ferry prune: VACUUM: {before} bytes before, {after} bytes after");
    } else {
        // No `Store::close` (like `ferry keys rotate`): its TRUNCATE checkpoint would hold off
        // a running engine's writer. Every batch is committed; the checkpointer folds the WAL
        // back.
        drop(store);
    }
    println!("ferry prune: done in {} ms", started.elapsed().as_millis());
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
