//! `freshen prune`: removes what freshen's own tables no longer need, past a
//! retention (`--older-than`, 30 days by default): the samples of the runs'
//! timelines, and the items of runs that finished (complete, or superseded by
//! `--new`). A run's row and its counts stay, so `status`, `estimate`'s history
//! and the credit ledger are unchanged; `report` of a pruned run shows its
//! counts without its timeline or failures. Unfinished runs are never touched:
//! their items are what a resume works from.

use anyhow::{Context, Result};

use crate::cli::PruneArgs;
use crate::config::Config;
use crate::error::Exit;
use crate::store::Store;

pub async fn prune(config: Config, args: PruneArgs) -> Result<Exit> {
    let retention =
        jiff::SignedDuration::try_from(args.older_than).context("--older-than is too long")?;
    let before = jiff::Timestamp::now()
        .checked_sub(retention)
        .context("--older-than reaches before the year -9999")?;
    let store = Store::connect(&config).await?;
    let pruned = store.prune(before, args.dry_run).await;
    store.close().await;
    let pruned = pruned?;
    if args.json {
        let out = serde_json::json!({
            "before": crate::selection::stamp(before),
            "dry_run": args.dry_run,
            "removed": pruned,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(Exit::Complete);
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    println!(
        "{verb} {} samples older than {} and {} items of {} runs of table `{}` finished before then",
        pruned.samples,
        crate::selection::stamp(before),
        pruned.items,
        pruned.runs,
        config.source.table
    );
    Ok(Exit::Complete)
}
