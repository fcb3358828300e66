//! `limits.windows`: at most N calls in any window of W, for every window at
//! once (Hunter's 15/s and 500/min). A vendor counts a call when it arrives,
//! and freshen cannot see that moment, only that it lies between the send and
//! the answer. So a call holds a slot of each window from before it is sent
//! until W after its answer: the calls of any W at the vendor are then at most
//! N, whether it counts in fixed windows, sliding ones or a token bucket of N,
//! and whatever the latency. A window's N calls may go at once (at the pacer's
//! rate); the next waits for the first one's slot to end.
//!
//! A token bucket (governor's `Quota::with_period(W / N).allow_burst(N)`)
//! would not do: it admits its burst and then its refill within the same W,
//! up to 2N, which a fixed-window vendor refuses.
//!
//! The slots' ends are kept in order, those less than W/1024 apart merged into
//! one at the later end (a slot then ends a little late, never early), so a
//! window of a million calls a month keeps some thousand entries.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Window;

/// Every configured window; empty when there is none.
#[derive(Clone)]
pub struct Windows {
    inner: Arc<Inner>,
}

struct Inner {
    logs: Mutex<Vec<Log>>,
    /// A slot was given back or its answer came: a waiter may go, or learn
    /// how long it must wait.
    freed: Notify,
}

/// One window: the slots taken and when the answered ones end.
struct Log {
    window: Window,
    /// Slots of calls not answered yet (taken, sent or about to be).
    open: u32,
    /// When answered calls' slots end, earliest first, with how many end then.
    ends: VecDeque<(Instant, u32)>,
    /// The slots in `ends`.
    ending: u32,
}

impl Log {
    /// Drops the slots that ended by `now`; the slots free.
    fn free(&mut self, now: Instant) -> u32 {
        while let Some(&(end, n)) = self.ends.front()
            && end <= now
        {
            self.ends.pop_front();
            self.ending -= n;
        }
        self.window
            .calls
            .get()
            .saturating_sub(self.open + self.ending)
    }

    /// An answered call's slot ends one window after `now`.
    fn answered(&mut self, now: Instant) {
        self.open = self.open.saturating_sub(1);
        let end = now + self.window.per;
        match self.ends.back_mut() {
            // An end before the last (its answer's time read just before
            // another's) merges too, at the later end: the order holds.
            Some((last, n)) if end.saturating_duration_since(*last) < self.window.per / 1024 => {
                *last = (*last).max(end);
                *n += 1;
            }
            _ => self.ends.push_back((end, 1)),
        }
        self.ending += 1;
    }
}

/// Why no slot is free now: the window that holds the call, when its next
/// slot frees (`None`: all are out), and whether every slot of it is
/// answered (`settled`): until then a slot taken may still come back unsent,
/// or end sooner than those answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub window: Window,
    pub until: Option<Instant>,
    pub settled: bool,
}

/// A window's next slot is further away than the pacer may wait
/// (`retry.max_delay`): the run should end, as for a vendor's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedUp {
    pub window: Window,
    pub wait: Duration,
}

impl Windows {
    pub fn new(windows: &[Window]) -> Windows {
        let logs = windows
            .iter()
            .map(|&window| Log {
                window,
                open: 0,
                ends: VecDeque::new(),
                ending: 0,
            })
            .collect();
        Windows {
            inner: Arc::new(Inner {
                logs: Mutex::new(logs),
                freed: Notify::new(),
            }),
        }
    }

    /// Whether any window is configured.
    pub fn any(&self) -> bool {
        !self.inner.logs.lock().expect("windows lock").is_empty()
    }

