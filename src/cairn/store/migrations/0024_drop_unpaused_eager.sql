-- Cairn schema, version 24: cairn.unpaused_eager (0019) goes.
--
-- record_workflow_tasks called it once per task to keep a paused activity type from being
-- leased eagerly; Postgres planned it on every call (+32 % time for the statement in W1).
-- The statement now probes activity_pauses itself (queries.sql), and nothing calls it.
DROP FUNCTION cairn.unpaused_eager(text, jsonb);
