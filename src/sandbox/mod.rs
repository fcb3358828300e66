//! The simulated vendor: an HTTP API on loopback that answers like a rate-limited,
//! credit-metered data vendor, faults included. It is the vendor of `freshen demo`,
//! of the integration tests (which start it in-process on a free port and read its
//! counters) and of the benchmarks (which run `freshen sandbox` as its own process).
//!
//! Every answer is derived from the key alone ([`person`]), so a test can check each
//! value written without keeping a copy. Faults are what users meet: a token-bucket
//! rate limit (429 with `Retry-After`), a concurrency cap (503, no headers), latency,
//! a share of server errors, an outage window, a credit allowance (402), and
//! scripted answers for single keys.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod requests;

pub use requests::Seen;

/// How the simulated vendor behaves: built by the demo and the tests, and
/// from `freshen sandbox`'s flags (`cli::SandboxArgs`, where each is explained).
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxOptions {
    /// Address to listen on (port 0 picks a free port); loopback (127.0.0.0/8,
    /// ::1) unless --allow-remote
    pub listen: SocketAddr,
    /// Calls per second accepted (token bucket); over it the answer is 429 with Retry-After. 0 = unlimited
    pub rate: f64,
    /// Token-bucket size for --rate: calls accepted at once after a quiet spell
    pub burst: u32,
    /// Change the rate mid-run: AT=RATE, e.g. `5s=50` (repeatable)
    pub rate_changes: Vec<(Duration, f64)>,
    /// Calls served at once; beyond it the answer is 503 without Retry-After or rate headers. 0 = unlimited
    pub max_concurrency: u32,
    /// Latency of every accepted call, e.g. `50ms` (refusals are immediate)
    pub latency: Duration,
    /// Share of calls (0..1) answered with --error-status, chosen by a seeded
    /// generator; they come after --latency, as a failing backend's do, unless
    /// --instant-errors
    pub error_rate: f64,
    /// The status of --error-rate's errors: 500, or 503 (without Retry-After, as a
    /// load balancer answers when a backend is unhealthy)
    pub error_status: u16,
    /// Answer --error-rate's errors at once, before the latency, as a load balancer
    /// does
    pub instant_errors: bool,
    /// Start of an outage, from server start: every call answered 503 during it
    pub outage_start: Option<Duration>,
    /// Length of the outage
    pub outage: Duration,
    /// Credits the account holds; each billed answer (2xx, 404) costs one; when spent: 402. Unset = unlimited
    pub credits: Option<u64>,
    /// Send rate-limit headers with --rate, in --ratelimit-dialect's spelling
    pub ratelimit_headers: bool,
    /// Which rate-limit headers --ratelimit-headers sends
    pub ratelimit_dialect: Dialect,
    /// Scripted answer for one key: KEY=KIND, KIND one of 404, 400, 422, malformed,
    /// oversized, wrong-type, flaky:N, throttle:N, throttle-for:DURATION, slow:DURATION, redirect:URL (repeatable)
    pub faults: Vec<(String, Fault)>,
    /// Quotas of CALLS per WINDOW, e.g. `1000/1d` or `100/3s`: fixed windows from
    /// server start, every one of them counting each call it admits; past any,
    /// the call is answered 429 with a Retry-After of the time left in the
    /// window (a daily or monthly plan's quota; two play Hunter's 15/s and 500/min)
    pub quota: Vec<(u64, Duration)>,
    /// After this many answers of a person, the vendor changes its schema: `title`
    /// is renamed `job_title` in every answer from then on (still 200, still billed)
    pub schema_change_after: Option<u64>,
    /// Each billed call costs LO to HI credits (by its key), reported in
    /// `X-Credits-Used`; without it, one
    pub cost_range: Option<(u64, u64)>,
    /// The API key the vendor accepts, as `Authorization: Bearer KEY`; any other
    /// call is answered 401 (unbilled), its message repeating the key it was
    /// sent, as some vendors' do. Unset = no key checked
    pub api_key: Option<String>,
    /// With --api-key: the key is expected in this query parameter
    /// (`?api_key=KEY`, as Hunter and Google's APIs take it) instead of
    /// `Authorization`
    pub key_param: Option<String>,
    /// The status of a refusal for the rate or a quota: 429, or 403 with a
    /// body `{"errors": [{"id": "too_many_requests"}]}`, as Hunter answers it
    pub throttle_status: u16,
    /// The status of "out of credits": 402, or 429 with a body
    /// `{"errors": [{"id": "usage_exceeded"}]}`, as Hunter answers it
    pub no_credits_status: u16,
    /// The first N calls of each key are answered 202 `{"status": "queued"}`
    /// (unbilled), as Clearbit answers a lookup it has not finished
    pub queued: u32,
    /// Seed of the generator behind --error-rate
    pub seed: u64,
    /// Keep the headers of every call, for tests that check what a client sent
    pub record_headers: bool,
    /// Keep no per-call record (the arrival timeline and the 200s per key), so
    /// memory stays flat over millions of calls: for benchmarks
    pub lean: bool,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8077)),
            rate: 0.0,
            burst: 10,
            rate_changes: Vec::new(),
            max_concurrency: 0,
            latency: Duration::ZERO,
            error_rate: 0.0,
            error_status: 500,
            instant_errors: false,
            outage_start: None,
            outage: Duration::ZERO,
            credits: None,
            ratelimit_headers: false,
            ratelimit_dialect: Dialect::default(),
            faults: Vec::new(),
            api_key: None,
            key_param: None,
            throttle_status: 429,
            no_credits_status: 402,
            queued: 0,
            quota: Vec::new(),
            schema_change_after: None,
            cost_range: None,
            seed: 1,
            record_headers: false,
            lean: false,
        }
    }
}

