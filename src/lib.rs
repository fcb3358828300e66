//! freshen refreshes database records against a rate-limited, credit-metered
//! third-party API: as fast as the vendor allows and no faster, never past the
//! credit budget, and resumable after a crash at any moment.
//!
//! # Layout
//!
//! Data flows one way: `cmd` → `engine` → (`store`, `api`, `pacer`, `credits`).
//!
//! - [`cli`]: the command line (clap derive; its doc comments are `--help`).
//! - [`config`]: `config.toml` read once into a typed, validated [`config::Config`].
//! - [`selection`]: `--ids`, `--stale-before`, `--limit` and their canonical form.
//! - [`cmd`]: one thin file per subcommand.
//! - [`engine`]: a run's life ([`engine::run`]: lock, plan or resume, lease,
//!   budget, side tasks, the stop mapped to the run's status), the dispatcher,
//!   the workers, the checkpoint writer, the contract guard, and the vendor's
//!   own count of the account's credits. See `ARCHITECTURE.md`.
//! - [`tally`]: this process's live counters, bumped by the engine and read by
//!   the bar, the timeline and the metrics.
//! - [`pacer`]: *when* a call may go: concurrency permits, the token bucket,
//!   `limits.windows`, the shared pause, the backoff schedule.
//! - [`api`]: *what an answer means*: requests from records, answers classified.
//! - [`store`]: *how it is kept*: every SQL statement, SQLite and PostgreSQL alike.
//! - [`state`]: run statuses and item states as types, stored as their text.
//! - [`ident`]: table and column names, checked once and quoted once.
//! - [`record`]: column kinds and the typed values written into them.
//! - [`credits`]: periods, what a period has left ([`credits::Funds`]), and the
//!   budget that reserves each call's credits from the ledger before it is sent.
//! - [`lease`]: this process's heartbeat in the database; its credits and claims
//!   hold only while it is fresh, and a process that lost it stops calling.
//! - [`fleet`]: [`fleet::Crew`], alone or joined, where solo and joined work
//!   differ; what the workers of a joined run (`run --join`) share: claims,
//!   the rate, the credits.
//! - [`report`]: `freshen report`, a run's HTML page or JSON.
//! - [`progress`]: the bar, the periodic log line, the summary.
//! - [`timeline`]: the run's samples over time, written while it works.
//! - [`metrics`]: `--metrics-file`, Prometheus' text format for cron's runs.
//! - [`sandbox`]: the simulated vendor of the demo, the tests and the benchmarks.
//! - [`error`]: the errors that decide an exit code, and the `Secret` type.

pub mod api;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod credits;
pub mod engine;
pub mod error;
pub mod fleet;
pub mod ident;
pub mod lease;
pub mod metrics;
pub mod pacer;
pub mod progress;
pub mod record;
pub mod report;
pub mod rules;
pub mod sandbox;
pub mod selection;
pub mod state;
pub mod store;
pub mod tally;
pub mod template;
pub mod timeline;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command};
use crate::config::Config;
pub use crate::error::Exit;
use crate::progress::Display;

/// Runs one command. `shutdown` is cancelled on the first SIGINT/SIGTERM/SIGHUP (tests
/// cancel it themselves): work in flight drains and is checkpointed. Can be called
/// more than once in a process.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> Result<Exit> {
    let display = Display::new();
    init_logging(&cli.log, &display)?;
    // `run` and `demo` call the vendor: its token must be set. The others read
    // the database, and call the vendor only if they can.
    let config = || Config::load(&cli.config, cli.database_url.as_deref());
    let reading = || Config::load_reading(&cli.config, cli.database_url.as_deref());
    match cli.command {
        Command::Run(args) => {
            let path = args.summary_json.clone();
            progress::with_summary_file(path.as_deref(), async {
                cmd::run::run(config()?, args, shutdown, &display).await
            })
            .await
        }
        Command::Status(args) => cmd::status::status(reading()?, args).await,
        Command::Estimate(args) => cmd::estimate::estimate(reading()?, args).await,
        Command::Demo(args) => {
            let path = args.summary_json.clone();
            progress::with_summary_file(path.as_deref(), async {
                cmd::demo::demo(config()?, args, shutdown, &display).await
            })
            .await
        }
        Command::Report(args) => report::report(reading()?, args).await,
        Command::Prune(args) => cmd::prune::prune(reading()?, args).await,
        Command::Sandbox(args) => {
            let allow_remote = args.allow_remote;
            sandbox::serve(args.options(), allow_remote, shutdown.cancelled_owned()).await?;
            Ok(Exit::Complete)
        }
    }
}

