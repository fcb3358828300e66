//! `--metrics-file PATH`: the run's figures in Prometheus' text exposition format,
//! for node_exporter's textfile collector. Rewritten every few seconds while the
//! run works and once more at exit, always whole: written to a temporary file in
//! the same directory, then renamed over the old one, so a reader sees the last
//! version or the new one, never half of either.
//!
//! The last run's exit code, status and end time stay in the file while the next
//! run works (they are carried over from the file itself), so an alert on them does
//! not flap while a run is under way.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{Exit, exit_of, usage};
use crate::store::{CallCounts, ItemCounts, Store};
use crate::tally::Tally;

/// How often the file is rewritten while a run works.
pub const EVERY: Duration = Duration::from_secs(5);

pub struct Metrics {
    path: PathBuf,
    table: String,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Default)]
struct State {
    running: bool,
    run: Option<i64>,
    records: Option<ItemCounts>,
    calls: Option<CallCounts>,
    run_credits: Option<i64>,
    /// (period, allowance, spent)
    period: Option<(String, i64, i64)>,
    last: Option<LastRun>,
    /// Set once the exit is written: a late periodic write must not undo it.
    done: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct LastRun {
    code: i32,
    status: String,
    end: f64,
    /// Unix seconds: no call before it (the vendor's quota window it stopped for).
    resume_after: Option<f64>,
}

/// What the periodic writer needs to count a run as it goes, without a query.
pub struct Live {
    pub run: i64,
    /// The run's items when this process started on it.
    pub before: ItemCounts,
    /// The run's calls and credits before this process.
    pub calls: CallCounts,
    pub credits: i64,
    pub period: String,
    pub allowance: i64,
    /// The period's credits spent when this process started.
    pub period_spent: i64,
}

impl Metrics {
    /// Starts the file: the run is in progress, and the last run's figures, if the
    /// file holds them, are kept. A file that cannot be written is a usage error:
    /// cron would otherwise run blind.
    pub fn begin(path: &Path, table: &str) -> Result<Arc<Metrics>> {
        let last = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| carried_over(&text));
        let metrics = Metrics {
            path: path.to_owned(),
            table: table.to_owned(),
            state: Mutex::new(State {
                running: true,
                last,
                ..State::default()
            }),
        };
        let text = metrics.render(&metrics.state.lock().expect("metrics lock"));
        write_atomic(&metrics.path, &text).map_err(|e| {
            usage(format!(
                "--metrics-file {}: {e:#}; create its directory or choose a writable path",
                path.display()
            ))
        })?;
        Ok(Arc::new(metrics))
    }

