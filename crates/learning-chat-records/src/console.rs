//! What the teacher/admin console reads and the data rights it exercises: usage by class,
//! the most asked questions, conversations by filter, flag reviews, a learner's data (export
//! and erasure) and the retention sweep.
//!
//! A class is an API key: its conversations are those it owns, its usage the ledger rows of
//! its id. A learner is a hashed `X-Learner-Id` (hashed per key, so one person under two keys
//! is two hashes: callers pass every hash they mean).

use crate::conversations::ConversationRecord;
use crate::flags::{flag_columns, Flag, FlagRow};
use crate::ledger::{DayUsage, Usage};
use crate::{on_pool, Records, RecordsError};

/// A day's length in Unix milliseconds.
const DAY_MS: i64 = 86_400_000;

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// One class's usage over some days, every learner together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassTotals {
    /// The key id.
    pub key_id: String,
    /// The sums.
    pub usage: Usage,
    /// Distinct learners that sent an id.
    pub learners: u64,
}

/// A question and how often a class asked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskedQuestion {
    /// The question as stored (normalised, personal data redacted).
    pub text: String,
    /// How many times.
    pub count: u64,
}

/// Which conversations to list.
#[derive(Debug, Clone, Default)]
pub struct ConversationFilter {
    /// Only these classes (key ids); `None` for every conversation (an admin's view).
    pub owners: Option<Vec<String>>,
    /// Only this agent's.
    pub agent_id: Option<String>,
    /// Only these hashed learners'.
    pub learners: Option<Vec<String>>,
    /// Only those active at or after this Unix millisecond.
    pub since_ms: Option<i64>,
    /// Only those with (`true`) or without (`false`) a flag.
    pub flagged: Option<bool>,
    /// Only those before this (updated_at, id) position: the cursor of the page before.
    pub before: Option<(i64, String)>,
}

/// One conversation in a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    /// The stored id.
    pub id: String,
    /// The key (class) that started it.
    pub owner: Option<String>,
    /// The hashed learner ('' when none was sent).
    pub learner: String,
    /// Its agent.
    pub agent_id: String,
    /// When it began, Unix milliseconds.
    pub created_at_ms: i64,
    /// When it last changed, Unix milliseconds.
    pub updated_at_ms: i64,
    /// Turns stored.
    pub turn_count: u64,
    /// Its first question.
    pub first_question: String,
    /// Flags it raised.
    pub flags: u64,
    /// Of those, not reviewed yet.
    pub unreviewed_flags: u64,
}

/// A teacher's or admin's review of a flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagReview {
    /// The flag.
    pub flag_id: String,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// Who (`teacher:<key id>`, `admin:<key id>`).
    pub by: String,
    /// Their note.
    pub note: String,
}

/// Everything stored about some hashed learner ids.
#[derive(Debug, Clone, Default)]
pub struct LearnerData {
    /// Their conversations with every turn.
    pub conversations: Vec<ConversationRecord>,
    /// The flags their messages raised.
    pub flags: Vec<Flag>,
    /// Their usage rows: (day, key id, usage).
    pub usage: Vec<(String, String, Usage)>,
}

/// What an erasure or a sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Conversations (with their turns).
    pub conversations: u64,
    /// Flags.
    pub flags: u64,
    /// Usage rows.
    pub usage_rows: u64,
}

/// How long things are kept (`[records]`).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Days a conversation (its turns and flags) is kept after its last activity, for keys that
    /// set none of their own; 0 keeps them.
    pub days: u32,
    /// Days usage rows are kept; 0 keeps them.
    pub usage_days: u32,
}

type SummaryRow = (
    String,
    Option<String>,
    String,
    String,
    i64,
    i64,
    i64,
    Option<String>,
    i64,
    i64,
);

/// `$n, $n+1, ...` for `count` parameters from `first`.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Who set the retention of what: conversations whose key is on legal hold are never swept,
/// nor are those of a key (or the default) keeping them forever (0 days).
macro_rules! expired_conversations {
    () => {
        "SELECT c.id FROM conversations c LEFT JOIN api_keys k ON k.id = c.owner \
         WHERE COALESCE(k.legal_hold, 0) = 0 AND COALESCE(k.retention_days, $2) > 0 \
         AND c.updated_at < $1 - COALESCE(k.retention_days, $2) * 86400000"
    };
}

