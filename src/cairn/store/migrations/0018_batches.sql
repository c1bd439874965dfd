-- Cairn schema, version 18: batch operations (cairn terminate|cancel|signal|reset|retry --where,
-- client.start_batch).
--
-- A batch freezes the runs its filter matched when it was created (batch_targets), so
-- whoever resumes it acts on the same set. It is executed in chunks: one transaction locks
-- up to a chunk of pending targets (FOR UPDATE SKIP LOCKED), acts on each run, records each
-- target's outcome and adds them to the batch's counts. Acting and recording commit together,
-- so a run is acted on at most once, and a chunk whose executor died (kill -9) rolled back
-- whole and is done again: at least once. One executor at a time holds the batch's session
-- advisory lock (store/batches.py), which ends with its connection.

CREATE TABLE cairn.batches (
    batch_id    uuid PRIMARY KEY,
    namespace   text NOT NULL,
    kind        text NOT NULL CONSTRAINT batches_kind
                CHECK (kind IN ('cancel', 'terminate', 'signal', 'reset', 'retry')),
    filter      text NOT NULL,            -- the --where text, as given
    params      jsonb NOT NULL,           -- reason; a signal's name and data; a reset's point
    status      text NOT NULL DEFAULT 'running' CONSTRAINT batches_status
                CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    matched     bigint NOT NULL,          -- targets frozen at creation
    done        bigint NOT NULL DEFAULT 0,
    skipped     bigint NOT NULL DEFAULT 0,
    failed      bigint NOT NULL DEFAULT 0,
    error       text,                     -- why a failed batch failed
    executor    text,                     -- who last took it up (host:pid), for describe
    created_by  text,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    finished_at timestamptz,
    CONSTRAINT batches_counts CHECK (done + skipped + failed <= matched)
);
-- The workers' look for batches to resume, and the listing.
CREATE INDEX batches_running ON cairn.batches (created_at) WHERE status = 'running';
CREATE INDEX batches_by_namespace ON cairn.batches (namespace, batch_id);

CREATE TABLE cairn.batch_targets (
    batch_id    uuid NOT NULL,
    run_id      uuid NOT NULL,
    workflow_id text NOT NULL,
    outcome     text CONSTRAINT batch_targets_outcome CHECK (outcome IN ('done', 'skipped', 'failed')),
    detail      text,                     -- why skipped or failed
    new_run_id  uuid,                     -- a reset's or retry's new run
    acted_at    timestamptz,
    PRIMARY KEY (batch_id, run_id)
);
-- A chunk's claim: the pending targets in run-id order.
CREATE INDEX batch_targets_pending ON cairn.batch_targets (batch_id, run_id) WHERE outcome IS NULL;
