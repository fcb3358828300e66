//! The run's timeline (`freshen_samples`, written while a run works) and the
//! failures grouped by reason, for `freshen report`. Fixed table names only;
//! every value is bound.

use anyhow::{Context, Result};
use serde::Serialize;
use sqlx::Row;

use super::{CallCounts, Store};

/// One sample of a run's timeline: what happened during `interval_ms` up to `at_ms`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sample {
    /// The sample's end, Unix time in milliseconds.
    pub at_ms: i64,
    pub interval_ms: i64,
    /// Calls answered during the sample, by outcome.
    pub calls: CallCounts,
    /// Records resolved during the sample.
    pub done: i64,
    pub failed: i64,
    /// Credits charged (checkpointed) during the sample.
    pub credits: i64,
    /// Calls answered per second during the sample.
    pub rate: f64,
    /// `limits.rate`: the configured ceiling.
    pub ceiling: f64,
    /// The pacer's rate at the sample's end.
    pub paced_rate: f64,
    /// The concurrency limit at the sample's end.
    pub concurrency: i64,
    /// Calls in flight, the mean over the sample.
    pub in_flight: f64,
    /// A throttle pause was in force at some moment of the sample.
    pub paused: bool,
    /// The circuit breaker was open (the vendor down) at some moment of the sample.
    pub outage: bool,
}

/// Failed records that share a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureGroup {
    pub reason: String,
    pub count: i64,
    /// A few of their keys, in queue order.
    pub examples: Vec<String>,
}

const INSERT: &str = "INSERT INTO freshen_samples (run_id, at_ms, interval_ms, calls_ok, calls_throttled, \
     calls_transient, calls_permanent, records_done, records_failed, credits, rate, ceiling, paced_rate, \
     concurrency, in_flight, paused, outage) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";

const SELECT: &str = "SELECT at_ms, interval_ms, calls_ok, calls_throttled, calls_transient, calls_permanent, \
     records_done, records_failed, credits, rate, ceiling, paced_rate, concurrency, in_flight, paused, outage \
     FROM freshen_samples WHERE run_id = $1 ORDER BY at_ms";

const GROUPS: &str = "SELECT COALESCE(reason, ''), COUNT(*) FROM freshen_items \
     WHERE run_id = $1 AND state = 'failed' GROUP BY COALESCE(reason, '') \
     ORDER BY COUNT(*) DESC, COALESCE(reason, '') LIMIT $2";

const EXAMPLES: &str = "SELECT key FROM freshen_items \
     WHERE run_id = $1 AND state = 'failed' AND COALESCE(reason, '') = $2 ORDER BY seq LIMIT $3";

impl Store {
    /// Appends samples to a run's timeline, in one transaction.
    pub async fn add_samples(&self, run: i64, samples: &[Sample]) -> Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("starting a timeline write")?;
        for s in samples {
            sqlx::query(INSERT)
                .bind(run)
                .bind(s.at_ms)
                .bind(s.interval_ms)
                .bind(s.calls.ok)
                .bind(s.calls.throttled)
                .bind(s.calls.transient)
                .bind(s.calls.permanent)
                .bind(s.done)
                .bind(s.failed)
                .bind(s.credits)
                .bind(s.rate)
                .bind(s.ceiling)
                .bind(s.paced_rate)
                .bind(s.concurrency)
                .bind(s.in_flight)
                .bind(i64::from(s.paused))
                .bind(i64::from(s.outage))
                .execute(&mut *tx)
                .await
                .context("writing a timeline sample")?;
        }
        tx.commit().await.context("committing timeline samples")
    }

    /// A run's timeline, oldest first (every process that worked on it).
    pub async fn samples(&self, run: i64) -> Result<Vec<Sample>> {
        let rows = sqlx::query(SELECT)
            .bind(run)
            .fetch_all(&self.pool)
            .await
            .context("reading the run's timeline")?;
        rows.iter()
            .map(|r| {
                Ok(Sample {
                    at_ms: r.try_get(0)?,
                    interval_ms: r.try_get(1)?,
                    calls: CallCounts {
                        ok: r.try_get(2)?,
                        throttled: r.try_get(3)?,
                        transient: r.try_get(4)?,
                        permanent: r.try_get(5)?,
                    },
                    done: r.try_get(6)?,
                    failed: r.try_get(7)?,
                    credits: r.try_get(8)?,
                    rate: r.try_get(9)?,
                    ceiling: r.try_get(10)?,
                    paced_rate: r.try_get(11)?,
                    concurrency: r.try_get(12)?,
                    in_flight: r.try_get(13)?,
                    paused: r.try_get::<i64, _>(14)? != 0,
                    outage: r.try_get::<i64, _>(15)? != 0,
                })
            })
            .collect()
    }

    /// The run's failed records grouped by reason, most frequent first: at most
    /// `groups` reasons, each with up to `examples` keys.
    pub async fn failure_groups(
        &self,
        run: i64,
        groups: i64,
        examples: i64,
    ) -> Result<Vec<FailureGroup>> {
        let rows = sqlx::query(GROUPS)
            .bind(run)
            .bind(groups)
            .fetch_all(&self.pool)
            .await
            .context("grouping the run's failures")?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let reason: String = r.try_get(0)?;
            let keys = sqlx::query_scalar(EXAMPLES)
                .bind(run)
                .bind(reason.clone())
                .bind(examples)
                .fetch_all(&self.pool)
                .await
                .context("reading failed keys")?;
            out.push(FailureGroup {
                reason,
                count: r.try_get(1)?,
                examples: keys,
            });
        }
        Ok(out)
    }
}
