//! The checkpoint: one batch of results written in one transaction, the
//! records, their items' states, the run's counts and the period's credits together.

use std::collections::HashSet;

use anyhow::{Context, Result, bail};
use sqlx::Row;

use super::{CallCounts, Finished, Ledger, Resolution, Store, file_id, fleet, now_stamp, query};
use crate::record::ColumnKind;

impl Store {
    /// Writes one batch of results in one transaction: each record's mapped columns
    /// and `refreshed_at`, its item's state, the run's call counts and the period's
    /// credits, together. An item that is no longer pending is skipped, so a result
    /// is never written twice.
    pub async fn checkpoint(
        &self,
        at: &Ledger<'_>,
        batch: &[Finished],
        calls: CallCounts,
        reserved: i64,
    ) -> Result<()> {
        let Ledger {
            run,
            period,
            worker,
            joined,
        } = *at;
        let now = now_stamp();
        let mut tx = self.pool.begin().await.context("starting a checkpoint")?;
        // Two statements whatever the batch's size: one resolves the items (only
        // those still pending, so nothing is written twice), one writes the records
        // whose items it resolved. Each takes the batch as one JSON array, so its
        // text never changes (prepared once, then cached) and it binds a few values,
        // not a few per record.
        let mut items = Vec::with_capacity(batch.len() * 32);
        items.push(b'[');
        for (i, f) in batch.iter().enumerate() {
            if i > 0 {
                items.push(b',');
            }
            let (state, reason) = match &f.resolution {
                Resolution::Done(_) => ("done", None),
                Resolution::Failed(reason) => ("failed", Some(reason.as_str())),
            };
            serde_json::to_writer(&mut items, &(f.seq, state, f.attempts, reason))?;
        }
        items.push(b']');
        let claimed: HashSet<i64> = query(&self.sql.resolve_items)
            .bind(now.clone())
            .bind(run)
            .bind(String::from_utf8(items)?)
            .bind(worker.to_owned())
            .fetch_all(&mut *tx)
            .await
            .context("checkpointing a batch of items")?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?;
        let mut records = Vec::with_capacity(batch.len() * 64);
        records.push(b'[');
        // Every billed answer is charged, written or not: the vendor billed it.
        // (An answer is not written when another worker of a joined run took
        // the item over, after this one's heartbeat went stale.)
        let charged: i64 = batch.iter().map(|f| f.charged).sum();
        for f in batch.iter().filter(|f| claimed.contains(&f.seq)) {
            let Resolution::Done(values) = &f.resolution else {
                continue;
            };
            if records.len() > 1 {
                records.push(b',');
            }
            records.push(b'[');
            match self.key_kind {
                ColumnKind::Integer => {
                    let key = f
                        .key
                        .parse::<i64>()
                        .with_context(|| format!("the planned key {} is not an integer", f.key))?;
                    serde_json::to_writer(&mut records, &key)?;
                }
                _ => serde_json::to_writer(&mut records, &f.key)?,
            }
            for value in values {
                records.push(b',');
                serde_json::to_writer(&mut records, value)?;
            }
            records.push(b']');
        }
        records.push(b']');
        if records.len() > 2 {
            query(&self.sql.update_records)
                .bind(now.clone())
                .bind(String::from_utf8(records)?)
                .execute(&mut *tx)
                .await
                .context("writing a batch of records")?;
        }
        query(&self.sql.add_run_counts)
            .bind(calls.ok)
            .bind(calls.throttled)
            .bind(calls.transient)
            .bind(calls.permanent)
            .bind(charged)
            .bind(reserved)
            .bind(now)
            .bind(run)
            .execute(&mut *tx)
            .await
            .context("updating the run's counts")?;
        if charged > 0 {
            query(&self.sql.charge_period)
                .bind(charged)
                .bind(period.to_owned())
                .execute(&mut *tx)
                .await?;
            if joined {
                // The charge was this worker's reservation: it moves from reserved
                // to spent in one transaction, so the fleet's sum never dips.
                fleet::settle(&mut tx, worker, charged).await?;
            }
        }
        if let Some((path, id)) = &self.sqlite_file
            && file_id(path) != Some(*id)
        {
            // Dropping the transaction rolls it back: nothing of this batch is kept.
            bail!(
                "the database file {} was removed or replaced during the run: stopping \
                 without writing more; put it back and rerun to resume",
                path.display()
            );
        }
        tx.commit().await.context("committing a checkpoint")
    }
}
