//! One file per subcommand. Each is thin: it reads what it needs, calls the
//! engine or the store, and says what happened.

pub mod demo;
pub mod estimate;
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

/// With `credits.remaining_url` (and not `--offline`), asks the vendor's account
/// endpoint for the credits left and records the count with this period. If the
/// vendor cannot say, a warning, and the database's figures stand. Returns
/// whether it called the endpoint.
pub async fn ask_vendor(config: &Config, store: &Store, offline: bool) -> Result<bool> {
    let Some((url, pointer)) = &config.credits.remaining_url else {
        return Ok(false);
    };
    if offline {
        return Ok(false);
    }
    let label = config.credits.periods.label_at(jiff::Timestamp::now());
    store.period(&label, config.credits.allowance).await?;
    let vendor = crate::api::Vendor::new(config, store.mapped_kinds())?;
    match vendor.credits_left(url, pointer).await {
        Ok(left) => {
            store
                .set_vendor_count(
                    &label,
                    left,
                    crate::selection::stamp(jiff::Timestamp::now()),
                )
                .await?
        }
        Err(e) => eprintln!("warning: {e:#}; the figures below use the database's last count"),
    }
    Ok(true)
}

/// This period's credits as the database knows them, for `status` and `estimate`.
#[derive(Debug, Clone, Serialize)]
pub struct PeriodView {
    pub period: String,
    pub allowance: i64,
    /// `credits.reserve`: never spent.
    pub reserve: i64,
    pub spent: i64,
    /// Reserved by a live run for calls not yet answered.
    pub reserved: i64,
    /// Allowance less spent (as in the run summary).
    pub remaining: i64,
    /// What a run may still spend: allowance less reserve, spent and reserved, and
    /// never more than the vendor's own count (less the reserve) when it is known.
    pub available: i64,
    pub vendor_remaining: Option<i64>,
    pub vendor_seen_at: Option<String>,
}

impl PeriodView {
    pub async fn read(store: &Store, config: &Config) -> Result<PeriodView> {
        let credits = &config.credits;
        let label = credits.periods.label_at(jiff::Timestamp::now());
        let row = store.period(&label, credits.allowance).await?;
        let reserve = i64::try_from(credits.reserve).unwrap_or(i64::MAX);
        // A run's reservations count only while it is alive: a killed run's
        // last checkpoint says nothing about calls now.
        let stale_after = config.lock_stale_after;
        let stale_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
        let reserved = match (store.latest_run().await?, store.lock_holder().await?) {
            (Some(run), Some(lock))
                if run.status == "running" && lock.heartbeat_age_s * 1000 < stale_ms =>
            {
                let workers = store.workers(run.id).await?;
                if workers.is_empty() {
                    run.reserved
                } else {
                    // A joined run: what its live workers hold.
                    workers
                        .iter()
                        .filter(|w| w.is_live(stale_after))
                        .map(|w| w.reserved)
                        .sum()
                }
            }
            _ => 0,
        };
        let own = row.allowance - reserve - row.spent - reserved;
        let available = match row.vendor_remaining {
            Some(v) => own.min(v - reserve - reserved),
            None => own,
        }
        .max(0);
        Ok(PeriodView {
            period: row.period,
            allowance: row.allowance,
            reserve,
            spent: row.spent,
            reserved,
            remaining: row.allowance - row.spent,
            available,
            vendor_remaining: row.vendor_remaining,
            vendor_seen_at: row.vendor_seen_at,
        })
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let vendor = match (&self.vendor_remaining, &self.vendor_seen_at) {
            (Some(v), Some(at)) => format!("; the vendor counted {v} left at {at}"),
            (Some(v), None) => format!("; the vendor counted {v} left"),
            _ => String::new(),
        };
        format!(
            "{} available to spend of {} in the period from {}: {} spent, {} reserved by a live run, \
             {} kept in reserve{vendor}",
            self.available, self.allowance, self.period, self.spent, self.reserved, self.reserve
        )
    }
}
