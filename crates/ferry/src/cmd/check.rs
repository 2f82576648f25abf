//! `ferry check`: validate a configuration without starting anything.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `ferry check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Configuration file (default: ./ferry.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// Load and validate the configuration, then build every connector (which reads every TLS
/// certificate and key) without binding a socket. The admin API's channel deploy runs the
/// same check ([`ferry_connectors::check_file`]) before it changes anything.
pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let path = args.config.unwrap_or_else(|| PathBuf::from("ferry.toml"));
    let config = match ferry_connectors::check_file(&path) {
        Ok(c) => c,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(1));
        }
    };
    // A PostgreSQL store: the URL parses, the TLS files load, and plain TCP goes only to
    // loopback (no connection is made).
    let store = super::StoreLocation::of(&config).and_then(|location| match location {
        super::StoreLocation::Postgres(pg) => ferry_store::postgres::conn::config(&pg)
            .map(|_| ())
            .map_err(anyhow::Error::from),
        super::StoreLocation::Sqlite(_) => Ok(()),
    });
    if let Err(error) = store {
        eprintln!("{}: [store]: {error:#}", path.display());
        return Ok(ExitCode::from(1));
    }
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    println!(
        "{}: ok ({} channel{})",
        path.display(),
        config.channels.len(),
        if config.channels.len() == 1 { "" } else { "s" }
    );
    Ok(ExitCode::SUCCESS)
}