/// `freshen sandbox --profile`: a real vendor's contract, as a preset of the
/// other options (see `cli::SandboxArgs::profile` for what each sets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    QueryKey,
    PostBody,
    Hunter,
    DailyQuota,
    TwoWindows,
    Openai,
    Queued,
}

/// The API key the `query-key` and `hunter` profiles accept.
pub const PROFILE_KEY: &str = "sandbox-key";

impl Profile {
    pub const NAMES: [(&'static str, Profile); 7] = [
        ("query-key", Profile::QueryKey),
        ("post-body", Profile::PostBody),
        ("hunter", Profile::Hunter),
        ("daily-quota", Profile::DailyQuota),
        ("two-windows", Profile::TwoWindows),
        ("openai", Profile::Openai),
        ("queued", Profile::Queued),
    ];

    /// Sets the options that make the contract, leaving the others as they are.
    pub fn apply(self, o: &mut SandboxOptions) {
        let s = Duration::from_secs;
        match self {
            Profile::QueryKey => {
                o.api_key = Some(PROFILE_KEY.to_owned());
                o.key_param = Some("api_key".to_owned());
            }
            Profile::PostBody => o.cost_range = Some((1, 5)),
            Profile::Hunter => {
                Profile::QueryKey.apply(o);
                Profile::TwoWindows.apply(o);
                o.throttle_status = 403;
                o.no_credits_status = 429;
            }
            Profile::DailyQuota => o.quota = vec![(1000, s(24 * 3600))],
            Profile::TwoWindows => o.quota = vec![(15, s(1)), (500, s(60))],
            Profile::Openai => {
                o.rate = 50.0;
                o.burst = 50;
                o.ratelimit_headers = true;
                o.ratelimit_dialect = Dialect::Openai;
            }
            Profile::Queued => o.queued = 2,
        }
    }
}

/// `--profile NAME`.
pub fn parse_profile(s: &str) -> Result<Profile, String> {
    Profile::NAMES
        .iter()
        .find(|(name, _)| *name == s)
        .map(|(_, p)| *p)
        .ok_or_else(|| {
            let names: Vec<&str> = Profile::NAMES.iter().map(|(n, _)| *n).collect();
            format!("\"{s}\" is not a profile; use one of {}", names.join(", "))
        })
}

/// How `--ratelimit-headers` says the limit: each vendor family's own headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dialect {
    /// `X-RateLimit-Limit/-Remaining/-Reset`, with the older IETF draft's
    /// `RateLimit: limit=, remaining=, reset=` and `RateLimit-Policy: N;w=1`
    #[default]
    All,
    /// Only `X-RateLimit-Limit/-Remaining/-Reset` (reset in seconds)
    X,
    /// OpenAI's `X-RateLimit-Limit/-Remaining/-Reset-Requests`, the reset a Go
    /// duration (`1s`)
    Openai,
    /// The current IETF draft's structured fields: `RateLimit-Policy:
    /// "default";q=N;w=1` and `RateLimit: "default";r=LEFT;t=1`
    Ietf,
}

/// A scripted answer for one key.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// That status, with a small JSON error body.
    Status(u16),
    /// 200 with an HTML page.
    Malformed,
    /// 200 with valid JSON of more than 2 MiB.
    Oversized,
    /// 200 with `score` as a string.
    WrongType,
    /// The first N calls get 503 (no Retry-After), then normal answers.
    Flaky(u32),
    /// The first N calls get 429 with `Retry-After: 1`, then normal answers.
    Throttle(u32),
    /// The first call gets 429 with `Retry-After` this long (whole seconds,
    /// rounded up), then normal answers.
    ThrottleFor(Duration),
    /// The answer comes this much later, on top of --latency.
    Slow(Duration),
    /// 307 Temporary Redirect to this URL (`{key}` in it is replaced by the key).
    Redirect(String),
    /// 429 with an RFC 9457 problem body of type quota-exceeded: the account's
    /// credits are spent, said the way some vendors say it.
    QuotaExceeded,
}

pub fn parse_fault(s: &str) -> Result<(String, Fault), String> {
    let kinds = "404, 400, 422, malformed, oversized, wrong-type, flaky:N, throttle:N, throttle-for:DURATION, \
                 slow:DURATION, redirect:URL, quota-exceeded";
    let (key, kind) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=KIND (KIND: {kinds})"))?;
    let count = |n: &str| {
        n.parse::<u32>()
            .map_err(|_| format!("`{s}`: `{n}` is not a count"))
    };
    let fault = match kind.split_once(':') {
        None if kind.len() == 3 && kind.parse::<u16>().is_ok_and(|c| (400..600).contains(&c)) => {
            Fault::Status(kind.parse().expect("checked"))
        }
        None if kind == "malformed" => Fault::Malformed,
        None if kind == "oversized" => Fault::Oversized,
        None if kind == "wrong-type" => Fault::WrongType,
        None if kind == "quota-exceeded" => Fault::QuotaExceeded,
        Some(("flaky", n)) => Fault::Flaky(count(n)?),
        Some(("throttle", n)) => Fault::Throttle(count(n)?),
        Some(("throttle-for", d)) => Fault::ThrottleFor(
            humantime::parse_duration(d)
                .map_err(|e| format!("`{s}`: `{d}` is not a duration: {e}"))?,
        ),
        Some(("slow", d)) => Fault::Slow(
            humantime::parse_duration(d)
                .map_err(|e| format!("`{s}`: `{d}` is not a duration: {e}"))?,
        ),
        Some(("redirect", url)) if url.starts_with('/') || url.contains("://") => {
            Fault::Redirect(url.to_owned())
        }
        _ => return Err(format!("`{s}`: unknown fault `{kind}` (KIND: {kinds})")),
    };
    if key.is_empty() {
        return Err(format!("`{s}`: the key is empty"));
    }
    Ok((key.to_owned(), fault))
}

