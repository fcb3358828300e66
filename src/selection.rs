//! Which records a run covers: the `--ids`, `--stale-before` and `--limit` flags,
//! parsed once at the edge, and their canonical form, which is how `run` recognises
//! an unfinished run with the same selection and resumes it.

use std::fmt;

use jiff::Timestamp;
use serde::Serialize;

/// One `--ids` value: a single key (integer or text) or an inclusive integer range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum IdSpec {
    Key(String),
    Range { from: i64, to: i64 },
}

impl IdSpec {
    /// `7`, `abc`, `100..200` (inclusive). A value with `..` must be a valid
    /// ascending integer range: `5..x` is an error, not the text key `5..x`.
    pub fn parse(s: &str) -> Result<IdSpec, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty key; expected `7`, `abc` or `100..200`".into());
        }
        let Some((from, to)) = s.split_once("..") else {
            return Ok(IdSpec::Key(s.to_owned()));
        };
        let bound = |b: &str| {
            b.trim().parse::<i64>().map_err(|_| {
                format!("`{s}` is not a range: `{b}` is not an integer; expected `FROM..TO`, e.g. `100..200`")
            })
        };
        let (from, to) = (bound(from)?, bound(to)?);
        if from > to {
            return Err(format!(
                "`{s}` is an empty range: {from} is greater than {to}"
            ));
        }
        Ok(IdSpec::Range { from, to })
    }
}

impl fmt::Display for IdSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdSpec::Key(k) => f.write_str(k),
            IdSpec::Range { from, to } => write!(f, "{from}..{to}"),
        }
    }
}

/// `--stale-before`: a date (midnight UTC) or an RFC 3339 time, kept as the
/// RFC 3339 UTC text that freshen stamps into `refreshed_at`, so that comparing
/// the two as text orders them as times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct StaleBefore(pub String);

impl StaleBefore {
    pub fn parse(s: &str) -> Result<StaleBefore, String> {
        let s = s.trim();
        // A full time first: jiff's date parser would also accept one and drop its time.
        let ts = match s.parse::<Timestamp>() {
            Ok(ts) => ts,
            Err(_) => s
                .parse::<jiff::civil::Date>()
                .map_err(|_| {
                    format!("`{s}` is not a date or time; expected `2026-10-01` or `2026-10-01T12:00:00Z`")
                })?
                .to_zoned(jiff::tz::TimeZone::UTC)
                .map_err(|e| format!("`{s}`: {e}"))?
                .timestamp(),
        };
        // A negative year would print as `-001-…`, which does not sort as text.
        if ts.to_zoned(jiff::tz::TimeZone::UTC).year() < 0 {
            return Err(format!(
                "`{s}` is before year 0; expected a date such as `2026-10-01`"
            ));
        }
        Ok(StaleBefore(stamp(ts)))
    }
}

/// The text freshen writes into `refreshed_at`: RFC 3339, UTC, whole seconds.
pub fn stamp(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A run's selection, as flags and the config's fixed filter define it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Selection {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<IdSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_before: Option<StaleBefore>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// `run --spend-remaining`: the stalest records the period's credits pay for.
    /// How many is decided when the run is planned.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub spend_remaining: bool,
}

impl Selection {
    /// The canonical text stored with a run: equal selections give equal text.
    pub fn canonical(&self) -> String {
        serde_json::to_string(self).expect("a selection always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_keys_and_ranges() {
        assert_eq!(IdSpec::parse("7"), Ok(IdSpec::Key("7".into())));
        assert_eq!(IdSpec::parse("abc"), Ok(IdSpec::Key("abc".into())));
        assert_eq!(
            IdSpec::parse("100..200"),
            Ok(IdSpec::Range { from: 100, to: 200 })
        );
        assert_eq!(
            IdSpec::parse("-5..5"),
            Ok(IdSpec::Range { from: -5, to: 5 })
        );
    }

    #[test]
    fn ids_reject_bad_ranges() {
        assert!(
            IdSpec::parse("5..x")
                .unwrap_err()
                .contains("`x` is not an integer")
        );
        assert!(IdSpec::parse("9..3").unwrap_err().contains("empty range"));
        assert!(IdSpec::parse("").is_err());
    }

    #[test]
    fn stale_before_accepts_dates_and_times() {
        assert_eq!(
            StaleBefore::parse("2026-10-01").unwrap().0,
            "2026-10-01T00:00:00Z"
        );
        assert_eq!(
            StaleBefore::parse("2026-10-01T12:30:00+02:00").unwrap().0,
            "2026-10-01T10:30:00Z"
        );
        assert!(
            StaleBefore::parse("yesterday")
                .unwrap_err()
                .contains("`yesterday`")
        );
        assert!(StaleBefore::parse("2026-02-30").is_err());
        assert!(
            StaleBefore::parse("-000001-06-15")
                .unwrap_err()
                .contains("before year 0")
        );
    }

    #[test]
    fn canonical_form_distinguishes_selections() {
        let a = Selection {
            limit: Some(5),
            ..Default::default()
        };
        let b = Selection {
            limit: Some(6),
            ..Default::default()
        };
        assert_ne!(a.canonical(), b.canonical());
        assert_eq!(a.canonical(), a.clone().canonical());
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any `--ids` text: a key, a valid ascending range, or an error that
            /// quotes the value; never a panic.
            #[test]
            fn any_ids_value_parses_or_explains(s in "\\PC{0,24}|[0-9 .\\-+]{0,24}") {
                match IdSpec::parse(&s) {
                    Ok(IdSpec::Key(k)) => {
                        prop_assert!(!k.is_empty() && !k.contains("..") && k == s.trim());
                    }
                    Ok(IdSpec::Range { from, to }) => prop_assert!(from <= to),
                    Err(e) => prop_assert!(s.trim().is_empty() || e.contains(s.trim()), "{e}"),
                }
            }

            /// Every range prints as it parses, whatever its bounds.
            #[test]
            fn ranges_round_trip(a in any::<i64>(), b in any::<i64>()) {
                let (from, to) = (a.min(b), a.max(b));
                let spec = IdSpec::Range { from, to };
                prop_assert_eq!(IdSpec::parse(&spec.to_string()), Ok(spec));
                if a != b {
                    let backwards = IdSpec::parse(&format!("{}..{}", to, from));
                    prop_assert!(backwards.unwrap_err().contains("empty range"));
                }
            }

            /// Any `--stale-before` text: an RFC 3339 UTC stamp of 20 characters that
            /// reads back as itself, or an error that quotes the value.
            #[test]
            fn any_stale_before_value_parses_or_explains(
                s in "\\PC{0,30}|[+-]?[0-9]{4,6}-[0-9]{1,2}-[0-9]{1,2}(T[0-9:]{8}(Z|[+-][0-9]{2}:[0-9]{2}))?"
            ) {
                match StaleBefore::parse(&s) {
                    Ok(StaleBefore(stamp)) => {
                        prop_assert_eq!(stamp.len(), 20, "{}", stamp);
                        let again = StaleBefore::parse(&stamp).unwrap();
                        prop_assert_eq!(again.0, stamp);
                    }
                    Err(e) => prop_assert!(e.contains(s.trim()), "{e}"),
                }
            }

            /// Every real date is accepted as that day's midnight UTC.
            #[test]
            fn every_date_is_midnight_utc(y in 1i16..=9999, m in 1i8..=12, d in 1i8..=28) {
                let text = format!("{y:04}-{m:02}-{d:02}");
                prop_assert_eq!(StaleBefore::parse(&text).unwrap().0, format!("{text}T00:00:00Z"));
            }
        }
    }
}
