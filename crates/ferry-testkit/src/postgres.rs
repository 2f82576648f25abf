//! A private PostgreSQL schema per test, on the server this machine runs
//! (`postgres://postgres@127.0.0.1:5432/test`, or `FERRY_TEST_PG` when set).
//!
//! Tests that share the database run in parallel: each [`TestDb`] creates its own schema
//! `ferry_t_<pid>_<n>_<nanos>` and hands out a URL whose `search_path` is that schema, so
//! unqualified table names land there. The schema is dropped when the `TestDb` drops.

use std::sync::atomic::{AtomicU64, Ordering};

/// The base URL of the test server.
pub fn base_url() -> String {
    std::env::var("FERRY_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A schema of its own on the test server; dropped (with everything in it) on drop.
#[derive(Debug)]
pub struct TestDb {
    schema: String,
    url: String,
}

impl TestDb {
    /// Create a fresh, empty schema. Panics with a clear message when the server is down.
    pub fn new() -> TestDb {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let schema = format!(
            "ferry_t_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let base = base_url();
        let mut client = admin_client(&base);
        sweep_dead(&mut client);
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .unwrap_or_else(|e| panic!("creating test schema {schema}: {e}"));
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
        TestDb { schema, url }
    }

    /// The URL to give the store: the test server with `search_path` set to this schema.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema's name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// A client on this schema, for assertions the store's API does not offer.
    pub fn client(&self) -> postgres::Client {
        admin_client(&self.url)
    }
}

impl Default for TestDb {
    fn default() -> Self {
        TestDb::new()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        let base = base_url();
        // The synchronous client cannot run on a thread that drives async tasks; drop may
        // happen on one, so the cleanup gets a thread of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = postgres::Client::connect(&base, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
            }
        })
        .join();
    }
}

/// Drop a few schemas left by test processes that are gone.
///
/// A test process may exit without dropping its `TestDb` (nextest runs each test in a process
/// of its own, and statics are never dropped), so schemas would pile up on the shared server.
/// The schema name carries the creating process's id; a schema whose process no longer exists
/// is dropped here, at most a few per call so no test pays for a long backlog at once. Errors
/// are ignored: another test may be dropping the same schema.
fn sweep_dead(client: &mut postgres::Client) {
    const PER_CALL: usize = 16;
    let Ok(rows) = client.query(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'ferry\\_t\\_%'",
        &[],
    ) else {
        return;
    };
    let dead = rows
        .iter()
        .filter_map(|r| r.try_get::<_, String>(0).ok())
        .filter(|name| {
            name.split('_')
                .nth(2)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        })
        .take(PER_CALL);
    for name in dead {
        let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"));
    }
}

fn admin_client(url: &str) -> postgres::Client {
    let url = url.to_string();
    std::thread::spawn(move || {
        postgres::Client::connect(&url, postgres::NoTls).unwrap_or_else(|e| {
            panic!(
                "connecting to the test PostgreSQL server at {url}: {e} \
                 (start it with `service postgresql start`)"
            )
        })
    })
    .join()
    .unwrap_or_else(|_| panic!("connecting to the test PostgreSQL server"))
}
