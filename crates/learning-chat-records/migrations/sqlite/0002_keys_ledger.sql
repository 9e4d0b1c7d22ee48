-- Version 2: what `learning-chat keys usage` and per-key budgets read: one key's days.
-- Keep in step with the other backend's 0002_keys_ledger.sql.
CREATE INDEX usage_daily_key_day ON usage_daily (key_id, day);
