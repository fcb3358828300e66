//! The checkpoint: one batch of results written in one transaction, the
//! records, their items' states, the run's counts and the period's credits together.
//!
//! A batch is never rolled back for one record. The records are written by one
//! set-based statement inside a savepoint, and it returns the key of every row
//! it wrote: each record's update must have touched exactly one row, or the
//! savepoint is rolled back and the batch written again without that record,
//! which fails with what happened. When the database refuses the statement for
//! a value (a constraint, a type, a length), the savepoint is rolled back and
//! the records are split in halves, each written on its own, until the one it
//! refuses is alone: it fails with the database's reason, and every other
//! record, item state and credit charge of the batch commits. A clean batch
//! costs two statements more (the savepoint and its release); one with k
//! refused records of n about 2k·log2(n) writes of ever smaller halves.

use std::collections::{HashMap, HashSet};

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sqlx::{AnyConnection, Executor, Row};

use super::{
    Backend, CallCounts, Finished, Ledger, Resolution, Store, connect::file_id, ledger, now_stamp,
    query,
};
use crate::record::Value;
use crate::state::ItemState;

/// A record the checkpoint could not write: its item fails with the reason.
/// Reasons do not repeat the key (the item has it), so records that failed
/// alike group under one reason in `status` and `report`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub seq: i64,
    pub key: String,
    pub reason: String,
}

/// One record on its way to the table: its item, key and new values.
struct Record<'a> {
    seq: i64,
    key: &'a str,
    values: &'a [Value],
}

impl Store {
    /// Writes one batch of results in one transaction: each record's mapped columns
    /// and `refreshed_at`, its item's state, the run's call counts and the period's
    /// credits, together. An item that is no longer pending is skipped, so a result
    /// is never written twice. Returns the records that failed alone instead of
    /// being written (see the module's comment), their items failed with why.
    pub async fn checkpoint(
        &self,
        at: &Ledger<'_>,
        batch: &[Finished],
        calls: CallCounts,
    ) -> Result<Vec<Rejected>> {
        let Ledger { run, worker } = *at;
        let now = now_stamp();
        let mut tx = self.pool.begin().await.context("starting a checkpoint")?;
        let claimed = self
            .resolve_items(&mut tx, run, &now, worker, batch)
            .await?;
        let records: Vec<Record> = batch
            .iter()
            .filter(|f| claimed.contains(&f.seq))
            .filter_map(|f| match &f.resolution {
                Resolution::Done(values) => Some(Record {
                    seq: f.seq,
                    key: &f.key,
                    values,
                }),
                Resolution::Failed(_) | Resolution::NoMatch(_) | Resolution::Pending => None,
            })
            .collect();
        let rejected = self.write_records(&mut tx, run, &now, &records).await?;
        for r in &rejected {
            query(&self.sql.fail_item)
                .bind(r.reason.clone())
                .bind(run)
                .bind(r.seq)
                .execute(&mut *tx)
                .await
                .context("failing a record the database did not write")?;
        }
        // Every billed answer is charged, written or not: the vendor billed it.
        // (An answer is not written when another worker of a joined run took
        // the item over, after this one's heartbeat went stale, or when the
        // database refuses it.) Each charge moves from this process's
        // reservation in its period to that period's spent, in this
        // transaction, so the ledger's sums never dip.
        let mut charged = 0;
        for (period, credits) in by_period(batch) {
            charged += ledger::settle(&mut tx, worker, &period, credits).await?;
        }
        query(&self.sql.add_run_counts)
            .bind(calls.ok)
            .bind(calls.throttled)
            .bind(calls.transient)
            .bind(calls.permanent)
            .bind(charged)
            .bind(now)
            .bind(run)
            .execute(&mut *tx)
            .await
            .context("updating the run's counts")?;
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
        tx.commit().await.context("committing a checkpoint")?;
        Ok(rejected)
    }

