//! Several workers on one run (`freshen run --join`, PostgreSQL only): claims on
//! items, the workers' heartbeats, one credit budget and one pace for all of them.
//!
//! No coordinator of freshen's own: every shared decision is one short
//! transaction on a row that serializes it. Times are the database's clock, so
//! workers on hosts whose clocks disagree still agree on who is alive.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::pool::PoolConnection;
use sqlx::{Any, Row};

use super::{Backend, Item, Store, millis, rows::item_row};

/// A store on PostgreSQL: the only way to the operations of a joined run (the
/// claims, the shared pace, the planning lock), which need its row locks
/// (`FOR UPDATE SKIP LOCKED`), advisory locks and clock. [`Store::postgres`]
/// makes one; on SQLite there is none, so those calls cannot be written there.
#[derive(Clone)]
pub struct PgStore(Arc<Store>);

impl Deref for PgStore {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.0
    }
}

impl Store {
    /// This store as a [`PgStore`], if it is on PostgreSQL.
    pub fn postgres(self: &Arc<Self>) -> Option<PgStore> {
        (self.backend == Backend::Postgres).then(|| PgStore(self.clone()))
    }
}

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

/// Rate tokens from the shared bucket: the first is due `first` after now
/// (negative: already due), then one every emission interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaceGrant {
    pub first_us: i64,
    /// How long a throttle seen by any worker still holds every worker.
    pub paused_us: i64,
    /// The table is in an outage (see `engine::outage`).
    pub outage: bool,
}

impl PgStore {
    /// Serializes the planning of a joined run among its workers: the first plans,
    /// the others find its run. Held until [`PgStore::planning_unlock`] (or the
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

    /// Makes sure the table's shared pace exists, for a worker of a joined run.
    pub async fn join_pace(&self) -> Result<()> {
        sqlx::query("INSERT INTO freshen_pace (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
            .bind(self.table.clone())
            .execute(&self.pool)
            .await
            .context("joining the run's workers")?;
        Ok(())
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

    /// Gives the worker's claims on pending items back to the queue.
    pub async fn release_claims(&self, run: i64, worker: &str) -> Result<()> {
        sqlx::query(
            "UPDATE freshen_items SET lease_owner = NULL \
             WHERE run_id = $1 AND state = 'pending' AND lease_owner = $2",
        )
        .bind(run)
        .bind(worker.to_owned())
        .execute(&self.pool)
        .await
        .context("giving back claimed items")?;
        Ok(())
    }
}

impl Store {
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

    /// The run's processes (its workers, when joined), live or not, with their
    /// claims and reservations.
    pub async fn workers(&self, run: i64) -> Result<Vec<WorkerRow>> {
        let sql = format!(
            "SELECT w.worker, w.started_at, {} - w.heartbeat_at, \
             (SELECT COUNT(*) FROM freshen_items i WHERE i.run_id = w.run_id \
               AND i.state = 'pending' AND i.lease_owner = w.worker), \
             (SELECT CAST(COALESCE(SUM(r.reserved), 0) AS BIGINT) FROM freshen_reservations r \
               WHERE r.holder = w.worker) \
             FROM freshen_workers w WHERE w.run_id = $1 ORDER BY w.started_at, w.worker",
            super::ledger::now_ms(self.backend)
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
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
}

impl PgStore {
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
               GREATEST(freshen_pace.paused_until_us - n.now_us, 0), \
               freshen_pace.outage_since_ms IS NOT NULL"
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
            outage: row.try_get(2)?,
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
