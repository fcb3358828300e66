//! A run's whole life, from the table's lock to its summary: lock and
//! heartbeat, plan or resume, the credits it may spend, the loop
//! ([`super::execute`]) and its side tasks (progress, metrics, timeline,
//! `--pace-until`), and the stop mapped to the run's status. It prints nothing
//! but the progress bar: [`Outcome`] says what happened, and `cmd/run.rs` says
//! it to the operator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use super::choose::Nothing;
use super::plan::Plan;
use super::{Job, Stop};
use crate::api::Vendor;
use crate::config::Config;
use crate::credits::{Budget, Spent};
use crate::error::Exit;
use crate::fleet::{Crew, Fleet, Joined};
use crate::lease::Lease;
use crate::metrics::{Live, Metrics};
use crate::pacer::Pacer;
use crate::progress::{Calls, CreditsSummary, Display, Failure, Summary};
use crate::state::RunStatus;
use crate::store::{Account, Holder, LockHolder, LockMode, PgStore, RunRow, Store};
use crate::tally::Tally;

/// How a run ended, for the operator.
pub enum Outcome {
    /// Another run of the table holds its lock.
    Locked(LockHolder),
    /// There was nothing to work: no run was planned or resumed.
    Nothing(Nothing),
    /// This process was suspended or cut off from the database for longer
    /// than `lock.stale_after`, so another may have taken its work over; it
    /// made no more calls.
    Fenced,
    /// The run worked until it stopped.
    Ran(Box<Ran>),
}

/// A run that worked, and how it stopped.
pub struct Ran {
    pub stop: Stop,
    pub summary: Summary,
    /// Other live workers of a joined run, still at work.
    pub others: i64,
    /// For [`Stop::Budget`]: which limit stopped it.
    pub budget_limit: &'static str,
    /// For [`Stop::Outage`]: whether the vendor was never reached, and why the
    /// last call failed.
    pub outage: Option<OutageCause>,
}

pub struct OutageCause {
    /// No call was answered in this run and every call failed to connect for
    /// `retry.connect_grace`.
    pub unreachable: bool,
    pub cause: String,
    pub grace: Duration,
}

impl Outcome {
    /// The process's exit code for it.
    pub fn exit(&self) -> Exit {
        match self {
            Outcome::Locked(_) | Outcome::Fenced => Exit::Locked,
            Outcome::Nothing(Nothing::NoCredits { .. } | Nothing::Quota { .. }) => Exit::Budget,
            Outcome::Nothing(_) => Exit::Complete,
            Outcome::Ran(ran) => ran.stop.exit(),
        }
    }
}

impl Stop {
    pub fn exit(self) -> Exit {
        match self {
            Stop::Drained => Exit::Complete,
            Stop::Interrupted => Exit::Interrupted,
            Stop::Budget | Stop::OutOfCredits | Stop::Quota { .. } => Exit::Budget,
            Stop::Outage => Exit::Outage,
            Stop::Fenced => Exit::Locked,
        }
    }
}

/// Runs `plan` under the table's lock: the lock is taken first (or the
/// outcome names who holds it), kept fresh while the run goes on, and released
/// whatever happens.
pub async fn run(plan: Plan, shutdown: CancellationToken, display: &Display) -> Result<Outcome> {
    let started = Instant::now();
    let store = plan.store.clone();
    let config = plan.config.clone();
    let stale_after = config.lock_stale_after;
    // One run at a time per table: a cron run that starts while the last one is
    // still going must not work the same queue. The workers of a joined run
    // share one holder name, and with it the lock.
    let worker = crate::store::this_process();
    let mode = LockMode::of(plan.join);
    let holder = match plan.join {
        true => format!("the workers of `run --join` {}", plan.selection.canonical()),
        false => worker.clone(),
    };
    if let Err(other) = store.lock(&holder, stale_after, mode).await? {
        return Ok(Outcome::Locked(other));
    }
    let stop = shutdown.child_token();
    let held = super::held::Held::keep(store.clone(), holder, mode, stale_after, &stop);
    // After the lock: the metrics file belongs to the run that holds it.
    let metrics = plan
        .metrics
        .as_ref()
        .map(|(path, every)| {
            Metrics::begin(path, config.source.table.as_str()).map(|m| (m, *every))
        })
        .transpose();
    let result = match metrics {
        Ok(metrics) => {
            let life = Life {
                plan,
                worker: worker.clone(),
                metrics: metrics.clone(),
                started,
                display,
            };
            let result = life.locked(stop).await;
            if let Some((m, _)) = &metrics {
                let exit = result.as_ref().map(Outcome::exit);
                m.finish(&store, &config, exit).await;
            }
            result
        }
        Err(e) => Err(e),
    };
    let result = match result {
        Err(e) => Err(store.explain_timeout(e).await),
        ok => ok,
    };
    held.release(&worker).await;
    result
}

/// A run under the table's lock.
struct Life<'a> {
    plan: Plan,
    /// This process, as the ledger and the run's claims name it.
    worker: String,
    metrics: Option<(Arc<Metrics>, Duration)>,
    started: Instant,
    display: &'a Display,
}