impl Records {
    /// Each class's usage from `from_day` (`YYYY-MM-DD`) on, one entry per key that has any.
    pub async fn usage_by_key(&self, from_day: &str) -> Result<Vec<ClassTotals>, RecordsError> {
        on_pool!(self, pool => {
            let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
                "SELECT key_id, CAST(SUM(requests) AS BIGINT), CAST(SUM(cached_requests) AS BIGINT), \
                 CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), \
                 CAST(COUNT(DISTINCT CASE WHEN learner <> '' THEN learner END) AS BIGINT) \
                 FROM usage_daily WHERE day >= $1 GROUP BY key_id ORDER BY key_id",
            )
            .bind(from_day)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(key_id, requests, cached, input, output, learners)| ClassTotals {
                    key_id,
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

    /// A class's usage per day from `from_day` on (see [`Records::key_usage`]).
    pub async fn class_days(
        &self,
        key_id: &str,
        from_day: &str,
    ) -> Result<Vec<DayUsage>, RecordsError> {
        self.key_usage(key_id, from_day).await
    }

    /// The questions a class asked most in its stored conversations since `since_ms`, most
    /// asked first (ties by text), at most `limit`.
    pub async fn top_questions(
        &self,
        key_id: &str,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<AskedQuestion>, RecordsError> {
        on_pool!(self, pool => {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT t.text, COUNT(*) FROM turns t JOIN conversations c ON c.id = t.conversation_id \
                 WHERE c.owner = $1 AND t.role = 'user' AND t.at >= $2 \
                 GROUP BY t.text ORDER BY COUNT(*) DESC, t.text LIMIT $3",
            )
            .bind(key_id)
            .bind(since_ms)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(text, count)| AskedQuestion {
                    text,
                    count: unsigned(count),
                })
                .collect())
        })
    }

    /// One page of conversations matching `filter`, most recently active first (at most
    /// `limit`).
    pub async fn list_conversations(
        &self,
        filter: &ConversationFilter,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, RecordsError> {
        // Fixed parameters first, then the lists' members.
        let mut sql = String::from(
            "SELECT c.id, c.owner, c.learner, c.agent_id, c.created_at, c.updated_at, c.turn_count, \
             (SELECT t.text FROM turns t WHERE t.conversation_id = c.id AND t.seq = 0), \
             (SELECT COUNT(*) FROM flags f WHERE f.conversation = c.id), \
             (SELECT COUNT(*) FROM flags f WHERE f.conversation = c.id AND f.reviewed_at IS NULL) \
             FROM conversations c WHERE c.turn_count > 0 \
             AND ($1 IS NULL OR c.agent_id = $1) AND c.updated_at >= $2 \
             AND (c.updated_at < $3 OR (c.updated_at = $3 AND c.id < $4))",
        );
        match filter.flagged {
            Some(true) => {
                sql.push_str(" AND EXISTS (SELECT 1 FROM flags f WHERE f.conversation = c.id)")
            }
            Some(false) => {
                sql.push_str(" AND NOT EXISTS (SELECT 1 FROM flags f WHERE f.conversation = c.id)")
            }
            None => {}
        }
        let mut next = 6;
        let owners = filter.owners.clone().unwrap_or_default();
        if filter.owners.is_some() {
            if owners.is_empty() {
                return Ok(Vec::new());
            }
            sql.push_str(&format!(
                " AND c.owner IN ({})",
                placeholders(next, owners.len())
            ));
            next += owners.len();
        }
        let learners = filter.learners.clone().unwrap_or_default();
        if filter.learners.is_some() {
            if learners.is_empty() {
                return Ok(Vec::new());
            }
            sql.push_str(&format!(
                " AND c.learner IN ({})",
                placeholders(next, learners.len())
            ));
        }
        sql.push_str(" ORDER BY c.updated_at DESC, c.id DESC LIMIT $5");
        // No cursor: before the end of time, where no row is.
        let (before_at, before_id) = filter.before.clone().unwrap_or((i64::MAX, String::new()));
        on_pool!(self, pool => {
            // Built from literals and parameter numbers only: nothing of the caller's is in it.
            let mut query = sqlx::query_as::<_, SummaryRow>(sqlx::AssertSqlSafe(sql))
                .bind(filter.agent_id.as_deref())
                .bind(filter.since_ms.unwrap_or(i64::MIN))
                .bind(before_at)
                .bind(before_id)
                .bind(i64::from(limit));
            for value in owners.iter().chain(learners.iter()) {
                query = query.bind(value);
            }
            let rows = query.fetch_all(pool).await?;
            Ok(rows
                .into_iter()
                .map(
                    |(id, owner, learner, agent_id, created, updated, turns, first, flags, open)| {
                        ConversationSummary {
                            id,
                            owner,
                            learner,
                            agent_id,
                            created_at_ms: created,
                            updated_at_ms: updated,
                            turn_count: unsigned(turns),
                            first_question: first.unwrap_or_default(),
                            flags: unsigned(flags),
                            unreviewed_flags: unsigned(open),
                        }
                    },
                )
                .collect())
        })
    }

    /// The summary of one stored conversation (its owner and learner), `None` when there is
    /// none.
    pub async fn conversation_summary(
        &self,
        id: &str,
    ) -> Result<Option<ConversationSummary>, RecordsError> {
        on_pool!(self, pool => {
            let row: Option<SummaryRow> = sqlx::query_as(
                "SELECT c.id, c.owner, c.learner, c.agent_id, c.created_at, c.updated_at, c.turn_count, \
                 (SELECT t.text FROM turns t WHERE t.conversation_id = c.id AND t.seq = 0), \
                 (SELECT COUNT(*) FROM flags f WHERE f.conversation = c.id), \
                 (SELECT COUNT(*) FROM flags f WHERE f.conversation = c.id AND f.reviewed_at IS NULL) \
                 FROM conversations c WHERE c.id = $1 AND c.turn_count > 0",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?;
            Ok(row.map(
                |(id, owner, learner, agent_id, created, updated, turns, first, flags, open)| {
                    ConversationSummary {
                        id,
                        owner,
                        learner,
                        agent_id,
                        created_at_ms: created,
                        updated_at_ms: updated,
                        turn_count: unsigned(turns),
                        first_question: first.unwrap_or_default(),
                        flags: unsigned(flags),
                        unreviewed_flags: unsigned(open),
                    }
                },
            ))
        })
    }

    /// One flag and its review, `None` when there is no such flag.
    pub async fn flag(&self, id: &str) -> Result<Option<(Flag, Option<FlagReview>)>, RecordsError> {
        on_pool!(self, pool => {
            let row: Option<(String, Option<i64>, String, String)> = sqlx::query_as(
                "SELECT id, reviewed_at, reviewed_by, review_note FROM flags WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?;
            let Some((flag_id, reviewed_at, by, note)) = row else {
                return Ok(None);
            };
            let flag: FlagRow = sqlx::query_as(concat!("SELECT ", flag_columns!(), " FROM flags WHERE id = $1"))
                .bind(id)
                .fetch_one(pool)
                .await?;
            let review = reviewed_at.map(|at_ms| FlagReview {
                flag_id,
                at_ms,
                by,
                note,
            });
            Ok(Some((crate::flags::from_row(flag), review)))
        })
    }

    /// The reviews of a conversation's flags, oldest flag first.
    pub async fn flag_reviews(&self, conversation: &str) -> Result<Vec<FlagReview>, RecordsError> {
        on_pool!(self, pool => {
            let rows: Vec<(String, i64, String, String)> = sqlx::query_as(
                "SELECT id, reviewed_at, reviewed_by, review_note FROM flags \
                 WHERE conversation = $1 AND reviewed_at IS NOT NULL ORDER BY at, id",
            )
            .bind(conversation)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(flag_id, at_ms, by, note)| FlagReview {
                    flag_id,
                    at_ms,
                    by,
                    note,
                })
                .collect())
        })
    }

    /// Marks a flag reviewed by `actor` with `note` (a later review replaces it) and writes
    /// `flag.reviewed` to the audit log, in one transaction; false when there is no such flag.
    pub async fn review_flag(
        &self,
        id: &str,
        actor: &str,
        note: &str,
        now_ms: i64,
    ) -> Result<bool, RecordsError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let updated = sqlx::query(
                "UPDATE flags SET reviewed_at = $1, reviewed_by = $2, review_note = $3 WHERE id = $4",
            )
            .bind(now_ms)
            .bind(actor)
            .bind(note)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 0 {
                return Ok(false);
            }
            crate::audit::write_entry!(&mut *tx, now_ms, actor, "flag.reviewed", id, note)?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// The stored ids of the conversations of these hashed learners.
    pub async fn learner_conversation_ids(
        &self,
        learners: &[String],
    ) -> Result<Vec<String>, RecordsError> {
        if learners.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT id FROM conversations WHERE learner IN ({}) ORDER BY created_at, id",
            placeholders(1, learners.len())
        );
        on_pool!(self, pool => {
            let mut query = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(sql));
            for learner in learners {
                query = query.bind(learner);
            }
            Ok(query.fetch_all(pool).await?.into_iter().map(|(id,)| id).collect())
        })
    }

