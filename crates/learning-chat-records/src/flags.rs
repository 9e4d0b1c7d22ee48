//! Safety flags: a learner's message or its answer rated at or above `safety.flag_at`, blocked
//! by the model, or flagged by moderation. Each row is also its webhook outbox entry: written
//! first, delivered from here ([`Records::due_flags`], [`Records::flag_delivered`],
//! [`Records::flag_failed`]), so a receiver that is down, or a server killed mid-delivery,
//! loses nothing.

use crate::{now_ms, on_pool, Records, RecordsError};
use serde::{Deserialize, Serialize};

/// One flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flag {
    /// Random and stable: what a receiver drops a second delivery by.
    pub id: String,
    /// When it was raised, Unix milliseconds.
    pub at_ms: i64,
    /// The API key that asked ('' with auth off).
    pub key_id: String,
    /// The hashed learner id ('' when none was sent).
    pub learner: String,
    /// The stored conversation id ('' when the answer had none).
    pub conversation: String,
    /// Which exchange of the conversation (1 for the first question; 0 when unknown).
    pub turn: i64,
    /// The agent asked.
    pub agent_id: String,
    /// `HARM_CATEGORY_...`, a moderation category (`self-harm`, ...) or `blocked`.
    pub category: String,
    /// The probability (`NEGLIGIBLE`..`HIGH`), a moderation score, or the block reason.
    pub score: String,
    /// `prompt`, `answer`, `model_block` or `moderation`.
    pub source: String,
}

/// Which flags to list.
#[derive(Debug, Clone, Default)]
pub struct FlagFilter {
    /// Only this key's.
    pub key_id: Option<String>,
    /// Only those raised at or after this Unix millisecond.
    pub since_ms: Option<i64>,
    /// Only this category.
    pub category: Option<String>,
    /// Only those after this (at, id) position: the cursor of the page before.
    pub after: Option<(i64, String)>,
}

/// The columns of a flag, in [`Flag`] order.
macro_rules! flag_columns {
    () => {
        "id, at, key_id, learner, conversation, turn, agent_id, category, score, source"
    };
}
pub(crate) use flag_columns;

pub(crate) type FlagRow = (
    String,
    i64,
    String,
    String,
    String,
    i64,
    String,
    String,
    String,
    String,
);

pub(crate) fn from_row(row: FlagRow) -> Flag {
    let (id, at_ms, key_id, learner, conversation, turn, agent_id, category, score, source) = row;
    Flag {
        id,
        at_ms,
        key_id,
        learner,
        conversation,
        turn,
        agent_id,
        category,
        score,
        source,
    }
}

