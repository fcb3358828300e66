//! `freshen run`: the flags checked, the run worked by [`engine::run`], and
//! what happened said to the operator.

use std::sync::Arc;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::cli::RunArgs;
use crate::config::Config;
use crate::engine::{self, Nothing, OutageCause, Outcome, Plan, Ran, Stop};
use crate::error::{Exit, usage};
use crate::progress::Display;
use crate::store::{Backend, Store};

pub async fn run(
    config: Config,
    args: RunArgs,
    shutdown: CancellationToken,
    display: &Display,
) -> Result<Exit> {
    let config = Arc::new(config);
    let pace_until = match args.pace_until.as_deref() {
        Some(text) => Some(deadline(&config, text)?),
        None => None,
    };
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
    let plan = Plan {
        config: config.clone(),
        store,
        selection,
        join: args.join,
        new: args.new,
        strict: args.strict,
        max_credits: args.max_credits,
        pace_until,
        metrics: args
            .metrics_file
            .clone()
            .map(|path| (path, args.metrics_every.unwrap_or(crate::metrics::EVERY))),
    };
    let outcome = engine::run(plan, shutdown, display).await?;
    let exit = outcome.exit();
    match outcome {
        Outcome::Locked(other) => eprintln!(
            "another run of table `{}` holds the lock: {} since {}, last heartbeat {} s ago; \
             a lock is taken over once its heartbeat is older than lock.stale_after ({})",
            config.source.table,
            other.holder,
            other.acquired_at,
            other.heartbeat_age_s,
            humantime::format_duration(config.lock_stale_after)
        ),
        Outcome::Nothing(nothing) => say_nothing(&nothing),
        Outcome::Fenced => println!(
            "stopped: this process was suspended or cut off from the database for longer than \
             lock.stale_after, so another run may have taken its work over; it made no more calls. \
             {} what is left",
            resumes(&args)
        ),
        Outcome::Ran(ran) => say_ran(&ran, &config, &args)?,
    }
    Ok(exit)
}

/// `--pace-until`'s time, which must be still to come.
fn deadline(config: &Config, text: &str) -> Result<jiff::Timestamp> {
    let at = config
        .credits
        .periods
        .parse_time(text)
        .map_err(|e| usage(format!("--pace-until: {e}")))?;
    if at <= jiff::Timestamp::now() {
        return Err(usage(format!(
            "--pace-until {text} is in the past: give a time still to come"
        )));
    }
    Ok(at)
}

fn say_nothing(nothing: &Nothing) {
    match nothing {
        Nothing::Complete(run) => println!(
            "run {} with this selection is complete ({} records, finished {}); pass --new to start another",
            run.id,
            run.total,
            run.finished_at.as_deref().unwrap_or("-")
        ),
        Nothing::Unmatched => println!(
            "nothing matched: the selection (--ids, --stale-before, --limit and \
             source.filter) takes no record of the table; no run planned"
        ),
        Nothing::Quota { until } => println!(
            "nothing sent: no call may go before {} (a quota's window a run stopped for: \
             the vendor's, or one of limits.windows); run again after it",
            crate::selection::stamp(*until)
        ),
        Nothing::NoCredits { period, funds: f } => println!(
            "nothing to spend: {} credits available in the period from {period} \
             (allowance {}, spent {}, reserved by live runs {}, reserve {})",
            f.room().0,
            f.allowance,
            f.spent,
            f.reserved,
            f.reserve
        ),
    }
}

/// The summary, and a line on why the run stopped.
fn say_ran(ran: &Ran, config: &Config, args: &RunArgs) -> Result<()> {
    ran.summary.print();
    if let Some(path) = &args.summary_json {
        ran.summary.write_json(path)?;
    }
    match ran.stop {
        Stop::Budget => println!(
            "stopped at the credit budget: {}; the rest stays pending",
            ran.budget_limit
        ),
        Stop::OutOfCredits => {
            println!("stopped: the vendor reports no credits left (402); the rest stays pending")
        }
        Stop::Interrupted => println!("interrupted: {}", resumes(args)),
        Stop::Quota {
            until,
            window: None,
        } => println!(
            "stopped: the vendor asks for no call before {} (a quota's window, past \
             retry.max_delay); the rest stays pending, and a run started before then exits \
             without a call; {} after it",
            crate::selection::stamp(until),
            resumes(args)
        ),
        Stop::Quota {
            until,
            window: Some(window),
        } => println!(
            "stopped: limits.windows {window} has no call free before {} (past \
             retry.max_delay); the rest stays pending, and a run started before then exits \
             without a call; {} after it",
            crate::selection::stamp(until),
            resumes(args)
        ),
        Stop::Outage => {
            if let Some(outage) = &ran.outage {
                println!("{}", outage_message(outage, config, args))
            }
        }
        Stop::Drained | Stop::Fenced => {}
    }
    if ran.others > 0 && ran.summary.records.pending > 0 {
        println!(
            "this worker leaves; {} other worker(s) of run {} go on",
            ran.others, ran.summary.run
        );
    }
    Ok(())
}

/// Why the run stopped at exit 4: the vendor down past `retry.max_outage`, or
/// never reached at all (a wrong `api.base_url`), with the last call's cause.
fn outage_message(outage: &OutageCause, config: &Config, args: &RunArgs) -> String {
    let cause = &outage.cause;
    if outage.unreachable {
        format!(
            "stopped: cannot reach the vendor at api.base_url ({}): {cause}; no call was answered \
             in this run and every call failed to connect for retry.connect_grace ({}). Check \
             api.base_url in {} (and the network, DNS or proxy); nothing was marked failed",
            without_password(&config.api.base_url),
            humantime::format_duration(outage.grace),
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