impl Life<'_> {
    /// The run proper, under the lock: choose the run, then work it.
    async fn locked(&self, shutdown: CancellationToken) -> Result<Outcome> {
        let plan = &self.plan;
        let Plan { config, store, .. } = plan;
        let credits = &config.credits;
        // The vendor's own count first, if it has an account endpoint: an old count
        // would hold the budget down (or up) wrongly.
        super::ask_vendor(config, store, false).await?;
        let now = crate::credits::now();
        let period = credits.periods.label_at(now);
        // A quota's window a run stopped for: no call before it.
        let waiting = store
            .period(&period, credits.allowance)
            .await?
            .resume_after_ms;
        if let Some(until) = waiting.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
            && until > now
        {
            return Ok(Outcome::Nothing(Nothing::Quota { until }));
        }
        let funds = store
            .funds(
                &period,
                credits.allowance,
                credits.reserve,
                config.lock_stale_after,
            )
            .await?;
        // The workers of a joined run start together: the first plans, the others
        // find its run.
        let planning = match plan.join {
            true => {
                let pg = postgres(store)?;
                Some((pg.planning_lock().await?, pg))
            }
            false => None,
        };
        let chosen = super::choose::choose(plan, &period, &funds).await;
        if let Some((conn, pg)) = planning {
            pg.planning_unlock(conn).await?;
        }
        let run = match chosen? {
            Ok(run) => run,
            Err(nothing) => return Ok(Outcome::Nothing(nothing)),
        };
        let live = Live {
            run: run.id,
            before: store.item_counts(run.id).await?,
            calls: run.calls,
            credits: run.credits_spent,
            period,
            allowance: credits.allowance,
            period_spent: funds.spent,
        };
        self.work(run, live, shutdown).await
    }

    /// Works `run` with its lease, credits and side tasks, then maps its stop to
    /// the run's status and sums it up.
    async fn work(&self, run: RunRow, live: Live, shutdown: CancellationToken) -> Result<Outcome> {
        let (plan, worker) = (&self.plan, self.worker.as_str());
        let Plan { config, store, .. } = plan;
        let stale_after = config.lock_stale_after;
        let lease = Lease::take(store.clone(), run.id, worker.to_owned(), stale_after).await?;
        let crew = self.crew(run.id).await?;
        let budget = budget(plan, worker, run.id);
        store.set_status(run.id, RunStatus::Running).await?;
        let tally = Arc::new(Tally::default());
        let pacer = Arc::new(Pacer::new(&config.limits, &config.retry));
        if let Crew::Joined(fleet) = &crew {
            pacer.join(fleet.clone());
        }
        let watching = CancellationToken::new();
        let before = live.before;
        self.display.watch(
            run.id,
            before.total as u64,
            (before.done + before.failed + before.no_match) as u64,
            tally.clone(),
            pacer.clone(),
            watching.clone(),
        );
        if let Some(deadline) = plan.pace_until {
            let pace =
                super::deadline::pace_until(deadline, before.pending, tally.clone(), pacer.clone());
            tokio::spawn(watching.clone().run_until_cancelled_owned(pace));
        }
        tokio::spawn(lease.clone().keep(watching.clone(), shutdown.clone()));
        if let Some((m, every)) = &self.metrics {
            m.watch(live, *every, tally.clone(), watching.clone());
        }
        let sampler = crate::timeline::Sampler::start(
            store.clone(),
            run.id,
            config.limits.rate,
            tally.clone(),
            pacer.clone(),
        );
        let job = Job {
            lease: lease.clone(),
            crew: crew.clone(),
            vendor: Vendor::new(config, store.kinds())?,
            pacer: pacer.clone(),
            config: config.clone(),
            store: store.clone(),
            tally: tally.clone(),
            budget: budget.clone(),
            run: run.id,
        };
        let executed = super::execute(job, &shutdown).await;
        watching.cancel();
        sampler.finish().await;
        let others = crew.leave(store, &lease, run.id, executed.settled).await?;
        let outcome = executed.stop;
        let stop = match outcome {
            Ok(stop) => stop,
            Err(e) => {
                if others == 0 {
                    let _ = store.set_status(run.id, RunStatus::Error).await;
                }
                return Err(e);
            }
        };
        if let Stop::Quota { until, .. } = stop {
            let period = config.credits.periods.label_at(crate::credits::now());
            store.set_resume_after(&period, Some(until)).await?;
        }
        if let Some(left) = budget.vendor_count() {
            let now = crate::credits::now();
            let period = config.credits.periods.label_at(now);
            store
                .set_vendor_count(&period, left, crate::selection::stamp(now))
                .await?;
        }
        if stop == Stop::Fenced {
            return Ok(Outcome::Fenced);
        }
        let ended = Ended {
            stop,
            others,
            started: self.started,
            tally: &tally,
            budget: &budget,
            pacer: &pacer,
        };
        ended
            .sum_up(config, store, run.id)
            .await
            .map(|ran| Outcome::Ran(Box::new(ran)))
    }

    /// With `--join`, this worker's share of the run's queue, rate and
    /// credits; alone, nothing (and claims an earlier `--join` left go).
    async fn crew(&self, run: i64) -> Result<Crew> {
        let (config, store, worker) = (&self.plan.config, &self.plan.store, &self.worker);
        let stale_after = config.lock_stale_after;
        Ok(match self.plan.join {
            true => {
                let pg = postgres(store)?;
                pg.join_pace().await?;
                tracing::info!("worker {worker} joins run {}", run);
                Crew::Joined(Arc::new(Fleet::new(
                    pg,
                    Joined {
                        worker: worker.to_owned(),
                        run,
                        stale_after,
                        rate: config.limits.rate,
                        burst: config.limits.burst.get(),
                    },
                )))
            }
            false => {
                // Alone on the run: claims left by the workers of an earlier `--join`
                // mean nothing now.
                store.clear_leases(run).await?;
                Crew::Alone
            }
        })
    }
}

