//! `ferry send`: send HL7 messages over MLLP (optionally TLS) and print each ACK.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ferry_connectors::mllp::{MllpConnection, MllpEndpoint};
use ferry_hl7::ack;

/// Arguments of `ferry send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Target, `mllp://HOST:PORT`.
    target: String,
    /// Files holding HL7 messages (one, several, or a batch each); `-` reads standard input.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Time to wait for each ACK.
    #[arg(long, default_value = "30s", value_parser = super::parse_duration)]
    timeout: Duration,
}

/// TLS flags shared by the commands that connect to an MLLP listener.
#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    /// CA bundle to trust for the server certificate (turns TLS on).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Client certificate for mTLS (turns TLS on; needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Client private key for mTLS.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Name the server certificate must carry (default: the target host).
    #[arg(long)]
    server_name: Option<String>,
}

impl TlsArgs {
    /// The endpoint for `target` (`mllp://HOST:PORT`) with these TLS settings.
    pub fn endpoint(&self, target: &str) -> anyhow::Result<MllpEndpoint> {
        endpoint(
            target,
            self.tls_ca.as_ref(),
            self.tls_cert.as_ref(),
            self.tls_key.as_ref(),
            self.server_name.as_deref(),
        )
    }
}

/// Parse `mllp://host:port` into `host:port` and the host.
pub fn parse_mllp_target(target: &str) -> anyhow::Result<(String, String)> {
    let Some(rest) = target.strip_prefix("mllp://") else {
        bail!("target must look like mllp://HOST:PORT, got `{target}`");
    };
    let address = rest.trim_end_matches('/');
    let Some((host, port)) = address.rsplit_once(':') else {
        bail!("target `{target}` has no port");
    };
    if port.parse::<u16>().is_err() {
        bail!("target `{target}` has an invalid port `{port}`");
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((address.to_owned(), host.to_owned()))
}

/// Build the endpoint for a target and the optional TLS flags.
fn endpoint(
    target: &str,
    ca: Option<&PathBuf>,
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    server_name: Option<&str>,
) -> anyhow::Result<MllpEndpoint> {
    let (address, host) = parse_mllp_target(target)?;
    let tls = if ca.is_some() || cert.is_some() {
        let settings = ferry_tls::ClientTlsSettings {
            ca: ca.cloned(),
            cert: cert.cloned(),
            key: key.cloned(),
        };
        let config = ferry_tls::client_config(&settings)?;
        let name = ferry_tls::server_name(server_name.unwrap_or(&host))?;
        Some((config, name))
    } else {
        None
    };
    Ok(MllpEndpoint {
        address,
        tls,
        connect_timeout: Duration::from_secs(10),
        max_frame_bytes: ferry_mllp::DEFAULT_MAX_FRAME_BYTES,
    })
}

/// Send every message of every file in order over one connection.
pub async fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let endpoint = args.tls.endpoint(&args.target)?;
    let mut inputs = Vec::with_capacity(args.files.len());
    for file in &args.files {
        let bytes = if file.as_os_str() == "-" {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading standard input")?;
            buf
        } else {
            std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
        };
        inputs.push((file.display().to_string(), bytes));
    }
    let mut connection = MllpConnection::connect(&endpoint).await?;
    let (mut sent, mut failed) = (0usize, 0usize);
    for (name, bytes) in &inputs {
        let mut messages: Vec<&[u8]> = ferry_hl7::split_messages(bytes).collect();
        if messages.is_empty() && !bytes.iter().all(u8::is_ascii_whitespace) {
            // Not recognisable as HL7: send it as it is and let the receiver say so.
            messages.push(bytes);
        }
        for message in messages {
            if message.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            sent += 1;
            let control_id = ferry_hl7::Message::parse(message)
                .ok()
                .and_then(|m| m.control_id().map(str::to_owned));
            let response = match connection.exchange(message, args.timeout).await {
                Ok(r) => r,
                Err(error) => {
                    eprintln!("{name}: message {sent}: {error}");
                    return Ok(ExitCode::from(1));
                }
            };
            println!(
                "{}",
                String::from_utf8_lossy(&response)
                    .replace('\r', "\n")
                    .trim_end()
            );
            match ack::parse_ack(&response) {
                Ok(summary)
                    if summary.code.is_positive()
                        && control_id
                            .as_deref()
                            .is_none_or(|c| c == summary.control_id) => {}
                Ok(summary) => {
                    failed += 1;
                    eprintln!(
                        "{name}: message {sent}: not accepted ({}{})",
                        summary.code.as_str(),
                        summary.text.map(|t| format!(": {t}")).unwrap_or_default()
                    );
                }
                Err(error) => {
                    failed += 1;
                    eprintln!("{name}: message {sent}: response is not an ACK: {error}");
                }
            }
        }
    }
    eprintln!(
        "{sent} sent, {} accepted, {failed} not accepted",
        sent - failed
    );
    Ok(if failed == 0 && sent > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
