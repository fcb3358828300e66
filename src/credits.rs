//! Credits: the period a charge belongs to, what a period has left
//! ([`Funds::room`], the one formula for run, estimate, status and every grant),
//! and the [`Budget`] that keeps a process from starting a call the credits
//! cannot pay for.
//!
//! Every credit a call may cost is granted from the database's ledger before the
//! call is sent (see `store::ledger`), a few calls' worth at a time, against the
//! period current when it is sent; a billed answer turns its reservation into a
//! charge, written in the same checkpoint transaction as the record; an unbilled
//! one gives it back for the next call.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};
use tokio::sync::Notify;

/// The time credit periods are reckoned by: the system clock, or for tests
/// the clock started at `FRESHEN_FAKE_NOW` (RFC 3339) when the process began,
/// so a test can run across a period's reset.
pub fn now() -> Timestamp {
    static OFFSET: OnceLock<jiff::SignedDuration> = OnceLock::new();
    let offset = OFFSET.get_or_init(|| {
        std::env::var("FRESHEN_FAKE_NOW")
            .ok()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map_or(jiff::SignedDuration::ZERO, |fake| {
                fake.duration_since(Timestamp::now())
            })
    });
    Timestamp::now() + *offset
}

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

    /// When the period after the one `now` falls in begins.
    pub fn next_start(&self, now: Timestamp) -> Timestamp {
        let next_month = self
            .start_at(now)
            .date()
            .first_of_month()
            .checked_add(1.month())
            .expect("a date before year 9999");
        self.start_in(next_month).timestamp()
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

/// What bounds the credits a period has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// The period's allowance, less `credits.reserve`.
    Allowance,
    /// The vendor's own count of credits left (`credits.remaining_header` or
    /// `credits.remaining_url`), less `credits.reserve`.
    Vendor,
    /// `--max-credits` for the run.
    MaxCredits,
}

impl Limit {
    /// Why a run stopped, for its last line.
    pub fn describe(self) -> &'static str {
        match self {
            Limit::Allowance => "the period's allowance less credits.reserve is spent",
            Limit::Vendor => {
                "the vendor's own count of credits left (less credits.reserve) is spent"
            }
            Limit::MaxCredits => "--max-credits is spent",
        }
    }
}

/// `--max-credits` and what the run has spent and holds of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunCap {
    pub max: i64,
    pub spent: i64,
    pub reserved: i64,
}

/// A period's credits as the ledger has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Funds {
    pub allowance: i64,
    /// `credits.reserve`: never spent.
    pub reserve: i64,
    /// Charged, including `uncertain`.
    pub spent: i64,
    /// Counted as spent because their holder died with them reserved.
    pub uncertain: i64,
    /// Reserved by every holder for calls not yet settled.
    pub reserved: i64,
    /// The vendor's count of credits left, less what was spent since it was read.
    pub vendor: Option<i64>,
    pub run: Option<RunCap>,
}

impl Funds {
    /// What may still be reserved, and what bounds it: the allowance less the
    /// reserve, what is spent and what is reserved; never more than the vendor's
    /// count less the reserve and the reservations; never past `--max-credits`.
    pub fn room(&self) -> (i64, Limit) {
        let mut room = (
            self.allowance - self.reserve - self.spent - self.reserved,
            Limit::Allowance,
        );
        if let Some(left) = self.vendor {
            let r = left - self.reserve - self.reserved;
            if r < room.0 {
                room = (r, Limit::Vendor);
            }
        }
        if let Some(cap) = self.run {
            let r = cap.max - cap.spent - cap.reserved;
            if r < room.0 {
                room = (r, Limit::MaxCredits);
            }
        }
        (room.0.max(0), room.1)
    }
}

/// What a request for credits got from the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: i64,
    /// Credits other live holders have reserved: they may come back.
    pub others: i64,
    /// What bounds the room left.
    pub limit: Limit,
    /// This process's lease went stale: it may not spend any more.
    pub fenced: bool,
}

