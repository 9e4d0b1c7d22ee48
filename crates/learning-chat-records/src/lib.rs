//! The records database: what a school would miss if it vanished — API keys, conversations and
//! their turns, the usage ledger, the audit log — behind one interface with two backends:
//! SQLite (a file; the default, nothing else to run) and PostgreSQL (shared by a cluster).
//!
//! Redis stays a cache and a coordinator that may be flushed at any moment; nothing here depends
//! on it. Migrations live in `migrations/{sqlite,postgres}/` (kept in step), are compiled into
//! the binary and applied by [`Records::connect`].

pub mod audit;
pub mod console;
pub mod conversations;
pub mod feedback;
pub mod flags;
pub mod keys;
pub mod ledger;
pub mod secrets;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `sqlite://path/to/file.db` (created when missing) or `postgres://user:pass@host:port/db`.
    pub url: String,
    /// Connections in the pool.
    pub max_connections: u32,
    /// How long a query waits for a free connection (and a connection attempt lasts) before it
    /// fails: a database that is down costs a request this, never more.
    pub acquire_timeout: Duration,
}

/// The database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// The URL is not `sqlite://...` or `postgres://...`, or does not parse.
    #[error("database.url: {0}")]
    BadUrl(String),
    /// The database is unreachable, timed out, or refused a statement.
    #[error("records database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed (or the database holds a newer schema than this binary knows).
    #[error("records database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The lock that lets one process at a time migrate a SQLite file could not be taken.
    #[error("records database migration lock {path}: {reason}")]
    MigrationLock {
        /// The lock file beside the database.
        path: String,
        /// Why.
        reason: String,
    },
    /// A stored value does not parse (JSON column, role, ...).
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl RecordsError {
    /// True when the database could not be reached at all (down, refusing, timed out), as
    /// opposed to a statement it refused: callers answer 503 and try again later.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            RecordsError::Database(
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
            )
        )
    }
}

