//! When a call may go out, and how fast the job runs: an adaptive concurrency
//! limit, a token bucket at an adaptive rate under the configured ceiling, one
//! pause shared by every worker, a circuit breaker, and a retry budget. The pacer
//! decides *when*; what an answer means is the api's business, and the engine
//! reports each answer back through [`Pacer::observe`].
//!
//! - [`control`]: the control laws (slow start, AIMD with a latency gradient,
//!   throttle-driven rate), a clock-free state machine.
//! - [`limit`]: the semaphore whose size can change while permits are out.
//! - [`breaker`]: all workers stop and one probe goes out while the vendor is down.
//! - [`window`]: `limits.windows`, each held exactly (at most N calls in any W
//!   as the vendor counts them); one used up for longer than `retry.max_delay`
//!   ends the run as a vendor's quota does.
//! - [`Peers`]: the other workers of a joined run, as the pacer meets them (their
//!   rate token, their pause); `fleet` implements it, so the pacer imports
//!   nothing of the fleet and the engine never speaks of it when it paces.
//!
//! governor is kept behind this interface: its timer does not follow tokio's
//! paused test clock, so the logic around it is tested on paused time and the
//! bucket itself through real time in the integration tests.

mod breaker;
mod control;
mod hint;
mod limit;
pub mod reach;
mod window;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use crate::config::{Limits, Retry};
pub use breaker::Admission;
use breaker::{Breaker, Outcome};
pub use control::Signal;
use control::{Control, Setting};
pub use hint::QuotaHint;
use limit::{Limit, Permit};
pub use window::UsedUp;
use window::{Slot, Windows};

/// The right to make one call: a concurrency permit, and the probe token when the
/// breaker is open. Hand it back through [`Pacer::observe`].
pub struct Ticket {
    _permit: Permit,
    /// Its slot in each of `limits.windows`.
    slot: Slot,
    probe: bool,
    /// Its place in the order calls were sent, once sent.
    seq: Option<u64>,
    /// The call retries a record whose last try failed.
    retry: bool,
    /// Calls in flight when this one was sent, itself included.
    level: usize,
}

/// A call that failed, as the reachability check takes it: why, and whether no
/// connection could be made at all.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: String,
    pub connect: bool,
}

/// The circuit breaker's state, for the run's other workers and for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutageView {
    pub open: bool,
    /// This worker's probe is out.
    pub probing: bool,
    /// Probes that failed so far.
    pub probes_failed: u64,
    /// Why the last failed call failed.
    pub cause: Option<String>,
}

/// The other workers of a joined run, as the pacer meets them: a rate token all
/// of them share (which may bring a pause or an outage another found, through
/// [`Pacer::pause`] and [`Pacer::outage_from_fleet`]), and this worker's
/// throttles, which hold all of them. A run alone has none.
pub trait Peers: Send + Sync {
    /// Waits for the next token of the rate every worker shares.
    fn token<'a>(&'a self, pacer: &'a Pacer) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
    /// This worker was throttled: every worker waits `pause`.
    fn throttled(&self, pause: Duration);
}

/// Why no call may go, for longer than the pacer waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// The vendor has been down longer than `retry.max_outage`.
    Outage,
    /// One of `limits.windows` has no call free before `retry.max_delay`.
    Window(UsedUp),
}

pub struct Pacer {
    limit: Limit,
    gate: Gate,
    windows: Windows,
    paused_until: Mutex<Option<Instant>>,
    breaker: Breaker,
    /// Calls sent so far: each call's place in the send order.
    sent: AtomicU64,
    control: Mutex<Control>,
    retries: RetryBudget,
    max_pause: Duration,
    base_delay: Duration,
    /// Whether the vendor was reached at all, and the last failure's cause.
    pub reach: reach::Reach,
    /// A joined run's other workers ([`Pacer::join`]).
    peers: OnceLock<Arc<dyn Peers>>,
}

/// The slowest pace, calls per second: one call per 116 days (10^7 s), longer
/// than any credit period, so any `--pace-until` is honoured.
pub const SLOWEST_RATE: f64 = 1e-7;

