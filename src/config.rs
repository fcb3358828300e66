//! The configuration: `config.toml` read once, at start, into `Config`: typed,
//! validated, with `${VAR}` references resolved and command-line overrides
//! applied. Nothing downstream parses a string from the file again.
//!
//! Each section is a serde struct whose fields check themselves as they are read
//! (`Ident`, `StatusPattern` by `try_from`, durations, counts and names by the
//! functions of [`de`], the request's templates by [`crate::template`]),
//! unknown keys refused; what ties two keys
//! together is checked right after, by the section ([`Retry::check`],
//! [`FileCredits::check`]) or, across sections, by [`Config::parse_reading`].
//!
//! Every error is one line, `FILE:LINE:COLUMN: section.key: what is wrong, how to
//! fix it` (the position from the TOML parser; `FILE: section.key: …` for a key
//! left to its default). They are all `UsageError`s: the binary exits with code 2.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHORIZATION};
use serde::Deserialize;
use url::Url;

use crate::error::{Secret, usage};
use crate::ident::Ident;
use crate::rules::{FileRule, Rule};
use crate::template::{Json, Nulls, Template};

// ---- the file: sections as written, each value checked as it is read ------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database: FileDatabase,
    source: Source,
    api: FileApi,
    limits: Limits,
    #[serde(default)]
    retry: Retry,
    #[serde(default)]
    checkpoint: Checkpoint,
    credits: FileCredits,
    #[serde(default)]
    lock: FileLock,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileLock {
    #[serde(deserialize_with = "de::stale_after")]
    stale_after: Duration,
}

impl Default for FileLock {
    fn default() -> Self {
        FileLock {
            stale_after: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDatabase {
    /// As written: `${VAR}` is resolved, and a relative SQLite path, after.
    url: String,
    /// PostgreSQL: how long a statement may wait for a lock (`0s`: forever).
    #[serde(default = "thirty_seconds", deserialize_with = "de::duration")]
    lock_timeout: Duration,
    /// PostgreSQL: how long a statement may run (`0s`: forever).
    #[serde(default = "ten_minutes", deserialize_with = "de::duration")]
    statement_timeout: Duration,
}

fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApi {
    #[serde(deserialize_with = "de::http_url")]
    base_url: Url,
    #[serde(default, deserialize_with = "de::method")]
    method: Method,
    /// Templates as written: `{column}` and `${VAR}` are read after, by
    /// [`api`].
    path: String,
    #[serde(default)]
    query: BTreeMap<String, String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// A TOML table or array, or a string holding JSON.
    body: Option<toml::Value>,
    #[serde(default)]
    body_nulls: Nulls,
    #[serde(default)]
    answers: Vec<FileRule>,
    #[serde(default = "ten_seconds", deserialize_with = "de::duration")]
    timeout: Duration,
    #[serde(default = "five_seconds", deserialize_with = "de::duration")]
    connect_timeout: Duration,
    #[serde(default = "one_mebibyte")]
    max_body_bytes: usize,
    #[serde(default)]
    allow_insecure: bool,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    ratelimit_headers: RateLimitHeaders,
    response: BTreeMap<String, Ident>,
}

/// `api.ratelimit_headers`: a vendor's own names for its rate-limit headers,
/// read before the standard ones (`RateLimit`, `X-RateLimit-*`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitHeaders {
    /// Calls allowed per window.
    #[serde(default, deserialize_with = "de::header_name")]
    pub limit: Option<HeaderName>,
    /// Calls left in the window.
    #[serde(default, deserialize_with = "de::header_name")]
    pub remaining: Option<HeaderName>,
    /// When the window resets: seconds from now, a Unix time, or a duration
    /// such as `6m0s`.
    #[serde(default, deserialize_with = "de::header_name")]
    pub reset: Option<HeaderName>,
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn one_mebibyte() -> usize {
    1 << 20
}

/// `limits` as written; [`Limits`] fills in the ceiling and the burst.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    rate: Option<de::AtLeastOne>,
    burst: Option<de::AtLeastOne>,
    #[serde(default)]
    windows: Vec<Window>,
    max_concurrency: de::AtLeastOne,
    #[serde(default = "half", deserialize_with = "de::share")]
    max_failure_share: f64,
    #[serde(default = "a_hundred")]
    failure_window: de::AtLeastOne,
}

fn half() -> f64 {
    0.5
}

fn a_hundred() -> de::AtLeastOne {
    de::AtLeastOne(NonZeroU32::new(100).expect("100 is not 0"))
}

impl TryFrom<FileLimits> for Limits {
    type Error = &'static str;
    fn try_from(raw: FileLimits) -> Result<Limits, &'static str> {
        // Without limits.rate, the pace is the shortest window's: its calls
        // spread over it. The longer windows are allowances spent at that pace
        // and then waited for; limits.rate, when given, is the pace instead (a
        // day's window may then be spent in minutes, and ends the run: see
        // `pacer::Windows`).
        let rate = match (raw.rate, raw.windows.iter().min_by_key(|w| w.per)) {
            (Some(rate), _) => f64::from(rate.0.get()),
            (None, Some(shortest)) => shortest.pace(),
            (None, None) => {
                return Err("needs `rate` (calls per second) or `windows` (e.g. \
                            [\"15/s\", \"500/min\"]), or both");
            }
        };
        Ok(Limits {
            rate,
            // A small burst: enough to absorb scheduling jitter, too small to flood.
            burst: raw.burst.map_or_else(
                || NonZeroU32::new(((rate / 20.0) as u32).max(1)).expect("max(1) is non-zero"),
                |b| b.0,
            ),
            windows: raw.windows,
            max_concurrency: raw.max_concurrency.0,
            max_failure_share: raw.max_failure_share,
            failure_window: raw.failure_window.0,
        })
    }
}

/// A `limits.windows` entry, `CALLS/WINDOW`: at most `calls` calls in any
/// `per` (`15/s`, `500/min`, `10000/day`, `500/10m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Window {
    pub calls: NonZeroU32,
    pub per: Duration,
}

impl Window {
    /// The window's calls spread evenly over it, calls per second.
    pub fn pace(&self) -> f64 {
        f64::from(self.calls.get()) / self.per.as_secs_f64()
    }

    fn parse(s: &str) -> Result<Window, String> {
        let fix = "write CALLS/WINDOW, e.g. \"15/s\", \"500/min\", \"10000/day\" or \"500/10m\"";
        let Some((calls, per)) = s.split_once('/') else {
            return Err(format!("entry \"{s}\" is not CALLS/WINDOW; {fix}"));
        };
        let calls = calls
            .trim()
            .parse::<u32>()
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| {
                format!("entry \"{s}\": `{calls}` is not a count of calls (1 or more); {fix}")
            })?;
        let per = per.trim();
        // A bare unit is one of it: `s` is `1s`, `day` is `1day`.
        let written = match per.starts_with(|c: char| c.is_ascii_alphabetic()) {
            true => format!("1{per}"),
            false => per.to_owned(),
        };
        let per = humantime::parse_duration(&written)
            .ok()
            .filter(|d| *d >= Duration::from_millis(1) && *d <= MAX_DURATION)
            .ok_or_else(|| {
                format!(
                    "entry \"{s}\": `{per}` is not a window (a unit: s, min, h, day; or a \
                     duration from 1ms to a year: 10m, 5s); {fix}"
                )
            })?;
        Ok(Window { calls, per })
    }
}

