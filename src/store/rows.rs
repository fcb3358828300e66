//! The rows freshen reads back from its own tables, as the rest of the code sees them.

use std::sync::Arc;

use anyhow::Result;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::record::Value;
use crate::state::RunStatus;

/// A run as stored in `freshen_runs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub id: i64,
    pub selection: String,
    pub status: RunStatus,
    pub total: i64,
    pub calls: CallCounts,
    pub credits_spent: i64,
    /// Records its plan left out for their keys (NULL, or shared with another).
    pub skipped: i64,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

/// Calls by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallCounts {
    pub ok: i64,
    pub throttled: i64,
    pub transient: i64,
    pub permanent: i64,
}

impl CallCounts {
    pub fn total(&self) -> i64 {
        self.ok + self.throttled + self.transient + self.permanent
    }
}

/// Items of a run by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ItemCounts {
    pub total: i64,
    pub done: i64,
    pub failed: i64,
    /// Resolved with no match at the vendor.
    pub no_match: i64,
    pub pending: i64,
}

/// One queued record, as the workers see it.
#[derive(Debug, Clone)]
pub struct Item {
    pub seq: i64,
    pub key: String,
    pub attempts: u32,
    /// The other columns the request's templates read (`Api::columns`), as
    /// text, `None` for NULL.
    pub params: Vec<Option<String>>,
}

/// How an item ended.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// The mapped columns' new values, in `api.response` order.
    Done(Vec<Value>),
    Failed(String),
    /// The vendor knows nothing of the record, as it said.
    NoMatch(String),
    /// Not resolved: the run stopped while the record was between tries. It
    /// stays pending for the next run; what its billed tries cost (a billed
    /// 429, say) is settled with the checkpoint like any other charge.
    Pending,
}

/// An item's result, on its way to the checkpoint.
#[derive(Debug, Clone)]
pub struct Finished {
    pub seq: i64,
    pub key: String,
    pub attempts: u32,
    pub resolution: Resolution,
    /// Credits its billed answers cost, by the period each was reserved in
    /// (one entry, but for a record retried across a period's reset).
    pub charges: Vec<(Arc<str>, i64)>,
}

impl Finished {
    pub fn charged(&self) -> i64 {
        self.charges.iter().map(|(_, c)| c).sum()
    }
}

/// Where a checkpoint writes: the run, and the process writing (whose claims
/// it may resolve, and whose credit reservations its charges settle).
#[derive(Debug, Clone, Copy)]
pub struct Ledger<'a> {
    pub run: i64,
    pub worker: &'a str,
}

/// Credits of one period, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodRow {
    pub period: String,
    pub allowance: i64,
    pub spent: i64,
    /// The vendor's last count of credits left, and when it was seen.
    pub vendor_remaining: Option<i64>,
    pub vendor_seen_at: Option<String>,
    /// No call before this (Unix ms): the vendor's long wait, a quota's reset.
    pub resume_after_ms: Option<i64>,
}

/// What past runs of the table cost: for the estimate's retry overhead.
#[derive(Debug, Clone, Copy, Default)]
pub struct History {
    pub credits_spent: i64,
    pub calls: i64,
    pub resolved: i64,
}

/// A queued item: seq, key, attempts, then the templates' other columns as text.
pub(super) fn item_row(r: &AnyRow) -> Result<Item> {
    let params = (3..r.len()).map(|i| r.try_get::<Option<String>, _>(i));
    Ok(Item {
        seq: r.try_get(0)?,
        key: r.try_get(1)?,
        attempts: u32::try_from(r.try_get::<i64, _>(2)?).unwrap_or(u32::MAX),
        params: params.collect::<Result<_, _>>()?,
    })
}

pub(super) fn run_row(r: &AnyRow) -> Result<RunRow> {
    Ok(RunRow {
        id: r.try_get("id")?,
        selection: r.try_get("selection")?,
        status: r.try_get::<String, _>("status")?.parse()?,
        total: r.try_get("total")?,
        calls: CallCounts {
            ok: r.try_get("calls_ok")?,
            throttled: r.try_get("calls_throttled")?,
            transient: r.try_get("calls_transient")?,
            permanent: r.try_get("calls_permanent")?,
        },
        credits_spent: r.try_get("credits_spent")?,
        skipped: r.try_get("skipped")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}
