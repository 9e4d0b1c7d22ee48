//! The usage ledger: requests, cached requests and model tokens per UTC day × key × hashed
//! learner, what per-day budgets and the console read.
//!
//! A request never writes here. Each server adds its answers to a [`Ledger`] in memory (one
//! short lock and a map entry) and a background task writes what accumulated every
//! `database.ledger_flush_ms` as one batch of upserts (`requests = usage_daily.requests +
//! excluded.requests`), so a killed server loses at most that interval. While the database is
//! down the counts are kept and added to the next batch; the map is bounded (past
//! `database.ledger_max_rows` new learners of a key are folded into its learner `''`).

use crate::{on_pool, Records, RecordsError};
use metrics::{counter, describe_counter, describe_gauge, gauge};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Rows folded into their key's learner `''` because the ledger held `database.ledger_max_rows`
/// distinct rows (the per-learner split is lost for those counts; the totals are not).
pub const LEDGER_FOLDED: &str = "learning_chat_ledger_folded_total";
/// Distinct (day, key, learner) rows waiting to be written, as of the last flush.
pub const LEDGER_PENDING: &str = "learning_chat_ledger_pending_rows";
/// Ledger batches that could not be written (kept and retried).
pub const LEDGER_FLUSH_FAILURES: &str = "learning_chat_ledger_flush_failures_total";

/// Describes the ledger's metrics to the installed recorder.
pub fn describe() {
    describe_counter!(
        LEDGER_FOLDED,
        "Usage counts folded into their key's learner '' because the ledger's map was full."
    );
    describe_gauge!(
        LEDGER_PENDING,
        "Usage ledger rows waiting to be written to the records database."
    );
    describe_counter!(
        LEDGER_FLUSH_FAILURES,
        "Usage ledger batches that could not be written (kept and retried)."
    );
}

/// What some requests used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Questions answered (or failed) after passing the key's limits.
    pub requests: u64,
    /// Of those, served from the answer cache.
    pub cached_requests: u64,
    /// Model input tokens (cached answers cost none).
    pub input_tokens: u64,
    /// Model output tokens.
    pub output_tokens: u64,
}

impl Usage {
    fn add(&mut self, other: Usage) {
        self.requests = self.requests.saturating_add(other.requests);
        self.cached_requests = self.cached_requests.saturating_add(other.cached_requests);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
    }
}

/// One ledger row to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// The key id; `''` without a key.
    pub key_id: String,
    /// The hashed learner id; `''` when none was sent (or folded).
    pub learner: String,
    /// What to add.
    pub usage: Usage,
}

/// One day of a key's usage, every learner together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayUsage {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// The sums.
    pub usage: Usage,
    /// Distinct learners that sent an id (those folded into `''` not counted).
    pub learners: u64,
}

/// Rows per statement: 7 parameters each stays far below both backends' parameter limits.
const ROWS_PER_STATEMENT: usize = 500;

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// `YYYY-MM-DD` of the UTC day `days` after 1970-01-01 (Howard Hinnant's civil_from_days).
pub fn day_string(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Days since 1970-01-01 now (UTC).
pub fn today() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs() / 86_400).unwrap_or(0))
}

