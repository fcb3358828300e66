-- The plan of a run inserts every selected key into freshen_items in one
-- statement, in the transaction that creates the run. The foreign key from
-- freshen_items.run_id to freshen_runs was checked row by row (a trigger per
-- item): 5.5 s of a 13 s plan of 1,000,000 records (bench/README.md). The plan is
-- the only writer of new items and writes the run first, in the same
-- transaction, so the check bought nothing; SQLite never enforced it (foreign
-- keys are off there by default). Kept in step with
-- migrations/sqlite/0006_items_unchecked.sql.
ALTER TABLE freshen_items DROP CONSTRAINT IF EXISTS freshen_items_run_id_fkey;
