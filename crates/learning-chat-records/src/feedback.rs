//! Feedback on answers: a learner's thumbs up or down, a teacher's 1-5 rating, each with an
//! optional comment, kept with the conversation's policy and experiment variant so the
//! per-variant thumbs-up rate is counted over every server; and the per-variant counts every
//! server adds ([`Records::add_experiment_counts`]).

use crate::{on_pool, Records, RecordsError};

/// One rating of one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackRecord {
    /// The stored conversation id.
    pub conversation: String,
    /// Which exchange (1 for the first question).
    pub turn: i64,
    /// `learner` or `teacher`.
    pub rater: String,
    /// `up` or `down` (a learner's), `1`..`5` (a teacher's).
    pub rating: String,
    /// Free text ('' when none).
    pub comment: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// The key that rated ('' with auth off).
    pub key_id: String,
    /// The conversation's agent.
    pub agent_id: String,
    /// The conversation's policy (`socratic@1`).
    pub policy: String,
    /// The conversation's variant (`experiment/variant`, '' when none).
    pub variant: String,
}

/// Thumbs of one variant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Thumbs {
    /// `experiment/variant`.
    pub variant: String,
    /// Answers rated up.
    pub up: u64,
    /// Answers rated down.
    pub down: u64,
}

/// What servers counted for one experiment variant (added up, or to add).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VariantTotals {
    /// The experiment's name.
    pub experiment: String,
    /// The variant's name.
    pub variant: String,
    /// Conversations started in it.
    pub conversations: i64,
    /// Of those, with a follow-up.
    pub follow_ups: i64,
    /// Questions answered.
    pub turns: i64,
    /// Model input tokens.
    pub input_tokens: i64,
    /// Model output tokens.
    pub output_tokens: i64,
    /// Estimated cost in micro-USD.
    pub cost_microusd: i64,
}

type FeedbackRow = (
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

impl Records {
    /// Stores a rating; a second one of the same answer by the same kind of rater replaces it.
    pub async fn put_feedback(&self, feedback: &FeedbackRecord) -> Result<(), RecordsError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO feedback (conversation, turn, rater, rating, comment, at, key_id, \
                 agent_id, policy, variant) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (conversation, turn, rater) DO UPDATE SET rating = excluded.rating, \
                 comment = excluded.comment, at = excluded.at, key_id = excluded.key_id",
            )
            .bind(&feedback.conversation)
            .bind(feedback.turn)
            .bind(&feedback.rater)
            .bind(&feedback.rating)
            .bind(&feedback.comment)
            .bind(feedback.at_ms)
            .bind(&feedback.key_id)
            .bind(&feedback.agent_id)
            .bind(&feedback.policy)
            .bind(&feedback.variant)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Every rating of a conversation, by turn.
    pub async fn conversation_feedback(
        &self,
        conversation: &str,
    ) -> Result<Vec<FeedbackRecord>, RecordsError> {
        let rows: Vec<FeedbackRow> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT conversation, turn, rater, rating, comment, at, key_id, agent_id, \
                 policy, variant FROM feedback WHERE conversation = $1 ORDER BY turn, rater",
            )
            .bind(conversation)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(
                    conversation,
                    turn,
                    rater,
                    rating,
                    comment,
                    at_ms,
                    key_id,
                    agent_id,
                    policy,
                    variant,
                )| {
                    FeedbackRecord {
                        conversation,
                        turn,
                        rater,
                        rating,
                        comment,
                        at_ms,
                        key_id,
                        agent_id,
                        policy,
                        variant,
                    }
                },
            )
            .collect())
    }

    /// Learners' thumbs per variant of `experiment` (variants named `experiment/...`).
    pub async fn experiment_thumbs(&self, experiment: &str) -> Result<Vec<Thumbs>, RecordsError> {
        let prefix = format!("{experiment}/");
        let rows: Vec<(String, String, i64)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT variant, rating, COUNT(*) FROM feedback \
                 WHERE rater = 'learner' AND substr(variant, 1, $1) = $2 \
                 GROUP BY variant, rating",
            )
            .bind(i32::try_from(prefix.len()).unwrap_or(i32::MAX))
            .bind(&prefix)
            .fetch_all(pool)
            .await?
        });
        let mut thumbs: Vec<Thumbs> = Vec::new();
        for (variant, rating, count) in rows {
            let count = u64::try_from(count).unwrap_or(0);
            let at = match thumbs.iter().position(|t| t.variant == variant) {
                Some(at) => at,
                None => {
                    thumbs.push(Thumbs {
                        variant,
                        ..Thumbs::default()
                    });
                    thumbs.len() - 1
                }
            };
            match rating.as_str() {
                "up" => thumbs[at].up += count,
                "down" => thumbs[at].down += count,
                _ => {}
            }
        }
        Ok(thumbs)
    }
}

