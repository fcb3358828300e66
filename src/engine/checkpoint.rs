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

use crate::config::Checkpoint;
use crate::store::{CallCounts, Finished, Ledger, Store};
use crate::tally::Tally;

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
    pub store: Arc<Store>,
    pub run: i64,
    pub worker: String,
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
            run,
            worker,
            outbox,
            settings,
            tally,
            reconnect_for,
            stop,
            done,
        } = self;
        let ledger = Ledger {
            run,
            worker: &worker,
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
                // A lost connection (a database restart, say) wrote nothing of this
                // batch: it is kept and written once the database is back;
                // meanwhile the outbox stays full, so workers finishing calls wait
                // and no new call goes out.
                let holding = format!("holding {} results", batch.len());
                let written_now = reconnecting(
                    || store.checkpoint(&ledger, &batch, delta),
                    reconnect_for,
                    &holding,
                )
                .await;
                let rejected = match written_now {
                    Ok(rejected) => rejected,
                    Err(e) => {
                        // Nothing of this batch was written; its items stay pending.
                        outbox.broken.cancel();
                        stop.cancel();
                        return Err(crate::store::explain_write_failure(e));
                    }
                };
                note_rejected(&tally, &rejected);
                written = now;
                let charged: i64 = batch.iter().map(Finished::charged).sum();
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

/// Records the database did not write (see `Store::checkpoint`) were counted
/// done when their answers came: they count as failed, and a few are logged.
fn note_rejected(tally: &Tally, rejected: &[crate::store::Rejected]) {
    use std::sync::atomic::Ordering::Relaxed;
    let n = rejected.len() as u64;
    if n == 0 {
        return;
    }
    tally.done.fetch_sub(n, Relaxed);
    tally.failed.fetch_add(n, Relaxed);
    for r in rejected.iter().take(3) {
        tracing::warn!(
            "record {} not written: {}",
            crate::api::shown(&r.key),
            r.reason
        );
    }
    if n > 3 {
        tracing::warn!(
            "{} more records of this batch were not written; `freshen status` lists them",
            n - 3
        );
    }
}

/// How often a lost database is tried again.
const RECONNECT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `op` until it does not fail for a lost database connection, or the
/// database has been gone `max_outage` (`retry.max_outage`); `holding` says
/// what waits for it meanwhile.
pub(super) async fn reconnecting<T, F: Future<Output = anyhow::Result<T>>>(
    mut op: impl FnMut() -> F,
    max_outage: std::time::Duration,
    holding: &str,
) -> anyhow::Result<T> {
    let mut lost: Option<tokio::time::Instant> = None;
    loop {
        let result = op().await;
        match &result {
            Err(e)
                if crate::store::is_disconnect(e)
                    && lost.get_or_insert_with(tokio::time::Instant::now).elapsed()
                        < max_outage =>
            {
                tracing::warn!("{e:#}: the database is unreachable; {holding} and trying again");
                tokio::time::sleep(RECONNECT_EVERY).await;
            }
            _ => {
                if let (Ok(_), Some(since)) = (&result, lost) {
                    tracing::info!(
                        "the database is back after {:.1} s",
                        since.elapsed().as_secs_f64()
                    );
                }
                return result;
            }
        }
    }
}

fn counts(tally: &Tally) -> CallCounts {
    tally.now().calls
}
