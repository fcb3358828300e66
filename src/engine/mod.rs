//! The loop: take pending items from the run's queue in the database, call the
//! vendor for each under the pacer, and hand results to the checkpoint writer.
//!
//! ```text
//! dispatcher ──▶ workers (≤ slots) ──▶ checkpoint writer (one, batched transactions)
//!                   │  ▲
//!      pacer: permit + pause + rate token
//! ```
//!
//! Stopping (signal, budget, out of credits) cancels one token: the dispatcher stops
//! taking items, workers waiting for a permit or a backoff give theirs back untouched
//! (still pending), calls in flight finish and are checkpointed, the writer flushes
//! last. Whatever happens, an item is either written whole or left pending, and
//! at most `max_concurrency + checkpoint.batch_size` answers are held unwritten.

mod checkpoint;
mod choose;
mod deadline;
mod held;
mod outage;
mod plan;
mod run;

pub use choose::Nothing;
pub use plan::Plan;
pub use run::{OutageCause, Outcome, Ran, run};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{CallError, Vendor};
use crate::config::Config;
use crate::credits::{Budget, Reservation, Spent};
use crate::fleet::Fleet;
use crate::lease::Lease;
use crate::pacer::{Backoff, Outage, Pacer, Signal};
use crate::store::{Finished, Item, Resolution, Store};

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// No pending item is left.
    Drained,
    /// SIGINT or SIGTERM.
    Interrupted,
    /// The next call could take the period past `allowance - reserve`.
    Budget,
    /// The vendor answered 402.
    OutOfCredits,
    /// The vendor was down longer than `retry.max_outage`.
    Outage,
    /// This process's lease went stale (suspended or cut off past
    /// `lock.stale_after`): another may have taken its work over.
    Fenced,
}

/// Live counters of this process's work, read by the progress display.
#[derive(Debug, Default)]
pub struct Tally {
    /// The calls made, by outcome (as `store::CallCounts` keeps them), every
    /// call counted once.
    pub ok: AtomicU64,
    /// Refused for the vendor's limits: its rate (429, 503 with Retry-After) or
    /// its credits (402, a quota-exceeded problem).
    pub throttled: AtomicU64,
    /// Server errors, timeouts, connection errors (an untrusted certificate too).
    pub transient: AtomicU64,
    pub permanent: AtomicU64,
    /// Items resolved (done or failed) by this process.
    pub done: AtomicU64,
    pub failed: AtomicU64,
    /// Credits charged by this process, as checkpointed.
    pub credits: AtomicU64,
}

