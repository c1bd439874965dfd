-- Cairn schema, version 2: queries. Signals need no table (they travel through the inbox
-- as SignalReceived events); a query is a request that a worker answers, because workers
-- have the workflow code and the client usually does not.

-- One row per query in flight: the client inserts it and NOTIFYs cairn_query (payload:
-- the queue); a worker serving that queue and workflow type claims it, writes answer or
-- error, and NOTIFYs cairn_query_answered (payload: the id). The client deletes the row
-- when it has read the answer or given up, so rows do not linger.
CREATE TABLE cairn.query_requests (
    id            uuid        PRIMARY KEY,
    run_id        uuid        NOT NULL,
    queue         text        NOT NULL,
    workflow_type text        NOT NULL,
    name          text        NOT NULL,
    args          jsonb       NOT NULL DEFAULT '[]',
    created_at    timestamptz NOT NULL DEFAULT now(),
    answer        jsonb,
    error         jsonb,                             -- {type, message} when the query failed
    answered_at   timestamptz,
    CONSTRAINT query_requests_answered_once CHECK
        (answered_at IS NOT NULL OR (answer IS NULL AND error IS NULL))
);
-- Matches claim_query_request exactly: the unanswered requests of a queue, oldest first.
CREATE INDEX query_requests_unanswered ON cairn.query_requests (queue, created_at)
    WHERE answered_at IS NULL;
