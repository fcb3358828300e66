//! The vendor's pacing hints in response headers: `Retry-After`, the IETF
//! `RateLimit` / `RateLimit-Policy` fields (both the structured-field form of the
//! current draft and the older `limit=, remaining=, reset=` form), the de facto
//! `X-RateLimit-Limit/-Remaining/-Reset`, and OpenAI's
//! `X-RateLimit-Limit/-Remaining/-Reset-Requests` (the reset a Go duration).

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::config::RateLimitHeaders;
use crate::pacer::QuotaHint;

/// Reads whichever rate-limit headers the answer carries, the vendor's own
/// (`api.ratelimit_headers`) first; `None` when it has none.
pub fn quota_hint(headers: &HeaderMap, named: &RateLimitHeaders) -> Option<QuotaHint> {
    quota_hint_at(headers, named, SystemTime::now())
}

fn quota_hint_at(
    headers: &HeaderMap,
    named: &RateLimitHeaders,
    now: SystemTime,
) -> Option<QuotaHint> {
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
    // OpenAI's family, for requests (its `-tokens` twins meter another thing).
    hint.limit = hint.limit.or_else(|| number("x-ratelimit-limit-requests"));
    hint.remaining = hint
        .remaining
        .or_else(|| number("x-ratelimit-remaining-requests"));
    hint.reset = hint
        .reset
        .or_else(|| get("x-ratelimit-reset-requests").and_then(go_duration));
    // The vendor's own names come first.
    let named_value = |name: &Option<reqwest::header::HeaderName>| get(name.as_ref()?.as_str());
    let own = QuotaHint {
        limit: named_value(&named.limit).and_then(|v| v.parse().ok()),
        remaining: named_value(&named.remaining).and_then(|v| v.parse().ok()),
        reset: named_value(&named.reset).and_then(|v| match v.parse::<u64>() {
            Ok(n) => reset_after(n, now),
            Err(_) => go_duration(v),
        }),
        window: None,
    };
    let hint = QuotaHint {
        limit: own.limit.or(hint.limit),
        remaining: own.remaining.or(hint.remaining),
        reset: own.reset.or(hint.reset),
        // A window belongs to the limit it came with.
        window: hint.window.filter(|_| own.limit.is_none()),
    };
    (hint != QuotaHint::default()).then_some(hint)
}

