-- Visibility and operator features: memo, reset/retry lineage, and an index for
-- search-attribute filters (`cairn list --where`).

-- Free-form JSON set at start, shown by describe; never used to filter.
ALTER TABLE cairn.runs ADD COLUMN memo jsonb;
-- Where a run made by `cairn reset` or `cairn retry` came from: {kind, run_id, seq, reason}.
ALTER TABLE cairn.runs ADD COLUMN reset_from jsonb;

-- Equality on a search attribute is a containment test (search_attributes @> '{"k": v}'),
-- which this index answers; jsonb_path_ops is smaller and faster than the default opclass
-- for @>, and @> is the only operator the filter language sends to it.
CREATE INDEX runs_search_attributes ON cairn.runs USING gin (search_attributes jsonb_path_ops);
