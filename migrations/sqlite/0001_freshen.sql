-- freshen's own tables. Kept in step with migrations/postgres/0001_freshen.sql.

-- One row per run: its selection (canonical text, to resume the same selection),
-- its state, and the calls it made by outcome (accumulated across resumes).
CREATE TABLE freshen_runs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    source_table    TEXT    NOT NULL,
    selection       TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    total           INTEGER NOT NULL DEFAULT 0,
    calls_ok        INTEGER NOT NULL DEFAULT 0,
    calls_throttled INTEGER NOT NULL DEFAULT 0,
    calls_transient INTEGER NOT NULL DEFAULT 0,
    calls_permanent INTEGER NOT NULL DEFAULT 0,
    credits_spent   INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    finished_at     TEXT
);
CREATE INDEX freshen_runs_selection ON freshen_runs (source_table, selection, id);

-- The run as a queue: the keys snapshotted at plan time, in refresh order (seq).
-- state: pending | done | failed.
CREATE TABLE freshen_items (
    run_id     INTEGER NOT NULL REFERENCES freshen_runs (id),
    seq        INTEGER NOT NULL,
    key        TEXT    NOT NULL,
    state      TEXT    NOT NULL DEFAULT 'pending',
    attempts   INTEGER NOT NULL DEFAULT 0,
    reason     TEXT,
    updated_at TEXT,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX freshen_items_state ON freshen_items (run_id, state, seq);

-- Credits per period ('2026-11' for a calendar month): charged in the same
-- transaction that writes the records the charge paid for.
CREATE TABLE freshen_credit_periods (
    period           TEXT    PRIMARY KEY,
    allowance        INTEGER NOT NULL,
    spent            INTEGER NOT NULL DEFAULT 0,
    vendor_remaining INTEGER,
    vendor_seen_at   TEXT
);