/// A live view of the pacer, for the progress display.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gauges {
    pub concurrency: usize,
    pub rate: f64,
    pub breaker_open: bool,
    /// Calls sent and not yet answered.
    pub in_flight: usize,
    /// A pause (a throttle, or a `remaining=0` reset) holds every worker.
    pub paused: bool,
}

impl Pacer {
    pub fn new(limits: &Limits, retry: &Retry) -> Pacer {
        let control = Control::new(limits.max_concurrency.get() as usize, limits.rate);
        let start = control.setting();
        Pacer {
            limit: Limit::new(start.concurrency),
            gate: Gate::new(start.rate, limits.rate, limits.burst.get()),
            windows: Windows::new(&limits.windows),
            paused_until: Mutex::new(None),
            breaker: Breaker::new(retry.max_outage),
            sent: AtomicU64::new(0),
            control: Mutex::new(control),
            retries: RetryBudget::default(),
            max_pause: retry.max_delay,
            base_delay: retry.base_delay,
            reach: reach::Reach::new(retry.connect_grace),
            peers: OnceLock::new(),
        }
    }

    /// This worker paces with `peers` from now on: each call also waits for the
    /// rate they share, a throttle holds them all, and the breaker is theirs
    /// too (it probes only when granted: [`Pacer::grant_probe`]).
    ///
    /// `limits.windows` stay this worker's own: each worker holds every
    /// window by itself (the fleet shares only the rate's bucket).
    pub fn join(&self, peers: Arc<dyn Peers>) {
        if self.peers.set(peers).is_ok() {
            self.breaker.share();
            if self.windows.any() {
                tracing::warn!(
                    "limits.windows are held by each worker of a joined run on its own: N \
                     workers may send N times a window's calls; give each worker's config \
                     its share of them"
                );
            }
        }
    }

    /// Waits until a call may go: the breaker admits it, a concurrency permit is
    /// free, every one of `limits.windows` has a slot, no pause is in force, and
    /// the rate allows it. The pause is checked again after the rate token, so a
    /// throttle that arrives while a worker waits for its token still holds it
    /// back. A window with no slot free before `retry.max_delay` is not waited
    /// for: `Blocked::Window` says how long it would be.
    pub async fn acquire(&self) -> Result<Ticket, Blocked> {
        loop {
            let probe = match self.breaker.admit().await {
                Admission::Call => false,
                // A vendor never reached in this run is not down but not there
                // (a wrong api.base_url): stop after retry.connect_grace.
                Admission::Probe if self.reach.unreachable(Instant::now()) => {
                    return Err(Blocked::Outage);
                }
                Admission::Probe => true,
                Admission::GiveUp => return Err(Blocked::Outage),
            };
            let permit = self.permit().await;
            // The breaker may have opened while this worker queued for its permit:
            // back to the breaker at once, not through the rate gate, or the
            // queue of workers would spend a second of tokens ahead of the probe.
            if !probe && self.breaker.is_open() {
                continue;
            }
            // The window's slot before the rate's token: a token would be stale
            // after a wait for the window. Given back if no call goes after all.
            let slot = self
                .windows
                .take(self.max_pause)
                .await
                .map_err(Blocked::Window)?;
            // A token taken while a pause was in force is stale: everyone who waited
            // through the pause would go at once when it ends. Take a fresh one.
            loop {
                self.wait_pause().await;
                self.gate.ready().await;
                if !self.is_paused() {
                    break;
                }
            }
            if let Some(peers) = self.peers.get() {
                // Joined, the table's shared bucket: all workers together keep to
                // the rate; a throttle another saw may have come with the token.
                peers.token(self).await;
                self.wait_pause().await;
            }
            // The breaker may have opened (this worker's, or the fleet's) while
            // this worker waited: only the probe goes out during an outage.
            if probe || !self.breaker.is_open() {
                return Ok(Ticket {
                    _permit: permit,
                    slot,
                    probe,
                    seq: None,
                    retry: false,
                    level: 0,
                });
            }
        }
    }

