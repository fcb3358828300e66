//! The vendor's outage, kept beside the table's shared pause (`freshen_pace`):
//! one circuit breaker for every worker of a joined run, and what `status`
//! shows of an outage while a run is in one. Times are the database's clock.

use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::{AssertSqlSafe, Row};

use super::ledger::now_ms;
use super::{PgStore, Store, millis};

/// An outage in force, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutageRow {
    /// How long ago the first worker's breaker opened.
    pub age: Duration,
    pub cause: Option<String>,
}

/// The fleet's outage, as one worker's look at it left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetOutage {
    pub open: bool,
    /// This worker took the probe: nobody else probes until it answers, or
    /// until the hold it asked for runs out.
    pub probe: bool,
}

impl Store {
    /// A worker's breaker opened: the table's outage starts now, unless it is
    /// already in one; the first probe may go `first_probe` from its start.
    pub async fn outage_opened(&self, cause: Option<&str>, first_probe: Duration) -> Result<()> {
        let now = now_ms(self.backend);
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO freshen_pace (name, outage_since_ms, outage_cause, next_probe_ms) \
             VALUES ($1, {now}, $2, {now} + $3) \
             ON CONFLICT (name) DO UPDATE SET \
               outage_since_ms = COALESCE(freshen_pace.outage_since_ms, excluded.outage_since_ms), \
               outage_cause = COALESCE(excluded.outage_cause, freshen_pace.outage_cause), \
               next_probe_ms = CASE WHEN freshen_pace.outage_since_ms IS NULL \
                 THEN excluded.next_probe_ms ELSE freshen_pace.next_probe_ms END"
        )))
        .bind(self.table.clone())
        .bind(cause.map(str::to_owned))
        .bind(millis(first_probe))
        .execute(&self.pool)
        .await
        .context("sharing the vendor's outage")?;
        Ok(())
    }

    /// The vendor answers again: the table's outage is over.
    pub async fn outage_closed(&self) -> Result<()> {
        sqlx::query(
            "UPDATE freshen_pace SET outage_since_ms = NULL, outage_cause = NULL WHERE name = $1",
        )
        .bind(self.table.clone())
        .execute(&self.pool)
        .await
        .context("sharing the vendor's return")?;
        Ok(())
    }

    /// The table's outage in force, if any.
    pub async fn outage(&self) -> Result<Option<OutageRow>> {
        let now = now_ms(self.backend);
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {now} - outage_since_ms, outage_cause FROM freshen_pace \
             WHERE name = $1 AND outage_since_ms IS NOT NULL"
        )))
        .bind(self.table.clone())
        .fetch_optional(&self.pool)
        .await
        .context("reading the vendor's outage")?;
        row.map(|row| {
            Ok(OutageRow {
                age: Duration::from_millis(row.try_get::<i64, _>(0)?.max(0) as u64),
                cause: row.try_get(1)?,
            })
        })
        .transpose()
    }
}

impl PgStore {
    /// Whether the table is in an outage; with `want_probe`, takes the probe if
    /// it is due and holds it for `hold` (the probe's answer gives it back
    /// through [`PgStore::probe_failed`]): a joined run's workers.
    pub async fn fleet_outage(&self, want_probe: bool, hold: Duration) -> Result<FleetOutage> {
        // The probe is taken by the UPDATE's own WHERE, which PostgreSQL checks
        // again on the row a concurrent taker just committed: of two workers
        // asking in the same millisecond, only the first changes the row, so
        // only it sees a row come back from `took`. (Comparing the row's new
        // `next_probe_ms` with this worker's `now + hold`, as before, gave the
        // probe to both.)
        let row = sqlx::query(concat!(
            "WITH n AS (SELECT ",
            now_ms!(),
            " AS t), \
             took AS (UPDATE freshen_pace SET next_probe_ms = n.t + $3 FROM n \
               WHERE name = $1 AND $2 = 1 AND outage_since_ms IS NOT NULL \
                 AND next_probe_ms <= n.t \
               RETURNING 1) \
             SELECT CASE WHEN outage_since_ms IS NULL THEN 0 ELSE 1 END, \
               (SELECT CAST(COUNT(*) AS INTEGER) FROM took) \
             FROM freshen_pace WHERE name = $1"
        ))
        .bind(self.table.clone())
        .bind(i32::from(want_probe))
        .bind(millis(hold))
        .fetch_optional(&self.pool)
        .await
        .context("reading the fleet's outage")?;
        Ok(match row {
            None => FleetOutage {
                open: false,
                probe: false,
            },
            Some(row) => FleetOutage {
                open: row.try_get::<i32, _>(0)? == 1,
                probe: row.try_get::<i32, _>(1)? == 1,
            },
        })
    }

    /// This worker's probe failed: the next may go `wait` from now, from
    /// whichever worker takes it first.
    pub async fn probe_failed(&self, wait: Duration) -> Result<()> {
        let now = now_ms(self.backend);
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE freshen_pace SET next_probe_ms = {now} + $2 \
             WHERE name = $1 AND outage_since_ms IS NOT NULL"
        )))
        .bind(self.table.clone())
        .bind(millis(wait))
        .execute(&self.pool)
        .await
        .context("sharing a failed probe")?;
        Ok(())
    }
}
