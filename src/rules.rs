//! What an answer means: `[[api.answers]]` rules, tried in order before the
//! built-in ones ([`BUILT_IN`]), each matching an answer by its status, a
//! header, a JSON pointer's value or a substring of its body, and naming what
//! it means ([`Means`]) and whether the vendor bills it.
//!
//! Vendors give statuses their own meanings: Hunter answers 403 for its rate
//! limit and 429 for credits exhausted, Salesforce 403 with
//! `REQUEST_LIMIT_EXCEEDED`, Clearbit 202 for "queued, try again later". A rule
//! says so in the config; `api` applies the first that matches.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName};
use serde::Deserialize;
use serde_json::Value as J;

/// A status or a class of them: `404`, `2xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum StatusPattern {
    Exact(u16),
    Class(u16),
}

impl StatusPattern {
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusPattern::Exact(s) => s == status,
            StatusPattern::Class(c) => status / 100 == c,
        }
    }
}

impl TryFrom<String> for StatusPattern {
    type Error = String;
    fn try_from(s: String) -> Result<StatusPattern, String> {
        let bad = || format!("entry \"{s}\" is not a status; write e.g. \"404\" or \"2xx\"");
        if let Some(class) = s.strip_suffix("xx") {
            let c: u16 = class.parse().map_err(|_| bad())?;
            return match (1..=5).contains(&c) {
                true => Ok(StatusPattern::Class(c)),
                false => Err(bad()),
            };
        }
        match s.parse::<u16>() {
            Ok(code) if (100..=599).contains(&code) => Ok(StatusPattern::Exact(code)),
            _ => Err(bad()),
        }
    }
}

/// What an answer means for its record and the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Means {
    /// The record's values: the body is mapped by `api.response`.
    Ok,
    /// The vendor knows nothing of this record: it is marked `no_match`, with
    /// the reason, not failed.
    NoMatch,
    /// A transient failure: retried with backoff, an attempt.
    Retry,
    /// The vendor's limit: every worker pauses, not an attempt.
    Throttle,
    /// The account has no credits left: the run stops.
    OutOfCredits,
    /// No call can succeed (a wrong key): the run stops at once, exit 6.
    Fatal,
    /// Not ready yet (queued): this record is tried again after the wait,
    /// not an attempt, at most `retry.max_attempts` times.
    Later,
    /// The record fails for good, with the status as the reason.
    Fail,
}

/// Where a throttle's or a later's wait comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The answer's `Retry-After` (for a throttle without one, the reset of
    /// an empty rate-limit window).
    RetryAfter,
    /// The answer's rate-limit reset (`X-RateLimit-Reset` and the others
    /// freshen reads).
    Reset,
    /// A fixed wait.
    For(Duration),
}

/// One `[[api.answers]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    #[serde(default)]
    status: Statuses,
    /// `"Name"` (present) or `"Name: value"` (its value begins with `value`).
    header: Option<String>,
    pointer: Option<String>,
    /// With `pointer`: the value there (a string, number or boolean).
    equals: Option<toml::Value>,
    body_contains: Option<String>,
    means: Means,
    /// `"retry-after"`, `"reset"` or a duration.
    wait: Option<String>,
    billed: Option<bool>,
}

/// `status`: one pattern or a list of them.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum Statuses {
    #[default]
    Any,
    One(StatusPattern),
    Many(Vec<StatusPattern>),
}

/// A rule, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Empty: any status.
    pub status: Vec<StatusPattern>,
    pub header: Option<(HeaderName, Option<String>)>,
    pub pointer: Option<(String, Option<J>)>,
    pub body_contains: Option<String>,
    pub means: Means,
    pub wait: Wait,
    /// Overrides `credits.billed_statuses` for the answers it matches.
    pub billed: Option<bool>,
}

