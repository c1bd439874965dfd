-- LLM activities (issue #5): streamed tokens of running LLM calls.
--
-- While an attempt of the built-in `cairn.llm.chat` activity streams, its worker appends
-- the text in small batches here (and NOTIFYs cairn_llm_stream with the run id), so that
-- `cairn history --follow` and `WorkflowHandle.stream()` can show tokens as they arrive.
-- Each attempt writes its own rows (attempt, chunk): a retried attempt restarts the
-- stream, it never continues the previous one. The recorded result (in history) is what
-- counts; these rows are a live view and are deleted when the run closes (trigger below),
-- or with the run.
CREATE TABLE cairn.llm_stream (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id       uuid        NOT NULL REFERENCES cairn.runs (run_id) ON DELETE CASCADE,
    activity_seq integer     NOT NULL,
    attempt      integer     NOT NULL,
    chunk        integer     NOT NULL,   -- the batch's index within its attempt, from 0
    text         text        NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (run_id, activity_seq, attempt, chunk)
);

-- A run's chunks go when it closes: they are queue-like rows that must not pile up.
CREATE FUNCTION cairn.llm_stream_cleanup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM cairn.llm_stream WHERE run_id = NEW.run_id;
    RETURN NULL;
END $$;

CREATE TRIGGER runs_llm_stream_cleanup
    AFTER UPDATE OF status ON cairn.runs
    FOR EACH ROW WHEN (OLD.status = 'running' AND NEW.status <> 'running')
    EXECUTE FUNCTION cairn.llm_stream_cleanup();