    /// Resolves the batch's items, each only while still pending and not claimed
    /// by another worker, so nothing is written twice: the seqs it resolved.
    async fn resolve_items(
        &self,
        conn: &mut AnyConnection,
        run: i64,
        now: &str,
        worker: &str,
        batch: &[Finished],
    ) -> Result<HashSet<i64>> {
        // One statement whatever the batch's size (and one for the records): it
        // takes the batch as one JSON array, so its text never changes (prepared
        // once, then cached) and it binds a few values, not a few per record.
        let mut items = Vec::with_capacity(batch.len() * 32);
        items.push(b'[');
        for (i, f) in batch.iter().enumerate() {
            if i > 0 {
                items.push(b',');
            }
            let (state, reason) = match &f.resolution {
                Resolution::Done(_) => (ItemState::Done.as_str(), None),
                Resolution::Failed(reason) => (ItemState::Failed.as_str(), Some(reason.as_str())),
                Resolution::NoMatch(reason) => (ItemState::NoMatch.as_str(), Some(reason.as_str())),
                Resolution::Pending => (ItemState::Pending.as_str(), None),
            };
            serde_json::to_writer(&mut items, &(f.seq, state, f.attempts, reason))?;
        }
        items.push(b']');
        query(&self.sql.resolve_items)
            .bind(now.to_owned())
            .bind(run)
            .bind(String::from_utf8(items)?)
            .bind(worker.to_owned())
            .fetch_all(&mut *conn)
            .await
            .context("checkpointing a batch of items")?
            .iter()
            .map(|r| r.try_get::<i64, _>(0).map_err(Into::into))
            .collect()
    }