/// Where a [`Budget`]'s credits come from: the ledger in the database
/// (`store::ledger`), or a stand-in in tests.
pub trait GrantSource: Send + Sync {
    /// Up to `want` credits of `period` (created with the configured allowance
    /// if it is new).
    fn grant<'a>(&'a self, period: &'a str, want: i64) -> BoxFuture<'a, anyhow::Result<Grant>>;
    /// Gives unused credits of `period` back.
    fn give_back<'a>(&'a self, period: &'a str, credits: i64) -> BoxFuture<'a, anyhow::Result<()>>;
    /// Counts `credits` of `period` as sent (negative: answered unbilled), at
    /// once and where a crash of this process cannot lose it, so that a dead
    /// holder's unsent credits can go back (`store::sent`). Called before each
    /// call goes out: it must be quick.
    fn sent(&self, _period: &str, _credits: i64) {}
}

/// A call's credits, reserved against the period current when it was sent.
#[derive(Debug)]
pub struct Reservation {
    pub period: Arc<str>,
}

/// Why [`Budget::reserve`] found nothing to spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// Every credit this process may spend is spent: the limit that bounds it.
    At(Limit),
    /// This process's lease went stale (suspended or cut off past
    /// `lock.stale_after`): another may have taken its work over.
    Fenced,
}

/// The credits this process may start calls with: granted by the ledger a block
/// at a time and handed to calls one at a time, in queue order. A call that
/// finds the block empty asks for another; when the ledger has none, it waits
/// while calls of its own are outstanding (an unbilled answer gives its credits
/// back) or other live processes hold reservations (they may give theirs back),
/// and only then is the budget spent.
pub struct Budget {
    source: Arc<dyn GrantSource>,
    periods: Periods,
    clock: fn() -> Timestamp,
    cost: i64,
    reserve: i64,
    /// Credits asked for at once at the least (a few calls' worth).
    want: i64,
    state: Mutex<State>,
    settled: Notify,
    /// One request to the ledger at a time.
    asking: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("cost", &self.cost)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct State {
    /// The period calls are reserved against now, and when it ends.
    period: Arc<str>,
    ends: Timestamp,
    /// Granted for `period`, not yet handed to a call.
    available: i64,
    /// Reserved by calls not yet answered.
    outstanding: i64,
    /// Credits of earlier periods given back by unbilled answers, to return.
    returns: Vec<(Arc<str>, i64)>,
    vendor: VendorCount,
    spent: Option<Spent>,
    /// Credits asked for at once now: `want` at first, doubled while blocks
    /// last under [`BLOCK_SHORT`], halved (down to one call's cost) while they
    /// last over [`BLOCK_LONG`].
    block: i64,
    /// When the last block was granted.
    granted_at: Option<tokio::time::Instant>,
    /// A request for the next block is under way.
    prefetching: bool,
}

/// A block that lasts less than this is too small: the next is twice as large.
const BLOCK_SHORT: Duration = Duration::from_millis(20);
/// A block that lasts more than this is larger than it need be: the next is
/// half as large. What a kill counts as spent without the vendor billing it is
/// what the process held unsent: the rest of one block and the next, fetched
/// ahead (at most one and a half blocks), besides its calls in flight. Blocks
/// sized to last 20–80 ms keep that to about a tenth of a second's calls (24
/// credits at 200 calls/s) for a few dozen ledger transactions a second.
const BLOCK_LONG: Duration = Duration::from_millis(80);
/// The largest block, in blocks of `want` (`max_concurrency` calls).
const BLOCK_MAX: i64 = 4;

impl Budget {
    /// `want`: credits to ask the ledger for at once (a few calls' worth).
    pub fn new(
        source: Arc<dyn GrantSource>,
        periods: Periods,
        cost: i64,
        reserve: i64,
        want: i64,
    ) -> Budget {
        Budget::with_clock(source, periods, cost, reserve, want, now)
    }

