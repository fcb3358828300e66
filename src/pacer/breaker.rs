//! The circuit breaker: when the vendor fails every call sent since its last
//! success, all workers stop and one probe goes out on an exponential schedule;
//! the first probe that succeeds closes the breaker.
//!
//! Failures are counted in the order the calls were *sent*: a success that
//! arrives late for a call sent before the outage says nothing about the vendor
//! now, so it does not hide the failures of the calls sent after it. And they must
//! come from several different records: one record that fails again and again (a
//! poison key at the tail of a run) is that record's problem, not an outage.
//!
//! A capacity error (503 without Retry-After, a timeout) of a call sent with more
//! calls in flight than the vendor has lately answered is the concurrency law's
//! business, not an outage: a vendor capped at 8 calls refuses the 9th and 10th
//! at once while the first 8 are still out, and that must not stop the run. The
//! same error at a level the vendor has just served is counted.

use std::sync::Mutex;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Consecutive failures (by send time), of this many different records, open the breaker.
const TRIP_AFTER: usize = 3;
/// The probe schedule: from 200 ms, doubling, jittered, at most this far apart.
/// The cap trades calls during an outage (about one per interval) against the
/// time lost after it ends (half an interval on average); 850 ms keeps a 5 s
/// outage under ten calls and costs about 0.4 s.
const FIRST_PROBE: Duration = Duration::from_millis(200);
const PROBE_EVERY_AT_MOST: Duration = Duration::from_millis(850);

pub struct Breaker {
    state: Mutex<State>,
    changed: Notify,
    max_outage: Duration,
}

struct State {
    /// Send time of the newest call that succeeded.
    last_ok_sent: Option<Instant>,
    /// The most calls in flight at which a call succeeded, this second and the
    /// last: (since, this second's, the last second's).
    served: (Option<Instant>, usize, usize),
    /// Send times and records of the failures sent after `last_ok_sent`.
    failures_since: Vec<(Instant, i64)>,
    open: Option<Open>,
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
}

impl State {
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
                last_ok_sent: None,
                served: (None, 0, 0),
                failures_since: Vec::new(),
                open: None,
            }),
            changed: Notify::new(),
            max_outage,
        }
    }

    pub fn is_open(&self) -> bool {
        self.state.lock().expect("breaker lock").open.is_some()
    }

    /// Records a call for the record `item`, sent at `sent`. Returns true if this
    /// failure opened the breaker.
    pub fn record(&self, item: i64, sent: Instant, outcome: Outcome, now: Instant) -> bool {
        let mut s = self.state.lock().expect("breaker lock");
        let served = s.served_level(now);
        let ok = match outcome {
            Outcome::Ok(level) => {
                s.served.1 = s.served.1.max(level);
                true
            }
            Outcome::Overloaded(level) if served > 0 && level > served => return false,
            Outcome::Overloaded(_) | Outcome::Failed => false,
        };
        if ok {
            if s.last_ok_sent.is_none_or(|t| sent > t) {
                s.last_ok_sent = Some(sent);
                s.failures_since.retain(|(f, _)| *f > sent);
            }
            return false;
        }
        if s.last_ok_sent.is_some_and(|t| sent < t) || s.open.is_some() {
            return false;
        }
        s.failures_since.push((sent, item));
        let mut items: Vec<i64> = s.failures_since.iter().map(|(_, i)| *i).collect();
        items.sort_unstable();
        items.dedup();
        if items.len() < TRIP_AFTER {
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
        s.open = Some(Open {
            since: now,
            next_probe: now + first,
            probing: false,
            schedule,
        });
        tracing::warn!("the vendor fails every call: pausing all workers and probing");
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
    pub fn probe_result(&self, ok: bool, sent: Instant, now: Instant) {
        let mut s = self.state.lock().expect("breaker lock");
        if ok {
            if let Some(open) = s.open.take() {
                tracing::info!(
                    "the vendor answers again after {:.1} s: resuming gently",
                    now.duration_since(open.since).as_secs_f64()
                );
            }
            s.last_ok_sent = Some(sent);
            s.failures_since.clear();
        } else if let Some(open) = s.open.as_mut() {
            let wait = open
                .schedule
                .next()
                .unwrap_or(PROBE_EVERY_AT_MOST)
                .min(PROBE_EVERY_AT_MOST);
            open.next_probe = now + wait;
            open.probing = false;
            tracing::debug!(next_in_ms = wait.as_millis() as u64, "the probe failed");
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
        assert!(!b.record(1, ms(10), Outcome::Failed, ms(11)));
        assert!(
            !b.record(2, ms(0), Outcome::Ok(1), ms(12)),
            "sent before the failures: no news"
        );
        assert!(!b.record(3, ms(20), Outcome::Failed, ms(21)));
        assert!(b.record(4, ms(30), Outcome::Failed, ms(31)));
        assert!(b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_errors_above_the_level_the_vendor_serves_are_not_an_outage() {
        let b = Breaker::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // Eight calls out and answered; the 9th to 12th are refused at once.
        b.record(0, ms(0), Outcome::Ok(8), ms(50));
        for i in 1..5 {
            assert!(!b.record(
                i,
                ms(60 + i as u64),
                Outcome::Overloaded(8 + i as usize),
                ms(61)
            ));
        }
        assert!(!b.is_open(), "a concurrency cap is not an outage");
        // The same errors at a level the vendor just served are.
        for i in 5..8 {
            b.record(i, ms(70 + i as u64), Outcome::Overloaded(3), ms(80));
        }
        assert!(b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn one_record_failing_again_and_again_is_not_an_outage() {
        let b = Breaker::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..10 {
            let at = t0 + Duration::from_millis(i * 10);
            assert!(!b.record(7, at, Outcome::Failed, at));
        }
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_sent_later_resets_the_count() {
        let b = Breaker::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        b.record(1, ms(1), Outcome::Failed, ms(2));
        b.record(2, ms(3), Outcome::Failed, ms(4));
        b.record(3, ms(5), Outcome::Ok(1), ms(6));
        assert!(!b.record(4, ms(7), Outcome::Failed, ms(8)));
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_at_a_time_on_a_growing_schedule_until_one_succeeds() {
        let b = std::sync::Arc::new(Breaker::new(Duration::from_secs(60)));
        let t0 = Instant::now();
        for i in 0..3 {
            b.record(i as i64, t0, Outcome::Failed, t0 + Duration::from_millis(i));
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
        b.probe_result(false, probe_at, probe_at);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !(w1.is_finished() && w2.is_finished()),
            "a failed probe does not release everyone"
        );
        b.probe_result(true, Instant::now(), Instant::now());
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
            b.record(i as i64, t0, Outcome::Failed, t0 + Duration::from_millis(i));
        }
        let mut probes = 0;
        loop {
            match b.admit().await {
                Admission::Probe => {
                    probes += 1;
                    let now = Instant::now();
                    b.probe_result(false, now, now);
                }
                Admission::GiveUp => break,
                Admission::Call => panic!("the breaker never closed"),
            }
        }
        assert!(Instant::now().duration_since(t0) >= Duration::from_secs(2));
        assert!((2..=10).contains(&probes), "{probes} probes in 2 s");
    }
}
