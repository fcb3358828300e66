//! Several workers on one run (`freshen run --join`, PostgreSQL only): claims on
//! items, the workers' heartbeats, one credit budget and one pace for all of them.
//!
//! No coordinator of freshen's own: every shared decision is one short
//! transaction on a row that serializes it. Times are the database's clock, so
//! workers on hosts whose clocks disagree still agree on who is alive.

use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::pool::PoolConnection;
use sqlx::{Any, Executor, Row};

use super::{Item, Store, item_row};

/// A worker of a joined run, as `freshen status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorkerRow {
    pub worker: String,
    pub started_at: String,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: i64,
    /// Pending items it has claimed.
    pub leases: i64,
    /// Credits it holds reserved.
    pub reserved: i64,
}

impl WorkerRow {
    /// Its heartbeat is fresher than `stale_after`: its claims and its
    /// reservation hold.
    pub fn is_live(&self, stale_after: Duration) -> bool {
        self.heartbeat_age_ms < millis(stale_after)
    }
}

/// What a request for credits got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: i64,
    /// Credits the other live workers hold reserved: they may come back.
    pub others: i64,
}

/// A request for credits from the period's budget (see [`Store::grant_credits`]).
#[derive(Debug, Clone)]
pub struct GrantRequest {
    pub worker: String,
    pub run: i64,
    pub period: String,
    /// The period's spent plus every reservation may not pass this.
    pub period_limit: i64,
    /// `--max-credits`: the run's spent plus its workers' reservations may not pass this.
    pub run_limit: Option<i64>,
    pub cost: i64,
    pub want: i64,
    pub stale_after: Duration,
}

