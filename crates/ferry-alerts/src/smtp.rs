//! A small SMTP submission client (RFC 5321) with STARTTLS (RFC 3207) and `AUTH PLAIN`
//! (RFC 4616), on tokio-rustls with Ferry's TLS configuration.
//!
//! Written here rather than taken from `lettre` so that it uses exactly the TLS settings of
//! every other Ferry client (`ferry_tls::client_config`: the `tls = { ca, cert, key }` table,
//! hostname verification always on) and adds no second HTTP/TLS stack to the build. It sends
//! one short text mail per connection, which is all alerting needs.
//!
//! Security rules: with `starttls = true` the server must offer STARTTLS and the upgrade must
//! succeed before `MAIL FROM`; credentials are only ever sent over TLS; bytes the server sent
//! ahead of the TLS handshake (a STARTTLS injection) abort the session.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where and how to send.
#[derive(Clone)]
pub struct SmtpSettings {
    /// `host:port`.
    pub server: String,
    /// Require STARTTLS.
    pub starttls: bool,
    /// TLS client configuration (trust, identity).
    pub tls: Option<Arc<ClientConfig>>,
    /// `AUTH PLAIN` login and password.
    pub credentials: Option<(String, String)>,
    /// Name given in `EHLO`.
    pub helo: String,
    /// Whole-conversation limit.
    pub timeout: Duration,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("server", &self.server)
            .field("starttls", &self.starttls)
            .field("auth", &self.credentials.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

/// One mail.
#[derive(Debug, Clone)]
pub struct Mail {
    /// Envelope and header sender.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Subject line.
    pub subject: String,
    /// Plain-text body (lines separated by `\n`).
    pub body: String,
}

/// Why a mail was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// Socket error.
    #[error("SMTP connection to {server}: {source}")]
    Io {
        /// Server.
        server: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The server answered something else than expected.
    #[error("SMTP server {server} answered `{reply}` to {command}")]
    Refused {
        /// Server.
        server: String,
        /// What was sent (never the credentials).
        command: String,
        /// The reply (first line).
        reply: String,
    },
    /// A rule of this client forbade going on.
    #[error("SMTP server {server}: {reason}")]
    Policy {
        /// Server.
        server: String,
        /// Why.
        reason: String,
    },
    /// The conversation took longer than the timeout.
    #[error("SMTP server {server}: no answer within {seconds} s")]
    Timeout {
        /// Server.
        server: String,
        /// The limit.
        seconds: u64,
    },
}

/// Send `mail`.
///
/// # Errors
/// [`SmtpError`] for network, TLS, protocol and policy failures.
pub async fn send(settings: &SmtpSettings, mail: &Mail) -> Result<(), SmtpError> {
    match tokio::time::timeout(settings.timeout, conversation(settings, mail)).await {
        Ok(result) => result,
        Err(_) => Err(SmtpError::Timeout {
            server: settings.server.clone(),
            seconds: settings.timeout.as_secs(),
        }),
    }
}

async fn conversation(settings: &SmtpSettings, mail: &Mail) -> Result<(), SmtpError> {
    let server = settings.server.clone();
    let io = |source| SmtpError::Io {
        server: server.clone(),
        source,
    };
    let policy = |reason: &str| SmtpError::Policy {
        server: server.clone(),
        reason: reason.to_owned(),
    };
    let tcp = TcpStream::connect(&settings.server).await.map_err(io)?;
    let mut plain = Session::new(tcp, &server);
    plain.expect("connection greeting", 220).await?;
    let extensions = plain.ehlo(&settings.helo).await?;
    if !settings.starttls {
        if settings.credentials.is_some() {
            return Err(policy("refusing to send credentials without TLS"));
        }
        return plain.deliver(settings, mail, &extensions).await;
    }
    if !has_extension(&extensions, "STARTTLS") {
        return Err(policy(
            "does not offer STARTTLS and starttls = true; mail not sent",
        ));
    }
    plain.command("STARTTLS", "STARTTLS", 220).await?;
    if !plain.reader.buffer().is_empty() {
        return Err(policy(
            "sent data ahead of the TLS handshake (possible STARTTLS injection)",
        ));
    }
    let tcp = plain.reader.into_inner();
    let tls_config = settings
        .tls
        .clone()
        .ok_or_else(|| policy("STARTTLS without a TLS configuration"))?;
    let host = host_of(&settings.server);
    let name = ferry_tls::server_name(host).map_err(|e| policy(&e.to_string()))?;
    let tls = TlsConnector::from(tls_config)
        .connect(name, tcp)
        .await
        .map_err(|e| policy(&format!("TLS handshake failed: {e}")))?;
    let mut secure = Session::new(tls, &server);
    let extensions = secure.ehlo(&settings.helo).await?;
    if let Some((user, password)) = &settings.credentials {
        if !extensions
            .iter()
            .any(|e| e.to_ascii_uppercase().starts_with("AUTH") && has_word(e, "PLAIN"))
        {
            return Err(policy("does not offer AUTH PLAIN"));
        }
        let token = base64(format!("\0{user}\0{password}").as_bytes());
        secure
            .command(&format!("AUTH PLAIN {token}"), "AUTH PLAIN", 235)
            .await?;
    }
    secure.deliver(settings, mail, &extensions).await
}

fn host_of(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn has_extension(extensions: &[String], name: &str) -> bool {
    extensions.iter().any(|e| {
        e.split_whitespace()
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case(name))
    })
}

fn has_word(line: &str, word: &str) -> bool {
    line.split_whitespace()
        .any(|w| w.eq_ignore_ascii_case(word))
}

struct Session<'a, S> {
    reader: BufReader<S>,
    server: &'a str,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> Session<'a, S> {
    fn new(stream: S, server: &'a str) -> Self {
        Session {
            reader: BufReader::new(stream),
            server,
        }
    }

    /// Read one (possibly multi-line) reply: its code and the text of each line.
    async fn reply(&mut self) -> Result<(u16, Vec<String>), SmtpError> {
        let server = self.server;
        let io = |source| SmtpError::Io {
            server: server.to_owned(),
            source,
        };
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = (&mut self.reader)
                .take(4096)
                .read_line(&mut line)
                .await
                .map_err(io)?;
            if n == 0 {
                return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let line = line.trim_end_matches(['\r', '\n']);
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let Some(code) = code else {
                return Err(SmtpError::Refused {
                    server: self.server.to_owned(),
                    command: "(reading a reply)".into(),
                    reply: line.chars().take(200).collect(),
                });
            };
            lines.push(line.get(4..).unwrap_or("").to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, lines));
            }
            if lines.len() > 100 {
                return Err(io(std::io::Error::other("reply longer than 100 lines")));
            }
        }
    }

