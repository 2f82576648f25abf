//! Shipping the audit trail to a collector: syslog RFC 5424 messages over TLS with RFC 5425
//! octet-counting framing (`MSG-LEN SP SYSLOG-MSG`), one audit record per message, either as
//! JSON (MSGID `ferry-audit`) or as an IHE ATNA `AuditMessage` XML (MSGID `IHE+RFC-3881`,
//! [`atna`]) for an Audit Record Repository.
//!
//! Records are read from the store after a durable cursor (`audit_shipping`), so while the
//! collector is unreachable nothing is lost: records keep accumulating in the store and are
//! sent, oldest first, once a connection is back (reconnecting with exponential backoff).
//! The cursor moves after a batch was written and flushed to the TLS connection.
//!
//! Limit: syslog over TLS has no acknowledgements. A batch written into a connection that the
//! collector drops before reading it is lost for the collector, though never for the store;
//! every message carries its sequence number and chain hashes, so the collector sees the gap
//! (and `ferry audit verify` on the node still has every record).

use std::sync::Arc;
use std::time::Duration;

pub use ferry_config::AuditSyslogFormat;
use ferry_engine::Shutdown;
use ferry_store::{AuditFilter, AuditRecord, Store};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub mod atna;

/// Settings of the syslog-TLS audit shipper.
#[derive(Clone)]
pub struct SyslogSettings {
    /// Collector address, `host:port` (6514 is the registered syslog-TLS port).
    pub address: String,
    /// Name the collector's certificate must carry.
    pub server_name: ServerName<'static>,
    /// TLS client configuration (trust store, optional client certificate for mTLS).
    pub tls: Arc<rustls::ClientConfig>,
    /// Most records per write.
    pub batch: usize,
    /// How often to look for new records when idle.
    pub poll_interval: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// JSON records or ATNA audit messages.
    pub format: AuditSyslogFormat,
}

/// Ships audit records to a syslog collector until shutdown.
pub struct SyslogShipper {
    settings: SyslogSettings,
}

/// RFC 5424 PRI: facility 10 (security/authorization, per IHE ATNA) with severity 5 (notice)
/// for successes and 4 (warning) for failures.
fn pri(record: &AuditRecord) -> u8 {
    if record.outcome == "failure" {
        10 * 8 + 4
    } else {
        10 * 8 + 5
    }
}

/// An RFC 3339 UTC timestamp with milliseconds from Unix milliseconds.
fn timestamp(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// A header field: printable US-ASCII without spaces, at most `max` characters, `-` if empty.
fn header_field(text: &str, max: usize) -> String {
    let s: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if s.is_empty() { "-".to_owned() } else { s }
}

/// One record as an RFC 5424 message (MSGID `ferry-audit`, the record as JSON in MSG), framed
/// with RFC 5425 octet counting.
pub fn frame(record: &AuditRecord) -> Vec<u8> {
    frame_as(record, AuditSyslogFormat::Json)
}

/// One record as an RFC 5424 message in `format`, framed with RFC 5425 octet counting.
///
/// - JSON: MSGID `ferry-audit`, no structured data, the record as JSON in MSG.
/// - ATNA: MSGID `IHE+RFC-3881` (IHE ITI-20), the sequence number as RFC 5424
///   `[meta sequenceId="N"]` so the repository sees gaps, and MSG the UTF-8 BOM (RFC 5424
///   §6.4 for UTF-8 text) followed by the [`atna::audit_message`] XML.
pub fn frame_as(record: &AuditRecord, format: AuditSyslogFormat) -> Vec<u8> {
    let header = format!(
        "<{}>1 {} {} ferry -",
        pri(record),
        timestamp(record.time_ms),
        header_field(&record.node, 255),
    );
    let message = match format {
        AuditSyslogFormat::Json => format!("{header} ferry-audit - {}", record.to_json()),
        AuditSyslogFormat::Atna => {
            // RFC 5424 §7.3.1: sequenceId is 1..=2147483647.
            let sd = if (1..=2_147_483_647).contains(&record.seq) {
                format!("[meta sequenceId=\"{}\"]", record.seq)
            } else {
                "-".to_owned()
            };
            format!(
                "{header} IHE+RFC-3881 {sd} \u{feff}{}",
                atna::audit_message(record)
            )
        }
    };
    let mut out = format!("{} ", message.len()).into_bytes();
    out.extend_from_slice(message.as_bytes());
    out
}

/// Settings from `[audit.syslog]`: TLS files loaded, the server name defaulting to the host
/// part of `address`; batches of 256, polling every 200 ms, reconnecting up to every 30 s.
pub fn settings(config: &ferry_config::AuditSyslogConfig) -> Result<SyslogSettings, String> {
    let host = match config.server_name.as_deref() {
        Some(name) => name,
        None => config
            .address
            .rsplit_once(':')
            .map(|(host, _)| host)
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                format!(
                    "[audit.syslog] address `{}` is not host:port",
                    config.address
                )
            })?,
    };
    let server_name = ferry_tls::server_name(host).map_err(|e| format!("[audit.syslog]: {e}"))?;
    let tls =
        crate::tls::client(config.tls.as_ref()).map_err(|e| format!("[audit.syslog] tls: {e}"))?;
    Ok(SyslogSettings {
        address: config.address.clone(),
        server_name,
        tls,
        batch: 256,
        poll_interval: Duration::from_millis(200),
        max_backoff: Duration::from_secs(30),
        format: config.format,
    })
}

