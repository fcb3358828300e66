//! The vendor: how a record becomes a request, and what an answer means.
//!
//! [`Vendor::call`] makes one call and classifies the answer into a [`CallError`]
//! or the record's new values. That classification is the center of the engine:
//! throttled answers pause the whole job and are not attempts, transient ones are
//! retried with backoff, permanent ones fail the record, and running out of
//! credits stops the run with the rest left pending.

mod headers;

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::{Client, Response, StatusCode};

use crate::config::{Config, StatusPattern};
use crate::pacer::{Failure, Signal};
use crate::record::{ColumnKind, Value};
use crate::rules::{Answer, Means, Rule, Wait, built_in};
use crate::store::{Item, Kinds};
use crate::template::{Compiled, Json, Nulls, Values};

pub use crate::pacer::QuotaHint;
pub use headers::{quota_hint, retry_after};

/// Why a call did not produce the record's new values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The vendor asks the client to slow down (429, or 503 with Retry-After):
    /// the whole job pauses, and the call is not counted as an attempt.
    #[error("throttled")]
    Throttled { retry_after: Option<Duration> },
    /// Worth another attempt later: 5xx, 408, timeouts, connection failures.
    /// `overload` when it says the vendor has less capacity than the calls sent
    /// (503, 502, 504, 408, timeouts, refused or reset connections), as opposed to
    /// a plain server error (500).
    #[error("{reason}")]
    Transient { reason: String, overload: bool },
    /// Will not get better by retrying: 4xx, an answer that does not map.
    #[error("{0}")]
    Permanent(String),
    /// The vendor knows nothing of this record (an `[[api.answers]]` rule says
    /// so): it is marked `no_match`, with the reason, not failed.
    #[error("no match: {0}")]
    NoMatch(String),
    /// Not ready yet (a rule's `later`: Clearbit's 202 "queued"): the record
    /// is tried again after the wait (`None`: the retry backoff), not an attempt.
    #[error("{reason}")]
    Later {
        reason: String,
        after: Option<Duration>,
    },
    /// The vendor says the account has no credits left (402).
    #[error("out of credits")]
    OutOfCredits,
    /// No call can succeed until the operator changes something (the vendor's TLS
    /// certificate is not trusted): the run stops, the item stays pending.
    #[error("{0}")]
    Fatal(String),
    /// The vendor refuses this client (401, 403: a wrong or expired key, an
    /// account without access): no call can succeed until the operator fixes
    /// the credentials; the run stops, the item stays pending. The status and
    /// the vendor's own words, cut short, secrets redacted.
    #[error("{0}")]
    Refused(String),
}

/// How the reason of a call that could not connect starts.
const CONNECT_FAILED: &str = "connection failed";

impl CallError {
    /// No connection to the vendor could be made (refused, unresolvable, timed out).
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, CallError::Transient { reason, .. } if reason.starts_with(CONNECT_FAILED))
    }
}

/// One call's result: the status (if an answer arrived) decides billing; the
/// vendor's quota headers and the latency feed the pacer.
#[derive(Debug)]
pub struct Call {
    pub status: Option<u16>,
    pub result: Result<Vec<Value>, CallError>,
    pub hint: Option<QuotaHint>,
    /// The account's credits left, as the vendor counts them
    /// (`credits.remaining_header`).
    pub credits_left: Option<i64>,
    /// Whether the vendor bills this answer (`credits.billed_statuses`).
    pub billed: bool,
    /// What the vendor says the call cost (`credits.cost_header`).
    pub cost: Option<i64>,
    /// From the request's start to the answer's end.
    pub elapsed: Duration,
}

impl Call {
    /// The call's failure, as the pacer's reachability check takes it.
    pub fn failure(&self) -> Option<Failure> {
        let e = self.result.as_ref().err()?;
        Some(Failure {
            reason: e.to_string(),
            connect: e.is_connect_failure(),
        })
    }

    /// How long a throttle asks to wait: its `Retry-After`, or without one the
    /// reset of a rate-limit window with no call left in it. `None` for any
    /// other answer, or a throttle that says nothing of when.
    pub fn throttle_wait(&self) -> Option<Duration> {
        let Err(CallError::Throttled { retry_after }) = &self.result else {
            return None;
        };
        retry_after.or_else(|| {
            let hint = self.hint.as_ref()?;
            (hint.remaining == Some(0)).then_some(hint.reset).flatten()
        })
    }