    /// Everything stored about these hashed learners: conversations with their turns, flags
    /// and usage rows.
    pub async fn learner_data(&self, learners: &[String]) -> Result<LearnerData, RecordsError> {
        let mut data = LearnerData::default();
        if learners.is_empty() {
            return Ok(data);
        }
        for id in self.learner_conversation_ids(learners).await? {
            if let Some(conversation) = self.load_conversation(&id).await? {
                data.conversations.push(conversation);
            }
        }
        let list = placeholders(1, learners.len());
        let flag_sql = format!(
            concat!(
                "SELECT ",
                flag_columns!(),
                " FROM flags WHERE learner IN ({list}) ORDER BY at, id"
            ),
            list = list
        );
        let usage_sql = format!(
            "SELECT day, key_id, requests, cached_requests, input_tokens, output_tokens \
             FROM usage_daily WHERE learner IN ({list}) ORDER BY day, key_id"
        );
        let (flags, usage) = on_pool!(self, pool => {
            let mut flags = sqlx::query_as::<_, FlagRow>(sqlx::AssertSqlSafe(flag_sql));
            let mut usage =
                sqlx::query_as::<_, (String, String, i64, i64, i64, i64)>(sqlx::AssertSqlSafe(usage_sql));
            for learner in learners {
                flags = flags.bind(learner);
                usage = usage.bind(learner);
            }
            (flags.fetch_all(pool).await?, usage.fetch_all(pool).await?)
        });
        data.flags = flags.into_iter().map(crate::flags::from_row).collect();
        data.usage = usage
            .into_iter()
            .map(|(day, key_id, requests, cached, input, output)| {
                (
                    day,
                    key_id,
                    Usage {
                        requests: unsigned(requests),
                        cached_requests: unsigned(cached),
                        input_tokens: unsigned(input),
                        output_tokens: unsigned(output),
                    },
                )
            })
            .collect();
        Ok(data)
    }

