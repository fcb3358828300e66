-- Credits a live run has reserved for calls not yet answered, as of its last
-- checkpoint, for `freshen status`. Kept in step between sqlite and postgres.
ALTER TABLE freshen_runs ADD COLUMN reserved INTEGER NOT NULL DEFAULT 0;
