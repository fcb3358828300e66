//! A run's row and its items' counts, as the run, status and report read them.

use anyhow::{Context, Result};
use sqlx::Row;

use super::{History, ItemCounts, RunRow, Store, now_stamp, query, rows::run_row};
use crate::selection::Selection;
use crate::state::{ItemState, RunStatus};

impl Store {
    /// The newest run with this selection, finished or not.
    pub async fn latest_run_with(&self, selection: &Selection) -> Result<Option<RunRow>> {
        let row = query(&self.sql.latest_run_with)
            .bind(selection.canonical())
            .fetch_optional(&self.pool)
            .await
            .context("looking up earlier runs")?;
        row.map(|r| run_row(&r)).transpose()
    }

    /// The newest run of this table, whatever its selection.
    pub async fn latest_run(&self) -> Result<Option<RunRow>> {
        let row = query(&self.sql.latest_run)
            .fetch_optional(&self.pool)
            .await
            .context("looking up the last run")?;
        row.map(|r| run_row(&r)).transpose()
    }

    pub async fn run(&self, id: i64) -> Result<Option<RunRow>> {
        let row = query(&self.sql.run_by_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .context("reading the run")?;
        row.map(|r| run_row(&r)).transpose()
    }

    /// Records the run's status; a final one also stamps `finished_at`.
    pub async fn set_status(&self, run: i64, status: RunStatus) -> Result<()> {
        let now = now_stamp();
        query(&self.sql.set_status)
            .bind(status.as_str())
            .bind(now.clone())
            .bind(status.is_final().then_some(now))
            .bind(run)
            .execute(&self.pool)
            .await
            .context("recording the run's status")?;
        Ok(())
    }

    pub async fn item_counts(&self, run: i64) -> Result<ItemCounts> {
        let rows = query(&self.sql.item_counts)
            .bind(run)
            .fetch_all(&self.pool)
            .await
            .context("counting items")?;
        let mut counts = ItemCounts::default();
        for r in rows {
            let n: i64 = r.try_get(1)?;
            match r.try_get::<String, _>(0)?.parse()? {
                ItemState::Done => counts.done += n,
                ItemState::Failed => counts.failed += n,
                ItemState::NoMatch => counts.no_match += n,
                ItemState::Pending => counts.pending += n,
            }
            counts.total += n;
        }
        Ok(counts)
    }

    /// Whether any item of the run is still pending (claimed or not).
    pub async fn has_pending(&self, run: i64) -> Result<bool> {
        let n: i64 = query(&self.sql.has_pending)
            .bind(run)
            .fetch_one(&self.pool)
            .await
            .context("looking for pending items")?
            .try_get(0)?;
        Ok(n > 0)
    }

    /// The failed items of a run with their reasons, at most `limit`.
    pub async fn failures(&self, run: i64, limit: i64) -> Result<Vec<(String, String)>> {
        let rows = query(&self.sql.failures)
            .bind(run)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                ))
            })
            .collect()
    }

    /// Credits, calls and resolved records of every run of the table so far.
    pub async fn history(&self) -> Result<History> {
        let r = query(&self.sql.history)
            .fetch_one(&self.pool)
            .await
            .context("reading past runs")?;
        Ok(History {
            credits_spent: r.try_get(0)?,
            calls: r.try_get(1)?,
            resolved: r.try_get(2)?,
        })
    }
}