impl Tally {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Items read from the queue per query.
const FETCH: i64 = 512;

struct Shared {
    vendor: Vendor,
    pacer: Arc<Pacer>,
    budget: Arc<Budget>,
    tally: Arc<Tally>,
    stop: CancellationToken,
    reason: Mutex<Option<Stop>>,
    /// Why no call can succeed (`CallError::Fatal`): the run ends with this error.
    fatal: Mutex<Option<String>>,
    outbox: Arc<checkpoint::Outbox>,
    retry: crate::config::Retry,
    /// A worker of a joined run: the shared rate and pause.
    fleet: Option<Arc<Fleet>>,
    lease: Arc<Lease>,
}

impl Shared {
    async fn halt(&self, why: Stop) {
        self.reason.lock().await.get_or_insert(why);
        self.stop.cancel();
    }
}

/// What `execute` needs from its caller.
pub struct Job {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub vendor: Vendor,
    pub pacer: Arc<Pacer>,
    pub tally: Arc<Tally>,
    pub budget: Arc<Budget>,
    pub run: i64,
    /// This process's lease: it names the claimant of the items it works and
    /// the holder of its credits, and fences it if it goes stale.
    pub lease: Arc<Lease>,
    /// With `--join`: the run's other workers share the queue, rate and credits.
    pub fleet: Option<Arc<Fleet>>,
}

/// Works the run's pending items until none is left or something stops it.
pub async fn execute(job: Job, shutdown: &CancellationToken) -> Result<Stop> {
    let Job {
        config,
        store,
        vendor,
        pacer,
        tally,
        budget,
        run,
        lease,
        fleet,
    } = job;
    let stop = shutdown.child_token();
    let outbox = Arc::new(checkpoint::Outbox::new(config.checkpoint.batch_size.get()));
    let workers_done = CancellationToken::new();
    let writer = tokio::spawn(
        checkpoint::Writer {
            store: store.clone(),
            run,
            worker: lease.worker.clone(),
            outbox: outbox.clone(),
            settings: config.checkpoint.clone(),
            tally: tally.clone(),
            reconnect_for: config.retry.max_outage,
            stop: stop.clone(),
            done: workers_done.clone(),
        }
        .write(),
    );

    let shared = Arc::new(Shared {
        vendor,
        pacer,
        budget,
        tally,
        stop: stop.clone(),
        reason: Mutex::new(None),
        fatal: Mutex::new(None),
        outbox,
        retry: config.retry.clone(),
        fleet,
        lease,
    });

    // Workers in existence at once: those calling plus those waiting out a backoff
    // (which hold no concurrency permit). Bounded, so memory does not grow with the run.
    let slots = Arc::new(Semaphore::new(
        config.limits.max_concurrency.get() as usize * 4,
    ));
    let tracker = TaskTracker::new();
    let watching = CancellationToken::new();
    let outages = tokio::spawn(outage::share(
        store.clone(),
        shared.pacer.clone(),
        shared.fleet.is_some(),
        watching.clone(),
    ));
    let dispatched = dispatch(&store, run, &shared, &slots, &tracker).await;
    tracker.close();
    tracker.wait().await;
    watching.cancel();
    outages.await.expect("the outage watcher does not panic");

    let reason = *shared.reason.lock().await;
    workers_done.cancel(); // the writer writes what is left and ends
    let written = writer.await.expect("the checkpoint writer does not panic");
    dispatched?;
    written?;
    if let Some(why) = shared.fatal.lock().await.take() {
        // The operator must change something: a usage error, exit 2.
        return Err(crate::error::usage(why));
    }

    Ok(match reason {
        _ if shared.lease.is_fenced() => Stop::Fenced,
        _ if shutdown.is_cancelled() => Stop::Interrupted,
        Some(why) => why,
        None => Stop::Drained,
    })
}

async fn dispatch(
    store: &Store,
    run: i64,
    shared: &Arc<Shared>,
    slots: &Arc<Semaphore>,
    tracker: &TaskTracker,
) -> Result<()> {
    let mut after = 0;
    loop {
        let items = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return Ok(()),
            items = checkpoint::reconnecting(
                || next_items(store, run, after, shared),
                shared.retry.max_outage,
                "waiting to read the next items",
            ) => items?,
        };
        let Some(last) = items.last() else {
            return Ok(());
        };
        after = last.seq;
        for item in items {
            let slot = tokio::select! {
                biased;
                _ = shared.stop.cancelled() => return Ok(()),
                slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            };
            // Credits are reserved here, in queue order, so the budget reaches
            // exactly the stalest records (the cut `estimate` predicts), whatever
            // order the workers' calls then go out in.
            let reserved = tokio::select! {
                biased;
                _ = shared.stop.cancelled() => return Ok(()),
                reserved = shared.budget.reserve() => reserved,
            };
            let reservation = match reserved {
                Ok(r) => r,
                Err(spent) => {
                    shared.halt(stop_for(spent)).await;
                    return Ok(());
                }
            };
            let hold = Hold {
                budget: shared.budget.clone(),
                reservation: Some(reservation),
            };
            tracker.spawn(work(shared.clone(), item, slot, hold));
        }
    }
}

/// The next items to work, in queue order; none when the run has none left.
/// Alone on a run: the pending items after `after`. A worker of a joined run
/// claims a small batch no live worker holds, and while others hold the rest,
/// waits: if one of them dies, its items come back to the queue.
async fn next_items(store: &Store, run: i64, after: i64, shared: &Shared) -> Result<Vec<Item>> {
    let Some(fleet) = &shared.fleet else {
        return store.pending_after(run, after, FETCH).await;
    };
    loop {
        let claimed = store
            .claim(run, &fleet.worker, fleet.stale_after, CLAIM)
            .await?;
        if !claimed.is_empty() {
            return Ok(claimed);
        }
        if !store.has_pending(run).await? {
            return Ok(claimed);
        }
        // Nothing to claim while others hold the last items: this worker's
        // unused credits may be what one of them lacks.
        shared.budget.give_back_unused().await?;
        tokio::time::sleep(CLAIM_POLL).await;
    }
}

