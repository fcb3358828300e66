//! The run's timeline: a small task beside the engine that samples its counters
//! ([`Tally`]) and the pacer's gauges, and appends one row to `freshen_samples`
//! per interval, for `freshen report`.
//!
//! The gauges are looked at every 100 ms, so a pause or an outage shorter than
//! the sample still marks it. The interval is 1 s at first and doubles every
//! [`PER_LEVEL`] samples up to [`MAX_INTERVAL`]: a month-long process writes some
//! 13,000 rows, not 2.6 million.
//!
//! Sampling never slows or stops the run: rows are written by a spawned task while
//! the sampler goes on looking; a write that fails is logged and its samples are
//! dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::pacer::Pacer;
use crate::store::{CallCounts, Sample, Store};
use crate::tally::{Counted, Tally};

/// How often the gauges are looked at.
const POLL: Duration = Duration::from_millis(100);
/// Samples written at each interval before it doubles.
pub const PER_LEVEL: usize = 600;
/// The longest interval between samples.
pub const MAX_INTERVAL: Duration = Duration::from_secs(300);
/// Samples held while the database is slow; beyond it the oldest are dropped.
const MAX_HELD: usize = 600;

/// The interval after `written` samples: 1 s for the first 10 minutes, then 2 s,
/// 4 s, … up to 5 minutes.
pub fn interval_after(written: usize) -> Duration {
    let level = (written / PER_LEVEL).min(16) as u32;
    Duration::from_secs(1u64 << level).min(MAX_INTERVAL)
}

/// The sampler task; [`Sampler::finish`] writes the last sample and ends it.
pub struct Sampler {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling run `run`; `ceiling` is `limits.rate`.
    pub fn start(
        store: Arc<Store>,
        run: i64,
        ceiling: f64,
        tally: Arc<Tally>,
        pacer: Arc<Pacer>,
    ) -> Sampler {
        let stop = CancellationToken::new();
        let task = tokio::spawn(sample(store, run, ceiling, tally, pacer, stop.clone()));
        Sampler { stop, task }
    }

    /// Takes the last (partial) sample, writes what is held, and ends. Waits at
    /// most a few seconds: a database that does not answer loses the samples, not
    /// the run's exit.
    pub async fn finish(self) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
            tracing::warn!(
                "the run's last timeline samples were not written: the database did not answer within 5 s"
            );
        }
    }
}

/// One sample in the making.
struct Window {
    started: Instant,
    at_start: Counted,
    polls: u32,
    in_flight: usize,
    paused: bool,
    outage: bool,
}

impl Window {
    fn new(started: Instant, at_start: Counted) -> Window {
        Window {
            started,
            at_start,
            polls: 0,
            in_flight: 0,
            paused: false,
            outage: false,
        }
    }

    fn close(
        &self,
        now: Instant,
        counts: Counted,
        pacer: &Pacer,
        ceiling: f64,
        at_ms: i64,
    ) -> Sample {
        let g = pacer.gauges();
        let a = &self.at_start;
        let calls = CallCounts {
            ok: counts.calls.ok - a.calls.ok,
            throttled: counts.calls.throttled - a.calls.throttled,
            transient: counts.calls.transient - a.calls.transient,
            permanent: counts.calls.permanent - a.calls.permanent,
        };
        let elapsed = now.duration_since(self.started);
        Sample {
            at_ms,
            interval_ms: elapsed.as_millis() as i64,
            rate: calls.total() as f64 / elapsed.as_secs_f64().max(1e-3),
            // Every throttled answer starts a pause, however short.
            paused: self.paused || calls.throttled > 0,
            outage: self.outage,
            calls,
            done: counts.done - a.done,
            failed: counts.failed - a.failed,
            credits: counts.credits - a.credits,
            ceiling,
            paced_rate: g.rate,
            concurrency: g.concurrency as i64,
            in_flight: if self.polls == 0 {
                g.in_flight as f64
            } else {
                self.in_flight as f64 / f64::from(self.polls)
            },
        }
    }
}

async fn sample(
    store: Arc<Store>,
    run: i64,
    ceiling: f64,
    tally: Arc<Tally>,
    pacer: Arc<Pacer>,
    stop: CancellationToken,
) {
    let mut window = Window::new(Instant::now(), tally.now());
    let mut written = 0usize;
    let mut last_at = 0i64;
    let mut held: Vec<Sample> = Vec::new();
    let mut writing: Option<JoinHandle<anyhow::Result<()>>> = None;
    let mut failures = 0u64;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        let g = pacer.gauges();
        window.polls += 1;
        window.in_flight += g.in_flight;
        window.paused |= g.paused;
        window.outage |= g.breaker_open;

        let now = Instant::now();
        // Half a poll early rather than a whole poll late.
        let due = now.duration_since(window.started) + POLL / 2 >= interval_after(written);
        if due || last {
            let counts = tally.now();
            // Strictly increasing, so samples order as they were taken.
            let at_ms = jiff::Timestamp::now().as_millisecond().max(last_at + 1);
            let sample = window.close(now, counts, &pacer, ceiling, at_ms);
            // A last sliver with nothing in it says nothing.
            if due || sample.calls.total() > 0 || sample.interval_ms >= 100 {
                last_at = at_ms;
                held.push(sample);
                written += 1;
            }
            window = Window::new(now, counts);
        }
        if held.len() > MAX_HELD {
            let dropped = held.len() - MAX_HELD;
            held.drain(..dropped);
            tracing::warn!("{dropped} timeline samples dropped: the database is slow to take them");
        }

        if writing.as_ref().is_some_and(|w| w.is_finished()) || (last && writing.is_some()) {
            let result = writing.take().expect("a write is under way").await;
            report(result, &mut failures);
        }
        if writing.is_none() && !held.is_empty() {
            let batch = std::mem::take(&mut held);
            let store = store.clone();
            writing = Some(tokio::spawn(
                async move { store.add_samples(run, &batch).await },
            ));
        }
        if last {
            if let Some(w) = writing.take() {
                report(w.await, &mut failures);
            }
            return;
        }
    }
}

fn report(result: Result<anyhow::Result<()>, tokio::task::JoinError>, failures: &mut u64) {
    let error = match result {
        Ok(Ok(())) => return,
        Ok(Err(e)) => format!("{e:#}"),
        Err(e) => e.to_string(),
    };
    *failures += 1;
    // The first failure, then one in a hundred: a sick database must not flood the log.
    if *failures % 100 == 1 {
        tracing::warn!(
            "cannot write the run's timeline to freshen_samples ({failures} failed writes): {error}; \
             the run goes on, and `freshen report` will lack these samples"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_coarsens_and_stays_bounded() {
        assert_eq!(interval_after(0), Duration::from_secs(1));
        assert_eq!(interval_after(PER_LEVEL - 1), Duration::from_secs(1));
        assert_eq!(interval_after(PER_LEVEL), Duration::from_secs(2));
        assert_eq!(interval_after(PER_LEVEL * 8), Duration::from_secs(256));
        assert_eq!(interval_after(PER_LEVEL * 9), MAX_INTERVAL);
        assert_eq!(interval_after(usize::MAX), MAX_INTERVAL);
        // Rows for a 30-day process: every level's samples, then 5-minute ones.
        let mut rows = 0usize;
        let mut covered = Duration::ZERO;
        while covered < Duration::from_secs(30 * 86_400) {
            covered += interval_after(rows);
            rows += 1;
        }
        assert!(rows < 15_000, "{rows} rows for a month");
    }
}