    /// A slot of every window, if each has one free now; else the windows that
    /// have none.
    pub fn try_take(&self, now: Instant) -> Result<Slot, Vec<Full>> {
        let mut logs = self.inner.logs.lock().expect("windows lock");
        let full: Vec<Full> = logs
            .iter_mut()
            .filter_map(|log| {
                (log.free(now) == 0).then(|| Full {
                    window: log.window,
                    until: log.ends.front().map(|&(end, _)| end),
                    settled: log.open == 0,
                })
            })
            .collect();
        if !full.is_empty() {
            return Err(full);
        }
        for log in logs.iter_mut() {
            log.open += 1;
        }
        Ok(Slot {
            windows: (!logs.is_empty()).then(|| self.inner.clone()),
            sent: false,
        })
    }

    /// Waits for a slot of every window, or says the wait is longer than
    /// `max_wait`. That is known only of a window whose slots are all
    /// answered: a slot taken for a call not yet sent may come back.
    pub async fn take(&self, max_wait: Duration) -> Result<Slot, UsedUp> {
        loop {
            let freed = self.inner.freed.notified();
            let now = Instant::now();
            let full = match self.try_take(now) {
                Ok(slot) => return Ok(slot),
                Err(full) => full,
            };
            let within = |f: &Full| f.until.is_some_and(|t| t.duration_since(now) <= max_wait);
            if let Some(f) = full.iter().find(|f| f.settled && !within(f)) {
                let until = f.until.unwrap_or(now + f.window.per);
                return Err(UsedUp {
                    window: f.window,
                    wait: until.duration_since(now),
                });
            }
            match full.iter().all(within) {
                true => {
                    let until = full.iter().filter_map(|f| f.until).max();
                    let until = until.expect("within means known");
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        () = freed => {}
                    }
                }
                // Some slot is out: its answer, or its return unsent, says more.
                false => freed.await,
            }
        }
    }
}

/// A call's slot in every window. Marked sent when the call goes out, and
/// answered when its answer comes: the slot then ends a window later.
/// Dropped unsent, it is given back; dropped sent and unanswered, it is taken
/// as answered then.
pub struct Slot {
    windows: Option<Arc<Inner>>,
    sent: bool,
}

impl Slot {
    pub fn sent(&mut self) {
        self.sent = true;
    }

