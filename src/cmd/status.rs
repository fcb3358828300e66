//! `freshen status`: the current or last run and this period's credits, read
//! from the database only, so it is right while another process runs.

use anyhow::Result;
use serde::Serialize;

use crate::cli::StatusArgs;
use crate::cmd::PeriodView;
use crate::config::Config;
use crate::error::Exit;
use crate::state::RunStatus;
use crate::store::{CallCounts, ItemCounts, LockHolder, Store, WorkerRow, gone_here};

#[derive(Debug, Serialize)]
struct Status {
    run: Option<RunView>,
    /// The table's run lock, if a row names a holder (`live`: it may be at work).
    lock: Option<LockHolder>,
    credits: PeriodView,
}

#[derive(Debug, Serialize)]
struct RunView {
    id: i64,
    status: RunStatus,
    selection: serde_json::Value,
    records: ItemCounts,
    calls: CallCounts,
    created_at: String,
    updated_at: String,
    finished_at: Option<String>,
    failures: Vec<(String, String)>,
    /// The workers of a joined run (`run --join`), live or not.
    workers: Vec<WorkerView>,
    /// The vendor's outage the run is in, while it runs.
    outage: Option<OutageView>,
}

#[derive(Debug, Serialize)]
struct OutageView {
    /// Seconds since the first worker found the vendor down.
    seconds: f64,
    /// Why the calls fail, as the outage line says it.
    cause: Option<String>,
}

#[derive(Debug, Serialize)]
struct WorkerView {
    #[serde(flatten)]
    row: WorkerRow,
    /// Its heartbeat is fresher than lock.stale_after and its process, if on
    /// this host, is there: its claims hold.
    live: bool,
    /// Gone, holding no credits: its row is removed as this status reports it.
    pruned: bool,
}

pub async fn status(config: Config, args: StatusArgs) -> Result<Exit> {
    let store = Store::connect(&config).await?;
    crate::engine::ask_vendor(&config, &store, args.offline).await?;
    let status = read(&store, &config).await?;
    store.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        match &status.run {
            None => println!("no run yet for table `{}`", config.source.table),
            Some(r) => print_run(r, status.lock.as_ref()),
        }
        println!("credits  {}", status.credits.describe());
    }
    Ok(Exit::Complete)
}

/// The table's latest run, its lock and the period's credits.
async fn read(store: &Store, config: &Config) -> Result<Status> {
    let stale_after = config.lock_stale_after;
    let run = match store.latest_run().await? {
        Some(run) => Some(RunView {
            outage: match run.status {
                RunStatus::Running => store.outage().await?.map(|o| OutageView {
                    seconds: o.age.as_secs_f64(),
                    cause: o.cause,
                }),
                _ => None,
            },
            workers: workers(store, run.id, stale_after).await?,
            records: store.item_counts(run.id).await?,
            failures: store.failures(run.id, 10).await?,
            selection: serde_json::from_str(&run.selection).unwrap_or_default(),
            id: run.id,
            status: run.status,
            calls: run.calls,
            created_at: run.created_at,
            updated_at: run.updated_at,
            finished_at: run.finished_at,
        }),
        None => None,
    };
    Ok(Status {
        run,
        lock: store.lock_holder(stale_after).await?,
        credits: PeriodView::read(store, config).await?,
    })
}

/// The run's lines of the text form.
fn print_run(r: &RunView, lock: Option<&LockHolder>) {
    let (n, c) = (&r.records, &r.calls);
    println!(
        "run {} {} (selection: {})",
        r.id,
        r.status,
        describe_selection(&r.selection)
    );
    let no_match = match n.no_match {
        0 => String::new(),
        k => format!(", {k} no match"),
    };
    println!(
        "  records  {} total, {} done, {} failed{no_match}, {} pending",
        n.total, n.done, n.failed, n.pending
    );
    println!(
        "  calls    {} total: {} ok, {} throttled, {} transient, {} permanent",
        c.total(),
        c.ok,
        c.throttled,
        c.transient,
        c.permanent
    );
    println!(
        "  times    created {}, updated {}, finished {}",
        r.created_at,
        r.updated_at,
        r.finished_at.as_deref().unwrap_or("-")
    );
    if let Some(o) = &r.outage {
        println!(
            "  outage   the vendor fails every call ({}), for {:.0} s: one probe at a time until it answers",
            o.cause.as_deref().unwrap_or("no answer"),
            o.seconds
        );
    }
    for w in &r.workers {
        let w_ = &w.row;
        println!(
            "  worker   {} {}: {} records claimed, {} credits reserved, heartbeat {:.1} s ago{}",
            w_.worker,
            if w.live { "live" } else { "gone" },
            w_.leases,
            w_.reserved,
            w_.heartbeat_age_ms as f64 / 1000.0,
            match (w.live, w.pruned) {
                (true, _) => "",
                (false, true) => " (its claims are free for the others; its row is removed)",
                (false, false) => {
                    " (its claims are free for the others; its row stays until its \
                     reservation is settled)"
                }
            }
        );
    }
    if let Some(lock) = lock {
        if lock.live {
            println!(
                "  lock     held by {} since {}, heartbeat {} s ago",
                lock.holder, lock.acquired_at, lock.heartbeat_age_s
            );
        } else {
            println!(
                "  lock     left by {}, which is gone (heartbeat {} s ago): the next run takes it over",
                lock.holder, lock.heartbeat_age_s
            );
        }
    }
    for (key, reason) in &r.failures {
        println!("  failed   {key}: {reason}");
    }
}

/// The workers of a run, each marked live or gone; the rows of the gone ones
/// are removed (their reservations count as spent in the ledger).
async fn workers(
    store: &Store,
    run: i64,
    stale_after: std::time::Duration,
) -> Result<Vec<WorkerView>> {
    let views: Vec<WorkerView> = store
        .workers(run)
        .await?
        .into_iter()
        .map(|row| {
            let live = row.is_live(stale_after) && !gone_here(&row.worker, &row.started_at);
            WorkerView {
                // A gone worker's reservation counts as spent in the ledger
                // (store::ledger), whether its row stays or not.
                pruned: !live,
                live,
                row,
            }
        })
        .collect();
    let dead: Vec<String> = views
        .iter()
        .filter(|w| w.pruned)
        .map(|w| w.row.worker.clone())
        .collect();
    if !dead.is_empty() {
        store.prune_workers(run, &dead).await?;
    }
    Ok(views)
}

/// A stored selection for people: `all records`, or its flags.
fn describe_selection(selection: &serde_json::Value) -> String {
    let Some(fields) = selection.as_object().filter(|o| !o.is_empty()) else {
        return "all records".to_owned();
    };
    fields
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k} {s}"),
            other => format!("{k} {other}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