    /// What the answer tells the pacer, and the wait a throttle asks for.
    pub fn signal(&self) -> (Signal, Option<Duration>) {
        match &self.result {
            Ok(_) => (Signal::Success(self.elapsed), None),
            Err(CallError::Throttled { retry_after }) => (Signal::Throttled, *retry_after),
            Err(CallError::Transient { overload: true, .. }) => (Signal::Overloaded, None),
            Err(CallError::Transient {
                overload: false, ..
            }) => (Signal::Failed, None),
            Err(
                CallError::Permanent(_)
                | CallError::NoMatch(_)
                | CallError::Later { .. }
                | CallError::OutOfCredits
                | CallError::Fatal(_)
                | CallError::Refused(_),
            ) => (Signal::Answered, None),
        }
    }
}

/// The request a record becomes: `api.path`, `api.query`, the headers that
/// read a column and `api.body`, compiled against the columns the store reads.
struct Request {
    path: Compiled,
    query: Vec<(String, Compiled)>,
    headers: Vec<(reqwest::header::HeaderName, Compiled)>,
    body: Option<Json<Compiled>>,
    nulls: Nulls,
    /// The key's kind, then the other columns', as `Slot`s number them.
    kinds: Vec<ColumnKind>,
}

pub struct Vendor {
    client: Client,
    method: reqwest::Method,
    base_url: String,
    request: Request,
    pointers: Vec<String>,
    kinds: Vec<ColumnKind>,
    max_body: usize,
    timeout: Duration,
    billed: Vec<StatusPattern>,
    /// `[[api.answers]]`, then the built-in rules: the first that matches
    /// says what an answer means.
    rules: Vec<Rule>,
    remaining_header: Option<reqwest::header::HeaderName>,
    cost_header: Option<reqwest::header::HeaderName>,
    cost_pointer: Option<String>,
    /// `api.ratelimit_headers`: the vendor's own rate-limit header names.
    ratelimit_headers: crate::config::RateLimitHeaders,
    /// Every value from `${VAR}` and of a secret header (and each long word of
    /// them, as a bearer token): never repeated from a vendor's message.
    secrets: Vec<String>,
}

impl Vendor {
    /// `kinds`: the configured columns' kinds (from the store).
    pub fn new(config: &Config, kinds: &Kinds) -> Result<Vendor> {
        // Never a call without the headers the configuration asks for.
        config.vendor_ready()?;
        let api = &config.api;
        let mut builder = Client::builder()
            .timeout(api.timeout)
            .connect_timeout(api.connect_timeout)
            .pool_max_idle_per_host(config.limits.max_concurrency.get() as usize)
            .default_headers(api.headers.clone())
            .redirect(same_origin_redirects())
            .user_agent(concat!("freshen/", env!("CARGO_PKG_VERSION")));
        if !api.ca_certs.is_empty() {
            builder = builder.tls_certs_merge(api.ca_certs.iter().cloned());
        }
        let client = builder.build().with_context(|| {
            format!(
                "building the HTTP client (is api.ca_file in {} a valid PEM certificate?)",
                config.path.display()
            )
        })?;
        let key = &config.source.key;
        let columns = api.columns(key);
        let request = Request {
            path: api.path.compile(key, &columns),
            query: api
                .query
                .iter()
                .map(|(name, t)| (name.clone(), t.compile(key, &columns)))
                .collect(),
            headers: api
                .header_templates
                .iter()
                .map(|(name, t)| (name.clone(), t.compile(key, &columns)))
                .collect(),
            body: api.body.as_ref().map(|b| b.compile(key, &columns)),
            nulls: api.body_nulls,
            kinds: std::iter::once(kinds.key)
                .chain(kinds.params.iter().copied())
                .collect(),
        };
        let from_env = api.templates().flat_map(|(_, t)| t.secrets());
        let secrets = secret_words(sensitive(&api.headers).chain(from_env));
        Ok(Vendor {
            client,
            method: api.method.clone(),
            base_url: api.base_url.clone(),
            request,
            pointers: api.response.iter().map(|m| m.pointer.clone()).collect(),
            kinds: kinds.mapped.clone(),
            max_body: api.max_body_bytes,
            timeout: api.timeout,
            billed: config.credits.billed_statuses.clone(),
            rules: api.answers.iter().cloned().chain(built_in()).collect(),
            remaining_header: config.credits.remaining_header.clone(),
            cost_header: config.credits.cost_header.clone(),
            cost_pointer: config.credits.cost_pointer.clone(),
            secrets,
            ratelimit_headers: api.ratelimit_headers.clone(),
        })
    }

