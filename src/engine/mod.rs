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

mod account;
mod checkpoint;
mod choose;
mod deadline;
mod guard;
mod held;
mod outage;
mod plan;
mod run;

pub use account::ask_vendor;
pub use choose::Nothing;
pub use plan::Plan;
pub use run::{OutageCause, Outcome, Ran, run};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{Call, CallError, Vendor};
use crate::config::Config;
use crate::credits::{Budget, Reservation, Spent};
use crate::fleet::Crew;
use crate::lease::Lease;
use crate::pacer::{Backoff, Blocked, Pacer, Ticket};
use crate::store::{Finished, Item, Resolution, Store};
use crate::tally::Tally;

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
    /// The vendor asked for no call before `until`, past `retry.max_delay`
    /// (a daily or monthly quota), or `window`, one of `limits.windows`, has
    /// no call free before then: waiting it out would hold the run for hours.
    Quota {
        until: jiff::Timestamp,
        window: Option<crate::config::Window>,
    },
    /// The vendor was down longer than `retry.max_outage`.
    Outage,
    /// This process's lease went stale (suspended or cut off past
    /// `lock.stale_after`): another may have taken its work over.
    Fenced,
}

struct Shared {
    vendor: Vendor,
    pacer: Arc<Pacer>,
    budget: Arc<Budget>,
    tally: Arc<Tally>,
    stop: CancellationToken,
    reason: Mutex<Option<Stop>>,
    /// Why no call can succeed (`CallError::Fatal`, `CallError::Refused`): the
    /// run ends with this error, the first one seen.
    fatal: Mutex<Option<anyhow::Error>>,
    outbox: Arc<checkpoint::Outbox>,
    retry: crate::config::Retry,
    /// A worker of a joined run: the shared rate and pause.
    crew: Crew,
    lease: Arc<Lease>,
    /// The contract guard: records' first answers, failed or not.
    guard: std::sync::Mutex<guard::Guard>,
    /// Whether a call's reported cost above `credits.cost` was warned of.
    cost_over_warned: AtomicBool,
}

impl Shared {
    /// Stops the run for a reason no retry can mend; the first such reason is
    /// the run's error.
    async fn stop_for_good(&self, why: anyhow::Error) {
        self.fatal.lock().await.get_or_insert(why);
        self.stop.cancel();
    }

    /// `work`, unless the run stops first: `None` once it is stopped, whether
    /// before `work` is ready or at the same moment (the stop wins), so no new
    /// work starts after a stop.
    async fn unless_stopped<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => None,
            done = work => Some(done),
        }
    }

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
    /// Alone, or with `--join` the run's other workers, who share the queue,
    /// rate and credits.
    pub crew: Crew,
}

/// How [`execute`] ended: why it stopped, or the error that stopped it;
/// and whether every answer it had was checkpointed (a stop for an answer
/// that says no call can succeed, a refused key, is such an error: the
/// process then leaves cleanly, its unused credits given back).
pub struct Executed {
    pub stop: Result<Stop>,
    pub settled: bool,
}

/// Works the run's pending items until none is left or something stops it.
pub async fn execute(job: Job, shutdown: &CancellationToken) -> Executed {
    let mut settled = false;
    let stop = execute_settling(job, shutdown, &mut settled).await;
    Executed { stop, settled }
}