impl TryFrom<String> for Window {
    type Error = String;
    fn try_from(s: String) -> Result<Window, String> {
        Window::parse(&s)
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.calls, humantime::format_duration(self.per))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCredits {
    #[serde(deserialize_with = "de::credits")]
    allowance: i64,
    #[serde(default)]
    period: Period,
    #[serde(default = "first_day", deserialize_with = "de::day_of_month")]
    reset_day: i8,
    #[serde(default = "utc", deserialize_with = "de::timezone")]
    timezone: jiff::tz::TimeZone,
    #[serde(default, deserialize_with = "de::credits")]
    reserve: i64,
    #[serde(default = "one_credit", deserialize_with = "de::credits")]
    cost: i64,
    #[serde(default = "billed_by_default")]
    billed_statuses: Vec<StatusPattern>,
    #[serde(default, deserialize_with = "de::header_name")]
    remaining_header: Option<HeaderName>,
    remaining_url: Option<String>,
    remaining_pointer: Option<String>,
    #[serde(default, deserialize_with = "de::header_name")]
    cost_header: Option<HeaderName>,
    cost_pointer: Option<String>,
}

fn first_day() -> i8 {
    1
}
fn utc() -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::UTC
}
fn one_credit() -> i64 {
    1
}
fn billed_by_default() -> Vec<StatusPattern> {
    vec![StatusPattern::Class(2), StatusPattern::Exact(404)]
}

/// `credits.period`: the one period the allowance may cover.
#[derive(Debug, Default, Deserialize)]
#[serde(try_from = "String")]
enum Period {
    #[default]
    Month,
}

impl TryFrom<String> for Period {
    type Error = String;
    fn try_from(s: String) -> Result<Period, String> {
        match s.as_str() {
            "month" => Ok(Period::Month),
            _ => Err(format!("\"{s}\" is not supported; use \"month\"")),
        }
    }
}

impl FileCredits {
    /// What ties the section's keys together; `base` resolves a relative
    /// `remaining_url`.
    fn check(self, base: &Url, doc: &Doc) -> Result<Credits> {
        let Period::Month = self.period;
        if self.reserve > self.allowance {
            return Err(doc.error(
                &["credits", "reserve"],
                "is larger than `credits.allowance`; lower it, or raise the allowance",
            ));
        }
        let remaining_url = match (self.remaining_url, self.remaining_pointer) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(doc.error(
                    &["credits", "remaining_pointer"],
                    "needs credits.remaining_url",
                ));
            }
            (Some(_), None) => {
                return Err(doc.error(
                    &["credits", "remaining_url"],
                    "needs credits.remaining_pointer, the JSON pointer to the count in its \
                     answer (e.g. \"/credits/remaining\")",
                ));
            }
            (Some(url), Some(pointer)) => {
                let url = if url.starts_with('/') {
                    format!("{}{url}", base.as_str().trim_end_matches('/'))
                } else {
                    url
                };
                if !Url::parse(&url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
                    return Err(doc.error(
                        &["credits", "remaining_url"],
                        format!("`{url}` is not an http(s) URL or a path starting with /"),
                    ));
                }
                if !(pointer.is_empty() || pointer.starts_with('/')) {
                    return Err(doc.error(
                        &["credits", "remaining_pointer"],
                        format!("`{pointer}` is not a JSON pointer: it starts with /"),
                    ));
                }
                Some((url, pointer))
            }
        };
        let cost_pointer = match self.cost_pointer {
            Some(p) if !p.starts_with('/') => {
                return Err(doc.error(
                    &["credits", "cost_pointer"],
                    format!(
                        "`{p}` is not a JSON pointer: it starts with /, e.g. \"/credits_consumed\""
                    ),
                ));
            }
            p => p,
        };
        Ok(Credits {
            allowance: self.allowance,
            periods: crate::credits::Periods::new(self.reset_day, self.timezone),
            reserve: self.reserve,
            cost: self.cost,
            billed_statuses: self.billed_statuses,
            remaining_header: self.remaining_header,
            remaining_url,
            cost_header: self.cost_header,
            cost_pointer,
        })
    }
}

// ---- the configuration, as used ---------------------------------------------------

#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, for messages.
    pub path: PathBuf,
    pub database_url: DatabaseUrl,
    /// Where the URL came from, for messages: `database.url in FILE` or
    /// `--database-url (or FRESHEN_DATABASE_URL)`.
    pub database_source: String,
    pub source: Source,
    pub api: Api,
    pub limits: Limits,
    pub retry: Retry,
    pub checkpoint: Checkpoint,
    pub credits: Credits,
    /// A run lock whose heartbeat is older than this is taken over.
    pub lock_stale_after: Duration,
    /// `database.lock_timeout` and `database.statement_timeout` (PostgreSQL);
    /// zero: no limit.
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
}

/// Which engine is behind the database URL: the SQL is shared, the migrations
/// and a few schema queries are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// `database.url` (or `--database-url`): `${VAR}` and a relative SQLite path
/// resolved, and the engine its scheme names, read once. A secret: shown only
/// through [`DatabaseUrl::display`].
#[derive(Debug, Clone)]
pub struct DatabaseUrl {
    url: Secret,
    backend: Backend,
}