    /// The URL for an item: the path template with its values percent-encoded
    /// as path segments, then `api.query` form-encoded. A query parameter that
    /// is one `{column}` whose value is NULL is left out.
    pub fn url(&self, item: &Item) -> String {
        let values = values(item);
        let mut url = self.base_url.clone();
        self.request.path.fill(&mut url, values, push_encoded);
        let mut first = !url.contains('?');
        for (name, value) in &self.request.query {
            if value.is_null(values) {
                continue;
            }
            url.push(if first { '?' } else { '&' });
            first = false;
            url.extend(url::form_urlencoded::byte_serialize(name.as_bytes()));
            url.push('=');
            let text = value.text(values);
            url.extend(url::form_urlencoded::byte_serialize(text.as_bytes()));
        }
        url
    }

    /// The headers that read a column, filled for an item; a header that is
    /// one `{column}` whose value is NULL is left out. `Err`: the header whose
    /// value cannot be sent.
    fn headers(&self, item: &Item) -> Result<reqwest::header::HeaderMap, String> {
        let values = values(item);
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &self.request.headers {
            if value.is_null(values) {
                continue;
            }
            let mut header = reqwest::header::HeaderValue::from_str(&value.text(values))
                .map_err(|_| name.to_string())?;
            header.set_sensitive(value.is_secret());
            headers.insert(name.clone(), header);
        }
        Ok(headers)
    }

    /// The JSON body for an item, if `api.body` is set.
    fn body(&self, item: &Item) -> Option<Vec<u8>> {
        let body = self.request.body.as_ref()?;
        let json = body.fill(values(item), &self.request.kinds, self.request.nulls);
        Some(serde_json::to_vec(&json).expect("a JSON value serializes"))
    }

    /// Why this item cannot be sent, if it cannot: then it fails at once, without
    /// a call (a call would reach another resource, or be refused, and be billed).
    ///
    /// - A placeholder filled with nothing, `.` or `..`: as a path segment these
    ///   mean another URL (`/v1/people/..` is `/v1/`). Percent-encoding cannot
    ///   save a dot segment: the WHATWG URL parser behind reqwest (and most
    ///   servers) reads `%2E` as `.` and removes it all the same, so there is no
    ///   spelling of the key that reaches the vendor intact.
    /// - A URL longer than [`MAX_URL_BYTES`].
    pub fn refuses(&self, item: &Item) -> Option<String> {
        for value in self.request.path.values(values(item)) {
            if value.is_none_or(str::is_empty) {
                return Some(
                    "cannot be sent: a placeholder of api.path is empty, and an empty URL \
                     path segment names another resource (`/v1/people/` for \
                     `/v1/people/{id}`); no call was made"
                        .to_owned(),
                );
            }
        }
        let url = self.url(item);
        let path = url.split(['?', '#']).next().unwrap_or_default();
        if path.split('/').any(is_dot_segment) {
            return Some(
                "cannot be sent: as a URL path segment `.` and `..` mean this level and \
                 the one above (RFC 3986 dot segments), which URL parsers remove, \
                 percent-encoded (%2E) or not, so the call would reach another resource; \
                 no call was made"
                    .to_owned(),
            );
        }
        if let Err(header) = self.headers(item) {
            return Some(format!(
                "cannot be sent: api.headers.{header} filled from the record holds characters \
                 not allowed in an HTTP header (a line break, say); no call was made"
            ));
        }
        if url.len() > MAX_URL_BYTES {
            return Some(format!(
                "cannot be sent: its key of {} bytes makes a URL of {} bytes, more than \
                 the {MAX_URL_BYTES} that HTTP servers are asked to accept (RFC 9110 \
                 section 4.1); longer ones are commonly refused (414, 431) or cut off, so \
                 no call was made",
                item.key.len(),
                url.len()
            ));
        }
        None
    }

