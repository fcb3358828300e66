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
//! - [`engine`]: the dispatcher, the workers and the checkpoint writer.
//! - [`pacer`]: *when* a call may go: concurrency permits, the token bucket, the
//!   shared pause, the backoff schedule.
//! - [`api`]: *what an answer means*: requests from records, answers classified.
//! - [`store`]: *how it is kept*: every SQL statement, SQLite and PostgreSQL alike.
//! - [`ident`]: table and column names, checked once and quoted once.
//! - [`record`]: column kinds and the typed values written into them.
//! - [`credits`]: periods, what a period has left ([`credits::Funds`]), and the
//!   budget that reserves each call's credits from the ledger before it is sent.
//! - [`lease`]: this process's heartbeat in the database; its credits and claims
//!   hold only while it is fresh, and a process that lost it stops calling.
//! - [`fleet`]: what the workers of a joined run (`run --join`) share: claims,
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
pub mod sandbox;
pub mod selection;
pub mod store;
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
    let config = || Config::load(&cli.config, cli.database_url.as_deref());
    match cli.command {
        Command::Run(args) => {
            let path = args.summary_json.clone();
            progress::with_summary_file(path.as_deref(), async {
                cmd::run::run(config()?, args, shutdown, &display).await
            })
            .await
        }
        Command::Status(args) => cmd::status::status(config()?, args).await,
        Command::Estimate(args) => cmd::estimate::estimate(config()?, args).await,
        Command::Demo(args) => {
            let path = args.summary_json.clone();
            progress::with_summary_file(path.as_deref(), async {
                cmd::demo::demo(config()?, args, shutdown, &display).await
            })
            .await
        }
        Command::Report(args) => report::report(config()?, args).await,
        Command::Prune(args) => cmd::prune::prune(config()?, args).await,
        Command::Sandbox(opts) => {
            sandbox::serve(opts, shutdown.cancelled_owned()).await?;
            Ok(Exit::Complete)
        }
    }
}

/// Logs go to stderr, through the progress bars; the first call in a process wins.
fn init_logging(filter: &str, display: &Display) -> Result<()> {
    use std::io::IsTerminal;
    // PostgreSQL's notices ("relation already exists, skipping" from the
    // migrations) are not news, nor is each dead connection the pool drops
    // while the database is away (freshen says what it does about that).
    // A filter that does not parse is said, not replaced by `info` in silence.
    let given = filter;
    let filter = format!("{filter},sqlx::postgres::notice=warn,sqlx::pool=warn");
    let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| {
        error::usage(format!(
            "--log `{given}` (or FRESHEN_LOG) is not a log filter ({e}); give a level \
             (`info`, `debug`) or targets (`freshen=debug,info`)"
        ))
    })?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(display.log_writer())
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
    Ok(())
}
