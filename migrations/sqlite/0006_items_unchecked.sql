-- Nothing to do on SQLite: its foreign keys are not enforced unless
-- `PRAGMA foreign_keys = ON`, which freshen does not set. PostgreSQL drops the
-- items' foreign key to the runs here (see migrations/postgres/0006_items_unchecked.sql).
SELECT 1;
