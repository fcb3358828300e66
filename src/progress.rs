//! What the operator sees: an indicatif bar on a terminal, a log line every few
//! seconds otherwise (a cron run's log), and the final summary, printed and
//! optionally written as JSON.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::pacer::Pacer;
use crate::store::{CallCounts, ItemCounts};
use crate::tally::Tally;

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
        // The whole line is ours ([`line`]), fitted to the terminal's width each
        // tick: indicatif's own ETA would count the records resolved before a
        // resume as instant progress, and its fields wrap a narrow terminal.
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"));
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
                let g = pacer.gauges();
                let frame = Frame {
                    run,
                    total,
                    resumed: resolved,
                    // Resolved records: a no match is progress as a value is.
                    done: Tally::get(&tally.done) + Tally::get(&tally.no_match),
                    failed: Tally::get(&tally.failed),
                    retries: Tally::get(&tally.transient),
                    throttled: Tally::get(&tally.throttled),
                    elapsed: start.elapsed(),
                    concurrency: g.concurrency,
                    paced_rate: g.rate,
                    vendor_down: g.breaker_open,
                };
                bar.set_position(frame.position());
                // Two columns for the spinner, one spare so the line never
                // reaches the last column (some terminals wrap there).
                let width = usize::from(console::Term::stderr().size().1).saturating_sub(3);
                bar.set_message(line(&frame, width.max(20)));
                if !terminal && last_log.elapsed() >= Duration::from_secs(5) {
                    last_log = Instant::now();
                    tracing::info!("{}", frame.log_line());
                }
            }
            bar.finish_and_clear();
        });
    }
}

/// What one tick of the progress display knows.
#[derive(Debug, Clone)]
pub struct Frame {
    pub run: i64,
    pub total: u64,
    /// Resolved before this process started (a resumed run).
    pub resumed: u64,
    /// Resolved by this process.
    pub done: u64,
    pub failed: u64,
    pub retries: u64,
    pub throttled: u64,
    /// Since this process started working the run.
    pub elapsed: Duration,
    pub concurrency: usize,
    pub paced_rate: f64,
    pub vendor_down: bool,
}

impl Frame {
    pub fn position(&self) -> u64 {
        self.resumed + self.done + self.failed
    }

    /// Records resolved per second by this process: the records of a resumed
    /// run that were done before it started are not its progress.
    pub fn rate(&self) -> f64 {
        (self.done + self.failed) as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }

    /// The time the records left take at this process's own rate; None until it
    /// has resolved a record.
    pub fn eta(&self) -> Option<Duration> {
        let here = self.done + self.failed;
        if here == 0 {
            return None;
        }
        let left = self.total.saturating_sub(self.position());
        Some(Duration::from_secs_f64(left as f64 / self.rate()))
    }

    fn state(&self) -> &'static str {
        if self.vendor_down {
            "vendor down, probing"
        } else {
            ""
        }
    }

    /// The periodic log line of a run without a terminal.
    pub fn log_line(&self) -> String {
        let state = match self.state() {
            "" => String::new(),
            s => format!(" | {s}"),
        };
        // A slow pace (`--pace-until` far away) as the time between calls, not
        // "0/s".
        let pace = if self.paced_rate >= 1.0 {
            format!("at {:.0}/s", self.paced_rate)
        } else {
            let every =
                Duration::from_secs_f64(1.0 / self.paced_rate.max(crate::pacer::SLOWEST_RATE));
            format!("paced to one call every {}", short_duration(every))
        };
        let achieved = match self.rate() {
            r if r >= 1.0 || self.done + self.failed == 0 => format!("{r:.0}/s"),
            r => format!("{r:.4}/s"),
        };
        format!(
            "run {}: {}/{} records, {achieved} achieved, eta {}, limit {} in flight {pace}, \
             {} failed, {} retries, {} throttled{state}",
            self.run,
            self.position(),
            self.total,
            self.eta().map_or("-".into(), short_duration),
            self.concurrency,
            self.failed,
            self.retries,
            self.throttled,
        )
    }
}