impl Records {
    /// Adds every row to the ledger in one transaction (upserts that add to what is there).
    pub async fn add_usage(&self, rows: &[UsageRow]) -> Result<(), RecordsError> {
        if rows.is_empty() {
            return Ok(());
        }
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut sql = String::from(
                    "INSERT INTO usage_daily (day, key_id, learner, requests, cached_requests, \
                     input_tokens, output_tokens) VALUES ",
                );
                for n in 0..chunk.len() {
                    let p = n * 7;
                    if n > 0 {
                        sql.push(',');
                    }
                    sql.push_str(&format!(
                        "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5,
                        p + 6,
                        p + 7
                    ));
                }
                sql.push_str(
                    " ON CONFLICT (day, key_id, learner) DO UPDATE SET \
                     requests = usage_daily.requests + excluded.requests, \
                     cached_requests = usage_daily.cached_requests + excluded.cached_requests, \
                     input_tokens = usage_daily.input_tokens + excluded.input_tokens, \
                     output_tokens = usage_daily.output_tokens + excluded.output_tokens",
                );
                // Built from literals and row numbers only: nothing of the caller's is in the text.
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for row in chunk {
                    query = query
                        .bind(&row.day)
                        .bind(&row.key_id)
                        .bind(&row.learner)
                        .bind(signed(row.usage.requests))
                        .bind(signed(row.usage.cached_requests))
                        .bind(signed(row.usage.input_tokens))
                        .bind(signed(row.usage.output_tokens));
                }
                query.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// A key's usage per day from `from_day` (`YYYY-MM-DD`) on, oldest first.
    pub async fn key_usage(
        &self,
        key_id: &str,
        from_day: &str,
    ) -> Result<Vec<DayUsage>, RecordsError> {
        on_pool!(self, pool => {
            let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
                "SELECT day, CAST(SUM(requests) AS BIGINT), CAST(SUM(cached_requests) AS BIGINT), \
                 CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), \
                 CAST(SUM(CASE WHEN learner <> '' THEN 1 ELSE 0 END) AS BIGINT) \
                 FROM usage_daily WHERE key_id = $1 AND day >= $2 GROUP BY day ORDER BY day",
            )
            .bind(key_id)
            .bind(from_day)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(day, requests, cached, input, output, learners)| DayUsage {
                    day,
                    usage: Usage {
                        requests: unsigned(requests),
                        cached_requests: unsigned(cached),
                        input_tokens: unsigned(input),
                        output_tokens: unsigned(output),
                    },
                    learners: unsigned(learners),
                })
                .collect())
        })
    }
}

/// (UTC day number, key id, hashed learner).
type RowKey = (i64, Arc<str>, Arc<str>);

/// One server's usage not yet written to the ledger.
pub struct Ledger {
    pending: Mutex<HashMap<RowKey, Usage>>,
    max_rows: usize,
    /// The learner every count without one (or folded) goes to.
    nobody: Arc<str>,
}

impl Ledger {
    /// An empty ledger holding at most about `max_rows` distinct rows between flushes.
    pub fn new(max_rows: usize) -> Ledger {
        Ledger {
            pending: Mutex::new(HashMap::new()),
            max_rows: max_rows.max(1),
            nobody: Arc::from(""),
        }
    }

    /// Counts one request's usage: one short lock and a map entry, no I/O.
    pub fn record(&self, key_id: &Arc<str>, learner: Option<&Arc<str>>, usage: Usage) {
        let day = today();
        let learner = learner.unwrap_or(&self.nobody);
        let mut pending = self.pending.lock();
        self.add(&mut pending, (day, key_id.clone(), learner.clone()), usage);
    }

    /// Adds to a row; a new row past the bound is folded into its key's learner `''` (rows of
    /// learner `''` are one per key and day, so they are always kept).
    fn add(&self, pending: &mut HashMap<RowKey, Usage>, key: RowKey, usage: Usage) {
        if let Some(row) = pending.get_mut(&key) {
            row.add(usage);
            return;
        }
        let key = if pending.len() >= self.max_rows && !key.2.is_empty() {
            counter!(LEDGER_FOLDED).increment(1);
            (key.0, key.1, self.nobody.clone())
        } else {
            key
        };
        pending.entry(key).or_default().add(usage);
    }

    /// Distinct rows waiting to be written.
    pub fn pending_rows(&self) -> usize {
        self.pending.lock().len()
    }

