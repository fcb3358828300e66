//! `freshen report`: what happened in a run, read from the database: its summary,
//! its timeline (`freshen_samples`), its credits against the period's allowance
//! and its failures grouped by reason. One self-contained HTML file (inline SVG,
//! no script, no network) for a person, or JSON for a script.

mod html;
mod svg;

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::ReportArgs;
use crate::config::Config;
use crate::error::Exit;
use crate::error::usage;
use crate::progress::Calls;
use crate::state::RunStatus;
use crate::store::{FailureGroup, ItemCounts, Sample, Store};

/// Reasons listed, and example keys per reason.
const GROUPS: i64 = 50;
const EXAMPLES: i64 = 5;

/// Everything the report shows. `records`, `calls` and `credits.spent` and
/// `credits.remaining` are the figures of `run --summary-json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub run: i64,
    pub table: String,
    pub status: RunStatus,
    pub selection: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    pub records: ItemCounts,
    pub calls: Calls,
    pub credits: Credits,
    pub limits: Limits,
    /// The timeline, oldest first: every process that worked on the run.
    pub samples: Vec<Sample>,
    /// Failed records by reason, most frequent first (at most 50 reasons, 5 keys each).
    pub failures: Vec<FailureGroup>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Credits {
    /// The period the run last worked in.
    pub period: String,
    /// Spent by this run, over all its resumes.
    pub spent: i64,
    /// Left in the period: allowance less everything spent in it.
    pub remaining: i64,
    pub allowance: i64,
    /// `credits.reserve`: what runs must leave unspent.
    pub reserve: i64,
    /// Spent in the period by every run.
    pub period_spent: i64,
}

/// The configured ceilings, as the report is made.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Limits {
    pub rate: f64,
    pub max_concurrency: u32,
}

pub async fn report(config: Config, args: ReportArgs) -> Result<Exit> {
    if args.out.is_none() && !args.json {
        return Err(usage(
            "freshen report needs --out FILE (the HTML report) or --json (to standard output)",
        ));
    }
    let store = Store::connect(&config).await?;
    let result = gather(&store, &config, args.run).await;
    store.close().await;
    if let (Err(e), true) = (&result, args.json) {
        println!("{}", json_error(&format!("{e:#}"), &config));
    }
    let Some(report) = result? else {
        // Nothing to report is not success: a script that mails the page or
        // pipes the JSON to jq must see it, and `--json` keeps stdout JSON.
        let message = format!(
            "no run yet for table `{}`: nothing to report; `freshen run` makes one",
            config.source.table
        );
        if args.json {
            let error =
                serde_json::json!({"error": message, "table": config.source.table.to_string()});
            println!("{}", serde_json::to_string_pretty(&error).expect("JSON"));
        } else {
            eprintln!("{message}");
        }
        return Ok(Exit::Error);
    };
    if let Some(out) = &args.out {
        write_html(&report, out)?;
        eprintln!("report of run {} written to {}", report.run, out.display());
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report always serializes")
        );
    }
    Ok(Exit::Complete)
}

/// What `--json` prints instead of a report: `{"error": …, "table": …}`.
fn json_error(message: &str, config: &Config) -> String {
    let error = serde_json::json!({"error": message, "table": config.source.table.to_string()});
    serde_json::to_string_pretty(&error).expect("JSON always serializes")
}

/// The report of run `run`, or of the table's latest run; None when there is no run.
pub async fn gather(store: &Store, config: &Config, run: Option<i64>) -> Result<Option<Report>> {
    let row = match run {
        Some(id) => {
            let row = store.run(id).await?;
            match row {
                Some(r) => Some(r),
                None => {
                    return Err(usage(format!(
                        "--run {id}: there is no run {id} in the database; `freshen status` shows the latest"
                    )));
                }
            }
        }
        None => store.latest_run().await?,
    };
    let Some(row) = row else {
        return Ok(None);
    };
    let last_seen = row
        .updated_at
        .parse::<jiff::Timestamp>()
        .unwrap_or_else(|_| jiff::Timestamp::now());
    let period = config.credits.periods.label_at(last_seen);
    let period_row = store.period(&period, config.credits.allowance).await?;
    Ok(Some(Report {
        run: row.id,
        table: config.source.table.to_string(),
        selection: serde_json::from_str(&row.selection).unwrap_or_default(),
        records: store.item_counts(row.id).await?,
        calls: Calls {
            total: row.calls.total(),
            by_outcome: row.calls,
        },
        credits: Credits {
            period,
            spent: row.credits_spent,
            remaining: period_row.allowance - period_row.spent,
            allowance: period_row.allowance,
            reserve: config.credits.reserve,
            period_spent: period_row.spent,
        },
        limits: Limits {
            rate: config.limits.rate,
            max_concurrency: config.limits.max_concurrency.get(),
        },
        samples: store.samples(row.id).await?,
        failures: store.failure_groups(row.id, GROUPS, EXAMPLES).await?,
        status: row.status,
        created_at: row.created_at,
        updated_at: row.updated_at,
        finished_at: row.finished_at,
    }))
}

/// Writes the HTML report (through a temporary file, so a reader never sees half of it).
pub fn write_html(report: &Report, out: &Path) -> Result<()> {
    let page = html::page(report);
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, page)
        .and_then(|()| std::fs::rename(&tmp, out))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| {
            format!(
                "cannot write --out {}: check that the directory {} exists and is writable",
                out.display(),
                dir.display()
            )
        })
}