impl Records {
    /// Adds what a server counted since its last write, in one transaction.
    pub async fn add_experiment_counts(
        &self,
        counts: &[VariantTotals],
    ) -> Result<(), RecordsError> {
        if counts.is_empty() {
            return Ok(());
        }
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for c in counts {
                sqlx::query(
                    "INSERT INTO experiment_counts (experiment, variant, conversations, \
                     follow_ups, turns, input_tokens, output_tokens, cost_microusd) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (experiment, variant) DO UPDATE SET \
                     conversations = experiment_counts.conversations + excluded.conversations, \
                     follow_ups = experiment_counts.follow_ups + excluded.follow_ups, \
                     turns = experiment_counts.turns + excluded.turns, \
                     input_tokens = experiment_counts.input_tokens + excluded.input_tokens, \
                     output_tokens = experiment_counts.output_tokens + excluded.output_tokens, \
                     cost_microusd = experiment_counts.cost_microusd + excluded.cost_microusd",
                )
                .bind(&c.experiment)
                .bind(&c.variant)
                .bind(c.conversations)
                .bind(c.follow_ups)
                .bind(c.turns)
                .bind(c.input_tokens)
                .bind(c.output_tokens)
                .bind(c.cost_microusd)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// What every server counted for the variants of `experiment`.
    pub async fn experiment_counts(
        &self,
        experiment: &str,
    ) -> Result<Vec<VariantTotals>, RecordsError> {
        type Row = (String, String, i64, i64, i64, i64, i64, i64);
        let rows: Vec<Row> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT experiment, variant, conversations, follow_ups, turns, input_tokens, \
                 output_tokens, cost_microusd FROM experiment_counts WHERE experiment = $1",
            )
            .bind(experiment)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(experiment, variant, conversations, follow_ups, turns, input, output, cost)| {
                    VariantTotals {
                        experiment,
                        variant,
                        conversations,
                        follow_ups,
                        turns,
                        input_tokens: input,
                        output_tokens: output,
                        cost_microusd: cost,
                    }
                },
            )
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::each_backend;

    fn rating(conversation: &str, turn: i64, rating: &str, variant: &str) -> FeedbackRecord {
        FeedbackRecord {
            conversation: conversation.into(),
            turn,
            rater: "learner".into(),
            rating: rating.into(),
            comment: String::new(),
            at_ms: 1,
            key_id: "key_1".into(),
            agent_id: "math".into(),
            policy: "hints@1".into(),
            variant: variant.into(),
        }
    }

    #[tokio::test]
    async fn a_second_rating_replaces_the_first_and_thumbs_and_counts_add_up_per_variant() {
        each_backend(|records| async move {
            records
                .put_feedback(&rating("c1", 1, "down", "e/a"))
                .await
                .unwrap();
            let mut again = rating("c1", 1, "up", "e/a");
            again.comment = "clear now".into();
            records.put_feedback(&again).await.unwrap();
            records
                .put_feedback(&rating("c1", 2, "up", "e/a"))
                .await
                .unwrap();
            records
                .put_feedback(&rating("c2", 1, "down", "e/b"))
                .await
                .unwrap();
            records
                .put_feedback(&rating("c3", 1, "up", "other/a"))
                .await
                .unwrap();
            let stored = records.conversation_feedback("c1").await.unwrap();
            assert_eq!(stored.len(), 2);
            assert_eq!(
                (stored[0].rating.as_str(), stored[0].comment.as_str()),
                ("up", "clear now")
            );
            let mut thumbs = records.experiment_thumbs("e").await.unwrap();
            thumbs.sort_by(|a, b| a.variant.cmp(&b.variant));
            let add = |conversations| VariantTotals {
                experiment: "e".into(),
                variant: "a".into(),
                conversations,
                turns: 2 * conversations,
                cost_microusd: 5,
                ..VariantTotals::default()
            };
            records.add_experiment_counts(&[add(3)]).await.unwrap();
            records.add_experiment_counts(&[add(4)]).await.unwrap();
            let totals = records.experiment_counts("e").await.unwrap();
            assert_eq!(totals.len(), 1);
            assert_eq!(
                (
                    totals[0].conversations,
                    totals[0].turns,
                    totals[0].cost_microusd
                ),
                (7, 14, 10)
            );
            assert!(records.experiment_counts("other").await.unwrap().is_empty());
            assert_eq!(
                thumbs,
                [
                    Thumbs {
                        variant: "e/a".into(),
                        up: 2,
                        down: 0
                    },
                    Thumbs {
                        variant: "e/b".into(),
                        up: 0,
                        down: 1
                    },
                ]
            );
        })
        .await;
    }
}