pub fn parse_dialect(s: &str) -> Result<Dialect, String> {
    match s {
        "all" => Ok(Dialect::All),
        "x" => Ok(Dialect::X),
        "openai" => Ok(Dialect::Openai),
        "ietf" => Ok(Dialect::Ietf),
        _ => Err(format!("`{s}` is not a dialect: all, x, openai or ietf")),
    }
}

pub fn parse_cost_range(s: &str) -> Result<(u64, u64), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("`{s}` is not LO-HI, e.g. `1-5`"))?;
    match (lo.parse::<u64>(), hi.parse::<u64>()) {
        (Ok(lo), Ok(hi)) if lo <= hi => Ok((lo, hi)),
        _ => Err(format!(
            "`{s}`: LO and HI are counts of credits, LO at most HI"
        )),
    }
}

pub fn parse_quota(s: &str) -> Result<(u64, Duration), String> {
    let (calls, window) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not CALLS/WINDOW, e.g. `1000/1d`"))?;
    let calls = calls
        .parse::<u64>()
        .map_err(|_| format!("`{s}`: `{calls}` is not a count of calls"))?;
    let window = humantime::parse_duration(window)
        .ok()
        .filter(|w| !w.is_zero())
        .ok_or_else(|| format!("`{s}`: `{window}` is not a window, e.g. `1d` or `3s`"))?;
    Ok((calls, window))
}

pub fn parse_rate_change(s: &str) -> Result<(Duration, f64), String> {
    let (at, rate) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not AT=RATE, e.g. `5s=50`"))?;
    let at = humantime::parse_duration(at)
        .map_err(|e| format!("`{s}`: `{at}` is not a duration: {e}"))?;
    let rate = rate
        .parse::<f64>()
        .ok()
        .filter(|r| *r >= 0.0)
        .ok_or_else(|| format!("`{s}`: `{rate}` is not a rate"))?;
    Ok((at, rate))
}

const TITLES: [&str; 8] = [
    "Engineer",
    "Analyst",
    "Designer",
    "Manager",
    "Director",
    "Consultant",
    "Researcher",
    "Architect",
];
const COMPANIES: [&str; 8] = [
    "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Tyrell",
];

/// FNV-1a: a fixed hash, the same in every process (std's hasher is seeded per process).
fn fnv(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The vendor's answer for a key: the same JSON for the same key, in any process.
pub fn person(key: &str) -> serde_json::Value {
    let h = fnv(key);
    json!({
        "id": key,
        "title": TITLES[(h % 8) as usize],
        "company": COMPANIES[((h >> 8) % 8) as usize],
        "score": (h >> 16) % 1000,
    })
}

/// Counters since start, served at `GET /_sandbox/stats`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// Every call to /v1/people/…
    pub requests: u64,
    /// 200 answers with a person.
    pub ok: u64,
    /// 429 answers.
    pub throttled: u64,
    /// 503 answers (concurrency cap, outage, flaky keys).
    pub unavailable: u64,
    /// Answers from --error-rate (500, or --error-status).
    pub errors: u64,
    /// Scripted 4xx answers other than 429 and 402.
    pub client_errors: u64,
    /// 402 answers.
    pub payment_required: u64,
    /// Calls that arrived inside the outage window.
    pub during_outage: u64,
    /// The most calls being served at once.
    pub max_in_flight: u64,
    /// Calls that arrived in each whole second since start.
    pub per_second: Vec<u64>,
    /// 200 answers per key.
    pub per_key_ok: BTreeMap<String, u64>,
    /// 307 answers from redirect:URL faults.
    pub redirected: u64,
    /// Calls to the account endpoint, /v1/account (unbilled).
    pub account: u64,
    /// Calls answered 401 for a wrong or missing `--api-key` (unbilled).
    pub unauthorized: u64,
    /// Credits billed: each billed call's cost (`--cost-range`, else 1).
    pub credits_billed: u64,
    /// 202 "queued" answers of `--queued` (unbilled).
    pub queued: u64,
}

struct Vendor {
    opts: SandboxOptions,
    started: Instant,
    state: Mutex<Counters>,
    faults: HashMap<String, Fault>,
}

/// When calls arrived, from server start: for tests that check a pause held.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub arrivals: Vec<Duration>,
    /// The key of each arrival, in the same order.
    pub keys: Vec<String>,
    /// Arrivals answered 429.
    pub throttled: Vec<Duration>,
}

struct Counters {
    stats: Stats,
    timeline: Timeline,
    in_flight: u64,
    /// The token bucket of `--rate` and `--burst` at the rate in force.
    bucket: Option<Bucket>,
    /// `--quota`: each window now (its index from server start) and the calls
    /// it admitted, in the order of `quota`.
    quota_used: Vec<(u128, u64)>,
    credits: Option<u64>,
    /// Calls seen per faulty key, for flaky:N and throttle:N.
    fault_calls: HashMap<String, u32>,
    rng: u64,
    /// Every call's headers, with --record-headers.
    headers_seen: Vec<Vec<(String, String)>>,
    /// Every call's method, target and body, with --record-headers.
    requests_seen: Vec<Seen>,
    /// Calls seen per key, for --queued.
    queued_calls: HashMap<String, u32>,
}

/// `--rate` calls a second with bursts of `--burst`: governor's GCRA, which
/// admits what a token bucket of that size refilled at that rate admits, and
/// says what is left of the burst (for the rate headers) and when the next
/// call would be admitted (for `Retry-After`).
struct Bucket {
    rate: f64,
    limiter: RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>,
}

impl Bucket {
    fn new(rate: f64, burst: u32) -> Bucket {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate))
            .expect("a positive rate has a positive period")
            .allow_burst(burst);
        Bucket {
            rate,
            limiter: RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>(),
        }
    }
}

