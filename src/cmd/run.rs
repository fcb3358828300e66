//! `freshen run`: plan a run (or resume the unfinished one with the same
//! selection), work it, and report.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::api::Vendor;
use crate::cli::RunArgs;
use crate::config::Config;
use crate::credits::{Budget, Spent};
use crate::engine::{self, Job, Stop, Tally};
use crate::error::Exit;
use crate::error::usage;
use crate::fleet::{Fleet, Joined};
use crate::lease::Lease;
use crate::metrics::{Live, Metrics};
use crate::pacer::Pacer;
use crate::progress::{Calls, CreditsSummary, Display, Failure, Summary};
use crate::selection::Selection;
use crate::store::{Account, Backend, Holder, RunRow, Store};

pub async fn run(
    config: Config,
    args: RunArgs,
    shutdown: CancellationToken,
    display: &Display,
) -> Result<Exit> {
    let started = Instant::now();
    let config = Arc::new(config);
    let store = Arc::new(Store::connect(&config).await?);
    if args.join && store.backend() != Backend::Postgres {
        store.close().await;
        return Err(usage(format!(
            "--join needs PostgreSQL: the workers of a run share it through the database's \
             row locks, and database.url in {} is SQLite; run without --join, or move the \
             table to PostgreSQL",
            config.path.display()
        )));
    }
    let mut selection = crate::cmd::selection(args.selection.clone(), &config);
    selection.spend_remaining = args.spend_remaining;

    // One run at a time per table: a cron run that starts while the last one is
    // still going must not work the same queue. The workers of a joined run
    // share one holder name, and with it the lock.
    let worker = crate::store::this_process();
    let holder = if args.join {
        format!("the workers of `run --join` {}", selection.canonical())
    } else {
        worker.clone()
    };
    let stale_after = config.lock_stale_after;
    if let Err(other) = store.lock(&holder, stale_after, args.join).await? {
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
        stale_after,
        args.join,
        stop.clone(),
    ));
    let unblock = tokio::spawn(unblock_when_stopped(store.clone(), stop.clone()));
    let who_joined = args.join;
    let who = Who {
        worker: worker.clone(),
        join: args.join,
    };
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
                Locked {
                    config: config.clone(),
                    store: store.clone(),
                    selection,
                    who,
                    started,
                    metrics: m,
                },
                args,
                stop,
                display,
            )
            .await,
        ),
        Err(e) => (None, Err(e)),
    };
    if let Some(m) = &metrics {
        m.finish(&store, &config, &result).await;
    }
    heartbeat.abort();
    unblock.abort();
    let result = match result {
        Err(e) => Err(store.explain_timeout(e).await),
        ok => ok,
    };
    let unlocked = if who_joined {
        // The last worker out releases the lock; the others leave it to it.
        let last = store.unlock_if_last(&holder, &worker, stale_after).await;
        store.release().await;
        last.map(|_| ())
    } else {
        store.unlock(&holder).await
    };
    if let Err(e) = unlocked {
        tracing::warn!("{e:#}; the next run takes the lock over once this process has ended");
    }
    store.close().await;
    result
}

/// This process: its name, and whether it is one of a joined run's workers.
struct Who {
    worker: String,
    join: bool,
}

/// What the run proper works with, once the lock is held.
struct Locked {
    config: Arc<Config>,
    store: Arc<Store>,
    selection: Selection,
    who: Who,
    started: Instant,
    metrics: Option<Arc<Metrics>>,
}

