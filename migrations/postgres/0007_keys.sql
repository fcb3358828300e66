-- Records the plan left out: a NULL key, or a key shared with another record
-- (freshen writes a record by its key). Shown in the run's summary.
-- PostgreSQL needs no freshen_items.key_value (see migrations/sqlite/0007_keys.sql):
-- a column has one type there, and the checkpoint casts the key's text to it.
ALTER TABLE freshen_runs ADD COLUMN skipped BIGINT NOT NULL DEFAULT 0;
