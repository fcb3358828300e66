//! The configuration: `config.toml` as written (`FileConfig`, serde, unknown keys
//! rejected) turned once, at start, into `Config`: typed, validated, with `${VAR}`
//! references resolved and command-line overrides applied. Nothing downstream parses
//! a string from the file again.
//!
//! Every error names the file and the key, and says how to fix it; they are all
//! `UsageError`s, so the binary exits with code 2.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHORIZATION};
use serde::Deserialize;
use url::Url;

use crate::error::{Secret, usage};
use crate::ident::Ident;

// ---- the file, as written -------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database: FileDatabase,
    source: FileSource,
    api: FileApi,
    limits: FileLimits,
    #[serde(default)]
    retry: FileRetry,
    #[serde(default)]
    checkpoint: FileCheckpoint,
    credits: FileCredits,
    #[serde(default)]
    lock: FileLock,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileLock {
    stale_after: String,
}

impl Default for FileLock {
    fn default() -> Self {
        FileLock {
            stale_after: "60s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDatabase {
    url: String,
    /// PostgreSQL: how long a statement may wait for a lock (`0s`: forever).
    #[serde(default = "default_lock_timeout")]
    lock_timeout: String,
    /// PostgreSQL: how long a statement may run (`0s`: forever).
    #[serde(default = "default_statement_timeout")]
    statement_timeout: String,
}

fn default_lock_timeout() -> String {
    "30s".into()
}

fn default_statement_timeout() -> String {
    "10m".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSource {
    table: String,
    key: String,
    refreshed_at: String,
    filter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApi {
    base_url: String,
    #[serde(default = "default_method")]
    method: String,
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default = "default_connect_timeout")]
    connect_timeout: String,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: u64,
    #[serde(default)]
    allow_insecure: bool,
    ca_file: Option<PathBuf>,
    response: BTreeMap<String, String>,
}

fn default_method() -> String {
    "GET".into()
}
fn default_timeout() -> String {
    "10s".into()
}
fn default_connect_timeout() -> String {
    "5s".into()
}
fn default_max_body_bytes() -> u64 {
    1 << 20
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    rate: u32,
    burst: Option<u32>,
    max_concurrency: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileRetry {
    max_attempts: u32,
    base_delay: String,
    max_delay: String,
    max_outage: String,
    connect_grace: String,
}

impl Default for FileRetry {
    fn default() -> Self {
        FileRetry {
            max_attempts: 5,
            base_delay: "500ms".into(),
            max_delay: "60s".into(),
            max_outage: "30m".into(),
            connect_grace: "1m".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileCheckpoint {
    batch_size: usize,
    interval: String,
}

impl Default for FileCheckpoint {
    fn default() -> Self {
        FileCheckpoint {
            batch_size: 200,
            interval: "250ms".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCredits {
    allowance: u64,
    #[serde(default = "default_period")]
    period: String,
    #[serde(default = "default_reset_day")]
    reset_day: u8,
    #[serde(default = "default_timezone")]
    timezone: String,
    #[serde(default)]
    reserve: u64,
    #[serde(default = "default_cost")]
    cost: u64,
    #[serde(default = "default_billed")]
    billed_statuses: Vec<String>,
    remaining_header: Option<String>,
    remaining_url: Option<String>,
    remaining_pointer: Option<String>,
}

fn default_period() -> String {
    "month".into()
}
fn default_reset_day() -> u8 {
    1
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_cost() -> u64 {
    1
}
fn default_billed() -> Vec<String> {
    vec!["2xx".into(), "404".into()]
}

// ---- the configuration, as used ---------------------------------------------------

#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, for messages.
    pub path: PathBuf,
    pub database_url: Secret,
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

#[derive(Debug, Clone)]
pub struct Source {
    pub table: Ident,
    pub key: Ident,
    pub refreshed_at: Ident,
    /// The operator's own SQL condition: trusted, like the rest of the file.
    pub filter: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Api {
    /// The base URL, without a trailing slash.
    pub base_url: String,
    pub method: Method,
    pub path: PathTemplate,
    /// Header values from `${VAR}` are marked sensitive, so reqwest never prints them.
    pub headers: HeaderMap,
    /// Why a header is missing from `headers`: its `${VAR}` is not set. Only a
    /// call to the vendor needs it: [`Config::load`] refuses it at start,
    /// [`Config::load_reading`] (commands that read the database) keeps it here,
    /// and [`Config::vendor_ready`] says it.
    pub unset: Option<String>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_body_bytes: usize,
    /// Extra trusted roots from `api.ca_file`, on top of the system's.
    pub ca_certs: Vec<reqwest::Certificate>,
    /// JSON pointer in the answer -> column of `source.table`, in file order.
    pub response: Vec<Mapping>,
}

#[derive(Debug, Clone)]
pub struct Mapping {
    pub pointer: String,
    pub column: Ident,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub rate: NonZeroU32,
    pub burst: NonZeroU32,
    pub max_concurrency: NonZeroU32,
}

#[derive(Debug, Clone)]
pub struct Retry {
    pub max_attempts: NonZeroU32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub max_outage: Duration,
    /// A vendor that has not answered once in the run while every call fails to
    /// connect (a wrong api.base_url) stops the run after this long (exit 4).
    pub connect_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub batch_size: NonZeroUsize,
    pub interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Credits {
    pub allowance: u64,
    pub periods: crate::credits::Periods,
    pub reserve: u64,
    pub cost: u64,
    pub billed_statuses: Vec<StatusPattern>,
    pub remaining_header: Option<HeaderName>,
    /// The vendor's account endpoint and the JSON pointer to the credits left in
    /// its answer, for `estimate` and `status`.
    pub remaining_url: Option<(String, String)>,
}

/// `billed_statuses` entries: an exact status (`404`) or a class (`2xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// `api.path`: literal text with `{column}` placeholders filled from the record,
/// percent-encoded as path segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    pub parts: Vec<PathPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPart {
    Literal(String),
    Column(Ident),
}

impl PathTemplate {
    fn parse(key: &str, s: &str) -> Result<PathTemplate> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(PathPart::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..].find('}').ok_or_else(|| {
                usage(format!(
                    "`{key}` = \"{s}\" has a `{{` without a closing `}}`"
                ))
            })? + open;
            let name = &rest[open + 1..close];
            parts.push(PathPart::Column(Ident::new(name).map_err(|e| {
                usage(format!("`{key}` placeholder `{{{name}}}`: {e}"))
            })?));
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(usage(format!(
                "`{key}` = \"{s}\" has a `}}` without an opening `{{`"
            )));
        }
        if !rest.is_empty() {
            parts.push(PathPart::Literal(rest.to_owned()));
        }
        Ok(PathTemplate { parts })
    }

    /// The columns the template reads, in order of first use.
    pub fn columns(&self) -> impl Iterator<Item = &Ident> {
        self.parts.iter().filter_map(|p| match p {
            PathPart::Column(c) => Some(c),
            PathPart::Literal(_) => None,
        })
    }
}

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
        let file = path.display();
        let raw: FileConfig = toml::from_str(text)
            .map_err(|e| usage(format!("{file}: {}", e.to_string().trim_end())))?;
        let key_err = |key: &str, msg: String| usage(format!("{file}: `{key}` {msg}"));

        // A URL from the flag is relative to where freshen runs; one from the
        // file, to the file's directory (as api.ca_file is), so a cron job started
        // anywhere finds the same database.
        let (database_url, database_source) = match database_url {
            Some(url) => (
                Secret::new(resolve_sqlite(url, Path::new(""))),
                "--database-url (or FRESHEN_DATABASE_URL)".to_owned(),
            ),
            None => {
                let url = expand(&raw.database.url, env).map_err(|m| key_err("database.url", m))?;
                let base = path.parent().unwrap_or(Path::new(""));
                (
                    Secret::new(resolve_sqlite(&url.0, base)),
                    format!("database.url in {file}"),
                )
            }
        };
        let scheme = database_url.expose().split(':').next().unwrap_or_default();
        if !matches!(scheme, "sqlite" | "postgres" | "postgresql") {
            return Err(usage(format!(
                "{database_source}: must start with `sqlite:` or `postgres://` (the scheme \
                 names the database engine)"
            )));
        }

        // A filter is one condition. A `;` would end the plan's statement and start
        // another (SQLite runs both): refused, whatever it is for.
        if let Some(filter) = &raw.source.filter
            && filter.contains(';')
        {
            return Err(key_err(
                "source.filter",
                "is one SQL condition (`score IS NULL`): a `;` is not allowed in it".into(),
            ));
        }
        let ident = |key: &str, v: &str| Ident::new(v).map_err(|m| key_err(key, m));
        let source = Source {
            table: ident("source.table", &raw.source.table)?,
            key: ident("source.key", &raw.source.key)?,
            refreshed_at: ident("source.refreshed_at", &raw.source.refreshed_at)?,
            filter: raw.source.filter.filter(|f| !f.trim().is_empty()),
        };

        let base = Url::parse(&raw.api.base_url).map_err(|e| {
            key_err(
                "api.base_url",
                format!("= \"{}\" is not a URL: {e}", raw.api.base_url),
            )
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(key_err(
                "api.base_url",
                "must be an http:// or https:// URL".into(),
            ));
        }
        let method = match raw.api.method.to_ascii_uppercase().as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            other => {
                return Err(key_err(
                    "api.method",
                    format!("= \"{other}\" is not supported; use \"GET\" or \"POST\""),
                ));
            }
        };
        if !raw.api.path.starts_with('/') {
            return Err(key_err(
                "api.path",
                "must start with `/`, e.g. \"/v1/people/{id}\"".into(),
            ));
        }
        let path_template = PathTemplate::parse("api.path", &raw.api.path)?;

        let mut headers = HeaderMap::new();
        // The first header whose `${VAR}` is not set, and why: a secret all the same.
        let mut unset: Option<(HeaderName, String)> = None;
        for (name, value) in &raw.api.headers {
            let key = format!("api.headers.{name}");
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| key_err(&key, "is not a valid HTTP header name".into()))?;
            let (value, secret) = match expand(value, env) {
                Ok(expanded) => expanded,
                // Well formed, but a variable is not set: only a call needs it.
                Err(m) if expand(value, &|_| Some(String::new())).is_ok() => {
                    if unset.is_none() {
                        unset = Some((header, format!("{file}: `{key}` {m}")));
                    }
                    continue;
                }
                Err(m) => return Err(key_err(&key, m)),
            };
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                key_err(
                    &key,
                    "holds characters not allowed in an HTTP header".into(),
                )
            })?;
            // Credentials by nature are secret even when written out in the file.
            let credential = header == AUTHORIZATION || header == PROXY_AUTHORIZATION;
            value.set_sensitive(secret || credential);
            headers.insert(header, value);
        }
        let secret_header = headers
            .iter()
            .find(|(_, v)| v.is_sensitive())
            .map(|(n, _)| n.as_str())
            .or(unset.as_ref().map(|(n, _)| n.as_str()));
        if let Some(name) = secret_header
            && base.scheme() == "http"
            && !is_loopback(&base)
            && !raw.api.allow_insecure
        {
            return Err(key_err(
                "api.base_url",
                format!(
                    "= \"{}\" is plain http:// to a host that is not this machine, and the \
                     secret header `{name}` would cross the network unencrypted; use https://, \
                     or set `api.allow_insecure = true` if the network is trusted",
                    raw.api.base_url
                ),
            ));
        }
        let ca_certs = match &raw.api.ca_file {
            None => Vec::new(),
            Some(ca) => {
                // A relative path is read from the configuration file's directory.
                let ca = path.parent().unwrap_or(Path::new("")).join(ca);
                let pem = std::fs::read(&ca).map_err(|e| {
                    key_err(
                        "api.ca_file",
                        format!("= \"{}\" cannot be read: {e}", ca.display()),
                    )
                })?;
                reqwest::Certificate::from_pem_bundle(&pem)
                    .ok()
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| {
                        key_err(
                            "api.ca_file",
                            format!(
                                "= \"{}\" holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)",
                                ca.display()
                            ),
                        )
                    })?
            }
        };

        if raw.api.response.is_empty() {
            return Err(key_err(
                "api.response",
                "maps no field; add `\"/field\" = \"column\"` lines".into(),
            ));
        }
        let mut response = Vec::with_capacity(raw.api.response.len());
        for (pointer, column) in &raw.api.response {
            let key = format!("api.response.\"{pointer}\"");
            if !(pointer.is_empty() || pointer.starts_with('/')) {
                return Err(key_err(
                    &key,
                    "is not a JSON pointer: it must start with `/`, e.g. \"/title\"".into(),
                ));
            }
            let column = ident(&key, column)?;
            if column == source.key || column == source.refreshed_at {
                return Err(key_err(
                    &key,
                    format!("maps to `{column}`, which freshen itself manages"),
                ));
            }
            response.push(Mapping {
                pointer: pointer.clone(),
                column,
            });
        }

        let nonzero = |key: &str, v: u32| {
            NonZeroU32::new(v).ok_or_else(|| key_err(key, "must be at least 1".into()))
        };
        let rate = nonzero("limits.rate", raw.limits.rate)?;
        let limits = Limits {
            rate,
            // A small burst: enough to absorb scheduling jitter, too small to flood.
            burst: match raw.limits.burst {
                Some(b) => nonzero("limits.burst", b)?,
                None => NonZeroU32::new((rate.get() / 20).max(1)).expect("max(1) is non-zero"),
            },
            max_concurrency: nonzero("limits.max_concurrency", raw.limits.max_concurrency)?,
        };

        let duration = |key: &str, v: &str| parse_duration(v).map_err(|m| key_err(key, m));
        let retry = Retry {
            max_attempts: nonzero("retry.max_attempts", raw.retry.max_attempts)?,
            base_delay: duration("retry.base_delay", &raw.retry.base_delay)?,
            max_delay: duration("retry.max_delay", &raw.retry.max_delay)?,
            max_outage: duration("retry.max_outage", &raw.retry.max_outage)?,
            connect_grace: duration("retry.connect_grace", &raw.retry.connect_grace)?,
        };
        if retry.base_delay > retry.max_delay {
            return Err(key_err(
                "retry.base_delay",
                "is longer than `retry.max_delay`".into(),
            ));
        }

        let checkpoint = Checkpoint {
            batch_size: NonZeroUsize::new(raw.checkpoint.batch_size)
                .ok_or_else(|| key_err("checkpoint.batch_size", "must be at least 1".into()))?,
            interval: duration("checkpoint.interval", &raw.checkpoint.interval)?,
        };

        if raw.credits.period != "month" {
            return Err(key_err(
                "credits.period",
                format!(
                    "= \"{}\" is not supported; use \"month\"",
                    raw.credits.period
                ),
            ));
        }
        if !(1..=31).contains(&raw.credits.reset_day) {
            return Err(key_err(
                "credits.reset_day",
                "must be a day of the month, 1 to 31".into(),
            ));
        }
        let timezone = jiff::tz::TimeZone::get(&raw.credits.timezone).map_err(|_| {
            key_err(
                "credits.timezone",
                format!("= \"{}\" is not a known time zone; use an IANA name such as \"Europe/Paris\" or \"UTC\"", raw.credits.timezone),
            )
        })?;
        let periods = crate::credits::Periods::new(raw.credits.reset_day as i8, timezone);
        if raw.credits.reserve > raw.credits.allowance {
            return Err(key_err(
                "credits.reserve",
                "is larger than `credits.allowance`".into(),
            ));
        }
        let billed_statuses = raw
            .credits
            .billed_statuses
            .iter()
            .map(|s| parse_status_pattern(s).map_err(|m| key_err("credits.billed_statuses", m)))
            .collect::<Result<_>>()?;
        let remaining_header = raw
            .credits
            .remaining_header
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    key_err(
                        "credits.remaining_header",
                        "is not a valid HTTP header name".into(),
                    )
                })
            })
            .transpose()?;

