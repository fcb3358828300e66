//! `freshen demo`: the whole main job on the embedded default. It creates a sample
//! SQLite database if there is none, starts the simulated vendor in-process on the
//! address of `api.base_url`, and runs the real `run` path with the configuration.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tokio_util::sync::CancellationToken;

use crate::cli::{DemoArgs, RunArgs};
use crate::config::Config;
use crate::error::Exit;
use crate::error::usage;
use crate::progress::Display;
use crate::sandbox::{Sandbox, SandboxOptions};

pub async fn demo(
    config: Config,
    args: DemoArgs,
    shutdown: CancellationToken,
    display: &Display,
) -> Result<Exit> {
    let url = config.database_url.expose().to_owned();
    if config.database_url.backend() != crate::config::Backend::Sqlite {
        return Err(usage(format!(
            "the demo runs on the embedded SQLite default, and database.url in {} is not sqlite:",
            config.path.display()
        )));
    }
    let mut config = config;
    if let Some(addr) = args.listen {
        // The run calls the sandbox wherever it listens.
        config.api.base_url = format!("http://{addr}");
    }
    let listen = url::Url::parse(&config.api.base_url)
        .ok()
        .and_then(|u| u.socket_addrs(|| None).ok())
        .and_then(|addrs| addrs.into_iter().next())
        .with_context(|| {
            format!(
                "api.base_url in {} has no local address for the sandbox",
                config.path.display()
            )
        })?;
    // The demo's vendor checks no credentials: it stays on this machine.
    if !listen.ip().is_loopback() {
        return Err(usage(format!(
            "the demo's vendor listens on loopback only, and {listen} (demo --listen, or the \
             host of api.base_url in {}) is not; pick `freshen demo --listen 127.0.0.1:8078`, \
             or for a simulated vendor open to the network, `freshen sandbox --listen {listen} \
             --allow-remote`",
            config.path.display()
        )));
    }
    if create_sample(&url, args.records).await? {
        println!(
            "created {} with {} sample people",
            config.database_display(),
            args.records
        );
    }

    // A realistic vendor: the configured rate, a little latency, a sprinkle of errors.
    let sandbox = Sandbox::start(SandboxOptions {
        listen,
        rate: args.vendor_rate.unwrap_or(config.limits.rate),
        outage_start: args.outage_at,
        outage: args.outage.unwrap_or_default(),
        burst: config.limits.burst.get().max(10),
        latency: Duration::from_millis(20),
        error_rate: 0.01,
        ..SandboxOptions::default()
    })
    .await
    .with_context(|| {
        format!(
            "the demo's vendor cannot listen on {listen} (api.base_url in {}, or demo --listen); \
             pick a free address with `freshen demo --listen 127.0.0.1:8078`",
            config.path.display()
        )
    })?;
    println!("sandbox vendor listening on {}", sandbox.base_url());

    let run = RunArgs {
        new: args.new,
        summary_json: args.summary_json,
        metrics_file: args.metrics_file,
        demo: true,
        ..RunArgs::default()
    };
    let exit = super::run::run(config, run, shutdown, display).await;
    sandbox.stop().await;
    exit
}

/// Creates the sample `people` table at `url` unless the database already has it.
/// Returns whether it created it. A third of the people were never refreshed; the
/// rest were, on dates spread over the year, so "stalest first" has work to do.
pub async fn create_sample(url: &str, records: u64) -> Result<bool> {
    let options = SqliteConnectOptions::from_str(url)
        .with_context(|| format!("database.url {url} is not a SQLite URL"))?
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .with_context(|| format!("creating the demo database {url}"))?;
    let exists: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'people'",
    )
    .fetch_one(&pool)
    .await?;
    if exists > 0 {
        pool.close().await;
        return Ok(false);
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, title TEXT, company TEXT, \
         score INTEGER, refreshed_at TEXT)",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
         INSERT INTO people (id, name, refreshed_at) \
         SELECT i, 'Person ' || i, \
                CASE WHEN i % 3 = 0 THEN NULL \
                     ELSE printf('2026-%02d-%02dT08:00:00Z', 1 + i % 10, 1 + i % 28) END \
         FROM n",
    )
    .bind(records as i64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    pool.close().await;
    Ok(true)
}
