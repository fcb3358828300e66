-- One credit ledger for every run, solo or joined, of every table in the
-- database. Kept in step with migrations/sqlite/0008_ledger.sql.

-- Credits reserved by a live process (a run, or one worker of a joined run)
-- against one period: granted before its calls are sent, settled into the
-- period's spent by the checkpoint that charges them, given back when unused.
-- A holder whose heartbeat in freshen_workers goes stale never comes back; its
-- reservation counts as spent until the next grant moves it there (the calls
-- it had out may have been billed).
CREATE TABLE freshen_reservations (
    holder   TEXT    NOT NULL,
    period   TEXT    NOT NULL,
    run_id   BIGINT NOT NULL,
    reserved BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (holder, period)
);

-- uncertain: credits counted as spent because their holder died with them
--            reserved (in flight, or granted and unused): the vendor may or may
--            not have billed them.
-- vendor_spent_at: the period's spent when vendor_remaining was read; every
--            credit spent since comes off the vendor's count.
ALTER TABLE freshen_credit_periods ADD COLUMN uncertain BIGINT NOT NULL DEFAULT 0;
ALTER TABLE freshen_credit_periods ADD COLUMN vendor_spent_at BIGINT;