    /// Rewrites the file every `every` ([`EVERY`] unless a test says otherwise)
    /// from the live counters, until `stop`.
    pub fn watch(
        self: &Arc<Self>,
        live: Live,
        every: Duration,
        tally: Arc<Tally>,
        stop: CancellationToken,
    ) {
        let metrics = self.clone();
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                let now = tally.now();
                let (done, failed, no_match) = (now.done, now.failed, now.no_match);
                let credits = now.credits;
                let result = metrics.update(|s| {
                    s.run = Some(live.run);
                    s.records = Some(ItemCounts {
                        total: live.before.total,
                        done: live.before.done + done,
                        failed: live.before.failed + failed,
                        no_match: live.before.no_match + no_match,
                        pending: (live.before.pending - done - failed - no_match).max(0),
                    });
                    s.calls = Some(CallCounts {
                        ok: live.calls.ok + now.calls.ok,
                        throttled: live.calls.throttled + now.calls.throttled,
                        transient: live.calls.transient + now.calls.transient,
                        permanent: live.calls.permanent + now.calls.permanent,
                    });
                    s.run_credits = Some(live.credits + credits);
                    s.period = Some((
                        live.period.clone(),
                        live.allowance,
                        live.period_spent + credits,
                    ));
                });
                if let Err(e) = result
                    && !warned
                {
                    warned = true;
                    tracing::warn!(
                        "{e:#}; the run goes on, and the file is tried again every {} s",
                        EVERY.as_secs()
                    );
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every.max(Duration::from_millis(10))) => {}
                }
            }
        });
    }

    /// The last write: the run's figures as the database holds them, the exit code
    /// and the end time. Failures are logged: the run's own exit code stands.
    pub async fn finish(
        &self,
        store: &Store,
        config: &Config,
        result: Result<Exit, &anyhow::Error>,
    ) {
        let now = jiff::Timestamp::now();
        let mut fresh = State::default();
        let mut status = result.err().map(|e| exit_of(e).1.to_owned());
        let mut resume_after = None;
        let read = async {
            if let Some(run) = store.latest_run().await? {
                fresh.records = Some(store.item_counts(run.id).await?);
                fresh.run = Some(run.id);
                fresh.calls = Some(run.calls);
                fresh.run_credits = Some(run.credits_spent);
                status.get_or_insert(run.status.to_string());
            }
            let label = config.credits.periods.label_at(now);
            let p = store.period(&label, config.credits.allowance).await?;
            fresh.period = Some((p.period, p.allowance, p.spent));
            resume_after = p
                .resume_after_ms
                .filter(|ms| *ms > now.as_millisecond())
                .map(|ms| ms as f64 / 1000.0);
            anyhow::Ok(())
        };
        if let Err(e) = read.await {
            tracing::warn!(
                "--metrics-file: cannot read the run's figures for the last write: {e:#}"
            );
        }
        let code = match result {
            Ok(exit) => exit.code(),
            Err(e) => exit_of(e).0.code(),
        };
        let written = self.update(|s| {
            s.running = false;
            s.run = fresh.run.or(s.run);
            s.records = fresh.records.or(s.records);
            s.calls = fresh.calls.or(s.calls);
            s.run_credits = fresh.run_credits.or(s.run_credits);
            s.period = fresh.period.take().or(s.period.take());
            s.last = Some(LastRun {
                code,
                status: status.take().unwrap_or_else(|| "unknown".into()),
                end: now.as_millisecond() as f64 / 1000.0,
                resume_after,
            });
        });
        self.state.lock().expect("metrics lock").done = true;
        if let Err(e) = written {
            tracing::warn!("{e:#}");
        }
    }

    fn update(&self, change: impl FnOnce(&mut State)) -> Result<()> {
        let mut state = self.state.lock().expect("metrics lock");
        if state.done {
            return Ok(());
        }
        change(&mut state);
        let text = self.render(&state);
        // Written under the lock: two writers never race to the rename.
        write_atomic(&self.path, &text)
            .with_context(|| format!("cannot write --metrics-file {}", self.path.display()))
    }

    fn render(&self, s: &State) -> String {
        let mut w = Families {
            table: escape(&self.table),
            out: String::with_capacity(2048),
        };
        w.family(
            "freshen_run_in_progress",
            "gauge",
            "1 while freshen works on a run of the table, 0 once it has exited.",
            &one(if s.running { 1.0 } else { 0.0 }),
        );
        if let Some(run) = s.run {
            w.family(
                "freshen_run_id",
                "gauge",
                "The run in progress, or the last one.",
                &one(run as f64),
            );
        }
        if let Some(r) = s.records {
            w.family(
                "freshen_records",
                "gauge",
                "Records of that run by status.",
                &[
                    (",status=\"done\"".into(), r.done as f64),
                    (",status=\"failed\"".into(), r.failed as f64),
                    (",status=\"no_match\"".into(), r.no_match as f64),
                    (",status=\"pending\"".into(), r.pending as f64),
                ],
            );
        }
        if let Some(c) = s.calls {
            w.family(
                "freshen_calls_total",
                "counter",
                "Calls to the vendor for that run, over all its resumes, by outcome.",
                &[
                    (",outcome=\"ok\"".into(), c.ok as f64),
                    (",outcome=\"throttled\"".into(), c.throttled as f64),
                    (",outcome=\"transient\"".into(), c.transient as f64),
                    (",outcome=\"permanent\"".into(), c.permanent as f64),
                ],
            );
        }
        if let Some(spent) = s.run_credits {
            w.family(
                "freshen_run_credits_spent",
                "gauge",
                "Credits that run spent, over all its resumes.",
                &one(spent as f64),
            );
        }
        credits(&mut w, s);
        last_run(&mut w, s);
        w.family(
            "freshen_metrics_updated_timestamp_seconds",
            "gauge",
            "When freshen last wrote this file, Unix time.",
            &one(jiff::Timestamp::now().as_millisecond() as f64 / 1000.0),
        );
        w.out
    }
}

