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
