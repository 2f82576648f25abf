//! `ferry user`: manage admin users in the configured store (works whether or not the node is
//! running: account writes go through their own short transactions). With `[store]
//! encryption`, TOTP secrets are written encrypted under the configured key.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use ferry_admin::policy::Role;
use ferry_admin::scope::ChannelScope;

/// Arguments of `ferry user`.
#[derive(Debug, clap::Args)]
pub struct UserArgs {
    /// Configuration file (default: ./ferry.toml, or embedded defaults when it does not exist).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Debug, clap::Subcommand)]
enum UserCommand {
    /// Create a user. The password is read from the first line of stdin (prompted for on a
    /// terminal). For admins, prints the TOTP secret and otpauth:// URI to enrol an
    /// authenticator app: they are shown only once.
    Add {
        /// Login name: 1 to 64 letters, digits, `.`, `_`, `-`, `@`.
        name: String,
        /// admin, developer, operator, auditor or viewer.
        #[arg(long)]
        role: String,
        /// Limit the user to these channels, comma separated (default: every channel).
        #[arg(long, value_name = "CHANNEL,...")]
        channels: Option<String>,
    },
    /// List users.
    List,
    /// Disable a user and end all their sessions.
    Disable {
        /// Login name.
        name: String,
    },
}

fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password for the new user (input is visible): ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Run `ferry user …`.
pub async fn run(args: UserArgs) -> anyhow::Result<ExitCode> {
    let (config, _) = super::load_config(args.config.as_ref())?;
    let options = super::keys::store_options(&config)?;
    let accounts = super::StoreLocation::of(&config)?
        .open_accounts(options)
        .await?;
    match args.command {
        UserCommand::Add {
            name,
            role,
            channels,
        } => {
            let role = Role::parse(&role).with_context(|| {
                format!("unknown role `{role}` (admin, developer, operator, auditor, viewer)")
            })?;
            let scope = match &channels {
                Some(list) => ChannelScope::parse_list(list).context("--channels")?,
                None => ChannelScope::All,
            };
            if let ChannelScope::Only(names) = &scope {
                for unknown in names
                    .iter()
                    .filter(|n| !config.channels.iter().any(|c| &c.name == *n))
                {
                    eprintln!(
                        "ferry user add: warning: no channel `{unknown}` in the configuration \
                         (the scope names it anyway)"
                    );
                }
            }
            let password = read_password()?;
            let created = tokio::task::spawn_blocking(move || {
                ferry_admin::users::create_scoped_user(
                    &accounts,
                    &name,
                    role,
                    &password,
                    &scope,
                    ferry_admin::users::now_ms(),
                )
            })
            .await
            .context("creating the user")??;
            println!(
                "user {} created with role {} on channels {}",
                created.name,
                created.role.as_str(),
                created.scope.describe()
            );
            if let (Some(secret), Some(uri)) = (created.totp_secret, created.otpauth_uri) {
                println!("TOTP secret (shown once): {secret}");
                println!("otpauth URI: {uri}");
            }
        }
        UserCommand::List => {
            let users = accounts.users()?;
            // STATUS stays the last column (scripts read it), the scope goes before it.
            println!(
                "{:<24} {:<10} {:<4} {:<16} STATUS",
                "NAME", "ROLE", "MFA", "CHANNELS"
            );
            for u in users {
                println!(
                    "{:<24} {:<10} {:<4} {:<16} {}",
                    u.name,
                    u.role,
                    if u.totp_secret.is_some() { "yes" } else { "no" },
                    ChannelScope::from_stored(u.channels).describe(),
                    if u.disabled { "disabled" } else { "active" }
                );
            }
        }
        UserCommand::Disable { name } => {
            if !accounts.disable_user(&name)? {
                anyhow::bail!("no user `{name}`");
            }
            println!("user {name} disabled; their sessions are ended");
        }
    }
    Ok(ExitCode::SUCCESS)
}
