//! What a vendor says of its quota, as the pacer takes it: the api reads it
//! from an answer's headers (`api::quota_hint`), the pacer acts on it.

use std::time::Duration;

/// What the vendor says about its quota on one answer. Absent fields are unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaHint {
    /// Calls allowed per window.
    pub limit: Option<u64>,
    /// Calls left in the current window.
    pub remaining: Option<u64>,
    /// Time until the window resets.
    pub reset: Option<Duration>,
    /// The window's length, when the policy states it.
    pub window: Option<Duration>,
}

impl QuotaHint {
    /// The vendor's steady rate in calls per second, when limit and window are known.
    pub fn rate(&self) -> Option<f64> {
        let (limit, window) = (self.limit?, self.window?);
        (!window.is_zero() && limit > 0).then(|| limit as f64 / window.as_secs_f64())
    }
}