/// `1h05m`, `3m20s`, `15s`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs_f64().ceil() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The bar's line, at most `width` columns: the run and its count always; then,
/// as room allows and in this order of importance, the ETA, the rate, the
/// vendor's state, the failures, a bar, the pacer's limits, retries and
/// throttles. Fields keep their places; the least important go first.
pub fn line(f: &Frame, width: usize) -> String {
    // (importance: lower is kept longer, text)
    let fields: [(u8, String); 9] = [
        (0, format!("run {}", f.run)),
        (5, String::new()), // the bar, sized below
        (0, format!("{}/{}", f.position(), f.total)),
        (
            1,
            format!("eta {}", f.eta().map_or("-".into(), short_duration)),
        ),
        (2, format!("{:.0}/s", f.rate())),
        (
            3,
            match f.state() {
                "" => String::new(),
                s => format!("| {s}"),
            },
        ),
        (4, format!("| failed {}", f.failed)),
        (
            6,
            format!("| limit {} in flight, {:.0}/s", f.concurrency, f.paced_rate),
        ),
        (
            7,
            format!("| retries {} throttled {}", f.retries, f.throttled),
        ),
    ];
    let compose = |keep: u8, bar: usize| {
        let mut parts: Vec<String> = Vec::new();
        for (importance, text) in &fields {
            if *importance > keep {
                continue;
            }
            if *importance == 5 {
                parts.push(draw_bar(f.position(), f.total, bar));
            } else if !text.is_empty() {
                parts.push(text.clone());
            }
        }
        parts.join(" ")
    };
    for keep in (0..=7).rev() {
        if keep >= 5 {
            // With the bar: as wide as the room left allows, 10 to 30 cells.
            // `compose(keep, 0)` holds the bar as `[]`: two of its cells.
            let rest = compose(keep, 0).chars().count();
            let bar = (width + 2).saturating_sub(rest).min(32);
            if bar >= 12 {
                return compose(keep, bar);
            }
            continue;
        }
        let text = compose(keep, 0);
        if text.chars().count() <= width {
            return text;
        }
    }
    compose(0, 0).chars().take(width).collect()
}

/// `[=====>    ]`, `cells` wide with its brackets.
fn draw_bar(position: u64, total: u64, cells: usize) -> String {
    let inner = cells.saturating_sub(2);
    let filled = if total == 0 {
        inner
    } else {
        (inner as u128 * u128::from(position.min(total)) / u128::from(total)) as usize
    };
    let mut bar = "=".repeat(filled);
    if filled < inner {
        bar.push('>');
        bar.push_str(&" ".repeat(inner - filled - 1));
    }
    format!("[{bar}]")
}

/// `--summary-json` on every exit after the flags parse: a stale file (last
/// month's) is removed before the command starts; the run writes its full
/// summary when it gets that far; any other end (a config error, the lock held,
/// nothing to spend, a database error) writes a short one with the status and
/// the exit code, and the error's message. A second SIGINT exits at once and
/// leaves no file, never an old one.
pub async fn with_summary_file(
    path: Option<&Path>,
    work: impl Future<Output = anyhow::Result<crate::error::Exit>>,
) -> anyhow::Result<crate::error::Exit> {
    let Some(path) = path else {
        return work.await;
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(crate::error::usage(format!(
                "--summary-json {}: cannot replace the file: {e}",
                path.display()
            )));
        }
    }
    let result = work.await;
    if path.exists() {
        return result;
    }
    let (status, exit, message) = match &result {
        Ok(exit) => (exit_status(*exit), *exit, None),
        Err(e) => {
            let (exit, status) = crate::error::exit_of(e);
            (status, exit, Some(e))
        }
    };
    let short = serde_json::json!({
        "run": null,
        "status": status,
        "exit_code": exit.code(),
        "message": message.map(|e| format!("{e:#}")),
    });
    let text = serde_json::to_string_pretty(&short).expect("JSON") + "\n";
    if let Err(e) = std::fs::write(path, text) {
        tracing::warn!("cannot write --summary-json {}: {e}", path.display());
    }
    result
}

