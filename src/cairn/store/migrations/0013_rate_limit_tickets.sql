-- Cairn schema, version 14: a refused caller holds a ticket for the request it will make.
--
-- The fleet rate limiter refused callers with a retry time only: they came back as one
-- herd, or (with the pacing of version 11) one interval apart at the even rate, whatever
-- the window had room for. Now a refused activity is booked into the earliest future
-- bucket whose every window has room, and holds a ticket for it: its request is counted
-- there from the refusal on, and when it comes back (at that bucket) the ticket is its
-- reservation. Callers return exactly as fast as the window frees, never above the limit.
-- A ticket whose holder never returns stays counted until its bucket leaves the window.
-- A retry of a call that failed takes the soonest later ticket of a first attempt and that
-- holder moves to the retry's slot: a run of failures does not wait a window per attempt.

CREATE TABLE cairn.rate_limit_tickets (
    deployment   text NOT NULL,
    holder       text NOT NULL,        -- the activity's idempotency key
    window_start timestamptz NOT NULL, -- the bucket its request is counted in
    tokens       bigint NOT NULL,
    priority     smallint NOT NULL DEFAULT 0, -- a retry (1) may take a first attempt's (0) earlier slot
    PRIMARY KEY (deployment, holder)
);
CREATE INDEX rate_limit_tickets_by_bucket ON cairn.rate_limit_tickets (deployment, window_start);
