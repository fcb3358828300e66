//! `freshen run`: plan a run (or resume the unfinished one with the same
//! selection), work it, and report.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::Exit;
use crate::api::Vendor;
use crate::cli::RunArgs;
use crate::config::Config;
use crate::credits::Budget;
use crate::engine::{self, Job, Stop, Tally};
use crate::error::usage;
use crate::metrics::{Live, Metrics};
use crate::pacer::Pacer;
use crate::progress::{Calls, CreditsSummary, Display, Failure, Summary};
use crate::store::{RunRow, Store};

pub async fn run(
    config: Config,
    args: RunArgs,
    shutdown: CancellationToken,
    display: &Display,
) -> Result<Exit> {
    let started = Instant::now();
    let config = Arc::new(config);
    let store = Arc::new(Store::connect(&config).await?);

    // One run at a time per table: a cron run that starts while the last one is
    // still going must not work the same queue.
    let holder = holder_name();
    let stale_after = config.lock_stale_after;
    if let Err(other) = store.lock(&holder, stale_after).await? {
        eprintln!(
            "another run of table `{}` holds the lock: {} since {}, last heartbeat {} s ago; \
             a lock is taken over once its heartbeat is older than lock.stale_after ({})",
            config.source.table,
            other.holder,
            other.acquired_at,
            other.heartbeat_age_s,
            humantime::format_duration(stale_after)
        );
        store.close().await;
        return Ok(Exit::Locked);
    }
    let stop = shutdown.child_token();
    let heartbeat = tokio::spawn(keep_lock(
        store.clone(),
        holder.clone(),
        stale_after / 4,
        stop.clone(),
    ));
    // After the lock: the file belongs to the run that holds it.
    let begun = args
        .metrics_file
        .as_deref()
        .map(|path| Metrics::begin(path, config.source.table.as_str()))
        .transpose();
    let (metrics, result) = match begun {
        Ok(m) => (
            m.clone(),
            locked(
                config.clone(),
                store.clone(),
                args,
                stop,
                display,
                started,
                m,
            )
            .await,
        ),
        Err(e) => (None, Err(e)),
    };
    if let Some(m) = &metrics {
        m.finish(&store, &config, &result).await;
    }
    heartbeat.abort();
    if let Err(e) = store.unlock(&holder).await {
        tracing::warn!("{e:#}; the lock goes stale and is taken over after lock.stale_after");
    }
    store.close().await;
    result
}

/// `host:pid`, to name the holder of the lock in messages.
fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// Refreshes the lock's heartbeat; if another run took the lock over (this one
/// looked dead: suspended, or cut off from the database), stops this one.
async fn keep_lock(
    store: Arc<Store>,
    holder: String,
    every: std::time::Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::time::sleep(every).await;
        match store.heartbeat(&holder).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!("another run took over the lock of this table: stopping");
                stop.cancel();
                return;
            }
            Err(e) => tracing::warn!("cannot refresh the run lock: {e:#}"),
        }
    }
}

