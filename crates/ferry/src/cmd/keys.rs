//! `ferry keys`: encryption-at-rest key management.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use ferry_config::Config;
use ferry_store::{Key, Keyring, Store, StoreOptions};

/// Arguments of `ferry keys`.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
enum KeysCommand {
    /// Re-encrypt every stored record that is not under the current `[store] encryption`
    /// key (older keys, or plaintext from before encryption was enabled), in batches, safely
    /// beside a running engine that uses the same configuration. Resumable: run it again
    /// after an interruption. The old keys can be removed once it reports done.
    Rotate(RotateArgs),
}

/// Arguments of `ferry keys rotate`.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// Configuration file (default: ./ferry.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Records re-encrypted per write transaction.
    #[arg(long, default_value_t = 500)]
    batch: usize,
}

/// The store options a configuration asks for: its encryption keys.
pub fn store_options(config: &Config) -> anyhow::Result<StoreOptions> {
    let Some(encryption) = &config.store.encryption else {
        return Ok(StoreOptions::default());
    };
    let keys = encryption
        .keys()
        .map_err(|m| anyhow::anyhow!("[store] encryption: {m}"))?;
    let mut keys = keys.into_iter();
    let Some((id, bytes)) = keys.next() else {
        anyhow::bail!("[store] encryption: no key");
    };
    let mut ring = Keyring::new(&id, Key::from_bytes(&bytes)?)?;
    for (id, bytes) in keys {
        ring = ring.with_old(&id, Key::from_bytes(&bytes)?)?;
    }
    Ok(StoreOptions {
        keyring: Some(ring),
    })
}

/// Run `ferry keys`.
pub async fn run(args: KeysArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        KeysCommand::Rotate(a) => rotate(a).await,
    }
}

async fn rotate(args: RotateArgs) -> anyhow::Result<ExitCode> {
    let (config, _) = super::load_config(args.config.as_ref())?;
    let options = store_options(&config)?;
    let Some(ring) = &options.keyring else {
        anyhow::bail!("[store] encryption is not configured: there is no key to rotate to");
    };
    let current = ring.current_id().to_owned();
    let location = super::StoreLocation::of(&config)?;
    let store = location.open_store(options)?;
    let started = Instant::now();
    let pending = store.rotation_pending().await?;
    println!(
        "ferry keys rotate: {pending} records of {} to re-encrypt under key `{current}`",
        location.describe()
    );
    let mut total = 0u64;
    let result = loop {
        match store.rotate_batch(args.batch.max(1)).await {
            Ok(progress) => {
                total += progress.rotated;
                if progress.rotated > 0 {
                    println!("ferry keys rotate: {total} of {pending} re-encrypted");
                }
                if progress.done {
                    break Ok(());
                }
            }
            Err(e) => break Err(e),
        }
    };
    // No `Store::close`: on SQLite its TRUNCATE checkpoint would hold off a running engine's
    // writer while it waits for the engine's readers. Every batch is already committed
    // (fsynced), and the engine's own checkpointer folds the WAL back in.
    drop(store);
    result.context("re-encrypting (run `ferry keys rotate` again once fixed; it resumes)")?;
    println!(
        "ferry keys rotate: done, {total} records re-encrypted in {} ms; every record is under \
         key `{current}`, old keys can be removed from [store] encryption.old_keys",
        started.elapsed().as_millis()
    );
    Ok(ExitCode::SUCCESS)
}

/// Re-encrypt old-key records in the background of `ferry run`, in small batches with pauses
/// so ingest keeps the writer. Stops at the end of the pass, or at the first error (logged).
pub fn spawn_background_rotation(store: Store) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut total = 0u64;
        loop {
            match store.rotate_batch(200).await {
                Ok(progress) => {
                    total += progress.rotated;
                    if progress.done {
                        if total > 0 {
                            tracing::info!(
                                records = total,
                                "re-encrypted every record under the current key; old keys \
                                 can be removed"
                            );
                        }
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "background key rotation stopped");
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
}