    /// Whether the vendor bills an answer with this status.
    fn is_billed(&self, status: u16) -> bool {
        self.billed.iter().any(|p| p.matches(status))
    }

    /// One call for one item, classified: its values or why not, whether it is
    /// billed, and what it says of the vendor's limits.
    pub async fn call(&self, item: &Item) -> Call {
        let started = tokio::time::Instant::now();
        let mut request = self
            .client
            .request(self.method.clone(), self.url(item))
            .headers(self.headers(item).unwrap_or_default());
        if let Some(body) = self.body(item) {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return Call {
                    status: None,
                    result: Err(self.transport_error(&e)),
                    hint: None,
                    credits_left: None,
                    billed: false,
                    cost: None,
                    elapsed: started.elapsed(),
                };
            }
        };
        let status = response.status();
        let hint = quota_hint(response.headers(), &self.ratelimit_headers);
        let count = |name: &Option<reqwest::header::HeaderName>| {
            let value = response.headers().get(name.as_ref()?)?.to_str().ok()?;
            value.trim().parse::<i64>().ok().filter(|n| *n >= 0)
        };
        let credits_left = count(&self.remaining_header);
        let mut cost = count(&self.cost_header);
        let redirect = status
            .is_redirection()
            .then(|| redirect_origin(&response))
            .flatten();
        let mut response = response;
        let headers = std::mem::take(response.headers_mut());
        let body = self.read_body(response).await;
        let answer = Answer {
            status: status.as_u16(),
            headers: &headers,
            body: body.as_deref().unwrap_or_default(),
            json: Default::default(),
        };
        let rule = self
            .rules
            .iter()
            .find(|r| r.matches(&answer))
            .expect("the last built-in rule matches any answer");
        let billed = rule
            .billed
            .unwrap_or_else(|| self.is_billed(status.as_u16()));
        let result = match rule.means {
            Means::Ok => match &body {
                Ok(b) => self.map(b, answer.parsed(), &mut cost),
                Err(e) => Err(e.clone()),
            },
            _ => Err(self.refusal(rule, &answer, hint.as_ref(), redirect)),
        };
        Call {
            status: Some(status.as_u16()),
            result,
            hint,
            credits_left,
            billed,
            cost,
            elapsed: started.elapsed(),
        }
    }

    /// What an answer a rule does not call `ok` means, as the error it is;
    /// `redirect`: the origin a 3xx points to.
    fn refusal(
        &self,
        rule: &Rule,
        answer: &Answer,
        hint: Option<&QuotaHint>,
        redirect: Option<String>,
    ) -> CallError {
        let code = answer.status;
        let status = StatusCode::from_u16(code).expect("a status reqwest read");
        let says = || {
            format!(
                "{}{}",
                status_text(status),
                vendor_says(answer.body, &self.secrets)
            )
        };
        let wait = || match rule.wait {
            Wait::RetryAfter => retry_after(answer.headers),
            Wait::Reset => hint.and_then(|h| h.reset),
            Wait::For(d) => Some(d),
        };
        match rule.means {
            Means::Ok => unreachable!("an ok answer is mapped, not refused"),
            Means::NoMatch => CallError::NoMatch(says()),
            Means::Retry => CallError::Transient {
                reason: status_text(status),
                // A plain server error (500) is not a sign of overload.
                overload: code == 408 || (501..=599).contains(&code),
            },
            Means::Throttle => CallError::Throttled {
                retry_after: wait(),
            },
            Means::OutOfCredits => CallError::OutOfCredits,
            Means::Fatal => CallError::Refused(says()),
            Means::Later => CallError::Later {
                reason: format!("{} (not ready: try later)", says()),
                after: wait(),
            },
            // Only redirects to another origin reach here: see `same_origin_redirects`.
            Means::Fail if status.is_redirection() => CallError::Permanent(match redirect {
                Some(to) => format!(
                    "{} to {to}, another origin: not followed, so the API credentials stay \
                     with the vendor; if the vendor moved, update api.base_url",
                    status_text(status)
                ),
                None => status_text(status),
            }),
            Means::Fail => CallError::Permanent(status_text(status)),
        }
    }

    /// Asks the vendor's account endpoint (`credits.remaining_url`) for the credits
    /// left: an unbilled GET with the configured headers, the count at `pointer`.
    pub async fn credits_left(&self, url: &str, pointer: &str) -> anyhow::Result<i64> {
        use anyhow::{Context, bail};
        // The origin only: the URL's query may hold a key.
        let origin = url::Url::parse(url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", self.transport_error(&e)))
            .with_context(|| format!("asking {origin} (credits.remaining_url)"))?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "credits.remaining_url answered {}; check the URL and the API credentials",
                status_text(status)
            );
        }
        let body = self
            .read_body(response)
            .await
            .map_err(|e| anyhow::anyhow!("credits.remaining_url: {e}"))?;
        let json: serde_json::Value =
            serde_json::from_slice(&body).context("credits.remaining_url did not answer JSON")?;
        let found = json.pointer(pointer).with_context(|| {
            format!("credits.remaining_pointer {pointer} is not in the account endpoint's answer")
        })?;
        match found
            .as_i64()
            .or_else(|| found.as_f64().map(|f| f.floor() as i64))
        {
            Some(n) => Ok(n),
            None => bail!(
                "credits.remaining_pointer {pointer} points at {found}, not a number of credits"
            ),
        }
    }

    /// Reads the body up to `api.max_body_bytes` (after decompression, so a gzip
    /// bomb is cut off too).
    async fn read_body(&self, mut response: Response) -> Result<Vec<u8>, CallError> {
        let too_big = || {
            CallError::Permanent(format!(
                "answer larger than api.max_body_bytes ({} bytes)",
                self.max_body
            ))
        };
        if response
            .content_length()
            .is_some_and(|n| n > self.max_body as u64)
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(&e))?
        {
            if body.len() + chunk.len() > self.max_body {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The mapped values of an `ok` answer's body (`parsed`: its JSON, if a
    /// rule read it already), or why it does not map; `cost` gets what the
    /// body says the call cost, if `credits.cost_pointer` points at a count
    /// (an answer that does not map can still say what it cost).
    fn map(
        &self,
        body: &[u8],
        parsed: Option<&serde_json::Value>,
        cost: &mut Option<i64>,
    ) -> Result<Vec<Value>, CallError> {
        let owned;
        let json = match parsed {
            Some(json) => json,
            None => {
                owned = parse_answer(body)?;
                &owned
            }
        };
        if let Some(pointer) = &self.cost_pointer {
            let reported = json.pointer(pointer).and_then(serde_json::Value::as_i64);
            *cost = cost.or(reported.filter(|n| *n >= 0));
        }
        map_json(json, &self.pointers, &self.kinds)
    }

    fn transport_error(&self, e: &reqwest::Error) -> CallError {
        if e.is_redirect() {
            return CallError::Permanent(format!(
                "too many redirects (more than {MAX_REDIRECTS}, all within the vendor's origin)"
            ));
        }
        if let Some(tls) = certificate_error(e) {
            return CallError::Fatal(format!(
                "the vendor's TLS certificate is not trusted ({tls}); if it is signed by a \
                 private CA, set api.ca_file to that CA's PEM certificate"
            ));
        }
        // A connection that could not be made first: a connect timeout is that,
        // not a slow answer.
        let what = if e.is_connect() {
            CONNECT_FAILED.to_owned()
        } else if e.is_timeout() {
            format!(
                "no answer within api.timeout ({})",
                humantime::format_duration(self.timeout)
            )
        } else if e.is_body() || e.is_decode() {
            "answer cut off".to_owned()
        } else {
            "request failed".to_owned()
        };
        // The innermost cause says what the network did; the URL is left out on purpose.
        let cause = std::iter::successors(std::error::Error::source(e), |s| s.source()).last();
        let reason = match cause {
            Some(c) => format!("{what}: {c}"),
            None => what,
        };
        CallError::Transient {
            reason,
            overload: true,
        }
    }
}

/// Same-origin redirects followed at most this many times in a row.
const MAX_REDIRECTS: usize = 5;

/// Follows a redirect only within the origin (scheme, host and port) of the request
/// that got it; any other is handed back as the 3xx answer itself. reqwest drops
/// `Authorization` and cookies on a cross-origin redirect, but not the other
/// default headers (an `X-Api-Key`), so freshen never leaves the vendor's origin.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt
            .previous()
            .last()
            .is_some_and(|prev| prev.origin() == attempt.url().origin());
        if !same {
            attempt.stop()
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    })
}

