-- Cairn schema, version 26: stored payloads no run links are swept (the payload store, 0022).
--
-- How a payload comes to have no link: save_payloads writes a payload and its link in one
-- statement, so a rollback takes both. But the purge (purge_closed_runs) removes a purged
-- run's links, then passes over (SKIP LOCKED) a payload another transaction is linking (the
-- link's foreign key check holds a KEY SHARE lock on it); if that transaction then rolls back
-- (its workflow task failed, a lost race, a dropped connection), the payload is left with no
-- link, and nothing would ever remove it. An operator's DELETE of links or runs by hand does
-- the same.
--
-- sweep_payloads(after, scan, cutoff) looks at the next `scan` payloads in hash order after
-- `after` (SHA-256 hashes: a uniform sample of the table, so a caller walks the whole table a
-- slice per call and no call's cost grows with it), and removes those that no run links and
-- that were stored before `cutoff` (a grace period: a payload stored moments ago is left,
-- whatever a writer does next). It returns the slice's last hash (NULL: the end of the
-- table), and what it removed. SECURITY DEFINER like the purge: the worker and client roles
-- get no DELETE (nor the UPDATE that FOR UPDATE takes) on cairn.payloads.
--
-- Concurrency, in two statements (a VOLATILE function takes a new snapshot per statement):
--   1. lock the unlinked candidates FOR UPDATE SKIP LOCKED: a payload a writer is linking
--      right now holds its link's KEY SHARE lock and is passed over, so an uncommitted link is
--      never broken; a payload inserted by an uncommitted transaction is not seen at all;
--   2. delete the locked ones that still have no link, in a new snapshot: a link committed
--      after statement 1's snapshot but before its lock is seen here (deleting that payload
--      would fail on the foreign key instead), and no link can commit after the lock (its
--      key check waits for this transaction, then finds the payload gone and fails: the
--      writer's task runs again and stores it again, as when the purge removes a payload).
CREATE FUNCTION cairn.sweep_payloads(p_after bytea, p_scan integer, p_cutoff timestamptz)
RETURNS TABLE (last_hash bytea, swept bigint, swept_bytes bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    upto bytea;
    locked bytea[];
BEGIN
    SELECT s.hash INTO upto  -- (no max(bytea) in Postgres 15)
    FROM (SELECT p.hash FROM cairn.payloads p WHERE p.hash > p_after ORDER BY p.hash LIMIT p_scan) s
    ORDER BY s.hash DESC LIMIT 1;
    IF upto IS NULL THEN
        RETURN QUERY SELECT NULL::bytea, 0::bigint, 0::bigint;
        RETURN;
    END IF;
    SELECT coalesce(array_agg(c.hash), '{}') INTO locked FROM (
        SELECT p.hash FROM cairn.payloads p
        WHERE p.hash > p_after AND p.hash <= upto AND p.created_at < p_cutoff
          AND NOT EXISTS (SELECT 1 FROM cairn.run_payloads l WHERE l.hash = p.hash)
        -- a payload a writer is linking holds its KEY SHARE lock: not ours to delete
        FOR UPDATE SKIP LOCKED) c;
    RETURN QUERY
    WITH gone AS (
        DELETE FROM cairn.payloads p
        WHERE p.hash = ANY(locked) AND NOT EXISTS (SELECT 1 FROM cairn.run_payloads l WHERE l.hash = p.hash)
        RETURNING octet_length(p.compressed) AS n
    )
    SELECT upto, count(*), coalesce(sum(g.n), 0)::bigint FROM gone g;
END
$$;
REVOKE ALL ON FUNCTION cairn.sweep_payloads(bytea, integer, timestamptz) FROM PUBLIC;