/// Which database a [`Records`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs one body against whichever pool this is: the query text is the same on both backends
/// (numbered `$n` parameters, `ON CONFLICT`, `RETURNING`), only the types differ.
macro_rules! on_pool {
    ($records:expr, $pool:ident => $body:expr) => {
        match &$records.pool {
            $crate::Pool::Sqlite($pool) => $body,
            $crate::Pool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// A handle on the records database (cheap to clone: a connection pool).
#[derive(Debug, Clone)]
pub struct Records {
    pool: Pool,
    /// A SQLite database's file: its migrations are serialised across processes by a lock
    /// beside it ([`Records::migrate`]).
    sqlite_file: Option<std::path::PathBuf>,
}

fn migrations(backend: Backend) -> Migrator {
    let steps: [(i64, &str, &'static str); 5] = match backend {
        Backend::Sqlite => [
            (
                1,
                "records",
                include_str!("../migrations/sqlite/0001_records.sql"),
            ),
            (
                2,
                "keys_ledger",
                include_str!("../migrations/sqlite/0002_keys_ledger.sql"),
            ),
            (
                3,
                "safety",
                include_str!("../migrations/sqlite/0003_safety.sql"),
            ),
            (
                4,
                "console",
                include_str!("../migrations/sqlite/0004_console.sql"),
            ),
            (
                5,
                "policies",
                include_str!("../migrations/sqlite/0005_policies.sql"),
            ),
        ],
        Backend::Postgres => [
            (
                1,
                "records",
                include_str!("../migrations/postgres/0001_records.sql"),
            ),
            (
                2,
                "keys_ledger",
                include_str!("../migrations/postgres/0002_keys_ledger.sql"),
            ),
            (
                3,
                "safety",
                include_str!("../migrations/postgres/0003_safety.sql"),
            ),
            (
                4,
                "console",
                include_str!("../migrations/postgres/0004_console.sql"),
            ),
            (
                5,
                "policies",
                include_str!("../migrations/postgres/0005_policies.sql"),
            ),
        ],
    };
    Migrator::with_migrations(
        steps
            .into_iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    version,
                    name.into(),
                    MigrationType::Simple,
                    sqlx::SqlStr::from_static(sql),
                    false,
                )
            })
            .collect(),
    )
}

/// Longest wait for another process's migration of the same SQLite file: minutes would mean
/// that process hangs, which is worth an error rather than a start that never ends.
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(300);

/// The exclusive lock on `<database>.migrate-lock`, held while the returned file is open.
async fn migration_lock(database: &std::path::Path) -> Result<std::fs::File, RecordsError> {
    let mut path = database.as_os_str().to_owned();
    path.push(".migrate-lock");
    let path = std::path::PathBuf::from(path);
    let failed = |reason: String| RecordsError::MigrationLock {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| failed(e.to_string()))?;
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < MIGRATION_LOCK_WAIT => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(failed(format!(
                    "another process has been migrating this database for {} s",
                    MIGRATION_LOCK_WAIT.as_secs()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(failed(e.to_string())),
        }
    }
}

impl Records {
    /// Opens the database and applies every migration it has not seen. A SQLite file (and its
    /// directory) is created when missing.
    pub async fn connect(options: &ConnectOptions) -> Result<Records, RecordsError> {
        let records = Records::lazy(options)?;
        records.migrate().await?;
        Ok(records)
    }

    /// A handle that connects on first use (no I/O here): a server starts while PostgreSQL is
    /// down and serves what does not need it; [`Records::migrate`] must succeed before the
    /// tables are used.
    pub fn lazy(options: &ConnectOptions) -> Result<Records, RecordsError> {
        let url = options.url.trim();
        let pool = if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() || path == ":memory:" {
                return Err(RecordsError::BadUrl(
                    "a SQLite database needs a file path (sqlite://path/to/records.db)".into(),
                ));
            }
            if let Some(dir) = std::path::Path::new(path).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        RecordsError::BadUrl(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
            }
            let connect = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                // Readers never wait for the writer; several servers may share one file.
                .journal_mode(SqliteJournalMode::Wal)
                // WAL + NORMAL loses at most the last transactions on power loss, never
                // consistency; a killed process loses nothing committed.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(options.acquire_timeout)
                .foreign_keys(true);
            let pool = Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(options.max_connections.max(1))
                    .acquire_timeout(options.acquire_timeout)
                    .connect_lazy_with(connect),
            );
            return Ok(Records {
                pool,
                sqlite_file: Some(std::path::PathBuf::from(path)),
            });
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let connect = PgConnectOptions::from_str(url)
                .map_err(|e| RecordsError::BadUrl(e.to_string()))?
                .application_name("learning-chat");
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(options.max_connections.max(1))
                    .acquire_timeout(options.acquire_timeout)
                    .connect_lazy_with(connect),
            )
        } else {
            return Err(RecordsError::BadUrl(
                "expected sqlite://<file> or postgres://<user>:<password>@<host>:<port>/<db>"
                    .into(),
            ));
        };
        Ok(Records {
            pool,
            sqlite_file: None,
        })
    }

    /// Applies the migrations this binary carries that the database has not seen.
    ///
    /// sqlx locks a PostgreSQL database while it migrates (an advisory lock) but not a SQLite
    /// file, so servers starting together on one file each applied the same migration and all
    /// but one failed to start ("table api_keys already exists"). A SQLite file is therefore
    /// migrated under an exclusive lock on a file beside it: the others wait, then find
    /// nothing left to apply.
    pub async fn migrate(&self) -> Result<(), RecordsError> {
        let migrator = migrations(self.backend());
        let _lock = match &self.sqlite_file {
            Some(file) => Some(migration_lock(file).await?),
            None => None,
        };
        on_pool!(self, pool => migrator.run(pool).await?);
        Ok(())
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// One round trip: Ok when the database answers.
    pub async fn ping(&self) -> Result<(), RecordsError> {
        on_pool!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Closes every connection (graceful shutdown).
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await);
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    /// Servers starting together on one fresh SQLite file each migrated it, and all but one
    /// failed ("table api_keys already exists"); each now waits for the one migrating.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn servers_opening_one_new_sqlite_file_together_all_start() {
        let carried = i64::try_from(migrations(Backend::Sqlite).iter().count()).unwrap();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("a temp dir");
            let url = format!("sqlite://{}", dir.path().join("records.db").display());
            let opening: Vec<_> = (0..4)
                .map(|_| {
                    let options = testing::options(url.clone());
                    tokio::spawn(async move { Records::connect(&options).await })
                })
                .collect();
            for task in opening {
                let records = task.await.unwrap().expect("the database opened");
                let applied: i64 = on_pool!(records, pool => {
                    sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
                        .fetch_one(pool)
                        .await
                        .unwrap()
                });
                assert_eq!(applied, carried, "each migration applied once");
            }
        }
    }
}
