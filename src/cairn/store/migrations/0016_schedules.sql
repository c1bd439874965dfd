-- Cairn schema, version 16: schedules (cairn schedule ..., client.create_schedule).
--
-- A schedule starts a workflow run per slot of its spec (cron expressions and intervals in a
-- time zone). The workers' maintenance loops fire due schedules: each takes a schedule row
-- with FOR UPDATE SKIP LOCKED, acts on its due slots and moves processed_until past them in
-- one transaction. The slot is the primary key of its action, so a slot is acted on at most
-- once whatever the number of workers and crashes; processed_until moving in the same
-- transaction makes it at least once.

CREATE TABLE cairn.schedules (
    namespace       text NOT NULL,
    schedule_id     text NOT NULL,
    spec            jsonb NOT NULL,        -- cairn.schedules.ScheduleSpec.to_json
    action          jsonb NOT NULL,        -- workflow type, args, queue, id prefix, execution timeout, memo
    policy          jsonb NOT NULL,        -- overlap policy and catch-up window
    paused          boolean NOT NULL DEFAULT false,
    note            text NOT NULL DEFAULT '',
    processed_until timestamptz NOT NULL,  -- the spec's slots up to this one were acted on (or missed)
    next_check_at   timestamptz,           -- when a worker next looks: the next slot's time, or soon while actions wait
    missed_slots    bigint NOT NULL DEFAULT 0,  -- slots skipped because they were older than the catch-up window
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (namespace, schedule_id)
);
-- The maintenance loop's claim: due, unpaused schedules.
CREATE INDEX schedules_due ON cairn.schedules (next_check_at) WHERE NOT paused;

CREATE TABLE cairn.schedule_actions (
    namespace   text NOT NULL,
    schedule_id text NOT NULL,
    slot        timestamptz NOT NULL,  -- the nominal time: the action's identity
    kind        text NOT NULL CONSTRAINT schedule_actions_kind CHECK (kind IN ('scheduled', 'trigger', 'backfill')),
    status      text NOT NULL CONSTRAINT schedule_actions_status CHECK (status IN ('started', 'buffered', 'skipped')),
    overlap     text NOT NULL,         -- the overlap policy it was taken with (a backfill may have its own)
    workflow_id text NOT NULL,
    run_id      uuid,                  -- once started
    taken_at    timestamptz NOT NULL,  -- when the slot was acted on
    started_at  timestamptz,
    PRIMARY KEY (namespace, schedule_id, slot),
    CONSTRAINT schedule_actions_started CHECK ((status = 'started') = (run_id IS NOT NULL))
);
-- The actions that wait for the running ones to close, oldest first.
CREATE INDEX schedule_actions_buffered ON cairn.schedule_actions (namespace, schedule_id, slot)
    WHERE status = 'buffered';
-- The open runs of a schedule: its started actions (joined with runs by run id).
CREATE INDEX schedule_actions_started ON cairn.schedule_actions (namespace, schedule_id, run_id)
    WHERE status = 'started';
