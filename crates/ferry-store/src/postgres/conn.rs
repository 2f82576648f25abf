//! Connections to PostgreSQL.
//!
//! A URL is `postgres://user[:password]@host[:port]/database[?options]` (libpq's URL form).
//! With [`PgOptions::tls`] set, every connection is TLS through rustls: the server's
//! certificate must chain to the given roots and name the host in the URL (hostname
//! verification cannot be turned off), and the URL's `sslmode` is forced to `require`.
//! Without it the connection is plain, which [`connect`] allows only to a loopback address
//! or a Unix socket, so a password never crosses a network in the clear.

use std::sync::Arc;

use crate::StoreError;

/// How to reach the database.
#[derive(Clone)]
pub struct PgOptions {
    /// libpq URL. Holds the password, so it is never printed (`Debug` redacts it).
    pub url: String,
    /// TLS client configuration (roots, optional client certificate). `None`: plain TCP,
    /// refused unless the host is loopback or a socket directory.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redact(&self.url))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The URL with any password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return "<unparsable url>".into();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{}://{masked}@{}", &url[..scheme_end], &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

fn is_loopback(host: &postgres::config::Host) -> bool {
    match host {
        postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .map(|ip| ip.is_loopback())
                    .unwrap_or(false)
        }
        #[cfg(unix)]
        postgres::config::Host::Unix(_) => true,
    }
}

/// Parse `options.url` into a client configuration, with the TLS rule above applied.
///
/// # Errors
/// [`StoreError::Config`] for an unparsable URL, or plain TCP to a host that is not loopback.
pub fn config(options: &PgOptions) -> Result<postgres::Config, StoreError> {
    let mut config: postgres::Config = options
        .url
        .parse()
        .map_err(|e| StoreError::Config(format!("[store] url {}: {e}", redact(&options.url))))?;
    if options.tls.is_some() {
        config.ssl_mode(postgres::config::SslMode::Require);
    } else if let Some(host) = config.get_hosts().iter().find(|h| !is_loopback(h)) {
        return Err(StoreError::Config(format!(
            "[store] url {}: host {host:?} is not loopback; set [store.tls] so the connection \
             is encrypted",
            redact(&options.url)
        )));
    }
    if config.get_application_name().is_none() {
        config.application_name("ferry");
    }
    Ok(config)
}

/// Open one synchronous connection.
///
/// Call it from a thread that is not running async tasks (the writer thread, the blocking
/// pool): the synchronous client drives its own small runtime.
///
/// # Errors
/// [`StoreError::Config`] as [`config`]; [`StoreError::Postgres`] when the server cannot be
/// reached, refuses the login or fails the TLS handshake.
pub fn connect(options: &PgOptions) -> Result<postgres::Client, StoreError> {
    let config = config(options)?;
    let connected = match &options.tls {
        Some(tls) => config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(
            ClientConfigRef(tls.clone()).into_config(),
        )),
        None => config.connect(postgres::NoTls),
    };
    connected.map_err(StoreError::postgres("connecting to PostgreSQL"))
}

/// `MakeRustlsConnect` takes a `ClientConfig` by value.
struct ClientConfigRef(Arc<rustls::ClientConfig>);

impl ClientConfigRef {
    fn into_config(self) -> rustls::ClientConfig {
        Arc::unwrap_or_clone(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("postgres://ferry:s3cret@db.example.org:5432/ferry?sslmode=require"),
            "postgres://ferry:***@db.example.org:5432/ferry?sslmode=require"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
    }

    #[test]
    fn plain_tcp_to_a_remote_host_is_refused() {
        let options = PgOptions {
            url: "postgres://ferry:pw@db.example.org/ferry".into(),
            tls: None,
        };
        let err = config(&options).expect_err("must refuse");
        let text = err.to_string();
        assert!(text.contains("not loopback"), "{text}");
        assert!(!text.contains("pw"), "password leaked: {text}");
    }

    #[test]
    fn plain_tcp_to_loopback_is_allowed() {
        let options = PgOptions {
            url: "postgres://postgres@127.0.0.1:5432/test".into(),
            tls: None,
        };
        assert!(config(&options).is_ok());
    }
}
