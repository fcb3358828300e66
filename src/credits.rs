//! Credits: the period a charge belongs to, and the in-memory reservation count
//! that keeps a run from starting a call the budget cannot pay for.
//!
//! A call reserves its cost before it is sent; a billed answer turns the reservation
//! into a charge, written in the same checkpoint transaction as the record; an
//! unbilled one releases it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use tokio::sync::Notify;

use crate::fleet::Fleet;

/// How credit periods are cut: monthly, from `credits.reset_day` (clamped to the
/// month's length, so a reset on the 31st falls on February's last day) at
/// midnight in `credits.timezone`. A period is named by its first day:
/// `2026-11-15`.
#[derive(Debug, Clone)]
pub struct Periods {
    reset_day: i8,
    tz: TimeZone,
}

impl Periods {
    /// `reset_day` in 1..=31.
    pub fn new(reset_day: i8, tz: TimeZone) -> Periods {
        Periods {
            reset_day: reset_day.clamp(1, 31),
            tz,
        }
    }

    /// A point in time as an operator writes it: RFC 3339 with an offset, or a
    /// local date-time or date (midnight) in `credits.timezone`.
    pub fn parse_time(&self, text: &str) -> Result<Timestamp, String> {
        let text = text.trim();
        if let Ok(ts) = text.parse::<Timestamp>() {
            return Ok(ts);
        }
        let local = text
            .parse::<jiff::civil::DateTime>()
            .or_else(|_| text.parse::<Date>().map(|d| d.at(0, 0, 0, 0)))
            .map_err(|_| {
                format!(
                    "`{text}` is not a time: use RFC 3339 (2026-11-30T22:00:00Z), or a local \
                     2026-11-30 22:00 or 2026-11-30 in credits.timezone"
                )
            })?;
        local
            .to_zoned(self.tz.clone())
            .map(|z| z.timestamp())
            .map_err(|e| format!("`{text}`: {e}"))
    }

    /// The name of the period `now` falls in.
    pub fn label_at(&self, now: Timestamp) -> String {
        self.start_at(now).strftime("%Y-%m-%d").to_string()
    }

    /// When the period `now` falls in began.
    pub fn start_at(&self, now: Timestamp) -> Zoned {
        let local = now.to_zoned(self.tz.clone());
        let this = self.start_in(local.date());
        if local >= this {
            return this;
        }
        let last_month = local
            .date()
            .first_of_month()
            .yesterday()
            .expect("a date after year -9999");
        self.start_in(last_month)
    }

    /// The period start in the month of `day`. Midnight, or the first moment of the
    /// day where a daylight-saving change skips midnight.
    fn start_in(&self, day: Date) -> Zoned {
        let reset = self.reset_day.min(day.days_in_month());
        let start = Date::new(day.year(), day.month(), reset).expect("a day within the month");
        start
            .to_zoned(self.tz.clone())
            .expect("a day within jiff's range")
    }
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
    reserve: i64,
    /// The vendor's last count of credits left, and when it was seen.
    vendor: std::sync::Mutex<Option<(i64, Timestamp)>>,
    /// A worker of a joined run: `available` is what the shared budget granted
    /// this worker, and more is asked for when it runs out.
    shared: Option<Arc<Fleet>>,
}

impl Budget {
    pub fn new(allowance: i64, reserve: i64, spent: i64, cost: i64) -> Budget {
        Budget {
            available: AtomicI64::new(allowance - reserve - spent),
            outstanding: AtomicI64::new(0),
            settled: Notify::new(),
            cost,
            reserve,
            vendor: std::sync::Mutex::new(None),
            shared: None,
        }
    }

