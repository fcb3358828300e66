//! The checkpoint writer: the only task that writes results. Workers hand results
//! to an [`Outbox`] of exactly `checkpoint.batch_size` slots; the writer takes
//! everything in it when half the slots are taken or every `checkpoint.interval`,
//! and writes it in one transaction (see `Store::checkpoint`), then frees the
//! slots. Waking at half, not full, lets the workers fill the other half while a
//! batch is written, instead of waiting for the whole write with nowhere to put
//! their results; whatever arrives meanwhile goes in the next batch.
//!
//! A worker keeps its concurrency permit until its result is in the outbox, so at
//! any moment a result is either in flight (at most `max_concurrency`), in the
//! outbox (at most `batch_size`), or written: a crash repeats at most
//! `max_concurrency + batch_size` calls.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::Tally;
use crate::config::Checkpoint;
use crate::store::{CallCounts, Finished, Ledger, Store};

pub(super) struct Outbox {
    results: Mutex<Vec<Finished>>,
    free: Semaphore,
    full: Notify,
    /// Results held that wake the writer: half the slots.
    wake_at: usize,
    /// Cancelled if the writer fails: nobody would take results any more.
    broken: CancellationToken,
}

impl Outbox {
    pub fn new(batch_size: usize) -> Outbox {
        Outbox {
            results: Mutex::new(Vec::with_capacity(batch_size)),
            free: Semaphore::new(batch_size),
            full: Notify::new(),
            wake_at: batch_size.div_ceil(2),
            broken: CancellationToken::new(),
        }
    }

    /// Waits for a free slot and puts the result in it. Returns false if the writer
    /// has failed (the result is dropped: its item stays pending).
    pub async fn put(&self, finished: Finished) -> bool {
        let slot = tokio::select! {
            _ = self.broken.cancelled() => return false,
            slot = self.free.acquire() => slot.expect("never closed"),
        };
        slot.forget();
        let held = {
            let mut results = self.results.lock().expect("outbox lock");
            results.push(finished);
            results.len()
        };
        if held == self.wake_at {
            self.full.notify_one();
        }
        true
    }

    fn take(&self) -> Vec<Finished> {
        std::mem::take(&mut *self.results.lock().expect("outbox lock"))
    }
}

/// The writer's task: what it writes, where, and the tokens it obeys.
pub(super) struct Writer {
    pub budget: Arc<crate::credits::Budget>,
    pub store: Arc<Store>,
    pub run: i64,
    pub period: String,
    pub worker: String,
    pub joined: bool,
    pub outbox: Arc<Outbox>,
    pub settings: Checkpoint,
    pub tally: Arc<Tally>,
    /// How long a lost database connection is waited for (`retry.max_outage`).
    pub reconnect_for: std::time::Duration,
    /// Cancelled by the writer on a database error: the run stops.
    pub stop: CancellationToken,
    /// Cancelled by the engine once every worker has finished.
    pub done: CancellationToken,
}

impl Writer {
    /// Writes batches until `done`, then writes what is left and returns.
    pub async fn write(self) -> Result<()> {
        let Writer {
            store,
            budget,
            run,
            period,
            worker,
            joined,
            outbox,
            settings,
            tally,
            reconnect_for,
            stop,
            done,
        } = self;
        let ledger = Ledger {
            run,
            period: &period,
            worker: &worker,
            joined,
        };
        let mut written = CallCounts::default();
        let mut tick = tokio::time::interval(settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let last = tokio::select! {
                _ = outbox.full.notified() => false,
                _ = tick.tick() => false,
                _ = done.cancelled() => true,
            };
            let batch = outbox.take();
            let now = counts(&tally);
            let delta = CallCounts {
                ok: now.ok - written.ok,
                throttled: now.throttled - written.throttled,
                transient: now.transient - written.transient,
                permanent: now.permanent - written.permanent,
            };
            if !batch.is_empty() || delta != CallCounts::default() {
                let mut lost: Option<tokio::time::Instant> = None;
                while let Err(e) = store
                    .checkpoint(&ledger, &batch, delta, budget.reserved())
                    .await
                {
                    // The connection went away (a database restart, say): nothing
                    // of this batch was written. Keep it and write it once the
                    // database is back; meanwhile the outbox stays full, so
                    // workers finishing calls wait and no new call goes out.
                    let since = *lost.get_or_insert_with(tokio::time::Instant::now);
                    if crate::store::is_disconnect(&e) && since.elapsed() < reconnect_for {
                        tracing::warn!(
                            "{e:#}: the database is unreachable; holding {} results and trying again",
                            batch.len()
                        );
                        tokio::time::sleep(RECONNECT_EVERY).await;
                        continue;
                    }
                    // Nothing of this batch was written; its items stay pending.
                    outbox.broken.cancel();
                    stop.cancel();
                    return Err(crate::store::explain_write_failure(e));
                }
                if let Some(since) = lost {
                    tracing::info!(
                        "the database is back after {:.1} s; the held results are written",
                        since.elapsed().as_secs_f64()
                    );
                }
                written = now;
                let charged: i64 = batch.iter().map(|f| f.charged).sum();
                tally
                    .credits
                    .fetch_add(charged.max(0) as u64, std::sync::atomic::Ordering::Relaxed);
                outbox.free.add_permits(batch.len());
            }
            if last {
                return Ok(());
            }
        }
    }
}

/// How often a lost database is tried again.
pub(super) const RECONNECT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn counts(tally: &Tally) -> CallCounts {
    let n = |c| Tally::get(c) as i64;
    CallCounts {
        ok: n(&tally.ok),
        throttled: n(&tally.throttled),
        transient: n(&tally.transient),
        permanent: n(&tally.permanent),
    }
}
