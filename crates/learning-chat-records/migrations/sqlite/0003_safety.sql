-- Version 3: safety flags and their webhook outbox, and key roles.
-- Keep in step with the other backend's 0003_safety.sql.

-- `learner` (the default) or `admin` (may list flags: GET /api/v1/admin/flags).
ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'learner';

-- One flag: a message or answer rated at or above `safety.flag_at`, blocked by the model, or
-- flagged by moderation. The row is also the webhook outbox entry: undelivered while
-- `delivered_at` is NULL, next tried at `next_attempt_at`.
CREATE TABLE flags (
    -- Random, stable: a receiver that gets a flag twice (at-least-once) drops the copy by it.
    id              TEXT PRIMARY KEY,
    at              BIGINT NOT NULL,
    -- '' when no key was used (auth off).
    key_id          TEXT NOT NULL,
    -- Hashed learner id; '' when none was sent.
    learner         TEXT NOT NULL,
    -- The stored conversation id ('' when the answer had none).
    conversation    TEXT NOT NULL,
    turn            BIGINT NOT NULL,
    agent_id        TEXT NOT NULL,
    -- e.g. HARM_CATEGORY_DANGEROUS_CONTENT, self-harm, blocked.
    category        TEXT NOT NULL,
    -- The probability (NEGLIGIBLE..HIGH), a moderation score, or the block reason.
    score           TEXT NOT NULL,
    -- prompt, answer, model_block or moderation.
    source          TEXT NOT NULL,
    delivered_at    BIGINT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL
);
CREATE INDEX flags_conversation ON flags (conversation, at);
CREATE INDEX flags_at ON flags (at, id);
CREATE INDEX flags_outbox ON flags (delivered_at, next_attempt_at);