/// Decrements the in-flight count however the request ends, client disconnects included.
struct InFlight(Arc<Vendor>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.state.lock().expect("sandbox lock").in_flight -= 1;
    }
}

enum Verdict {
    Refuse(Response),
    Serve {
        fault: Option<Fault>,
        remaining: Option<u64>,
        quota: Option<(f64, u64)>,
        /// An --error-rate error, answered after the latency.
        error: Option<StatusCode>,
        /// What the call cost, to report in `X-Credits-Used` (`--cost-range`).
        cost: Option<u64>,
    },
}

impl Vendor {
    /// The rate in force: the latest `--rate-change` whose time has come.
    fn rate_at(&self, elapsed: Duration) -> f64 {
        self.opts
            .rate_changes
            .iter()
            .filter(|(at, _)| *at <= elapsed)
            .max_by_key(|(at, _)| *at)
            .map_or(self.opts.rate, |(_, rate)| *rate)
    }

    fn in_outage(&self, elapsed: Duration) -> bool {
        self.opts
            .outage_start
            .is_some_and(|s| elapsed >= s && elapsed < s + self.opts.outage)
    }

    /// `--api-key`: a call without it is answered 401 at once, before any other
    /// check, unbilled; it counts among the requests.
    /// `query_key`: the API key sent in `--key-param`'s query parameter.
    fn check_key(&self, headers: &HeaderMap, query_key: Option<&str>) -> Option<Response> {
        let want = self.opts.api_key.as_deref()?;
        let sent = match &self.opts.key_param {
            Some(_) => query_key,
            None => headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer ")),
        };
        if sent == Some(want) {
            return None;
        }
        let mut c = self.state.lock().expect("sandbox lock");
        c.stats.requests += 1;
        c.stats.unauthorized += 1;
        let message = match sent {
            Some(key) => format!("invalid API key '{key}'"),
            None => "missing API key".to_owned(),
        };
        Some(status(StatusCode::UNAUTHORIZED, &message))
    }

