//! This process's live counters of a run: calls by outcome, records resolved,
//! credits charged. The engine bumps them; the progress bar, the timeline and
//! the metrics read them, without a query and without reaching into the engine.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::CallCounts;

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
    pub no_match: AtomicU64,
    /// Credits charged by this process, as checkpointed.
    pub credits: AtomicU64,
}

/// What a [`Tally`] holds at one moment, to show or take differences of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    pub calls: CallCounts,
    pub done: i64,
    pub failed: i64,
    pub no_match: i64,
    pub credits: i64,
}

impl Tally {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Every counter, read now.
    pub fn now(&self) -> Counted {
        let n = |c| i64::try_from(Tally::get(c)).unwrap_or(i64::MAX);
        Counted {
            calls: CallCounts {
                ok: n(&self.ok),
                throttled: n(&self.throttled),
                transient: n(&self.transient),
                permanent: n(&self.permanent),
            },
            done: n(&self.done),
            failed: n(&self.failed),
            no_match: n(&self.no_match),
            credits: n(&self.credits),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