    /// Writes `records`, each alone if need be, and returns those that could not
    /// be written and why. Errors other than a refused value end the checkpoint.
    async fn write_records(
        &self,
        conn: &mut AnyConnection,
        run: i64,
        now: &str,
        records: &[Record<'_>],
    ) -> Result<Vec<Rejected>> {
        let mut rejected = Vec::new();
        let mut todo: Vec<Vec<usize>> = vec![(0..records.len()).collect()];
        while let Some(part) = todo.pop() {
            if part.is_empty() {
                continue;
            }
            conn.execute("SAVEPOINT freshen_records").await?;
            match self.update_records(conn, run, now, records, &part).await {
                Ok(keys) => {
                    let wrong = touched_other_than_one(records, &part, &keys);
                    if wrong.is_empty() {
                        conn.execute("RELEASE SAVEPOINT freshen_records").await?;
                        continue;
                    }
                    roll_back(conn).await?;
                    let seqs: HashSet<i64> = wrong.iter().map(|r| r.seq).collect();
                    todo.push(
                        part.into_iter()
                            .filter(|i| !seqs.contains(&records[*i].seq))
                            .collect(),
                    );
                    rejected.extend(wrong);
                }
                Err(e) => {
                    let Some(why) = refused_value(self.backend, &e) else {
                        return Err(e);
                    };
                    roll_back(conn).await?;
                    if let [i] = part[..] {
                        rejected.push(Rejected {
                            seq: records[i].seq,
                            key: records[i].key.to_owned(),
                            reason: format!(
                                "the database refused the record's new values: {why} \
                                 (nothing of it was written; its answer was charged)"
                            ),
                        });
                    } else {
                        let (left, right) = part.split_at(part.len() / 2);
                        todo.push(right.to_vec());
                        todo.push(left.to_vec());
                    }
                }
            }
        }
        Ok(rejected)
    }

    /// One set-based update of `records[part]`: the keys, as text, of the rows it wrote.
    async fn update_records(
        &self,
        conn: &mut AnyConnection,
        run: i64,
        now: &str,
        records: &[Record<'_>],
        part: &[usize],
    ) -> Result<Vec<String>> {
        // The batch as one JSON array, so the statement's text never changes
        // (prepared once, then cached) and it binds a few values, not a few per record.
        let mut json = Vec::with_capacity(part.len() * 64);
        json.push(b'[');
        for (n, i) in part.iter().enumerate() {
            let r = &records[*i];
            if n > 0 {
                json.push(b',');
            }
            json.push(b'[');
            serde_json::to_writer(&mut json, &r.seq)?;
            json.push(b',');
            serde_json::to_writer(&mut json, r.key)?;
            for value in r.values {
                json.push(b',');
                serde_json::to_writer(&mut json, value)?;
            }
            json.push(b']');
        }
        json.push(b']');
        let q = query(&self.sql.update_records)
            .bind(now.to_owned())
            .bind(String::from_utf8(json)?);
        let q = match self.backend {
            Backend::Sqlite => q.bind(run),
            Backend::Postgres => q,
        };
        q.fetch_all(&mut *conn)
            .await
            .context("writing a batch of records")?
            .iter()
            .map(|r| r.try_get::<String, _>(0).map_err(Into::into))
            .collect()
    }
}

/// Undoes what the savepoint's statements did, and leaves the savepoint.
async fn roll_back(conn: &mut AnyConnection) -> Result<()> {
    conn.execute("ROLLBACK TO SAVEPOINT freshen_records")
        .await?;
    conn.execute("RELEASE SAVEPOINT freshen_records").await?;
    Ok(())
}

/// The records of `part` whose update did not touch exactly one row, given the
/// keys of the rows the update wrote, each with what happened.
fn touched_other_than_one(
    records: &[Record<'_>],
    part: &[usize],
    keys: &[String],
) -> Vec<Rejected> {
    let mut touched: HashMap<&str, usize> = HashMap::new();
    for key in keys {
        *touched.entry(key.as_str()).or_default() += 1;
    }
    part.iter()
        .map(|i| &records[*i])
        .filter_map(|r| {
            let reason = match touched.get(r.key).copied().unwrap_or(0) {
                1 => return None,
                0 => "its update touched no row: since the plan the record was deleted, \
                      its key changed, or a trigger or rule skipped the update (nothing was \
                      written; its answer was charged)"
                    .to_owned(),
                n => format!(
                    "its update would have touched {n} rows: the key no longer names one \
                     record (nothing was written; its answer was charged)"
                ),
            };
            Some(Rejected {
                seq: r.seq,
                key: r.key.to_owned(),
                reason,
            })
        })
        .collect()
}

/// The database's reason, when `e` is its refusal of a value of the batch (a
/// constraint, a type, a length, a trigger's exception), which one record alone
/// can cause; `None` for anything else (a lost connection, a full disk, a
/// missing column), which ends the checkpoint.
fn refused_value(backend: Backend, e: &anyhow::Error) -> Option<String> {
    let db = e
        .chain()
        .find_map(|cause| match cause.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Database(db)) => Some(db),
            _ => None,
        })?;
    let code = db.code()?;
    let refused = match backend {
        // Primary result codes: SQLITE_TOOBIG, SQLITE_CONSTRAINT (CHECK, NOT
        // NULL, UNIQUE, FOREIGN KEY, a trigger's RAISE(ABORT)), SQLITE_MISMATCH
        // (a STRICT table's type).
        Backend::Sqlite => code
            .parse::<i64>()
            .is_ok_and(|c| matches!(c & 0xff, 18..=20)),
        // Class 22 (data exception: too long, out of range, invalid text),
        // class 23 (integrity constraint), 42804 (datatype mismatch), P0001 (a
        // trigger's RAISE EXCEPTION).
        Backend::Postgres => {
            code.starts_with("22") || code.starts_with("23") || code == "42804" || code == "P0001"
        }
    };
    refused.then(|| db.message().to_owned())
}

/// A batch's charges summed by period, in the order the periods first appear.
fn by_period(batch: &[Finished]) -> Vec<(Arc<str>, i64)> {
    let mut sums: Vec<(Arc<str>, i64)> = Vec::new();
    for (period, credits) in batch.iter().flat_map(|f| &f.charges) {
        match sums.iter_mut().find(|(p, _)| p == period) {
            Some((_, sum)) => *sum += credits,
            None => sums.push((period.clone(), *credits)),
        }
    }
    sums
}
