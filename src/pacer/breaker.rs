//! The circuit breaker: when the vendor fails every call, all workers stop and one
//! probe goes out on an exponential schedule; the first probe that succeeds closes
//! the breaker.
//!
//! "Every call" is a run of calls *consecutive in the order they were sent*, all
//! answered and all failed. Send order, because a success that arrives late for a
//! call sent before the outage says nothing about the vendor now, so it does not
//! hide the failures of the calls sent after it; consecutive, because a vendor
//! that fails one call in ten answers fast with its errors while its successes
//! are still on the way, and a few errors arriving together are not an outage.
//! How long the run must be depends on how often the vendor has lately failed
//! single calls: long enough that a run that long happens by chance less than
//! once in 100,000 calls (three calls from a vendor that has not failed lately,
//! four at 5%, five at 10%). And the failures must be first tries of as many
//! different records, three at least: a record that fails again and again (a
//! poison key at the tail of a run) is that record's problem, not an outage, so
//! its retries neither count nor break a run; and two poison keys next to each
//! other in the queue must not look like an outage, or the run would probe them
//! until `retry.max_outage`. The price: if the vendor goes down when only records
//! that already failed once are left, those use up their attempts.
//!
//! The workers of a joined run share one breaker through the database (see
//! `engine::outage`): a worker's breaker that opens opens everyone's, one worker
//! at a time carries the probe, and the first probe that succeeds closes them
//! all. In that mode ([`Breaker::share`]) a breaker probes only when the fleet
//! grants it the probe ([`Breaker::grant_probe`]).
//!
//! A capacity error (503 without Retry-After, a timeout) of a call sent with more
//! calls in flight than the vendor has lately answered is the concurrency law's
//! business, not an outage: a vendor capped at 8 calls refuses the 9th and 10th
//! at once while the first 8 are still out, and that must not stop the run. The
//! same error at a level the vendor has just served is counted.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How rare, per call, a run of failures must be by chance to be called an outage.
const CHANCE_OF_A_FALSE_TRIP: f64 = 1e-5;
/// The fewest and the most consecutive failures that open the breaker.
const TRIP_AFTER_AT_LEAST: usize = 3;
const TRIP_AFTER_AT_MOST: usize = 16;
/// The failure share assumed before any answer, and how fast the share follows the
/// answers (an exponential average over about this many calls).
const FIRST_FAILURE_SHARE: f64 = 0.01;
const FAILURE_SHARE_CALLS: f64 = 256.0;
/// Answers remembered while a run of failures may still be growing.
const ANSWERS_KEPT: usize = 1024;
/// The probe schedule: from 200 ms, doubling, jittered, at most this far apart.
/// The cap trades calls during an outage (about one per interval) against the
/// time lost after it ends (half an interval on average, a whole one at worst):
/// 750 ms keeps a 5 s outage to ten calls with the three that open the breaker,
/// and costs about 0.38 s.
const FIRST_PROBE: Duration = Duration::from_millis(200);
const PROBE_EVERY_AT_MOST: Duration = Duration::from_millis(750);

pub struct Breaker {
    state: Mutex<State>,
    changed: Notify,
    /// Wakes whoever shares the breaker's state (one waiter; a wake-up that
    /// finds nobody waiting is kept for the next).
    news: Notify,
    max_outage: Duration,
}

struct State {
    /// Send order of the newest call that succeeded.
    last_ok: Option<u64>,
    /// The most calls in flight at which a call succeeded, this second and the
    /// last: (since, this second's, the last second's).
    served: (Option<Instant>, usize, usize),
    /// The answers to calls sent after `last_ok`, by send order: the record of a
    /// failure, or `None` for an answer that says nothing either way.
    answered: BTreeMap<u64, Option<i64>>,
    /// The share of calls that failed lately, of those settled: a failure counts
    /// once a call sent after it has succeeded (it was not an outage).
    failure_share: f64,
    open: Option<Open>,
    /// Probes are granted by the fleet, not scheduled here.
    shared: bool,
    /// Probes answered so far (failed ones; a success closes the breaker).
    probes_failed: u64,
}

