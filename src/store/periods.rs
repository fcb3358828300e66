//! The credit periods' rows as stored (the ledger that spends from them is
//! [`super::ledger`]).

use anyhow::{Context, Result};
use sqlx::Row;

use super::{PeriodRow, Store, query};

impl Store {
    /// The period's row, created with `allowance` if it does not exist yet.
    pub async fn period(&self, period: &str, allowance: i64) -> Result<PeriodRow> {
        query(&self.sql.ensure_period)
            .bind(period.to_owned())
            .bind(allowance)
            .execute(&self.pool)
            .await?;
        let r = query(&self.sql.period)
            .bind(period.to_owned())
            .fetch_one(&self.pool)
            .await?;
        Ok(PeriodRow {
            period: r.try_get(0)?,
            allowance: r.try_get(1)?,
            spent: r.try_get(2)?,
            vendor_remaining: r.try_get(3)?,
            vendor_seen_at: r.try_get(4)?,
            resume_after_ms: r.try_get(5)?,
        })
    }

    /// The vendor asks for no call before `at` (a quota's window): every run
    /// spending from `period` waits for it. `None` clears it.
    pub async fn set_resume_after(&self, period: &str, at: Option<jiff::Timestamp>) -> Result<()> {
        sqlx::query("UPDATE freshen_credit_periods SET resume_after_ms = $1 WHERE period = $2")
            .bind(at.map(|t| t.as_millisecond()))
            .bind(period.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the vendor's count of credits left for `period`.
    pub async fn set_vendor_count(&self, period: &str, left: i64, seen_at: String) -> Result<()> {
        query(&self.sql.set_vendor_count)
            .bind(left)
            .bind(seen_at)
            .bind(period.to_owned())
            .execute(&self.pool)
            .await
            .context("recording the vendor's count of credits")?;
        Ok(())
    }
}
