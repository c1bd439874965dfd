-- Cairn schema, version 8: namespaces isolate tenants in the queues.
--
-- Runs always had a namespace, but the queue tables did not: a worker of namespace A
-- claimed B's tasks whenever the queue names matched. The claims cannot join runs to
-- filter (that made the planner hash every finished run: see claim_workflow_task), so
-- the namespace is copied onto the queue rows at insert time (every insert path passes
-- it) and leads the claim indexes: the claim stays one ordered index scan per queue.

ALTER TABLE cairn.workflow_tasks ADD COLUMN namespace text NOT NULL DEFAULT 'default';
ALTER TABLE cairn.activity_tasks ADD COLUMN namespace text NOT NULL DEFAULT 'default';
ALTER TABLE cairn.query_requests ADD COLUMN namespace text NOT NULL DEFAULT 'default';

-- Rows queued before this migration take their run's namespace (only non-default ones
-- need writing: the column's default already says 'default').
UPDATE cairn.workflow_tasks t SET namespace = r.namespace
FROM cairn.runs r WHERE r.run_id = t.run_id AND r.namespace <> 'default';
UPDATE cairn.activity_tasks t SET namespace = r.namespace
FROM cairn.runs r WHERE r.run_id = t.run_id AND r.namespace <> 'default';
UPDATE cairn.query_requests t SET namespace = r.namespace
FROM cairn.runs r WHERE r.run_id = t.run_id AND r.namespace <> 'default';

-- Match claim_workflow_task, claim_activity_tasks and claim_query_request exactly.
DROP INDEX cairn.workflow_tasks_ready;
CREATE INDEX workflow_tasks_ready ON cairn.workflow_tasks (namespace, queue, available_at);
DROP INDEX cairn.activity_tasks_ready;
CREATE INDEX activity_tasks_ready ON cairn.activity_tasks (namespace, queue, available_at)
    WHERE lease_owner IS NULL;
DROP INDEX cairn.query_requests_unanswered;
CREATE INDEX query_requests_unanswered ON cairn.query_requests (namespace, queue, created_at)
    WHERE answered_at IS NULL;