/// The origin a 3xx answer points to, for messages: never the whole URL, whose
/// path or query may hold a token.
fn redirect_origin(response: &Response) -> Option<String> {
    let location = response.headers().get(reqwest::header::LOCATION)?;
    let to = response.url().join(location.to_str().ok()?).ok()?;
    Some(to.origin().ascii_serialization())
}

/// A TLS certificate the client refused, if that is why the call failed. rustls
/// travels inside `io::Error`s (nested), whose `source()` skips what they wrap,
/// hence `get_ref` as well as `source`.
fn certificate_error(e: &reqwest::Error) -> Option<String> {
    let mut todo: Vec<&(dyn std::error::Error + 'static)> = vec![e];
    while let Some(err) = todo.pop() {
        if let Some(tls @ rustls::Error::InvalidCertificate(_)) = err.downcast_ref() {
            return Some(tls.to_string());
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            todo.push(inner);
        }
        todo.extend(err.source());
    }
    None
}

/// A 2xx body as the values of the mapped columns (`pointers` and `kinds` in
/// `api.response` order), or the permanent failure that says why it does not map.
#[cfg(test)]
fn map_answer(
    body: &[u8],
    pointers: &[String],
    kinds: &[ColumnKind],
) -> Result<Vec<Value>, CallError> {
    map_json(&parse_answer(body)?, pointers, kinds)
}

fn parse_answer(body: &[u8]) -> Result<serde_json::Value, CallError> {
    // serde_json stops at 128 levels of nesting, so a hostile body cannot blow the stack.
    serde_json::from_slice(body)
        .map_err(|e| CallError::Permanent(format!("answer is not JSON: {e}")))
}

fn map_json(
    json: &serde_json::Value,
    pointers: &[String],
    kinds: &[ColumnKind],
) -> Result<Vec<Value>, CallError> {
    pointers
        .iter()
        .zip(kinds)
        .map(|(pointer, kind)| {
            let found = json
                .pointer(pointer)
                .ok_or_else(|| CallError::Permanent(format!("answer has no {pointer}")))?;
            Value::from_json(found, *kind)
                .map_err(|why| CallError::Permanent(format!("{pointer}: {why}")))
        })
        .collect()
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// An item's values, as the request's templates read them.
fn values(item: &Item) -> Values<'_> {
    Values {
        key: &item.key,
        params: &item.params,
    }
}

/// The values of `headers` marked sensitive by the config (`${VAR}` values
/// and credentials).
fn sensitive(headers: &reqwest::header::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .values()
        .filter(|v| v.is_sensitive())
        .filter_map(|v| v.to_str().ok())
}

/// `secrets` whole and word by word, longest first, so a vendor's message
/// that repeats a key shows `(redacted)` in its place.
fn secret_words<'a>(secrets: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut words: Vec<String> = secrets
        .flat_map(|v| std::iter::once(v).chain(v.split_whitespace()))
        // "Bearer" and other short words are not secrets; a key is longer.
        .filter(|w| w.len() >= 8)
        .map(str::to_owned)
        .collect();
    words.sort_by_key(|w| std::cmp::Reverse(w.len()));
    words.dedup();
    words
}

