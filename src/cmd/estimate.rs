//! `freshen estimate`: what a run with these flags would do, from the database
//! alone. It makes no billed call: at most one to the vendor's account endpoint
//! (`credits.remaining_url`), which `--offline` skips.
//!
//! The figures are the ones `run` then acts on: the same selection (or the
//! unfinished run it would resume), the same stalest-first order, the same budget
//! (the period's allowance less `credits.reserve`, what is spent and what a live
//! run has reserved, the vendor's own count when it is lower, and `--max-credits`).

use anyhow::Result;
use serde::Serialize;

use crate::cli::EstimateArgs;
use crate::cmd::{PeriodView, selection};
use crate::config::Config;
use crate::error::Exit;
use crate::store::Store;

#[derive(Debug, Serialize)]
pub struct Estimate {
    pub table: String,
    /// The estimate asked the vendor's account endpoint (`credits.remaining_url`,
    /// unbilled); otherwise it read the database only.
    pub asked_account: bool,
    /// The unfinished run with this selection that `run` would resume.
    pub resumes_run: Option<i64>,
    /// Records the run would call for.
    pub selected: i64,
    /// Records the ids and filter select that `--stale-before` leaves out.
    pub skipped_fresh: i64,
    /// Records the plan would leave out for their keys: NULL, or shared with
    /// another record (`--strict` refuses such a plan).
    pub skipped_keys: i64,
    /// What those are, for the human report.
    #[serde(skip)]
    pub key_problems: Option<String>,
    pub credits: Credits,
    /// `covered`, or `partial` when the budget reaches only `covered` records.
    pub verdict: &'static str,
    pub covered: i64,
    /// The last record the budget reaches, stalest first, when it does not reach all.
    pub cut: Option<Cut>,
    /// Seconds the covered records take at `limits.rate` and under
    /// `limits.windows`, with the calls per record seen in past runs.
    pub seconds: f64,
    /// The pace's ceiling, calls per second: `limits.rate`, or the shortest
    /// window's pace.
    pub rate: f64,
    /// `limits.windows`, as `CALLS/WINDOW`.
    pub windows: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Credits {
    pub cost: i64,
    /// Billed calls per resolved record in past runs, less one.
    pub retry_overhead: f64,
    /// With `credits.cost_header`: the credits a resolved record cost in past
    /// runs, as the vendor reported them (retries included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_cost: Option<f64>,
    pub needed: i64,
    /// What this run may spend: the period's available credits, or less with
    /// `--max-credits`.
    pub budget: i64,
    pub period: PeriodView,
}

impl Credits {
    /// The `credits` line: what is needed, and what a record costs.
    fn describe(&self) -> String {
        let per_record = match self.mean_cost {
            Some(mean) => format!(
                "{mean:.2} per record as the vendor reported them in past runs (at most {} a call)",
                self.cost
            ),
            None => format!(
                "{} per record, +{}% retry overhead seen in past runs",
                self.cost,
                percent(self.retry_overhead)
            ),
        };
        format!("{} needed: {per_record}", self.needed)
    }
}

#[derive(Debug, Serialize)]
pub struct Cut {
    pub key: String,
    pub refreshed_at: Option<String>,
}

pub async fn estimate(config: Config, args: EstimateArgs) -> Result<Exit> {
    let store = Store::connect(&config).await?;
    let result = compute(&config, &store, args.clone()).await;
    store.close().await;
    let estimate = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&estimate)?);
    } else {
        print!("{}", estimate.render());
    }
    Ok(Exit::Complete)
}

/// What a record costs, from past runs of the table.
struct PerRecord {
    /// Credits per record as a fraction, `num / den`: integer arithmetic, so
    /// 110 credits over 100 records is exactly 1.1.
    num: i128,
    den: i128,
    mean_cost: Option<f64>,
    retry_overhead: f64,
}