    /// A worker of a joined run: every credit comes from the run's shared
    /// budget in the database, through `fleet`.
    pub fn shared(fleet: Arc<Fleet>, reserve: i64, cost: i64) -> Budget {
        Budget {
            available: AtomicI64::new(0),
            shared: Some(fleet),
            ..Budget::new(0, reserve, 0, cost)
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
            let mut others_hold = false;
            if let Some(fleet) = &self.shared {
                let _turn = fleet.asking().await;
                if self.try_reserve() {
                    return true;
                }
                match fleet.grant().await {
                    Ok(grant) if grant.granted > 0 => {
                        self.available.fetch_add(grant.granted, Ordering::AcqRel);
                        continue;
                    }
                    Ok(grant) => others_hold = grant.others > 0,
                    Err(e) => {
                        tracing::warn!("{e:#}; asking again in 1 s");
                        others_hold = true;
                    }
                }
            }
            if self.outstanding.load(Ordering::Acquire) == 0 {
                if !others_hold {
                    return false;
                }
                // Other workers' reservations may come back (an unbilled answer,
                // a worker that stops): ask again shortly.
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                continue;
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

    /// Reservations not yet settled, in credits.
    pub fn reserved(&self) -> i64 {
        self.outstanding.load(Ordering::Acquire) * self.cost
    }

    /// The vendor counts `left` credits on the account (`credits.remaining_header`),
    /// as of an answer that has just been settled. Trust the lower count: the
    /// budget never exceeds what the vendor says is left, less the reserve and the
    /// calls still out.
    pub fn vendor_says(&self, left: i64) {
        // Answers arrive out of order: the lowest count is the latest.
        {
            let mut vendor = self.vendor.lock().expect("vendor count lock");
            if vendor.is_none_or(|(seen, _)| left < seen) {
                *vendor = Some((left, Timestamp::now()));
            }
        }
        let cap = left - self.reserve - self.reserved();
        let _ = self
            .available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                (cap < a).then_some(cap)
            });
        self.settled.notify_waiters();
    }

    /// The vendor's last count of credits left, and when it was seen.
    pub fn vendor_count(&self) -> Option<(i64, Timestamp)> {
        *self.vendor.lock().expect("vendor count lock")
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

    #[tokio::test]
    async fn the_vendors_count_binds_when_it_is_the_lower() {
        let b = Budget::new(1000, 10, 0, 1);
        assert!(b.reserve().await);
        b.charge();
        // The vendor has 60 left (another tool spent from the same account);
        // 10 stay in reserve and one call is out.
        assert!(b.reserve().await);
        b.vendor_says(60);
        let more = std::iter::from_fn(|| b.try_reserve().then_some(())).count();
        assert_eq!(more, 49);
        // A higher count later does not raise the budget back.
        b.vendor_says(500);
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

    fn label(reset_day: i8, tz: &str, at: &str) -> String {
        let periods = Periods::new(reset_day, TimeZone::get(tz).unwrap());
        periods.label_at(at.parse().unwrap())
    }

    #[test]
    fn deadlines_parse_as_utc_or_local_time() {
        let p = Periods::new(1, TimeZone::get("Europe/Paris").unwrap());
        let at = |s| p.parse_time(s).map(|t| t.to_string());
        assert_eq!(at("2026-11-30T22:00:00Z").unwrap(), "2026-11-30T22:00:00Z");
        assert_eq!(at("2026-11-30 23:00").unwrap(), "2026-11-30T22:00:00Z");
        assert_eq!(at("2026-12-01").unwrap(), "2026-11-30T23:00:00Z");
        assert!(at("end of month").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn calendar_months_turn_at_midnight() {
        assert_eq!(label(1, "UTC", "2026-11-30T23:59:59Z"), "2026-11-01");
        assert_eq!(label(1, "UTC", "2026-12-01T00:00:00Z"), "2026-12-01");
        assert_eq!(label(1, "UTC", "2027-01-01T00:00:00Z"), "2027-01-01");
        assert_eq!(label(1, "UTC", "2026-12-31T23:59:59Z"), "2026-12-01");
    }

    #[test]
    fn a_reset_on_the_31st_falls_on_the_last_day_of_shorter_months() {
        assert_eq!(label(31, "UTC", "2026-02-27T12:00:00Z"), "2026-01-31");
        assert_eq!(label(31, "UTC", "2026-02-28T00:00:00Z"), "2026-02-28");
        assert_eq!(label(31, "UTC", "2026-03-30T23:59:59Z"), "2026-02-28");
        assert_eq!(label(31, "UTC", "2026-03-31T00:00:00Z"), "2026-03-31");
        assert_eq!(label(31, "UTC", "2026-04-30T00:00:00Z"), "2026-04-30");
        assert_eq!(
            label(30, "UTC", "2028-02-29T00:00:00Z"),
            "2028-02-29",
            "leap year"
        );
    }

    #[test]
    fn a_reset_on_the_15th() {
        assert_eq!(label(15, "UTC", "2026-11-14T23:59:59Z"), "2026-10-15");
        assert_eq!(label(15, "UTC", "2026-11-15T00:00:00Z"), "2026-11-15");
        assert_eq!(
            label(15, "UTC", "2026-01-10T00:00:00Z"),
            "2025-12-15",
            "across a year end"
        );
    }

    #[test]
    fn periods_follow_local_midnight_across_a_daylight_saving_change() {
        // Paris moves to summer time at 02:00 on 2026-03-29: that day's midnight is
        // 23:00 UTC the day before, the next month's is 22:00 UTC.
        assert_eq!(
            label(29, "Europe/Paris", "2026-03-28T22:59:59Z"),
            "2026-02-28"
        );
        assert_eq!(
            label(29, "Europe/Paris", "2026-03-28T23:00:00Z"),
            "2026-03-29"
        );
        assert_eq!(
            label(29, "Europe/Paris", "2026-04-28T21:59:59Z"),
            "2026-03-29"
        );
        assert_eq!(
            label(29, "Europe/Paris", "2026-04-28T22:00:00Z"),
            "2026-04-29"
        );
        // New York's local midnight of 1 November is 04:00 UTC, in summer time still.
        assert_eq!(
            label(1, "America/New_York", "2026-11-01T03:59:59Z"),
            "2026-10-01"
        );
        assert_eq!(
            label(1, "America/New_York", "2026-11-01T04:00:00Z"),
            "2026-11-01"
        );
    }
}
