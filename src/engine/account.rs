//! The vendor's own count of the account's credits (`credits.remaining_url`),
//! asked before a run and by `status` and `estimate`.

use anyhow::Result;

use crate::config::Config;
use crate::store::Store;

/// With `credits.remaining_url` (and not `--offline`), asks the vendor's account
/// endpoint for the credits left and records the count with this period. If the
/// vendor cannot say, or cannot be called (its token is not set), a warning,
/// and the database's figures stand. Returns whether it called the endpoint.
pub async fn ask_vendor(config: &Config, store: &Store, offline: bool) -> Result<bool> {
    let Some((url, pointer)) = &config.credits.remaining_url else {
        return Ok(false);
    };
    if offline {
        return Ok(false);
    }
    if let Err(why) = config.vendor_ready() {
        eprintln!(
            "warning: not asking the vendor's account endpoint (credits.remaining_url): {why:#}; \
             the figures below are the database's (--offline skips the question)"
        );
        return Ok(false);
    }
    let label = config.credits.periods.label_at(crate::credits::now());
    store.period(&label, config.credits.allowance).await?;
    let vendor = crate::api::Vendor::new(config, store.kinds())?;
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
