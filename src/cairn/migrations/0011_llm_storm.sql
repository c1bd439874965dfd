-- Cairn schema, version 11: a throttle is not a failure.
--
-- A 429 with Retry-After opens a breaker until then (fleet-wide), without counting as a
-- consecutive open and without sending the breaker through half-open afterwards: once the
-- Retry-After has passed the breaker resumes the state it had (closed, or half-open with
-- fresh probes). `resume_to` holds that state while such a throttle-open lasts; NULL for
-- an open caused by failures (which ends in half-open, as before).

ALTER TABLE cairn.breakers ADD COLUMN resume_to text;
ALTER TABLE cairn.breakers ADD CONSTRAINT breakers_resume_to_valid
    CHECK (resume_to IS NULL OR (state = 'open' AND resume_to IN ('closed', 'half_open')));