/// The summary's `status` for an exit without a run's summary.
fn exit_status(exit: crate::error::Exit) -> &'static str {
    use crate::error::Exit::*;
    match exit {
        Complete => "complete",
        Error => "error",
        Usage => "usage_error",
        Budget => "budget",
        Outage => "outage",
        Locked => "locked",
        Refused => "refused",
        Interrupted => "interrupted",
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
    pub status: crate::state::RunStatus,
    /// The process's exit code ([`crate::error::Exit`]).
    pub exit_code: i32,
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
    /// For an outage (exit 4): the last failed call's cause (a refused
    /// connection, a DNS failure, a 503).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// For a quota's window (exit 3, status `quota`): no call before this time
    /// (UTC, RFC 3339); a run started earlier exits without a call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_after: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
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
        let no_match = match r.no_match {
            0 => String::new(),
            n => format!(", {n} no match"),
        };
        println!(
            "  records  {} total, {} done, {} failed{no_match}, {} pending{skipped}",
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
        if let Some(cause) = &self.cause {
            println!("  cause    {cause}");
        }
    }

    pub fn write_json(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use anyhow::Context;
        let json = serde_json::to_string_pretty(self).expect("a summary always serializes");
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing --summary-json {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The resumed run: 1465 of 2940 done before this process, which then
    /// resolves 98 records in its first second.
    fn resumed() -> Frame {
        Frame {
            run: 3,
            total: 2940,
            resumed: 1465,
            done: 97,
            failed: 1,
            retries: 12,
            throttled: 4,
            elapsed: Duration::from_secs(1),
            concurrency: 16,
            paced_rate: 100.0,
            vendor_down: false,
        }
    }

    #[test]
    fn a_resumed_runs_eta_counts_only_this_processs_progress() {
        let f = resumed();
        assert_eq!(f.position(), 1563);
        assert_eq!(f.rate(), 98.0);
        // 1377 left at 98/s: 14.05 s, not the 1 s of counting 1465 as progress.
        assert_eq!(f.eta(), Some(Duration::from_secs_f64(1377.0 / 98.0)));
        assert!(
            line(&f, 200).contains("1563/2940 eta 15s 98/s"),
            "{}",
            line(&f, 200)
        );
        let fresh = Frame {
            done: 0,
            failed: 0,
            ..resumed()
        };
        assert_eq!(
            fresh.eta(),
            None,
            "no ETA before this process resolved a record"
        );
        assert!(line(&fresh, 200).contains("eta -"));
    }

    #[test]
    fn the_line_fits_every_width_dropping_fields() {
        let down = Frame {
            vendor_down: true,
            ..resumed()
        };
        for f in [resumed(), down] {
            for width in 20..=200 {
                let text = line(&f, width);
                assert!(text.chars().count() <= width, "{width}: {text}");
                assert!(text.starts_with("run 3"), "{width}: {text}");
            }
        }
        let wide = line(&resumed(), 200);
        for field in [
            "[",
            "eta",
            "/s",
            "failed 1",
            "limit 16 in flight, 100/s",
            "retries 12 throttled 4",
        ] {
            assert!(wide.contains(field), "{field} in {wide}");
        }
        // 80 columns less the spinner and a spare column.
        let narrow = line(&resumed(), 77);
        let slow = Frame {
            paced_rate: 3.0 / (20.0 * 86_400.0),
            ..resumed()
        };
        assert!(
            slow.log_line().contains("paced to one call every 160h00m"),
            "{}",
            slow.log_line()
        );
        assert!(narrow.contains("1563/2940 eta 15s 98/s"), "{narrow}");
        assert!(!narrow.contains("retries"), "{narrow}");
        assert!(line(&resumed(), 30).contains("1563/2940"));
    }

    #[test]
    fn the_bar_is_as_wide_as_given() {
        assert_eq!(draw_bar(1, 2, 12), "[=====>    ]");
        assert_eq!(draw_bar(2, 2, 12), "[==========]");
        assert_eq!(draw_bar(0, 0, 4), "[==]");
    }
}
