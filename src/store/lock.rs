//! The table's run lock: one run at a time per table (the workers of a joined
//! run share it under one holder name). A row in `freshen_locks` names the
//! holder and carries its heartbeat; a lock whose heartbeat is older than
//! `lock.stale_after` is taken over.

use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::Row;

use super::{Store, now_stamp, query};

/// Who holds a table's run lock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LockHolder {
    pub holder: String,
    pub acquired_at: String,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_s: i64,
}

impl Store {
    /// Takes the table's run lock for `holder`, or reports who holds it. A lock whose
    /// heartbeat is older than `stale_after` is taken over.
    pub async fn lock(
        &self,
        holder: &str,
        stale_after: Duration,
    ) -> Result<Result<(), LockHolder>> {
        let now = jiff::Timestamp::now().as_millisecond();
        let stale_after = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
        let taken = query(&self.sql.take_lock)
            .bind(holder.to_owned())
            .bind(now_stamp())
            .bind(now)
            .bind(now - stale_after)
            .execute(&self.pool)
            .await
            .context("taking the run lock")?
            .rows_affected();
        if taken == 1 {
            return Ok(Ok(()));
        }
        Ok(Err(self.lock_holder().await?.unwrap_or(LockHolder {
            holder: "(released just now)".into(),
            acquired_at: String::new(),
            heartbeat_age_s: 0,
        })))
    }

    /// The lock's holder, if any.
    pub async fn lock_holder(&self) -> Result<Option<LockHolder>> {
        let now = jiff::Timestamp::now().as_millisecond();
        let row = query(&self.sql.lock_holder)
            .fetch_optional(&self.pool)
            .await
            .context("reading the run lock")?;
        row.map(|r| {
            Ok(LockHolder {
                holder: r.try_get(0)?,
                acquired_at: r.try_get(1)?,
                heartbeat_age_s: (now - r.try_get::<i64, _>(2)?) / 1000,
            })
        })
        .transpose()
    }

    /// Refreshes the heartbeat; false if the lock is no longer this holder's.
    pub async fn heartbeat(&self, holder: &str) -> Result<bool> {
        let now = jiff::Timestamp::now().as_millisecond();
        let kept = query(&self.sql.heartbeat)
            .bind(now)
            .bind(holder.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(kept.rows_affected() == 1)
    }

    pub async fn unlock(&self, holder: &str) -> Result<()> {
        query(&self.sql.unlock)
            .bind(holder.to_owned())
            .execute(&self.pool)
            .await
            .context("releasing the run lock")?;
        Ok(())
    }
}
