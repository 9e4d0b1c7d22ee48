-- Version 4: the teacher/admin console: teachers and their classes, flag reviews, the learner
-- of a conversation (data rights), retention per key and legal hold.
-- Keep in step with the other backend's 0004_console.sql.

-- A teacher key's classes: JSON array of the key ids it may read.
ALTER TABLE api_keys ADD COLUMN classes TEXT NOT NULL DEFAULT '[]';
-- Days a conversation of this key is kept after its last activity; NULL takes
-- `records.retention_days`.
ALTER TABLE api_keys ADD COLUMN retention_days BIGINT;
-- 1: nothing of this key is swept (legal hold).
ALTER TABLE api_keys ADD COLUMN legal_hold BIGINT NOT NULL DEFAULT 0;

-- The hashed learner id (`X-Learner-Id`) that started the conversation; '' when none was sent.
ALTER TABLE conversations ADD COLUMN learner TEXT NOT NULL DEFAULT '';
CREATE INDEX conversations_learner ON conversations (learner);
CREATE INDEX conversations_updated ON conversations (updated_at);
CREATE INDEX turns_at ON turns (at);

-- A teacher or admin marked the flag reviewed (Unix ms), who (`admin:<key id>`), and why.
ALTER TABLE flags ADD COLUMN reviewed_at BIGINT;
ALTER TABLE flags ADD COLUMN reviewed_by TEXT NOT NULL DEFAULT '';
ALTER TABLE flags ADD COLUMN review_note TEXT NOT NULL DEFAULT '';
CREATE INDEX flags_learner ON flags (learner);
CREATE INDEX flags_key_at ON flags (key_id, at);

CREATE INDEX usage_daily_learner ON usage_daily (learner);

-- The audit log is append-only: the service has no statement that changes or deletes an entry,
-- and the database refuses one from anyone else (a superuser may still drop the trigger).
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