    /// A concurrency permit. Until the first answer, waiters look every 50 ms at
    /// how long the first calls have been out (`Control::on_wait`): a slow vendor's
    /// round trip is then known to be long before it is measured.
    async fn permit(&self) -> Permit {
        loop {
            if self.control.lock().expect("control lock").answered() {
                return self.limit.acquire().await;
            }
            tokio::select! {
                permit = self.limit.acquire() => return permit,
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    let setting = self.control.lock().expect("control lock").on_wait(Instant::now());
                    self.apply(setting);
                }
            }
        }
    }

    /// How long a record waits before its retry, given its backoff's `delay`: a
    /// tenth of it while the vendor is otherwise healthy (the breaker closed, under
    /// [`control::HEALTHY_SHARE`] of recent answers failed), so the records that
    /// failed once do not wait out whole backoffs after the rest is done; the retry
    /// budget already bounds how many retries go out. The whole delay otherwise.
    pub fn retry_wait(&self, delay: Duration) -> Duration {
        let share = self.control.lock().expect("control lock").failure_share();
        if !self.breaker.is_open() && share < control::HEALTHY_SHARE {
            delay / 10
        } else {
            delay
        }
    }

    /// Marks the call as sent, now; `retry` if its record's last try failed.
    pub fn sending(&self, ticket: &mut Ticket, retry: bool) {
        let now = Instant::now();
        ticket.retry = retry;
        ticket.slot.sent();
        ticket.seq = Some(self.sent.fetch_add(1, Ordering::Relaxed));
        ticket.level = self.control.lock().expect("control lock").on_send(now);
    }

    /// What the call's answer said; returns whether the breaker is open now, in
    /// which case a failed call should not count as an attempt (an outage never
    /// spends the records' attempts).
    /// `item` identifies the record (its queue position), so the breaker can tell
    /// an outage from one record that keeps failing.
    pub fn observe(
        &self,
        ticket: &mut Ticket,
        item: i64,
        signal: Signal,
        retry_after: Option<Duration>,
        hint: Option<QuotaHint>,
    ) -> bool {
        let now = Instant::now();
        // The vendor has counted the call by now: its windows' slots end a
        // window from here.
        ticket.slot.answered();
        let seq = ticket
            .seq
            .take()
            .unwrap_or_else(|| self.sent.fetch_add(1, Ordering::Relaxed));
        let ok = !matches!(signal, Signal::Overloaded | Signal::Failed);
        let setting = {
            let mut control = self.control.lock().expect("control lock");
            if let Some(rate) = hint.and_then(|h| h.rate()) {
                control.on_stated_rate(rate);
            }
            if signal == Signal::Throttled {
                control.on_throttled(
                    retry_after.unwrap_or(self.base_delay).min(self.max_pause),
                    now,
                )
            } else if !ok && self.breaker.is_open() {
                // During an outage failures say nothing about capacity: leave the
                // limits where they were, for the restart to halve.
                control.on_signal(Signal::Answered, now)
            } else {
                control.on_signal(signal, now)
            }
        };
        self.apply(setting);
        if matches!(signal, Signal::Success(_)) {
            self.retries.deposit();
        }
        if signal == Signal::Throttled {
            let wait = retry_after.unwrap_or(self.base_delay);
            self.pause(wait);
            if let Some(peers) = self.peers.get() {
                peers.throttled(wait);
            }
        } else if let Some(QuotaHint {
            remaining: Some(0),
            reset: Some(reset),
            ..
        }) = hint
        {
            // The vendor says the next call would be refused: wait for its reset
            // instead of spending a rejected call.
            self.pause(reset);
        }
        if ticket.probe {
            ticket.probe = false;
            self.breaker.probe_result(ok, seq, now);
            if ok {
                // Back from an outage: resume at a cautious pace.
                let setting = self.control.lock().expect("control lock").restart();
                self.apply(setting);
            }
        } else {
            let outcome = match signal {
                // A record failing again may be that record's fault (a poison key at
                // the tail of a run): only first tries tell an outage.
                Signal::Overloaded | Signal::Failed if ticket.retry => Outcome::Retried,
                Signal::Overloaded => Outcome::Overloaded(ticket.level),
                Signal::Failed => Outcome::Failed,
                _ => Outcome::Ok(ticket.level),
            };
            if self.breaker.record(item, seq, outcome, now) {
                let cause = self.reach.cause().unwrap_or_else(|| "no answer".into());
                tracing::warn!(
                    "the vendor fails every call ({cause}): pausing all workers and probing"
                );
            }
        }
        let open = self.breaker.is_open();
        if !open && !ok && self.peers.get().is_some() {
            // Another worker may have found the vendor down already: look now,
            // not at the next rate token, before this one sends more into it.
            self.breaker.hint();
        }
        open
    }

    /// What a call came back with, for [`reach::Reach`]: an HTTP status means the
    /// vendor is there; an error is the cause the outage line and the stop name.
    pub fn saw(&self, status: Option<u16>, failure: Option<Failure>) {
        if let Some(f) = failure {
            let connect = status.is_none() && f.connect;
            self.reach.failed(&f.reason, connect, Instant::now());
        }
        if status.is_some() {
            self.reach.answered();
        }
    }

    fn apply(&self, setting: Setting) {
        if setting.concurrency != self.limit.size()
            || (setting.rate - self.gate.rate()).abs() > 0.01 * setting.rate
        {
            tracing::debug!(
                concurrency = setting.concurrency,
                rate = format!("{:.1}", setting.rate),
                "pace"
            );
        }
        self.limit.resize(setting.concurrency);
        self.gate.set(setting.rate);
    }

    /// Pauses every worker for `wait` (at most `retry.max_delay`), or extends a
    /// shorter pause. One throttled answer means the client is throttled, not the call.
    pub fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait.min(self.max_pause);
        let mut paused = self.paused_until.lock().expect("pause lock");
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    fn is_paused(&self) -> bool {
        self.paused_until
            .lock()
            .expect("pause lock")
            .is_some_and(|t| t > Instant::now())
    }

    /// Returns once no pause is in force.
    pub async fn wait_pause(&self) {
        loop {
            let until = *self.paused_until.lock().expect("pause lock");
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }

    /// The breaker as the fleet sees it.
    pub fn outage_view(&self) -> OutageView {
        let (open, probing, probes_failed) = self.breaker.view();
        OutageView {
            open,
            probing,
            probes_failed,
            cause: self.reach.cause(),
        }
    }

    /// Returns when [`Pacer::outage_view`] may have changed, or on a
    /// [`Pacer::outage_hint`].
    pub async fn outage_news(&self) {
        self.breaker.news().await;
    }

    /// The fleet may have news about the outage (its shared rate said so).
    pub fn outage_hint(&self) {
        self.breaker.hint();
    }

    /// The fleet's breaker opened (`true`) or closed (`false`) on another
    /// worker's evidence: this worker's follows.
    pub fn outage_from_fleet(&self, open: bool) {
        if open {
            if self.breaker.open_from_fleet(Instant::now()) {
                tracing::info!("another worker finds the vendor down: pausing, one worker probes");
            }
        } else if self
            .breaker
            .close_from_fleet(self.sent.load(Ordering::Relaxed))
        {
            tracing::info!("another worker's probe was answered: resuming gently");
            let setting = self.control.lock().expect("control lock").restart();
            self.apply(setting);
        }
    }

    /// This worker carries the fleet's next probe.
    pub fn grant_probe(&self) {
        self.breaker.grant_probe(Instant::now());
    }

    /// Holds the rate at or under `rate` (at most `limits.rate`): `--pace-until`.
    pub fn set_ceiling(&self, rate: f64) {
        let setting = self.control.lock().expect("control lock").set_ceiling(rate);
        self.apply(setting);
    }

    /// Takes one retry from the budget, or returns false when retries already
    /// make up their share of calls.
    pub fn try_retry(&self) -> bool {
        self.retries.withdraw()
    }

    pub fn gauges(&self) -> Gauges {
        Gauges {
            concurrency: self.limit.size(),
            rate: self.gate.rate(),
            breaker_open: self.breaker.is_open(),
            in_flight: self.control.lock().expect("control lock").in_flight(),
            paused: self.is_paused(),
        }
    }
}

