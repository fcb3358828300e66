//! The command line: clap derive only. The doc comments here are the `--help` text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::sandbox::{self, Fault, SandboxOptions};
use crate::selection::{IdSpec, StaleBefore};

/// The exit codes, for `--help` (the README's table says what to do about each).
const EXIT_CODES: &str = "Exit codes:
  0    complete (every selected record refreshed or failed permanently)
  1    an error freshen could not work around (database unreachable, ...)
  2    configuration or usage error (the message names the key or flag)
  3    stopped at the credit budget, or the vendor is out of credits
  4    the vendor was down past retry.max_outage, or unreachable (api.base_url)
  5    another run of the same table holds the lock
  6    the vendor refused the key (401, 403), or most answers failed: fix the config
  130  interrupted (SIGINT/SIGTERM) after checkpointing";

/// Refresh database records against a rate-limited, credit-metered API:
/// as fast as the vendor allows, never past the credit budget, resumable after any crash.
#[derive(Debug, Parser)]
#[command(name = "freshen", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// The configuration file
    #[arg(
        long,
        short,
        global = true,
        default_value = "config.toml",
        env = "FRESHEN_CONFIG"
    )]
    pub config: PathBuf,

    /// Overrides `database.url` from the configuration file
    #[arg(
        long,
        global = true,
        env = "FRESHEN_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// Log filter (tracing's EnvFilter syntax), e.g. `debug` or `freshen=trace`
    #[arg(long, global = true, env = "FRESHEN_LOG", default_value = "info")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Plan a run (or resume the unfinished one with the same selection) and execute it
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// The current or last run and this period's credits, read from the database
    Status(StatusArgs),
    /// What a run with these flags would select, cost and take, and where the
    /// budget would cut it; makes no billed call (with credits.remaining_url, one
    /// unbilled call to the account endpoint, unless --offline)
    Estimate(EstimateArgs),
    /// Serve a simulated vendor API, on loopback unless --allow-remote; it reads no
    /// configuration file: these flags are all it takes
    Sandbox(SandboxArgs),
    /// The whole job on the embedded default: sample SQLite database, in-process sandbox, `run`
    #[command(after_help = EXIT_CODES)]
    Demo(DemoArgs),
    /// What happened in a run: one self-contained HTML page (summary, rate, throttles and
    /// outages over time, concurrency, credits, failures by reason), or JSON
    Report(ReportArgs),
    /// Remove what freshen's own tables no longer need: samples older than
    /// `--older-than`, and the items of runs finished before then (the runs and
    /// their counts stay)
    Prune(PruneArgs),
}