        let remaining_url = match (raw.credits.remaining_url, raw.credits.remaining_pointer) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(key_err(
                    "credits.remaining_pointer",
                    "needs credits.remaining_url".into(),
                ));
            }
            (Some(_), None) => {
                return Err(key_err(
                    "credits.remaining_url",
                    "needs credits.remaining_pointer, the JSON pointer to the count in its answer \
                     (e.g. \"/credits/remaining\")"
                        .into(),
                ));
            }
            (Some(url), Some(pointer)) => {
                let url = if url.starts_with('/') {
                    format!("{}{url}", base.as_str().trim_end_matches('/'))
                } else {
                    url
                };
                match Url::parse(&url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                    _ => {
                        return Err(key_err(
                            "credits.remaining_url",
                            format!("`{url}` is not an http(s) URL or a path starting with /"),
                        ));
                    }
                }
                if !(pointer.is_empty() || pointer.starts_with('/')) {
                    return Err(key_err(
                        "credits.remaining_pointer",
                        format!("`{pointer}` is not a JSON pointer: it starts with /"),
                    ));
                }
                Some((url, pointer))
            }
        };

        let lock_stale_after = duration("lock.stale_after", &raw.lock.stale_after)?;
        if lock_stale_after < Duration::from_secs(1) {
            return Err(key_err("lock.stale_after", "must be at least 1s".into()));
        }

        Ok(Config {
            path: path.to_owned(),
            database_url,
            database_source,
            source,
            api: Api {
                base_url: base.as_str().trim_end_matches('/').to_owned(),
                method,
                path: path_template,
                headers,
                unset: unset.map(|(_, why)| why),
                timeout: duration("api.timeout", &raw.api.timeout)?,
                connect_timeout: duration("api.connect_timeout", &raw.api.connect_timeout)?,
                max_body_bytes: usize::try_from(raw.api.max_body_bytes)
                    .map_err(|_| key_err("api.max_body_bytes", "is too large".into()))?,
                ca_certs,
                response,
            },
            limits,
            retry,
            checkpoint,
            credits: Credits {
                allowance: raw.credits.allowance,
                periods,
                reserve: raw.credits.reserve,
                cost: raw.credits.cost,
                billed_statuses,
                remaining_header,
                remaining_url,
            },
            lock_stale_after,
            lock_timeout: duration("database.lock_timeout", &raw.database.lock_timeout)?,
            statement_timeout: duration(
                "database.statement_timeout",
                &raw.database.statement_timeout,
            )?,
        })
    }

    /// The database URL with any password hidden, for messages.
    pub fn database_display(&self) -> String {
        match Url::parse(self.database_url.expose()) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("(redacted)"));
                url.set_query(None);
                url.to_string()
            }
            // Engine, user, host and database; the query (which may carry a
            // `password=`) left out.
            Ok(mut url) => {
                url.set_query(None);
                url.to_string()
            }
            _ if self.database_url.expose().starts_with("sqlite:") => {
                self.database_url.expose().to_owned()
            }
            _ => "(database url)".into(),
        }
    }
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