/// Past runs' credits per resolved record, never below `credits.cost` unless
/// the vendor reports each call's cost: then it charges less than `cost`, the
/// most one may cost, and past runs' mean is the estimate.
fn per_record(history: &crate::store::History, credits: &crate::config::Credits) -> PerRecord {
    let cost = credits.cost;
    let reported = credits.reports_cost() && history.resolved > 0;
    let (num, den) =
        if reported || history.resolved > 0 && history.credits_spent > history.resolved * cost {
            (history.credits_spent as i128, history.resolved as i128)
        } else {
            (cost as i128, 1)
        };
    PerRecord {
        num,
        den,
        mean_cost: reported.then(|| num as f64 / den as f64),
        retry_overhead: match reported {
            true => 0.0,
            false => (num as f64 / (den as f64 * cost.max(1) as f64)) - 1.0,
        },
    }
}

pub async fn compute(config: &Config, store: &Store, args: EstimateArgs) -> Result<Estimate> {
    let asked_account = crate::engine::ask_vendor(config, store, args.offline).await?;
    let selection = selection(args.selection, config);
    let resume = store
        .latest_run_with(&selection)
        .await?
        .filter(|r| !r.status.is_final());
    let mut problems = None;
    let (selected, skipped_fresh) = match &resume {
        Some(run) => (store.item_counts(run.id).await?.pending, 0),
        None => {
            // As `run` plans: the selected count already leaves them out.
            let found = store.key_problems(&selection).await?;
            if found.skipped() > 0 {
                if args.strict {
                    return Err(found.refusal());
                }
                problems = Some(found);
            }
            let (count, fresh) = store.count_selection(&selection).await?;
            let limit = selection
                .limit
                .map_or(count, |l| count.min(i64::try_from(l).unwrap_or(i64::MAX)));
            (limit, fresh)
        }
    };

    let history = store.history().await?;
    let cost = config.credits.cost;
    let PerRecord {
        num: per_num,
        den: per_den,
        mean_cost,
        retry_overhead,
    } = per_record(&history, &config.credits);
    let calls_per_record = if history.resolved > 0 {
        (history.calls as f64 / history.resolved as f64).max(1.0)
    } else {
        1.0
    };
    let needed =
        i64::try_from((selected as i128 * per_num + per_den - 1) / per_den).unwrap_or(i64::MAX);

    let period = PeriodView::read(store, config).await?;
    let budget = match args.max_credits {
        Some(max) => {
            let spent_by_run = resume.as_ref().map_or(0, |r| r.credits_spent);
            period.available.min(max - spent_by_run).max(0)
        }
        None => period.available,
    };
    let covered = if needed <= budget {
        selected
    } else {
        i64::try_from(budget as i128 * per_den / per_num.max(1))
            .unwrap_or(i64::MAX)
            .min(selected)
    };
    let cut = if covered < selected && covered > 0 {
        let found = match &resume {
            Some(run) => store.nth_pending(run.id, covered - 1).await?,
            None => store.nth_stalest(&selection, covered - 1).await?,
        };
        found.map(|(key, refreshed_at)| Cut { key, refreshed_at })
    } else {
        None
    };
    let limits = &config.limits;
    Ok(Estimate {
        table: config.source.table.to_string(),
        asked_account,
        resumes_run: resume.map(|r| r.id),
        selected,
        skipped_fresh,
        skipped_keys: problems.as_ref().map_or(0, |p| p.skipped()),
        key_problems: problems.map(|p| p.describe()),
        credits: Credits {
            cost,
            retry_overhead,
            mean_cost,
            needed,
            budget,
            period,
        },
        verdict: if covered == selected {
            "covered"
        } else {
            "partial"
        },
        covered,
        cut,
        seconds: limits.seconds_for(covered as f64 * calls_per_record),
        rate: limits.rate,
        windows: limits.windows.iter().map(ToString::to_string).collect(),
    })
}

