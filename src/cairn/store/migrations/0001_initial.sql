-- Cairn schema, version 1. Every per-run table is keyed by run_id first, so history, inbox
-- and tasks can be distributed by run_id (Citus) with colocated joins.

CREATE SCHEMA IF NOT EXISTS cairn;

-- One row per workflow run. Inputs and results live in history only.
CREATE TABLE cairn.runs (
    run_id         uuid        PRIMARY KEY,            -- UUIDv7: time-ordered
    namespace      text        NOT NULL DEFAULT 'default',
    workflow_id    text        NOT NULL,
    workflow_type  text        NOT NULL,
    queue          text        NOT NULL,
    status         text        NOT NULL DEFAULT 'running',
    created_at     timestamptz NOT NULL DEFAULT now(),
    closed_at      timestamptz,
    failure        jsonb,                              -- summary of how it failed, if it did
    parent_run_id  uuid,
    continued_from uuid,
    search_attributes jsonb    NOT NULL DEFAULT '{}',
    CONSTRAINT runs_status_valid CHECK
        (status IN ('running', 'completed', 'failed', 'cancelled', 'terminated')),
    CONSTRAINT runs_closed_iff_not_running CHECK ((status = 'running') = (closed_at IS NULL)),
    CONSTRAINT runs_workflow_id_not_empty CHECK (workflow_id <> '')
);
-- The id-conflict guard: at most one open run per workflow id.
CREATE UNIQUE INDEX runs_one_open_per_workflow_id
    ON cairn.runs (namespace, workflow_id) WHERE status = 'running';
CREATE INDEX runs_by_workflow_id ON cairn.runs (namespace, workflow_id, run_id DESC);
CREATE INDEX runs_by_status ON cairn.runs (namespace, status, run_id DESC);

-- The append-only event history. The primary key is the concurrency guard: two writers
-- appending the same seq cannot both commit.
CREATE TABLE cairn.history (
    run_id uuid        NOT NULL,
    seq    integer     NOT NULL,
    type   text        NOT NULL,
    data   jsonb       NOT NULL DEFAULT '{}',
    at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, seq),
    CONSTRAINT history_seq_positive CHECK (seq > 0)
);

CREATE FUNCTION cairn.history_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'cairn.history is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
-- Statement-level, so appends pay nothing for it.
CREATE TRIGGER history_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON cairn.history
    FOR EACH STATEMENT EXECUTE FUNCTION cairn.history_is_append_only();

-- External events waiting for the run's next workflow task (activity results, fired
-- timers, cancel requests). Only the workflow task moves them into history.
CREATE TABLE cairn.inbox (
    id     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id uuid        NOT NULL,
    type   text        NOT NULL,
    data   jsonb       NOT NULL DEFAULT '{}',
    at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbox_by_run ON cairn.inbox (run_id, id);

-- At most one pending workflow task per run (the primary key says so). A task is claimed
-- by a row lock held for the one transaction that runs it: a dead worker's claim ends with
-- its connection, so there is no lease to wait out.
CREATE TABLE cairn.workflow_tasks (
    run_id       uuid        PRIMARY KEY,
    queue        text        NOT NULL,
    available_at timestamptz NOT NULL DEFAULT now(),
    failures     integer     NOT NULL DEFAULT 0,   -- consecutive failed attempts (code bugs)
    last_error   jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT workflow_tasks_failures_nonnegative CHECK (failures >= 0)
);
-- Matches claim_workflow_task exactly.
CREATE INDEX workflow_tasks_ready ON cairn.workflow_tasks (queue, available_at);

-- Scheduled activities, one row per (run, activity seq) until its result is recorded.
CREATE TABLE cairn.activity_tasks (
    run_id             uuid        NOT NULL,
    seq                integer     NOT NULL,
    workflow_id        text        NOT NULL,
    workflow_type      text        NOT NULL,
    workflow_queue     text        NOT NULL,
    activity_type      text        NOT NULL,
    queue              text        NOT NULL,
    input              jsonb       NOT NULL,
    options            jsonb       NOT NULL,      -- timeouts and retry policy
    attempt            integer     NOT NULL DEFAULT 0,
    token              bigint      NOT NULL DEFAULT 0,  -- fencing token, bumped per claim
    scheduled_at       timestamptz NOT NULL,
    available_at       timestamptz NOT NULL,      -- backoff and retry delays land here
    started_at         timestamptz,
    lease_owner        text,                      -- NULL: waiting to be claimed
    lease_expires_at   timestamptz,               -- worker liveness, renewed by its process
    attempt_deadline   timestamptz,               -- start-to-close
    heartbeat_deadline timestamptz,               -- heartbeat timeout
    schedule_deadline  timestamptz,               -- schedule-to-close
    timeout_at         timestamptz GENERATED ALWAYS AS
        (least(lease_expires_at, attempt_deadline, heartbeat_deadline, schedule_deadline)) STORED,
    heartbeat_details  jsonb,
    heartbeat_at       timestamptz,
    last_failure       jsonb,
    PRIMARY KEY (run_id, seq),
    CONSTRAINT activity_tasks_leased_consistently CHECK
        ((lease_owner IS NULL) = (lease_expires_at IS NULL))
);
-- Matches claim_activity_tasks exactly.
CREATE INDEX activity_tasks_ready ON cairn.activity_tasks (queue, available_at)
    WHERE lease_owner IS NULL;
-- Matches expired_activity_tasks exactly.
CREATE INDEX activity_tasks_timeouts ON cairn.activity_tasks (timeout_at)
    WHERE timeout_at IS NOT NULL;

-- Durable timers; a fired timer becomes a TimerFired inbox event.
CREATE TABLE cairn.timers (
    run_id         uuid        NOT NULL,
    seq            integer     NOT NULL,
    workflow_queue text        NOT NULL,
    fire_at        timestamptz NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX timers_due ON cairn.timers (fire_at);

-- Workflow types that workers serve, with their input schema: lets `cairn start` reject an
-- unknown type or a bad input before writing anything.
CREATE TABLE cairn.workflow_types (
    namespace    text        NOT NULL DEFAULT 'default',
    name         text        NOT NULL,
    queues       text[]      NOT NULL,
    input_schema jsonb       NOT NULL,
    module       text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, name)
);