/// Items a worker of a joined run claims at once: small, so the others get
/// work too and a dead worker strands few.
const CLAIM: i64 = 32;
/// How often a worker with nothing to claim looks again while others hold items.
const CLAIM_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// One item, from its first call to its result: throttled answers pause everyone and
/// try again without counting an attempt; transient failures wait out a jittered
/// backoff without holding a concurrency permit, and within the retry budget;
/// failures while the breaker is open are not attempts; a stop leaves the item pending.
/// A worker's credit reservation: held across unbilled attempts (a 429 costs
/// nothing, so the retry needs no new one), spent by a billed answer, and given
/// back if the item ends without one.
struct Hold {
    budget: Arc<Budget>,
    reservation: Option<Reservation>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.budget.release(r);
        }
    }
}

/// The stop a spent budget means.
fn stop_for(spent: Spent) -> Stop {
    match spent {
        Spent::At(_) => Stop::Budget,
        Spent::Fenced => Stop::Fenced,
    }
}

async fn work(shared: Arc<Shared>, mut item: Item, _slot: OwnedSemaphorePermit, mut hold: Hold) {
    let tally = &shared.tally;
    let pacer = &shared.pacer;
    let mut backoff: Option<Backoff> = None;
    let mut charges: Vec<(Arc<str>, i64)> = Vec::new();
    if let Some(why) = shared.vendor.refuses(&item) {
        // No call can send it intact: it fails at once, unbilled (the hold is
        // given back when dropped).
        Tally::bump(&tally.failed);
        tracing::warn!("record {} not sent: {why}", crate::api::shown(&item.key));
        let failed = Finished {
            seq: item.seq,
            key: item.key,
            attempts: item.attempts,
            resolution: Resolution::Failed(why),
            charges,
        };
        shared.outbox.put(failed).await;
        return;
    }
    loop {
        let ticket = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return,
            ticket = pacer.acquire() => ticket,
        };
        let mut ticket = match ticket {
            Ok(ticket) => ticket,
            Err(Outage) => {
                shared.halt(Stop::Outage).await;
                return;
            }
        };
        if let Some(fleet) = &shared.fleet {
            // The table's shared bucket: all workers together keep to the rate.
            tokio::select! {
                biased;
                _ = shared.stop.cancelled() => return,
                _ = fleet.token(pacer) => {}
            }
            // A throttle another worker saw may have come with the token.
            tokio::select! {
                biased;
                _ = shared.stop.cancelled() => return,
                _ = pacer.wait_pause() => {}
            }
        }
        if shared.stop.is_cancelled() {
            return;
        }
        if hold.reservation.is_none() {
            // The last attempt was billed: this one needs credits of its own.
            let reserved = tokio::select! {
                biased;
                _ = shared.stop.cancelled() => return,
                reserved = shared.budget.reserve() => reserved,
            };
            match reserved {
                Ok(r) => hold.reservation = Some(r),
                Err(spent) => {
                    shared.halt(stop_for(spent)).await;
                    return;
                }
            }
        }
        // A process suspended past its lease must not spend what it no longer holds.
        let held = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return,
            held = shared.lease.check() => held,
        };
        if !held {
            shared.halt(Stop::Fenced).await;
            return;
        }
        pacer.sending(&mut ticket, item.attempts > 0);
        let started = tokio::time::Instant::now();
        let call = shared.vendor.call(&item).await;
        let billed = shared.vendor.is_billed(call.status);
        let reservation = hold.reservation.take().expect("reserved above");
        if billed {
            let period = shared.budget.charge(reservation, call.credits_left);
            match charges.last_mut() {
                Some((p, credits)) if *p == period => *credits += shared.budget.cost(),
                _ => charges.push((period, shared.budget.cost())),
            }
        } else {
            // An unbilled answer: the reservation pays for this record's next try.
            hold.reservation = Some(reservation);
            if let Some(left) = call.credits_left {
                shared.budget.vendor_says(left);
            }
        }
        pacer.saw(call.status, call.result.as_ref().err());
        let (signal, retry_after) = match &call.result {
            Ok(_) => (Signal::Success(started.elapsed()), None),
            Err(CallError::Throttled { retry_after }) => (Signal::Throttled, *retry_after),
            Err(CallError::Transient { overload: true, .. }) => (Signal::Overloaded, None),
            Err(CallError::Transient {
                overload: false, ..
            }) => (Signal::Failed, None),
            Err(CallError::Permanent(_) | CallError::OutOfCredits | CallError::Fatal(_)) => {
                (Signal::Answered, None)
            }
        };
        let outage = pacer.observe(&mut ticket, item.seq, signal, retry_after, call.hint);
        if let (Some(fleet), Signal::Throttled) = (&shared.fleet, signal) {
            fleet.pause_all(retry_after.unwrap_or(shared.retry.base_delay));
        }

        let resolution = match call.result {
            Ok(values) => {
                Tally::bump(&tally.ok);
                item.attempts += 1;
                Resolution::Done(values)
            }
            Err(CallError::Throttled { .. }) => {
                Tally::bump(&tally.throttled);
                continue;
            }
            Err(CallError::Transient { reason, .. }) => {
                Tally::bump(&tally.transient);
                if outage {
                    // The breaker holds every worker until the vendor answers again;
                    // this call was part of the outage, not a try of the record.
                    continue;
                }
                item.attempts += 1;
                if item.attempts >= shared.retry.max_attempts.get() {
                    Resolution::Failed(format!("{reason} (after {} attempts)", item.attempts))
                } else {
                    // The backoff is waited out without the concurrency permit: a
                    // record waiting to retry must not keep another from being called.
                    drop(ticket);
                    let backoff = backoff.get_or_insert_with(|| Backoff::new(&shared.retry));
                    // Wait out the backoff, and longer while retries are over their share.
                    loop {
                        let wait = pacer.retry_wait(backoff.next_delay());
                        tracing::debug!(key = %item.key, attempt = item.attempts, ?wait, %reason, "retrying later");
                        tokio::select! {
                            biased;
                            _ = shared.stop.cancelled() => return,
                            _ = tokio::time::sleep(wait) => {}
                        }
                        if pacer.try_retry() {
                            break;
                        }
                    }
                    continue;
                }
            }
            Err(CallError::Permanent(reason)) => {
                Tally::bump(&tally.permanent);
                item.attempts += 1;
                Resolution::Failed(reason)
            }
            Err(CallError::Fatal(why)) => {
                // A call made, if one no answer can come of (an untrusted
                // certificate): a connection error among the call totals.
                Tally::bump(&tally.transient);
                shared.fatal.lock().await.get_or_insert(why);
                shared.stop.cancel();
                return;
            }
            Err(CallError::OutOfCredits) => {
                // A refusal for the vendor's limits, as a 429 is: the record stays
                // pending, and the call counts among the calls.
                Tally::bump(&tally.throttled);
                tracing::warn!(key = %item.key, "the vendor answered 402: out of credits; stopping");
                shared.halt(Stop::OutOfCredits).await;
                return;
            }
        };
        match &resolution {
            Resolution::Done(_) => Tally::bump(&tally.done),
            Resolution::Failed(reason) => {
                Tally::bump(&tally.failed);
                tracing::debug!(key = %item.key, %reason, "record failed");
            }
        }
        let finished = Finished {
            seq: item.seq,
            key: item.key,
            attempts: item.attempts,
            resolution,
            charges,
        };
        // The ticket (and its concurrency permit) is held until the result is in the
        // outbox: see the bound in `checkpoint`. If the writer failed, its error ends
        // the run and the item stays pending.
        shared.outbox.put(finished).await;
        drop(ticket);
        return;
    }
}
