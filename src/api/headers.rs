//! The vendor's pacing hints in response headers: `Retry-After`, the IETF
//! `RateLimit` / `RateLimit-Policy` fields (both the structured-field form of the
//! current draft and the older `limit=, remaining=, reset=` form), and the de facto
//! `X-RateLimit-Limit/-Remaining/-Reset`.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

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

/// Reads whichever rate-limit headers the answer carries; `None` when it has none.
pub fn quota_hint(headers: &HeaderMap) -> Option<QuotaHint> {
    quota_hint_at(headers, SystemTime::now())
}

fn quota_hint_at(headers: &HeaderMap, now: SystemTime) -> Option<QuotaHint> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let number = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
    let mut hint = QuotaHint::default();

    if let Some(field) = get("ratelimit") {
        if field.contains('=') && !field.contains(';') {
            // Older draft: `limit=100, remaining=50, reset=5`.
            for (key, value) in field.split(',').filter_map(|p| p.split_once('=')) {
                let value = value.trim().parse::<u64>().ok();
                match key.trim() {
                    "limit" => hint.limit = value,
                    "remaining" => hint.remaining = value,
                    "reset" => hint.reset = value.map(Duration::from_secs),
                    _ => {}
                }
            }
        } else {
            // Current draft, a structured field: `"default";r=50;t=30`.
            hint.remaining = param(field, "r");
            hint.reset = param(field, "t").map(Duration::from_secs);
        }
    }
    if let Some(policy) = get("ratelimit-policy") {
        // `"default";q=100;w=60`, or the older `100;w=60`.
        let first = policy.split(',').next().unwrap_or_default();
        hint.limit = param(first, "q")
            .or_else(|| first.split(';').next()?.trim().parse().ok())
            .or(hint.limit);
        hint.window = param(first, "w").map(Duration::from_secs);
    }
    for prefix in ["ratelimit-", "x-ratelimit-"] {
        hint.limit = hint.limit.or_else(|| number(&format!("{prefix}limit")));
        hint.remaining = hint
            .remaining
            .or_else(|| number(&format!("{prefix}remaining")));
        hint.reset = hint
            .reset
            .or_else(|| number(&format!("{prefix}reset")).and_then(|r| reset_after(r, now)));
    }
    (hint != QuotaHint::default()).then_some(hint)
}

/// A `parameter=value` of a structured field's first member.
fn param(field: &str, name: &str) -> Option<u64> {
    field
        .split(',')
        .next()?
        .split(';')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// `X-RateLimit-Reset` is delta seconds for some vendors and a Unix time for
/// others; a value past 2001-09-09 (1e9 seconds) can only be a Unix time.
fn reset_after(value: u64, now: SystemTime) -> Option<Duration> {
    if value < 1_000_000_000 {
        return Some(Duration::from_secs(value));
    }
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(value);
    Some(at.duration_since(now).unwrap_or_default())
}

/// `Retry-After` as delta seconds or an HTTP date. `0`, a date in the past, or
/// anything unparsable is no hint (`None`): the caller falls back to its own backoff.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    parse_retry_after(value, SystemTime::now())
}

fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .ok()?,
    };
    (!wait.is_zero()).then_some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn x_ratelimit_with_delta_and_epoch_resets() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = headers(&[
            ("x-ratelimit-limit", "200"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "2"),
        ]);
        let hint = quota_hint_at(&h, now).unwrap();
        assert_eq!(
            (hint.limit, hint.remaining, hint.reset),
            (Some(200), Some(0), Some(Duration::from_secs(2)))
        );
        let h = headers(&[
            ("x-ratelimit-remaining", "5"),
            ("x-ratelimit-reset", "1700000007"),
        ]);
        assert_eq!(
            quota_hint_at(&h, now).unwrap().reset,
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn ietf_draft_forms() {
        let now = SystemTime::UNIX_EPOCH;
        let h = headers(&[("ratelimit", "limit=100, remaining=50, reset=5")]);
        let hint = quota_hint_at(&h, now).unwrap();
        assert_eq!(
            (hint.limit, hint.remaining, hint.reset),
            (Some(100), Some(50), Some(Duration::from_secs(5)))
        );

        let h = headers(&[
            ("ratelimit", "\"default\";r=0;t=3"),
            ("ratelimit-policy", "\"default\";q=200;w=1"),
        ]);
        let hint = quota_hint_at(&h, now).unwrap();
        assert_eq!(hint.remaining, Some(0));
        assert_eq!(hint.reset, Some(Duration::from_secs(3)));
        assert_eq!(hint.rate(), Some(200.0));

        let h = headers(&[("ratelimit-policy", "100;w=60")]);
        assert_eq!(quota_hint_at(&h, now).unwrap().rate(), Some(100.0 / 60.0));
    }

    #[test]
    fn no_or_garbled_headers_give_no_hint() {
        assert_eq!(
            quota_hint_at(&HeaderMap::new(), SystemTime::UNIX_EPOCH),
            None
        );
        let h = headers(&[("x-ratelimit-remaining", "lots"), ("ratelimit", "nonsense")]);
        assert_eq!(quota_hint_at(&h, SystemTime::UNIX_EPOCH), None);
    }

    #[test]
    fn zero_past_and_nonsense_are_no_hint() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("0", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after(&httpdate::fmt_http_date(now - Duration::from_secs(5)), now),
            None
        );
    }
}
