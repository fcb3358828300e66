//! What the operator sees: an indicatif bar on a terminal, a log line every few
//! seconds otherwise (a cron run's log), and the final summary, printed and
//! optionally written as JSON.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::engine::Tally;
use crate::pacer::Pacer;
use crate::store::{CallCounts, ItemCounts};

/// The bars' owner. Log lines go through [`LogWriter`] so they print above the bar
/// instead of through it.
#[derive(Clone)]
pub struct Display {
    multi: MultiProgress,
    terminal: bool,
}

impl Default for Display {
    fn default() -> Self {
        Display::new()
    }
}

impl Display {
    pub fn new() -> Display {
        let terminal = std::io::stderr().is_terminal();
        let target = if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Display {
            multi: MultiProgress::with_draw_target(target),
            terminal,
        }
    }

    pub fn log_writer(&self) -> LogWriter {
        LogWriter(self.multi.clone())
    }

    /// Shows the run's progress until `done` is cancelled: `total` items, of which
    /// `resolved` were already resolved before this process started.
    pub fn watch(
        &self,
        run: i64,
        total: u64,
        resolved: u64,
        tally: Arc<Tally>,
        pacer: Arc<Pacer>,
        done: CancellationToken,
    ) {
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} run {prefix} [{bar:30}] {pos}/{len} eta {eta} {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(run.to_string());
        bar.set_position(resolved);
        let terminal = self.terminal;
        tokio::spawn(async move {
            let start = Instant::now();
            let mut last_log = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = done.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let (ok, failed) = (Tally::get(&tally.done), Tally::get(&tally.failed));
                let retries = Tally::get(&tally.transient);
                let throttled = Tally::get(&tally.throttled);
                let g = pacer.gauges();
                let state = if g.breaker_open {
                    " | vendor down, probing"
                } else {
                    ""
                };
                let rate = (ok + failed) as f64 / start.elapsed().as_secs_f64().max(1e-3);
                bar.set_position(resolved + ok + failed);
                bar.set_message(format!(
                    "{rate:.0}/s | limit {} in flight, {:.0}/s | failed {failed} retries {retries} \
                     throttled {throttled}{state}",
                    g.concurrency, g.rate
                ));
                if !terminal && last_log.elapsed() >= Duration::from_secs(5) {
                    last_log = Instant::now();
                    tracing::info!(
                        "run {run}: {}/{total} records, {rate:.0}/s achieved, limit {} in flight at {:.0}/s, \
                         {failed} failed, {retries} retries, {throttled} throttled{state}",
                        resolved + ok + failed,
                        g.concurrency,
                        g.rate
                    );
                }
            }
            bar.finish_and_clear();
        });
    }
}

/// A `tracing` writer that suspends the bars while a line is written.
#[derive(Clone)]
pub struct LogWriter(MultiProgress);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        self.clone()
    }
}

/// The end of a run, as printed and as written by `--summary-json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub run: i64,
    pub status: String,
    pub records: ItemCounts,
    /// Records the plan left out for their keys (NULL, or shared with another).
    pub skipped: i64,
    pub calls: Calls,
    pub credits: CreditsSummary,
    /// This process's wall time, in seconds.
    pub wall_s: f64,
    /// Records resolved by this process per second of wall time.
    pub rate: f64,
    /// A few failed records and why, for a first look (`freshen status` lists them too).
    pub failures: Vec<Failure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Calls {
    pub total: i64,
    #[serde(flatten)]
    pub by_outcome: CallCounts,
}

#[derive(Debug, Clone, Serialize)]
pub struct CreditsSummary {
    pub period: String,
    /// Spent by this run (over all its resumes).
    pub spent: i64,
    /// Left in the period: allowance less everything spent in it.
    pub remaining: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub key: String,
    pub reason: String,
}

impl Summary {
    pub fn print(&self) {
        let r = &self.records;
        let c = &self.calls.by_outcome;
        println!("run {} {}", self.run, self.status);
        let skipped = match self.skipped {
            0 => String::new(),
            n => format!(", {n} skipped (NULL or shared keys)"),
        };
        println!(
            "  records  {} total, {} done, {} failed, {} pending{skipped}",
            r.total, r.done, r.failed, r.pending
        );
        println!(
            "  calls    {} total: {} ok, {} throttled, {} transient, {} permanent",
            self.calls.total, c.ok, c.throttled, c.transient, c.permanent
        );
        println!(
            "  credits  {} spent by this run, {} left in {}",
            self.credits.spent, self.credits.remaining, self.credits.period
        );
        println!(
            "  time     {:.1} s, {:.1} records/s",
            self.wall_s, self.rate
        );
        for f in &self.failures {
            println!("  failed   {}: {}", f.key, f.reason);
        }
    }

    pub fn write_json(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use anyhow::Context;
        let json = serde_json::to_string_pretty(self).expect("a summary always serializes");
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing --summary-json {}", path.display()))
    }
}