    /// Every check that can refuse a call, in the order a vendor applies them.
    fn admit(self: &Arc<Self>, key: &str) -> (Verdict, Option<InFlight>) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.started);
        let mut c = self.state.lock().expect("sandbox lock");
        c.stats.requests += 1;
        let second = elapsed.as_secs() as usize;
        if c.stats.per_second.len() <= second {
            c.stats.per_second.resize(second + 1, 0);
        }
        c.stats.per_second[second] += 1;
        if !self.opts.lean {
            c.timeline.arrivals.push(elapsed);
            c.timeline.keys.push(key.to_owned());
        }

        if self.in_outage(elapsed) {
            c.stats.during_outage += 1;
            c.stats.unavailable += 1;
            return (
                Verdict::Refuse(status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "down for maintenance",
                )),
                None,
            );
        }
        let cap = u64::from(self.opts.max_concurrency);
        if cap > 0 && c.in_flight >= cap {
            c.stats.unavailable += 1;
            return (
                Verdict::Refuse(status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many concurrent calls",
                )),
                None,
            );
        }

        if let Some(refused) = self.past_quota(&mut c, elapsed) {
            return (Verdict::Refuse(refused), None);
        }
        let quota = match self.take_token(&mut c, elapsed) {
            Ok(quota) => quota,
            Err(refused) => return (Verdict::Refuse(*refused), None),
        };

        if c.credits == Some(0) {
            c.stats.payment_required += 1;
            let body = json!({"type": "quota-exceeded", "title": "credits exhausted"});
            return (
                Verdict::Refuse((StatusCode::PAYMENT_REQUIRED, axum::Json(body)).into_response()),
                None,
            );
        }

        let fault = match self.scripted(&mut c, key, elapsed) {
            Ok(fault) => fault,
            Err(refused) => return (Verdict::Refuse(*refused), None),
        };
        if fault.is_none()
            && let Some(code) = self.random_error(&mut c)
        {
            c.stats.errors += 1;
            if self.opts.instant_errors {
                return (Verdict::Refuse(status(code, "internal error")), None);
            }
            // A backend that fails after doing the work: it holds a slot, and
            // is not billed.
            c.in_flight += 1;
            c.stats.max_in_flight = c.stats.max_in_flight.max(c.in_flight);
            drop(c);
            let verdict = Verdict::Serve {
                fault: None,
                remaining: None,
                quota: None,
                error: Some(code),
                cost: None,
            };
            return (verdict, Some(InFlight(self.clone())));
        }

        let (remaining, cost) = self.bill(&mut c, fault.as_ref(), key);
        c.in_flight += 1;
        c.stats.max_in_flight = c.stats.max_in_flight.max(c.in_flight);
        drop(c);
        (
            Verdict::Serve {
                fault,
                remaining,
                quota,
                error: None,
                cost: cost.filter(|_| self.opts.cost_range.is_some()),
            },
            Some(InFlight(self.clone())),
        )
    }

    /// Bills an accepted call (it will be served): the account's credits left
    /// after it (`--credits`), and its cost, if billed.
    fn bill(
        &self,
        c: &mut Counters,
        fault: Option<&Fault>,
        key: &str,
    ) -> (Option<u64>, Option<u64>) {
        let billed = !matches!(fault, Some(Fault::Flaky(_) | Fault::Status(400 | 422)));
        let cost = billed.then(|| self.cost_of(key));
        let mut remaining = None;
        if let Some(credits) = c.credits.as_mut().filter(|_| billed) {
            *credits = credits.saturating_sub(cost.unwrap_or(1));
            remaining = Some(*credits);
        }
        c.stats.credits_billed += cost.unwrap_or(0);
        (remaining, cost)
    }

    /// What a billed call for `key` costs: `--cost-range` by the key, else 1.
    fn cost_of(&self, key: &str) -> u64 {
        match self.opts.cost_range {
            Some((lo, hi)) => lo + fnv(key) % (hi.saturating_sub(lo) + 1),
            None => 1,
        }
    }

    /// `--quota`: the call counted in each window, or, past any window's
    /// calls, the 429 that says how long until the last full one ends.
    fn past_quota(&self, c: &mut Counters, elapsed: Duration) -> Option<Response> {
        let mut wait = None;
        for (&(calls, window), used) in self.opts.quota.iter().zip(c.quota_used.iter_mut()) {
            let index = elapsed.as_nanos() / window.as_nanos().max(1);
            if used.0 != index {
                *used = (index, 0);
            }
            if used.1 >= calls {
                let next = window.as_secs_f64() * (index + 1) as f64;
                let left = (next - elapsed.as_secs_f64()).ceil().max(1.0) as u64;
                wait = wait.max(Some(left));
            }
        }
        if let Some(wait) = wait {
            return Some(too_many(c, elapsed, "quota exceeded for this window", wait));
        }
        for used in &mut c.quota_used {
            used.1 += 1;
        }
        None
    }

    /// A token of the bucket (`--rate`, `--burst`), and the rate headers'
    /// quota if it sends them; or the 429 with its Retry-After.
    fn take_token(
        &self,
        c: &mut Counters,
        elapsed: Duration,
    ) -> Result<Option<(f64, u64)>, Box<Response>> {
        let rate = self.rate_at(elapsed);
        if rate <= 0.0 {
            return Ok(None);
        }
        let bucket = match c.bucket.take() {
            Some(b) if b.rate == rate => b,
            // A new rate (`--rate-change`) starts a bucket of its own, full.
            _ => Bucket::new(rate, self.opts.burst),
        };
        let taken = bucket.limiter.check();
        let bucket = c.bucket.insert(bucket);
        match taken {
            Ok(left) => Ok(self
                .opts
                .ratelimit_headers
                .then_some((rate, u64::from(left.remaining_burst_capacity())))),
            Err(not_until) => {
                let wait = not_until.wait_time_from(bucket.limiter.clock().now());
                let wait = wait.as_secs_f64().ceil().max(1.0) as u64;
                let mut r = too_many(c, elapsed, "rate limit exceeded", wait);
                if self.opts.ratelimit_headers {
                    rate_headers(r.headers_mut(), self.opts.ratelimit_dialect, rate, 0);
                }
                Err(Box::new(r))
            }
        }
    }

    /// The key's scripted fault (`--fault`) for this call: a throttle or a
    /// flaky answer for its first N calls, then none.
    fn scripted(
        &self,
        c: &mut Counters,
        key: &str,
        elapsed: Duration,
    ) -> Result<Option<Fault>, Box<Response>> {
        let fault = self.faults.get(key).cloned();
        let throttle = match &fault {
            Some(Fault::Flaky(n) | Fault::Throttle(n)) => *n,
            Some(Fault::ThrottleFor(_)) => 1,
            _ => return Ok(fault),
        };
        let seen = c.fault_calls.entry(key.to_owned()).or_default();
        *seen += 1;
        if *seen > throttle {
            return Ok(None);
        }
        let secs = match &fault {
            Some(Fault::Flaky(_)) => return Ok(fault),
            Some(Fault::ThrottleFor(d)) => d.as_secs() + u64::from(d.subsec_nanos() > 0),
            _ => 1,
        };
        Err(Box::new(too_many(c, elapsed, "rate limit exceeded", secs)))
    }

    /// `--error-rate`'s draw: the status to fail this call with, if it fails.
    fn random_error(&self, c: &mut Counters) -> Option<StatusCode> {
        if self.opts.error_rate <= 0.0 {
            return None;
        }
        // xorshift64*: a few lines, seeded, the same sequence every run.
        c.rng ^= c.rng >> 12;
        c.rng ^= c.rng << 25;
        c.rng ^= c.rng >> 27;
        let draw = (c.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
        (draw < self.opts.error_rate).then(|| {
            StatusCode::from_u16(self.opts.error_status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        })
    }

    fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.state.lock().expect("sandbox lock").stats);
    }
}

/// A 429 with `Retry-After: wait` (seconds), counted among the throttles.
fn too_many(c: &mut Counters, elapsed: Duration, message: &str, wait: u64) -> Response {
    c.stats.throttled += 1;
    c.timeline.throttled.push(elapsed);
    let mut r = status(StatusCode::TOO_MANY_REQUESTS, message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    r
}

fn status(code: StatusCode, message: &str) -> Response {
    (code, axum::Json(json!({"error": message}))).into_response()
}

/// The rate-limit headers of a one-second window of `rate` calls, `remaining`
/// left, in `dialect`'s spelling.
fn rate_headers(h: &mut HeaderMap, dialect: Dialect, rate: f64, remaining: u64) {
    let limit = rate.round() as u64;
    let mut put = |name: &'static str, value: String| {
        h.insert(name, HeaderValue::from_str(&value).expect("ascii"));
    };
    match dialect {
        Dialect::All | Dialect::X => {
            put("x-ratelimit-limit", limit.to_string());
            put("x-ratelimit-remaining", remaining.to_string());
            put("x-ratelimit-reset", "1".into());
        }
        Dialect::Openai => {
            put("x-ratelimit-limit-requests", limit.to_string());
            put("x-ratelimit-remaining-requests", remaining.to_string());
            put("x-ratelimit-reset-requests", "1s".into());
        }
        Dialect::Ietf => {
            put("ratelimit-policy", format!("\"default\";q={limit};w=1"));
            put("ratelimit", format!("\"default\";r={remaining};t=1"));
        }
    }
    if dialect == Dialect::All {
        put(
            "ratelimit",
            format!("limit={limit}, remaining={remaining}, reset=1"),
        );
        put("ratelimit-policy", format!("{limit};w=1"));
    }
}