    /// Writes what accumulated as one batch; on failure it is kept for the next flush. Returns
    /// the rows written. Not cancel-safe: await it to the end (a dropped flush loses its batch).
    pub async fn flush(&self, records: &Records) -> Result<usize, RecordsError> {
        let batch = std::mem::take(&mut *self.pending.lock());
        // Set here, not per request: a gauge update is a registry lookup.
        gauge!(LEDGER_PENDING).set(batch.len() as f64);
        if batch.is_empty() {
            return Ok(0);
        }
        let rows: Vec<UsageRow> = batch
            .iter()
            .map(|((day, key_id, learner), usage)| UsageRow {
                day: day_string(*day),
                key_id: key_id.to_string(),
                learner: learner.to_string(),
                usage: *usage,
            })
            .collect();
        match records.add_usage(&rows).await {
            Ok(()) => Ok(rows.len()),
            Err(error) => {
                counter!(LEDGER_FLUSH_FAILURES).increment(1);
                // The batch goes back as it was (it fit the bound); what came in since is
                // added to it under the bound.
                let mut pending = self.pending.lock();
                let since = std::mem::replace(&mut *pending, batch);
                for (key, usage) in since {
                    self.add(&mut pending, key, usage);
                }
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::each_backend;

    #[test]
    fn days_are_utc_calendar_dates() {
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(day_string(59), "1970-03-01");
        assert_eq!(day_string(11_016), "2000-02-29");
        assert_eq!(day_string(19_723), "2024-01-01");
        assert_eq!(day_string(20_513), "2026-03-01");
    }

    fn usage(requests: u64, cached: u64, input: u64, output: u64) -> Usage {
        Usage {
            requests,
            cached_requests: cached,
            input_tokens: input,
            output_tokens: output,
        }
    }

    #[tokio::test]
    async fn batches_add_to_what_is_stored() {
        each_backend(|records| async move {
            let ledger = Ledger::new(100);
            let key: Arc<str> = Arc::from("key_1");
            let ann: Arc<str> = Arc::from("learner-a");
            ledger.record(&key, Some(&ann), usage(1, 0, 10, 20));
            ledger.record(&key, Some(&ann), usage(1, 1, 0, 0));
            ledger.record(&key, None, usage(1, 0, 5, 5));
            assert_eq!(ledger.flush(&records).await.unwrap(), 2);
            assert_eq!(ledger.flush(&records).await.unwrap(), 0);
            ledger.record(&key, Some(&ann), usage(1, 0, 1, 1));
            ledger.flush(&records).await.unwrap();
            let days = records.key_usage("key_1", "1970-01-01").await.unwrap();
            assert_eq!(days.len(), 1);
            assert_eq!(days[0].day, day_string(today()));
            assert_eq!(days[0].usage, usage(4, 1, 16, 26));
            assert_eq!(days[0].learners, 1);
            assert!(records
                .key_usage("key_2", "1970-01-01")
                .await
                .unwrap()
                .is_empty());
        })
        .await;
    }

    #[tokio::test]
    async fn a_full_ledger_folds_new_learners_and_keeps_counts_while_the_database_is_down() {
        let ledger = Ledger::new(2);
        let key: Arc<str> = Arc::from("key_1");
        for n in 0..5 {
            let learner: Arc<str> = Arc::from(format!("l{n}"));
            ledger.record(&key, Some(&learner), usage(1, 0, 1, 0));
        }
        // Two learners of their own, the other three folded into learner ''.
        assert_eq!(ledger.pending_rows(), 3);
        // Nothing listens on port 1: the batch is kept.
        let mut options = crate::testing::options("postgres://postgres@127.0.0.1:1/none".into());
        options.acquire_timeout = std::time::Duration::from_millis(300);
        let down = Records::lazy(&options).unwrap();
        assert!(ledger.flush(&down).await.is_err());
        assert_eq!(ledger.pending_rows(), 3);
        // Usage while the database is down joins the kept batch, still within the bound.
        let late: Arc<str> = Arc::from("late");
        ledger.record(&key, Some(&late), usage(1, 0, 1, 0));
        assert_eq!(ledger.pending_rows(), 3);
        let dir = tempfile::tempdir().unwrap();
        let up = Records::connect(&crate::testing::options(format!(
            "sqlite://{}",
            dir.path().join("l.db").display()
        )))
        .await
        .unwrap();
        assert_eq!(ledger.flush(&up).await.unwrap(), 3);
        let days = up.key_usage("key_1", "1970-01-01").await.unwrap();
        assert_eq!(days[0].usage.requests, 6);
        assert_eq!(days[0].learners, 2);
    }
}
