//! The store's promises on a real SQLite file, without encryption (cases in `cases/store.rs`
//! and `cases/search.rs`).

use std::path::Path;

use ferry_store::{Store, StoreError};

fn open_store(path: &Path) -> Result<Store, StoreError> {
    Store::open(path)
}

#[path = "cases/store.rs"]
mod cases;

#[path = "cases/search.rs"]
mod search;
