//! Runs a test against both backends: a SQLite file in a temp dir and a private PostgreSQL.

use crate::{ConnectOptions, Records};
use learning_chat_testkit::postgres::PostgresProcess;
use std::future::Future;
use std::time::Duration;

/// Options for `url` as the tests use them.
pub fn options(url: String) -> ConnectOptions {
    ConnectOptions {
        url,
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    }
}

/// Runs `test` on a fresh SQLite file, then on a fresh PostgreSQL database.
pub async fn each_backend<F, Fut>(test: F)
where
    F: Fn(Records) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("records.db").display());
    test(Records::connect(&options(sqlite)).await.unwrap()).await;
    let postgres = PostgresProcess::start();
    let url = postgres.fresh_database();
    test(Records::connect(&options(url)).await.unwrap()).await;
    drop(postgres);
}
