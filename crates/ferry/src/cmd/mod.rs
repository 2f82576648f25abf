//! One module per subcommand.

pub mod audit;
pub mod bench;
pub mod check;
pub mod cluster;
pub mod hl7;
pub mod keys;
pub mod prune;
pub mod run;
pub mod send;
pub mod test;
pub mod user;

use std::path::PathBuf;

use anyhow::Context as _;
use ferry_config::Config;

/// Load the configuration named on the command line, or the embedded defaults when none was
/// given and `ferry.toml` does not exist in the working directory.
pub fn load_config(path: Option<&PathBuf>) -> anyhow::Result<(Config, Option<PathBuf>)> {
    match path {
        Some(p) => Ok((Config::load(p)?, Some(p.clone()))),
        None => {
            let default = PathBuf::from("ferry.toml");
            if default.exists() {
                let config = Config::load(&default)
                    .with_context(|| format!("loading {}", default.display()))?;
                Ok((config, Some(default)))
            } else {
                Ok((Config::embedded_default(), None))
            }
        }
    }
}

/// Parse a duration given on the command line ("500ms", "2s", "5m").
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    ferry_config::Duration::parse(text)
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}

/// Where a configuration keeps its store: a SQLite file, or a PostgreSQL database (`[store]
/// url`, with `[store.tls]`).
pub enum StoreLocation {
    /// The SQLite file.
    Sqlite(PathBuf),
    /// The PostgreSQL connection options.
    Postgres(ferry_store::postgres::PgOptions),
}

impl StoreLocation {
    /// The configured store: PostgreSQL when `[store] url` is set (TLS from `[store.tls]`),
    /// else the SQLite file.
    pub fn of(config: &Config) -> anyhow::Result<StoreLocation> {
        let Some(url) = &config.store.url else {
            return Ok(StoreLocation::Sqlite(config.store_path()));
        };
        let tls = match &config.store.tls {
            Some(t) => Some(
                ferry_tls::client_config(&ferry_tls::ClientTlsSettings {
                    ca: t.ca.clone(),
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                })
                .context("[store.tls]")?,
            ),
            None => None,
        };
        Ok(StoreLocation::Postgres(ferry_store::postgres::PgOptions {
            url: url.expose().to_owned(),
            tls,
        }))
    }

    /// What to print: the file, or the URL with its password masked.
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Sqlite(p) => p.display().to_string(),
            StoreLocation::Postgres(pg) => ferry_store::postgres::conn::redact(&pg.url),
        }
    }

    /// Open the message store (blocking for PostgreSQL: it connects).
    pub fn open_store(
        &self,
        options: ferry_store::StoreOptions,
    ) -> anyhow::Result<ferry_store::Store> {
        let store = match self {
            StoreLocation::Sqlite(p) => ferry_store::Store::open_with(p, options),
            StoreLocation::Postgres(pg) => ferry_store::Store::open_postgres(pg.clone(), options),
        };
        store.with_context(|| format!("opening the store {}", self.describe()))
    }

    /// Open the admin accounts beside the store (off the async threads for PostgreSQL).
    pub async fn open_accounts(
        &self,
        options: ferry_store::StoreOptions,
    ) -> anyhow::Result<ferry_store::Accounts> {
        let accounts = match self {
            StoreLocation::Sqlite(p) => ferry_store::Accounts::open_with(p, options),
            StoreLocation::Postgres(pg) => {
                let pg = pg.clone();
                tokio::task::spawn_blocking(move || {
                    ferry_store::Accounts::open_postgres(pg, options)
                })
                .await
                .context("opening the account tables")?
            }
        };
        accounts.with_context(|| format!("opening the account tables of {}", self.describe()))
    }
}
