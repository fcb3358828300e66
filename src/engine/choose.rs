//! The run to work: the unfinished one with this selection, or a new plan.

use std::time::Instant;

use anyhow::Result;

use super::plan::Plan;
use crate::credits::Funds;
use crate::state::RunStatus;
use crate::store::RunRow;

/// Why there was nothing to work.
pub enum Nothing {
    /// The run with this selection is complete (pass `--new` for another).
    Complete(RunRow),
    /// The selection takes no record of the table.
    Unmatched,
    /// `--spend-remaining` with no credit left to spend.
    NoCredits { period: String, funds: Funds },
    /// No call before `until` (a quota's window, the vendor's or one of
    /// `limits.windows`): a run stopped for it, and this one started too early.
    Quota { until: jiff::Timestamp },
}

/// The run to work, or why there is nothing to do.
pub async fn choose(plan: &Plan, period: &str, funds: &Funds) -> Result<Result<RunRow, Nothing>> {
    let (store, selection) = (&plan.store, &plan.selection);
    let previous = store.latest_run_with(selection).await?;
    match previous {
        Some(run)
            if !plan.new && run.status == RunStatus::Complete && !selection.spend_remaining =>
        {
            return Ok(Err(Nothing::Complete(run)));
        }
        Some(run) if !plan.new && run.status != RunStatus::Complete => {
            let pending = store.item_counts(run.id).await?.pending;
            tracing::info!(
                "resuming run {}: {pending} of {} records pending",
                run.id,
                run.total
            );
            return Ok(Ok(run));
        }
        Some(old) if old.status != RunStatus::Complete => {
            store.set_status(old.id, RunStatus::Superseded).await?;
            tracing::info!(
                "run {} left unfinished: superseded by a new run (--new)",
                old.id
            );
        }
        _ => {}
    }
    let cap = match selection.spend_remaining {
        true => {
            let (available, _) = funds.room();
            let budget = plan.max_credits.map_or(available, |max| available.min(max));
            let records = (budget / plan.config.credits.cost).max(0);
            if records == 0 {
                return Ok(Err(Nothing::NoCredits {
                    period: period.to_owned(),
                    funds: *funds,
                }));
            }
            tracing::info!(
                "--spend-remaining: {budget} credits pay for the {records} stalest records"
            );
            Some(records as u64)
        }
        false => None,
    };
    // An empty selection (`--limit 0`, `--ids` that match no key) is not a
    // run: plan nothing.
    let (matched, _) = store.count_selection(selection).await?;
    if matched == 0 || selection.limit == Some(0) {
        return Ok(Err(Nothing::Unmatched));
    }
    let planned = Instant::now();
    let run = store.plan(selection, cap, plan.strict).await?;
    tracing::info!(
        "planned run {}: {} records, stalest first, in {:.2} s",
        run.id,
        run.total,
        planned.elapsed().as_secs_f64()
    );
    Ok(Ok(run))
}
