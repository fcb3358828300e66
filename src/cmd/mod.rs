//! One file per subcommand. Each is thin: it reads what it needs, calls the
//! engine or the store, and says what happened.

pub mod demo;
pub mod estimate;
pub mod prune;
pub mod run;
pub mod status;

use anyhow::Result;
use serde::Serialize;

use crate::cli::SelectionArgs;
use crate::config::Config;
use crate::selection::Selection;
use crate::store::Store;

/// The selection the flags and `source.filter` describe.
pub fn selection(args: SelectionArgs, config: &Config) -> Selection {
    Selection {
        ids: args.ids,
        stale_before: args.stale_before,
        limit: args.limit,
        filter: config.source.filter.clone(),
        spend_remaining: false,
    }
}

/// This period's credits as the ledger has them, for `status` and `estimate`:
/// the figures every grant sees, and [`crate::credits::Funds::room`] for what a
/// run may still spend.
#[derive(Debug, Clone, Serialize)]
pub struct PeriodView {
    pub period: String,
    pub allowance: i64,
    /// `credits.reserve`: never spent.
    pub reserve: i64,
    pub spent: i64,
    /// Of `spent`: reserved by runs that died, so counted as spent (the vendor
    /// may have billed the calls they had out).
    pub uncertain: i64,
    /// Reserved by running processes for calls not yet settled.
    pub reserved: i64,
    /// Allowance less spent (as in the run summary).
    pub remaining: i64,
    /// What a run may still spend: allowance less reserve, spent and reserved, and
    /// never more than the vendor's own count (less the reserve) when it is known.
    pub available: i64,
    /// The vendor's last count, less what was spent since it was read.
    pub vendor_remaining: Option<i64>,
    pub vendor_seen_at: Option<String>,
    /// No call before this (UTC): the vendor's quota window a run stopped
    /// for, while it lasts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_after: Option<String>,
}

impl PeriodView {
    pub async fn read(store: &Store, config: &Config) -> Result<PeriodView> {
        let credits = &config.credits;
        let label = credits.periods.label_at(crate::credits::now());
        let funds = store
            .funds(
                &label,
                credits.allowance,
                credits.reserve,
                config.lock_stale_after,
            )
            .await?;
        let row = store.period(&label, credits.allowance).await?;
        Ok(PeriodView {
            period: row.period,
            allowance: funds.allowance,
            reserve: credits.reserve,
            spent: funds.spent,
            uncertain: funds.uncertain,
            reserved: funds.reserved,
            remaining: funds.allowance - funds.spent,
            available: funds.room().0,
            vendor_remaining: funds.vendor,
            vendor_seen_at: row.vendor_seen_at,
            resume_after: row
                .resume_after_ms
                .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
                .filter(|until| *until > crate::credits::now())
                .map(crate::selection::stamp),
        })
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let vendor = match (&self.vendor_remaining, &self.vendor_seen_at) {
            (Some(v), Some(at)) => format!("; the vendor counted {v} left at {at}"),
            (Some(v), None) => format!("; the vendor counted {v} left"),
            _ => String::new(),
        };
        let uncertain = match self.uncertain {
            0 => String::new(),
            n => format!(" ({n} of them reserved by runs that died)"),
        };
        let waiting = match &self.resume_after {
            Some(until) => format!(
                "; no call before {until} (a quota's window: the vendor's, or one of \
                 limits.windows): runs started before then send nothing"
            ),
            None => String::new(),
        };
        format!(
            "{} available to spend of {} in the period from {}: {} spent{uncertain}, {} reserved \
             by running processes, {} kept in reserve{vendor}{waiting}",
            self.available, self.allowance, self.period, self.spent, self.reserved, self.reserve
        )
    }
}