struct Open {
    since: Instant,
    next_probe: Instant,
    probing: bool,
    schedule: backon::ExponentialBackoff,
}

/// What a call's answer was, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Any answer from a working vendor, sent with this many calls in flight.
    Ok(usize),
    /// A capacity error (503 without Retry-After, timeout, refused connection),
    /// sent with this many calls in flight.
    Overloaded(usize),
    /// A server error.
    Failed,
    /// A failed retry of a record whose last try failed too: neither a failure
    /// of the vendor (two poison keys at the tail of a run must not look like an
    /// outage) nor a success.
    Retried,
}

/// How many consecutive failures make an outage, for a vendor that lately fails
/// `share` of its calls: the fewest whose chance run is rarer than
/// [`CHANCE_OF_A_FALSE_TRIP`].
fn trip_after(share: f64) -> usize {
    let share = share.clamp(1e-9, 0.999);
    // The fewest k with share^k <= the chance (less a hair, for exact powers).
    let needed = (CHANCE_OF_A_FALSE_TRIP.ln() / share.ln() - 1e-9).ceil() as usize;
    needed.clamp(TRIP_AFTER_AT_LEAST, TRIP_AFTER_AT_MOST)
}

impl State {
    fn follow_share(&mut self, failed: bool) {
        let x = if failed { 1.0 } else { 0.0 };
        self.failure_share += (x - self.failure_share) / FAILURE_SHARE_CALLS;
    }

    /// The records of the failures in the unbroken run of answered calls (failed,
    /// or neutral) that holds `seq`, in send order.
    fn failed_run_around(&self, seq: u64) -> Vec<i64> {
        let later = (seq..).zip(self.answered.range(seq..));
        let earlier = (0..seq).rev().zip(self.answered.range(..seq).rev());
        let unbroken = |(expected, (s, _)): &(u64, (&u64, &Option<i64>))| expected == *s;
        later
            .take_while(unbroken)
            .chain(earlier.take_while(unbroken))
            .filter_map(|(_, (_, item))| *item)
            .collect()
    }

    /// The most calls in flight the vendor served over the last second or two.
    fn served_level(&mut self, now: Instant) -> usize {
        let (since, this, _) = self.served;
        match since {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => {}
            Some(t) if now.duration_since(t) < Duration::from_secs(2) => {
                self.served = (Some(now), 0, this);
            }
            _ => self.served = (Some(now), 0, 0),
        }
        self.served.1.max(self.served.2)
    }
}

/// What a worker may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed: call.
    Call,
    /// The breaker is open and this worker carries the probe: call, and report
    /// the result with [`Breaker::probe_result`].
    Probe,
    /// The vendor has been down longer than `retry.max_outage`.
    GiveUp,
}

impl Breaker {
    pub fn new(max_outage: Duration) -> Breaker {
        Breaker {
            state: Mutex::new(State {
                last_ok: None,
                served: (None, 0, 0),
                answered: BTreeMap::new(),
                failure_share: FIRST_FAILURE_SHARE,
                open: None,
                shared: false,
                probes_failed: 0,
            }),
            changed: Notify::new(),
            news: Notify::new(),
            max_outage,
        }
    }

    pub fn is_open(&self) -> bool {
        self.state.lock().expect("breaker lock").open.is_some()
    }

