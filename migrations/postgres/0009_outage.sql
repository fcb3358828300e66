-- The vendor's outage, beside the shared pause: one circuit breaker for every
-- worker of a table (solo or joined), and what `freshen status` shows while the
-- vendor is down. Kept in step with migrations/sqlite/0009_outage.sql.
--
-- outage_since_ms: when a worker's breaker opened (database clock, Unix ms);
--                  NULL while the vendor answers.
-- outage_cause:    why the calls fail ("connection refused", "503 Service
--                  Unavailable"), as the outage line says it.
-- next_probe_ms:   when the next probe may go out: one worker at a time takes
--                  the probe and holds it until its answer comes back.
ALTER TABLE freshen_pace ADD COLUMN outage_since_ms BIGINT;
ALTER TABLE freshen_pace ADD COLUMN outage_cause TEXT;
ALTER TABLE freshen_pace ADD COLUMN next_probe_ms BIGINT NOT NULL DEFAULT 0;

-- Dead since the ledger (0008): a run's and a worker's reservations are rows of
-- freshen_reservations.
ALTER TABLE freshen_runs DROP COLUMN reserved;
ALTER TABLE freshen_workers DROP COLUMN reserved;
