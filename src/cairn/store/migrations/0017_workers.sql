-- Cairn schema, version 17: workers you can see (cairn workers, client.list_workers).
--
-- The type registry (0012) says which types a queue has ever had a worker for; its rows
-- never expire, so it cannot say whether anyone serves them now. Each worker now keeps a row
-- of its own: what it is (host, pid, queues, types, slots, version) and when it last said so.
-- It heartbeats the row from a connection of its own, one statement every few seconds,
-- never from the hot path's transactions; a graceful stop sets stopped_at, a killed worker's
-- row just goes stale. Each row carries its own liveness deadline (live_until: the last
-- heartbeat plus a few of that worker's heartbeat periods), so a reader needs no setting to
-- tell live from stale, and workers with different cadences can share a queue.

CREATE TABLE cairn.workers (
    namespace           text        NOT NULL,
    identity            text        NOT NULL,   -- Worker(identity=...), default host:pid:random
    host                text        NOT NULL,
    pid                 integer     NOT NULL,
    queues              text[]      NOT NULL,
    workflow_types      text[]      NOT NULL,
    activity_types      text[]      NOT NULL,
    workflow_slots      integer     NOT NULL,   -- workflow pollers (workflow_concurrency)
    workflow_slots_used integer     NOT NULL,   -- pollers not idle, at the last heartbeat
    activity_slots      integer     NOT NULL,   -- activity_concurrency
    activity_slots_used integer     NOT NULL,   -- attempts running or promised, at the last heartbeat
    workflow_tasks      bigint      NOT NULL,   -- counters since the worker started
    activities_completed bigint     NOT NULL,
    activities_failed   bigint      NOT NULL,
    version             text        NOT NULL,   -- Cairn's version
    started_at          timestamptz NOT NULL,
    heartbeat_at        timestamptz NOT NULL,
    live_until          timestamptz NOT NULL,   -- heartbeat_at + the worker's liveness window
    stopped_at          timestamptz,            -- a graceful stop; a killed worker never sets it
    PRIMARY KEY (namespace, identity),
    CONSTRAINT workers_slots CHECK (workflow_slots_used BETWEEN 0 AND workflow_slots
                                    AND activity_slots_used BETWEEN 0 AND activity_slots),
    CONSTRAINT workers_live_after_heartbeat CHECK (live_until >= heartbeat_at)
);
