-- Several workers on one run (`freshen run --join`, PostgreSQL only).
-- Kept in step with migrations/sqlite/0005_fleet.sql.

-- The worker that has claimed a pending item. The claim lasts while that
-- worker's heartbeat in freshen_workers is fresher than lock.stale_after: a
-- worker that dies loses its claims, and its items go back to the queue.
ALTER TABLE freshen_items ADD COLUMN lease_owner TEXT;

-- The workers of joined runs (host:pid), with their heartbeat (database clock,
-- Unix milliseconds) and the credits each holds reserved: granted from the
-- period's budget and not yet charged. A stale worker's reservation no longer
-- counts.
CREATE TABLE freshen_workers (
    worker       TEXT   PRIMARY KEY,
    run_id       BIGINT NOT NULL REFERENCES freshen_runs (id),
    started_at   TEXT   NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    reserved     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX freshen_workers_run ON freshen_workers (run_id);

-- The vendor's rate, shared by every worker of a table: a token bucket kept as
-- its theoretical arrival time (GCRA), and the pause a throttle imposes on all
-- (both in microseconds of the database clock).
CREATE TABLE freshen_pace (
    name            TEXT   PRIMARY KEY,
    tat_us          BIGINT NOT NULL DEFAULT 0,
    paused_until_us BIGINT NOT NULL DEFAULT 0
);