/// Serves one call to its end (see `requests::spawn`).
async fn serve_call(vendor: Arc<Vendor>, asked: requests::Asked, headers: HeaderMap) -> Response {
    let key = asked.key;
    if vendor.opts.record_headers {
        let seen = headers
            .iter()
            .map(|(n, v)| {
                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (n.as_str().to_owned(), value)
            })
            .collect();
        let mut c = vendor.state.lock().expect("sandbox lock");
        c.headers_seen.push(seen);
    }
    if let Some(refused) = vendor.check_key(&headers, asked.query_key.as_deref()) {
        return refused;
    }
    let (verdict, in_flight) = vendor.admit(&key);
    let (fault, remaining, quota, error, cost) = match verdict {
        Verdict::Refuse(response) => return response,
        Verdict::Serve {
            fault,
            remaining,
            quota,
            error,
            cost,
        } => (fault, remaining, quota, error, cost),
    };
    let mut delay = vendor.opts.latency;
    if let Some(Fault::Slow(extra)) = fault {
        delay += extra;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(code) = error {
        drop(in_flight);
        return status(code, "internal error");
    }
    let mut response = respond(&vendor, fault, &key, cost);
    if let Some(n) = remaining {
        response
            .headers_mut()
            .insert("x-credits-remaining", HeaderValue::from(n));
    }
    if let Some((rate, left)) = quota {
        rate_headers(
            response.headers_mut(),
            vendor.opts.ratelimit_dialect,
            rate,
            left,
        );
    }
    if let Some(n) = cost {
        response
            .headers_mut()
            .insert("x-credits-used", HeaderValue::from(n));
    }
    drop(in_flight);
    response
}

/// The answer to a call admitted with `fault` (none: the person), counted.
/// The answer for `key`; a person's carries `credits_consumed` when the call
/// has a `cost` to report (`--cost-range`).
fn respond(vendor: &Vendor, fault: Option<Fault>, key: &str, cost: Option<u64>) -> Response {
    match fault {
        Some(Fault::Status(code)) => {
            vendor.count(|s| s.client_errors += 1);
            status(
                StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
                "scripted fault",
            )
        }
        Some(Fault::Flaky(_)) => {
            vendor.count(|s| s.unavailable += 1);
            status(StatusCode::SERVICE_UNAVAILABLE, "flaky")
        }
        Some(Fault::Malformed) => {
            vendor.count(|s| s.ok += 1);
            (
                [(header::CONTENT_TYPE, "text/html")],
                "<html>not json</html>",
            )
                .into_response()
        }
        Some(Fault::Oversized) => {
            vendor.count(|s| s.ok += 1);
            let mut body = person(key);
            body["padding"] = json!("x".repeat(3 << 20));
            axum::Json(body).into_response()
        }
        Some(Fault::WrongType) => {
            vendor.count(|s| s.ok += 1);
            let mut body = person(key);
            body["score"] = json!("high");
            axum::Json(body).into_response()
        }
        Some(Fault::QuotaExceeded) => {
            vendor.count(|s| s.client_errors += 1);
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::CONTENT_TYPE, "application/problem+json")],
                json!({
                    "type": "https://vendor.example/problems/quota-exceeded",
                    "title": "monthly quota exceeded"
                })
                .to_string(),
            )
                .into_response()
        }
        Some(Fault::Redirect(url)) => {
            vendor.count(|s| s.redirected += 1);
            let to = url.replace("{key}", key);
            match HeaderValue::from_str(&to) {
                Ok(to) => {
                    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response()
                }
                Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR, "bad redirect URL"),
            }
        }
        Some(Fault::Throttle(_) | Fault::ThrottleFor(_) | Fault::Slow(_)) | None => {
            let mut answered = 0;
            vendor.count(|s| {
                answered = s.ok;
                s.ok += 1;
                if !vendor.opts.lean {
                    *s.per_key_ok.entry(key.to_owned()).or_default() += 1;
                }
            });
            let mut body = person(key);
            if let Some(n) = cost {
                body["credits_consumed"] = json!(n);
            }
            if vendor
                .opts
                .schema_change_after
                .is_some_and(|n| answered >= n)
                && let Some(title) = body.as_object_mut().and_then(|o| o.remove("title"))
            {
                body["job_title"] = title;
            }
            axum::Json(body).into_response()
        }
    }
}

/// The account endpoint: the credits left, as `{"credits": {"remaining": N}}`
/// (404 without `--credits`). Unbilled, like a real vendor's.
async fn account(State(vendor): State<Arc<Vendor>>) -> Response {
    let mut c = vendor.state.lock().expect("sandbox lock");
    c.stats.account += 1;
    match c.credits {
        Some(n) => axum::Json(json!({"credits": {"remaining": n}})).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "no credit account (start with --credits)",
        ),
    }
}

async fn stats(State(vendor): State<Arc<Vendor>>) -> axum::Json<Stats> {
    axum::Json(vendor.state.lock().expect("sandbox lock").stats.clone())
}

