//! Harness for end-to-end tests: runs the real `ferry` binary on a config in a temp dir and
//! talks to it over real loopback sockets.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_connectors::mllp::{MllpConnection, MllpEndpoint};

/// A running `ferry run` process.
pub struct Ferry {
    child: Child,
    /// Channel name → bound listener address.
    pub listeners: HashMap<String, SocketAddr>,
    /// Admin listener address.
    pub admin: SocketAddr,
    output: Arc<Mutex<Vec<String>>>,
}

pub fn ferry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

impl Ferry {
    /// Start `ferry run --config <config>` with extra environment variables and wait until it
    /// prints `ready`.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Ferry {
        let mut command = Command::new(ferry_bin());
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("FERRY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn ferry");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    output.lock().expect("lock").push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    output
                        .lock()
                        .expect("lock")
                        .push(format!("[stderr] {line}"));
                }
            });
        }
        let mut listeners = HashMap::new();
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "ferry did not become ready:\n{}",
                        output.lock().expect("lock").join("\n")
                    );
                }
            };
            if let Some(rest) = line.strip_prefix("ferry: channel ") {
                let (name, rest) = rest.split_once(" listening on ").expect("listen line");
                let addr = rest.split_once("://").expect("scheme").1;
                listeners.insert(name.to_owned(), addr.parse().expect("addr"));
            } else if let Some(rest) = line.strip_prefix("ferry: admin listening on ") {
                admin = Some(
                    rest.split_once("://")
                        .expect("scheme")
                        .1
                        .parse()
                        .expect("addr"),
                );
            } else if line.starts_with("ferry: ready") {
                break;
            }
        }
        Ferry {
            child,
            listeners,
            admin: admin.expect("admin address"),
            output,
        }
    }

    /// The listener of a channel.
    pub fn listener(&self, channel: &str) -> SocketAddr {
        *self.listeners.get(channel).expect("channel listener")
    }

    /// A plain MLLP connection to a channel's listener.
    pub async fn connect(&self, channel: &str) -> MllpConnection {
        MllpConnection::connect(&plain(self.listener(channel)))
            .await
            .expect("connect")
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.output.lock().expect("lock").join("\n")
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        false
    }

    /// GET an admin path; (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{}", self.admin, path);
        let response = reqwest::get(&url).await.expect("admin request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// The value of one Prometheus sample, e.g. `ferry_messages_sent_total{channel="a",destination="b"}`.
    pub async fn metric(&self, sample: &str) -> Option<i64> {
        let (_, body) = self.admin_get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
    }

    /// Poll a metric until it reaches `value` or the timeout passes; returns the last value.
    pub async fn wait_metric(&self, sample: &str, value: i64, timeout: Duration) -> Option<i64> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(sample).await;
            if v == Some(value) || Instant::now() >= deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The files a destination wrote into `dir` (dot-files, its temporaries, left out) once
    /// there are at least `n`, in name order; fails with the process output after 15 s.
    pub fn wait_files(&self, dir: &Path, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            paths.retain(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            });
            if paths.len() >= n {
                paths.sort();
                return paths
                    .iter()
                    .map(|p| std::fs::read(p).expect("read a delivered file"))
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} files in {}\n{}",
                paths.len(),
                dir.display(),
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago (for a destination that must start "down").
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A loopback port held bound but not listening: connections to it are refused (a peer that
/// is down), yet no other test can take it, as can happen to a [`free_port`] between its
/// release and its use. `socket.listen(…)` brings the peer up on it.
pub fn reserve_port() -> (SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind a reserved port");
    (socket.local_addr().expect("local addr"), socket)
}

/// Write `text` as `ferry.toml` in `dir`; returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("ferry.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Write a `ferry.toml` in `dir` with a store in `dir`, the admin listener on a free port, and
/// the given `[[channel]]` tables; returns its path.
pub fn config_with_channels(dir: &Path, channels: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            "[store]\npath = {}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{channels}",
            toml_path(&dir.join("ferry.db"))
        ),
    )
}

/// A TOML string literal for a path.
pub fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// An ADT^A01 with the given MSH-10.
pub fn adt(control_id: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|HIS|GENERAL|FERRY|CLOUD|20261125083000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r\
         EVN|A01|20261125083000\r\
         PID|1||{control_id}^^^GH^MR||DOE^JANE||19800101|F\r\
         PV1|1|I|W^101^1\r"
    )
    .into_bytes()
}

/// A plain MLLP endpoint.
pub fn plain(addr: SocketAddr) -> MllpEndpoint {
    MllpEndpoint {
        address: addr.to_string(),
        tls: None,
        connect_timeout: Duration::from_secs(5),
        max_frame_bytes: ferry_mllp::DEFAULT_MAX_FRAME_BYTES,
    }
}

/// Send one message and return the parsed ACK.
pub async fn send(conn: &mut MllpConnection, message: &[u8]) -> ferry_hl7::ack::AckSummary {
    let response = conn
        .exchange(message, Duration::from_secs(10))
        .await
        .expect("ACK");
    ferry_hl7::ack::parse_ack(&response).expect("parse ACK")
}

/// A TLS client trusting `pki`'s CA, presenting `identity` when given (mTLS).
pub fn client_tls(
    pki: &ferry_testkit::TestPki,
    identity: Option<&ferry_testkit::CertFiles>,
) -> Arc<rustls::ClientConfig> {
    ferry_tls::client_config(&ferry_tls::ClientTlsSettings {
        ca: Some(pki.ca_cert_path()),
        cert: identity.map(|i| i.cert.clone()),
        key: identity.map(|i| i.key.clone()),
    })
    .expect("client tls")
}

/// An MLLP-over-TLS endpoint at `addr` that expects the server to be `localhost`.
pub fn tls_endpoint(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> MllpEndpoint {
    MllpEndpoint {
        tls: Some((tls, ferry_tls::server_name("localhost").expect("name"))),
        ..plain(addr)
    }
}

/// One exchange on `conn`; `Ok(MSA-1)` if an ACK came back.
pub async fn exchange_code(conn: &mut MllpConnection, control_id: &str) -> Result<String, String> {
    let ack = conn
        .exchange(&adt(control_id), Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    ferry_hl7::ack::parse_ack(&ack)
        .map(|a| a.code.as_str().to_owned())
        .map_err(|e| e.to_string())
}

/// One MLLP exchange over TLS on a new connection; `Ok(MSA-1)` if an ACK came back.
pub async fn mllp_tls_attempt(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    control_id: &str,
) -> Result<String, String> {
    let mut conn = MllpConnection::connect(&tls_endpoint(addr, tls))
        .await
        .map_err(|e| e.to_string())?;
    exchange_code(&mut conn, control_id).await
}

/// One HL7 POST over HTTPS to `https://localhost:PORT/hl7`; `Ok(status)` if a response came
/// back.
pub async fn https_attempt(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    control_id: &str,
) -> Result<u16, String> {
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    client
        .post(format!("https://localhost:{}/hl7", addr.port()))
        .header("content-type", "application/hl7-v2; charset=utf-8")
        .body(adt(control_id))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

/// Every record of the audit trail of `config`'s store, from `ferry audit list --json`.
pub fn audit_records(config: &Path) -> Vec<serde_json::Value> {
    let output = Command::new(ferry_bin())
        .args(["audit", "list", "--json", "--limit", "1000000", "--config"])
        .arg(config)
        .output()
        .expect("ferry audit list");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
        .collect()
}