/// The run proper, under the lock.
async fn locked(
    config: Arc<Config>,
    store: Arc<Store>,
    args: RunArgs,
    shutdown: CancellationToken,
    display: &Display,
    started: Instant,
    metrics: Option<Arc<Metrics>>,
) -> Result<Exit> {
    let mut selection = crate::cmd::selection(args.selection, &config);
    selection.spend_remaining = args.spend_remaining;
    let credits = &config.credits;
    let deadline = match args.pace_until.as_deref() {
        Some(text) => {
            let at = credits
                .periods
                .parse_time(text)
                .map_err(|e| usage(format!("--pace-until: {e}")))?;
            if at <= jiff::Timestamp::now() {
                return Err(usage(format!(
                    "--pace-until {text} is in the past: give a time still to come"
                )));
            }
            Some(at)
        }
        None => None,
    };
    // The vendor's own count first, if it has an account endpoint: an old count
    // would hold the budget down (or up) wrongly.
    crate::cmd::ask_vendor(&config, &store, false).await?;
    let period = credits.periods.label_at(jiff::Timestamp::now());
    let period_row = store.period(&period, credits.allowance).await?;
    let reserve = i64::try_from(credits.reserve).unwrap_or(i64::MAX);
    // The lower of freshen's count and the vendor's last one (credits.remaining_header).
    let available = {
        let own = period_row.allowance - reserve - period_row.spent;
        period_row
            .vendor_remaining
            .map_or(own, |v| own.min(v - reserve))
    };

    let run = match store.latest_run_with(&selection).await? {
        Some(run) if !args.new && run.status == "complete" && !selection.spend_remaining => {
            println!(
                "run {} with this selection is complete ({} records, finished {}); pass --new to start another",
                run.id,
                run.total,
                run.finished_at.as_deref().unwrap_or("-")
            );
            return Ok(Exit::Complete);
        }
        Some(run) if !args.new && run.status != "complete" => {
            let pending = store.item_counts(run.id).await?.pending;
            tracing::info!(
                "resuming run {}: {pending} of {} records pending",
                run.id,
                run.total
            );
            run
        }
        previous => {
            if let Some(old) = previous.filter(|r| r.status != "complete") {
                store.set_status(old.id, "superseded", true).await?;
                tracing::info!(
                    "run {} left unfinished: superseded by a new run (--new)",
                    old.id
                );
            }
            let cap = if selection.spend_remaining {
                let cost = i64::try_from(credits.cost).unwrap_or(i64::MAX);
                let budget = match args.max_credits {
                    Some(max) => available.min(i64::try_from(max).unwrap_or(i64::MAX)),
                    None => available,
                };
                let records = (budget / cost).max(0);
                if records == 0 {
                    println!(
                        "nothing to spend: {} credits available in the period from {period} \
                         (allowance {}, spent {}, reserve {reserve})",
                        available.max(0),
                        period_row.allowance,
                        period_row.spent
                    );
                    return Ok(Exit::Budget);
                }
                tracing::info!(
                    "--spend-remaining: {budget} credits pay for the {records} stalest records"
                );
                Some(records as u64)
            } else {
                None
            };
            let planning = Instant::now();
            let run = store.plan(&selection, cap).await?;
            tracing::info!(
                "planned run {}: {} records, stalest first, in {:.2} s",
                run.id,
                run.total,
                planning.elapsed().as_secs_f64()
            );
            run
        }
    };

    let mut budget = Budget::new(
        available + reserve + period_row.spent,
        reserve,
        period_row.spent,
        credits.cost as i64,
    );
    if let Some(max) = args.max_credits {
        budget = budget.capped(i64::try_from(max).unwrap_or(i64::MAX), run.credits_spent);
    }
    let budget = Arc::new(budget);

    let before = store.item_counts(run.id).await?;
    store.set_status(run.id, "running", false).await?;
    let tally = Arc::new(Tally::default());
    let pacer = Arc::new(Pacer::new(&config.limits, &config.retry));
    let watching = CancellationToken::new();
    display.watch(
        run.id,
        before.total as u64,
        (before.done + before.failed) as u64,
        tally.clone(),
        pacer.clone(),
        watching.clone(),
    );

    if let Some(deadline) = deadline {
        tokio::spawn(pace_until(
            deadline,
            before.pending,
            tally.clone(),
            pacer.clone(),
            watching.clone(),
        ));
    }

    let job = Job {
        vendor: Vendor::new(&config, store.mapped_kinds())?,
        pacer,
        config: config.clone(),
        store: store.clone(),
        tally: tally.clone(),
        budget: budget.clone(),
        run: run.id,
        period: period.clone(),
    };
    if let Some(m) = &metrics {
        let live = Live {
            run: run.id,
            before,
            calls: run.calls,
            credits: run.credits_spent,
            period: period.clone(),
            allowance: credits.allowance as i64,
            period_spent: period_row.spent,
        };
        let every = args.metrics_every.unwrap_or(crate::metrics::EVERY);
        m.watch(live, every, tally.clone(), watching.clone());
    }
    let sampler = crate::timeline::Sampler::start(
        store.clone(),
        run.id,
        f64::from(config.limits.rate.get()),
        tally.clone(),
        job.pacer.clone(),
    );

    let outcome = engine::execute(job, &shutdown).await;
    watching.cancel();
    sampler.finish().await;
    let stop = match outcome {
        Ok(stop) => stop,
        Err(e) => {
            let _ = store.set_status(run.id, "error", false).await;
            return Err(e);
        }
    };

    if let Some((left, seen_at)) = budget.vendor_count() {
        store
            .set_vendor_count(&period, left, crate::selection::stamp(seen_at))
            .await?;
    }
    let records = store.item_counts(run.id).await?;
    let (status, exit) = match stop {
        Stop::Drained if records.pending == 0 => ("complete", Exit::Complete),
        // Items added back while draining (cannot happen in one process, but the
        // database is the truth): the next run resumes them.
        Stop::Drained => ("stopped", Exit::Complete),
        Stop::Interrupted => ("interrupted", Exit::Interrupted),
        Stop::Budget => ("budget", Exit::Budget),
        Stop::OutOfCredits => ("out_of_credits", Exit::Budget),
        Stop::Outage => ("outage", Exit::Outage),
    };
    store
        .set_status(run.id, status, status == "complete")
        .await?;
    let row = store.run(run.id).await?.expect("the run exists");
    let period_row = store.period(&period, credits.allowance).await?;
    let resolved = Tally::get(&tally.done) + Tally::get(&tally.failed);
    let wall_s = started.elapsed().as_secs_f64();
    let summary = Summary {
        run: run.id,
        status: status.to_owned(),
        records,
        calls: Calls {
            total: row.calls.total(),
            by_outcome: row.calls,
        },
        credits: CreditsSummary {
            period,
            spent: row.credits_spent,
            remaining: period_row.allowance - period_row.spent,
        },
        wall_s,
        rate: resolved as f64 / wall_s.max(1e-3),
        failures: failures(&store, &row).await?,
    };
    summary.print();
    if let Some(path) = &args.summary_json {
        summary.write_json(path)?;
    }
    match stop {
        Stop::Budget => println!(
            "stopped at the credit budget (the period's allowance less credits.reserve, or --max-credits); \
             the rest stays pending"
        ),
        Stop::OutOfCredits => {
            println!("stopped: the vendor reports no credits left (402); the rest stays pending")
        }
        Stop::Interrupted => println!("interrupted: `freshen run` with the same selection resumes"),
        Stop::Outage => println!(
            "stopped: the vendor has been down longer than retry.max_outage; `freshen run` with the same selection resumes"
        ),
        Stop::Drained => {}
    }
    Ok(exit)
}

