-- What a reservation's holder has sent, so that a holder that died on this
-- host is settled exactly: its calls sent and not yet charged count as spent,
-- the credits it held unsent go back to the period. Kept in step with
-- migrations/postgres/0010_sent.sql.
--
-- charged:  credits of this reservation the checkpoint has moved into spent.
-- sent_log: the file (on the holder's host) where the holder counts the credits
--           of the calls it has sent, less those answered unbilled; written
--           before each call goes out. NULL: no file (an older freshen).
ALTER TABLE freshen_reservations ADD COLUMN charged INTEGER NOT NULL DEFAULT 0;
ALTER TABLE freshen_reservations ADD COLUMN sent_log TEXT;