/// The store as PostgreSQL, for a joined run (`run` refuses `--join` on SQLite
/// before it gets here).
fn postgres(store: &Arc<Store>) -> Result<PgStore> {
    store
        .postgres()
        .context("--join needs PostgreSQL: database.url is SQLite; run without --join")
}

/// The run's budget: every credit comes from the ledger in the database, a
/// few calls' worth at a time, shared with every other run spending from the
/// period.
fn budget(plan: &Plan, worker: &str, run: i64) -> Arc<Budget> {
    let config = &plan.config;
    let credits = &config.credits;
    let account = Account::new(
        plan.store.clone(),
        Holder {
            worker: worker.to_owned(),
            run,
            allowance: credits.allowance,
            reserve: credits.reserve,
            // Grants come in whole calls; a vendor that says what each call
            // cost leaves parts of calls in hand, which add up: then any
            // credit is worth granting.
            grant_unit: match credits.reports_cost() {
                true => 1,
                false => credits.cost,
            },
            run_limit: plan.max_credits,
            stale_after: config.lock_stale_after,
        },
    );
    Arc::new(Budget::new(
        Arc::new(account),
        credits.periods.clone(),
        credits.cost,
        credits.reserve,
        credits
            .cost
            .saturating_mul(i64::from(config.limits.max_concurrency.get())),
    ))
}

/// A stopped run, on its way to its summary.
struct Ended<'a> {
    stop: Stop,
    others: i64,
    started: Instant,
    tally: &'a Tally,
    budget: &'a Budget,
    pacer: &'a Pacer,
}

impl Ended<'_> {
    /// Maps the stop to the run's status, stores it, and sums the run up.
    async fn sum_up(self, config: &Config, store: &Store, run: i64) -> Result<Ran> {
        let records = store.item_counts(run).await?;
        let status = match self.stop {
            Stop::Drained if records.pending == 0 => RunStatus::Complete,
            // This worker stops; the run goes on with the others.
            _ if self.others > 0 && records.pending > 0 => RunStatus::Running,
            // Items added back while draining (cannot happen in one process, but
            // the database is the truth): the next run resumes them.
            Stop::Drained => RunStatus::Stopped,
            Stop::Interrupted => RunStatus::Interrupted,
            Stop::Budget => RunStatus::Budget,
            Stop::OutOfCredits => RunStatus::OutOfCredits,
            Stop::Outage => RunStatus::Outage,
            Stop::Quota { .. } => RunStatus::Quota,
            Stop::Fenced => unreachable!("a fenced run has no summary"),
        };
        store.set_status(run, status).await?;
        let row = store.run(run).await?.expect("the run exists");
        let credits = &config.credits;
        let period = credits.periods.label_at(crate::credits::now());
        let period_row = store.period(&period, credits.allowance).await?;
        let resolved = Tally::get(&self.tally.done)
            + Tally::get(&self.tally.failed)
            + Tally::get(&self.tally.no_match);
        let wall_s = self.started.elapsed().as_secs_f64();
        let reach = &self.pacer.reach;
        let summary = Summary {
            run,
            status,
            exit_code: self.stop.exit().code(),
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
            failures: failures(store, &row).await?,
            cause: match self.stop {
                Stop::Outage => reach.cause(),
                _ => None,
            },
            resume_after: match self.stop {
                Stop::Quota { until, .. } => Some(crate::selection::stamp(until)),
                _ => None,
            },
        };
        Ok(Ran {
            stop: self.stop,
            summary,
            others: self.others,
            budget_limit: match self.budget.spent_at() {
                Some(Spent::At(limit)) => limit.describe(),
                _ => "the credit budget is spent",
            },
            outage: (self.stop == Stop::Outage).then(|| OutageCause {
                unreachable: reach.unreachable(tokio::time::Instant::now()),
                cause: reach.cause().unwrap_or_else(|| "no answer".into()),
                grace: reach.grace(),
            }),
        })
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
