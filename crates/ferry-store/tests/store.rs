//! The store's promises on a real SQLite file, without encryption (cases in `cases/store.rs`
//! and `cases/search.rs`).

use std::path::Path;

use ferry_store::{Store, StoreError};

fn open_store(path: &Path) -> Result<Store, StoreError> {
    Store::open(path)
}

/// The cases that rewrite the SQLite file itself run here.
const SQLITE_FILE: bool = true;

#[path = "cases/store.rs"]
mod cases;

#[path = "cases/search.rs"]
mod search;
