//! `ferry`: the command line of the Ferry integration engine.
//!
//! This binary only parses arguments and wires the crates together; every capability lives in a
//! library crate (see ARCHITECTURE.md). One file per subcommand under `cmd/`.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Ferry: a secure, fast healthcare integration engine (HL7 v2 over MLLP and HTTPS).
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine until SIGTERM or Ctrl-C.
    Run(cmd::run::RunArgs),
    /// Validate a configuration (and load every TLS file it names) without starting anything.
    Check(cmd::check::CheckArgs),
    /// Send HL7 messages over MLLP and print each ACK; exits non-zero on any negative ACK.
    Send(cmd::send::SendArgs),
    /// Load generator and reference servers for measuring throughput and latency.
    Bench(cmd::bench::BenchArgs),
    /// Run channel test cases (input message, expected output per destination) offline and
    /// show diffs; exits non-zero on any mismatch.
    Test(cmd::test::TestArgs),
    /// Inspect HL7 v2 files: parse, get, validate, to-json, from-json.
    Hl7(cmd::hl7::Hl7Args),
    /// The tamper-evident audit trail: verify the hash chain, list records.
    Audit(cmd::audit::AuditArgs),
    /// Encryption-at-rest keys: `ferry keys rotate` re-encrypts records under old keys.
    Keys(cmd::keys::KeysArgs),
    /// Retention pruning now, with the configured rules (`[retention]`, each channel's
    /// `retention`): prints what was pruned; `--dry-run` only counts.
    Prune(cmd::prune::PruneArgs),
    /// Manage admin users (add, list, disable) in the configured store.
    User(cmd::user::UserArgs),
    /// Several nodes on one PostgreSQL store: `ferry cluster status` shows the nodes and who
    /// owns which queue.
    Cluster(cmd::cluster::ClusterArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `ferry hl7` works on files only: no runtime needed.
    let cli = match cli.command {
        Command::Hl7(args) => return finish(cmd::hl7::run(args)),
        command => Cli { command },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(error) => {
            eprintln!("ferry: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => cmd::run::run(args).await,
            Command::Check(args) => cmd::check::run(args).await,
            Command::Send(args) => cmd::send::run(args).await,
            Command::Bench(args) => cmd::bench::run(args).await,
            Command::Test(args) => cmd::test::run(args).await,
            Command::User(args) => cmd::user::run(args).await,
            Command::Hl7(args) => cmd::hl7::run(args),
            Command::Audit(args) => cmd::audit::run(args).await,
            Command::Keys(args) => cmd::keys::run(args).await,
            Command::Cluster(args) => cmd::cluster::run(args).await,
            Command::Prune(args) => cmd::prune::run(args).await,
        }
    });
    finish(result)
}

fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ferry: {error:#}");
            ExitCode::from(2)
        }
    }
}
