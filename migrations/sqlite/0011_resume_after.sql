-- When the vendor asked for no more calls until (a Retry-After or a quota's
-- reset past retry.max_delay: a daily or monthly quota), in Unix milliseconds:
-- a run that starts before it exits without a call. NULL: no such wait. Kept
-- in step with migrations/postgres/0011_resume_after.sql.
ALTER TABLE freshen_credit_periods ADD COLUMN resume_after_ms INTEGER;
