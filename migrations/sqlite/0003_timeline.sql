-- The run's timeline, written by `freshen run` while it works and read by
-- `freshen report`: one row per sample (1 s at first, coarsened as a process
-- runs long, so a month-long run keeps a bounded number of rows).
-- Kept in step with migrations/postgres/0003_timeline.sql.
--
-- at_ms:        the sample's end, Unix time in milliseconds; interval_ms its length
-- calls_*:      calls answered during the sample, by outcome
-- records_*:    records resolved during it
-- credits:      credits charged (checkpointed) during it
-- rate:         calls answered per second during it
-- ceiling:      limits.rate, the configured ceiling
-- paced_rate:   the pacer's rate at the sample's end
-- concurrency:  the concurrency limit at its end
-- in_flight:    calls in flight, the mean over the sample
-- paused:       1 if a throttle pause was in force at some moment of it
-- outage:       1 if the circuit breaker was open (vendor down) at some moment of it
CREATE TABLE freshen_samples (
    run_id          INTEGER NOT NULL REFERENCES freshen_runs (id),
    at_ms           INTEGER NOT NULL,
    interval_ms     INTEGER NOT NULL,
    calls_ok        INTEGER NOT NULL,
    calls_throttled INTEGER NOT NULL,
    calls_transient INTEGER NOT NULL,
    calls_permanent INTEGER NOT NULL,
    records_done    INTEGER NOT NULL,
    records_failed  INTEGER NOT NULL,
    credits         INTEGER NOT NULL,
    rate            REAL    NOT NULL,
    ceiling         REAL    NOT NULL,
    paced_rate      REAL    NOT NULL,
    concurrency     INTEGER NOT NULL,
    in_flight       REAL    NOT NULL,
    paused          INTEGER NOT NULL,
    outage          INTEGER NOT NULL
);
CREATE INDEX freshen_samples_run ON freshen_samples (run_id, at_ms);
