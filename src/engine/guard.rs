//! The contract guard: a vendor whose answers stop fitting the config (a
//! renamed field, a changed schema, an endpoint that now says "not found" to
//! everything) bills every call and fails every record, and a run would drain
//! the budget on answers nobody can use. The guard watches each record's
//! *first* answer (retries would weigh a poison key many times) and trips
//! once `limits.max_failure_share` of the last `limits.failure_window` of them
//! failed for good, naming the reason most of them gave.
//!
//! Clock-free and lock-free by itself: the engine keeps it under a mutex and
//! feeds it one outcome at a time.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Why the guard tripped: `failed` of the last `of` first answers, most of
/// them (`count`) for `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tripped {
    pub failed: usize,
    pub of: usize,
    pub reason: Arc<str>,
    pub count: usize,
}

pub struct Guard {
    window: usize,
    /// Failures that trip it: `max_failure_share` of a full window, at least 1.
    trips_at: usize,
    /// The last `window` first answers: `None` good, `Some(reason)` failed.
    last: VecDeque<Option<Arc<str>>>,
    failed: usize,
}

impl Guard {
    pub fn new(window: usize, max_failure_share: f64) -> Guard {
        let window = window.max(1);
        Guard {
            window,
            trips_at: ((window as f64 * max_failure_share).ceil() as usize).max(1),
            last: VecDeque::with_capacity(window),
            failed: 0,
        }
    }

    /// A first answer that could be used.
    pub fn good(&mut self) {
        self.push(None);
    }

    /// A first answer that failed the record for good: whether that trips the
    /// guard. With a share of 1 it trips only once a whole window failed.
    pub fn failed(&mut self, reason: &str) -> Option<Tripped> {
        self.push(Some(Arc::from(reason)));
        (self.failed >= self.trips_at).then(|| self.tripped())
    }

    fn push(&mut self, outcome: Option<Arc<str>>) {
        if self.last.len() == self.window
            && let Some(Some(_)) = self.last.pop_front()
        {
            self.failed -= 1;
        }
        self.failed += usize::from(outcome.is_some());
        self.last.push_back(outcome);
    }

    fn tripped(&self) -> Tripped {
        let mut counts: HashMap<&Arc<str>, usize> = HashMap::new();
        for reason in self.last.iter().flatten() {
            *counts.entry(reason).or_default() += 1;
        }
        // The most common reason; of equals, the latest seen.
        let (reason, count) = self
            .last
            .iter()
            .rev()
            .flatten()
            .map(|r| (r, counts[r]))
            .fold(None::<(&Arc<str>, usize)>, |best, (r, n)| match best {
                Some((_, m)) if m >= n => best,
                _ => Some((r, n)),
            })
            .expect("tripped with failures in the window");
        Tripped {
            failed: self.failed,
            of: self.last.len(),
            reason: reason.clone(),
            count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_trips_at_the_share_of_the_window_naming_the_commonest_reason() {
        let mut g = Guard::new(10, 0.5);
        for _ in 0..30 {
            g.good();
        }
        for _ in 0..4 {
            assert_eq!(g.failed("answer has no /title"), None);
        }
        let t = g.failed("404 Not Found").expect("5 of the last 10");
        assert_eq!((t.failed, t.of, t.count), (5, 10, 4));
        assert_eq!(&*t.reason, "answer has no /title");
    }

    #[test]
    fn failures_that_leave_the_window_no_longer_count() {
        let mut g = Guard::new(10, 0.5);
        // Four failures in every ten answers, for ever: never half.
        for _ in 0..100 {
            for _ in 0..4 {
                assert_eq!(g.failed("404 Not Found"), None);
            }
            for _ in 0..6 {
                g.good();
            }
        }
    }

    #[test]
    fn a_run_that_fails_from_its_first_answer_trips_before_the_window_fills() {
        let mut g = Guard::new(100, 0.5);
        for n in 1..50 {
            assert_eq!(g.failed("401"), None, "{n}");
        }
        let t = g.failed("401").expect("50 failures are half of the window");
        assert_eq!((t.failed, t.of), (50, 50));
    }

    #[test]
    fn a_share_of_one_trips_only_on_a_whole_window_of_failures() {
        let mut g = Guard::new(4, 1.0);
        g.good();
        for _ in 0..3 {
            assert_eq!(g.failed("x"), None);
        }
        assert!(g.failed("x").is_some());
    }
}