    async fn expect(&mut self, what: &str, code: u16) -> Result<Vec<String>, SmtpError> {
        let (got, lines) = self.reply().await?;
        if got == code || (code == 250 && got == 251) {
            Ok(lines)
        } else {
            Err(SmtpError::Refused {
                server: self.server.to_owned(),
                command: what.to_owned(),
                reply: format!("{got} {}", lines.first().map_or("", String::as_str)),
            })
        }
    }

    /// Send `line` and expect a reply of `code` (`250` also accepts `251`, user not local).
    async fn command(&mut self, line: &str, label: &str, code: u16) -> Result<(), SmtpError> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.expect(label, code).await.map(|_| ())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), SmtpError> {
        let stream = self.reader.get_mut();
        stream.write_all(bytes).await.map_err(|e| SmtpError::Io {
            server: self.server.to_owned(),
            source: e,
        })?;
        stream.flush().await.map_err(|e| SmtpError::Io {
            server: self.server.to_owned(),
            source: e,
        })
    }

    async fn ehlo(&mut self, helo: &str) -> Result<Vec<String>, SmtpError> {
        self.write(format!("EHLO {helo}\r\n").as_bytes()).await?;
        let mut lines = self.expect("EHLO", 250).await?;
        if !lines.is_empty() {
            lines.remove(0); // the greeting line, not an extension
        }
        Ok(lines)
    }

    async fn deliver(
        &mut self,
        settings: &SmtpSettings,
        mail: &Mail,
        _extensions: &[String],
    ) -> Result<(), SmtpError> {
        let from = address(&mail.from);
        self.command(&format!("MAIL FROM:<{from}>"), "MAIL FROM", 250)
            .await?;
        for to in &mail.to {
            let to = address(to);
            self.command(&format!("RCPT TO:<{to}>"), "RCPT TO", 250)
                .await?;
        }
        self.command("DATA", "DATA", 354).await?;
        let data = render(settings, mail);
        self.write(data.as_bytes()).await?;
        self.expect("end of DATA", 250).await?;
        // The mail is accepted; a failed QUIT changes nothing.
        let _ = self.command("QUIT", "QUIT", 221).await;
        Ok(())
    }
}

/// An address without angle brackets, CR, LF or spaces (it comes from the configuration, but
/// a stray character must not become an SMTP command).
fn address(raw: &str) -> String {
    raw.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .chars()
        .filter(|c| !c.is_control() && !c.is_whitespace() && *c != '<' && *c != '>')
        .collect()
}

fn header_value(raw: &str) -> String {
    raw.chars().filter(|c| !c.is_control()).collect()
}

/// The DATA section: headers, a blank line, the dot-stuffed body and the final dot.
fn render(settings: &SmtpSettings, mail: &Mail) -> String {
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut out = String::new();
    out.push_str(&format!("From: <{}>\r\n", address(&mail.from)));
    let to: Vec<String> = mail
        .to
        .iter()
        .map(|t| format!("<{}>", address(t)))
        .collect();
    out.push_str(&format!("To: {}\r\n", to.join(", ")));
    out.push_str(&format!("Subject: {}\r\n", header_value(&mail.subject)));
    out.push_str(&format!("Date: {date}\r\n"));
    out.push_str(&format!(
        "Message-ID: <ferry-alert-{nanos}@{}>\r\n",
        header_value(&settings.helo)
    ));
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    out.push_str("Content-Transfer-Encoding: 8bit\r\n");
    out.push_str("Auto-Submitted: auto-generated\r\n\r\n");
    for line in mail.body.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(".\r\n");
    out
}

/// Standard base64 with padding (RFC 4648 §4), for `AUTH PLAIN`.
pub(crate) fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn addresses_and_headers_cannot_inject_commands() {
        assert_eq!(address(" <a@b.org>\r\nRCPT TO:<x@y>"), "a@b.orgRCPTTO:x@y");
        assert_eq!(header_value("hi\r\nBcc: x"), "hiBcc: x");
    }

    #[test]
    fn body_lines_starting_with_a_dot_are_stuffed() {
        let settings = SmtpSettings {
            server: "localhost:25".into(),
            starttls: true,
            tls: None,
            credentials: None,
            helo: "node".into(),
            timeout: Duration::from_secs(1),
        };
        let mail = Mail {
            from: "a@b".into(),
            to: vec!["c@d".into()],
            subject: "s".into(),
            body: "one\n.\n..two".into(),
        };
        let data = render(&settings, &mail);
        assert!(
            data.ends_with("\r\n\r\none\r\n..\r\n...two\r\n.\r\n"),
            "{data}"
        );
    }
}
