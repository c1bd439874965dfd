-- Cairn schema, version 3: the run lifecycle (child workflows, continue-as-new, workflow
-- execution timeout). Forward-only.

-- Child runs: which command of the parent started them, and what happens to them when the
-- parent closes. The execution deadline spans a continue-as-new chain (each new run
-- inherits it); its firing is a timer row with the reserved seq 0.
ALTER TABLE cairn.runs
    ADD COLUMN parent_seq          integer,
    ADD COLUMN parent_close_policy text,
    ADD COLUMN execution_deadline  timestamptz,
    ADD CONSTRAINT runs_parent_close_policy_valid CHECK
        (parent_close_policy IN ('terminate', 'request_cancel', 'abandon')),
    ADD CONSTRAINT runs_parent_link_complete CHECK ((parent_run_id IS NULL) = (parent_seq IS NULL));

ALTER TABLE cairn.runs DROP CONSTRAINT runs_status_valid;
ALTER TABLE cairn.runs ADD CONSTRAINT runs_status_valid CHECK
    (status IN ('running', 'completed', 'failed', 'cancelled', 'terminated', 'continued_as_new', 'timed_out'));

-- The open children of a run: what the parent close policy applies to, and how a cancel
-- request of the parent's child handle finds the child's current run.
CREATE INDEX runs_open_children ON cairn.runs (parent_run_id, parent_seq)
    WHERE status = 'running' AND parent_run_id IS NOT NULL;
-- All children of a run, for describe.
CREATE INDEX runs_by_parent ON cairn.runs (parent_run_id, run_id) WHERE parent_run_id IS NOT NULL;
-- The next run of a continue-as-new chain, for result() following the chain.
CREATE INDEX runs_by_continued_from ON cairn.runs (continued_from) WHERE continued_from IS NOT NULL;