/// Refreshes the lock's heartbeat; if another run took the lock over (this one
/// looked dead: suspended, or cut off from the database), stops this one. The
/// workers of a joined run share the lock: if the last one out released it as
/// this one came in, it is taken again.
async fn keep_lock(
    store: Arc<Store>,
    holder: String,
    stale_after: std::time::Duration,
    shared: bool,
    stop: CancellationToken,
) {
    loop {
        tokio::time::sleep(stale_after / 4).await;
        let kept = match store.heartbeat(&holder).await {
            // A solo run whose row was taken over stops; a joined run's row
            // may have been released by the last worker out as this one came.
            Ok(false) if shared => store
                .lock(&holder, stale_after, shared)
                .await
                .map(|taken| taken.is_ok()),
            kept => kept,
        };
        match kept {
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

/// Once the run stops, cancels its statements that wait for another session's
/// lock (PostgreSQL), every second: a SIGTERM does not wait out that session.
async fn unblock_when_stopped(store: Arc<Store>, stop: CancellationToken) {
    stop.cancelled().await;
    loop {
        match store.cancel_lock_waits().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                "stopping: cancelled {n} statement(s) waiting for another session's lock"
            ),
            Err(e) => tracing::debug!("{e:#}"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The run proper, under the lock.
async fn locked(
    locked: Locked,
    args: RunArgs,
    shutdown: CancellationToken,
    display: &Display,
) -> Result<Exit> {
    let Locked {
        config,
        store,
        selection,
        who,
        started,
        metrics,
    } = locked;
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
    let period = credits.periods.label_at(crate::credits::now());
    let reserve = i64::try_from(credits.reserve).unwrap_or(i64::MAX);
    let funds = store
        .funds(&period, credits.allowance, reserve, config.lock_stale_after)
        .await?;

    // The workers of a joined run start together: the first plans, the others
    // find its run.
    let planning = match who.join {
        true => Some(store.planning_lock().await?),
        false => None,
    };
    let cost = i64::try_from(credits.cost).unwrap_or(i64::MAX);
    let max_credits = args
        .max_credits
        .map(|m| i64::try_from(m).unwrap_or(i64::MAX));
    let plan_funds = PlanFunds {
        period: &period,
        funds: &funds,
        cost,
        max_credits,
    };
    let chosen = choose_run(&store, &selection, &args, &plan_funds).await;
    if let Some(conn) = planning {
        store.planning_unlock(conn).await?;
    }
    let run = match chosen? {
        Ok(run) => run,
        Err(exit) => return Ok(exit),
    };

    let lease = Lease::take(
        store.clone(),
        run.id,
        who.worker.clone(),
        config.lock_stale_after,
    )
    .await?;
    let fleet = if who.join {
        store.join_pace().await?;
        let fleet = Arc::new(Fleet::new(
            store.clone(),
            Joined {
                worker: who.worker.clone(),
                run: run.id,
                stale_after: config.lock_stale_after,
                rate: f64::from(config.limits.rate.get()),
                burst: config.limits.burst.get(),
            },
        ));
        tracing::info!("worker {} joins run {}", who.worker, run.id);
        Some(fleet)
    } else {
        // Alone on the run: claims left by the workers of an earlier `--join`
        // mean nothing now.
        store.clear_leases(run.id).await?;
        None
    };
    // Every credit comes from the ledger in the database, a few calls' worth at
    // a time, shared with every other run spending from the period.
    let account = Account::new(
        store.clone(),
        Holder {
            worker: who.worker.clone(),
            run: run.id,
            allowance: i64::try_from(credits.allowance).unwrap_or(i64::MAX),
            reserve,
            cost,
            run_limit: max_credits,
            stale_after: config.lock_stale_after,
        },
    );
    let budget = Arc::new(Budget::new(
        Arc::new(account),
        credits.periods.clone(),
        cost,
        reserve,
        cost.saturating_mul(i64::from(config.limits.max_concurrency.get())),
    ));

    let before = store.item_counts(run.id).await?;
    store.set_status(run.id, "running", false).await?;
    let tally = Arc::new(Tally::default());
    let pacer = Arc::new(Pacer::new(&config.limits, &config.retry));
    let reach = pacer.clone();
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

    tokio::spawn(lease.clone().keep(watching.clone(), shutdown.clone()));
    let job = Job {
        lease: lease.clone(),
        fleet: fleet.clone(),
        vendor: Vendor::new(&config, store.mapped_kinds())?,
        pacer,
        config: config.clone(),
        store: store.clone(),
        tally: tally.clone(),
        budget: budget.clone(),
        run: run.id,
    };
    if let Some(m) = &metrics {
        let live = Live {
            run: run.id,
            before,
            calls: run.calls,
            credits: run.credits_spent,
            period: period.clone(),
            allowance: credits.allowance as i64,
            period_spent: funds.spent,
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
    // A worker of a joined run gives back the items it claimed and did not
    // finish; the others may still be at work. Every process gives back its
    // unused credits, unless it failed with answers unwritten (their credits
    // may have been billed: they count as spent once its heartbeat is stale)
    // or was fenced (its reservation is another's to settle).
    let fenced = lease.is_fenced();
    if let Some(fleet) = &fleet
        && !fenced
    {
        store.release_claims(run.id, &fleet.worker).await?;
    }
    if outcome.is_ok() && !fenced {
        store.leave(&lease.worker).await?;
    }
    let others = match &fleet {
        Some(fleet) => {
            store
                .other_live_workers(run.id, &fleet.worker, fleet.stale_after)
                .await?
        }
        None => 0,
    };
    let stop = match outcome {
        Ok(stop) => stop,
        Err(e) => {
            if others == 0 {
                let _ = store.set_status(run.id, "error", false).await;
            }
            return Err(e);
        }
    };

    if let Some(left) = budget.vendor_count() {
        let now = crate::credits::now();
        store
            .set_vendor_count(
                &credits.periods.label_at(now),
                left,
                crate::selection::stamp(now),
            )
            .await?;
    }
    if stop == Stop::Fenced {
        println!(
            "stopped: this process was suspended or cut off from the database for longer than \
             lock.stale_after, so another run may have taken its work over; it made no more calls. \
             {} what is left",
            resumes(&args)
        );
        return Ok(Exit::Locked);
    }
    let records = store.item_counts(run.id).await?;
    let exit = match stop {
        Stop::Drained => Exit::Complete,
        Stop::Interrupted => Exit::Interrupted,
        Stop::Budget | Stop::OutOfCredits => Exit::Budget,
        Stop::Outage => Exit::Outage,
        Stop::Fenced => Exit::Locked,
    };
    let status = match stop {
        Stop::Drained if records.pending == 0 => "complete",
        // This worker stops; the run goes on with the others.
        _ if others > 0 && records.pending > 0 => "running",
        // Items added back while draining (cannot happen in one process, but the
        // database is the truth): the next run resumes them.
        Stop::Drained => "stopped",
        Stop::Interrupted => "interrupted",
        Stop::Budget => "budget",
        Stop::OutOfCredits => "out_of_credits",
        Stop::Outage => "outage",
        Stop::Fenced => unreachable!("a fenced run returned above"),
    };
    store
        .set_status(run.id, status, status == "complete")
        .await?;
    let row = store.run(run.id).await?.expect("the run exists");
    let period = credits.periods.label_at(crate::credits::now());
    let period_row = store.period(&period, credits.allowance).await?;
    let resolved = Tally::get(&tally.done) + Tally::get(&tally.failed);
    let wall_s = started.elapsed().as_secs_f64();
    let summary = Summary {
        run: run.id,
        status: status.to_owned(),
        exit_code: exit.code(),
        records,
        skipped: row.skipped,
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
        cause: match stop {
            Stop::Outage => reach.reach.cause(),
            _ => None,
        },
    };
    summary.print();
    if let Some(path) = &args.summary_json {
        summary.write_json(path)?;
    }
    match stop {
        Stop::Budget => {
            let why = match budget.spent_at() {
                Some(Spent::At(limit)) => limit.describe(),
                _ => "the credit budget is spent",
            };
            println!("stopped at the credit budget: {why}; the rest stays pending")
        }
        Stop::OutOfCredits => {
            println!("stopped: the vendor reports no credits left (402); the rest stays pending")
        }
        Stop::Interrupted => println!("interrupted: {}", resumes(&args)),
        Stop::Outage => println!("{}", outage_message(&reach, &config, &args)),
        Stop::Drained | Stop::Fenced => {}
    }
    if others > 0 && records.pending > 0 {
        println!(
            "this worker leaves; {others} other worker(s) of run {} go on",
            run.id
        );
    }
    Ok(exit)
}

/// The period's credits, as the run's plan sees them.
struct PlanFunds<'a> {
    period: &'a str,
    funds: &'a crate::credits::Funds,
    cost: i64,
    /// `--max-credits`.
    max_credits: Option<i64>,
}

/// The run to work: the unfinished one with this selection, or a new plan; or
/// the exit to take when there is nothing to do.
async fn choose_run(
    store: &Store,
    selection: &Selection,
    args: &RunArgs,
    funds: &PlanFunds<'_>,
) -> Result<Result<RunRow, Exit>> {
    Ok(Ok(match store.latest_run_with(selection).await? {
        Some(run) if !args.new && run.status == "complete" && !selection.spend_remaining => {
            println!(
                "run {} with this selection is complete ({} records, finished {}); pass --new to start another",
                run.id,
                run.total,
                run.finished_at.as_deref().unwrap_or("-")
            );
            return Ok(Err(Exit::Complete));
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
                let (available, _) = funds.funds.room();
                let budget = match funds.max_credits {
                    Some(max) => available.min(max),
                    None => available,
                };
                let records = (budget / funds.cost).max(0);
                if records == 0 {
                    let f = funds.funds;
                    println!(
                        "nothing to spend: {available} credits available in the period from {} \
                     (allowance {}, spent {}, reserved by live runs {}, reserve {})",
                        funds.period, f.allowance, f.spent, f.reserved, f.reserve
                    );
                    return Ok(Err(Exit::Budget));
                }
                tracing::info!(
                    "--spend-remaining: {budget} credits pay for the {records} stalest records"
                );
                Some(records as u64)
            } else {
                None
            };
            // An empty selection (`--limit 0`, `--ids` that match no key) is not a
            // run: say so, and plan nothing.
            let (matched, _) = store.count_selection(selection).await?;
            if matched == 0 || selection.limit == Some(0) {
                println!(
                    "nothing matched: the selection (--ids, --stale-before, --limit and \
                     source.filter) takes no record of the table; no run planned"
                );
                return Ok(Err(Exit::Complete));
            }
            let planned = Instant::now();
            let run = store.plan(selection, cap, args.strict).await?;
            tracing::info!(
                "planned run {}: {} records, stalest first, in {:.2} s",
                run.id,
                run.total,
                planned.elapsed().as_secs_f64()
            );
            run
        }
    }))
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

/// Why the run stopped at exit 4: the vendor down past `retry.max_outage`, or
/// never reached at all (a wrong `api.base_url`), with the last call's cause.
fn outage_message(pacer: &Pacer, config: &Config, args: &RunArgs) -> String {
    let cause = pacer.reach.cause().unwrap_or_else(|| "no answer".into());
    if pacer.reach.unreachable(tokio::time::Instant::now()) {
        format!(
            "stopped: cannot reach the vendor at api.base_url ({}): {cause}; no call was answered \
             in this run and every call failed to connect for retry.connect_grace ({}). Check \
             api.base_url in {} (and the network, DNS or proxy); nothing was marked failed",
            without_password(&config.api.base_url),
            humantime::format_duration(pacer.reach.grace()),
            config.path.display()
        )
    } else {
        format!(
            "stopped: the vendor has been down longer than retry.max_outage (last error: {cause}); \
             {}",
            resumes(args)
        )
    }
}

/// What resumes the run, as the messages say it: `freshen demo` for the demo's.
fn resumes(args: &RunArgs) -> &'static str {
    if args.demo {
        "`freshen demo` resumes"
    } else {
        "`freshen run` with the same selection resumes"
    }
}

/// A URL as it may be shown: any password in it replaced.
fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("(redacted)"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