/// Logs go to stderr, through the progress bars; the first call in a process wins.
fn init_logging(filter: &str, display: &Display) -> Result<()> {
    use std::io::IsTerminal;
    // A filter that does not say what it means is an error naming the directive,
    // never replaced by a default in silence.
    check_log_filter(filter)
        .map_err(|why| error::usage(format!("--log `{filter}` (or FRESHEN_LOG): {why}")))?;
    // PostgreSQL's notices ("relation already exists, skipping" from the
    // migrations) are not news, nor is each dead connection the pool drops
    // while the database is away (freshen says what it does about that).
    let given = filter;
    let filter = format!("{filter},sqlx::postgres::notice=warn,sqlx::pool=warn");
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| error::usage(format!("--log `{given}` (or FRESHEN_LOG): {e}")))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(display.log_writer())
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
    Ok(())
}

/// The crates freshen's logs come from: a bare word in `--log` is a level or one
/// of these (`sqlx` is everything sqlx says). Any other target takes a level
/// (`mio=trace`), so that a misspelt level (`debugg`, `warning`) is not taken for
/// a target, which would log nothing else at all.
const LOG_CRATES: [&str; 14] = [
    "freshen",
    "sqlx",
    "reqwest",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "tokio",
    "tower",
    "tower_http",
    "axum",
    "governor",
    "backon",
    "tracing",
];

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Each directive of an EnvFilter text, checked alone: the one that is wrong is
/// the one named.
fn check_log_filter(filter: &str) -> std::result::Result<(), String> {
    use tracing_subscriber::filter::{Directive, LevelFilter};
    for directive in log_directives(filter) {
        let directive = directive.trim();
        if directive.is_empty() {
            continue;
        }
        if let Err(e) = directive.parse::<Directive>() {
            return Err(format!(
                "directive `{directive}` is not a log directive ({e}); give a level (`info`, \
                 `debug`) or targets with levels (`freshen=debug,info`)"
            ));
        }
        let bare = !directive.contains(['=', '[', ':']);
        if bare && directive.parse::<LevelFilter>().is_err() && !LOG_CRATES.contains(&directive) {
            let hint = match near_level(directive) {
                Some(level) => format!("did you mean `{level}`? "),
                None => String::new(),
            };
            return Err(format!(
                "directive `{directive}` is neither a level ({}) nor a crate freshen logs from \
                 ({}); {hint}Another target takes a level: `{directive}=debug`",
                LEVELS.join(", "),
                LOG_CRATES.join(", ")
            ));
        }
    }
    Ok(())
}

/// The directives of a filter: split at commas, but not at those inside a span's
/// field list (`freshen[run{id=1,key=2}]=debug`).
fn log_directives(filter: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in filter.char_indices() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            ',' if depth <= 0 => {
                out.push(&filter[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&filter[start..]);
    out
}

/// The level a misspelt word was probably meant to be: a prefix either way
/// (`inf`, `warning`) or within two edits (`debugg`, `tarce`).
fn near_level(word: &str) -> Option<&'static str> {
    let word = word.to_ascii_lowercase();
    let prefix = LEVELS
        .into_iter()
        .find(|level| word.starts_with(level) || level.starts_with(word.as_str()));
    prefix.or_else(|| {
        LEVELS
            .into_iter()
            .map(|level| (edits(&word, level), level))
            .filter(|(n, _)| *n <= 2)
            .min()
            .map(|(_, level)| level)
    })
}

/// Levenshtein distance, for short words.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_are_checked_directive_by_directive() {
        for good in [
            "info",
            "DEBUG",
            "3",
            "freshen=debug,warn",
            "sqlx",
            "freshen::engine=trace",
            "freshen[run{id=1,key=2}]=debug",
            "info,",
        ] {
            assert_eq!(check_log_filter(good), Ok(()), "{good}");
        }
        for (bad, named, hint) in [
            ("info,freshen=loud", "`freshen=loud`", None),
            ("debugg", "`debugg`", Some("`debug`")),
            ("warning", "`warning`", Some("`warn`")),
            ("freshen=debug,inf", "`inf`", Some("`info`")),
            ("mio", "`mio`", None),
        ] {
            let why = check_log_filter(bad).unwrap_err();
            assert!(why.contains(&format!("directive {named}")), "{bad}: {why}");
            if let Some(hint) = hint {
                assert!(
                    why.contains(&format!("did you mean {hint}")),
                    "{bad}: {why}"
                );
            }
        }
        assert_eq!(edits("tarce", "trace"), 2);
        assert_eq!(near_level("zzz"), None);
    }
}