impl DatabaseUrl {
    /// The URL's engine from its scheme, or why it names none.
    pub fn new(url: String) -> Result<DatabaseUrl, &'static str> {
        let backend = match url.split_once(':').map_or("", |(scheme, _)| scheme) {
            "sqlite" => Backend::Sqlite,
            "postgres" | "postgresql" => Backend::Postgres,
            _ => {
                return Err(
                    "must start with `sqlite:` or `postgres://` (the scheme names the \
                            database engine)",
                );
            }
        };
        Ok(DatabaseUrl {
            url: Secret::new(url),
            backend,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL itself, password included: for the driver only.
    pub fn expose(&self) -> &str {
        self.url.expose()
    }

    /// The URL with any password hidden, for messages: engine, user, host and
    /// database, or the SQLite file; the query (which may carry a `password=`)
    /// left out.
    pub fn display(&self) -> String {
        let url = self.url.expose();
        match (Url::parse(url), self.backend) {
            (Ok(mut parsed), _) => {
                if parsed.password().is_some() {
                    let _ = parsed.set_password(Some("(redacted)"));
                }
                parsed.set_query(None);
                parsed.to_string()
            }
            (Err(_), Backend::Sqlite) => url.to_owned(),
            (Err(_), Backend::Postgres) => "(database url)".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub table: Ident,
    pub key: Ident,
    pub refreshed_at: Ident,
    /// The operator's own SQL condition: trusted, like the rest of the file.
    #[serde(default, deserialize_with = "de::filter")]
    pub filter: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Api {
    /// The base URL, without a trailing slash.
    pub base_url: String,
    pub method: Method,
    /// Filled per record, each value percent-encoded as a path segment.
    pub path: Template,
    /// `api.query`: name and value template, filled and form-encoded per record.
    pub query: Vec<(String, Template)>,
    /// The headers that read no column. Values from `${VAR}` are marked
    /// sensitive, so reqwest never prints them.
    pub headers: HeaderMap,
    /// The headers that read a column, filled per record.
    pub header_templates: Vec<(HeaderName, Template)>,
    /// `api.body`: the JSON document sent with each call, if any.
    pub body: Option<Json<Template>>,
    pub body_nulls: Nulls,
    /// Why a call cannot be made yet: the first `${VAR}` of `api.path`,
    /// `api.query`, `api.headers` or `api.body` that is not set. Only a call
    /// to the vendor needs it: [`Config::load`] refuses it at start,
    /// [`Config::load_reading`] (commands that read the database) keeps it here,
    /// and [`Config::vendor_ready`] says it.
    pub unset: Option<String>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_body_bytes: usize,
    /// Extra trusted roots from `api.ca_file`, on top of the system's.
    pub ca_certs: Vec<reqwest::Certificate>,
    /// The vendor's own rate-limit header names, if it has them.
    pub ratelimit_headers: RateLimitHeaders,
    /// `[[api.answers]]`: tried in order before the built-in rules.
    pub answers: Vec<Rule>,
    /// JSON pointer in the answer -> column of `source.table`, in file order.
    pub response: Vec<Mapping>,
}

#[derive(Debug, Clone)]
pub struct Mapping {
    pub pointer: String,
    pub column: Ident,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "FileLimits")]
pub struct Limits {
    /// The adaptive rate's ceiling, calls per second: `limits.rate`, or without
    /// it the shortest window's calls spread over it.
    pub rate: f64,
    pub burst: NonZeroU32,
    /// `limits.windows`: every call must pass each of them.
    pub windows: Vec<Window>,
    pub max_concurrency: NonZeroU32,
    /// The contract guard (`engine::guard`): the run stops once this share of
    /// the last `failure_window` records' first answers failed for good.
    pub max_failure_share: f64,
    pub failure_window: NonZeroU32,
}

impl Limits {
    /// The least time `calls` calls take under the rate and the windows, in
    /// seconds: at the rate, and each window's calls at once, then its next
    /// window's (a long run goes at the slowest window's pace).
    pub fn seconds_for(&self, calls: f64) -> f64 {
        self.windows
            .iter()
            .map(|w| {
                let full = (calls / f64::from(w.calls.get())).ceil() - 1.0;
                full.max(0.0) * w.per.as_secs_f64()
            })
            .fold(calls / self.rate, f64::max)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    #[serde(deserialize_with = "de::at_least_one")]
    pub max_attempts: NonZeroU32,
    #[serde(deserialize_with = "de::duration")]
    pub base_delay: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub max_delay: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub max_outage: Duration,
    /// A vendor that has not answered once in the run while every call fails to
    /// connect (a wrong api.base_url) stops the run after this long (exit 4).
    #[serde(deserialize_with = "de::duration")]
    pub connect_grace: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: NonZeroU32::new(5).expect("5 is not 0"),
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            max_outage: Duration::from_secs(30 * 60),
            connect_grace: Duration::from_secs(60),
        }
    }
}

impl Retry {
    /// What ties the section's keys together.
    fn check(&self, doc: &Doc) -> Result<()> {
        if self.base_delay > self.max_delay {
            return Err(doc.error(
                &["retry", "base_delay"],
                "is longer than `retry.max_delay`; shorten it, or lengthen max_delay",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Checkpoint {
    #[serde(deserialize_with = "de::batch_size")]
    pub batch_size: NonZeroUsize,
    #[serde(deserialize_with = "de::duration")]
    pub interval: Duration,
}

impl Default for Checkpoint {
    fn default() -> Self {
        Checkpoint {
            batch_size: NonZeroUsize::new(200).expect("200 is not 0"),
            interval: Duration::from_millis(250),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Credits {
    pub allowance: i64,
    pub periods: crate::credits::Periods,
    pub reserve: i64,
    pub cost: i64,
    pub billed_statuses: Vec<StatusPattern>,
    pub remaining_header: Option<HeaderName>,
    /// The vendor's account endpoint and the JSON pointer to the credits left in
    /// its answer, for `estimate` and `status`.
    pub remaining_url: Option<(String, String)>,
    /// The header in which the vendor says what a call cost: the ledger charges
    /// that, having reserved `cost` (the most one call may cost) before it.
    pub cost_header: Option<HeaderName>,
    /// A JSON pointer to the same in a 2xx answer's body (Apollo's
    /// `credits_consumed`, say), when no header says it.
    pub cost_pointer: Option<String>,
}

impl Credits {
    /// Whether the vendor says what each call cost (`cost_header`,
    /// `cost_pointer`): then `cost` is the most one may cost.
    pub fn reports_cost(&self) -> bool {
        self.cost_header.is_some() || self.cost_pointer.is_some()
    }
}

/// `billed_statuses` entries and `[[api.answers]]` statuses.
pub use crate::rules::StatusPattern;

impl Api {
    /// Where each template of a call names a column: the key that holds it
    /// (`api.path`, `api.query.NAME`, `api.headers.NAME`, `api.body`) and the
    /// column, in file order.
    pub fn placeholders(&self) -> Vec<(String, &Ident)> {
        self.templates()
            .flat_map(|(at, t)| t.columns().map(move |c| (at.clone(), c)))
            .collect()
    }

    /// Every template of a call with the key that holds it, in file order:
    /// `api.path`, `api.query.NAME`, the `api.headers.NAME` that read a
    /// column, the strings of `api.body`.
    pub fn templates(&self) -> impl Iterator<Item = (String, &Template)> {
        let query = self
            .query
            .iter()
            .map(|(name, t)| (format!("api.query.{name}"), t));
        let headers = self
            .header_templates
            .iter()
            .map(|(name, t)| (format!("api.headers.{name}"), t));
        let body = self
            .body
            .iter()
            .flat_map(Json::templates)
            .map(|t| ("api.body".to_owned(), t));
        std::iter::once(("api.path".to_owned(), &self.path))
            .chain(query)
            .chain(headers)
            .chain(body)
    }

    /// The columns a call reads besides `key`, each once, in order of first
    /// use: the store reads them with each item, in this order.
    pub fn columns(&self, key: &Ident) -> Vec<Ident> {
        let mut columns: Vec<Ident> = Vec::new();
        for (_, c) in self.placeholders() {
            if c != key && !columns.contains(c) {
                columns.push(c.clone());
            }
        }
        columns
    }
}

// ---- where in the file: positions for messages ------------------------------------

/// The file being read, to say where a key is: `FILE:LINE:COLUMN`.
struct Doc<'a> {
    file: String,
    text: &'a str,
    table: Option<toml::Spanned<toml::de::DeTable<'a>>>,
}

impl<'a> Doc<'a> {
    fn new(path: &Path, text: &'a str) -> Doc<'a> {
        Doc {
            file: path.display().to_string(),
            text,
            table: toml::de::DeTable::parse(text).ok(),
        }
    }

    /// `FILE:LINE:COLUMN` of the byte `at`, or `FILE` without it.
    fn at(&self, at: Option<usize>) -> String {
        match at {
            Some(at) => {
                let before = &self.text[..at.min(self.text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
                format!("{}:{line}:{column}", self.file)
            }
            None => self.file.clone(),
        }
    }

    /// The value of `path` in the file, or the nearest table that holds it (a key
    /// left to its default is told at its section).
    fn span(&self, path: &[&str]) -> Option<Range<usize>> {
        let mut table = self.table.as_ref()?.get_ref();
        let mut found = None;
        for key in path {
            let (_, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *key)?;
            found = Some(value.span());
            match value.get_ref() {
                toml::de::DeValue::Table(t) => table = t,
                _ => break,
            }
        }
        found
    }

    /// What is wrong with the key at `path`: `FILE:LINE:COLUMN: a.b: message`.
    fn message(&self, path: &[&str], message: impl Display) -> String {
        let at = self.at(self.span(path).map(|s| s.start));
        format!("{at}: {}: {message}", dotted(path))
    }

    /// [`Doc::message`] as the error it is.
    fn error(&self, path: &[&str], message: impl Display) -> anyhow::Error {
        usage(self.message(path, message))
    }

    /// The file deserialized, or the error with where and which key.
    fn deserialize(&self) -> Result<FileConfig> {
        let de = toml::Deserializer::parse(self.text).map_err(|e| {
            let at = self.at(e.span().map(|s| s.start));
            usage(format!("{at}: {}", e.message().trim_end()))
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let keys: Vec<String> = e.path().iter().map(|s| s.to_string()).collect();
            let at = self.at(e.inner().span().map(|s| s.start));
            let message = e.inner().message().trim_end();
            match keys.iter().filter(|k| !k.is_empty() && *k != "?").count() {
                0 => usage(format!("{at}: {message}")),
                _ => {
                    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                    usage(format!("{at}: {}: {message}", dotted(&keys)))
                }
            }
        })
    }
}

/// `a.b."/c"[0]`: a key path as TOML writes it, quoting keys that are not bare.
fn dotted(path: &[&str]) -> String {
    let mut out = String::new();
    for key in path.iter().filter(|k| !k.is_empty() && **k != "?") {
        let bare = key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if key.starts_with('[') {
            out.push_str(key);
            continue;
        }
        if !out.is_empty() {
            out.push('.');
        }
        if bare {
            out.push_str(key);
        } else {
            out.push_str(&format!("\"{key}\""));
        }
    }
    out
}

// ---- the values' own checks, for serde ------------------------------------------

/// `deserialize_with` functions and types for values that check themselves.
mod de {
    // `crate::config`, not `super`: tests/it/layout.rs reads the `super` of an
    // inline module as lib.rs.
    use crate::config::*;
    use serde::Deserializer;
    use serde::de::Error;

    /// A count that must be at least 1.
    #[derive(Debug, Clone, Copy, Deserialize)]
    #[serde(try_from = "u32")]
    pub struct AtLeastOne(pub NonZeroU32);

    impl TryFrom<u32> for AtLeastOne {
        type Error = &'static str;
        fn try_from(n: u32) -> Result<AtLeastOne, &'static str> {
            NonZeroU32::new(n)
                .map(AtLeastOne)
                .ok_or("must be at least 1")
        }
    }

    /// A share: more than 0, at most 1.
    pub fn share<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let share = f64::deserialize(d)?;
        if !(share > 0.0 && share <= 1.0) {
            return Err(D::Error::custom(format!(
                "is {share}; a share is more than 0 and at most 1 (0.5 is half)"
            )));
        }
        Ok(share)
    }

    pub fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU32, D::Error> {
        AtLeastOne::deserialize(d).map(|n| n.0)
    }

    pub fn batch_size<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroUsize, D::Error> {
        NonZeroUsize::new(usize::deserialize(d)?)
            .ok_or_else(|| D::Error::custom("must be at least 1"))
    }

    pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse_duration(&String::deserialize(d)?).map_err(D::Error::custom)
    }

    pub fn stale_after<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let stale = duration(d)?;
        if stale < Duration::from_secs(1) {
            return Err(D::Error::custom("must be at least 1s"));
        }
        Ok(stale)
    }

    /// A figure of credits: 0 or more.
    pub fn credits<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let n = i64::deserialize(d)?;
        if n < 0 {
            return Err(D::Error::custom(format!(
                "is {n}; a number of credits is 0 or more"
            )));
        }
        Ok(n)
    }

    pub fn day_of_month<'de, D: Deserializer<'de>>(d: D) -> Result<i8, D::Error> {
        match i64::deserialize(d)? {
            day @ 1..=31 => Ok(day as i8),
            _ => Err(D::Error::custom("must be a day of the month, 1 to 31")),
        }
    }

    pub fn timezone<'de, D: Deserializer<'de>>(d: D) -> Result<jiff::tz::TimeZone, D::Error> {
        let name = String::deserialize(d)?;
        jiff::tz::TimeZone::get(&name).map_err(|_| {
            D::Error::custom(format!(
                "\"{name}\" is not a known time zone; use an IANA name such as \
                 \"Europe/Paris\" or \"UTC\""
            ))
        })
    }

    pub fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HeaderName>, D::Error> {
        let name = String::deserialize(d)?;
        HeaderName::from_bytes(name.as_bytes())
            .map(Some)
            .map_err(|_| D::Error::custom(format!("\"{name}\" is not a valid HTTP header name")))
    }

    pub fn method<'de, D: Deserializer<'de>>(d: D) -> Result<Method, D::Error> {
        match String::deserialize(d)?.to_ascii_uppercase().as_str() {
            "GET" => Ok(Method::GET),
            "POST" => Ok(Method::POST),
            "PUT" => Ok(Method::PUT),
            "PATCH" => Ok(Method::PATCH),
            other => Err(D::Error::custom(format!(
                "\"{other}\" is not supported; use \"GET\", \"POST\", \"PUT\" or \"PATCH\""
            ))),
        }
    }

    pub fn http_url<'de, D: Deserializer<'de>>(d: D) -> Result<Url, D::Error> {
        let text = String::deserialize(d)?;
        let url = Url::parse(&text)
            .map_err(|e| D::Error::custom(format!("\"{text}\" is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(D::Error::custom("must be an http:// or https:// URL"));
        }
        Ok(url)
    }

    /// A filter is one condition. A `;` would end the plan's statement and start
    /// another (SQLite runs both): refused, whatever it is for. Blank: no filter.
    pub fn filter<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let filter = String::deserialize(d)?;
        if filter.contains(';') {
            return Err(D::Error::custom(
                "is one SQL condition (`score IS NULL`): a `;` is not allowed in it",
            ));
        }
        Ok(Some(filter).filter(|f| !f.trim().is_empty()))
    }
}

// ---- reading it ---------------------------------------------------------------------

impl Config {
    /// Reads and validates the file; `database_url` overrides `database.url`
    /// (the `--database-url` flag or `FRESHEN_DATABASE_URL`). For commands that
    /// call the vendor: an unset `${VAR}` in `api.headers` is an error.
    pub fn load(path: &Path, database_url: Option<&str>) -> Result<Config> {
        let config = Config::load_reading(path, database_url)?;
        config.vendor_ready()?;
        Ok(config)
    }

    /// As [`Config::load`], for commands that read the database and call the
    /// vendor only if they can (`status`, `estimate`, `report`, `prune`): the
    /// vendor's token need not be set; [`Config::vendor_ready`] says if it is not.
    pub fn load_reading(path: &Path, database_url: Option<&str>) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            usage(format!(
                "cannot read the configuration file {}: {e}; pass another with --config",
                path.display()
            ))
        })?;
        Config::parse_reading(path, &text, database_url, &|name| std::env::var(name).ok())
    }

    /// Whether the vendor can be called: every `${VAR}` of `api.headers` is set.
    pub fn vendor_ready(&self) -> Result<()> {
        match &self.api.unset {
            Some(why) => Err(usage(why.clone())),
            None => Ok(()),
        }
    }

    /// Parses `text` as the file at `path`; `env` resolves `${VAR}` (a parameter so
    /// tests need not touch the process environment).
    pub fn parse(
        path: &Path,
        text: &str,
        database_url: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config> {
        let config = Config::parse_reading(path, text, database_url, env)?;
        config.vendor_ready()?;
        Ok(config)
    }

    /// As [`Config::parse`], keeping an unset `${VAR}` of `api.headers` in
    /// [`Api::unset`] instead of refusing it.
    pub fn parse_reading(
        path: &Path,
        text: &str,
        database_url: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config> {
        let doc = Doc::new(path, text);
        let raw = doc.deserialize()?;
        let (database_url, database_source) =
            database(&doc, path, &raw.database, database_url, env)?;
        raw.retry.check(&doc)?;
        let credits = raw.credits.check(&raw.api.base_url, &doc)?;
        let api = api(&doc, path, raw.api, &raw.source, env)?;
        Ok(Config {
            path: path.to_owned(),
            database_url,
            database_source,
            source: raw.source,
            api,
            limits: raw.limits,
            retry: raw.retry,
            checkpoint: raw.checkpoint,
            credits,
            lock_stale_after: raw.lock.stale_after,
            lock_timeout: raw.database.lock_timeout,
            statement_timeout: raw.database.statement_timeout,
        })
    }

    /// The database URL with any password hidden, for messages.
    pub fn database_display(&self) -> String {
        self.database_url.display()
    }
}

/// The database URL, `${VAR}` resolved, and where it came from. A URL from the
/// flag is relative to where freshen runs; one from the file, to the file's
/// directory (as api.ca_file is), so a cron job started anywhere finds the same
/// database.
fn database(
    doc: &Doc,
    path: &Path,
    raw: &FileDatabase,
    flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(DatabaseUrl, String)> {
    let (url, source) = match flag {
        Some(url) => (
            resolve_sqlite(url, Path::new("")),
            "--database-url (or FRESHEN_DATABASE_URL)".to_owned(),
        ),
        None => {
            let url = expand(&raw.url, env).map_err(|m| doc.error(&["database", "url"], m))?;
            let base = path.parent().unwrap_or(Path::new(""));
            (
                resolve_sqlite(&url.0, base),
                format!("database.url in {}", doc.file),
            )
        }
    };
    match DatabaseUrl::new(url) {
        Ok(url) => Ok((url, source)),
        Err(why) => Err(match flag {
            Some(_) => usage(format!("{source}: {why}")),
            None => doc.error(&["database", "url"], why),
        }),
    }
}

/// `api` with its templates read, its CA file read and its mappings checked
/// against `source`.
fn api(
    doc: &Doc,
    path: &Path,
    raw: FileApi,
    source: &Source,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Api> {
    let mut api = Api {
        base_url: raw.base_url.as_str().trim_end_matches('/').to_owned(),
        method: raw.method,
        path: Template::default(),
        query: Vec::new(),
        headers: HeaderMap::new(),
        header_templates: Vec::new(),
        body: None,
        body_nulls: raw.body_nulls,
        unset: None,
        timeout: raw.timeout,
        connect_timeout: raw.connect_timeout,
        max_body_bytes: raw.max_body_bytes,
        ca_certs: Vec::new(),
        ratelimit_headers: raw.ratelimit_headers,
        answers: Vec::new(),
        response: Vec::new(),
    };
    for (i, rule) in raw.answers.into_iter().enumerate() {
        let rule = rule
            .check()
            .map_err(|(key, m)| doc.error(&["api", "answers", &format!("[{i}]"), key], m))?;
        api.answers.push(rule);
    }
    let unset_template = templates(doc, &raw.path, &raw.query, raw.body, &mut api, env)?;
    let unset_header = headers(doc, &raw.headers, &mut api, env)?.or(unset_template);
    let base = &raw.base_url;
    let secret = api
        .headers
        .iter()
        .find(|(_, v)| v.is_sensitive())
        .map(|(n, _)| format!("header `{n}`"))
        .or(unset_header)
        .or_else(|| {
            api.templates()
                .find(|(_, t)| t.is_secret())
                .map(|(at, _)| format!("value from ${{VAR}} in {at}"))
        });
    if let Some(what) = secret
        && base.scheme() == "http"
        && !is_loopback(base)
        && !raw.allow_insecure
    {
        return Err(doc.error(
            &["api", "base_url"],
            format!(
                "\"{}\" is plain http:// to a host that is not this machine, and the secret \
                 {what} would cross the network unencrypted; use https://, or set \
                 `api.allow_insecure = true` if the network is trusted",
                base.as_str()
            ),
        ));
    }
    if let Some(ca) = &raw.ca_file {
        api.ca_certs = ca_certs(doc, &path.parent().unwrap_or(Path::new("")).join(ca))?;
    }
    if raw.response.is_empty() {
        return Err(doc.error(
            &["api", "response"],
            "maps no field; add `\"/field\" = \"column\"` lines",
        ));
    }
    for (pointer, column) in raw.response {
        let at = ["api", "response", pointer.as_str()];
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            return Err(doc.error(
                &at,
                "is not a JSON pointer: it must start with `/`, e.g. \"/title\"",
            ));
        }
        if column == source.key || column == source.refreshed_at {
            return Err(doc.error(
                &at,
                format!(
                    "maps to `{column}`, which freshen itself manages; map it to another column"
                ),
            ));
        }
        api.response.push(Mapping { pointer, column });
    }
    Ok(api)
}

/// `api.path`, `api.query` and `api.body` read into `api`'s templates, the
/// first unset `${VAR}` kept in `api.unset`; returns what names it, for the
/// plain-http check.
fn templates(
    doc: &Doc,
    path: &str,
    query: &BTreeMap<String, String>,
    body: Option<toml::Value>,
    api: &mut Api,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>> {
    let mut unset: Option<(String, String)> = None;
    let mut keep = |at: &[&str], missing: Option<String>| {
        if let (None, Some(m)) = (&unset, missing) {
            unset = Some((dotted(at), doc.message(at, m)));
        }
    };
    if !path.starts_with('/') {
        return Err(doc.error(
            &["api", "path"],
            "must start with `/`, e.g. \"/v1/people/{id}\"",
        ));
    }
    let (template, missing) =
        Template::parse(path, env).map_err(|m| doc.error(&["api", "path"], m))?;
    keep(&["api", "path"], missing);
    api.path = template;
    for (name, value) in query {
        let at = ["api", "query", name.as_str()];
        let (template, missing) = Template::parse(value, env).map_err(|m| doc.error(&at, m))?;
        keep(&at, missing);
        api.query.push((name.clone(), template));
    }
    if let Some(body) = body {
        let at = ["api", "body"];
        if api.method == Method::GET {
            return Err(doc.error(
                &at,
                "is set, but a GET carries no body; set api.method to \"POST\", \"PUT\" or \"PATCH\"",
            ));
        }
        let json = match body {
            toml::Value::String(text) => serde_json::from_str(&text).map_err(|e| {
                doc.error(&at, format!("is not JSON ({e}); write it as a TOML table, or a string holding a JSON document"))
            })?,
            other => serde_json::to_value(other).map_err(|e| doc.error(&at, e))?,
        };
        let (json, missing) = Json::read(json, env).map_err(|m| doc.error(&at, m))?;
        keep(&at, missing);
        api.body = Some(json);
    }
    let named = unset
        .as_ref()
        .map(|(at, _)| format!("value from ${{VAR}} in {at}"));
    api.unset = unset.map(|(_, why)| why);
    Ok(named)
}

/// `api.headers` read into `api`: those that read no column into
/// `api.headers`, `${VAR}` resolved, the others into `api.header_templates`.
/// A header whose variable is not set is left out, `api.unset` saying why
/// (if nothing before it is unset); returns the first such, for the
/// plain-http check.
fn headers(
    doc: &Doc,
    raw: &BTreeMap<String, String>,
    api: &mut Api,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>> {
    let mut first_unset = None;
    for (name, value) in raw {
        let at = ["api", "headers", name.as_str()];
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| doc.error(&at, "is not a valid HTTP header name"))?;
        let (template, missing) = Template::parse(value, env).map_err(|m| doc.error(&at, m))?;
        if let Some(m) = missing {
            // Well formed, but a variable is not set: only a call needs it.
            api.unset.get_or_insert_with(|| doc.message(&at, m));
            first_unset.get_or_insert_with(|| format!("header `{header}`"));
            continue;
        }
        let Some(text) = template.fixed() else {
            api.header_templates.push((header, template));
            continue;
        };
        let mut value = HeaderValue::from_str(&text)
            .map_err(|_| doc.error(&at, "holds characters not allowed in an HTTP header"))?;
        // Credentials by nature are secret even when written out in the file.
        let credential = header == AUTHORIZATION || header == PROXY_AUTHORIZATION;
        value.set_sensitive(template.is_secret() || credential);
        api.headers.insert(header, value);
    }
    Ok(first_unset)
}

/// The certificates of `api.ca_file` (`ca`, resolved against the file's directory).
fn ca_certs(doc: &Doc, ca: &Path) -> Result<Vec<reqwest::Certificate>> {
    let at = ["api", "ca_file"];
    let pem = std::fs::read(ca)
        .map_err(|e| doc.error(&at, format!("\"{}\" cannot be read: {e}", ca.display())))?;
    reqwest::Certificate::from_pem_bundle(&pem)
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            doc.error(
                &at,
                format!(
                    "\"{}\" holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)",
                    ca.display()
                ),
            )
        })
}

/// A SQLite URL with its relative file path resolved against `base` and made
/// absolute (messages then show the file meant); other URLs, `:memory:` and
/// absolute paths as given.
fn resolve_sqlite(url: &str, base: &Path) -> String {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return url.to_owned();
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (file, query) = match rest.split_once('?') {
        Some((f, q)) => (f, Some(q)),
        None => (rest, None),
    };
    if file.is_empty() || file.starts_with('/') || file.starts_with(':') {
        return url.to_owned();
    }
    let joined = base.join(file);
    let absolute = std::path::absolute(&joined).unwrap_or(joined);
    match query {
        Some(q) => format!("sqlite://{}?{q}", absolute.display()),
        None => format!("sqlite://{}", absolute.display()),
    }
}

/// Whether the URL's host is this machine: 127.0.0.0/8, ::1 or `localhost`. Plain
/// http:// to it never crosses a network.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost")
        }
        None => false,
    }
}

/// Resolves `${VAR}` references (`{` and `}` are plain text here). Returns
/// the text and whether it holds a secret (any value that came from the
/// environment is treated as one), or why not.
fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<(String, bool), String> {
    let (template, unset) = Template::parse_vars(s, env)?;
    if let Some(why) = unset {
        return Err(why);
    }
    let text = template.fixed().expect("parse_vars reads no column");
    Ok((text, template.is_secret()))
}

/// The longest duration any key takes: longer ones are mistakes, and would overflow
/// the clock arithmetic of timeouts and pauses.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| {
        format!("\"{s}\" is not a duration ({e}); write e.g. \"500ms\", \"10s\" or \"30m\"")
    })?;
    if d > MAX_DURATION {
        return Err(format!(
            "\"{s}\" is longer than a year; write a shorter duration"
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../config.toml");

    fn parse_with(text: &str, env: &[(&str, &str)]) -> Result<Config> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(Path::new("test.toml"), text, None, &move |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse_with(text, &[]).unwrap_err())
    }

    #[test]
    fn a_filter_with_a_second_statement_is_refused() {
        let text = SHIPPED.replace(
            "[source]\n",
            "[source]\nfilter = \"1 = 1; DROP TABLE people\"\n",
        );
        assert_ne!(text, SHIPPED);
        let err = err(&text);
        assert!(err.contains("source.filter"), "{err}");
        assert!(err.contains("`;`"), "{err}");
    }

    #[test]
    fn shipped_config_is_valid() {
        let c = parse_with(SHIPPED, &[]).unwrap();
        assert_eq!(c.source.table.as_str(), "people");
        assert_eq!(c.api.response.len(), 3);
        assert!(f64::from(c.limits.burst.get()) <= c.limits.rate);
        assert!(c.limits.windows.is_empty());
    }

    fn windows(list: &str, rate: bool) -> String {
        let rate_line = if rate { "rate = 200\n" } else { "" };
        let text = SHIPPED.replace("rate = 200\n", &format!("{rate_line}windows = {list}\n"));
        assert_ne!(text, SHIPPED);
        text
    }

    #[test]
    fn windows_are_calls_per_a_unit_or_a_duration() {
        let c = parse_with(
            &windows(
                r#"["15/s", "500/min", "10000/day", "500/10m", " 60 / 5s", "3/1h"]"#,
                true,
            ),
            &[],
        )
        .unwrap();
        let got: Vec<(u32, u64)> = c
            .limits
            .windows
            .iter()
            .map(|w| (w.calls.get(), w.per.as_secs()))
            .collect();
        assert_eq!(
            got,
            [
                (15, 1),
                (500, 60),
                (10_000, 86_400),
                (500, 600),
                (60, 5),
                (3, 3600)
            ]
        );
        assert_eq!(c.limits.rate, 200.0, "limits.rate is the pace when given");
        assert_eq!(c.limits.windows[1].to_string(), "500/1m");
    }

    #[test]
    fn without_a_rate_the_shortest_window_sets_the_pace() {
        let c = parse_with(&windows(r#"["500/min", "15/s"]"#, false), &[]).unwrap();
        assert_eq!(c.limits.rate, 15.0);
        assert_eq!(c.limits.burst.get(), 1);
        let c = parse_with(&windows(r#"["500/min"]"#, false), &[]).unwrap();
        assert!((c.limits.rate - 500.0 / 60.0).abs() < 1e-9);
    }

    #[test]
    fn bad_windows_name_the_key_and_the_entry() {
        for (entry, says) in [
            ("15", "is not CALLS/WINDOW"),
            ("0/s", "`0` is not a count of calls"),
            ("many/s", "`many` is not a count of calls"),
            ("15/fortnights", "`fortnights` is not a window"),
            ("15/0s", "`0s` is not a window"),
            ("15/", "`` is not a window"),
        ] {
            let e = err(&windows(&format!(r#"["20/1s", "{entry}"]"#), true));
            let line = SHIPPED.lines().position(|l| l == "rate = 200").unwrap() + 2;
            assert!(
                e.starts_with(&format!("test.toml:{line}:"))
                    && e.contains("limits.windows")
                    && e.contains(&format!("\"{entry}\""))
                    && e.contains(says)
                    && e.contains("e.g. \"15/s\""),
                "{entry}: {e}"
            );
        }
        let e = err(&windows("\"15/s\"", true));
        assert!(e.contains("limits.windows"), "not a list: {e}");
    }

    #[test]
    fn a_rate_or_windows_must_be_given() {
        let e = err(&windows("[]", false));
        assert!(
            e.contains("limits") && e.contains("`rate`") && e.contains("`windows`"),
            "{e}"
        );
    }

    #[test]
    fn the_least_time_under_windows_waits_out_the_full_ones() {
        let c = parse_with(&windows(r#"["20/1s", "60/5s"]"#, true), &[]).unwrap();
        // At 200/s, 130 calls fill the 5 s windows opened at 0 and 5 s; the
        // last 10 go out at 10 s.
        assert_eq!(c.limits.seconds_for(130.0), 10.0);
        assert_eq!(c.limits.seconds_for(60.0), 2.0, "three full seconds of 20");
        let c = parse_with(SHIPPED, &[]).unwrap();
        assert_eq!(c.limits.seconds_for(400.0), 2.0, "at limits.rate alone");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = SHIPPED.replace("[limits]", "[limits]\nrat = 5");
        let e = err(&text);
        assert!(e.contains("test.toml") && e.contains("`rat`"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("timeout = \"10s\"", "timeout = \"ten\"", "api.timeout"),
            (
                "base_url = \"http://127.0.0.1:8077\"",
                "base_url = \"not a url\"",
                "api.base_url",
            ),
            (
                "table = \"people\"",
                "table = \"people; drop\"",
                "source.table",
            ),
            ("max_attempts = 5", "max_attempts = 0", "retry.max_attempts"),
            ("reset_day = 1", "reset_day = 32", "credits.reset_day"),
            (
                "timezone = \"UTC\"",
                "timezone = \"Mars/Olympus\"",
                "credits.timezone",
            ),
        ];
        for (from, to, key) in cases {
            assert!(SHIPPED.contains(from), "{from}");
            let e = err(&SHIPPED.replace(from, to));
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn env_references_resolve_and_stay_secret() {
        let text = SHIPPED.replace(
            "[api.response]",
            "headers = { Authorization = \"Bearer ${TOKEN}\" }\n\n[api.response]",
        );
        let c = parse_with(&text, &[("TOKEN", "s3cr3t")]).unwrap();
        let value = &c.api.headers["authorization"];
        assert_eq!(value.to_str().unwrap(), "Bearer s3cr3t");
        assert!(value.is_sensitive());
        assert!(!format!("{c:?}").contains("s3cr3t"));

        let e = format!("{:#}", parse_with(&text, &[]).unwrap_err());
        assert!(
            e.contains("api.headers.Authorization") && e.contains("${TOKEN}"),
            "{e}"
        );

        // Commands that only read the database take the file without it, and
        // still know the header is a secret: no plain http to another host.
        let path = Path::new("test.toml");
        let c = Config::parse_reading(path, &text, None, &|_| None).unwrap();
        assert!(c.api.headers.get("authorization").is_none());
        let e = format!("{:#}", c.vendor_ready().unwrap_err());
        assert!(
            e.contains("api.headers.Authorization") && e.contains("${TOKEN}"),
            "{e}"
        );
        let remote = set(&text, "base_url", "\"http://vendor.example\"");
        let e = format!(
            "{:#}",
            Config::parse_reading(path, &remote, None, &|_| None).unwrap_err()
        );
        assert!(e.contains("allow_insecure"), "{e}");
        // A reference that is not well formed is an error for every command.
        let broken = text.replace("${TOKEN}", "${TOKEN");
        assert!(Config::parse_reading(path, &broken, None, &|_| None).is_err());
    }

    #[test]
    fn request_templates_read_columns_and_variables_and_name_a_bad_key() {
        let text = set(
            &set(SHIPPED, "method", "\"POST\""),
            "path",
            "\"/v1/{id}\"\nquery = { api_key = \"${KEY}\", d = \"{domain}\" }\n\
             body = { id = \"{id}\", who = \"{name}\", n = 6 }",
        );
        let c = parse_with(&text, &[("KEY", "k-123456789"), ("FRESHEN_TOKEN", "t")]).unwrap();
        let key = Ident::new("id").unwrap();
        let columns: Vec<String> = c.api.columns(&key).iter().map(|c| c.to_string()).collect();
        assert_eq!(columns, ["domain", "name"]);
        assert!(
            c.api
                .query
                .iter()
                .any(|(n, t)| n == "api_key" && t.is_secret())
        );
        assert!(
            !format!("{c:?}").contains("k-123456789"),
            "a secret in Debug"
        );
        // Unset: only a call needs it.
        let reading = Config::parse_reading(Path::new("c.toml"), &text, None, &|n| {
            (n == "FRESHEN_TOKEN").then(|| "t".into())
        })
        .unwrap();
        let e = format!("{:#}", reading.vendor_ready().unwrap_err());
        assert!(
            e.contains("api.query.api_key") && e.contains("${KEY}"),
            "{e}"
        );
        for (from, to, says) in [
            ("\"{domain}\"", "\"{domain\"", "api.query.d"),
            (
                "n = 6 }",
                "n = \"{x y}\" }",
                "api.body: at /n: placeholder `{x y}`",
            ),
            (
                "body = { id = \"{id}\", who = \"{name}\", n = 6 }",
                "body = '{\"id\": 1'",
                "api.body: is not JSON",
            ),
            ("method = \"POST\"", "method = \"DELETE\"", "api.method"),
            (
                "method = \"POST\"",
                "method = \"GET\"",
                "a GET carries no body",
            ),
        ] {
            let bad = text.replacen(from, to, 1);
            let e = format!(
                "{:#}",
                parse_with(&bad, &[("KEY", "k"), ("FRESHEN_TOKEN", "t")]).unwrap_err()
            );
            assert!(e.contains(says), "{to}: {e}");
        }
    }

    #[test]
    fn status_patterns() {
        let parse = |s: &str| StatusPattern::try_from(s.to_owned());
        assert!(parse("2xx").unwrap().matches(204));
        assert!(!parse("404").unwrap().matches(400));
        assert!(parse("9xx").is_err());
        assert!(parse("abc").is_err());
    }

    /// `text` with the line `key = …` set to `key = value` (`value` as TOML).
    fn set(text: &str, key: &str, value: &str) -> String {
        let prefix = format!("{key} = ");
        let mut found = false;
        let out: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with(&prefix) {
                    found = true;
                    format!("{prefix}{value}")
                } else {
                    l.to_owned()
                }
            })
            .collect();
        assert!(found, "no line `{prefix}…`");
        out.join("\n")
    }

    fn with_header(header: &str) -> String {
        SHIPPED.replace(
            "[api.response]",
            &format!("headers = {{ {header} }}\n\n[api.response]"),
        )
    }

    #[test]
    fn plain_http_to_another_host_with_a_secret_is_refused() {
        let secret = with_header("X-Api-Key = \"${KEY}\"");
        let env = [("KEY", "k3y")];
        for remote in [
            "http://vendor.example",
            "http://10.1.2.3:8080",
            "http://[2001:db8::1]",
        ] {
            let text = set(&secret, "base_url", &format!("\"{remote}\""));
            let e = format!("{:#}", parse_with(&text, &env).unwrap_err());
            assert!(
                e.contains("api.base_url")
                    && e.contains("api.allow_insecure")
                    && e.contains("`x-api-key`"),
                "{e}"
            );
            assert!(!e.contains("k3y"), "{e}");
            // Allowed when the operator says the network is trusted.
            let text = set(&text, "allow_insecure", "true");
            parse_with(&text, &env).unwrap();
        }
        // Loopback, https, and plain http without a secret are fine.
        for ok in [
            "http://127.0.0.1:8077",
            "http://127.9.9.9",
            "http://[::1]:80",
            "http://localhost:1",
            "http://LOCALHOST",
            "https://vendor.example",
        ] {
            parse_with(&set(&secret, "base_url", &format!("\"{ok}\"")), &env).unwrap();
        }
        parse_with(&set(SHIPPED, "base_url", "\"http://vendor.example\""), &env).unwrap();
        // An Authorization header is a credential even when written out.
        let text = set(
            &with_header("Authorization = \"Basic abc\""),
            "base_url",
            "\"http://vendor.example\"",
        );
        assert!(format!("{:#}", parse_with(&text, &[]).unwrap_err()).contains("`authorization`"));
    }

    #[test]
    fn ca_file_is_read_or_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let parse = |ca: &str| {
            let text = set(
                SHIPPED,
                "allow_insecure",
                &format!("false\nca_file = \"{ca}\""),
            );
            Config::parse(&path, &text, None, &|_| None)
        };
        let e = format!("{:#}", parse("missing.pem").unwrap_err());
        assert!(
            e.contains("api.ca_file") && e.contains("missing.pem"),
            "{e}"
        );
        std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
        let e = format!("{:#}", parse("junk.pem").unwrap_err());
        assert!(
            e.contains("api.ca_file") && e.contains("no PEM certificate"),
            "{e}"
        );
    }

    #[test]
    fn every_identifier_key_refuses_sql() {
        for key in ["table", "key", "refreshed_at"] {
            for bad in [
                "people; DROP TABLE people",
                "x\\\" OR 1=1 --",
                "a b",
                "p'eople",
            ] {
                let text = set(SHIPPED, key, &toml::Value::String(bad.into()).to_string());
                let e = format!("{:#}", parse_with(&text, &[]).unwrap_err());
                assert!(
                    e.contains(&format!("source.{key}")) && e.contains("plain identifier"),
                    "{e}"
                );
            }
        }
        let text = set(
            SHIPPED,
            "\"/score\"",
            "\"score = 0; DROP TABLE people; --\"",
        );
        let e = format!("{:#}", parse_with(&text, &[]).unwrap_err());
        assert!(
            e.contains("api.response.\"/score\"") && e.contains("plain identifier"),
            "{e}"
        );
        let text = set(SHIPPED, "path", "\"/v1/{id) OR (1=1}\"");
        assert!(format!("{:#}", parse_with(&text, &[]).unwrap_err()).contains("api.path"));
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        const DURATIONS: [(&str, &str); 7] = [
            ("timeout", "api.timeout"),
            ("connect_timeout", "api.connect_timeout"),
            ("base_delay", "retry.base_delay"),
            ("max_delay", "retry.max_delay"),
            ("max_outage", "retry.max_outage"),
            ("interval", "checkpoint.interval"),
            ("stale_after", "lock.stale_after"),
        ];
        const NUMBERS: [&str; 9] = [
            "max_body_bytes",
            "rate",
            "max_concurrency",
            "max_attempts",
            "batch_size",
            "allowance",
            "reset_day",
            "reserve",
            "cost",
        ];

        /// A duration's text: humantime's vocabulary, numbers of any size, or anything.
        fn duration_text() -> impl Strategy<Value = String> {
            prop_oneof![
                "\\PC{0,16}",
                (any::<u64>(), "(ns|us|ms|s|m|h|d|w|M|y|parsecs|)")
                    .prop_map(|(n, unit)| format!("{n}{unit}")),
                "[0-9]{1,30}(ms|s|h)( [0-9]{1,5}(m|s))?",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Any text in a duration key: a configuration, or an error naming the key.
            #[test]
            fn any_duration_text_parses_or_names_its_key(
                which in 0..DURATIONS.len(),
                value in duration_text(),
            ) {
                let (leaf, key) = DURATIONS[which];
                let text = set(SHIPPED, leaf, &toml::Value::String(value.clone()).to_string());
                match parse_with(&text, &[]) {
                    Ok(c) => {
                        let all = [c.api.timeout, c.api.connect_timeout, c.retry.base_delay,
                            c.retry.max_delay, c.retry.max_outage, c.checkpoint.interval,
                            c.lock_stale_after];
                        prop_assert!(all.iter().all(|d| *d <= MAX_DURATION));
                    }
                    Err(e) => {
                        let e = format!("{e:#}");
                        prop_assert!(e.contains(key), "{value:?}: {e}");
                    }
                }
            }

            /// Any TOML number (or a string, or a float) in a numeric key: a
            /// configuration, or an error naming the key.
            #[test]
            fn any_number_in_a_credit_or_limit_key_parses_or_names_it(
                which in 0..NUMBERS.len(),
                value in prop_oneof![
                    any::<i64>().prop_map(|n| n.to_string()),
                    (-3i64..300).prop_map(|n| n.to_string()),
                    Just("1.5".to_owned()),
                    Just("\"100\"".to_owned()),
                    Just("nan".to_owned()),
                ],
            ) {
                let leaf = NUMBERS[which];
                let text = set(SHIPPED, leaf, &value);
                if let Err(e) = parse_with(&text, &[]) {
                    let e = format!("{e:#}");
                    prop_assert!(e.contains(leaf), "{value}: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod located {
    use super::*;
    const SHIPPED: &str = include_str!("../config.toml");

    /// The error for the shipped file with `from` replaced by `to`.
    fn error(from: &str, to: &str) -> String {
        assert!(SHIPPED.contains(from), "{from}");
        let text = SHIPPED.replacen(from, to, 1);
        let e = Config::parse(Path::new("config.toml"), &text, None, &|_| None).unwrap_err();
        format!("{e:#}")
    }

    /// The line of the shipped file that starts with `start`, 1-based.
    fn line(start: &str) -> usize {
        1 + SHIPPED
            .lines()
            .position(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starts with {start}"))
    }

    #[test]
    fn errors_say_file_line_column_and_key() {
        let timeout = line("timeout = ");
        assert_eq!(
            error("timeout = \"10s\"", "timeout = \"ten\""),
            format!(
                "config.toml:{timeout}:11: api.timeout: \"ten\" is not a duration (expected \
                 number at 0); write e.g. \"500ms\", \"10s\" or \"30m\""
            )
        );
        // Checked by the section once read: still at the key's line.
        let reserve = line("reserve = ");
        assert_eq!(
            error("reserve = 0", "reserve = 200000"),
            format!(
                "config.toml:{reserve}:11: credits.reserve: is larger than \
                 `credits.allowance`; lower it, or raise the allowance"
            )
        );
        // A key that is not bare is quoted as TOML writes it; an array entry is indexed.
        let score = line("\"/score\"");
        assert!(
            error("\"/score\" = \"score\"", "\"/score\" = \"id\"").starts_with(&format!(
                "config.toml:{score}:12: api.response.\"/score\": maps to `id`"
            ))
        );
        let billed = line("billed_statuses = ");
        assert!(
            error("\"2xx\", \"404\"]", "\"2xx\", \"4x\"]").starts_with(&format!(
                "config.toml:{billed}:19: credits.billed_statuses[1]: entry \"4x\" is not a status"
            ))
        );
        // An unknown key at its own line, a missing one at its section's.
        let limits = line("[limits]");
        assert!(error("[limits]", "[limits]\nrat = 5").starts_with(&format!(
            "config.toml:{}:1: limits.rat: unknown field `rat`",
            limits + 1
        )));
        let source = line("[source]");
        assert_eq!(
            error("table = \"people\"\n", ""),
            format!("config.toml:{source}:1: source: missing field `table`")
        );
        // A TOML syntax error: where, on one line.
        let lock = line("[lock]");
        assert_eq!(
            error("[lock]", "[lock"),
            format!("config.toml:{lock}:6: unclosed table, expected `]`")
        );
    }
}

#[cfg(test)]
mod database_url {
    use super::*;

    #[test]
    fn the_scheme_is_read_once_into_the_backend() {
        let url = |u: &str| DatabaseUrl::new(u.to_owned());
        assert_eq!(url("sqlite://x.db").unwrap().backend(), Backend::Sqlite);
        assert_eq!(url("sqlite::memory:").unwrap().backend(), Backend::Sqlite);
        for pg in ["postgres://u@h/db", "postgresql://u@h/db"] {
            assert_eq!(url(pg).unwrap().backend(), Backend::Postgres);
        }
        for bad in ["mysql://h/db", "x.db", "", "sqlite"] {
            assert!(url(bad).unwrap_err().contains("`sqlite:`"), "{bad}");
        }
        let shown = url("postgres://u:pw@h/db?password=pw2").unwrap().display();
        assert_eq!(shown, "postgres://u:(redacted)@h/db");

        // From the file: the key and where it is; from the flag: the flag.
        let text = include_str!("../config.toml").replace(
            "url = \"sqlite://freshen-demo.db\"",
            "url = \"mysql://h/db\"",
        );
        let path = Path::new("config.toml");
        let e = format!(
            "{:#}",
            Config::parse(path, &text, None, &|_| None).unwrap_err()
        );
        assert!(
            e.starts_with("config.toml:") && e.contains(": database.url: must start"),
            "{e}"
        );
        let shipped = include_str!("../config.toml");
        let e = Config::parse(path, shipped, Some("mysql://h/db"), &|_| None).unwrap_err();
        assert!(format!("{e:#}").starts_with("--database-url (or FRESHEN_DATABASE_URL): must"));
        let c = Config::parse(path, shipped, Some("postgres://h/db"), &|_| None).unwrap();
        assert_eq!(c.database_url.backend(), Backend::Postgres);
    }
}
