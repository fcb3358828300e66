//! `--pace-until`: the rate that ends the run at a deadline.

use std::sync::Arc;
use std::time::Duration;

use crate::pacer::Pacer;
use crate::tally::Tally;

/// Holds the rate at what the records left need to end at `deadline`,
/// recomputed every second, so a slow patch is made up and the credits last
/// until then instead of going all at once. Runs until dropped.
pub async fn pace_until(
    deadline: jiff::Timestamp,
    pending: i64,
    tally: Arc<Tally>,
    pacer: Arc<Pacer>,
) {
    tracing::info!("pacing {pending} records to end by {deadline}");
    // A new rate builds a new (empty) token bucket: change it only when it has
    // moved by a tenth, so a slow pace is not reset before its next token.
    let mut set: Option<f64> = None;
    loop {
        let resolved =
            Tally::get(&tally.done) + Tally::get(&tally.failed) + Tally::get(&tally.no_match);
        let left = (pending as f64 - resolved as f64).max(0.0);
        let secs = deadline
            .duration_since(jiff::Timestamp::now())
            .as_secs_f64();
        // Past the deadline: as fast as limits.rate allows.
        let rate = if secs > 1.0 { left / secs } else { f64::MAX };
        if set.is_none_or(|r| (rate - r).abs() > r * 0.1) {
            pacer.set_ceiling(rate);
            set = Some(rate);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