/// A running sandbox. Stops when [`Sandbox::stop`] is called or it is dropped.
pub struct Sandbox {
    addr: SocketAddr,
    vendor: Arc<Vendor>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Sandbox {
    /// Binds `opts.listen` and serves in a background task.
    pub async fn start(opts: SandboxOptions) -> anyhow::Result<Sandbox> {
        let listener = tokio::net::TcpListener::bind(opts.listen).await.with_context(|| {
            format!("cannot listen on {}: is another sandbox running? pick another address with --listen", opts.listen)
        })?;
        Sandbox::start_on(listener, opts)
    }

    /// Serves on a listener of the caller's (a TLS one, say; `opts.listen` is
    /// ignored) in a background task.
    pub fn start_on<L>(listener: L, opts: SandboxOptions) -> anyhow::Result<Sandbox>
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
    {
        let addr = listener.local_addr()?;
        let now = Instant::now();
        let vendor = Arc::new(Vendor {
            faults: opts.faults.iter().cloned().collect(),
            started: now,
            state: Mutex::new(Counters {
                stats: Stats::default(),
                timeline: Timeline::default(),
                in_flight: 0,
                bucket: None,
                quota_used: vec![(0, 0); opts.quota.len()],
                credits: opts.credits,
                fault_calls: HashMap::new(),
                rng: opts.seed.max(1),
                headers_seen: Vec::new(),
                requests_seen: Vec::new(),
                queued_calls: HashMap::new(),
            }),
            opts,
        });
        let app = Router::new()
            .route(
                "/v1/people/{key}",
                get(requests::by_path).post(requests::by_path),
            )
            .route(
                "/v1/people",
                post(requests::by_body)
                    .put(requests::by_body)
                    .patch(requests::by_body),
            )
            .route("/v1/lookup", get(requests::by_query))
            .route("/_sandbox/stats", get(stats))
            .route("/v1/account", get(account))
            .with_state(vendor.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = served.await {
                tracing::error!("sandbox server failed: {e}");
            }
        });
        Ok(Sandbox {
            addr,
            vendor,
            shutdown,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Stats {
        self.vendor
            .state
            .lock()
            .expect("sandbox lock")
            .stats
            .clone()
    }

    /// The headers of every call so far, in arrival order (with `record_headers`).
    pub fn headers_seen(&self) -> Vec<Vec<(String, String)>> {
        self.vendor
            .state
            .lock()
            .expect("sandbox lock")
            .headers_seen
            .clone()
    }

    /// Every call's method, target and body so far, in arrival order (with
    /// `record_headers`).
    pub fn requests_seen(&self) -> Vec<Seen> {
        self.vendor
            .state
            .lock()
            .expect("sandbox lock")
            .requests_seen
            .clone()
    }

    pub fn timeline(&self) -> Timeline {
        self.vendor
            .state
            .lock()
            .expect("sandbox lock")
            .timeline
            .clone()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        // Connections kept alive by a client would hold a graceful shutdown open:
        // give them a moment, then let the task go.
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `freshen sandbox`: serve until `shutdown`, then print the counters as one JSON
/// line. It listens on loopback only unless `allow_remote` (`--allow-remote`): a
/// simulated vendor, which checks no credentials, open to the network would be a
/// surprise.
pub async fn serve(
    opts: SandboxOptions,
    allow_remote: bool,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if !opts.listen.ip().is_loopback() {
        if !allow_remote {
            return Err(crate::error::usage(format!(
                "--listen {}: the sandbox listens on loopback only (127.0.0.1, ::1), for it \
                 checks no credentials; pass --allow-remote as well to open it to the network",
                opts.listen
            )));
        }
        eprintln!(
            "warning: the sandbox listens on {}, open to whoever reaches it (--allow-remote)",
            opts.listen
        );
    }
    let sandbox = Sandbox::start(opts).await?;
    println!("sandbox listening on {}", sandbox.base_url());
    shutdown.await;
    let stats = sandbox.stats();
    sandbox.stop().await;
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start(opts: SandboxOptions) -> Sandbox {
        Sandbox::start(SandboxOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..opts
        })
        .await
        .unwrap()
    }

    async fn get(s: &Sandbox, key: &str) -> reqwest::Response {
        reqwest::get(format!("{}/v1/people/{key}", s.base_url()))
            .await
            .unwrap()
    }

    #[test]
    fn people_are_the_same_in_every_process() {
        assert_eq!(person("42"), person("42"));
        assert_ne!(person("42"), person("43"));
        let p = person("7");
        assert_eq!(p["id"], "7");
        assert!(p["title"].is_string() && p["company"].is_string());
        assert!(p["score"].as_u64().unwrap() < 1000);
    }

    #[tokio::test]
    async fn serves_people_and_counts_them() {
        let s = start(SandboxOptions::default()).await;
        let body: serde_json::Value = get(&s, "12").await.json().await.unwrap();
        assert_eq!(body, person("12"));
        let stats = s.stats();
        assert_eq!(
            (stats.requests, stats.ok, stats.per_key_ok["12"]),
            (1, 1, 1)
        );
        s.stop().await;
    }

    #[tokio::test]
    async fn a_call_whose_client_goes_away_is_still_served_and_billed() {
        let s = start(SandboxOptions {
            latency: Duration::from_millis(300),
            ..SandboxOptions::default()
        })
        .await;
        let url = format!("{}/v1/people/5", s.base_url());
        // The client gives up (as a killed process does) before the answer.
        let client = reqwest::Client::new();
        let gone = client
            .get(&url)
            .timeout(Duration::from_millis(50))
            .send()
            .await;
        assert!(gone.is_err(), "the client timed out");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!((s.stats().requests, s.stats().ok), (1, 1));
        s.stop().await;
    }

    #[tokio::test]
    async fn over_the_burst_is_429_with_retry_after() {
        let s = start(SandboxOptions {
            rate: 1.0,
            burst: 2,
            ratelimit_headers: true,
            ..SandboxOptions::default()
        })
        .await;
        let first = get(&s, "1").await;
        assert_eq!(first.headers()["x-ratelimit-remaining"], "1");
        let second = get(&s, "2").await;
        assert_eq!(second.headers()["ratelimit-policy"], "1;w=1");
        assert_eq!(second.headers()["x-ratelimit-remaining"], "0");
        let third = get(&s, "3").await;
        assert_eq!(third.status(), 429);
        assert_eq!(third.headers()["retry-after"], "1");
        assert_eq!(third.headers()["x-ratelimit-remaining"], "0");
        assert_eq!(s.stats().throttled, 1);
    }

    #[tokio::test]
    async fn retry_after_is_when_the_bucket_next_has_a_token() {
        // One call each 4 s: the refused call is told to come back in 4 s.
        let s = start(SandboxOptions {
            rate: 0.25,
            burst: 1,
            ..SandboxOptions::default()
        })
        .await;
        assert_eq!(get(&s, "1").await.status(), 200);
        let refused = get(&s, "2").await;
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.headers()["retry-after"], "4");
    }

    #[tokio::test]
    async fn every_quota_must_pass_and_the_wait_is_the_longest() {
        // 3 a minute and 5 an hour: the minute's fourth call is refused until
        // the minute ends; the hour's limit is not reached.
        let s = start(SandboxOptions {
            quota: vec![(3, Duration::from_secs(60)), (5, Duration::from_secs(3600))],
            ..SandboxOptions::default()
        })
        .await;
        for _ in 0..3 {
            assert_eq!(get(&s, "1").await.status(), 200);
        }
        let refused = get(&s, "1").await;
        assert_eq!(refused.status(), 429);
        let wait: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((58..=60).contains(&wait), "{wait}");
        assert_eq!((s.stats().ok, s.stats().throttled), (3, 1));
        s.stop().await;
    }

    #[tokio::test]
    async fn each_dialect_says_the_limit_its_own_way() {
        let headers = |dialect| async move {
            let s = start(SandboxOptions {
                rate: 10.0,
                burst: 5,
                ratelimit_headers: true,
                ratelimit_dialect: dialect,
                ..SandboxOptions::default()
            })
            .await;
            let r = get(&s, "1").await;
            let mut names: Vec<(String, String)> = r
                .headers()
                .iter()
                .filter(|(n, _)| n.as_str().contains("ratelimit"))
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
                .collect();
            names.sort();
            s.stop().await;
            names
        };
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            headers(Dialect::X).await,
            pairs(&[
                ("x-ratelimit-limit", "10"),
                ("x-ratelimit-remaining", "4"),
                ("x-ratelimit-reset", "1")
            ])
        );
        assert_eq!(
            headers(Dialect::Openai).await,
            pairs(&[
                ("x-ratelimit-limit-requests", "10"),
                ("x-ratelimit-remaining-requests", "4"),
                ("x-ratelimit-reset-requests", "1s")
            ])
        );
        assert_eq!(
            headers(Dialect::Ietf).await,
            pairs(&[
                ("ratelimit", "\"default\";r=4;t=1"),
                ("ratelimit-policy", "\"default\";q=10;w=1")
            ])
        );
        assert_eq!(headers(Dialect::All).await.len(), 5);
    }

    #[tokio::test]
    async fn over_the_concurrency_cap_is_503() {
        let s = start(SandboxOptions {
            max_concurrency: 1,
            latency: Duration::from_millis(300),
            ..SandboxOptions::default()
        })
        .await;
        let url = s.base_url();
        let slow = tokio::spawn(async move {
            reqwest::get(format!("{url}/v1/people/1"))
                .await
                .unwrap()
                .status()
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused = get(&s, "2").await;
        assert_eq!(refused.status(), 503);
        assert!(refused.headers().get("retry-after").is_none());
        assert_eq!(slow.await.unwrap(), 200);
        assert_eq!(s.stats().max_in_flight, 1);
    }

    #[tokio::test]
    async fn credits_run_out_with_402() {
        let s = start(SandboxOptions {
            credits: Some(2),
            ..SandboxOptions::default()
        })
        .await;
        assert_eq!(get(&s, "1").await.headers()["x-credits-remaining"], "1");
        assert_eq!(get(&s, "2").await.status(), 200);
        let spent = get(&s, "3").await;
        assert_eq!(spent.status(), 402);
        let body: serde_json::Value = spent.json().await.unwrap();
        assert_eq!(body["type"], "quota-exceeded");
    }

    #[tokio::test]
    async fn scripted_faults() {
        let faults = [
            "5=404",
            "6=malformed",
            "7=flaky:2",
            "8=throttle:1",
            "9=wrong-type",
        ];
        let s = start(SandboxOptions {
            faults: faults.iter().map(|f| parse_fault(f).unwrap()).collect(),
            ..SandboxOptions::default()
        })
        .await;
        assert_eq!(get(&s, "5").await.status(), 404);
        assert!(
            get(&s, "6")
                .await
                .text()
                .await
                .unwrap()
                .starts_with("<html>")
        );
        let flaky: Vec<u16> = futures_util::future::join_all((0..3).map(|_| get(&s, "7")))
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect();
        let mut sorted = flaky.clone();
        sorted.sort();
        assert_eq!(sorted, [200, 503, 503]);
        assert_eq!(get(&s, "8").await.status(), 429);
        assert_eq!(get(&s, "8").await.status(), 200);
        let wrong: serde_json::Value = get(&s, "9").await.json().await.unwrap();
        assert_eq!(wrong["score"], "high");
    }

    #[tokio::test]
    async fn an_outage_window_refuses_everything() {
        let s = start(SandboxOptions {
            outage_start: Some(Duration::ZERO),
            outage: Duration::from_secs(60),
            ..SandboxOptions::default()
        })
        .await;
        assert_eq!(get(&s, "1").await.status(), 503);
        assert_eq!(s.stats().during_outage, 1);
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        assert!(parse_fault("5").unwrap_err().contains("KEY=KIND"));
        assert!(
            parse_fault("5=teapot")
                .unwrap_err()
                .contains("unknown fault `teapot`")
        );
        assert!(
            parse_fault("5=flaky:x")
                .unwrap_err()
                .contains("`x` is not a count")
        );
        assert_eq!(
            parse_fault("5=slow:2s").unwrap(),
            ("5".into(), Fault::Slow(Duration::from_secs(2)))
        );
        assert_eq!(
            parse_rate_change("5s=50").unwrap(),
            (Duration::from_secs(5), 50.0)
        );
        assert!(parse_rate_change("soon=50").is_err());
    }
}
