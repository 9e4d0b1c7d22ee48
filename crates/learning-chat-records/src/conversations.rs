//! Conversations and their turns. A conversation row carries its turn count, so an append is
//! one short transaction that checks the count it expects (optimistic: two servers answering
//! the same conversation at once cannot interleave their exchanges).

use crate::{on_pool, Records, RecordsError};

/// One stored turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnRecord {
    /// `user` or `model`.
    pub role: String,
    /// What was said.
    pub text: String,
    /// When, in Unix milliseconds.
    pub at_ms: i64,
    /// For an answer: served from the cache.
    pub cached: bool,
    /// For an answer: the model that produced it.
    pub model: String,
}

/// A stored conversation with every turn, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRecord {
    /// Its stored id.
    pub id: String,
    /// The key that started it, when keys are required.
    pub owner: Option<String>,
    /// The agent it belongs to.
    pub agent_id: String,
    /// When it began, in Unix milliseconds.
    pub created_at_ms: i64,
    /// Every turn, oldest first.
    pub turns: Vec<TurnRecord>,
    /// The answer policy it started with (`socratic@1`); empty before policies.
    pub policy: String,
    /// The experiment variant it was assigned (`experiment/variant`); empty when none.
    pub variant: String,
}

/// What an append found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Append {
    /// Written; the conversation now has this many turns.
    Appended(usize),
    /// It changed since it was read (or, when creating, the id exists).
    Conflict,
    /// It is gone (erased).
    Gone,
}