/// The most of a vendor's message an error repeats, in characters.
const VENDOR_WORDS: usize = 200;

/// `": "` and the vendor's message in `body` on one line, cut to
/// [`VENDOR_WORDS`], the `secrets` redacted; nothing for an empty body.
fn vendor_says(body: &[u8], secrets: &[String]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for secret in secrets {
        text = text.replace(secret.as_str(), "(redacted)");
    }
    match text.is_empty() {
        true => String::new(),
        false => format!(": {}", cut(&text, VENDOR_WORDS)),
    }
}

/// The longest URL freshen sends, in bytes. RFC 9110 (section 4.1) asks every
/// HTTP sender and recipient to support URLs of at least 8,000 octets; past that,
/// servers and proxies commonly answer 414 or 431 or drop the connection (nginx
/// reads a request line into 8 KiB by default), which would look transient and
/// be retried, each try billed or not as the vendor pleases.
pub const MAX_URL_BYTES: usize = 8000;

/// Whether a URL path segment is a dot segment, as the WHATWG URL parser reads
/// one: `.` or `..`, with either dot percent-encoded or not.
fn is_dot_segment(segment: &str) -> bool {
    matches!(
        segment.to_ascii_lowercase().as_str(),
        "." | ".." | "%2e" | ".%2e" | "%2e." | "%2e%2e"
    )
}