/// Rate tokens from the shared bucket: the first is due `first` after now
/// (negative: already due), then one every emission interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaceGrant {
    pub first_us: i64,
    /// How long a throttle seen by any worker still holds every worker.
    pub paused_us: i64,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Serializes the planning of a joined run among its workers: the first plans,
    /// the others find its run. Held until [`Store::planning_unlock`] (or the
    /// process's end: the lock is the session's).
    pub async fn planning_lock(&self) -> Result<PoolConnection<Any>> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .context("taking the planning lock")?;
        // Tried, not waited for: a wait would run into database.lock_timeout
        // while the first worker plans a large table.
        loop {
            let got: bool = sqlx::query("SELECT pg_try_advisory_lock(hashtext($1))")
                .bind(self.planning_lock_name())
                .fetch_one(&mut *conn)
                .await
                .context("taking the planning lock")?
                .try_get(0)?;
            if got {
                return Ok(conn);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn planning_lock_name(&self) -> String {
        format!("freshen plan {}", self.table)
    }

    pub async fn planning_unlock(&self, mut conn: PoolConnection<Any>) -> Result<()> {
        sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(self.planning_lock_name())
            .execute(&mut *conn)
            .await
            .context("releasing the planning lock")?;
        Ok(())
    }

    /// Enters `worker` into the run's fleet, with a fresh heartbeat and nothing reserved.
    pub async fn join_fleet(&self, run: i64, worker: &str) -> Result<()> {
        let sql = concat!(
            "INSERT INTO freshen_workers (worker, run_id, started_at, heartbeat_at, reserved) \
             VALUES ($1, $2, $3, ",
            now_ms!(),
            ", 0) ON CONFLICT (worker) DO UPDATE SET \
             run_id = excluded.run_id, started_at = excluded.started_at, \
             heartbeat_at = excluded.heartbeat_at, reserved = 0"
        );
        sqlx::query(sql)
            .bind(worker.to_owned())
            .bind(run)
            .bind(super::now_stamp())
            .execute(&self.pool)
            .await
            .context("joining the run's workers")?;
        sqlx::query("INSERT INTO freshen_pace (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
            .bind(self.table.clone())
            .execute(&self.pool)
            .await
            .context("joining the run's workers")?;
        Ok(())
    }

    /// Refreshes the worker's heartbeat, which keeps its claims; false if its row
    /// is gone.
    pub async fn worker_heartbeat(&self, worker: &str) -> Result<bool> {
        let kept = sqlx::query(concat!(
            "UPDATE freshen_workers SET heartbeat_at = ",
            now_ms!(),
            " WHERE worker = $1"
        ))
        .bind(worker.to_owned())
        .execute(&self.pool)
        .await
        .context("refreshing the worker's heartbeat")?;
        Ok(kept.rows_affected() == 1)
    }

    /// Claims up to `limit` pending items, in queue order, that no live worker
    /// holds: unclaimed ones, and those of workers whose heartbeat is older than
    /// `stale_after`. Workers claiming at once skip each other's rows.
    pub async fn claim(
        &self,
        run: i64,
        worker: &str,
        stale_after: Duration,
        limit: i64,
    ) -> Result<Vec<Item>> {
        let rows = super::query(&self.sql.claim)
            .bind(run)
            .bind(worker.to_owned())
            .bind(millis(stale_after))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .context("claiming pending items")?;
        rows.iter().map(item_row).collect()
    }

    /// Gives the worker's claims on pending items back to the queue and leaves the
    /// fleet (its unspent reservation with it).
    pub async fn leave_fleet(&self, run: i64, worker: &str) -> Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("leaving the run's workers")?;
        sqlx::query(
            "UPDATE freshen_items SET lease_owner = NULL \
             WHERE run_id = $1 AND state = 'pending' AND lease_owner = $2",
        )
        .bind(run)
        .bind(worker.to_owned())
        .execute(&mut *tx)
        .await
        .context("giving back claimed items")?;
        sqlx::query("DELETE FROM freshen_workers WHERE worker = $1")
            .bind(worker.to_owned())
            .execute(&mut *tx)
            .await
            .context("leaving the run's workers")?;
        tx.commit().await.context("leaving the run's workers")
    }

    /// Forgets every claim on the run's pending items: for a run without `--join`,
    /// which holds the table's lock alone.
    pub async fn clear_leases(&self, run: i64) -> Result<()> {
        super::query(&self.sql.clear_leases)
            .bind(run)
            .execute(&self.pool)
            .await
            .context("clearing old claims")?;
        Ok(())
    }

    /// The run's workers, live or not, with their claims and reservations.
    pub async fn workers(&self, run: i64) -> Result<Vec<WorkerRow>> {
        if self.backend != super::Backend::Postgres {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(concat!(
            "SELECT w.worker, w.started_at, ",
            now_ms!(),
            " - w.heartbeat_at, \
             (SELECT COUNT(*) FROM freshen_items i WHERE i.run_id = w.run_id \
               AND i.state = 'pending' AND i.lease_owner = w.worker), w.reserved \
             FROM freshen_workers w WHERE w.run_id = $1 ORDER BY w.started_at, w.worker"
        ))
        .bind(run)
        .fetch_all(&self.pool)
        .await
        .context("reading the run's workers")?;
        rows.iter()
            .map(|r| {
                Ok(WorkerRow {
                    worker: r.try_get(0)?,
                    started_at: r.try_get(1)?,
                    heartbeat_age_ms: r.try_get(2)?,
                    leases: r.try_get(3)?,
                    reserved: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Live workers of the run other than `except`.
    pub async fn other_live_workers(
        &self,
        run: i64,
        except: &str,
        stale_after: Duration,
    ) -> Result<i64> {
        let row = sqlx::query(concat!(
            "SELECT COUNT(*) FROM freshen_workers WHERE run_id = $1 AND worker <> $2 \
             AND heartbeat_at >= ",
            now_ms!(),
            " - $3"
        ))
        .bind(run)
        .bind(except.to_owned())
        .bind(millis(stale_after))
        .fetch_one(&self.pool)
        .await
        .context("counting the run's live workers")?;
        Ok(row.try_get(0)?)
    }

    /// Releases the table's lock held under `holder` unless another live worker
    /// of the table's runs still works under it. True if released.
    pub async fn unlock_if_last(
        &self,
        holder: &str,
        worker: &str,
        stale_after: Duration,
    ) -> Result<bool> {
        let sql = concat!(
            "DELETE FROM freshen_locks WHERE name = $1 AND holder = $2 AND NOT EXISTS \
             (SELECT 1 FROM freshen_workers w JOIN freshen_runs r ON r.id = w.run_id \
              WHERE r.source_table = $1 AND w.worker <> $3 \
              AND w.heartbeat_at >= ",
            now_ms!(),
            " - $4)"
        );
        let gone = sqlx::query(sql)
            .bind(self.table.clone())
            .bind(holder.to_owned())
            .bind(worker.to_owned())
            .bind(millis(stale_after))
            .execute(&self.pool)
            .await
            .context("releasing the run lock")?;
        Ok(gone.rows_affected() == 1)
    }

    /// Grants the worker up to `want` credits (whole calls' worth) from what the
    /// period, and the run's `--max-credits`, have left after what is spent and
    /// what every live worker holds reserved. One transaction, serialized on the
    /// period's row with every other grant and every charge.
    pub async fn grant_credits(&self, req: &GrantRequest) -> Result<Grant> {
        let mut tx = self.pool.begin().await.context("asking for credits")?;
        let spent: i64 =
            sqlx::query("SELECT spent FROM freshen_credit_periods WHERE period = $1 FOR UPDATE")
                .bind(req.period.clone())
                .fetch_one(&mut *tx)
                .await
                .context("reading the period's credits")?
                .try_get(0)?;
        let sums = sqlx::query(concat!("SELECT CAST(COALESCE(SUM(CASE WHEN worker = $1 THEN reserved ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN worker <> $1 THEN reserved ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN run_id = $2 THEN reserved ELSE 0 END), 0) AS BIGINT) \
             FROM freshen_workers WHERE worker = $1 OR heartbeat_at >= ", now_ms!(), " - $3"))
        .bind(req.worker.clone())
        .bind(req.run)
        .bind(millis(req.stale_after))
        .fetch_one(&mut *tx)
        .await
        .context("reading the workers' reservations")?;
        let (mine, others, of_run): (i64, i64, i64) =
            (sums.try_get(0)?, sums.try_get(1)?, sums.try_get(2)?);
        let mut room = req.period_limit - spent - mine - others;
        if let Some(limit) = req.run_limit {
            let run_spent: i64 =
                sqlx::query("SELECT credits_spent FROM freshen_runs WHERE id = $1")
                    .bind(req.run)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?;
            room = room.min(limit - run_spent - of_run);
        }
        let cost = req.cost.max(1);
        let granted = (req.want.min(room).max(0) / cost) * cost;
        if granted > 0 {
            sqlx::query("UPDATE freshen_workers SET reserved = reserved + $1 WHERE worker = $2")
                .bind(granted)
                .bind(req.worker.clone())
                .execute(&mut *tx)
                .await
                .context("reserving credits")?;
        }
        tx.commit().await.context("reserving credits")?;
        Ok(Grant { granted, others })
    }

    /// Takes `tokens` tokens from the table's shared bucket (one every
    /// `interval_us`, `burst` of them at once after a quiet spell, none before a
    /// throttle's pause ends), in one statement.
    pub async fn pace(&self, tokens: i64, interval_us: i64, burst: i64) -> Result<PaceGrant> {
        let sql = concat!(
            "WITH n AS (SELECT ",
            now_us!(),
            " AS now_us) \
             UPDATE freshen_pace SET tat_us = GREATEST(freshen_pace.tat_us, n.now_us - $2, \
               freshen_pace.paused_until_us) + $3 \
             FROM n WHERE freshen_pace.name = $1 \
             RETURNING freshen_pace.tat_us - $3 - n.now_us, \
               GREATEST(freshen_pace.paused_until_us - n.now_us, 0)"
        );
        let row = sqlx::query(sql)
            .bind(self.table.clone())
            .bind(burst.saturating_mul(interval_us))
            .bind(tokens.saturating_mul(interval_us))
            .fetch_one(&self.pool)
            .await
            .context("taking rate tokens from the shared bucket")?;
        Ok(PaceGrant {
            first_us: row.try_get::<i64, _>(0)? + interval_us,
            paused_us: row.try_get(1)?,
        })
    }

    /// Holds every worker of the table for `pause` (a throttle seen by one).
    pub async fn pause_fleet(&self, pause: Duration) -> Result<()> {
        let us = i64::try_from(pause.as_micros()).unwrap_or(i64::MAX);
        sqlx::query(concat!(
            "UPDATE freshen_pace SET paused_until_us = GREATEST(paused_until_us, ",
            now_us!(),
            " + $2) \
             WHERE name = $1"
        ))
        .bind(self.table.clone())
        .bind(us)
        .execute(&self.pool)
        .await
        .context("sharing a throttle's pause")?;
        Ok(())
    }
}

/// Moves `charged` credits of the worker's reservation to spent (with the
/// period's charge, in the checkpoint's transaction).
pub(super) async fn settle(
    tx: &mut sqlx::Transaction<'_, Any>,
    worker: &str,
    charged: i64,
) -> Result<()> {
    tx.execute(
        sqlx::query("UPDATE freshen_workers SET reserved = reserved - $1 WHERE worker = $2")
            .bind(charged)
            .bind(worker.to_owned()),
    )
    .await
    .context("settling the worker's reservation")?;
    Ok(())
}
