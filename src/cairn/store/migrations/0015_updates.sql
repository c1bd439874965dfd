-- Cairn schema, migration 0015: workflow updates.
--
-- An update is a request into a running run that waits for the handler's answer. The
-- client writes a row here and an UpdateRequested event into the run's inbox (one
-- statement); the worker's workflow task runs the validator: a rejected update leaves no
-- history event, only its status here; an accepted one becomes the UpdateAccepted input
-- event, and its handler's UpdateCompleted command. The row is the update's outcome for the
-- caller (woken by NOTIFY cairn_update) and makes its id idempotent: the same id is never
-- applied twice and gets the same outcome. Rows live as long as their run's history.

CREATE TABLE cairn.updates (
    run_id       uuid NOT NULL,
    update_id    text NOT NULL,
    name         text NOT NULL,
    args         jsonb NOT NULL,
    status       text NOT NULL DEFAULT 'requested',
    result       jsonb,
    failure      jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    PRIMARY KEY (run_id, update_id),
    CONSTRAINT updates_status CHECK (status IN ('requested', 'accepted', 'rejected', 'completed', 'failed')),
    -- An outcome is written once, with its status.
    CONSTRAINT updates_outcome CHECK ((status IN ('requested', 'accepted')) = (completed_at IS NULL))
);
