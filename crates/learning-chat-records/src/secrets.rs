//! Secrets every server of one deployment shares, made once and kept in the database (so a
//! cluster agrees on them without configuration, and a restart keeps them).

use crate::{now_ms, on_pool, Records, RecordsError};

impl Records {
    /// The secret named `name`: the stored one, or `make()` stored first when there is none.
    /// Two servers racing both end up with the one that was stored first.
    pub async fn shared_secret(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String, RecordsError> {
        let value = make();
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(&value)
            .bind(now_ms())
            .execute(pool)
            .await?;
            let stored: (String,) =
                sqlx::query_as("SELECT value FROM server_secrets WHERE name = $1")
                    .bind(name)
                    .fetch_one(pool)
                    .await?;
            Ok(stored.0)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::each_backend;

    #[tokio::test]
    async fn a_secret_is_made_once_and_kept() {
        each_backend(|records| async move {
            let first = records
                .shared_secret("token", || "one".into())
                .await
                .unwrap();
            let second = records
                .shared_secret("token", || "two".into())
                .await
                .unwrap();
            assert_eq!((first.as_str(), second.as_str()), ("one", "one"));
        })
        .await;
    }
}