impl FileRule {
    /// The rule, or what is wrong with it and which of its keys says so.
    pub fn check(self) -> Result<Rule, (&'static str, String)> {
        let header = match &self.header {
            None => None,
            Some(text) => {
                let (name, value) = match text.split_once(':') {
                    Some((n, v)) => (n.trim(), Some(v.trim().to_owned())),
                    None => (text.trim(), None),
                };
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    (
                        "header",
                        format!(
                            "\"{text}\" is not `Name` or `Name: value` with a valid header name"
                        ),
                    )
                })?;
                Some((name, value))
            }
        };
        let pointer = match (self.pointer, self.equals) {
            (Some(p), _) if !(p.is_empty() || p.starts_with('/')) => {
                return Err((
                    "pointer",
                    format!("\"{p}\" is not a JSON pointer: it must start with `/`"),
                ));
            }
            (Some(p), equals) => Some((p, equals.map(json_of))),
            (None, Some(_)) => {
                return Err(("equals", "needs a `pointer` to compare with".to_owned()));
            }
            (None, None) => None,
        };
        let wait = match self.wait.as_deref() {
            None | Some("retry-after") => Wait::RetryAfter,
            Some("reset") => Wait::Reset,
            Some(text) => Wait::For(humantime::parse_duration(text).map_err(|e| {
                (
                    "wait",
                    format!("\"{text}\" is not \"retry-after\", \"reset\" or a duration ({e})"),
                )
            })?),
        };
        if self.wait.is_some() && !matches!(self.means, Means::Throttle | Means::Later) {
            return Err((
                "wait",
                "applies only to means = \"throttle\" or \"later\"".to_owned(),
            ));
        }
        Ok(Rule {
            status: match self.status {
                Statuses::Any => Vec::new(),
                Statuses::One(p) => vec![p],
                Statuses::Many(ps) => ps,
            },
            header,
            pointer,
            body_contains: self.body_contains,
            means: self.means,
            wait,
            billed: self.billed,
        })
    }
}

fn json_of(value: toml::Value) -> J {
    serde_json::to_value(value).unwrap_or(J::Null)
}

/// An answer as the rules see it. The body is read (up to
/// `api.max_body_bytes`) for every answer; its JSON is parsed at most once,
/// when a rule asks.
pub struct Answer<'a> {
    pub status: u16,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub json: std::cell::OnceCell<Option<J>>,
}

impl Answer<'_> {
    fn json(&self) -> Option<&J> {
        self.json
            .get_or_init(|| serde_json::from_slice(self.body).ok())
            .as_ref()
    }

    /// The body's JSON, if a rule has parsed it already: the mapping of an
    /// `ok` answer need not parse it again.
    pub fn parsed(&self) -> Option<&J> {
        self.json.get().and_then(Option::as_ref)
    }
}

impl Rule {
    pub fn matches(&self, answer: &Answer) -> bool {
        if !self.status.is_empty() && !self.status.iter().any(|p| p.matches(answer.status)) {
            return false;
        }
        if let Some((name, value)) = &self.header {
            let found = answer.headers.get(name).and_then(|v| v.to_str().ok());
            match (found, value) {
                (None, _) => return false,
                (Some(v), Some(want)) if !v.trim_start().starts_with(want.as_str()) => {
                    return false;
                }
                _ => {}
            }
        }
        if let Some((pointer, equals)) = &self.pointer {
            match (answer.json().and_then(|j| j.pointer(pointer)), equals) {
                (None, _) => return false,
                (Some(found), Some(want)) if found != want => return false,
                _ => {}
            }
        }
        if let Some(text) = &self.body_contains {
            let body = answer.body;
            if !body
                .windows(text.len().max(1))
                .any(|w| w == text.as_bytes())
            {
                return false;
            }
        }
        true
    }
}

/// The built-in rules, tried after the config's: today's classification, as
/// `config.toml` shows it (a test holds the two together).
pub const BUILT_IN: &str = r#"answers = [
  { status = "2xx", means = "ok" },
  { status = "3xx", means = "fail" },
  { status = ["401", "403"], means = "fatal" },
  { status = "4xx", header = "Content-Type: application/problem+json", body_contains = "quota-exceeded", means = "out_of_credits" },
  { status = "402", means = "out_of_credits" },
  { status = "429", means = "throttle" },
  { status = "503", header = "Retry-After", means = "throttle" },
  { status = ["408", "5xx"], means = "retry" },
  { means = "fail" },
]"#;