/// A duration as Go prints one, as OpenAI's reset headers are written: `12ms`,
/// `1.5s`, `6m0s`, `1h2m3s`. Nothing else (a bare number has no unit).
fn go_duration(text: &str) -> Option<Duration> {
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * seconds;
        rest = &rest[unit..];
    }
    (!text.is_empty()).then(|| Duration::from_secs_f64(total))
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
    // A time past what the clock can hold is no hint, not a panic.
    let at = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(value))?;
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
    fn openais_request_headers_and_their_go_durations() {
        let h = headers(&[
            ("x-ratelimit-limit-requests", "500"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "6m0s"),
            // The token budget is another meter: not read as calls.
            ("x-ratelimit-remaining-tokens", "150000"),
        ]);
        let hint = quota_hint_at(&h, &RateLimitHeaders::default(), SystemTime::now()).unwrap();
        assert_eq!(
            (hint.limit, hint.remaining, hint.reset),
            (Some(500), Some(0), Some(Duration::from_secs(360)))
        );
        let d = |s| go_duration(s);
        assert_eq!(d("12ms"), Some(Duration::from_millis(12)));
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("1h2m3s"), Some(Duration::from_secs(3723)));
        for bad in ["", "12", "s", "5 min", "1x", "1.2.3s"] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_vendors_own_header_names_come_first() {
        let named = RateLimitHeaders {
            limit: Some("x-hunter-limit".parse().unwrap()),
            remaining: Some("x-hunter-left".parse().unwrap()),
            reset: Some("x-hunter-reset-in".parse().unwrap()),
        };
        let h = headers(&[
            ("x-hunter-limit", "15"),
            ("x-hunter-left", "0"),
            ("x-hunter-reset-in", "750ms"),
            ("x-ratelimit-remaining", "9"),
            ("ratelimit-policy", "\"default\";q=500;w=60"),
        ]);
        let hint = quota_hint_at(&h, &named, SystemTime::now()).unwrap();
        assert_eq!(
            (hint.limit, hint.remaining, hint.reset, hint.window),
            (Some(15), Some(0), Some(Duration::from_millis(750)), None)
        );
    }

    #[test]
    fn x_ratelimit_with_delta_and_epoch_resets() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = headers(&[
            ("x-ratelimit-limit", "200"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "2"),
        ]);
        let hint = quota_hint_at(&h, &RateLimitHeaders::default(), now).unwrap();
        assert_eq!(
            (hint.limit, hint.remaining, hint.reset),
            (Some(200), Some(0), Some(Duration::from_secs(2)))
        );
        let h = headers(&[
            ("x-ratelimit-remaining", "5"),
            ("x-ratelimit-reset", "1700000007"),
        ]);
        assert_eq!(
            quota_hint_at(&h, &RateLimitHeaders::default(), now)
                .unwrap()
                .reset,
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn ietf_draft_forms() {
        let now = SystemTime::UNIX_EPOCH;
        let h = headers(&[("ratelimit", "limit=100, remaining=50, reset=5")]);
        let hint = quota_hint_at(&h, &RateLimitHeaders::default(), now).unwrap();
        assert_eq!(
            (hint.limit, hint.remaining, hint.reset),
            (Some(100), Some(50), Some(Duration::from_secs(5)))
        );

        let h = headers(&[
            ("ratelimit", "\"default\";r=0;t=3"),
            ("ratelimit-policy", "\"default\";q=200;w=1"),
        ]);
        let hint = quota_hint_at(&h, &RateLimitHeaders::default(), now).unwrap();
        assert_eq!(hint.remaining, Some(0));
        assert_eq!(hint.reset, Some(Duration::from_secs(3)));
        assert_eq!(hint.rate(), Some(200.0));

        let h = headers(&[("ratelimit-policy", "100;w=60")]);
        assert_eq!(
            quota_hint_at(&h, &RateLimitHeaders::default(), now)
                .unwrap()
                .rate(),
            Some(100.0 / 60.0)
        );
    }

    #[test]
    fn no_or_garbled_headers_give_no_hint() {
        assert_eq!(
            quota_hint_at(
                &HeaderMap::new(),
                &RateLimitHeaders::default(),
                SystemTime::UNIX_EPOCH
            ),
            None
        );
        let h = headers(&[("x-ratelimit-remaining", "lots"), ("ratelimit", "nonsense")]);
        assert_eq!(
            quota_hint_at(&h, &RateLimitHeaders::default(), SystemTime::UNIX_EPOCH),
            None
        );
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

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        /// Header values a vendor could send: printable ASCII and tabs, which is
        /// what `HeaderValue` accepts as text, biased towards the fields' own
        /// vocabulary so the parsers' inner branches are reached.
        fn field() -> impl Strategy<Value = String> {
            prop_oneof![
                "[ -~\t]{0,40}",
                "[0-9 ,;=\"a-z]{0,30}",
                proptest::collection::vec(
                    prop_oneof![
                        Just("limit=".to_owned()),
                        Just("remaining=".to_owned()),
                        Just("reset=".to_owned()),
                        Just(";r=".to_owned()),
                        Just(";t=".to_owned()),
                        Just(";q=".to_owned()),
                        Just(";w=".to_owned()),
                        Just("\"default\"".to_owned()),
                        Just(", ".to_owned()),
                        any::<u64>().prop_map(|n| n.to_string()),
                        any::<i64>().prop_map(|n| n.to_string()),
                    ],
                    0..8,
                )
                .prop_map(|parts| parts.concat()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Retry-After: never panics; a hint is never zero; whole seconds are
            /// taken as they are.
            #[test]
            fn retry_after_never_panics_and_is_never_zero(value in field(), now in any::<u32>()) {
                let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(now));
                let wait = parse_retry_after(value.trim(), now);
                prop_assert!(wait != Some(Duration::ZERO));
                if let Ok(secs) = value.trim().parse::<u64>() {
                    prop_assert_eq!(wait, (secs > 0).then(|| Duration::from_secs(secs)));
                }
            }

            /// Every quota header at once, with any text or any number: no panic,
            /// and a rate, when there is one, is a finite positive number.
            #[test]
            fn quota_hints_never_panic_and_rates_are_finite(
                ratelimit in field(),
                policy in field(),
                limit in field(),
                remaining in field(),
                reset in field(),
                prefix in prop_oneof![Just("x-ratelimit-"), Just("ratelimit-")],
                now in any::<u64>(),
            ) {
                let mut map = HeaderMap::new();
                let mut put = |name: String, value: &str| {
                    let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap();
                    map.insert(name, value.parse().unwrap());
                };
                put("ratelimit".into(), &ratelimit);
                put("ratelimit-policy".into(), &policy);
                put(format!("{prefix}limit"), &limit);
                put(format!("{prefix}remaining"), &remaining);
                put(format!("{prefix}reset"), &reset);
                let now = SystemTime::UNIX_EPOCH
                    .checked_add(Duration::from_secs(now))
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                if let Some(hint) = quota_hint_at(&map, &RateLimitHeaders::default(), now) {
                    prop_assert_ne!(hint, QuotaHint::default());
                    if let Some(rate) = hint.rate() {
                        prop_assert!(rate.is_finite() && rate > 0.0, "{rate}");
                    }
                }
            }

            /// `X-RateLimit-Reset` as any number at any time: a delta below 1e9, a
            /// Unix time above, never a panic (a time past the clock is no hint).
            #[test]
            fn reset_is_a_delta_or_a_time_for_any_number(value in any::<u64>(), now in any::<u32>()) {
                let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(now));
                let reset = reset_after(value, now);
                if value < 1_000_000_000 {
                    prop_assert_eq!(reset, Some(Duration::from_secs(value)));
                } else if let Some(wait) = reset {
                    prop_assert!(wait <= Duration::from_secs(value));
                }
            }
        }

        #[test]
        fn a_reset_past_the_clock_is_no_hint() {
            let now = SystemTime::UNIX_EPOCH;
            let h = headers(&[("x-ratelimit-reset", "18446744073709551615")]);
            assert_eq!(quota_hint_at(&h, &RateLimitHeaders::default(), now), None);
        }
    }
}