/// A key for a message: a long one cut to its first 32 characters.
pub fn shown(key: &str) -> String {
    cut(key, 32)
}

/// `text` cut to its first `chars` characters, `…` marking a cut.
fn cut(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Appends `s` percent-encoded as one path segment.
fn push_encoded(url: &mut String, s: &str) {
    url.extend(
        url::form_urlencoded::byte_serialize(s.as_bytes())
            .map(|part| if part == "+" { "%20" } else { part }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_do_not_survive_percent_encoding() {
        // Why `.` and `..` are refused rather than encoded: the parser reqwest
        // uses removes `%2E` dot segments too.
        for path in ["/v1/people/..", "/v1/people/%2E%2E", "/v1/people/.%2e"] {
            let url = url::Url::parse(&format!("http://vendor{path}")).unwrap();
            assert_eq!(url.path(), "/v1/", "{path}");
        }
        assert!(is_dot_segment("%2E%2e") && is_dot_segment("."));
        assert!(!is_dot_segment("...") && !is_dot_segment("a.b") && !is_dot_segment("%252E"));
        assert_eq!(shown(&"k".repeat(40)), format!("{}…", "k".repeat(32)));
    }

    #[test]
    fn placeholders_are_encoded_as_path_segments() {
        let mut s = String::new();
        push_encoded(&mut s, "a b/c?d");
        assert_eq!(s, "a%20b%2Fc%3Fd");
        let mut s = String::new();
        push_encoded(&mut s, "12345");
        assert_eq!(s, "12345");
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value as J;

        /// Any JSON document, a few levels deep.
        fn json() -> impl Strategy<Value = J> {
            let leaf = prop_oneof![
                Just(J::Null),
                any::<bool>().prop_map(J::Bool),
                any::<i64>().prop_map(J::from),
                any::<u64>().prop_map(J::from),
                any::<f64>().prop_map(J::from),
                "\\PC{0,12}".prop_map(J::String),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(J::Array),
                    proptest::collection::btree_map("[a-z~/0-9]{0,4}", inner, 0..6)
                        .prop_map(|m| J::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Pointers as `api.response` accepts them: empty or starting with `/`,
        /// with escapes, indices and odd characters.
        fn pointer() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(String::new()),
                proptest::collection::vec(
                    "[a-z0-9~/]{0,4}|~0|~1|-|0|00|18446744073709551616",
                    1..4
                )
                .prop_map(|parts| format!("/{}", parts.join("/"))),
            ]
        }

        fn kind() -> impl Strategy<Value = ColumnKind> {
            prop_oneof![
                Just(ColumnKind::Integer),
                Just(ColumnKind::Real),
                Just(ColumnKind::Text),
                Just(ColumnKind::Bool),
            ]
        }

        /// What a failure to map may say: each names the pointer or the reason.
        fn is_clear(e: &CallError, pointers: &[String]) -> bool {
            match e {
                CallError::Permanent(m) => {
                    m.starts_with("answer is not JSON: ")
                        || pointers.iter().any(|p| {
                            m == &format!("answer has no {p}")
                                || m.starts_with(&format!("{p}: expected "))
                        })
                }
                _ => false,
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any JSON against any mapping: the values, one per mapped column and
            /// each of its column's kind, or a permanent failure that says why.
            #[test]
            fn any_json_maps_or_fails_permanently(
                doc in json(),
                mapping in proptest::collection::vec((pointer(), kind()), 1..5),
            ) {
                let (pointers, kinds): (Vec<String>, Vec<ColumnKind>) = mapping.into_iter().unzip();
                let body = serde_json::to_vec(&doc).unwrap();
                match map_answer(&body, &pointers, &kinds) {
                    Ok(values) => {
                        prop_assert_eq!(values.len(), pointers.len());
                        for (v, k) in values.iter().zip(&kinds) {
                            let fits = matches!(
                                (v, k),
                                (Value::Null, _)
                                    | (Value::Integer(_), ColumnKind::Integer)
                                    | (Value::Real(_), ColumnKind::Real)
                                    | (Value::Text(_), ColumnKind::Text)
                                    | (Value::Bool(_), ColumnKind::Bool)
                            );
                            prop_assert!(fits, "{v:?} for {k:?}");
                        }
                    }
                    Err(e) => prop_assert!(is_clear(&e, &pointers), "{e:?}"),
                }
            }

            /// Any bytes at all: no panic, and what is not JSON says so.
            #[test]
            fn any_bytes_map_or_fail_permanently(body in proptest::collection::vec(any::<u8>(), 0..64)) {
                let pointers = vec!["/title".to_owned()];
                if let Err(e) = map_answer(&body, &pointers, &[ColumnKind::Text]) {
                    prop_assert!(is_clear(&e, &pointers), "{e:?}");
                }
            }
        }

        #[test]
        fn deeply_nested_answers_fail_without_overflowing_the_stack() {
            let body = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
            let e =
                map_answer(body.as_bytes(), &["/0".to_owned()], &[ColumnKind::Text]).unwrap_err();
            assert!(
                matches!(&e, CallError::Permanent(m) if m.contains("recursion limit")),
                "{e:?}"
            );
        }
    }

    #[test]
    fn a_vendors_message_is_one_line_cut_short_with_its_secrets_redacted() {
        let mut headers = reqwest::header::HeaderMap::new();
        let mut key = reqwest::header::HeaderValue::from_static("Bearer sk-live-0123456789");
        key.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, key);
        headers.insert("x-client", "plain-value-not-secret".parse().unwrap());
        let secrets = secret_words(sensitive(&headers));
        assert_eq!(secrets, ["Bearer sk-live-0123456789", "sk-live-0123456789"]);
        let body = b"{\"error\":\n  \"bad key sk-live-0123456789\"}";
        assert_eq!(
            vendor_says(body, &secrets),
            ": {\"error\": \"bad key (redacted)\"}"
        );
        assert_eq!(vendor_says(b"", &secrets), "");
        let long = "x".repeat(500);
        let cut = vendor_says(long.as_bytes(), &secrets);
        assert_eq!(cut.chars().count(), 2 + VENDOR_WORDS + 1, "{cut}");
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn a_throttles_wait_is_its_retry_after_or_the_reset_of_an_empty_window() {
        let call = |retry_after: Option<Duration>, remaining: Option<u64>| Call {
            status: Some(429),
            result: Err(CallError::Throttled { retry_after }),
            hint: Some(QuotaHint {
                remaining,
                reset: Some(Duration::from_secs(3600)),
                ..QuotaHint::default()
            }),
            credits_left: None,
            billed: false,
            cost: None,
            elapsed: Duration::ZERO,
        };
        let s = Duration::from_secs;
        assert_eq!(call(Some(s(5)), Some(0)).throttle_wait(), Some(s(5)));
        assert_eq!(call(None, Some(0)).throttle_wait(), Some(s(3600)));
        // Calls left in the window: its reset is not a wait.
        assert_eq!(call(None, Some(3)).throttle_wait(), None);
        assert_eq!(call(None, None).throttle_wait(), None);
        let ok = Call {
            result: Ok(Vec::new()),
            ..call(None, Some(0))
        };
        assert_eq!(ok.throttle_wait(), None, "only a throttle asks to wait");
    }
}