impl Cli {
    /// The process's command line, parsed, with a warning for a flag that
    /// `freshen sandbox` would otherwise ignore in silence.
    pub fn from_args() -> Cli {
        let matches = Cli::command().get_matches();
        if let Some(("sandbox", sandbox)) = matches.subcommand() {
            for (id, flag) in [("config", "--config"), ("database_url", "--database-url")] {
                if sandbox.value_source(id) == Some(ValueSource::CommandLine) {
                    eprintln!(
                        "warning: `freshen sandbox` reads no configuration: {flag} is ignored \
                         (the sandbox's own flags are all it takes)"
                    );
                }
            }
        }
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// `freshen sandbox`: the simulated vendor's flags, turned into its
/// [`SandboxOptions`] by [`SandboxArgs::options`].
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Address to listen on (port 0 picks a free port); loopback (127.0.0.0/8,
    /// ::1) unless --allow-remote
    #[arg(long, default_value = "127.0.0.1:8077")]
    pub listen: SocketAddr,
    /// Calls per second accepted (token bucket); over it the answer is 429 with Retry-After. 0 = unlimited
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Token-bucket size for --rate: calls accepted at once after a quiet spell
    #[arg(long, default_value_t = 10)]
    pub burst: u32,
    /// Change the rate mid-run: AT=RATE, e.g. `5s=50` (repeatable)
    #[arg(long = "rate-change", value_name = "AT=RATE", value_parser = sandbox::parse_rate_change)]
    pub rate_changes: Vec<(Duration, f64)>,
    /// Calls served at once; beyond it the answer is 503 without Retry-After or rate headers. 0 = unlimited
    #[arg(long, default_value_t = 0)]
    pub max_concurrency: u32,
    /// Latency of every accepted call, e.g. `50ms` (refusals are immediate)
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Share of calls (0..1) answered with --error-status, chosen by a seeded
    /// generator; they come after --latency, as a failing backend's do, unless
    /// --instant-errors
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// The status of --error-rate's errors: 500, or 503 (without Retry-After, as a
    /// load balancer answers when a backend is unhealthy)
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(500..600))]
    pub error_status: u16,
    /// Answer --error-rate's errors at once, before the latency, as a load balancer
    /// does
    #[arg(long)]
    pub instant_errors: bool,
    /// Start of an outage, from server start: every call answered 503 during it
    #[arg(long, value_parser = humantime::parse_duration)]
    pub outage_start: Option<Duration>,
    /// Length of the outage
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub outage: Duration,
    /// Credits the account holds; each billed answer (2xx, 404) costs one; when spent: 402. Unset = unlimited
    #[arg(long)]
    pub credits: Option<u64>,
    /// Send rate-limit headers with --rate, in --ratelimit-dialect's spelling
    #[arg(long)]
    pub ratelimit_headers: bool,
    /// Which rate-limit headers --ratelimit-headers sends: `all` (X-RateLimit-*
    /// and the older IETF draft's `RateLimit: limit=, remaining=, reset=` and
    /// `RateLimit-Policy: N;w=1`), `x` (X-RateLimit-Limit/-Remaining/-Reset),
    /// `openai` (X-RateLimit-*-Requests, the reset a duration such as `1s`) or
    /// `ietf` (the current draft's `RateLimit-Policy: "default";q=N;w=1` and
    /// `RateLimit: "default";r=LEFT;t=1`)
    #[arg(long, default_value = "all", value_name = "DIALECT", value_parser = sandbox::parse_dialect)]
    pub ratelimit_dialect: sandbox::Dialect,
    /// Scripted answer for one key: KEY=KIND, KIND one of 404, 400, 422, malformed,
    /// oversized, wrong-type, flaky:N, throttle:N, throttle-for:DURATION, slow:DURATION, redirect:URL (repeatable)
    #[arg(long = "fault", value_name = "KEY=KIND", value_parser = sandbox::parse_fault)]
    pub faults: Vec<(String, Fault)>,
    /// A quota of CALLS per WINDOW, e.g. `1000/1d` or `100/3s`: fixed windows from
    /// server start; past it every call is answered 429 with a Retry-After of
    /// the time left in the window (a daily or monthly plan's quota).
    /// Repeatable: every call must pass each (`--quota 15/1s --quota 500/1m`
    /// plays Hunter's two windows)
    #[arg(long, value_name = "CALLS/WINDOW", value_parser = sandbox::parse_quota)]
    pub quota: Vec<(u64, Duration)>,
    /// After this many answers of a person, the vendor changes its schema: `title`
    /// is renamed `job_title` in every answer from then on (still 200, still billed)
    #[arg(long, value_name = "ANSWERS")]
    pub schema_change_after: Option<u64>,
    /// Each billed call costs LO to HI credits (fixed by its key), reported in an
    /// `X-Credits-Used` header and a person's `credits_consumed`, and taken from
    /// --credits; without it, one credit
    #[arg(long, value_name = "LO-HI", value_parser = sandbox::parse_cost_range)]
    pub cost_range: Option<(u64, u64)>,
    /// The API key the vendor accepts, as `Authorization: Bearer KEY`; any other
    /// call is answered 401 (unbilled), its message repeating the key it was
    /// sent, as some vendors' do. Unset = no key checked
    #[arg(long)]
    pub api_key: Option<String>,
    /// With --api-key: the key is expected in this query parameter
    /// (`?api_key=KEY`, as Hunter and Google's APIs take it) instead of
    /// `Authorization`
    #[arg(long, value_name = "NAME", requires = "api_key")]
    pub key_param: Option<String>,
    /// The status of a refusal for the rate or a quota: 429, or 403 with a
    /// body `{"errors": [{"id": "too_many_requests"}]}`, as Hunter answers it
    #[arg(long, default_value_t = 429, value_parser = clap::builder::TypedValueParser::map(clap::builder::PossibleValuesParser::new(["429", "403"]), |s| s.parse::<u16>().expect("a listed status")))]
    pub throttle_status: u16,
    /// The status of "out of credits": 402, or 429 with a body
    /// `{"errors": [{"id": "usage_exceeded"}]}`, as Hunter answers it
    #[arg(long, default_value_t = 402, value_parser = clap::builder::TypedValueParser::map(clap::builder::PossibleValuesParser::new(["402", "429"]), |s| s.parse::<u16>().expect("a listed status")))]
    pub no_credits_status: u16,
    /// The first N calls of each key are answered 202 `{"status": "queued"}`
    /// (unbilled), as Clearbit answers a lookup it has not finished
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub queued: u32,
    /// Seed of the generator behind --error-rate
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the headers of every call, for tests that check what a client sent
    #[arg(long)]
    pub record_headers: bool,
    /// Keep no per-call record (the arrival timeline and the 200s per key), so
    /// memory stays flat over millions of calls: for benchmarks
    #[arg(long)]
    pub lean: bool,