/// [`BUILT_IN`], read.
pub fn built_in() -> Vec<Rule> {
    #[derive(Deserialize)]
    struct Doc {
        answers: Vec<FileRule>,
    }
    let doc: Doc = toml::from_str(BUILT_IN).expect("the built-in rules parse");
    doc.answers
        .into_iter()
        .map(|r| r.check().expect("the built-in rules are valid"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Rule {
        toml::from_str::<FileRule>(text).unwrap().check().unwrap()
    }

    fn answer<'a>(status: u16, headers: &'a HeaderMap, body: &'a [u8]) -> Answer<'a> {
        Answer {
            status,
            headers,
            body,
            json: Default::default(),
        }
    }

    #[test]
    fn a_rule_matches_on_every_condition_it_names() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            "application/json; charset=utf-8".parse().unwrap(),
        );
        let body = br#"{"errors": [{"id": "too_many_requests"}], "n": 3}"#;
        let hunter = rule(
            r#"status = "403"
               pointer = "/errors/0/id"
               equals = "too_many_requests"
               means = "throttle"
               wait = "1s""#,
        );
        assert!(hunter.matches(&answer(403, &headers, body)));
        assert!(!hunter.matches(&answer(401, &headers, body)));
        assert!(!hunter.matches(&answer(403, &headers, br#"{"errors": [{"id": "x"}]}"#)));
        assert_eq!(hunter.wait, Wait::For(Duration::from_secs(1)));
        assert!(
            rule("pointer = \"/n\"\nequals = 3\nmeans = \"ok\"")
                .matches(&answer(200, &headers, body))
        );
        assert!(
            rule("header = \"Content-Type: application/json\"\nmeans = \"ok\"")
                .matches(&answer(200, &headers, body))
        );
        assert!(
            !rule("header = \"Retry-After\"\nmeans = \"ok\"").matches(&answer(200, &headers, body))
        );
        assert!(
            rule("body_contains = \"too_many\"\nmeans = \"ok\"")
                .matches(&answer(500, &headers, body))
        );
        assert!(
            !rule("body_contains = \"LIMIT\"\nmeans = \"ok\"").matches(&answer(
                500,
                &headers,
                b"not json"
            ))
        );
        assert!(rule("means = \"fail\"").matches(&answer(418, &headers, b"")));
    }

    #[test]
    fn a_bad_rule_names_its_key() {
        let bad = |text: &str| {
            toml::from_str::<FileRule>(text)
                .unwrap()
                .check()
                .unwrap_err()
        };
        assert_eq!(bad("equals = 1\nmeans = \"ok\"").0, "equals");
        assert_eq!(bad("pointer = \"x\"\nmeans = \"ok\"").0, "pointer");
        assert_eq!(bad("header = \"a b: c\"\nmeans = \"ok\"").0, "header");
        assert_eq!(bad("wait = \"soon\"\nmeans = \"later\"").0, "wait");
        assert_eq!(bad("wait = \"1s\"\nmeans = \"retry\"").0, "wait");
        assert!(toml::from_str::<FileRule>("means = \"maybe\"").is_err());
        assert!(toml::from_str::<FileRule>("status = \"4x\"\nmeans = \"ok\"").is_err());
    }

    #[test]
    fn the_built_in_rules_read_and_config_toml_shows_them() {
        let rules = built_in();
        assert_eq!(rules.len(), 9);
        assert_eq!(rules.last().unwrap().means, Means::Fail);
        assert!(
            rules.last().unwrap().status.is_empty(),
            "the last matches any answer"
        );
        let shipped = include_str!("../config.toml");
        let shown: Vec<&str> = shipped
            .lines()
            .skip_while(|l| !l.contains("BEGIN built-in rules"))
            .skip(1)
            .take_while(|l| !l.contains("END built-in rules"))
            .map(|l| l.trim_start_matches('#').trim())
            .collect();
        let code: Vec<&str> = BUILT_IN
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| *l != "]")
            .collect();
        assert_eq!(
            shown, code,
            "config.toml's list of the built-in rules is the code's"
        );
    }
}