    /// Records the answer to the call for the record `item` that was sent
    /// `seq`-th. Returns true if this failure opened the breaker.
    pub fn record(&self, item: i64, seq: u64, outcome: Outcome, now: Instant) -> bool {
        let mut s = self.state.lock().expect("breaker lock");
        let served = s.served_level(now);
        let failed = match outcome {
            Outcome::Ok(level) => {
                s.served.1 = s.served.1.max(level);
                if s.last_ok.is_none_or(|last| seq > last) {
                    s.last_ok = Some(seq);
                    let later = s.answered.split_off(&(seq + 1));
                    let settled = std::mem::replace(&mut s.answered, later);
                    for _ in settled.into_values().flatten() {
                        s.follow_share(true);
                    }
                }
                s.follow_share(false);
                return false;
            }
            // The concurrency law's business: neither a failure nor a success.
            Outcome::Overloaded(level) if served > 0 && level > served => false,
            Outcome::Retried => false,
            Outcome::Overloaded(_) | Outcome::Failed => true,
        };
        if s.last_ok.is_some_and(|last| seq < last) || s.open.is_some() {
            return false;
        }
        s.answered.insert(seq, failed.then_some(item));
        while s.answered.len() > ANSWERS_KEPT {
            if let Some((_, Some(_))) = s.answered.pop_first() {
                s.follow_share(true);
            }
        }
        if !failed {
            return false;
        }
        let needed = trip_after(s.failure_share);
        let mut items = s.failed_run_around(seq);
        if items.len() < needed {
            return false;
        }
        items.sort_unstable();
        items.dedup();
        if items.len() < needed {
            return false;
        }
        let mut schedule = ExponentialBuilder::default()
            .with_min_delay(FIRST_PROBE)
            .with_max_delay(PROBE_EVERY_AT_MOST)
            .with_jitter()
            .without_max_times()
            .build();
        let first = schedule
            .next()
            .unwrap_or(FIRST_PROBE)
            .min(PROBE_EVERY_AT_MOST);
        let next_probe = if s.shared {
            now + self.max_outage
        } else {
            now + first
        };
        s.open = Some(Open {
            since: now,
            next_probe,
            probing: false,
            schedule,
        });
        self.news.notify_one();
        // The pacer says it, with the cause (a refused connection, a DNS failure).
        tracing::debug!(
            consecutive_failures = needed,
            failure_share = format!("{:.4}", s.failure_share),
            "the breaker opened"
        );
        true
    }