    /// Listen on an address that is not loopback (`0.0.0.0:8077`, a LAN address):
    /// the simulated vendor, which checks no credentials, is then open to
    /// whoever reaches that address
    #[arg(long)]
    pub allow_remote: bool,

    /// A real vendor's contract, as a preset of the flags above (it sets its
    /// own, the others still apply):
    ///   query-key    the key in the query string (Hunter, Google): --api-key
    ///                sandbox-key --key-param api_key; GET /v1/lookup?id=KEY&api_key=…
    ///   post-body    POST with a JSON body, each call's cost reported (People
    ///                Data Labs, Apollo): --cost-range 1-5; POST /v1/people {"id": KEY}
    ///   hunter       Hunter: query-key and two-windows, 403 for its rate limit
    ///                and 429 for credits exhausted (--throttle-status 403
    ///                --no-credits-status 429)
    ///   daily-quota  a daily quota: --quota 1000/1d
    ///   two-windows  two windows, as Hunter's: --quota 15/1s --quota 500/1m
    ///   openai       OpenAI-style headers: --rate 50 --burst 50
    ///                --ratelimit-headers --ratelimit-dialect openai
    ///   queued       a lookup queued before it is answered (Clearbit): --queued 2
    #[arg(long, value_name = "NAME", value_parser = sandbox::parse_profile, verbatim_doc_comment)]
    pub profile: Option<sandbox::Profile>,

    /// The global --config, which the sandbox ignores: declared here, hidden, so
    /// that `freshen sandbox --help` does not offer it.
    #[arg(long, short, hide = true)]
    pub config: Option<PathBuf>,

    /// The global --database-url, ignored and hidden likewise.
    #[arg(long, hide = true)]
    pub database_url: Option<String>,
}

impl SandboxArgs {
    /// The options the flags describe.
    pub fn options(self) -> SandboxOptions {
        let profile = self.profile;
        let mut options = SandboxOptions {
            listen: self.listen,
            rate: self.rate,
            burst: self.burst,
            rate_changes: self.rate_changes,
            max_concurrency: self.max_concurrency,
            latency: self.latency,
            error_rate: self.error_rate,
            error_status: self.error_status,
            instant_errors: self.instant_errors,
            outage_start: self.outage_start,
            outage: self.outage,
            credits: self.credits,
            ratelimit_headers: self.ratelimit_headers,
            ratelimit_dialect: self.ratelimit_dialect,
            faults: self.faults,
            quota: self.quota,
            schema_change_after: self.schema_change_after,
            cost_range: self.cost_range,
            api_key: self.api_key,
            key_param: self.key_param,
            throttle_status: self.throttle_status,
            no_credits_status: self.no_credits_status,
            queued: self.queued,
            seed: self.seed,
            record_headers: self.record_headers,
            lean: self.lean,
        };
        if let Some(p) = profile {
            p.apply(&mut options);
        }
        options
    }
}

