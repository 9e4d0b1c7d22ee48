//! The repository's files (manifests, docs, config examples), for the tests that check them.

use std::path::PathBuf;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A path relative to the repository root.
pub fn repo_path(path: &str) -> PathBuf {
    repo().join(path)
}

/// A repository file's text; panics naming the file when it is missing.
pub fn read(path: &str) -> String {
    let full = repo_path(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}