/// `--pace-until`: holds the rate at what the records left need to end at the
/// deadline, recomputed every second, so a slow patch is made up and the credits
/// last until then instead of going all at once.
async fn pace_until(
    deadline: jiff::Timestamp,
    pending: i64,
    tally: Arc<Tally>,
    pacer: Arc<Pacer>,
    done: CancellationToken,
) {
    tracing::info!("pacing {pending} records to end by {deadline}");
    // A new rate builds a new (empty) token bucket: change it only when it has
    // moved by a tenth, so a slow pace is not reset before its next token.
    let mut set: Option<f64> = None;
    loop {
        let resolved = Tally::get(&tally.done) + Tally::get(&tally.failed);
        let left = (pending as f64 - resolved as f64).max(0.0);
        let secs = deadline
            .duration_since(jiff::Timestamp::now())
            .as_secs_f64();
        // Past the deadline: as fast as limits.rate allows.
        let rate = if secs > 1.0 { left / secs } else { f64::MAX };
        if set.is_none_or(|r| (rate - r).abs() > r * 0.1) {
            pacer.set_ceiling(rate);
            set = Some(rate);
        }
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

async fn failures(store: &Store, run: &RunRow) -> Result<Vec<Failure>> {
    Ok(store
        .failures(run.id, 5)
        .await?
        .into_iter()
        .map(|(key, reason)| Failure { key, reason })
        .collect())
}
