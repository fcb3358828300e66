//! Credits: the period a charge belongs to, and the in-memory reservation count
//! that keeps a run from starting a call the budget cannot pay for.
//!
//! A call reserves its cost before it is sent; a billed answer turns the reservation
//! into a charge, written in the same checkpoint transaction as the record; an
//! unbilled one releases it.

use std::sync::atomic::{AtomicI64, Ordering};

use jiff::Timestamp;

/// The calendar month (UTC) a moment belongs to, as stored: `2026-11`.
pub fn period_of(now: Timestamp) -> String {
    now.strftime("%Y-%m").to_string()
}

/// Credits this run may still reserve: the period's allowance, less its reserve,
/// less what the period has already spent.
#[derive(Debug)]
pub struct Budget {
    available: AtomicI64,
    cost: i64,
}

impl Budget {
    pub fn new(allowance: i64, reserve: i64, spent: i64, cost: i64) -> Budget {
        Budget {
            available: AtomicI64::new(allowance - reserve - spent),
            cost,
        }
    }

    /// Also never past `max` credits for the run, of which it has spent `spent` already
    /// (`--max-credits`).
    pub fn capped(self, max: i64, spent: i64) -> Budget {
        let available = self.available.into_inner().min(max - spent);
        Budget {
            available: AtomicI64::new(available),
            cost: self.cost,
        }
    }

    /// Reserves one call's cost, or returns false if the budget cannot pay for it.
    pub fn try_reserve(&self) -> bool {
        self.available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                (a >= self.cost).then(|| a - self.cost)
            })
            .is_ok()
    }

    /// Gives back a reservation whose answer was not billed.
    pub fn release(&self) {
        self.available.fetch_add(self.cost, Ordering::AcqRel);
    }

    pub fn cost(&self) -> i64 {
        self.cost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_allowance_less_reserve() {
        let b = Budget::new(10, 3, 2, 1);
        let granted = (0..20).filter(|_| b.try_reserve()).count();
        assert_eq!(granted, 5);
        b.release();
        assert!(b.try_reserve());
        assert!(!b.try_reserve());
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