impl SyslogShipper {
    /// A shipper with `settings`.
    pub fn new(settings: SyslogSettings) -> SyslogShipper {
        SyslogShipper { settings }
    }

    /// Ship until `shutdown`: connect, send every record after the cursor, wait for more;
    /// on any connection error reconnect with backoff (1 s doubling up to `max_backoff`).
    pub async fn run(self, store: Store, shutdown: Shutdown) {
        let s = &self.settings;
        let connector = TlsConnector::from(s.tls.clone());
        let initial = Duration::from_millis(100).min(s.max_backoff);
        let mut backoff = initial;
        let mut warned = false;
        while !shutdown.is_cancelled() {
            let connect = async {
                let tcp = TcpStream::connect(&s.address).await?;
                let _ = tcp.set_nodelay(true);
                connector.connect(s.server_name.clone(), tcp).await
            };
            let stream = tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(10), connect) => r,
                _ = shutdown.cancelled() => return,
            };
            let mut stream = match stream {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    if !warned {
                        tracing::warn!(address = %s.address, %error,
                            "audit collector unreachable; records are kept in the store and sent when it is back");
                        warned = true;
                    }
                    wait(&shutdown, backoff).await;
                    backoff = (backoff * 2).min(s.max_backoff);
                    continue;
                }
                Err(_) => {
                    tracing::warn!(address = %s.address, "audit collector: connection timed out");
                    wait(&shutdown, backoff).await;
                    backoff = (backoff * 2).min(s.max_backoff);
                    continue;
                }
            };
            tracing::info!(address = %s.address, "audit collector connected");
            warned = false;
            backoff = initial;
            // Ship until the connection fails or shutdown.
            loop {
                let cursor = match store.audit_shipped_upto().await {
                    Ok(c) => c,
                    Err(error) => {
                        tracing::error!(%error, "reading the audit shipping cursor");
                        wait(&shutdown, s.poll_interval).await;
                        break;
                    }
                };
                let records = match store
                    .audit_search(AuditFilter {
                        after_seq: Some(cursor),
                        limit: Some(s.batch.max(1)),
                        ..AuditFilter::default()
                    })
                    .await
                {
                    Ok(r) => r,
                    Err(error) => {
                        tracing::error!(%error, "reading audit records to ship");
                        wait(&shutdown, s.poll_interval).await;
                        break;
                    }
                };
                let Some(last) = records.last().map(|r| r.seq) else {
                    // Idle: wait for new records, noticing a collector that hangs up.
                    let mut byte = [0u8; 1];
                    tokio::select! {
                        _ = tokio::time::sleep(s.poll_interval) => continue,
                        r = stream.read(&mut byte) => {
                            if !matches!(r, Ok(n) if n > 0) {
                                tracing::warn!(address = %s.address, "audit collector closed the connection");
                                break;
                            }
                            continue;
                        }
                        _ = shutdown.cancelled() => {
                            let _ = stream.shutdown().await;
                            return;
                        }
                    }
                };
                let mut out = Vec::new();
                for record in &records {
                    out.extend_from_slice(&frame_as(record, s.format));
                }
                let written = async {
                    stream.write_all(&out).await?;
                    stream.flush().await
                };
                match tokio::time::timeout(Duration::from_secs(10), written).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(address = %s.address, %error, "audit collector: write failed; reconnecting");
                        break;
                    }
                    Err(_) => {
                        tracing::warn!(address = %s.address, "audit collector: write timed out; reconnecting");
                        break;
                    }
                }
                if let Err(error) = store.audit_set_shipped(last).await {
                    tracing::error!(%error, "recording the audit shipping cursor");
                    break;
                }
            }
        }
    }
}

async fn wait(shutdown: &Shutdown, delay: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(timestamp(1_796_189_392_322), "2026-12-02T05:29:52.322Z");
    }

    #[test]
    fn header_fields_are_printable_ascii() {
        assert_eq!(header_field("node 1\u{e9}", 255), "node1");
        assert_eq!(header_field("", 255), "-");
    }
}
