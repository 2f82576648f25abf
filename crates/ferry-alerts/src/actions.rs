//! The notification targets: email (SMTP), webhook (HTTP POST of JSON) and syslog (RFC 5424
//! over TCP or TLS).

use std::sync::Arc;
use std::time::Duration;

use ferry_config::TlsConfig;
use ferry_config::alerts::{AlertActionConfig, EmailAction, SyslogAction, WebhookAction};
use rustls::ClientConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::Notification;
use crate::smtp::{self, Mail, SmtpSettings};

/// One configured action, ready to send.
#[derive(Debug)]
pub enum Action {
    /// SMTP.
    Email {
        /// Connection settings.
        settings: SmtpSettings,
        /// Sender.
        from: String,
        /// Recipients.
        to: Vec<String>,
    },
    /// HTTP POST.
    Webhook {
        /// The URL.
        url: String,
        /// The client (its own TLS configuration).
        client: reqwest::Client,
        /// Extra headers.
        headers: reqwest::header::HeaderMap,
    },
    /// Syslog.
    Syslog {
        /// `host:port`.
        address: String,
        /// TLS, when configured.
        tls: Option<Arc<ClientConfig>>,
        /// Connect and send limit.
        timeout: Duration,
    },
}

/// Webhook attempts before giving up, and the first delay between them (doubling).
const WEBHOOK_ATTEMPTS: u32 = 4;
const WEBHOOK_FIRST_DELAY: Duration = Duration::from_millis(500);

fn tls_config(
    tls: Option<&TlsConfig>,
    required: bool,
) -> Result<Option<Arc<ClientConfig>>, String> {
    match tls {
        Some(t) => ferry_tls::client_config(&ferry_tls::ClientTlsSettings {
            ca: t.ca.clone(),
            cert: t.cert.clone(),
            key: t.key.clone(),
        })
        .map(Some)
        .map_err(|e| e.to_string()),
        None if required => ferry_tls::client_config(&ferry_tls::ClientTlsSettings::default())
            .map(Some)
            .map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

impl Action {
    /// Build an action from its table; `node` is the `EHLO` name.
    ///
    /// # Errors
    /// A message naming what is wrong (TLS files, header names).
    pub fn new(config: &AlertActionConfig, node: &str) -> Result<Action, String> {
        match config {
            AlertActionConfig::Email(EmailAction {
                smtp,
                starttls,
                from,
                to,
                username,
                password,
                tls,
                timeout,
            }) => Ok(Action::Email {
                settings: SmtpSettings {
                    server: smtp.as_str().to_owned(),
                    starttls: *starttls,
                    tls: if *starttls {
                        tls_config(tls.as_ref(), true)?
                    } else {
                        None
                    },
                    credentials: username.as_ref().map(|u| {
                        (
                            u.as_str().to_owned(),
                            password
                                .as_ref()
                                .map(|p| p.expose().to_owned())
                                .unwrap_or_default(),
                        )
                    }),
                    helo: helo_name(node),
                    timeout: timeout.get(),
                },
                from: from.as_str().to_owned(),
                to: to.iter().map(|t| t.as_str().to_owned()).collect(),
            }),
            AlertActionConfig::Webhook(WebhookAction {
                url,
                headers,
                tls,
                timeout,
            }) => {
                let https = url.as_str().starts_with("https://");
                let mut builder = reqwest::Client::builder()
                    .timeout(timeout.get())
                    .redirect(reqwest::redirect::Policy::none());
                // Plain http:// gets a TLS configuration that trusts nothing, so building the
                // client never depends on the operating system's store.
                let mut config = match tls_config(tls.as_ref(), https)? {
                    Some(c) => ClientConfig::clone(&c),
                    None => ClientConfig::builder_with_provider(ferry_tls::crypto_provider())
                        .with_safe_default_protocol_versions()
                        .map_err(|e| e.to_string())?
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                };
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                builder = builder.tls_backend_preconfigured(config);
                let client = builder.build().map_err(|e| e.to_string())?;
                let mut map = reqwest::header::HeaderMap::new();
                for (name, value) in headers {
                    let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("webhook header name `{name}` is not valid"))?;
                    let mut value = reqwest::header::HeaderValue::from_str(value.expose())
                        .map_err(|_| format!("webhook header `{name}` has an invalid value"))?;
                    value.set_sensitive(true);
                    map.insert(name, value);
                }
                Ok(Action::Webhook {
                    url: url.as_str().to_owned(),
                    client,
                    headers: map,
                })
            }
            AlertActionConfig::Syslog(SyslogAction {
                address,
                tls,
                timeout,
            }) => Ok(Action::Syslog {
                address: address.as_str().to_owned(),
                tls: tls_config(tls.as_ref(), false)?,
                timeout: timeout.get(),
            }),
        }
    }

    /// Send one notification.
    ///
    /// # Errors
    /// Why it was not delivered (after the webhook's retries).
    pub async fn notify(&self, n: &Notification) -> Result<(), String> {
        match self {
            Action::Email { settings, from, to } => {
                let mail = Mail {
                    from: from.clone(),
                    to: to.clone(),
                    subject: n.subject(),
                    body: n.text(),
                };
                smtp::send(settings, &mail).await.map_err(|e| e.to_string())
            }
            Action::Webhook {
                url,
                client,
                headers,
            } => {
                let body = n.json().to_string();
                let mut delay = WEBHOOK_FIRST_DELAY;
                let mut last = String::new();
                for attempt in 1..=WEBHOOK_ATTEMPTS {
                    let result = client
                        .post(url)
                        .headers(headers.clone())
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    match result {
                        Ok(r) if r.status().is_success() => return Ok(()),
                        Ok(r) => last = format!("HTTP {}", r.status().as_u16()),
                        Err(e) => last = e.without_url().to_string(),
                    }
                    if attempt < WEBHOOK_ATTEMPTS {
                        tracing::debug!(attempt, error = %last, "alert webhook failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
                Err(format!(
                    "webhook failed after {WEBHOOK_ATTEMPTS} attempts: {last}"
                ))
            }
            Action::Syslog {
                address,
                tls,
                timeout,
            } => {
                let frame = n.syslog_frame();
                let send = async {
                    let tcp = TcpStream::connect(address)
                        .await
                        .map_err(|e| format!("syslog {address}: {e}"))?;
                    match tls {
                        Some(config) => {
                            let host = address
                                .rsplit_once(':')
                                .map_or(address.as_str(), |(h, _)| h);
                            let name = ferry_tls::server_name(host).map_err(|e| e.to_string())?;
                            let mut stream = TlsConnector::from(config.clone())
                                .connect(name, tcp)
                                .await
                                .map_err(|e| format!("syslog {address}: TLS: {e}"))?;
                            stream
                                .write_all(frame.as_bytes())
                                .await
                                .map_err(|e| format!("syslog {address}: {e}"))?;
                            let _ = stream.shutdown().await;
                        }
                        None => {
                            let mut stream = tcp;
                            stream
                                .write_all(frame.as_bytes())
                                .await
                                .map_err(|e| format!("syslog {address}: {e}"))?;
                            let _ = stream.shutdown().await;
                        }
                    }
                    Ok::<(), String>(())
                };
                tokio::time::timeout(*timeout, send)
                    .await
                    .map_err(|_| format!("syslog {address}: timed out"))?
            }
        }
    }
}

/// A host name usable in `EHLO`: letters, digits, `-` and `.`.
fn helo_name(node: &str) -> String {
    let name: String = node
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .collect();
    if name.is_empty() {
        "ferry".to_owned()
    } else {
        name
    }
}