    /// Waits until this worker may call (or should give up).
    pub async fn admit(&self) -> Admission {
        loop {
            let notified = self.changed.notified();
            let wait_until = {
                let mut s = self.state.lock().expect("breaker lock");
                let Some(open) = s.open.as_mut() else {
                    return Admission::Call;
                };
                let now = Instant::now();
                if now.duration_since(open.since) >= self.max_outage {
                    return Admission::GiveUp;
                }
                if !open.probing && now >= open.next_probe {
                    open.probing = true;
                    return Admission::Probe;
                }
                let deadline = open.since + self.max_outage;
                if open.probing {
                    deadline
                } else {
                    open.next_probe.min(deadline)
                }
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wait_until) => {}
            }
        }
    }

    /// The probe's result: success closes the breaker, failure schedules the next probe.
    pub fn probe_result(&self, ok: bool, seq: u64, now: Instant) {
        let mut s = self.state.lock().expect("breaker lock");
        if ok {
            if let Some(open) = s.open.take() {
                tracing::info!(
                    "the vendor answers again after {:.1} s: resuming gently",
                    now.duration_since(open.since).as_secs_f64()
                );
            }
            s.last_ok = Some(s.last_ok.map_or(seq, |last| last.max(seq)));
            s.answered.clear();
        } else if let Some(open) = s.open.as_mut() {
            let wait = open
                .schedule
                .next()
                .unwrap_or(PROBE_EVERY_AT_MOST)
                .min(PROBE_EVERY_AT_MOST);
            open.next_probe = now + wait;
            open.probing = false;
            tracing::debug!(next_in_ms = wait.as_millis() as u64, "the probe failed");
            if s.shared {
                // The fleet grants the next probe, to whichever worker asks first.
                let open = s.open.as_mut().expect("open");
                open.next_probe = open.since + self.max_outage;
            }
            s.probes_failed += 1;
        }
        drop(s);
        self.changed.notify_waiters();
        self.news.notify_one();
    }

    /// From now on probes go out only when [`Breaker::grant_probe`] says so.
    pub fn share(&self) {
        self.state.lock().expect("breaker lock").shared = true;
    }

    /// Whether the breaker is open, whether its probe is out, and how many
    /// probes have failed so far.
    pub fn view(&self) -> (bool, bool, u64) {
        let s = self.state.lock().expect("breaker lock");
        let probing = s.open.as_ref().is_some_and(|o| o.probing);
        (s.open.is_some(), probing, s.probes_failed)
    }

    /// Waits for a change of [`Breaker::view`] (or a [`Breaker::hint`]).
    pub async fn news(&self) {
        self.news.notified().await;
    }

    /// Something outside may have changed (the fleet's outage): wake
    /// [`Breaker::news`].
    pub fn hint(&self) {
        self.news.notify_one();
    }

    /// Another worker's breaker opened: this one opens too, without probing
    /// until granted. Returns false if it was open already.
    pub fn open_from_fleet(&self, now: Instant) -> bool {
        let mut s = self.state.lock().expect("breaker lock");
        if s.open.is_some() {
            return false;
        }
        let schedule = ExponentialBuilder::default()
            .with_min_delay(FIRST_PROBE)
            .with_max_delay(PROBE_EVERY_AT_MOST)
            .with_jitter()
            .without_max_times()
            .build();
        s.open = Some(Open {
            since: now,
            next_probe: now + self.max_outage,
            probing: false,
            schedule,
        });
        drop(s);
        self.changed.notify_waiters();
        true
    }

    /// Another worker's probe came back: the vendor answers. `sent` is the send
    /// order of the next call, so failures of calls sent before now do not
    /// open the breaker again. Returns false if it was closed already.
    pub fn close_from_fleet(&self, sent: u64) -> bool {
        let mut s = self.state.lock().expect("breaker lock");
        if s.open.take().is_none() {
            return false;
        }
        s.last_ok = Some(sent);
        s.answered.clear();
        drop(s);
        self.changed.notify_waiters();
        true
    }

    /// The fleet gives this worker the probe: the next admitted call carries it.
    pub fn grant_probe(&self, now: Instant) {
        let mut s = self.state.lock().expect("breaker lock");
        if let Some(open) = s.open.as_mut()
            && !open.probing
        {
            open.next_probe = now;
        }
        drop(s);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn late_successes_of_earlier_calls_do_not_hide_an_outage() {
        let b = Breaker::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(!b.record(1, 10, Outcome::Failed, ms(11)));
        assert!(
            !b.record(2, 0, Outcome::Ok(1), ms(12)),
            "sent before the failures: no news"
        );
        assert!(!b.record(3, 11, Outcome::Failed, ms(21)));
        assert!(b.record(4, 12, Outcome::Failed, ms(31)));
        assert!(b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_errors_above_the_level_the_vendor_serves_are_not_an_outage() {
        let b = Breaker::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // Eight calls out and answered; the 9th to 12th are refused at once.
        b.record(0, 0, Outcome::Ok(8), ms(50));
        for i in 1..5 {
            assert!(!b.record(i, i as u64, Outcome::Overloaded(8 + i as usize), ms(61)));
        }
        assert!(!b.is_open(), "a concurrency cap is not an outage");
        // The same errors at a level the vendor just served are.
        for i in 5..8 {
            b.record(i, i as u64, Outcome::Overloaded(3), ms(80));
        }
        assert!(b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn one_record_failing_again_and_again_is_not_an_outage() {
        let b = Breaker::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..10 {
            let at = t0 + Duration::from_millis(i * 10);
            assert!(!b.record(7, i, Outcome::Failed, at));
        }
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_sent_later_resets_the_count() {
        let b = Breaker::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        b.record(1, 1, Outcome::Failed, ms(2));
        b.record(2, 2, Outcome::Failed, ms(4));
        b.record(3, 3, Outcome::Ok(1), ms(6));
        assert!(!b.record(4, 4, Outcome::Failed, ms(8)));
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_with_calls_still_out_between_them_are_not_yet_an_outage() {
        let b = Breaker::new(Duration::from_secs(60));
        let now = Instant::now();
        // The 2nd, 4th and 6th calls are still out: their answers may be successes.
        for seq in [1, 3, 5, 7] {
            assert!(!b.record(seq as i64, seq, Outcome::Failed, now));
        }
        assert!(!b.is_open());
        // The 2nd fails too: three in a row.
        assert!(b.record(2, 2, Outcome::Failed, now));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_clean_stretch_three_failures_in_a_row_are_an_outage() {
        let b = Breaker::new(Duration::from_secs(60));
        let now = Instant::now();
        for seq in 0..590 {
            b.record(seq as i64, seq, Outcome::Ok(10), now);
        }
        // The vendor goes down with the calls 590 to 599 still out; their successes
        // arrive among the first failures and do not make those any less telling.
        assert!(!b.record(600, 600, Outcome::Failed, now));
        b.record(595, 595, Outcome::Ok(10), now);
        assert!(!b.record(601, 601, Outcome::Failed, now));
        b.record(596, 596, Outcome::Ok(10), now);
        assert!(b.record(602, 602, Outcome::Failed, now));
    }

    #[tokio::test(start_paused = true)]
    async fn records_failing_again_at_the_tail_are_not_an_outage() {
        let b = Breaker::new(Duration::from_secs(60));
        let now = Instant::now();
        for seq in 0..500 {
            b.record(seq as i64, seq, Outcome::Ok(10), now);
        }
        // Three poison keys, left alone at the tail, failing their retries in turn.
        for seq in 500..560 {
            assert!(!b.record(1 + seq as i64 % 3, seq, Outcome::Retried, now));
        }
        assert!(!b.is_open());
        // Retries neither count nor break a run of first tries failing.
        b.record(600, 560, Outcome::Failed, now);
        b.record(1, 561, Outcome::Retried, now);
        b.record(601, 562, Outcome::Failed, now);
        assert!(b.record(602, 563, Outcome::Failed, now));
    }

    #[test]
    fn the_run_that_opens_the_breaker_grows_with_the_vendors_failure_share() {
        assert_eq!(trip_after(0.0), 3);
        assert_eq!(trip_after(0.001), 3);
        assert_eq!(trip_after(0.01), 3);
        assert_eq!(trip_after(0.03), 4);
        assert_eq!(trip_after(0.05), 4);
        assert_eq!(trip_after(0.1), 5);
        assert_eq!(trip_after(0.5), 16);
        assert_eq!(trip_after(1.0), 16);
    }

    /// A vendor that fails `share` of its calls at random, 200 calls a second:
    /// failures answered at once, successes 50 ms after they were sent. Returns how
    /// many times the breaker opened in `calls` calls (each closed again by a probe).
    fn trips_against_a_flaky_vendor(share: f64, calls: u64) -> usize {
        let b = Breaker::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut draw = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        // (answered at, send order, failed)
        let mut answers: Vec<(Instant, u64, bool)> = Vec::new();
        let mut trips = 0;
        for seq in 0..calls {
            let now = t0 + Duration::from_millis(seq * 5);
            let failed = draw() < share;
            let at = if failed {
                now
            } else {
                now + Duration::from_millis(50)
            };
            answers.push((at, seq, failed));
            answers.sort_by_key(|a| std::cmp::Reverse(a.0));
            while answers.last().is_some_and(|a| a.0 <= now) {
                let (_, s, failed) = answers.pop().expect("an answer");
                let outcome = if failed {
                    Outcome::Failed
                } else {
                    Outcome::Ok(10)
                };
                if b.record(s as i64, s, outcome, now) {
                    trips += 1;
                    b.probe_result(true, s, now);
                }
            }
        }
        trips
    }

    #[test]
    fn a_vendor_failing_some_calls_is_not_an_outage() {
        // A run of failures as long as the one that opens the breaker happens by
        // chance once in 100,000 calls: 20,000 calls open it once at most.
        for share in [0.02, 0.05, 0.1, 0.2] {
            let trips = trips_against_a_flaky_vendor(share, 20_000);
            assert!(trips <= 1, "{trips} outages called at {share} failing");
        }
        // And a vendor failing every call is one.
        assert!(trips_against_a_flaky_vendor(1.0, 10) >= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_at_a_time_on_a_growing_schedule_until_one_succeeds() {
        let b = std::sync::Arc::new(Breaker::new(Duration::from_secs(60)));
        let t0 = Instant::now();
        for i in 0..3 {
            b.record(i as i64, i, Outcome::Failed, t0 + Duration::from_millis(i));
        }
        // Two workers wait; only one gets the probe.
        let (b1, b2) = (b.clone(), b.clone());
        let w1 = tokio::spawn(async move { b1.admit().await });
        let w2 = tokio::spawn(async move { b2.admit().await });
        tokio::time::sleep(Duration::from_millis(450)).await;
        let first = [w1.is_finished(), w2.is_finished()];
        assert_eq!(
            first.iter().filter(|f| **f).count(),
            1,
            "exactly one probe after the first delay"
        );
        let probe_at = Instant::now();
        b.probe_result(false, 3, probe_at);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !(w1.is_finished() && w2.is_finished()),
            "a failed probe does not release everyone"
        );
        b.probe_result(true, 4, Instant::now());
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(w1.is_finished() && w2.is_finished());
        assert!(!b.is_open());
        assert_eq!(b.admit().await, Admission::Call);
    }

    #[tokio::test(start_paused = true)]
    async fn past_max_outage_workers_give_up() {
        let b = Breaker::new(Duration::from_secs(2));
        let t0 = Instant::now();
        for i in 0..3 {
            b.record(i as i64, i, Outcome::Failed, t0 + Duration::from_millis(i));
        }
        let mut probes = 0;
        loop {
            match b.admit().await {
                Admission::Probe => {
                    probes += 1;
                    b.probe_result(false, 2 + probes as u64, Instant::now());
                }
                Admission::GiveUp => break,
                Admission::Call => panic!("the breaker never closed"),
            }
        }
        assert!(Instant::now().duration_since(t0) >= Duration::from_secs(2));
        assert!((2..=10).contains(&probes), "{probes} probes in 2 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_breaker_probes_only_when_the_fleet_grants_it() {
        let b = std::sync::Arc::new(Breaker::new(Duration::from_secs(60)));
        b.share();
        let t0 = Instant::now();
        for i in 0..3 {
            b.record(i as i64, i, Outcome::Failed, t0 + Duration::from_millis(i));
        }
        assert!(b.is_open());
        let waiter = b.clone();
        let w = tokio::spawn(async move { waiter.admit().await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!w.is_finished(), "no probe of its own schedule");
        b.grant_probe(Instant::now());
        assert_eq!(w.await.unwrap(), Admission::Probe);
        b.probe_result(false, 3, Instant::now());
        assert_eq!(b.view(), (true, false, 1));
        let waiter = b.clone();
        let w = tokio::spawn(async move { waiter.admit().await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!w.is_finished(), "a failed probe waits for the next grant");
        // Another worker's probe is answered: everyone calls again.
        assert!(b.close_from_fleet(10));
        assert_eq!(w.await.unwrap(), Admission::Call);
        // Failures of calls sent before the fleet closed do not reopen it.
        for i in 4..8 {
            assert!(!b.record(i as i64, i, Outcome::Failed, Instant::now()));
        }
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_breaker_opened_by_the_fleet_holds_its_worker() {
        let b = std::sync::Arc::new(Breaker::new(Duration::from_secs(60)));
        b.share();
        assert!(b.open_from_fleet(Instant::now()));
        assert!(!b.open_from_fleet(Instant::now()), "open already");
        let waiter = b.clone();
        let w = tokio::spawn(async move { waiter.admit().await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!w.is_finished());
        b.grant_probe(Instant::now());
        assert_eq!(w.await.unwrap(), Admission::Probe);
    }
}
