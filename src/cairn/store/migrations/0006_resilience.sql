-- Resilience (issue #5): throttled reschedules, circuit breakers shared by every worker,
-- fleet rate limits. Time in all of these comes from the database clock.

-- Seconds an activity spent rescheduled by activity.Reschedule (throttles, open breakers,
-- rate limits) without burning an attempt; bounded by the activity's throttle budget.
ALTER TABLE cairn.activity_tasks ADD COLUMN throttled_seconds float8 NOT NULL DEFAULT 0;

-- One row per breaker (LLM breakers are named provider:model:endpoint). Every transition
-- takes this row's lock (SELECT ... FOR UPDATE, see cairn.breakers), so concurrent workers
-- serialise on it; `generation` is bumped on every transition and fences stale outcomes.
CREATE TABLE cairn.breakers (
    name                text        PRIMARY KEY,
    state               text        NOT NULL DEFAULT 'closed',
    generation          bigint      NOT NULL DEFAULT 1,
    config              jsonb       NOT NULL,           -- first writer wins (see cairn.breakers)
    window_data         jsonb       NOT NULL DEFAULT '{}',  -- the sliding window of outcomes
    opened_at           timestamptz,
    open_until          timestamptz,                    -- open: half-open from then on
    consecutive_opens   integer     NOT NULL DEFAULT 0, -- re-opens since the last close
    half_open_successes integer     NOT NULL DEFAULT 0,
    successful          bigint      NOT NULL DEFAULT 0, -- call counters by outcome
    failed              bigint      NOT NULL DEFAULT 0,
    slow                bigint      NOT NULL DEFAULT 0,
    not_permitted       bigint      NOT NULL DEFAULT 0,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT breakers_state_valid CHECK
        (state IN ('closed', 'open', 'half_open', 'forced_open', 'disabled')),
    CONSTRAINT breakers_name_not_empty CHECK (name <> '')
);

-- Half-open probe leases: at most permitted_calls_in_half_open live ones per breaker,
-- cluster-wide. A lease that expires (its prober crashed) frees its slot.
CREATE TABLE cairn.breaker_probes (
    name       text        NOT NULL REFERENCES cairn.breakers (name) ON DELETE CASCADE,
    probe_id   uuid        NOT NULL,
    generation bigint      NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (name, probe_id)
);

-- Breaker transitions, for `cairn breakers` and audits.
CREATE TABLE cairn.breaker_events (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text        NOT NULL,
    from_state text        NOT NULL,
    to_state   text        NOT NULL,
    generation bigint      NOT NULL,   -- the generation entered
    reason     text        NOT NULL,
    at         timestamptz NOT NULL
);
CREATE INDEX breaker_events_by_name ON cairn.breaker_events (name, id DESC);

-- Fleet rate limits: one row per deployment, locked by every reservation (the
-- serialisation point), and fixed one-minute buckets of requests and tokens from which a
-- 60 s sliding window is estimated (see cairn.ratelimits).
CREATE TABLE cairn.rate_limits (
    deployment text        PRIMARY KEY,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE cairn.rate_limit_windows (
    deployment   text        NOT NULL,
    window_start timestamptz NOT NULL,   -- the minute
    requests     integer     NOT NULL DEFAULT 0,
    tokens       bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (deployment, window_start)
);
-- Concurrency slots: a lease per call in flight, freed by settle or by its expiry.
CREATE TABLE cairn.rate_limit_leases (
    id         uuid        PRIMARY KEY,
    deployment text        NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX rate_limit_leases_by_deployment ON cairn.rate_limit_leases (deployment, expires_at);
