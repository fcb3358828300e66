//! What freshen's own tables stop needing: the rows of joined runs' dead workers
//! (for `freshen status`), and old samples and finished runs' items (for
//! `freshen prune`). The runs themselves stay: their counts are the history.

use anyhow::{Context, Result};

use super::Store;

/// What `freshen prune` removed, or would remove.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    /// Rows of `freshen_samples` (the runs' timelines).
    pub samples: u64,
    /// Rows of `freshen_items` of finished runs.
    pub items: u64,
    /// The finished runs those items belonged to.
    pub runs: u64,
}

/// This table's runs that finished (complete, or superseded by `--new`) before `$2`.
const FINISHED_BEFORE: &str = "SELECT id FROM freshen_runs WHERE source_table = $1 \
     AND finished_at IS NOT NULL AND finished_at < $2";

impl Store {
    /// Removes the rows of run `run`'s workers named in `gone` (their heartbeat
    /// older than `lock.stale_after`, or their process ended on this host).
    /// Their claims have lapsed already (a claim holds only while its worker's
    /// row is fresh), and their reservations count as spent in the ledger
    /// (`store::ledger`), row or no row. The number removed.
    pub async fn prune_workers(&self, run: i64, gone: &[String]) -> Result<u64> {
        let mut removed = 0;
        for worker in gone {
            let deleted =
                sqlx::query("DELETE FROM freshen_workers WHERE run_id = $1 AND worker = $2")
                    .bind(run)
                    .bind(worker.clone())
                    .execute(&self.pool)
                    .await
                    .context("removing the rows of gone workers")?;
            removed += deleted.rows_affected();
        }
        Ok(removed)
    }

    /// Removes this table's samples older than `before`, and the items of its
    /// runs that finished before `before` (the run rows and their counts stay).
    /// With `dry_run`, counts them only.
    pub async fn prune(&self, before: jiff::Timestamp, dry_run: bool) -> Result<Pruned> {
        let at_ms = before.as_millisecond();
        let stamp = crate::selection::stamp(before);
        let mut tx = self.pool.begin().await.context("pruning")?;
        let count = |sql: String| sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql));
        let samples_where = "FROM freshen_samples WHERE at_ms < $2 AND run_id IN \
             (SELECT id FROM freshen_runs WHERE source_table = $1)";
        let items_where = format!("FROM freshen_items WHERE run_id IN ({FINISHED_BEFORE})");
        let runs = count(format!(
            "SELECT COUNT(*) FROM ({FINISHED_BEFORE}) f WHERE EXISTS \
             (SELECT 1 FROM freshen_items i WHERE i.run_id = f.id)"
        ))
        .bind(self.table.clone())
        .bind(stamp.clone())
        .fetch_one(&mut *tx)
        .await
        .context("counting the finished runs to prune")?;
        let mut pruned = Pruned {
            runs: u64::try_from(runs).unwrap_or(0),
            ..Pruned::default()
        };
        if dry_run {
            let samples = count(format!("SELECT COUNT(*) {samples_where}"))
                .bind(self.table.clone())
                .bind(at_ms)
                .fetch_one(&mut *tx)
                .await
                .context("counting the samples to prune")?;
            let items = count(format!("SELECT COUNT(*) {items_where}"))
                .bind(self.table.clone())
                .bind(stamp)
                .fetch_one(&mut *tx)
                .await
                .context("counting the items to prune")?;
            pruned.samples = u64::try_from(samples).unwrap_or(0);
            pruned.items = u64::try_from(items).unwrap_or(0);
            return Ok(pruned);
        }
        pruned.samples = sqlx::query(sqlx::AssertSqlSafe(format!("DELETE {samples_where}")))
            .bind(self.table.clone())
            .bind(at_ms)
            .execute(&mut *tx)
            .await
            .context("removing old samples")?
            .rows_affected();
        pruned.items = sqlx::query(sqlx::AssertSqlSafe(format!("DELETE {items_where}")))
            .bind(self.table.clone())
            .bind(stamp)
            .execute(&mut *tx)
            .await
            .context("removing the items of finished runs")?
            .rows_affected();
        tx.commit().await.context("pruning")?;
        Ok(pruned)
    }
}