    /// The call's answer came (or it failed): its slots end a window from now.
    pub fn answered(&mut self) {
        if let Some(inner) = self.windows.take() {
            let mut logs = inner.logs.lock().expect("windows lock");
            // Read under the lock, so the ends go in in order.
            let now = Instant::now();
            for log in logs.iter_mut() {
                log.answered(now);
            }
            drop(logs);
            inner.freed.notify_waiters();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.sent {
            self.answered();
        } else if let Some(inner) = self.windows.take() {
            for log in inner.logs.lock().expect("windows lock").iter_mut() {
                log.open = log.open.saturating_sub(1);
            }
            inner.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn windows(list: &[(u32, u64)]) -> Windows {
        let list: Vec<Window> = list
            .iter()
            .map(|&(calls, ms)| Window {
                calls: NonZeroU32::new(calls).unwrap(),
                per: Duration::from_millis(ms),
            })
            .collect();
        Windows::new(&list)
    }

    /// Sends `n` calls as fast as the windows let them, each answered
    /// `latency` after it was sent; returns when each was sent, from the start.
    async fn send(w: &Windows, n: usize, latency: Duration) -> Vec<Duration> {
        let start = Instant::now();
        let mut sent = Vec::new();
        let mut out = tokio::task::JoinSet::new();
        for _ in 0..n {
            let mut slot = w.take(Duration::from_secs(3600)).await.unwrap();
            slot.sent();
            sent.push(start.elapsed());
            out.spawn(async move {
                tokio::time::sleep(latency).await;
                slot.answered();
            });
        }
        out.join_all().await;
        sent
    }

    /// The most calls sent in any span of `per` (the vendor sees each between
    /// its send and its answer, `latency` later).
    fn most_in_any(sent: &[Duration], per: Duration, latency: Duration) -> usize {
        sent.iter()
            .map(|&first| {
                // A call counted at its answer, and a later one at its send.
                let from = first + latency;
                sent.iter()
                    .filter(|&&t| t >= first && t < from + per)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn every_window_holds_at_once() {
        let w = windows(&[(20, 1000), (60, 5000)]);
        let latency = Duration::from_millis(30);
        let sent = send(&w, 200, latency).await;
        assert_eq!(most_in_any(&sent, Duration::from_secs(1), latency), 20);
        assert_eq!(most_in_any(&sent, Duration::from_secs(5), latency), 60);
        // A window's calls go at once; the next waits for the first's slot.
        assert_eq!(sent[19], Duration::ZERO);
        assert_eq!(sent[20], Duration::from_millis(1030));
        assert_eq!(sent[60], Duration::from_millis(5030));
        // 200 calls are 60 a 5 s window (and a little): the fourth opens past 15 s.
        assert!(sent[199] > Duration::from_secs(15), "{:?}", sent[199]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_window_takes_nothing() {
        let w = windows(&[]);
        let sent = send(&w, 1000, Duration::from_millis(5)).await;
        assert_eq!(sent[999], Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_given_back_unsent_frees_at_once() {
        let w = windows(&[(1, 60_000)]);
        let slot = w.try_take(Instant::now()).unwrap();
        assert!(w.try_take(Instant::now()).is_err());
        drop(slot);
        let mut slot = w.try_take(Instant::now()).expect("given back");
        slot.sent();
        drop(slot);
        let full = w.try_take(Instant::now()).err().expect("full");
        assert_eq!(
            full[0].until,
            Some(Instant::now() + Duration::from_secs(60)),
            "a sent call's slot ends a window after it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_used_up_past_the_wait_says_so_at_once() {
        let w = windows(&[(50, 3_600_000)]);
        let sent = send(&w, 50, Duration::from_millis(10)).await;
        assert_eq!(sent[49], Duration::ZERO);
        let start = Instant::now();
        let used = w.take(Duration::from_secs(1)).await.err().expect("used up");
        assert_eq!(start.elapsed(), Duration::ZERO, "no wait");
        assert_eq!(used.window.calls.get(), 50);
        assert!(used.wait > Duration::from_secs(3599), "{:?}", used.wait);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_in_flight_hold_their_slots_until_answered() {
        let w = windows(&[(2, 1000)]);
        let mut a = w.try_take(Instant::now()).unwrap();
        let mut b = w.try_take(Instant::now()).unwrap();
        a.sent();
        b.sent();
        let full = w.try_take(Instant::now()).err().expect("full");
        assert_eq!(
            (full[0].until, full[0].settled),
            (None, false),
            "known once one is answered"
        );
        let waiter = {
            let w = w.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let _slot = w.take(Duration::from_secs(10)).await.unwrap();
                start.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        a.answered();
        assert_eq!(waiter.await.unwrap(), Duration::from_millis(1400));
        drop(b);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_held_by_unsent_slots_is_not_yet_used_up() {
        // Two of three hourly calls answered; the third taken, not sent yet.
        let w = windows(&[(3, 3_600_000)]);
        for _ in 0..2 {
            let mut s = w.try_take(Instant::now()).unwrap();
            s.sent();
            s.answered();
        }
        let taken = w.try_take(Instant::now()).unwrap();
        let waiter = {
            let w = w.clone();
            tokio::spawn(async move { w.take(Duration::from_secs(1)).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "waits for the taken slot");
        drop(taken); // the run stopped before it was sent
        assert!(waiter.await.unwrap(), "the slot given back is taken");
    }

    #[test]
    fn close_ends_merge_into_the_later_one() {
        let w = windows(&[(1_000_000, 30 * 86_400_000)]);
        let now = Instant::now();
        {
            let mut logs = w.inner.logs.lock().unwrap();
            let log = &mut logs[0];
            for _ in 0..10_000 {
                log.open += 1;
                log.answered(now);
            }
            assert_eq!(log.ends.len(), 1);
            assert_eq!(log.ending, 10_000);
            assert_eq!(log.free(now), 990_000);
        }
    }
}
