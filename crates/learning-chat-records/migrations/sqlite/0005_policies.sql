-- Version 5: tutoring policies, experiments and learner feedback.
-- Keep in step with the other backend's 0005_policies.sql.

-- What a conversation keeps for its whole life: the answer policy it started with
-- (`socratic@1`) and the experiment variant it was assigned (`experiment/variant`, '' when none).
ALTER TABLE conversations ADD COLUMN policy TEXT NOT NULL DEFAULT '';
ALTER TABLE conversations ADD COLUMN variant TEXT NOT NULL DEFAULT '';

-- A class's answer policy (PUT /api/v1/admin/classes/{key_id}/policy), over the agents' own;
-- NULL keeps the agents'. On the key's row, so every server has it in memory with the key.
ALTER TABLE api_keys ADD COLUMN policy TEXT;

-- One rating of one answer: a learner's thumbs (`up`/`down`) or a teacher's 1-5 (`1`..`5`).
-- A second rating of the same answer by the same kind of rater replaces the first.
CREATE TABLE feedback (
    -- The stored conversation id (a one-shot answer's token names it too).
    conversation TEXT NOT NULL,
    -- Which exchange (1 for the first question).
    turn         BIGINT NOT NULL,
    -- `learner` or `teacher`.
    rater        TEXT NOT NULL,
    rating       TEXT NOT NULL,
    comment      TEXT NOT NULL DEFAULT '',
    at           BIGINT NOT NULL,
    -- '' when no key was used (auth off).
    key_id       TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    -- The conversation's policy and variant when it was rated, for per-variant counts.
    policy       TEXT NOT NULL,
    variant      TEXT NOT NULL,
    PRIMARY KEY (conversation, turn, rater)
);
CREATE INDEX feedback_variant ON feedback (variant, rating);

-- Per experiment variant, what every server counted (each adds what it counted since its last
-- write, every `database.ledger_flush_ms`): the cluster-wide figures of GET /api/v1/admin/experiments.
CREATE TABLE experiment_counts (
    experiment     TEXT NOT NULL,
    variant        TEXT NOT NULL,
    conversations  BIGINT NOT NULL DEFAULT 0,
    follow_ups     BIGINT NOT NULL DEFAULT 0,
    turns          BIGINT NOT NULL DEFAULT 0,
    input_tokens   BIGINT NOT NULL DEFAULT 0,
    output_tokens  BIGINT NOT NULL DEFAULT 0,
    cost_microusd  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment, variant)
);