    /// Erases what is left of these hashed learners once their conversations are gone from the
    /// caches: their conversations (any still here), flags and usage rows, and writes
    /// `learner.erased` by `actor` about `subject` (never the learner id itself) to the audit
    /// log, in one transaction.
    pub async fn erase_learner(
        &self,
        learners: &[String],
        actor: &str,
        subject: &str,
        now_ms: i64,
    ) -> Result<Removed, RecordsError> {
        if learners.is_empty() {
            return Ok(Removed::default());
        }
        let list = placeholders(1, learners.len());
        let turns = format!(
            "DELETE FROM turns WHERE conversation_id IN \
             (SELECT id FROM conversations WHERE learner IN ({list}))"
        );
        let conversations = format!("DELETE FROM conversations WHERE learner IN ({list})");
        let flags = format!("DELETE FROM flags WHERE learner IN ({list})");
        let usage = format!("DELETE FROM usage_daily WHERE learner IN ({list})");
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut removed = [0u64; 4];
            for (n, sql) in [turns, conversations, flags, usage].into_iter().enumerate() {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for learner in learners {
                    query = query.bind(learner);
                }
                removed[n] = query.execute(&mut *tx).await?.rows_affected();
            }
            let removed = Removed {
                conversations: removed[1],
                flags: removed[2],
                usage_rows: removed[3],
            };
            let detail = format!(
                "conversations={} flags={} usage_rows={}",
                removed.conversations, removed.flags, removed.usage_rows
            );
            crate::audit::write_entry!(&mut *tx, now_ms, actor, "learner.erased", subject, detail)?;
            tx.commit().await?;
            Ok(removed)
        })
    }

    /// Deletes what `retention` says is kept no longer as of `now_ms`: conversations (with
    /// their turns) idle past their key's retention, flags of conversations no longer stored
    /// that are as old, and usage rows past `usage_days`; nothing of a key on legal hold.
    /// Idempotent and safe on every server at once (deleting what another deleted is a no-op).
    /// Writes `retention.swept` when it removed anything.
    pub async fn sweep(&self, retention: Retention, now_ms: i64) -> Result<Removed, RecordsError> {
        let days = i64::from(retention.days);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(concat!(
                "DELETE FROM turns WHERE conversation_id IN (",
                expired_conversations!(),
                ")"
            ))
            .bind(now_ms)
            .bind(days)
            .execute(&mut *tx)
            .await?;
            let conversations = sqlx::query(concat!(
                "DELETE FROM conversations WHERE id IN (",
                expired_conversations!(),
                ")"
            ))
            .bind(now_ms)
            .bind(days)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // A flag goes with its conversation; one of none stored (a one-shot question's)
            // by its own age, under its key's retention.
            let flags = sqlx::query(
                "DELETE FROM flags WHERE id IN (SELECT f.id FROM flags f \
                 LEFT JOIN api_keys k ON k.id = f.key_id \
                 WHERE COALESCE(k.legal_hold, 0) = 0 AND COALESCE(k.retention_days, $2) > 0 \
                 AND f.at < $1 - COALESCE(k.retention_days, $2) * 86400000 \
                 AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.id = f.conversation))",
            )
            .bind(now_ms)
            .bind(days)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let usage_rows = if retention.usage_days > 0 {
                let cutoff = crate::ledger::day_string(
                    now_ms.div_euclid(DAY_MS) - i64::from(retention.usage_days),
                );
                sqlx::query(
                    "DELETE FROM usage_daily WHERE day < $1 AND NOT EXISTS \
                     (SELECT 1 FROM api_keys k WHERE k.id = usage_daily.key_id AND k.legal_hold = 1)",
                )
                .bind(cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            } else {
                0
            };
            let removed = Removed {
                conversations,
                flags,
                usage_rows,
            };
            if removed != Removed::default() {
                let detail = format!(
                    "conversations={conversations} flags={flags} usage_rows={usage_rows}"
                );
                crate::audit::write_entry!(&mut *tx, now_ms, "retention", "retention.swept", "", detail)?;
            }
            tx.commit().await?;
            Ok(removed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversations::{NewTurns, TurnRecord};
    use crate::keys::{ApiKey, KeyEdit};
    use crate::ledger::UsageRow;
    use crate::testing::each_backend;

    fn turn(role: &str, text: &str, at_ms: i64) -> TurnRecord {
        TurnRecord {
            role: role.into(),
            text: text.into(),
            at_ms,
            cached: false,
            model: String::new(),
        }
    }

    async fn conversation(records: &Records, id: &str, owner: &str, learner: &str, at_ms: i64) {
        let turns = [
            turn("user", &format!("q {id}"), at_ms),
            turn("model", "a", at_ms),
        ];
        records
            .append_turns(NewTurns {
                id,
                owner: Some(owner),
                learner,
                agent_id: "math",
                policy: "full@1",
                variant: "",
                created_at_ms: at_ms,
                expected: 0,
                turns: &turns,
            })
            .await
            .unwrap();
    }

    fn flag(id: &str, conversation: &str, key: &str, learner: &str, at_ms: i64) -> Flag {
        Flag {
            id: id.into(),
            at_ms,
            key_id: key.into(),
            learner: learner.into(),
            conversation: conversation.into(),
            turn: 1,
            agent_id: "math".into(),
            category: "HARM_CATEGORY_DANGEROUS_CONTENT".into(),
            score: "HIGH".into(),
            source: "prompt".into(),
        }
    }

    fn key(id: &str) -> ApiKey {
        ApiKey {
            id: id.into(),
            name: id.into(),
            hash: format!("h_{id}"),
            agents: Vec::new(),
            limits: Default::default(),
            weight: 1,
            require_learner: false,
            created_at: 1,
            last_used_at: None,
            revoked_at: None,
            role: Default::default(),
            policy: None,
            classes: Vec::new(),
            retention_days: None,
            legal_hold: false,
        }
    }

    #[tokio::test]
    async fn conversations_are_listed_by_class_learner_flag_and_page() {
        each_backend(|records| async move {
            conversation(&records, "k1~a", "k1", "ann", 10).await;
            conversation(&records, "k1~b", "k1", "bob", 20).await;
            conversation(&records, "k2~c", "k2", "ann2", 30).await;
            records
                .insert_flags(&[flag("f1", "k1~b", "k1", "bob", 20)])
                .await
                .unwrap();
            let ids = |list: Vec<ConversationSummary>| -> Vec<String> {
                list.into_iter().map(|c| c.id).collect()
            };
            let all = records
                .list_conversations(&ConversationFilter::default(), 10)
                .await
                .unwrap();
            assert_eq!(ids(all.clone()), ["k2~c", "k1~b", "k1~a"]);
            assert_eq!(all[1].first_question, "q k1~b");
            assert_eq!((all[1].flags, all[1].unreviewed_flags), (1, 1));
            let class = ConversationFilter {
                owners: Some(vec!["k1".into()]),
                ..Default::default()
            };
            assert_eq!(
                ids(records.list_conversations(&class, 10).await.unwrap()),
                ["k1~b", "k1~a"]
            );
            let none = ConversationFilter {
                owners: Some(Vec::new()),
                ..Default::default()
            };
            assert!(records
                .list_conversations(&none, 10)
                .await
                .unwrap()
                .is_empty());
            let flagged = ConversationFilter {
                flagged: Some(true),
                ..Default::default()
            };
            assert_eq!(
                ids(records.list_conversations(&flagged, 10).await.unwrap()),
                ["k1~b"]
            );
            let learner = ConversationFilter {
                learners: Some(vec!["ann".into(), "ann2".into()]),
                since_ms: Some(15),
                ..Default::default()
            };
            assert_eq!(
                ids(records.list_conversations(&learner, 10).await.unwrap()),
                ["k2~c"]
            );
            let page = ConversationFilter {
                before: Some((20, "k1~b".into())),
                ..Default::default()
            };
            assert_eq!(
                ids(records.list_conversations(&page, 10).await.unwrap()),
                ["k1~a"]
            );

            assert!(records
                .review_flag("f1", "teacher:t", "talked to bob", 99)
                .await
                .unwrap());
            assert!(!records
                .review_flag("nope", "teacher:t", "", 99)
                .await
                .unwrap());
            let reviews = records.flag_reviews("k1~b").await.unwrap();
            assert_eq!(reviews.len(), 1);
            assert_eq!(reviews[0].note, "talked to bob");
            let summary = records.conversation_summary("k1~b").await.unwrap().unwrap();
            assert_eq!(summary.unreviewed_flags, 0);
            let (found, review) = records.flag("f1").await.unwrap().unwrap();
            assert_eq!(found.key_id, "k1");
            assert_eq!(review.unwrap().by, "teacher:t");

            let top = records.top_questions("k1", 0, 5).await.unwrap();
            assert_eq!(top.len(), 2);
            assert!(records
                .top_questions("k1", 1_000, 5)
                .await
                .unwrap()
                .is_empty());
        })
        .await;
    }

    #[tokio::test]
    async fn a_learner_is_exported_and_erased_and_nothing_else() {
        each_backend(|records| async move {
            conversation(&records, "k1~a", "k1", "ann", 10).await;
            conversation(&records, "k1~b", "k1", "bob", 20).await;
            records
                .insert_flags(&[
                    flag("f1", "k1~a", "k1", "ann", 10),
                    flag("f2", "k1~b", "k1", "bob", 20),
                ])
                .await
                .unwrap();
            let row = |learner: &str| UsageRow {
                day: "2026-01-01".into(),
                key_id: "k1".into(),
                learner: learner.into(),
                usage: Usage {
                    requests: 2,
                    ..Usage::default()
                },
            };
            records.add_usage(&[row("ann"), row("bob")]).await.unwrap();
            let ann = ["ann".to_owned()];
            let data = records.learner_data(&ann).await.unwrap();
            assert_eq!(data.conversations.len(), 1);
            assert_eq!(data.conversations[0].id, "k1~a");
            assert_eq!(data.conversations[0].turns.len(), 2);
            assert_eq!(data.flags.len(), 1);
            assert_eq!(data.flags[0].id, "f1");
            assert_eq!(data.usage.len(), 1);
            assert_eq!(data.usage[0].2.requests, 2);

            let removed = records
                .erase_learner(&ann, "admin:x", "learner", 5)
                .await
                .unwrap();
            assert_eq!(
                removed,
                Removed {
                    conversations: 1,
                    flags: 1,
                    usage_rows: 1
                }
            );
            let after = records.learner_data(&ann).await.unwrap();
            assert!(
                after.conversations.is_empty() && after.flags.is_empty() && after.usage.is_empty()
            );
            let bob = records.learner_data(&["bob".to_owned()]).await.unwrap();
            assert_eq!(
                (bob.conversations.len(), bob.flags.len(), bob.usage.len()),
                (1, 1, 1)
            );
            let log = records.audit_log(1).await.unwrap();
            assert_eq!(log[0].action, "learner.erased");
        })
        .await;
    }

    #[tokio::test]
    async fn the_sweep_keeps_what_is_young_or_on_hold_and_is_idempotent() {
        each_backend(|records| async move {
            let day = DAY_MS;
            let now = 400 * day;
            records.create_key(&key("k1"), "t").await.unwrap();
            records.create_key(&key("held"), "t").await.unwrap();
            records.create_key(&key("short"), "t").await.unwrap();
            records
                .update_key(
                    "held",
                    &KeyEdit {
                        legal_hold: Some(true),
                        ..KeyEdit::default()
                    },
                    "t",
                )
                .await
                .unwrap();
            records
                .update_key(
                    "short",
                    &KeyEdit {
                        retention_days: Some(Some(7)),
                        ..KeyEdit::default()
                    },
                    "t",
                )
                .await
                .unwrap();
            // 366 days idle: past the default 365.
            conversation(&records, "k1~old", "k1", "ann", now - 366 * day).await;
            conversation(&records, "k1~new", "k1", "ann", now - 10 * day).await;
            conversation(&records, "held~old", "held", "h", now - 366 * day).await;
            conversation(&records, "short~mid", "short", "s", now - 10 * day).await;
            records
                .insert_flags(&[
                    flag("f_old", "k1~old", "k1", "ann", now - 366 * day),
                    flag("f_new", "k1~new", "k1", "ann", now - 10 * day),
                    flag("f_oneshot", "", "k1", "ann", now - 400 * day),
                ])
                .await
                .unwrap();
            let row = |day: &str, key: &str| UsageRow {
                day: day.into(),
                key_id: key.into(),
                learner: String::new(),
                usage: Usage {
                    requests: 1,
                    ..Usage::default()
                },
            };
            records
                .add_usage(&[
                    row("1970-01-02", "k1"),
                    row("1970-01-02", "held"),
                    row("1971-01-30", "k1"),
                ])
                .await
                .unwrap();
            let retention = Retention {
                days: 365,
                usage_days: 100,
            };
            let removed = records.sweep(retention, now).await.unwrap();
            assert_eq!(
                removed,
                Removed {
                    conversations: 2,
                    flags: 2,
                    usage_rows: 1
                }
            );
            let mut left: Vec<String> = records
                .list_conversations(&ConversationFilter::default(), 10)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect();
            left.sort();
            assert_eq!(left, ["held~old", "k1~new"]);
            assert_eq!(
                records
                    .conversation_flags("k1~new", 10)
                    .await
                    .unwrap()
                    .len(),
                1
            );
            assert_eq!(
                records.key_usage("held", "1970-01-01").await.unwrap().len(),
                1
            );
            assert_eq!(
                records.key_usage("k1", "1970-01-01").await.unwrap().len(),
                1
            );
            // Again (another server at the same time): nothing more.
            assert_eq!(
                records.sweep(retention, now).await.unwrap(),
                Removed::default()
            );
            let log = records.audit_log(10).await.unwrap();
            let swept: Vec<&str> = log
                .iter()
                .filter(|e| e.action == "retention.swept")
                .map(|e| e.detail.as_str())
                .collect();
            assert_eq!(swept, ["conversations=2 flags=2 usage_rows=1"]);
        })
        .await;
    }
}
