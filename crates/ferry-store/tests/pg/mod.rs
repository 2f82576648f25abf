//! What the PostgreSQL test files share: a private schema per test "path".

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ferry_store::postgres::PgOptions;
use ferry_testkit::postgres::TestDb;

/// One schema per test "path", so a case that reopens its path reopens its database. A
/// schema is dropped once its test's temporary directory is gone.
static DBS: Mutex<Option<HashMap<PathBuf, TestDb>>> = Mutex::new(None);

/// A fresh schema (created on a thread of its own: the synchronous client cannot run on the
/// test's async thread).
#[allow(dead_code)] // not every test file uses it
pub fn test_db() -> TestDb {
    std::thread::spawn(TestDb::new).join().expect("test schema")
}

pub fn url_for(path: &Path) -> String {
    let mut dbs = DBS.lock().unwrap_or_else(|e| e.into_inner());
    let dbs = dbs.get_or_insert_with(HashMap::new);
    let gone: Vec<PathBuf> = dbs
        .keys()
        .filter(|p| {
            !p.ancestors()
                .skip(1)
                .any(|d| d.exists() && d != Path::new("/"))
        })
        .cloned()
        .collect();
    for p in gone {
        if let Some(db) = dbs.remove(&p) {
            std::thread::spawn(move || drop(db)).join().ok();
        }
    }
    dbs.entry(path.to_owned())
        .or_insert_with(test_db)
        .url()
        .to_owned()
}

pub fn pg(url: &str) -> PgOptions {
    PgOptions {
        url: url.to_owned(),
        tls: None,
    }
}