impl Estimate {
    /// The human report: one fact per line, label first.
    pub fn render(&self) -> String {
        let c = &self.credits;
        let p = &c.period;
        let mut out = String::new();
        let mut line = |label: &str, text: String| {
            out.push_str(&format!("{label:<13}{text}\n"));
        };
        line(
            "estimate",
            if self.asked_account {
                format!(
                    "table `{}`, from the database and one unbilled call to the vendor's \
                     account endpoint (credits.remaining_url); no billed call",
                    self.table
                )
            } else {
                format!(
                    "table `{}`, from the database only: no call to the vendor",
                    self.table
                )
            },
        );
        let records = match self.resumes_run {
            Some(run) => format!(
                "{} pending in unfinished run {run}, which `run` resumes",
                self.selected
            ),
            None if self.skipped_fresh > 0 => format!(
                "{} selected, {} skipped as already fresh",
                self.selected, self.skipped_fresh
            ),
            None => format!("{} selected", self.selected),
        };
        line("records", records);
        if let Some(problems) = &self.key_problems {
            line(
                "keys",
                format!("skipped: {problems} (run --strict refuses such a plan)"),
            );
        }
        line("credits", c.describe());
        let vendor = p
            .vendor_remaining
            .map(|v| format!(", vendor counts {v} left"))
            .unwrap_or_default();
        line(
            "period",
            format!(
                "from {}: {} allowance, {} spent, {} reserved, {} kept in reserve{vendor}: {} available",
                p.period, p.allowance, p.spent, p.reserved, p.reserve, p.available
            ),
        );
        if c.budget < p.available {
            line("budget", format!("{} (--max-credits)", c.budget));
        }
        let verdict = if self.selected == 0 {
            "nothing matched: the selection takes no record; `run` would plan nothing".to_owned()
        } else if self.verdict == "covered" {
            format!("covered: the budget reaches all {} records", self.selected)
        } else {
            format!("covers {} of {} records", self.covered, self.selected)
        };
        line("verdict", verdict);
        match &self.cut {
            Some(cut) => line(
                "budget cut",
                format!(
                    "after key {} ({}), stalest first; the rest stays pending",
                    cut.key,
                    match &cut.refreshed_at {
                        Some(at) => format!("refreshed_at {at}"),
                        None => "never refreshed".to_owned(),
                    }
                ),
            ),
            None if self.covered == 0 && self.selected > 0 => line(
                "budget cut",
                "before the first record: nothing can be spent".to_owned(),
            ),
            None => {}
        }
        let rate = format!("{:.2}", self.rate);
        let rate = rate.trim_end_matches('0').trim_end_matches('.');
        let pace = match self.windows.is_empty() {
            true => format!("at limits.rate {rate}/s"),
            false => format!(
                "at {rate}/s at most, under limits.windows {}",
                self.windows.join(", ")
            ),
        };
        line(
            "time",
            format!("about {} {pace}", human_seconds(self.seconds)),
        );
        out
    }
}

/// A share as a percentage with one decimal; an overhead too small for that is
/// `<0.1`, never `0.0` (which it is not: it can add a credit to the count).
fn percent(share: f64) -> String {
    let p = share * 100.0;
    if p > 0.0 && p < 0.05 {
        "<0.1".to_owned()
    } else {
        format!("{p:.1}")
    }
}

/// Seconds for people, rounded to the nearest (the JSON's `seconds` is exact),
/// and at least 1 s for any work at all.
fn human_seconds(s: f64) -> String {
    let s = if s > 0.0 {
        s.round().max(1.0) as u64
    } else {
        0
    };
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", (s + 30) / 60),
        _ => format!("{:.1} h", s as f64 / 3600.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_rounds_as_the_figures_do() {
        // JSON `seconds 1.01` is "about 1 s", not 2.
        assert_eq!(human_seconds(1.01), "1 s");
        assert_eq!(human_seconds(0.05), "1 s");
        assert_eq!(human_seconds(0.0), "0 s");
        // Minutes to the nearest too: 121 s is about 2 min, not 3.
        assert_eq!(human_seconds(121.0), "2 min");
        assert_eq!(human_seconds(149.0), "2 min");
        assert_eq!(human_seconds(150.0), "3 min");
        // 10,001 credits over 10,000 records: an overhead, if a small one.
        assert_eq!(percent(1.0 / 10_000.0), "<0.1");
        assert_eq!(percent(0.0), "0.0");
        assert_eq!(percent(0.104), "10.4");
    }
}
