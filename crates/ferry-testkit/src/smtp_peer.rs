//! A real, minimal SMTP server on loopback that records every mail: the stand-in for a mail
//! relay in alert tests.
//!
//! It speaks `EHLO`/`HELO`, `STARTTLS` (when given a TLS configuration, e.g. from a
//! [`crate::TestPki`] server certificate), `AUTH PLAIN` (only after STARTTLS when TLS is
//! configured: `538` before), `MAIL FROM`, `RCPT TO`, `DATA` (with dot-unstuffing), `RSET`,
//! `NOOP` and `QUIT`. Each mail records whether it came over TLS and which login was used.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// One mail the peer accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The `MAIL FROM` address.
    pub from: String,
    /// The `RCPT TO` addresses.
    pub to: Vec<String>,
    /// The DATA section (headers and body, CRLF line ends, dots unstuffed, without the final
    /// dot line).
    pub data: String,
    /// Whether the session had been upgraded with STARTTLS.
    pub tls: bool,
    /// The `AUTH PLAIN` login (authorization identity ignored) and password, if any.
    pub auth: Option<(String, String)>,
}

/// A recording SMTP server.
pub struct SmtpPeer {
    addr: SocketAddr,
    mails: Arc<Mutex<Vec<ReceivedMail>>>,
    task: JoinHandle<()>,
}

impl SmtpPeer {
    /// Start on 127.0.0.1 with an ephemeral port. With `tls`, `STARTTLS` is offered.
    pub async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> std::io::Result<SmtpPeer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mails = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tls.map(TlsAcceptor::from);
        let shared = mails.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let mails = shared.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut reader = BufReader::new(tcp);
                    if reader
                        .get_mut()
                        .write_all(b"220 ferry-testkit ESMTP\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let mut state = State::default();
                    let upgrade = session(&mut reader, &mut state, acceptor.is_some(), &mails)
                        .await
                        .unwrap_or(false);
                    let Some(acceptor) = acceptor.filter(|_| upgrade) else {
                        return;
                    };
                    let Ok(tls) = acceptor.accept(reader.into_inner()).await else {
                        return;
                    };
                    // RFC 3207: forget everything learnt before the upgrade.
                    let mut state = State {
                        tls: true,
                        ..State::default()
                    };
                    let mut reader = BufReader::new(tls);
                    let _ = session(&mut reader, &mut state, false, &mails).await;
                });
            }
        });
        Ok(SmtpPeer { addr, mails, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every mail accepted so far.
    pub fn mails(&self) -> Vec<ReceivedMail> {
        self.mails.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Wait until at least `n` mails arrived or the timeout passes; returns the mails.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.mails();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SmtpPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct State {
    tls: bool,
    greeted: bool,
    auth: Option<(String, String)>,
    from: Option<String>,
    to: Vec<String>,
}

/// Serve commands until QUIT or EOF (`Ok(false)`) or a STARTTLS was accepted (`Ok(true)`).
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    reader: &mut BufReader<S>,
    state: &mut State,
    offer_starttls: bool,
    mails: &Mutex<Vec<ReceivedMail>>,
) -> std::io::Result<bool> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(false);
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        let upper = line.to_ascii_uppercase();
        let verb = upper.split_whitespace().next().unwrap_or("").to_owned();
        let reply: String = match verb.as_str() {
            "EHLO" | "HELO" => {
                state.greeted = true;
                let mut r = String::from("250-ferry-testkit\r\n");
                if offer_starttls {
                    r.push_str("250-STARTTLS\r\n");
                }
                r.push_str("250-AUTH PLAIN\r\n250 8BITMIME\r\n");
                r
            }
            "STARTTLS" if offer_starttls => {
                reader.get_mut().write_all(b"220 go ahead\r\n").await?;
                reader.get_mut().flush().await?;
                return Ok(true);
            }
            "AUTH" if offer_starttls && !state.tls => {
                "538 encryption required for requested authentication mechanism\r\n".into()
            }
            "AUTH" => {
                let token = line.split_whitespace().nth(2).unwrap_or("");
                match decode_plain(token) {
                    Some(creds) => {
                        state.auth = Some(creds);
                        "235 authenticated\r\n".into()
                    }
                    None => "535 bad credentials\r\n".into(),
                }
            }
            "MAIL" if state.greeted => {
                state.from = Some(angle(&line));
                state.to.clear();
                "250 ok\r\n".into()
            }
            "RCPT" if state.from.is_some() => {
                state.to.push(angle(&line));
                "250 ok\r\n".into()
            }
            "DATA" if !state.to.is_empty() => {
                reader
                    .get_mut()
                    .write_all(b"354 end with <CRLF>.<CRLF>\r\n")
                    .await?;
                reader.get_mut().flush().await?;
                let mut data = String::new();
                loop {
                    let mut l = String::new();
                    if reader.read_line(&mut l).await? == 0 {
                        return Ok(false);
                    }
                    if l == ".\r\n" || l == ".\n" {
                        break;
                    }
                    data.push_str(l.strip_prefix('.').unwrap_or(&l));
                }
                if let Ok(mut m) = mails.lock() {
                    m.push(ReceivedMail {
                        from: state.from.take().unwrap_or_default(),
                        to: std::mem::take(&mut state.to),
                        data,
                        tls: state.tls,
                        auth: state.auth.clone(),
                    });
                }
                "250 queued\r\n".into()
            }
            "RSET" => {
                state.from = None;
                state.to.clear();
                "250 ok\r\n".into()
            }
            "NOOP" => "250 ok\r\n".into(),
            "QUIT" => {
                reader.get_mut().write_all(b"221 bye\r\n").await?;
                reader.get_mut().flush().await?;
                return Ok(false);
            }
            "MAIL" | "RCPT" | "DATA" => "503 bad sequence of commands\r\n".into(),
            _ => "502 command not implemented\r\n".into(),
        };
        reader.get_mut().write_all(reply.as_bytes()).await?;
        reader.get_mut().flush().await?;
    }
}

/// The address inside `<…>` of a MAIL/RCPT line.
fn angle(line: &str) -> String {
    match (line.find('<'), line.rfind('>')) {
        (Some(a), Some(b)) if a < b => line[a + 1..b].to_owned(),
        _ => String::new(),
    }
}

/// `base64("authzid\0login\0password")` → (login, password).
fn decode_plain(token: &str) -> Option<(String, String)> {
    let bytes = base64_decode(token)?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.split('\0');
    let _authzid = parts.next()?;
    let login = parts.next()?.to_owned();
    let password = parts.next()?.to_owned();
    Some((login, password))
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u8> = text.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::new();
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    Some(out)
}