/// Which records a run covers. Without any flag: every record of `source.table`
/// that passes `source.filter`.
#[derive(Debug, Clone, Default, Args)]
pub struct SelectionArgs {
    /// Keys to refresh: `7`, `abc`, or an inclusive integer range `100..200`; repeatable
    #[arg(long = "ids", value_name = "KEYS", value_parser = IdSpec::parse)]
    pub ids: Vec<IdSpec>,

    /// Only records never refreshed or refreshed before this date (`2026-10-01`) or time (RFC 3339)
    #[arg(long, value_name = "DATE", value_parser = StaleBefore::parse)]
    pub stale_before: Option<StaleBefore>,

    /// At most this many records, stalest first
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = whole_number)]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub selection: SelectionArgs,

    /// Start a new run even if an unfinished run with the same selection exists
    #[arg(long, conflicts_with = "join")]
    pub new: bool,

    /// Work the run of this selection together with other `run --join` processes,
    /// on this host or others (PostgreSQL): the first plans it, each claims small
    /// batches of records, and all share limits.rate and the credits
    #[arg(long)]
    pub join: bool,

    /// Write the final summary as JSON to this file
    #[arg(long, value_name = "PATH")]
    pub summary_json: Option<PathBuf>,

    /// Spend at most N credits on this run, over all its resumes (exit 3 when reached)
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = credits)]
    pub max_credits: Option<i64>,

    /// Keep this file in Prometheus' text format (node_exporter's textfile collector):
    /// records, calls, credits, the last run's exit code and end time; rewritten
    /// whole every 5 s and at exit
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,

    /// How often --metrics-file is rewritten while the run works (tests use it)
    #[arg(long, hide = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub metrics_every: Option<std::time::Duration>,

    /// The end-of-month run: refresh the stalest selected records that this
    /// period's remaining credits (less credits.reserve) pay for. Resumes its own
    /// unfinished run; once that is complete, the next one plans afresh
    #[arg(long)]
    pub spend_remaining: bool,

    /// Spread the calls so the run ends at this time instead of as soon as it can:
    /// RFC 3339 (`2026-11-30T22:00:00Z`), or a local `2026-11-30 22:00` or
    /// `2026-11-30` in credits.timezone
    #[arg(long, value_name = "DATETIME", conflicts_with = "join")]
    pub pace_until: Option<String>,

    /// Refuse to plan when records of the selection have a NULL key or share a
    /// key with another record (without it they are skipped, with a warning)
    #[arg(long)]
    pub strict: bool,

    /// The run is `freshen demo`'s: what resumes it is `freshen demo`, and the
    /// messages say so.
    #[arg(skip)]
    pub demo: bool,
}

#[derive(Debug, Clone, Default, Args)]
pub struct EstimateArgs {
    #[command(flatten)]
    pub selection: SelectionArgs,

    /// As `run --max-credits`: the run may spend at most N credits
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = credits)]
    pub max_credits: Option<i64>,

    /// Print the estimate as JSON
    #[arg(long)]
    pub json: bool,

    /// Do not ask the vendor's account endpoint (credits.remaining_url)
    #[arg(long)]
    pub offline: bool,

    /// As `run --strict`: fail when records of the selection have a NULL key or share a
    /// key with another record (without it they are skipped, with a warning)
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// The retention: what is older than this goes (e.g. `30d`, `12h`)
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub older_than: std::time::Duration,

    /// Count what would go, and remove nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Print what was removed as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Default, Args)]
pub struct StatusArgs {
    /// Print the status as JSON
    #[arg(long)]
    pub json: bool,

    /// Do not ask the vendor's account endpoint (credits.remaining_url)
    #[arg(long)]
    pub offline: bool,
}

#[derive(Debug, Clone, Default, Args)]
pub struct DemoArgs {
    /// Start a fresh run over the sample records even if the last demo run is complete
    #[arg(long)]
    pub new: bool,

    /// Where the simulated vendor listens (default: the host and port of
    /// api.base_url); the run calls it there
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// How many sample records to create when the demo database does not exist yet
    #[arg(long, default_value_t = 3000)]
    pub records: u64,

