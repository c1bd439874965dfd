-- Cairn schema, version 15: asynchronous activity completion.
--
-- An activity may hand its task token to an outside system and return without a result
-- (`raise activity.CompleteAsync()`); the outside system completes, fails or heartbeats
-- the attempt later by that token. A token names the attempt (run id, seq, fencing token)
-- and carries an HMAC-SHA256 of those under this key, so a token cannot be made up or
-- pointed at another attempt. The key is random (gen_random_uuid draws from the server's
-- strong random source), made once here, and never leaves the database but to sign and
-- check tokens. An attempt waiting for its outside completion keeps its row in
-- activity_tasks, with lease_owner 'async:<worker>' and its lease running to its own
-- deadline: no worker renews it, the deadlines (start-to-close, heartbeat,
-- schedule-to-close) still apply through timeout_at, and the reaper retries or fails it
-- when one passes.

CREATE TABLE cairn.activity_token_keys (
    id  boolean PRIMARY KEY DEFAULT true,
    key text    NOT NULL,
    CONSTRAINT activity_token_keys_one_row CHECK (id)
);
INSERT INTO cairn.activity_token_keys (key)
VALUES (replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
