-- The key of each planned item as the user's table holds it. freshen_items.key
-- is its text (for URLs and messages); a SQLite column with no declared type or
-- a BLOB one keeps integers as integers, and an INTEGER one can hold text, so
-- the text alone does not find the row again. key_value has no declared type
-- (no affinity): it keeps the value's own storage class, and the checkpoint
-- compares the user's key column with it, so every record's update finds its
-- row by the column's own rules. NULL for items planned before this migration
-- (the checkpoint then compares by the column's declared kind, as before).
ALTER TABLE freshen_items ADD COLUMN key_value;

-- Records the plan left out: a NULL key, or a key shared with another record
-- (freshen writes a record by its key). Shown in the run's summary.
-- Kept in step with migrations/postgres/0007_keys.sql.
ALTER TABLE freshen_runs ADD COLUMN skipped INTEGER NOT NULL DEFAULT 0;