    /// Write the final summary as JSON to this file
    #[arg(long, value_name = "PATH")]
    pub summary_json: Option<PathBuf>,

    /// As `run --metrics-file`: keep this file in Prometheus' text format
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,

    /// The simulated vendor's real rate limit, calls/s (default: limits.rate); set it
    /// under limits.rate to watch freshen learn it from 429s
    #[arg(long, value_name = "N")]
    pub vendor_rate: Option<f64>,

    /// Take the simulated vendor down this long after it starts, e.g. `6s`
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "outage")]
    pub outage_at: Option<std::time::Duration>,

    /// How long the simulated vendor stays down, e.g. `3s`
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "outage_at")]
    pub outage: Option<std::time::Duration>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ReportArgs {
    /// The run to report on (default: the table's latest run)
    #[arg(long, value_name = "N")]
    pub run: Option<i64>,

    /// Write the HTML report to this file
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,

    /// Print the report's figures as JSON (summary, samples, failures by reason)
    #[arg(long)]
    pub json: bool,
}

/// A count given on the command line: `-1` is a number said wrong, not an
/// unknown flag (clap's "unexpected argument '-1'" without this).
/// A number of credits, typed as the configuration's (`i64`, 0 or more).
fn credits(text: &str) -> Result<i64, String> {
    text.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| format!("`{text}` must be a positive whole number (0 or more), e.g. 100"))
}

fn whole_number(text: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .map_err(|_| format!("`{text}` must be a positive whole number (0 or more), e.g. 100"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(args: &[&str]) -> SandboxOptions {
        let cli = Cli::try_parse_from(["freshen", "sandbox"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Sandbox(args) => args.options(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_sandbox_flags_default_to_the_options_the_demo_and_tests_start_from() {
        assert_eq!(sandbox(&[]), SandboxOptions::default());
    }

    #[test]
    fn a_profile_presets_its_contract_and_other_flags_still_apply() {
        let hunter = sandbox(&["--profile=hunter", "--latency=20ms"]);
        assert_eq!(
            (hunter.throttle_status, hunter.no_credits_status),
            (403, 429)
        );
        assert_eq!(hunter.key_param.as_deref(), Some("api_key"));
        assert_eq!(hunter.quota.len(), 2);
        assert_eq!(hunter.latency, Duration::from_millis(20));
        assert_eq!(sandbox(&["--profile=queued"]).queued, 2);
        assert_eq!(sandbox(&["--profile=post-body"]).cost_range, Some((1, 5)));
        for (name, _) in sandbox::Profile::NAMES {
            let cli = Cli::try_parse_from(["freshen", "sandbox", "--profile", name]);
            assert!(cli.is_ok(), "{name}");
        }
        let err = Cli::try_parse_from(["freshen", "sandbox", "--profile", "acme"]).unwrap_err();
        assert!(err.to_string().contains("query-key, post-body"), "{err}");
    }

    #[test]
    fn each_sandbox_flag_reaches_its_option() {
        let o = sandbox(&[
            "--rate=50",
            "--burst=3",
            "--rate-change=5s=20",
            "--latency=20ms",
            "--fault=7=404",
            "--quota=100/1d",
            "--quota=15/1s",
            "--ratelimit-dialect=openai",
            "--api-key=k",
            "--schema-change-after=30",
            "--lean",
        ]);
        assert_eq!((o.rate, o.burst), (50.0, 3));
        assert_eq!(o.rate_changes, [(Duration::from_secs(5), 20.0)]);
        assert_eq!(o.latency, Duration::from_millis(20));
        assert_eq!(o.faults, [("7".to_owned(), Fault::Status(404))]);
        assert_eq!(
            o.quota,
            [
                (100, Duration::from_secs(86_400)),
                (15, Duration::from_secs(1))
            ]
        );
        assert_eq!(o.ratelimit_dialect, sandbox::Dialect::Openai);
        assert_eq!(o.api_key.as_deref(), Some("k"));
        assert_eq!(o.schema_change_after, Some(30));
        assert!(o.lean);
    }
}