async fn execute_settling(
    job: Job,
    shutdown: &CancellationToken,
    settled: &mut bool,
) -> Result<Stop> {
    let Job {
        config,
        store,
        vendor,
        pacer,
        tally,
        budget,
        run,
        lease,
        crew,
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
        crew,
        lease,
        guard: std::sync::Mutex::new(guard::Guard::new(
            config.limits.failure_window.get() as usize,
            config.limits.max_failure_share,
        )),
        cost_over_warned: AtomicBool::new(false),
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
        shared.crew.clone(),
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
    *settled = true;
    if let Some(why) = shared.fatal.lock().await.take() {
        return Err(why);
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
        let reading = checkpoint::reconnecting(
            || shared.crew.next_items(store, run, after, &shared.budget),
            shared.retry.max_outage,
            "waiting to read the next items",
        );
        let Some(items) = shared.unless_stopped(reading).await else {
            return Ok(());
        };
        let items = items?;
        let Some(last) = items.last() else {
            return Ok(());
        };
        after = last.seq;
        for item in items {
            let Some(slot) = shared.unless_stopped(slots.clone().acquire_owned()).await else {
                return Ok(());
            };
            let slot = slot.expect("never closed");
            // Credits are reserved here, in queue order, so the budget reaches
            // exactly the stalest records (the cut `estimate` predicts), whatever
            // order the workers' calls then go out in.
            let Some(reserved) = shared.unless_stopped(shared.budget.reserve()).await else {
                return Ok(());
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

/// The record's result, counted and handed to the checkpoint writer.
async fn finish(
    shared: &Shared,
    item: Item,
    resolution: Resolution,
    charges: Vec<(Arc<str>, i64)>,
) {
    match &resolution {
        Resolution::Done(_) => Tally::bump(&shared.tally.done),
        Resolution::Failed(reason) => {
            Tally::bump(&shared.tally.failed);
            tracing::debug!(key = %item.key, %reason, "record failed");
        }
        Resolution::NoMatch(reason) => {
            Tally::bump(&shared.tally.no_match);
            tracing::debug!(key = %item.key, %reason, "no match at the vendor");
        }
        Resolution::Pending => {}
    }
    let finished = Finished {
        seq: item.seq,
        key: item.key,
        attempts: item.attempts,
        resolution,
        charges,
    };
    shared.outbox.put(finished).await;
}

/// Waits for the next attempt's turn: a concurrency ticket, the fleet's rate
/// token and pause, the attempt's credits, the lease. `None` once the run stops
/// (halted here if this is what stops it).
async fn ready(shared: &Shared, item: &Item, hold: &mut Hold) -> Option<Ticket> {
    let pacer = &shared.pacer;
    let ticket = match shared.unless_stopped(pacer.acquire()).await? {
        Ok(ticket) => ticket,
        Err(Blocked::Outage) => {
            shared.halt(Stop::Outage).await;
            return None;
        }
        Err(Blocked::Window(used)) => {
            stop_for_quota(shared, item, used.wait, Some(used.window)).await;
            return None;
        }
    };
    if shared.stop.is_cancelled() {
        return None;
    }
    if hold.reservation.is_none() {
        // The last attempt was billed: this one needs credits of its own.
        match shared.unless_stopped(shared.budget.reserve()).await? {
            Ok(r) => hold.reservation = Some(r),
            Err(spent) => {
                shared.halt(stop_for(spent)).await;
                return None;
            }
        }
    }
    // A process suspended past its lease must not spend what it no longer holds.
    if !shared.unless_stopped(shared.lease.check()).await? {
        shared.halt(Stop::Fenced).await;
        return None;
    }
    Some(ticket)
}

/// The call's credits: a billed answer's are a charge of the record (of the
/// period it was reserved in); an unbilled one's pay for the record's next try.
fn account(
    shared: &Shared,
    call: &Call,
    reservation: Reservation,
    hold: &mut Hold,
    charges: &mut Vec<(Arc<str>, i64)>,
) {
    let budget = &shared.budget;
    if call.billed {
        let cost = call.cost.unwrap_or(budget.cost());
        if cost > budget.cost() && !shared.cost_over_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the vendor reports a call that cost {cost} credits, more than credits.cost ({}), \
                 the most reserved for one call: it is charged in full; raise credits.cost so \
                 the budget can stop in time",
                budget.cost()
            );
        }
        let period = budget.charge(reservation, call.credits_left, cost);
        match charges.last_mut() {
            Some((p, credits)) if *p == period => *credits += cost,
            _ => charges.push((period, cost)),
        }
    } else {
        budget.unbilled(&reservation);
        hold.reservation = Some(reservation);
        if let Some(left) = call.credits_left {
            budget.vendor_says(left);
        }
    }
}

/// Stops the run on an answer that says no other call can succeed now; the
/// record stays pending, no attempt spent on it.
async fn stop_on(shared: &Shared, item: &Item, e: CallError) {
    let tally = &shared.tally;
    match e {
        CallError::Fatal(why) => {
            // A call made, if one no answer can come of (an untrusted
            // certificate): a connection error among the call totals. The
            // operator must change something: a usage error, exit 2.
            Tally::bump(&tally.transient);
            shared.stop_for_good(crate::error::usage(why)).await;
        }
        CallError::Refused(why) => {
            // An answer, and not the record's fault: no other record is sent to
            // be refused the same way.
            Tally::bump(&tally.permanent);
            tracing::warn!(key = %item.key, "the vendor refused the call: {why}; stopping");
            let refused = crate::error::Refused(format!(
                "the vendor refused the call: {why}. Nothing was marked failed and no \
                 more calls were sent; check the key in api.headers or api.query (or the \
                 variable it reads: a wrong or expired key, an account without access to \
                 this API), or the [[api.answers]] rule that calls this answer fatal, and \
                 rerun to resume"
            ));
            shared.stop_for_good(refused.into()).await;
        }
        CallError::OutOfCredits => {
            // A refusal for the vendor's limits, as a 429 is: the call counts
            // among the calls.
            Tally::bump(&tally.throttled);
            tracing::warn!(key = %item.key, "the vendor answered 402: out of credits; stopping");
            shared.halt(Stop::OutOfCredits).await;
        }
        CallError::Throttled { .. }
        | CallError::Transient { .. }
        | CallError::Permanent(_)
        | CallError::NoMatch(_)
        | CallError::Later { .. } => {
            unreachable!("only the answers that stop a run")
        }
    }
}

/// A wait past `retry.max_delay`: a quota's window, not a burst, the vendor's
/// (its Retry-After) or one of `limits.windows` used up. The run ends, and the
/// next waits for it (see `Stop::Quota`).
async fn stop_for_quota(
    shared: &Shared,
    item: &Item,
    wait: std::time::Duration,
    window: Option<crate::config::Window>,
) {
    // Up to the whole second, as it is shown and stored.
    let until = crate::credits::now() + wait;
    let until =
        jiff::Timestamp::from_second(until.as_second() + i64::from(until.subsec_nanosecond() > 0))
            .unwrap_or(until);
    let wait = humantime::format_duration(std::time::Duration::from_secs(wait.as_secs()));
    match window {
        None => tracing::warn!(
            key = %item.key,
            "the vendor asks for no call for {wait} (past retry.max_delay): stopping"
        ),
        Some(w) => tracing::warn!(
            key = %item.key,
            "limits.windows {w} has no call free for {wait} (past retry.max_delay): stopping"
        ),
    }
    shared.halt(Stop::Quota { until, window }).await;
}

/// Counts a record's first answer that failed it for good; once the contract
/// guard trips, stops the run before the budget drains on answers nobody can
/// use (this record is still failed and checkpointed).
async fn guard_failed(shared: &Shared, reason: &str) {
    let tripped = shared.guard.lock().expect("guard lock").failed(reason);
    let Some(t) = tripped else {
        return;
    };
    tracing::warn!(
        "{} of the last {} records' first answers failed: stopping",
        t.failed,
        t.of
    );
    let why = crate::error::Refused(format!(
        "{} of the last {} records' first answers failed for good, {} of them with `{}`: \
         the vendor's answers no longer fit the config (a changed schema, a wrong api.path \
         or api.response?). Nothing more was sent; fix the config and rerun to resume \
         (limits.max_failure_share and limits.failure_window set this guard)",
        t.failed, t.of, t.count, t.reason
    ));
    shared.stop_for_good(why.into()).await;
}

/// Waits out the record's backoff, and longer while retries are over their
/// share. False if the run stopped meanwhile.
async fn wait_to_retry(shared: &Shared, backoff: &mut Backoff, item: &Item, reason: &str) -> bool {
    loop {
        let wait = shared.pacer.retry_wait(backoff.next_delay());
        tracing::debug!(key = %item.key, attempt = item.attempts, ?wait, %reason, "retrying later");
        if shared
            .unless_stopped(tokio::time::sleep(wait))
            .await
            .is_none()
        {
            return false;
        }
        if shared.pacer.try_retry() {
            return true;
        }
    }
}

/// One try of the record: the call sent with its credits reserved, its cost
/// accounted, and what it says told to the pacer (whether it is part of an
/// outage, too).
async fn try_once(
    shared: &Shared,
    item: &Item,
    ticket: &mut Ticket,
    hold: &mut Hold,
    charges: &mut Vec<(Arc<str>, i64)>,
) -> (Call, bool) {
    let pacer = &shared.pacer;
    pacer.sending(ticket, item.attempts > 0);
    let reservation = hold.reservation.take().expect("reserved above");
    shared.budget.sending(&reservation);
    let call = shared.vendor.call(item).await;
    account(shared, &call, reservation, hold, charges);
    pacer.saw(call.status, call.failure());
    let (signal, retry_after) = call.signal();
    let outage = pacer.observe(ticket, item.seq, signal, retry_after, call.hint);
    (call, outage)
}

/// Waits out a `later` answer's wait (without one, the retry backoff's);
/// `false` if the run stopped meanwhile.
async fn wait_later(
    shared: &Shared,
    after: Option<std::time::Duration>,
    backoff: &mut Option<Backoff>,
    item: &Item,
    reason: &str,
) -> bool {
    let wait = after.unwrap_or_else(|| {
        let backoff = backoff.get_or_insert_with(|| Backoff::new(&shared.retry));
        backoff.next_delay()
    });
    tracing::debug!(key = %item.key, ?wait, %reason, "not ready: trying later");
    shared
        .unless_stopped(tokio::time::sleep(wait))
        .await
        .is_some()
}

/// A call that resolved its record (its values, or no match): an attempt,
/// and a good first answer for the contract guard.
fn answered(shared: &Shared, item: &mut Item, first: bool, resolution: Resolution) -> Resolution {
    Tally::bump(&shared.tally.ok);
    if first {
        shared.guard.lock().expect("guard lock").good();
    }
    item.attempts += 1;
    resolution
}

/// The stop a spent budget means.
fn stop_for(spent: Spent) -> Stop {
    match spent {
        Spent::At(_) => Stop::Budget,
        Spent::Fenced => Stop::Fenced,
    }
}

/// The item, unless no call can send it intact: then it fails at once,
/// unbilled (the hold is given back when dropped).
async fn sendable(shared: &Shared, item: Item) -> Option<Item> {
    let Some(why) = shared.vendor.refuses(&item) else {
        return Some(item);
    };
    tracing::warn!("record {} not sent: {why}", crate::api::shown(&item.key));
    finish(shared, item, Resolution::Failed(why), Vec::new()).await;
    None
}

async fn work(shared: Arc<Shared>, item: Item, _slot: OwnedSemaphorePermit, mut hold: Hold) {
    let tally = &shared.tally;
    let mut backoff: Option<Backoff> = None;
    // Answers that said "not ready, try later": not attempts, but bounded.
    let mut laters = 0;
    let mut charges: Vec<(Arc<str>, i64)> = Vec::new();
    let Some(mut item) = sendable(&shared, item).await else {
        return;
    };
    // The record's tries, until resolved (with the last ticket) or stopped (`None`).
    let resolved = loop {
        let Some(mut ticket) = ready(&shared, &item, &mut hold).await else {
            break None;
        };
        let first = item.attempts == 0;
        let (call, outage) = try_once(&shared, &item, &mut ticket, &mut hold, &mut charges).await;
        let throttle_wait = call.throttle_wait();
        let resolution = match call.result {
            Ok(values) => answered(&shared, &mut item, first, Resolution::Done(values)),
            Err(CallError::NoMatch(reason)) => {
                answered(&shared, &mut item, first, Resolution::NoMatch(reason))
            }
            Err(CallError::Later { reason, after }) => {
                Tally::bump(&tally.transient);
                laters += 1;
                if laters >= shared.retry.max_attempts.get() {
                    Resolution::Failed(format!("{reason}: still not ready after {laters} tries"))
                } else {
                    drop(ticket);
                    if !wait_later(&shared, after, &mut backoff, &item, &reason).await {
                        break None;
                    }
                    continue;
                }
            }
            Err(CallError::Throttled { .. })
                if let Some(wait) = throttle_wait
                    && wait > shared.retry.max_delay =>
            {
                Tally::bump(&tally.throttled);
                stop_for_quota(&shared, &item, wait, None).await;
                break None;
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
                    if !wait_to_retry(&shared, backoff, &item, &reason).await {
                        break None;
                    }
                    continue;
                }
            }
            Err(CallError::Permanent(reason)) => {
                Tally::bump(&tally.permanent);
                item.attempts += 1;
                if first {
                    guard_failed(&shared, &reason).await;
                }
                Resolution::Failed(reason)
            }
            Err(e @ (CallError::Fatal(_) | CallError::Refused(_) | CallError::OutOfCredits)) => {
                stop_on(&shared, &item, e).await;
                break None;
            }
        };
        break Some((resolution, ticket));
    };
    match resolved {
        // The ticket (and its concurrency permit) is held until the result is in
        // the outbox: see the bound in `checkpoint`. If the writer failed, its
        // error ends the run and the item stays pending.
        Some((resolution, ticket)) => {
            finish(&shared, item, resolution, charges).await;
            drop(ticket);
        }
        // Stopped between tries: the record stays pending, but what its billed
        // tries cost must reach the ledger, or the credits reserved for them
        // would go back to the period as unused.
        None if !charges.is_empty() => finish(&shared, item, Resolution::Pending, charges).await,
        None => {}
    }
}