impl Records {
    /// Stores flags (one transaction), each due for delivery at once.
    pub async fn insert_flags(&self, flags: &[Flag]) -> Result<(), RecordsError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for flag in flags {
                sqlx::query(concat!("INSERT INTO flags (", flag_columns!(), ", next_attempt_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $2) ON CONFLICT DO NOTHING"))
                .bind(&flag.id)
                .bind(flag.at_ms)
                .bind(&flag.key_id)
                .bind(&flag.learner)
                .bind(&flag.conversation)
                .bind(flag.turn)
                .bind(&flag.agent_id)
                .bind(&flag.category)
                .bind(&flag.score)
                .bind(&flag.source)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The flags of one stored conversation, oldest first (at most `limit`).
    pub async fn conversation_flags(
        &self,
        conversation: &str,
        limit: u32,
    ) -> Result<Vec<Flag>, RecordsError> {
        on_pool!(self, pool => {
            let rows: Vec<FlagRow> = sqlx::query_as(concat!("SELECT ", flag_columns!(),
                " FROM flags WHERE conversation = $1 ORDER BY at, id LIMIT $2"))
            .bind(conversation)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            Ok(rows.into_iter().map(from_row).collect())
        })
    }

    /// One page of flags matching `filter`, oldest first (at most `limit`).
    pub async fn list_flags(
        &self,
        filter: &FlagFilter,
        limit: u32,
    ) -> Result<Vec<Flag>, RecordsError> {
        let (after_at, after_id) = filter.after.clone().unwrap_or((i64::MIN, String::new()));
        on_pool!(self, pool => {
            let rows: Vec<FlagRow> = sqlx::query_as(concat!("SELECT ", flag_columns!(),
                " FROM flags WHERE ($1 IS NULL OR key_id = $1) AND at >= $2 \
                  AND ($3 IS NULL OR category = $3) AND (at > $4 OR (at = $4 AND id > $5)) \
                  ORDER BY at, id LIMIT $6"))
            .bind(filter.key_id.as_deref())
            .bind(filter.since_ms.unwrap_or(i64::MIN))
            .bind(filter.category.as_deref())
            .bind(after_at)
            .bind(after_id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            Ok(rows.into_iter().map(from_row).collect())
        })
    }

    /// Claims up to `limit` undelivered flags due now for one delivery attempt: each claimed
    /// flag is not due again for `claim_ms` (so two servers do not both send it at once, and a
    /// server killed mid-delivery leaves it due again after that), oldest first.
    pub async fn due_flags(
        &self,
        limit: u32,
        claim_ms: i64,
    ) -> Result<Vec<(Flag, i64)>, RecordsError> {
        let now = now_ms();
        on_pool!(self, pool => {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT id, attempts FROM flags WHERE delivered_at IS NULL AND next_attempt_at <= $1 \
                 ORDER BY next_attempt_at, at LIMIT $2",
            )
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            let mut claimed = Vec::with_capacity(rows.len());
            for (id, attempts) in rows {
                // Only the server whose update matched claims it.
                let taken = sqlx::query(
                    "UPDATE flags SET next_attempt_at = $1 \
                     WHERE id = $2 AND delivered_at IS NULL AND next_attempt_at <= $3",
                )
                .bind(now.saturating_add(claim_ms))
                .bind(&id)
                .bind(now)
                .execute(pool)
                .await?;
                if taken.rows_affected() == 0 {
                    continue;
                }
                let row: Option<FlagRow> = sqlx::query_as(concat!("SELECT ", flag_columns!(),
                    " FROM flags WHERE id = $1"))
                .bind(&id)
                .fetch_optional(pool)
                .await?;
                if let Some(row) = row {
                    claimed.push((from_row(row), attempts));
                }
            }
            Ok(claimed)
        })
    }

    /// Marks a flag delivered (the receiver acknowledged it).
    pub async fn flag_delivered(&self, id: &str) -> Result<(), RecordsError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE flags SET delivered_at = $1, attempts = attempts + 1 WHERE id = $2")
                .bind(now_ms())
                .bind(id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Records a failed delivery: the flag is due again in `retry_in_ms`.
    pub async fn flag_failed(&self, id: &str, retry_in_ms: i64) -> Result<(), RecordsError> {
        on_pool!(self, pool => {
            sqlx::query(
                "UPDATE flags SET attempts = attempts + 1, next_attempt_at = $1 \
                 WHERE id = $2 AND delivered_at IS NULL",
            )
            .bind(now_ms().saturating_add(retry_in_ms))
            .bind(id)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// How many flags wait for delivery, and when the oldest of them was raised.
    pub async fn undelivered_flags(&self) -> Result<(i64, Option<i64>), RecordsError> {
        on_pool!(self, pool => {
            let row: (i64, Option<i64>) = sqlx::query_as(
                "SELECT COUNT(*), MIN(at) FROM flags WHERE delivered_at IS NULL",
            )
            .fetch_one(pool)
            .await?;
            Ok(row)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::each_backend;

    fn flag(id: &str, at_ms: i64, key: &str, category: &str) -> Flag {
        Flag {
            id: id.into(),
            at_ms,
            key_id: key.into(),
            learner: String::new(),
            conversation: format!("c-{key}"),
            turn: 1,
            agent_id: "math".into(),
            category: category.into(),
            score: "HIGH".into(),
            source: "prompt".into(),
        }
    }

    #[tokio::test]
    async fn flags_are_listed_by_filter_and_page_and_delivered_once() {
        each_backend(|records| async move {
            let flags = [
                flag("f1", 10, "k1", "HARM_CATEGORY_DANGEROUS_CONTENT"),
                flag("f2", 20, "k2", "HARM_CATEGORY_HARASSMENT"),
                flag("f3", 20, "k1", "HARM_CATEGORY_DANGEROUS_CONTENT"),
            ];
            records.insert_flags(&flags).await.unwrap();
            // The same flag twice stays one row.
            records.insert_flags(&flags[..1]).await.unwrap();
            let all = records
                .list_flags(&FlagFilter::default(), 10)
                .await
                .unwrap();
            let ids: Vec<&str> = all.iter().map(|f| f.id.as_str()).collect();
            assert_eq!(ids, ["f1", "f2", "f3"]);
            let k1 = FlagFilter {
                key_id: Some("k1".into()),
                ..FlagFilter::default()
            };
            assert_eq!(records.list_flags(&k1, 10).await.unwrap().len(), 2);
            let page = FlagFilter {
                after: Some((20, "f2".into())),
                ..FlagFilter::default()
            };
            let rest = records.list_flags(&page, 10).await.unwrap();
            assert_eq!(rest, vec![flags[2].clone()]);
            let harassment = FlagFilter {
                category: Some("HARM_CATEGORY_HARASSMENT".into()),
                since_ms: Some(15),
                ..FlagFilter::default()
            };
            assert_eq!(
                records.list_flags(&harassment, 10).await.unwrap(),
                vec![flags[1].clone()]
            );
            assert_eq!(
                records.conversation_flags("c-k1", 10).await.unwrap().len(),
                2
            );

            let due = records.due_flags(10, 60_000).await.unwrap();
            assert_eq!(due.len(), 3);
            // Claimed: not due again while the claim lasts.
            assert!(records.due_flags(10, 60_000).await.unwrap().is_empty());
            records.flag_delivered("f1").await.unwrap();
            records.flag_failed("f2", 0).await.unwrap();
            let again: Vec<String> = records
                .due_flags(10, 60_000)
                .await
                .unwrap()
                .into_iter()
                .map(|(f, attempts)| format!("{}:{attempts}", f.id))
                .collect();
            assert_eq!(again, ["f2:1"]);
            assert_eq!(records.undelivered_flags().await.unwrap().0, 2);
        })
        .await;
    }
}