/// The token bucket. governor's quota cannot change, so a new rate builds a new
/// bucket, emptied at birth so that a change never releases a burst: the first
/// second at any rate sends no more than that rate. A token from a bucket that was
/// replaced while its holder waited is taken again from the new one, so two
/// buckets are never drawn from at once.
struct Gate {
    limiter: RwLock<(u64, Arc<DefaultDirectRateLimiter>)>,
    /// The rate's f64 bits: a paced rate can be far below one call a second.
    rate_bits: AtomicU64,
    ceiling: f64,
    burst_at_ceiling: u32,
}

impl Gate {
    fn new(rate: f64, ceiling: f64, burst_at_ceiling: u32) -> Gate {
        let gate = Gate {
            limiter: RwLock::new((
                0,
                Arc::new(RateLimiter::direct(Quota::per_second(nonzero(1)))),
            )),
            rate_bits: AtomicU64::new(0),
            ceiling,
            burst_at_ceiling,
        };
        gate.set(rate);
        gate
    }

    fn rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Acquire))
    }

    /// Changes the rate when it moved by more than 1%.
    fn set(&self, rate: f64) {
        let current = self.rate();
        if current > 0.0 && ((rate - current) / current).abs() <= 0.01 {
            return;
        }
        // The burst scales with the rate: a few calls of slack at any speed.
        let burst = (f64::from(self.burst_at_ceiling) * rate / self.ceiling)
            .round()
            .max(1.0) as u32;
        let period = Duration::from_secs_f64(1.0 / rate.max(SLOWEST_RATE));
        let quota = Quota::with_period(period)
            .expect("a positive period")
            .allow_burst(nonzero(burst));
        let limiter = RateLimiter::direct(quota);
        let _ = limiter.check_n(nonzero(burst));
        {
            let mut current = self.limiter.write().expect("gate lock");
            *current = (current.0 + 1, Arc::new(limiter));
        }
        self.rate_bits.store(rate.to_bits(), Ordering::Release);
    }

    async fn ready(&self) {
        loop {
            let (generation, limiter) = self.limiter.read().expect("gate lock").clone();
            limiter.until_ready().await;
            if self.limiter.read().expect("gate lock").0 == generation {
                return;
            }
        }
    }
}

