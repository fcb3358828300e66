-- The run's timeline, written by `freshen run` while it works and read by
-- `freshen report`: one row per sample (1 s at first, coarsened as a process
-- runs long, so a month-long run keeps a bounded number of rows).
-- Kept in step with migrations/sqlite/0003_timeline.sql.
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
    run_id          BIGINT  NOT NULL REFERENCES freshen_runs (id),
    at_ms           BIGINT  NOT NULL,
    interval_ms     BIGINT  NOT NULL,
    calls_ok        BIGINT  NOT NULL,
    calls_throttled BIGINT  NOT NULL,
    calls_transient BIGINT  NOT NULL,
    calls_permanent BIGINT  NOT NULL,
    records_done    BIGINT  NOT NULL,
    records_failed  BIGINT  NOT NULL,
    credits         BIGINT  NOT NULL,
    rate            DOUBLE PRECISION NOT NULL,
    ceiling         DOUBLE PRECISION NOT NULL,
    paced_rate      DOUBLE PRECISION NOT NULL,
    concurrency     BIGINT  NOT NULL,
    in_flight       DOUBLE PRECISION NOT NULL,
    paused          BIGINT  NOT NULL,
    outage          BIGINT  NOT NULL
);
CREATE INDEX freshen_samples_run ON freshen_samples (run_id, at_ms);