/// A new conversation's first turns, or a follow-up's, to append.
#[derive(Debug, Clone, Copy)]
pub struct NewTurns<'a> {
    /// The stored id.
    pub id: &'a str,
    /// The key that started it (only used when creating).
    pub owner: Option<&'a str>,
    /// The hashed learner id that started it, '' when none (only used when creating).
    pub learner: &'a str,
    /// Its agent (only used when creating).
    pub agent_id: &'a str,
    /// Its answer policy (only used when creating).
    pub policy: &'a str,
    /// Its experiment variant (only used when creating).
    pub variant: &'a str,
    /// When it began (only used when creating).
    pub created_at_ms: i64,
    /// Turns stored now; 0 creates the conversation.
    pub expected: usize,
    /// The turns to add.
    pub turns: &'a [TurnRecord],
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Records {
    /// The conversation with every turn; `None` when there is none.
    pub async fn load_conversation(
        &self,
        id: &str,
    ) -> Result<Option<ConversationRecord>, RecordsError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let head: Option<(Option<String>, String, i64, String, String)> = sqlx::query_as(
                "SELECT owner, agent_id, created_at, policy, variant FROM conversations \
                 WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((owner, agent_id, created_at_ms, policy, variant)) = head else {
                return Ok(None);
            };
            let rows: Vec<(String, String, i64, i64, String)> = sqlx::query_as(
                "SELECT role, text, at, cached, model FROM turns \
                 WHERE conversation_id = $1 ORDER BY seq",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            let turns = rows
                .into_iter()
                .map(|(role, text, at_ms, cached, model)| TurnRecord {
                    role,
                    text,
                    at_ms,
                    cached: cached != 0,
                    model,
                })
                .collect();
            Ok(Some(ConversationRecord {
                id: id.to_owned(),
                owner,
                agent_id,
                created_at_ms,
                turns,
                policy,
                variant,
            }))
        })
    }

    /// Appends the turns if the conversation still has `expected` turns (0 creates it), in one
    /// transaction.
    pub async fn append_turns(&self, new: NewTurns<'_>) -> Result<Append, RecordsError> {
        let bytes: i64 = new
            .turns
            .iter()
            .map(|t| count(t.text.len()))
            .fold(0, i64::saturating_add);
        let added = count(new.turns.len());
        let last_at = new.turns.last().map_or(new.created_at_ms, |t| t.at_ms);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if new.expected == 0 {
                let created = sqlx::query(
                    "INSERT INTO conversations \
                     (id, owner, agent_id, created_at, updated_at, turn_count, stored_bytes, \
                      policy, variant, learner) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
                )
                .bind(new.id)
                .bind(new.owner)
                .bind(new.agent_id)
                .bind(new.created_at_ms)
                .bind(last_at)
                .bind(added)
                .bind(bytes)
                .bind(new.policy)
                .bind(new.variant)
                .bind(new.learner)
                .execute(&mut *tx)
                .await?;
                if created.rows_affected() == 0 {
                    return Ok(Append::Conflict);
                }
            } else {
                let updated = sqlx::query(
                    "UPDATE conversations SET turn_count = turn_count + $1, \
                     stored_bytes = stored_bytes + $2, updated_at = $3 \
                     WHERE id = $4 AND turn_count = $5",
                )
                .bind(added)
                .bind(bytes)
                .bind(last_at)
                .bind(new.id)
                .bind(count(new.expected))
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() == 0 {
                    let exists: Option<(i64,)> =
                        sqlx::query_as("SELECT turn_count FROM conversations WHERE id = $1")
                            .bind(new.id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    return Ok(match exists {
                        None => Append::Gone,
                        Some(_) => Append::Conflict,
                    });
                }
            }
            for (offset, turn) in new.turns.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO turns (conversation_id, seq, role, text, at, cached, model) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(new.id)
                .bind(count(new.expected + offset))
                .bind(&turn.role)
                .bind(&turn.text)
                .bind(turn.at_ms)
                .bind(i64::from(turn.cached))
                .bind(&turn.model)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(Append::Appended(new.expected + new.turns.len()))
        })
    }

    /// Erases the conversation and its turns; false when there was none.
    pub async fn erase_conversation(&self, id: &str) -> Result<bool, RecordsError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM turns WHERE conversation_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let erased = sqlx::query("DELETE FROM conversations WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(erased.rows_affected() > 0)
        })
    }

    /// How many conversations are stored (an erased token conversation's empty marker is not
    /// one).
    pub async fn conversation_count(&self) -> Result<u64, RecordsError> {
        on_pool!(self, pool => {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM conversations WHERE turn_count > 0")
                .fetch_one(pool)
                .await?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::each_backend;

    fn turn(role: &str, text: &str) -> TurnRecord {
        TurnRecord {
            role: role.into(),
            text: text.into(),
            at_ms: 7,
            cached: role == "model",
            model: if role == "model" {
                "m".into()
            } else {
                String::new()
            },
        }
    }

    fn new<'a>(id: &'a str, expected: usize, turns: &'a [TurnRecord]) -> NewTurns<'a> {
        NewTurns {
            id,
            owner: Some("key_1"),
            learner: "",
            agent_id: "math",
            policy: "hints@1",
            variant: "e/a",
            created_at_ms: 5,
            expected,
            turns,
        }
    }

    #[tokio::test]
    async fn turns_append_in_order_and_a_stale_append_conflicts() {
        each_backend(|records| async move {
            let first = [turn("user", "2+2?"), turn("model", "4")];
            let again = [turn("user", "and 3+3?"), turn("model", "6")];
            assert_eq!(
                records.append_turns(new("c1", 0, &first)).await.unwrap(),
                Append::Appended(2)
            );
            // The id exists: creating again conflicts.
            assert_eq!(
                records.append_turns(new("c1", 0, &first)).await.unwrap(),
                Append::Conflict
            );
            assert_eq!(
                records.append_turns(new("c1", 2, &again)).await.unwrap(),
                Append::Appended(4)
            );
            // Written by someone else since it was read with 2 turns.
            assert_eq!(
                records.append_turns(new("c1", 2, &again)).await.unwrap(),
                Append::Conflict
            );
            let stored = records.load_conversation("c1").await.unwrap().unwrap();
            assert_eq!(stored.owner.as_deref(), Some("key_1"));
            assert_eq!(stored.agent_id, "math");
            assert_eq!(stored.created_at_ms, 5);
            assert_eq!(
                (stored.policy.as_str(), stored.variant.as_str()),
                ("hints@1", "e/a")
            );
            let texts: Vec<&str> = stored.turns.iter().map(|t| t.text.as_str()).collect();
            assert_eq!(texts, ["2+2?", "4", "and 3+3?", "6"]);
            assert!(stored.turns[1].cached && !stored.turns[0].cached);
            assert_eq!(records.conversation_count().await.unwrap(), 1);
        })
        .await;
    }

    #[tokio::test]
    async fn an_erased_conversation_is_gone_for_good() {
        each_backend(|records| async move {
            let first = [turn("user", "q"), turn("model", "a")];
            records.append_turns(new("c2", 0, &first)).await.unwrap();
            assert!(records.erase_conversation("c2").await.unwrap());
            assert!(!records.erase_conversation("c2").await.unwrap());
            assert_eq!(records.load_conversation("c2").await.unwrap(), None);
            assert_eq!(
                records.append_turns(new("c2", 2, &first)).await.unwrap(),
                Append::Gone
            );
            assert_eq!(records.conversation_count().await.unwrap(), 0);
        })
        .await;
    }
}