fn nonzero(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n.max(1)).expect("max(1) is non-zero")
}

/// Retries as a share of calls (after Finagle's retry budget): every success
/// deposits a fifth of a retry, every retry withdraws one. A small reserve lets a
/// run that starts badly retry a little, and a trickle of a few retries per second
/// is always allowed, so the last records of a run are never starved of the
/// deposits that only other records' successes bring. Kept in tenths, exactly.
struct RetryBudget {
    state: Mutex<(u64, Instant)>,
}

/// Retries allowed per success, in tenths: 2 = one retry per five successes
/// (Finagle's and the AWS SDKs' share).
const RETRY_SHARE_TENTHS: u64 = 2;
const RETRY_RESERVE: u64 = 50;
/// Retries always allowed per second, whatever the successes.
const RETRY_TRICKLE_PER_SEC: f64 = 10.0;

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            state: Mutex::new((RETRY_RESERVE * 10, Instant::now())),
        }
    }
}

impl RetryBudget {
    fn deposit(&self) {
        let mut s = self.state.lock().expect("budget lock");
        s.0 = (s.0 + RETRY_SHARE_TENTHS).min(RETRY_RESERVE * 100);
    }

    fn withdraw(&self) -> bool {
        let mut s = self.state.lock().expect("budget lock");
        let now = Instant::now();
        let trickle = (now.duration_since(s.1).as_secs_f64() * RETRY_TRICKLE_PER_SEC * 10.0) as u64;
        if trickle > 0 {
            s.0 = (s.0 + trickle).min(RETRY_RESERVE * 100);
            s.1 = now;
        }
        let granted = s.0 >= 10;
        if granted {
            s.0 -= 10;
        }
        granted
    }
}

