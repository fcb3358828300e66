//! Credits: the period a charge belongs to, and the in-memory reservation count
//! that keeps a run from starting a call the budget cannot pay for.
//!
//! A call reserves its cost before it is sent; a billed answer turns the reservation
//! into a charge, written in the same checkpoint transaction as the record; an
//! unbilled one releases it.

use std::sync::atomic::{AtomicI64, Ordering};

use jiff::Timestamp;
use tokio::sync::Notify;

/// The calendar month (UTC) a moment belongs to, as stored: `2026-11`.
pub fn period_of(now: Timestamp) -> String {
    now.strftime("%Y-%m").to_string()
}

/// Credits this run may still reserve: the period's allowance, less its reserve,
/// less what the period has already spent (and, with `--max-credits`, less what the
/// run has). A call that finds the budget short waits while other calls' answers
/// are outstanding (an unbilled answer gives its reservation back); the budget is
/// spent only when nothing is left to settle.
#[derive(Debug)]
pub struct Budget {
    available: AtomicI64,
    outstanding: AtomicI64,
    settled: Notify,
    cost: i64,
}

impl Budget {
    pub fn new(allowance: i64, reserve: i64, spent: i64, cost: i64) -> Budget {
        Budget {
            available: AtomicI64::new(allowance - reserve - spent),
            outstanding: AtomicI64::new(0),
            settled: Notify::new(),
            cost,
        }
    }

    /// Also never past `max` credits for the run, of which it has spent `spent` already
    /// (`--max-credits`).
    pub fn capped(self, max: i64, spent: i64) -> Budget {
        let available = self.available.into_inner().min(max - spent);
        Budget {
            available: AtomicI64::new(available),
            ..self
        }
    }

    /// Reserves one call's cost, waiting while outstanding answers may give credits
    /// back. False when the budget is spent.
    pub async fn reserve(&self) -> bool {
        loop {
            let settled = self.settled.notified();
            if self.try_reserve() {
                return true;
            }
            if self.outstanding.load(Ordering::Acquire) == 0 {
                return false;
            }
            settled.await;
        }
    }

    fn try_reserve(&self) -> bool {
        let granted = self
            .available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                (a >= self.cost).then(|| a - self.cost)
            })
            .is_ok();
        if granted {
            self.outstanding.fetch_add(1, Ordering::AcqRel);
        }
        granted
    }

    /// The answer was billed: the reservation is now a charge.
    pub fn charge(&self) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.settled.notify_waiters();
    }

    /// The answer was not billed: the reservation is given back.
    pub fn release(&self) {
        self.available.fetch_add(self.cost, Ordering::AcqRel);
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.settled.notify_waiters();
    }

    pub fn cost(&self) -> i64 {
        self.cost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_stop_at_allowance_less_reserve() {
        let b = Budget::new(10, 3, 2, 1);
        let granted = (0..20).filter(|_| b.try_reserve()).count();
        assert_eq!(granted, 5);
        b.release();
        assert!(b.reserve().await);
        for _ in 0..5 {
            b.charge();
        }
        assert!(!b.reserve().await, "nothing outstanding, nothing left");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_budget_waits_for_outstanding_answers() {
        let b = std::sync::Arc::new(Budget::new(2, 0, 0, 1));
        assert!(b.reserve().await && b.reserve().await);
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.reserve().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "two answers are outstanding");
        b.release(); // an unbilled answer: its credit can pay for the waiting call
        assert!(waiting.await.unwrap());
        b.charge();
        b.charge();
        assert!(!b.reserve().await);
    }

    #[test]
    fn a_run_cap_binds_when_it_is_the_lower() {
        let b = Budget::new(100, 0, 0, 1).capped(30, 25);
        assert_eq!((0..100).filter(|_| b.try_reserve()).count(), 5);
        let b = Budget::new(10, 0, 0, 1).capped(30, 0);
        assert_eq!((0..100).filter(|_| b.try_reserve()).count(), 10);
    }

    #[test]
    fn a_call_is_not_started_on_a_partial_balance() {
        let b = Budget::new(5, 0, 0, 2);
        assert!(b.try_reserve() && b.try_reserve());
        assert!(!b.try_reserve(), "1 credit left cannot pay a cost of 2");
    }

    #[test]
    fn periods_are_calendar_months_in_utc() {
        let t: Timestamp = "2026-11-30T23:59:59Z".parse().unwrap();
        assert_eq!(period_of(t), "2026-11");
        let t: Timestamp = "2026-12-01T00:00:00+01:00".parse().unwrap();
        assert_eq!(period_of(t), "2026-11");
    }
}
