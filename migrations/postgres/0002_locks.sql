-- One run at a time per table: the holder (host:pid), refreshed by a heartbeat
-- (heartbeat_at: Unix time in milliseconds).
-- A lock whose heartbeat is older than lock.stale_after is taken over.
-- Kept in step with migrations/sqlite/0002_locks.sql.
CREATE TABLE freshen_locks (
    name         TEXT    PRIMARY KEY,
    holder       TEXT    NOT NULL,
    acquired_at  TEXT    NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