/// The waits between attempts of one record after transient failures: exponential
/// from `retry.base_delay`, jittered, never above `retry.max_delay` (backon's jitter
/// may add up to one more delay, so the cap is applied here too).
pub struct Backoff {
    delays: backon::ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn new(retry: &Retry) -> Backoff {
        let delays = ExponentialBuilder::default()
            .with_min_delay(retry.base_delay)
            .with_max_delay(retry.max_delay)
            .with_jitter()
            .without_max_times()
            .build();
        Backoff {
            delays,
            max: retry.max_delay,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn pacer(rate: u32, burst: u32, max: u32) -> Pacer {
        pacer_with(f64::from(rate), burst, max, &[])
    }

    /// A pacer at `rate` holding `windows` (`"4/1s"`, as `limits.windows`).
    fn pacer_with(rate: f64, burst: u32, max: u32, windows: &[&str]) -> Pacer {
        let nz = |n| NonZeroU32::new(n).unwrap();
        let limits = Limits {
            rate,
            burst: nz(burst),
            windows: windows
                .iter()
                .map(|w| crate::config::Window::try_from(w.to_string()).unwrap())
                .collect(),
            max_concurrency: nz(max),
            max_failure_share: 0.5,
            failure_window: nz(100),
        };
        let retry = Retry {
            connect_grace: Duration::from_secs(60),
            max_attempts: nz(5),
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_outage: Duration::from_secs(60),
        };
        Pacer::new(&limits, &retry)
    }

    /// One call through the pacer, answered with `signal`.
    async fn answer(
        p: &Pacer,
        signal: Signal,
        retry_after: Option<Duration>,
        hint: Option<QuotaHint>,
    ) {
        let mut t = p.acquire().await.unwrap();
        p.sending(&mut t, false);
        p.observe(&mut t, 1, signal, retry_after, hint);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_caller_until_it_ends() {
        let p = pacer(1000, 1, 4);
        let start = Instant::now();
        p.pause(Duration::from_secs(3));
        p.pause(Duration::from_secs(1)); // a shorter pause does not shorten it
        p.wait_pause().await;
        assert_eq!(start.elapsed().as_secs(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_is_capped_by_max_delay() {
        let p = pacer(1000, 1, 4);
        let start = Instant::now();
        p.pause(Duration::from_secs(3600));
        p.wait_pause().await;
        assert_eq!(start.elapsed().as_secs(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_pauses_everyone_for_the_vendors_time() {
        let p = pacer(1000, 10, 4);
        answer(&p, Signal::Throttled, Some(Duration::from_secs(2)), None).await;
        let start = Instant::now();
        p.wait_pause().await;
        assert_eq!(start.elapsed().as_secs(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_zero_waits_for_the_reset() {
        let p = pacer(1000, 10, 4);
        let reset = Some(Duration::from_secs(3));
        let hint = QuotaHint {
            remaining: Some(0),
            reset,
            ..QuotaHint::default()
        };
        answer(
            &p,
            Signal::Success(Duration::from_millis(5)),
            None,
            Some(hint),
        )
        .await;
        let start = Instant::now();
        p.wait_pause().await;
        assert_eq!(start.elapsed().as_secs(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stated_quota_sets_the_rate() {
        let p = pacer(1000, 10, 4);
        let window = Some(Duration::from_secs(1));
        let hint = QuotaHint {
            limit: Some(200),
            window,
            ..QuotaHint::default()
        };
        answer(
            &p,
            Signal::Success(Duration::from_millis(5)),
            None,
            Some(hint),
        )
        .await;
        assert_eq!(p.gauges().rate, 200.0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_start_is_gentle() {
        let p = pacer(400, 20, 64);
        let g = p.gauges();
        assert_eq!((g.concurrency, g.rate), (4, 400.0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_retry_budget_is_a_share_of_successes_plus_a_trickle() {
        let b = RetryBudget::default();
        let reserve = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(reserve, RETRY_RESERVE as usize);
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(
            (0..100).filter(|_| b.withdraw()).count(),
            20,
            "one per five successes"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            (0..100).filter(|_| b.withdraw()).count(),
            20,
            "10 per second with no successes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_wait_a_tenth_of_the_backoff_while_the_vendor_is_healthy() {
        let p = pacer(1000, 10, 64);
        let backoff = Duration::from_millis(500);
        // One call in ten fails: otherwise healthy.
        for i in 0..200 {
            let signal = if i % 10 == 0 {
                Signal::Failed
            } else {
                Signal::Success(Duration::from_millis(5))
            };
            answer(&p, signal, None, None).await;
        }
        assert_eq!(p.retry_wait(backoff), Duration::from_millis(50));
        // Most calls failing: not healthy, the whole backoff.
        for i in 0..200 {
            let signal = if i % 3 == 0 {
                Signal::Success(Duration::from_millis(5))
            } else {
                Signal::Failed
            };
            answer(&p, signal, None, None).await;
        }
        assert_eq!(p.retry_wait(backoff), backoff);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_vendors_first_round_trip_is_not_spent_at_four_in_flight() {
        let p = Arc::new(pacer(200, 10, 256));
        // The first four calls go out and are not answered for a while (a vendor
        // answering after a second or two).
        let mut out = Vec::new();
        for _ in 0..4 {
            let mut t = p.acquire().await.unwrap();
            p.sending(&mut t, false);
            out.push(t);
        }
        // Workers queue for permits (the engine has four per slot of the limit).
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..300 {
            let (p, tx) = (p.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = tx.send(p.permit().await);
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Out for half a second: the round trip is at least that, so the 200/s
        // need at least 100 in flight.
        let limit = p.gauges().concurrency;
        assert!(limit >= 100, "limit {limit} after 500 ms with no answer");
        let mut granted = 0;
        while rx.try_recv().is_ok() {
            granted += 1;
        }
        assert!(granted + 4 >= 100, "{granted} more permits granted");
        drop(out);
    }

    fn windowed(windows: &[&str]) -> Pacer {
        // Fast enough that governor's real-time bucket never holds a call.
        pacer_with(1e6, 1000, 64, windows)
    }

    #[tokio::test(start_paused = true)]
    async fn every_call_passes_every_window() {
        let p = windowed(&["4/1s", "10/5s"]);
        let start = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..25 {
            let mut t = p.acquire().await.unwrap();
            p.sending(&mut t, false);
            sent.push(start.elapsed().as_millis());
            p.observe(&mut t, 1, Signal::Success(Duration::ZERO), None, None);
        }
        // Four a second, and ten in any five seconds: the third five seconds'
        // ten start at 10 s.
        let at = |from: u128, to: u128| sent.iter().filter(|&&t| t >= from && t < to).count();
        for from in (0..12_000).step_by(250) {
            assert!(at(from, from + 1000) <= 4, "{sent:?}");
            assert!(at(from, from + 5000) <= 10, "{sent:?}");
        }
        assert_eq!(&sent[..4], &[0, 0, 0, 0]);
        assert_eq!(&sent[4..10], &[1000, 1000, 1000, 1000, 2000, 2000]);
        assert_eq!(&sent[10..14], &[5000, 5000, 5000, 5000]);
        assert_eq!(sent[20], 10_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_used_up_past_max_delay_blocks_at_once() {
        let p = windowed(&["100/1s", "3/1h"]);
        for _ in 0..3 {
            answer(&p, Signal::Success(Duration::ZERO), None, None).await;
        }
        let start = Instant::now();
        match p.acquire().await {
            Err(Blocked::Window(used)) => {
                assert_eq!(used.window.to_string(), "3/1h");
                assert_eq!(used.wait, Duration::from_secs(3600));
            }
            Err(Blocked::Outage) => panic!("an outage"),
            Ok(_) => panic!("a fourth call in the hour"),
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "not waited for");
    }

    #[test]
    fn a_new_bucket_starts_empty() {
        let gate = Gate::new(5.0, 5.0, 5);
        assert!(
            gate.limiter.read().unwrap().1.check().is_err(),
            "a full bucket would let 5 calls through at once"
        );
    }

    #[test]
    fn backoff_grows_and_stays_capped() {
        let retry = Retry {
            connect_grace: Duration::from_secs(60),
            max_attempts: NonZeroU32::new(5).unwrap(),
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_outage: Duration::from_secs(60),
        };
        let mut b = Backoff::new(&retry);
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert!(delays[9] >= Duration::from_millis(500), "{delays:?}");
    }

    #[test]
    fn a_deadline_a_month_away_is_paced_as_asked() {
        let p = pacer(100, 10, 16);
        // The run: 3 records to the end of a 20-day month.
        let rate = 3.0 / (20.0 * 86_400.0);
        p.set_ceiling(rate);
        let shown = p.gauges().rate;
        assert!((shown - rate).abs() < rate * 0.01, "{shown} for {rate}");
    }
}