/// The metric families of the text format, written one after another.
struct Families {
    table: String,
    out: String,
}

impl Families {
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
        let out = &mut self.out;
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let t = &self.table;
            let _ = writeln!(out, "{name}{{table=\"{t}\"{labels}}} {}", number(*value));
        }
    }
}

/// One sample without labels but the table's.
fn one(v: f64) -> Vec<(String, f64)> {
    vec![(String::new(), v)]
}

/// The period's allowance, spent and remaining.
fn credits(w: &mut Families, s: &State) {
    if let Some((period, allowance, spent)) = &s.period {
        let p = format!(",period=\"{}\"", escape(period));
        w.family(
            "freshen_credits_allowance",
            "gauge",
            "Credits the vendor grants in the current period.",
            &[(p.clone(), *allowance as f64)],
        );
        w.family(
            "freshen_credits_spent",
            "gauge",
            "Credits spent in the current period, by every run.",
            &[(p.clone(), *spent as f64)],
        );
        w.family(
            "freshen_credits_remaining",
            "gauge",
            "Credits left in the current period: allowance less spent.",
            &[(p, (*allowance - *spent) as f64)],
        );
    }
}

/// How the last `freshen run` ended.
fn last_run(w: &mut Families, s: &State) {
    if let Some(last) = &s.last {
        w.family(
            "freshen_last_run_exit_code",
            "gauge",
            "Exit code of the last `freshen run` that ended: 0 complete, 3 budget, 4 vendor down, 5 locked by another run, 6 the vendor refused the key or most answers failed, 130 interrupted, 1 and 2 errors.",
            &one(f64::from(last.code)),
        );
        w.family(
            "freshen_last_run_end_timestamp_seconds",
            "gauge",
            "When the last `freshen run` ended, Unix time.",
            &one(last.end),
        );
        w.family(
            "freshen_last_run_status",
            "gauge",
            "1 for the status the last `freshen run` ended with.",
            &[(format!(",status=\"{}\"", escape(&last.status)), 1.0)],
        );
        if let Some(at) = last.resume_after {
            w.family(
                "freshen_resume_after_timestamp_seconds",
                "gauge",
                "No call before this time, Unix time: the vendor's quota window the last `freshen run` stopped for (status quota).",
                &one(at),
            );
        }
    }
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

/// The last run's figures from an earlier version of the file.
fn carried_over(text: &str) -> Option<LastRun> {
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let status = text
        .lines()
        .find(|l| l.starts_with("freshen_last_run_status{"))
        .and_then(|l| l.split("status=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("unknown")
        .to_owned();
    Some(LastRun {
        code: value("freshen_last_run_exit_code")? as i32,
        end: value("freshen_last_run_end_timestamp_seconds")?,
        resume_after: value("freshen_resume_after_timestamp_seconds"),
        status,
    })
}

/// Writes `text` to `path` whole: a temporary file in the same directory (not named
/// `*.prom`, so the collector skips it), flushed to disk, renamed over `path`.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "metrics".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_run_is_carried_over_from_the_file() {
        let m = Metrics {
            path: PathBuf::new(),
            table: "people".into(),
            state: Mutex::new(State::default()),
        };
        for resume_after in [None, Some(1_790_086_400.0)] {
            let last = LastRun {
                code: 3,
                status: "quota".into(),
                end: 1_790_000_000.5,
                resume_after,
            };
            let text = m.render(&State {
                last: Some(last.clone()),
                ..State::default()
            });
            assert_eq!(carried_over(&text), Some(last));
        }
        assert_eq!(
            carried_over("freshen_run_in_progress{table=\"people\"} 1\n"),
            None
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
