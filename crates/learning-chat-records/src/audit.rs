//! The audit log of administrative actions (key created / revoked / migrated, conversation
//! erased): who did what to which subject, when. Written in the same transaction as the action
//! it records, so neither exists without the other.

use crate::{now_ms, on_pool, Records, RecordsError};

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When, in Unix milliseconds.
    pub at_ms: i64,
    /// Who: `cli`, `migrate-keys`, `admin:<key id>`, ...
    pub actor: String,
    /// What: `key.created`, `key.revoked`, `key.migrated`, `conversation.erased`, ...
    pub action: String,
    /// To what: a key id, a conversation id.
    pub subject: String,
    /// Anything else worth keeping (never a secret).
    pub detail: String,
}

/// Appends one entry on `executor` (a transaction of the action it records).
macro_rules! write_entry {
    ($executor:expr, $at:expr, $actor:expr, $action:expr, $subject:expr, $detail:expr) => {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, subject, detail) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind($at)
        .bind($actor)
        .bind($action)
        .bind($subject)
        .bind($detail)
        .execute($executor)
        .await
    };
}
pub(crate) use write_entry;

impl Records {
    /// Appends one entry on its own (for actions that write nothing else here).
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        detail: &str,
    ) -> Result<(), RecordsError> {
        on_pool!(self, pool => {
            write_entry!(pool, now_ms(), actor, action, subject, detail)?;
        });
        Ok(())
    }

    /// The newest `limit` entries, newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, RecordsError> {
        on_pool!(self, pool => {
            let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
                "SELECT at, actor, action, subject, detail FROM audit_log \
                 ORDER BY at DESC, id DESC LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(at_ms, actor, action, subject, detail)| AuditEntry {
                    at_ms,
                    actor,
                    action,
                    subject,
                    detail,
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::on_pool;
    use crate::testing::each_backend;

    #[tokio::test]
    async fn entries_come_back_newest_first_and_bounded() {
        each_backend(|records| async move {
            for n in 0..3 {
                records
                    .audit("cli", "conversation.erased", &format!("c{n}"), "")
                    .await
                    .unwrap();
            }
            let log = records.audit_log(2).await.unwrap();
            let subjects: Vec<&str> = log.iter().map(|e| e.subject.as_str()).collect();
            assert_eq!(subjects, ["c2", "c1"]);
            // Append-only, whoever asks the database.
            on_pool!(records, pool => {
                let changed = sqlx::query("UPDATE audit_log SET actor = 'someone else'")
                    .execute(pool)
                    .await;
                assert!(changed.is_err(), "an entry was changed");
                let deleted = sqlx::query("DELETE FROM audit_log").execute(pool).await;
                assert!(deleted.is_err(), "entries were deleted");
            });
            assert_eq!(records.audit_log(10).await.unwrap().len(), 3);
        })
        .await;
    }
}
