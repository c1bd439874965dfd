-- Cairn schema, version 22: the payload store (issue 18, item 2).
--
-- A payload larger than CAIRN_STORE_PAYLOAD_BYTES (cairn/payloads.py) is stored once here,
-- content-addressed, and history (and the inbox, the activity rows, updates) holds a small
-- reference {"$cairn.payload": "<hash>"} instead; so does each message of an LLM chat call,
-- so a conversation's history grows by a reference per message, not by a copy of the whole
-- conversation per call. Small payloads never meet these tables.

-- One row per content: hash is the SHA-256 of the payload's canonical JSON (sorted keys, no
-- spaces, UTF-8), compressed that JSON compressed with zlib (JSON still: no pickle, no
-- language-specific encoding), size its length uncompressed.
CREATE TABLE cairn.payloads (
    hash       bytea       PRIMARY KEY,
    compressed bytea       NOT NULL,
    size       integer     NOT NULL,
    encoding   text        NOT NULL DEFAULT 'json+zlib',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payloads_hash_sha256 CHECK (octet_length(hash) = 32),
    CONSTRAINT payloads_encoding CHECK (encoding IN ('json+zlib'))
);
ALTER TABLE cairn.payloads ALTER COLUMN compressed SET STORAGE EXTERNAL;  -- compressed already

-- Which runs reference which payloads: retention's purge removes a payload when the last run
-- referencing it goes. The foreign key is the concurrency guard against that purge: a link
-- insert takes a KEY SHARE lock on its payload row, which the purge's
-- FOR UPDATE SKIP LOCKED passes over, and a link to a payload deleted meanwhile fails (the
-- writer's transaction is retried and stores the payload again). Keyed by run_id first, as
-- every per-run table; no foreign key to runs (see ARCHITECTURE.md, Schema).
CREATE TABLE cairn.run_payloads (
    run_id uuid  NOT NULL,
    hash   bytea NOT NULL REFERENCES cairn.payloads (hash),
    PRIMARY KEY (run_id, hash)
);
-- The purge's question "does any other run reference this payload?".
CREATE INDEX run_payloads_hash ON cairn.run_payloads (hash);

-- purge_closed_runs as in 0020, plus: the purged runs' links, then each payload they
-- referenced that no remaining run references (shared content survives while any
-- referencing run lives). A payload being linked right now is locked and skipped.
CREATE OR REPLACE FUNCTION cairn.purge_closed_runs(p_run_ids uuid[])
RETURNS TABLE (runs bigint, events bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids uuid[];
    n_events bigint;
    refs bytea[];
BEGIN
    SELECT coalesce(array_agg(r.run_id), '{}') INTO ids
    FROM cairn.runs r WHERE r.run_id = ANY(p_run_ids) AND r.status <> 'running';
    PERFORM set_config('cairn.purging', 'on', true);
    DELETE FROM cairn.history h WHERE h.run_id = ANY(ids);
    GET DIAGNOSTICS n_events = ROW_COUNT;
    PERFORM set_config('cairn.purging', 'off', true);
    DELETE FROM cairn.inbox i WHERE i.run_id = ANY(ids);
    DELETE FROM cairn.workflow_tasks t WHERE t.run_id = ANY(ids);
    DELETE FROM cairn.activity_tasks a WHERE a.run_id = ANY(ids);
    DELETE FROM cairn.timers t WHERE t.run_id = ANY(ids);
    DELETE FROM cairn.query_requests q WHERE q.run_id = ANY(ids);
    DELETE FROM cairn.updates u WHERE u.run_id = ANY(ids);
    WITH gone AS (DELETE FROM cairn.run_payloads l WHERE l.run_id = ANY(ids) RETURNING l.hash)
    SELECT coalesce(array_agg(DISTINCT g.hash), '{}') INTO refs FROM gone g;
    IF cardinality(refs) > 0 THEN
        DELETE FROM cairn.payloads p WHERE p.hash IN (
            SELECT c.hash FROM cairn.payloads c
            WHERE c.hash = ANY(refs)
              AND NOT EXISTS (SELECT 1 FROM cairn.run_payloads o WHERE o.hash = c.hash)
            -- a payload a writer is linking holds its KEY SHARE lock: not ours to delete
            FOR UPDATE SKIP LOCKED);
    END IF;
    DELETE FROM cairn.runs r WHERE r.run_id = ANY(ids);
    RETURN QUERY SELECT cardinality(ids)::bigint, n_events;
END
$$;
REVOKE ALL ON FUNCTION cairn.purge_closed_runs(uuid[]) FROM PUBLIC;