/// Resolves `${VAR}` references. Returns the text and whether it holds a secret
/// (any value that came from the environment is treated as one).
fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<(String, bool), String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut secret = false;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| "has a `${` without a closing `}`".to_string())?
            + start;
        let name = &rest[start + 2..end];
        let value = env(name).ok_or_else(|| {
            format!("uses ${{{name}}}, which is not set in the environment; export {name} or remove the reference")
        })?;
        out.push_str(&value);
        secret = true;
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok((out, secret))
}

/// The longest duration any key takes: longer ones are mistakes, and would overflow
/// the clock arithmetic of timeouts and pauses.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| {
        format!("= \"{s}\" is not a duration ({e}); write e.g. \"500ms\", \"10s\" or \"30m\"")
    })?;
    if d > MAX_DURATION {
        return Err(format!(
            "= \"{s}\" is longer than a year; write a shorter duration"
        ));
    }
    Ok(d)
}

fn parse_status_pattern(s: &str) -> Result<StatusPattern, String> {
    let bad = || format!("entry \"{s}\" is not a status; write e.g. \"404\" or \"2xx\"");
    if let Some(class) = s.strip_suffix("xx") {
        let c: u16 = class.parse().map_err(|_| bad())?;
        return if (1..=5).contains(&c) {
            Ok(StatusPattern::Class(c))
        } else {
            Err(bad())
        };
    }
    let code: u16 = s.parse().map_err(|_| bad())?;
    if (100..=599).contains(&code) {
        Ok(StatusPattern::Exact(code))
    } else {
        Err(bad())
    }
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
        assert!(c.limits.burst.get() <= c.limits.rate.get());
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
    fn path_template_parses_placeholders() {
        let t = PathTemplate::parse("api.path", "/v1/{kind}/x/{id}").unwrap();
        let cols: Vec<&str> = t.columns().map(Ident::as_str).collect();
        assert_eq!(cols, ["kind", "id"]);
        assert!(PathTemplate::parse("api.path", "/v1/{id").is_err());
        assert!(PathTemplate::parse("api.path", "/v1/{a b}").is_err());
    }

    #[test]
    fn status_patterns() {
        assert!(parse_status_pattern("2xx").unwrap().matches(204));
        assert!(!parse_status_pattern("404").unwrap().matches(400));
        assert!(parse_status_pattern("9xx").is_err());
        assert!(parse_status_pattern("abc").is_err());
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
