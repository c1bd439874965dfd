-- Cairn schema, version 11: a throttle is not a failure; a rate limit paces.
--
-- A 429 with Retry-After opens a breaker until then (fleet-wide), without counting as a
-- consecutive open and without sending the breaker through half-open afterwards: once the
-- Retry-After has passed the breaker resumes the state it had (closed, or half-open with
-- fresh probes). `resume_to` holds that state while such a throttle-open lasts; NULL for
-- an open caused by failures (which ends in half-open, as before).

ALTER TABLE cairn.breakers ADD COLUMN resume_to text;
ALTER TABLE cairn.breakers ADD CONSTRAINT breakers_resume_to_valid
    CHECK (resume_to IS NULL OR (state = 'open' AND resume_to IN ('closed', 'half_open')));

-- The fleet rate limiter hands the callers it refuses distinct retry times, one pacing
-- interval apart, after the last one it handed out: they come back one by one as the
-- window frees, instead of all at the moment a bucket leaves it (a herd that was on the
-- wire before a provider's first 429 could stop it).
ALTER TABLE cairn.rate_limits ADD COLUMN queue_tail timestamptz;