    fn with_clock(
        source: Arc<dyn GrantSource>,
        periods: Periods,
        cost: i64,
        reserve: i64,
        want: i64,
        clock: fn() -> Timestamp,
    ) -> Budget {
        let at = clock();
        let state = State {
            period: periods.label_at(at).into(),
            ends: periods.next_start(at),
            available: 0,
            outstanding: 0,
            returns: Vec::new(),
            vendor: VendorCount::default(),
            spent: None,
            block: want.max(cost),
            granted_at: None,
            prefetching: false,
        };
        Budget {
            source,
            periods,
            clock,
            cost: cost.max(1),
            reserve,
            want: want.max(cost),
            state: Mutex::new(state),
            settled: Notify::new(),
            asking: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("budget lock")
    }

    /// Reserves one call's cost, asking the ledger for more when the block is
    /// empty and waiting while credits may come back.
    pub async fn reserve(self: &Arc<Self>) -> Result<Reservation, Spent> {
        loop {
            let settled = self.settled.notified();
            if let Some(r) = self.try_reserve() {
                self.prefetch();
                return Ok(r);
            }
            // The vendor's count binds here, not the ledger's: asking for more
            // would not help.
            let vendor_allows = self.state().vendor.allows(self.cost, self.reserve);
            let others = if vendor_allows {
                let _turn = self.asking.lock().await;
                if let Some(r) = self.try_reserve() {
                    return Ok(r);
                }
                match self.ask().await {
                    Ok(Asked::Granted) => continue,
                    Ok(Asked::Fenced) => return Err(self.spent(Spent::Fenced)),
                    Ok(Asked::Short { others, limit }) => {
                        self.state().spent = Some(Spent::At(limit));
                        others
                    }
                    Err(e) => {
                        tracing::warn!("{e:#}; asking again in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            } else {
                0
            };
            if self.state().outstanding == 0 {
                // The last answers may have come back meanwhile, leaving what
                // they held over their cost (or an unbilled one, all of it).
                if let Some(r) = self.try_reserve() {
                    return Ok(r);
                }
                if !vendor_allows {
                    return Err(self.spent(Spent::At(Limit::Vendor)));
                }
                if others == 0 {
                    return Err(self.state().spent.unwrap_or(Spent::At(Limit::Allowance)));
                }
                // Other processes' reservations may come back (an unbilled
                // answer, a process that idles or stops): ask again shortly.
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            settled.await;
        }
    }

    fn spent(&self, why: Spent) -> Spent {
        self.state().spent = Some(why);
        why
    }

    /// A reservation from the block in hand, if it has one for the current
    /// period and the vendor's count allows it.
    fn try_reserve(&self) -> Option<Reservation> {
        let mut s = self.state();
        if (self.clock)() >= s.ends || s.available < self.cost {
            return None;
        }
        if !s.vendor.allows(self.cost, self.reserve) {
            return None;
        }
        s.available -= self.cost;
        s.outstanding += self.cost;
        s.vendor.reserved(self.cost);
        Some(Reservation {
            period: s.period.clone(),
        })
    }

    /// Asks the ledger for a block, first moving to a new period if one has
    /// begun (its unused block goes back) and returning credits of past ones.
    async fn ask(&self) -> anyhow::Result<Asked> {
        let at = (self.clock)();
        let (returns, period) = {
            let mut s = self.state();
            if at >= s.ends {
                let unused = std::mem::take(&mut s.available);
                let old = std::mem::replace(&mut s.period, self.periods.label_at(at).into());
                s.returns.push((old, unused));
                s.ends = self.periods.next_start(at);
                tracing::info!("a new credit period began: {}", s.period);
            }
            (std::mem::take(&mut s.returns), s.period.clone())
        };
        for (old, credits) in returns {
            if credits > 0 {
                self.source.give_back(&old, credits).await?;
            }
        }
        let want = self.state().block;
        let grant = self.source.grant(&period, want).await?;
        if grant.fenced {
            return Ok(Asked::Fenced);
        }
        if grant.granted > 0 {
            let mut s = self.state();
            if s.period == period {
                s.available += grant.granted;
            } else {
                s.returns.push((period, grant.granted));
            }
            let now = tokio::time::Instant::now();
            if let Some(last) = s.granted_at.replace(now) {
                let lasted = now.duration_since(last);
                if lasted < BLOCK_SHORT {
                    s.block = (s.block * 2).min(self.want * BLOCK_MAX);
                } else if lasted > BLOCK_LONG {
                    s.block = (s.block / 2).max(self.cost);
                }
            }
            return Ok(Asked::Granted);
        }
        Ok(Asked::Short {
            others: grant.others,
            limit: grant.limit,
        })
    }

    /// Asks for the next block in the background once half of this one is
    /// handed out, so that calls do not wait for the ledger's round trip.
    /// A block the ledger cannot grant is left to the next reservation to find.
    fn prefetch(self: &Arc<Self>) {
        {
            let mut s = self.state();
            if s.prefetching || s.spent.is_some() || s.available * 2 >= s.block {
                return;
            }
            s.prefetching = true;
        }
        let budget = self.clone();
        tokio::spawn(async move {
            {
                let _turn = budget.asking.lock().await;
                let low = {
                    let s = budget.state();
                    s.available * 2 < s.block
                };
                if low && let Err(e) = budget.ask().await {
                    tracing::warn!("{e:#}; asking again when the credits in hand run out");
                }
            }
            budget.state().prefetching = false;
            budget.settled.notify_waiters();
        });
    }

    /// The call is about to go out: its credits count as sent (see
    /// [`GrantSource::sent`]) until it is answered unbilled.
    pub fn sending(&self, r: &Reservation) {
        self.source.sent(&r.period, self.cost);
    }

    /// The call was answered unbilled: its credits no longer count as sent.
    /// The reservation stays with the record for its next try.
    pub fn unbilled(&self, r: &Reservation) {
        self.source.sent(&r.period, -self.cost);
    }

    /// The answer was billed `actual` credits (`credits.cost`, unless the
    /// vendor said: `credits.cost_header`): the reservation is now a charge,
    /// of the period it was made in, and what it held over the call's cost can
    /// pay for another. `left`: the vendor's count of credits left in the same
    /// answer (`credits.remaining_header`), taken in the same step, so that no
    /// other answer can come between the charge and the count.
    pub fn charge(&self, r: Reservation, left: Option<i64>, actual: i64) -> Arc<str> {
        let over = (self.cost - actual).max(0);
        {
            let mut s = self.state();
            s.outstanding -= self.cost;
            if over > 0 {
                if s.period == r.period {
                    s.available += over;
                } else {
                    s.returns.push((r.period.clone(), over));
                }
            }
            if let Some(left) = left {
                let outstanding = s.outstanding;
                s.vendor.counted(left, true, self.cost, outstanding);
            }
        }
        if over > 0 {
            // Not spent after all: the sent log no longer counts it.
            self.source.sent(&r.period, -over);
        }
        self.settled.notify_waiters();
        r.period
    }

    /// The answer was not billed: the reservation is given back.
    pub fn release(&self, r: Reservation) {
        {
            let mut s = self.state();
            s.outstanding -= self.cost;
            s.vendor.released(self.cost);
            if s.period == r.period {
                s.available += self.cost;
            } else {
                s.returns.push((r.period, self.cost));
            }
        }
        self.settled.notify_waiters();
    }

    /// Gives the block in hand back to the ledger, for other processes to use
    /// (a worker of a joined run with nothing left to claim).
    pub async fn give_back_unused(&self) -> anyhow::Result<()> {
        let _turn = self.asking.lock().await;
        let (period, unused) = {
            let mut s = self.state();
            (s.period.clone(), std::mem::take(&mut s.available))
        };
        if unused > 0 {
            self.source.give_back(&period, unused).await?;
        }
        Ok(())
    }

    pub fn cost(&self) -> i64 {
        self.cost
    }

    /// Reservations not yet settled, in credits.
    pub fn reserved(&self) -> i64 {
        self.state().outstanding
    }

    /// Why the budget was found spent, if it was.
    pub fn spent_at(&self) -> Option<Spent> {
        self.state().spent
    }

    /// An unbilled answer says the vendor counts `left` credits on the account
    /// (`credits.remaining_header`; a billed one passes its count to
    /// [`Budget::charge`]). The budget never goes past the lowest count less
    /// the reserve and the calls that may not be in it yet.
    pub fn vendor_says(&self, left: i64) {
        {
            let mut s = self.state();
            let outstanding = s.outstanding;
            s.vendor.counted(left, false, self.cost, outstanding);
        }
        self.settled.notify_waiters();
    }

    /// The vendor's count as of now, less the calls that may not be in it yet.
    pub fn vendor_count(&self) -> Option<i64> {
        self.state().vendor.left()
    }
}

enum Asked {
    Granted,
    Fenced,
    Short { others: i64, limit: Limit },
}

/// The vendor's count of credits left, as answers report it
/// (`credits.remaining_header`). Answers arrive out of order, so the lowest
/// count is the newest; `uncounted` is what may have been billed after it: the
/// calls out when it came, and every call reserved since. An answer whose count
/// is not below the lowest was billed before it, so is in it already: it comes
/// off `uncounted`. When nothing is out, the count is exact, so the budget
/// reaches the vendor's last credit (and no further).
#[derive(Debug, Default, Clone, Copy)]
struct VendorCount {
    least: Option<i64>,
    uncounted: i64,
}

impl VendorCount {
    fn allows(&self, cost: i64, reserve: i64) -> bool {
        self.least
            .is_none_or(|least| self.uncounted + cost <= least - reserve)
    }

    fn reserved(&mut self, cost: i64) {
        if self.least.is_some() {
            self.uncounted += cost;
        }
    }

    fn released(&mut self, cost: i64) {
        self.uncounted = (self.uncounted - cost).max(0);
    }

    /// `outstanding`: reserved by calls still out, this one settled already.
    fn counted(&mut self, left: i64, billed: bool, cost: i64, outstanding: i64) {
        match self.least {
            Some(least) if left >= least => {
                if billed {
                    self.uncounted = (self.uncounted - cost).max(0);
                }
            }
            _ => {
                self.least = Some(left);
                self.uncounted = outstanding;
            }
        }
    }

    fn left(&self) -> Option<i64> {
        self.least.map(|least| least - self.uncounted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger with `room` credits per period, and `others` held elsewhere.
    #[derive(Default)]
    struct Fake {
        room: Mutex<std::collections::HashMap<String, i64>>,
        others: std::sync::atomic::AtomicI64,
        fenced: std::sync::atomic::AtomicBool,
        limit: Option<Limit>,
    }

    impl Fake {
        fn with(period: &str, room: i64) -> Arc<Fake> {
            let fake = Fake::default();
            fake.room.lock().unwrap().insert(period.into(), room);
            Arc::new(fake)
        }
        fn room(&self, period: &str) -> i64 {
            *self.room.lock().unwrap().get(period).unwrap_or(&0)
        }
    }

    impl GrantSource for Fake {
        fn grant<'a>(&'a self, period: &'a str, want: i64) -> BoxFuture<'a, anyhow::Result<Grant>> {
            Box::pin(async move {
                let mut rooms = self.room.lock().unwrap();
                let room = rooms.entry(period.to_owned()).or_insert(0);
                let granted = want.min(*room).max(0);
                *room -= granted;
                Ok(Grant {
                    granted,
                    others: self.others.load(std::sync::atomic::Ordering::SeqCst),
                    limit: self.limit.unwrap_or(Limit::Allowance),
                    fenced: self.fenced.load(std::sync::atomic::Ordering::SeqCst),
                })
            })
        }
        fn give_back<'a>(
            &'a self,
            period: &'a str,
            credits: i64,
        ) -> BoxFuture<'a, anyhow::Result<()>> {
            Box::pin(async move {
                *self
                    .room
                    .lock()
                    .unwrap()
                    .entry(period.to_owned())
                    .or_insert(0) += credits;
                Ok(())
            })
        }
    }

    fn utc_months() -> Periods {
        Periods::new(1, TimeZone::UTC)
    }

    fn budget(fake: &Arc<Fake>, cost: i64, reserve: i64, want: i64) -> Arc<Budget> {
        Arc::new(Budget::with_clock(
            fake.clone(),
            utc_months(),
            cost,
            reserve,
            want,
            || "2026-11-20T12:00:00Z".parse().unwrap(),
        ))
    }

    #[tokio::test]
    async fn reservations_stop_at_what_the_ledger_grants() {
        let fake = Fake::with("2026-11-01", 7);
        let b = budget(&fake, 1, 0, 4);
        assert!(
            b.try_reserve().is_none(),
            "nothing is granted before the first ask"
        );
        let mut held = Vec::new();
        for _ in 0..7 {
            held.push(b.reserve().await.unwrap());
        }
        assert_eq!(fake.room("2026-11-01"), 0);
        for r in held {
            b.charge(r, None, b.cost());
        }
        assert_eq!(b.reserve().await.unwrap_err(), Spent::At(Limit::Allowance));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_cost_less_than_it_reserved_leaves_the_rest_for_others() {
        // 10 credits, 5 reserved a call (the most one may cost), each call
        // billed 2: what a call leaves pays toward the next. Three go out (6
        // spent); the 4 left cannot cover a call that may cost 5. Charged in
        // full, two would.
        let fake = Fake::with("2026-11-01", 10);
        let b = budget(&fake, 5, 0, 1);
        let mut calls = 0;
        while let Ok(r) = b.reserve().await {
            b.charge(r, None, 2);
            calls += 1;
        }
        assert_eq!(calls, 3);
        assert_eq!(b.reserve().await.unwrap_err(), Spent::At(Limit::Allowance));
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_budget_waits_for_outstanding_answers() {
        let fake = Fake::with("2026-11-01", 2);
        let b = budget(&fake, 1, 0, 8);
        let (r1, r2) = (b.reserve().await.unwrap(), b.reserve().await.unwrap());
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.reserve().await.map(|r| r.period) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "two answers are outstanding");
        b.release(r1); // an unbilled answer: its credit pays for the waiting call
        assert_eq!(&*waiting.await.unwrap().unwrap(), "2026-11-01");
        b.charge(r2, None, b.cost());
        assert_eq!(b.reserved(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn credits_other_processes_hold_are_waited_for() {
        let fake = Fake::with("2026-11-01", 0);
        fake.others.store(5, std::sync::atomic::Ordering::SeqCst);
        let b = budget(&fake, 1, 0, 8);
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.reserve().await.is_ok() }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !waiting.is_finished(),
            "another process may give credits back"
        );
        // It does: it went idle and returned its block.
        fake.give_back("2026-11-01", 5).await.unwrap();
        fake.others.store(0, std::sync::atomic::Ordering::SeqCst);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_run_holds_about_a_tenth_of_a_seconds_calls_unsent() {
        // 200 calls/s with `want` of 64 calls: what a kill would count as
        // spent unbilled is what is granted and not yet handed to a call.
        let fake = Fake::with("2026-11-01", 100_000);
        let b = budget(&fake, 1, 0, 64);
        let mut most = 0;
        for call in 0..2_000 {
            let r = b.reserve().await.unwrap();
            b.charge(r, None, b.cost());
            tokio::time::sleep(Duration::from_millis(5)).await;
            let unsent = 100_000 - fake.room("2026-11-01") - (call + 1);
            if call >= 1_000 {
                most = most.max(unsent);
            }
        }
        // Blocks of 20–80 ms of calls, the rest of one and the next: 24.
        assert!(most <= 24, "{most} credits held unsent at 200 calls/s");
    }

    #[tokio::test]
    async fn an_idle_process_gives_its_block_back() {
        let fake = Fake::with("2026-11-01", 100);
        let b = budget(&fake, 1, 0, 16);
        let r = b.reserve().await.unwrap();
        assert_eq!(fake.room("2026-11-01"), 84);
        b.give_back_unused().await.unwrap();
        assert_eq!(fake.room("2026-11-01"), 99, "15 unused back, one out");
        b.charge(r, None, b.cost());
    }

    #[tokio::test]
    async fn a_fenced_process_gets_nothing() {
        let fake = Fake::with("2026-11-01", 100);
        fake.fenced.store(true, std::sync::atomic::Ordering::SeqCst);
        let b = budget(&fake, 1, 0, 16);
        assert_eq!(b.reserve().await.unwrap_err(), Spent::Fenced);
    }

    #[tokio::test]
    async fn a_call_is_not_started_on_a_partial_balance() {
        let fake = Fake::with("2026-11-01", 5);
        let b = budget(&fake, 2, 0, 5);
        let (r1, r2) = (b.reserve().await.unwrap(), b.reserve().await.unwrap());
        b.charge(r1, None, b.cost());
        b.charge(r2, None, b.cost());
        assert!(
            b.reserve().await.is_err(),
            "1 credit left cannot pay a cost of 2"
        );
    }

    static CLOCK: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

    #[tokio::test]
    async fn calls_are_reserved_against_the_period_current_when_they_are_sent() {
        let fake = Fake::with("2026-11-01", 10);
        fake.room.lock().unwrap().insert("2026-12-01".into(), 3);
        let start: Timestamp = "2026-11-30T23:59:58Z".parse().unwrap();
        CLOCK.store(start.as_second(), std::sync::atomic::Ordering::SeqCst);
        let b = Arc::new(Budget::with_clock(
            fake.clone(),
            utc_months(),
            1,
            0,
            4,
            || Timestamp::from_second(CLOCK.load(std::sync::atomic::Ordering::SeqCst)).unwrap(),
        ));
        let old = b.reserve().await.unwrap();
        assert_eq!(&*old.period, "2026-11-01");
        assert_eq!(fake.room("2026-11-01"), 6);
        CLOCK.store(start.as_second() + 5, std::sync::atomic::Ordering::SeqCst);
        // The old block's three unused credits go back; the new period grants its own.
        let mut new = Vec::new();
        for _ in 0..3 {
            let r = b.reserve().await.unwrap();
            assert_eq!(&*r.period, "2026-12-01");
            new.push(r);
        }
        assert_eq!(fake.room("2026-11-01"), 9);
        // An unbilled answer to the old period's call gives its credit back there.
        b.release(old);
        for r in new {
            b.charge(r, None, b.cost());
        }
        assert!(
            b.reserve().await.is_err(),
            "the new period's allowance, not the old one's"
        );
        assert_eq!(fake.room("2026-11-01"), 10);
    }

    #[test]
    fn the_room_is_the_least_of_allowance_vendor_and_max_credits() {
        let mut f = Funds {
            allowance: 1000,
            reserve: 100,
            spent: 300,
            uncertain: 0,
            reserved: 50,
            vendor: None,
            run: None,
        };
        assert_eq!(f.room(), (550, Limit::Allowance));
        f.vendor = Some(400);
        assert_eq!(f.room(), (250, Limit::Vendor));
        f.run = Some(RunCap {
            max: 200,
            spent: 20,
            reserved: 30,
        });
        assert_eq!(f.room(), (150, Limit::MaxCredits));
        f.spent = 2000;
        assert_eq!(f.room().0, 0, "never negative");
    }

    /// A vendor that counts each call it bills, answering in the order it
    /// was called; freshen keeps up to `out` calls in flight.
    fn spend_against_a_counting_vendor(credits: i64, out: usize, reserve: i64) -> i64 {
        let fake = Fake::with("2026-11-01", 1_000_000);
        let b = budget(&fake, 1, reserve, 64);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let mut left = credits;
            let mut flight = std::collections::VecDeque::new();
            let mut billed = 0;
            loop {
                while flight.len() < out {
                    match tokio::time::timeout(Duration::from_millis(1), b.reserve()).await {
                        Ok(Ok(r)) => flight.push_back(r),
                        _ => break,
                    }
                }
                let Some(r) = flight.pop_front() else { break };
                assert!(left > 0, "a call was sent with nothing left at the vendor");
                left -= 1;
                billed += 1;
                b.charge(r, Some(left), b.cost());
            }
            billed
        })
    }

    #[test]
    fn the_vendors_count_is_spent_to_its_last_credit_and_no_further() {
        // 2,400 credits, 16 calls out: the old count-less-reservations cap
        // stopped at 2,384 or so.
        assert_eq!(spend_against_a_counting_vendor(2400, 16, 0), 2400);
        assert_eq!(spend_against_a_counting_vendor(2400, 16, 100), 2300);
        assert_eq!(spend_against_a_counting_vendor(50, 8, 0), 50);
    }

    #[test]
    fn a_count_that_arrives_late_is_already_in_the_lowest() {
        let mut v = VendorCount::default();
        v.counted(100, true, 1, 3); // three more out
        v.reserved(1);
        assert_eq!(v.left(), Some(96));
        v.counted(101, true, 1, 3); // billed before the 100: in it already
        assert_eq!(v.left(), Some(97));
        v.counted(97, true, 1, 1);
        assert_eq!(v.left(), Some(96));
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
