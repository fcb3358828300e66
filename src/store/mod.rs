//! Every SQL statement freshen runs, for SQLite and PostgreSQL alike, through
//! sqlx's `Any` driver (`$n` placeholders, types that both engines share).
//!
//! The user's table and column names come from the configuration. They are checked
//! as plain identifiers by [`Ident`] and quoted in one place, [`Ident::quoted`];
//! the statements that use them are built once, at connect time, in [`Statements`].
//! Every value goes in as a bound parameter.

/// The database clock in Unix milliseconds (PostgreSQL), as SQL text: the
/// workers of a joined run may be on hosts whose clocks disagree. A macro, so
/// the statements that use it are `&'static str` built at compile time.
macro_rules! now_ms {
    () => {
        "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
    };
}

/// The database clock in Unix microseconds (PostgreSQL), as SQL text.
macro_rules! now_us {
    () => {
        "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)"
    };
}

mod checkpoint;
mod first_connect;
mod fleet;
mod keys;
mod ledger;
mod lock;
mod outage;
mod prune;
mod samples;
mod session;
mod statements;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, AssertSqlSafe, Executor, Row, SqlSafeStr};

use crate::config::Config;
use crate::error::usage;
use crate::record::{ColumnKind, Value};
use crate::selection::{IdSpec, Selection, stamp};

pub use crate::ident::Ident;
pub use checkpoint::Rejected;
pub use fleet::{PaceGrant, WorkerRow};
pub use keys::KeyProblems;
pub use ledger::{Account, Holder};
pub use lock::{LockHolder, gone_here, lock_file, this_process};
pub use outage::OutageRow;
pub use prune::Pruned;
pub use samples::{FailureGroup, Sample};
use statements::Statements;

/// Which engine is behind the URL: the SQL is shared, the migrations and a few
/// schema queries are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A run as stored in `freshen_runs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub id: i64,
    pub selection: String,
    pub status: String,
    pub total: i64,
    pub calls: CallCounts,
    pub credits_spent: i64,
    /// Records its plan left out for their keys (NULL, or shared with another).
    pub skipped: i64,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

/// Calls by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallCounts {
    pub ok: i64,
    pub throttled: i64,
    pub transient: i64,
    pub permanent: i64,
}

impl CallCounts {
    pub fn total(&self) -> i64 {
        self.ok + self.throttled + self.transient + self.permanent
    }
}

/// Items of a run by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ItemCounts {
    pub total: i64,
    pub done: i64,
    pub failed: i64,
    pub pending: i64,
}

/// One queued record, as the workers see it.
#[derive(Debug, Clone)]
pub struct Item {
    pub seq: i64,
    pub key: String,
    pub attempts: u32,
    /// Values of the non-key columns that `api.path` uses, as text, in template order.
    pub params: Vec<String>,
}

/// How an item ended.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// The mapped columns' new values, in `api.response` order.
    Done(Vec<Value>),
    Failed(String),
}

/// An item's result, on its way to the checkpoint.
#[derive(Debug, Clone)]
pub struct Finished {
    pub seq: i64,
    pub key: String,
    pub attempts: u32,
    pub resolution: Resolution,
    /// Credits its billed answers cost, by the period each was reserved in
    /// (one entry, but for a record retried across a period's reset).
    pub charges: Vec<(Arc<str>, i64)>,
}

impl Finished {
    pub fn charged(&self) -> i64 {
        self.charges.iter().map(|(_, c)| c).sum()
    }
}

/// Where a checkpoint writes: the run, and the process writing (whose claims
/// it may resolve, and whose credit reservations its charges settle).
#[derive(Debug, Clone, Copy)]
pub struct Ledger<'a> {
    pub run: i64,
    pub worker: &'a str,
}

/// Credits of one period, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodRow {
    pub period: String,
    pub allowance: i64,
    pub spent: i64,
    /// The vendor's last count of credits left, and when it was seen.
    pub vendor_remaining: Option<i64>,
    pub vendor_seen_at: Option<String>,
}

/// What past runs of the table cost: for the estimate's retry overhead.
#[derive(Debug, Clone, Copy, Default)]
pub struct History {
    pub credits_spent: i64,
    pub calls: i64,
    pub resolved: i64,
}

pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// `source.table`: names the table's lock and shared pace.
    table: String,
    sql: Statements,
    ledger: ledger::Sql,
    key_kind: ColumnKind,
    key_column: keys::KeyColumn,
    mapped: Vec<ColumnKind>,
    /// The SQLite file and its identity (device, inode) when opened.
    sqlite_file: Option<(std::path::PathBuf, (u64, u64))>,
    /// The run lock's lower layer, while this process holds it (see [`lock`]).
    os_lock: tokio::sync::Mutex<lock::OsLock>,
    /// PostgreSQL: what each connection is set up with.
    session: Option<session::Settings>,
}

/// A file's identity: the same path can come to name another file.
fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Store {
    /// Connects, applies freshen's migrations, and checks the configured table
    /// against the database: every configured column must exist.
    pub async fn connect(config: &Config) -> Result<Store> {
        Store::open(config, false).await
    }

    /// Like [`Store::connect`], creating the SQLite file if it does not exist (the demo).
    pub async fn create(config: &Config) -> Result<Store> {
        Store::open(config, true).await
    }

    async fn open(config: &Config, create: bool) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let url = config.database_url.expose();
        let shown = config.database_display();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        const SQLITE_SETUP: &str =
            "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;";
        let mut sqlite_url = url.to_owned();
        if create && !sqlite_url.contains("mode=") {
            sqlite_url.push_str(if sqlite_url.contains('?') {
                "&mode=rwc"
            } else {
                "?mode=rwc"
            });
        }
        let pool = match backend {
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(4)
                    // One try that waits out the busy timeout, and a retry.
                    .acquire_timeout(Duration::from_secs(15))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // One writer, readers alongside it (status while a run goes on);
                            // a locked database is waited for, not an error.
                            conn.execute(SQLITE_SETUP).await?;
                            Ok(())
                        })
                    })
                    .connect(&sqlite_url)
                    .await
            }
            Backend::Postgres => {
                first_connect::probe(url, &shown, &config.database_source).await?;
                let settings = session::Settings::new(config);
                AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(move |conn, _| {
                        let settings = settings.clone();
                        Box::pin(async move { session::setup(conn, &settings).await })
                    })
                    .connect(url)
                    .await
            }
        };
        let pool = match pool {
            Ok(pool) => pool,
            Err(e) => {
                // sqlx retries a connection whose setup failed until the pool's
                // timeout, then says only that it timed out: one connection made
                // by hand tells why.
                let why = match (&e, backend) {
                    (sqlx::Error::PoolTimedOut, Backend::Sqlite) => {
                        let probe = async {
                            let mut conn =
                                <sqlx::AnyConnection as sqlx::Connection>::connect(&sqlite_url)
                                    .await?;
                            conn.execute(SQLITE_SETUP).await.map(|_| ())
                        };
                        match tokio::time::timeout(Duration::from_secs(12), probe).await {
                            Ok(Err(sqlx::Error::Database(db)))
                                if db.message().contains("readonly") =>
                            {
                                ": the file is read-only to this process; freshen writes the \
                                 results and its own tables there, so give its user write access \
                                 to the file and its directory"
                                    .to_owned()
                            }
                            Ok(Err(other)) if !other.to_string().contains("locked") => {
                                format!(": {other}")
                            }
                            _ => ": the database stayed locked by another writer past the 10 s \
                                  busy timeout; let that transaction finish, then rerun"
                                .to_owned(),
                        }
                    }
                    _ => String::new(),
                };
                let why = match why.is_empty() {
                    true => format!(": {}", first_connect::describe(&e)),
                    false => why,
                };
                return Err(anyhow::anyhow!(
                    "cannot open the database {shown} ({}){why}",
                    config.database_source
                ));
            }
        };

        // sqlx's migrator locks on PostgreSQL, not on SQLite: two first starts at
        // once would both create freshen's tables.
        let serial = match backend {
            Backend::Sqlite => lock::migrations_lock(url).await?,
            Backend::Postgres => None,
        };
        migrator(backend)
            .run(&pool)
            .await
            .with_context(|| format!("applying freshen's migrations to {shown}"))?;
        drop(serial);

        let columns = table_columns(&pool, backend, config.source.table.as_str()).await?;
        if columns.is_empty() {
            return Err(usage(format!(
                "the table `{}` (source.table in {}) does not exist in {shown}",
                config.source.table,
                config.path.display()
            )));
        }
        let kind_of = |key: &str, column: &Ident| {
            columns
                .iter()
                .find(|(name, _)| name == column.as_str())
                .map(|(_, k)| *k)
                .ok_or_else(|| {
                    usage(format!(
                        "`{key}` names the column `{column}`, which the table `{}` lacks (in {})",
                        config.source.table,
                        config.path.display()
                    ))
                })
        };
        let key_kind = kind_of("source.key", &config.source.key)?;
        kind_of("source.refreshed_at", &config.source.refreshed_at)?;
        for column in config.api.path.columns() {
            kind_of("api.path", column)?;
        }
        let mapped = config
            .api
            .response
            .iter()
            .map(|m| kind_of(&format!("api.response.\"{}\"", m.pointer), &m.column))
            .collect::<Result<Vec<_>>>()?;
        if !matches!(key_kind, ColumnKind::Integer | ColumnKind::Text) {
            bail!(usage(format!(
                "`source.key` = `{}` must be an integer or text column",
                config.source.key
            )));
        }

        // SQLite goes on writing into a file removed under it (in WAL mode it does
        // not notice), and those writes are lost: checkpoints check the file first.
        let sqlite_file = match backend {
            Backend::Sqlite => {
                use std::str::FromStr;
                sqlx::sqlite::SqliteConnectOptions::from_str(url)
                    .ok()
                    .map(|o| o.get_filename().to_owned())
                    .and_then(|path| Some((file_id(&path)?, path)))
                    .map(|(id, path)| (path, id))
            }
            Backend::Postgres => None,
        };

        let key_column = keys::KeyColumn::inspect(
            &pool,
            backend,
            config.source.table.as_str(),
            config.source.key.as_str(),
        )
        .await?;
        Ok(Store {
            table: config.source.table.as_str().to_owned(),
            sql: Statements::new(config, key_kind, &key_column, &mapped, backend),
            ledger: ledger::Sql::new(backend),
            pool,
            backend,
            key_kind,
            key_column,
            mapped,
            sqlite_file,
            os_lock: Default::default(),
            session: (backend == Backend::Postgres).then(|| session::Settings::new(config)),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The kinds of the mapped columns, in `api.response` order.
    pub fn mapped_kinds(&self) -> &[ColumnKind] {
        &self.mapped
    }

    /// The newest run with this selection, finished or not.
    pub async fn latest_run_with(&self, selection: &Selection) -> Result<Option<RunRow>> {
        let row = query(&self.sql.latest_run_with)
            .bind(selection.canonical())
            .fetch_optional(&self.pool)
            .await
            .context("looking up earlier runs")?;
        row.map(|r| run_row(&r)).transpose()
    }

    /// The newest run of this table, whatever its selection.
    pub async fn latest_run(&self) -> Result<Option<RunRow>> {
        let row = query(&self.sql.latest_run)
            .fetch_optional(&self.pool)
            .await
            .context("looking up the last run")?;
        row.map(|r| run_row(&r)).transpose()
    }

    pub async fn run(&self, id: i64) -> Result<Option<RunRow>> {
        let row = query(&self.sql.run_by_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .context("reading the run")?;
        row.map(|r| run_row(&r)).transpose()
    }

    /// Plans a new run: one row in `freshen_runs` and the selected keys snapshotted
    /// into `freshen_items`, stalest first, by one set-based statement, in one transaction.
    /// Plans a run of `selection`, at most `cap` records of it when given.
    /// Records whose key is NULL or shared are left out with a warning, or with
    /// `strict` refused (a usage error) before anything is planned.
    pub async fn plan(
        &self,
        selection: &Selection,
        cap: Option<u64>,
        strict: bool,
    ) -> Result<RunRow> {
        let problems = self.key_problems(selection).await?;
        if problems.skipped() > 0 {
            if strict {
                return Err(problems.refusal());
            }
            tracing::warn!("{}", problems.warning());
        }
        let binds = self.selection_binds(selection)?;
        let now = now_stamp();
        let mut tx = self
            .pool
            .begin()
            .await
            .context("starting the plan transaction")?;
        let id: i64 = query(&self.sql.insert_run)
            .bind(selection.canonical())
            .bind(now.clone())
            .fetch_one(&mut *tx)
            .await
            .context("creating the run")?
            .try_get(0)?;
        let plan_sql = self.sql.plan(selection, cap);
        let q = bind_all(sqlx::query(AssertSqlSafe(plan_sql)).bind(id), binds);
        let total = q
            .execute(&mut *tx)
            .await
            .context("planning the run's items")?
            .rows_affected() as i64;
        query(&self.sql.set_total)
            .bind(total)
            .bind(problems.skipped())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await.context("committing the plan")?;
        if self.backend == Backend::Postgres {
            // Without statistics PostgreSQL takes the fresh items for a handful
            // and checkpoints each batch by hashing every pending item of the run
            // (90 ms a batch at 100,000 items) instead of looking up its seqs.
            sqlx::query("ANALYZE freshen_items")
                .execute(&self.pool)
                .await
                .context("analyzing the planned items")?;
        }
        Ok(self.run(id).await?.expect("the run was just inserted"))
    }

    /// How many records `selection` takes (before `--limit`), and how many its
    /// `--stale-before` leaves out as already fresh. Reads only.
    pub async fn count_selection(&self, selection: &Selection) -> Result<(i64, i64)> {
        let binds = || self.selection_binds(selection);
        let sql = self.sql.count(selection, false);
        let selected: i64 = bind_all(sqlx::query(AssertSqlSafe(sql)), binds()?)
            .fetch_one(&self.pool)
            .await
            .context("counting the selected records")?
            .try_get(0)?;
        let fresh: i64 = if selection.stale_before.is_some() {
            let sql = self.sql.count(selection, true);
            bind_all(sqlx::query(AssertSqlSafe(sql)), binds()?)
                .fetch_one(&self.pool)
                .await
                .context("counting the fresh records")?
                .try_get(0)?
        } else {
            0
        };
        Ok((selected, fresh))
    }

    /// The key and `refreshed_at` of the record at 0-based position `n` of the
    /// plan's order (stalest first) for `selection`, if there is one.
    pub async fn nth_stalest(
        &self,
        selection: &Selection,
        n: i64,
    ) -> Result<Option<(String, Option<String>)>> {
        let binds = self.selection_binds(selection)?;
        let sql = self.sql.nth_stalest(selection, binds.len());
        let row = bind_all(sqlx::query(AssertSqlSafe(sql)), binds)
            .bind(n)
            .fetch_optional(&self.pool)
            .await
            .context("finding where the budget cuts")?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// The key and `refreshed_at` of the `n`th (0-based) pending item of `run`.
    pub async fn nth_pending(&self, run: i64, n: i64) -> Result<Option<(String, Option<String>)>> {
        let key: Option<String> = sqlx::query(
            "SELECT key FROM freshen_items WHERE run_id = $1 AND state = 'pending' \
             ORDER BY seq LIMIT 1 OFFSET $2",
        )
        .bind(run)
        .bind(n)
        .fetch_optional(&self.pool)
        .await
        .context("finding where the budget cuts")?
        .map(|r| r.try_get(0))
        .transpose()?;
        let Some(key) = key else { return Ok(None) };
        let q = sqlx::query(AssertSqlSafe(self.sql.refreshed_at_of()));
        let q = match self.key_kind {
            ColumnKind::Integer => q.bind(key.parse::<i64>().unwrap_or_default()),
            _ => q.bind(key.clone()),
        };
        let at: Option<String> = q
            .fetch_optional(&self.pool)
            .await
            .context("reading the record at the budget's cut")?
            .and_then(|r| r.try_get(0).ok())
            .flatten();
        Ok(Some((key, at)))
    }

    /// The values bound into the plan's WHERE clause, in the order `Statements::plan`
    /// writes placeholders. Checks `--ids` against the key's kind.
    fn selection_binds(&self, selection: &Selection) -> Result<Vec<Bind>> {
        let mut binds = Vec::new();
        for spec in &selection.ids {
            match (spec, self.key_kind) {
                (IdSpec::Range { from, to }, ColumnKind::Integer) => {
                    binds.extend([Bind::Int(*from), Bind::Int(*to)])
                }
                (IdSpec::Range { .. }, _) => {
                    return Err(usage(format!(
                        "--ids {spec}: a range needs an integer key, and `source.key` is text"
                    )));
                }
                (IdSpec::Key(k), ColumnKind::Integer) => {
                    let i = k.parse::<i64>().map_err(|_| {
                        usage(format!("--ids {k}: `source.key` is an integer column, and `{k}` is not an integer"))
                    })?;
                    binds.push(Bind::Int(i));
                }
                (IdSpec::Key(k), _) => binds.push(Bind::Text(k.clone())),
            }
        }
        if let Some(stale) = &selection.stale_before {
            binds.push(Bind::Text(stale.0.clone()));
        }
        Ok(binds)
    }

    /// Up to `limit` pending items after `after_seq`, in order.
    pub async fn pending_after(&self, run: i64, after_seq: i64, limit: i64) -> Result<Vec<Item>> {
        let rows = query(&self.sql.pending_after)
            .bind(run)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .context("reading pending items")?;
        rows.iter().map(item_row).collect()
    }

    pub async fn set_status(&self, run: i64, status: &str, finished: bool) -> Result<()> {
        let now = now_stamp();
        query(&self.sql.set_status)
            .bind(status)
            .bind(now.clone())
            .bind(finished.then_some(now))
            .bind(run)
            .execute(&self.pool)
            .await
            .context("recording the run's status")?;
        Ok(())
    }

    pub async fn item_counts(&self, run: i64) -> Result<ItemCounts> {
        let rows = query(&self.sql.item_counts)
            .bind(run)
            .fetch_all(&self.pool)
            .await
            .context("counting items")?;
        let mut counts = ItemCounts::default();
        for r in rows {
            let n: i64 = r.try_get(1)?;
            match r.try_get::<String, _>(0)?.as_str() {
                "done" => counts.done += n,
                "failed" => counts.failed += n,
                _ => counts.pending += n,
            }
            counts.total += n;
        }
        Ok(counts)
    }

    /// Whether any item of the run is still pending (claimed or not).
    pub async fn has_pending(&self, run: i64) -> Result<bool> {
        let n: i64 = query(&self.sql.has_pending)
            .bind(run)
            .fetch_one(&self.pool)
            .await
            .context("looking for pending items")?
            .try_get(0)?;
        Ok(n > 0)
    }

    /// The failed items of a run with their reasons, at most `limit`.
    pub async fn failures(&self, run: i64, limit: i64) -> Result<Vec<(String, String)>> {
        let rows = query(&self.sql.failures)
            .bind(run)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                ))
            })
            .collect()
    }

    /// The period's row, created with `allowance` if it does not exist yet.
    pub async fn period(&self, period: &str, allowance: u64) -> Result<PeriodRow> {
        let allowance = i64::try_from(allowance).context("credits.allowance is too large")?;
        query(&self.sql.ensure_period)
            .bind(period.to_owned())
            .bind(allowance)
            .execute(&self.pool)
            .await?;
        let r = query(&self.sql.period)
            .bind(period.to_owned())
            .fetch_one(&self.pool)
            .await?;
        Ok(PeriodRow {
            period: r.try_get(0)?,
            allowance: r.try_get(1)?,
            spent: r.try_get(2)?,
            vendor_remaining: r.try_get(3)?,
            vendor_seen_at: r.try_get(4)?,
        })
    }

    /// Records the vendor's count of credits left for `period`.
    pub async fn set_vendor_count(&self, period: &str, left: i64, seen_at: String) -> Result<()> {
        query(&self.sql.set_vendor_count)
            .bind(left)
            .bind(seen_at)
            .bind(period.to_owned())
            .execute(&self.pool)
            .await
            .context("recording the vendor's count of credits")?;
        Ok(())
    }

    /// Credits, calls and resolved records of every run of the table so far.
    pub async fn history(&self) -> Result<History> {
        let r = query(&self.sql.history)
            .fetch_one(&self.pool)
            .await
            .context("reading past runs")?;
        Ok(History {
            credits_spent: r.try_get(0)?,
            calls: r.try_get(1)?,
            resolved: r.try_get(2)?,
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Whether `e` says the database could not be reached or dropped the connection
/// (a restart, `pg_terminate_backend`, a network cut), rather than refused the
/// statement: worth waiting for and trying again, as nothing was committed
/// (the transaction either reached COMMIT and was acknowledged, or is rolled back).
pub fn is_disconnect(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|cause| match cause.downcast_ref::<sqlx::Error>() {
            Some(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed,
            ) => true,
            // Class 08 (connection exception), 57P01-57P03 (admin shutdown, crash
            // shutdown, cannot connect now).
            Some(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
            _ => false,
        })
}

/// A checkpoint that failed because the database's storage refused the write
/// (a read-only filesystem or file, a full disk, an I/O error) says so, and
/// what to do; other errors pass as they are.
pub fn explain_write_failure(e: anyhow::Error) -> anyhow::Error {
    const STORAGE: [&str; 4] = ["readonly", "read-only", "disk I/O error", "disk is full"];
    let storage = e.chain().any(|cause| {
        matches!(cause.downcast_ref::<sqlx::Error>(), Some(sqlx::Error::Database(db))
            if STORAGE.iter().any(|s| db.message().contains(s)))
    });
    if storage {
        e.context(
            "could not write to the database: its storage refused the write (a read-only \
             file or filesystem, a full disk, or a failing one). Nothing of this batch was \
             kept and every record written before it is whole; make the database writable \
             and rerun to resume",
        )
    } else {
        e
    }
}

enum Bind {
    Int(i64),
    Text(String),
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

fn bind_all(mut q: AnyQuery<'_>, binds: Vec<Bind>) -> AnyQuery<'_> {
    for b in binds {
        q = match b {
            Bind::Int(i) => q.bind(i),
            Bind::Text(s) => q.bind(s),
        };
    }
    q
}

fn query(sql: &Arc<str>) -> AnyQuery<'static> {
    sqlx::query(AssertSqlSafe(sql.clone()))
}

/// A queued item: seq, key, attempts, then the path's other columns as text.
fn item_row(r: &AnyRow) -> Result<Item> {
    let params = (3..r.len()).map(|i| {
        r.try_get::<Option<String>, _>(i)
            .map(Option::unwrap_or_default)
    });
    Ok(Item {
        seq: r.try_get(0)?,
        key: r.try_get(1)?,
        attempts: u32::try_from(r.try_get::<i64, _>(2)?).unwrap_or(u32::MAX),
        params: params.collect::<Result<_, _>>()?,
    })
}

fn run_row(r: &AnyRow) -> Result<RunRow> {
    Ok(RunRow {
        id: r.try_get("id")?,
        selection: r.try_get("selection")?,
        status: r.try_get("status")?,
        total: r.try_get("total")?,
        calls: CallCounts {
            ok: r.try_get("calls_ok")?,
            throttled: r.try_get("calls_throttled")?,
            transient: r.try_get("calls_transient")?,
            permanent: r.try_get("calls_permanent")?,
        },
        credits_spent: r.try_get("credits_spent")?,
        skipped: r.try_get("skipped")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

pub fn now_stamp() -> String {
    stamp(jiff::Timestamp::now())
}

/// The user table's columns and their kinds; empty when the table does not exist.
async fn table_columns(
    pool: &AnyPool,
    backend: Backend,
    table: &str,
) -> Result<Vec<(String, ColumnKind)>> {
    let sql = match backend {
        Backend::Sqlite => "SELECT name, type FROM pragma_table_info($1)",
        Backend::Postgres => {
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1"
        }
    };
    let rows = sqlx::query(sql)
        .bind(table.to_owned())
        .fetch_all(pool)
        .await
        .context("reading the table's columns")?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<String, _>(0)?,
                ColumnKind::from_sql_type(&r.try_get::<String, _>(1)?),
            ))
        })
        .collect()
}

/// freshen's migrations, embedded in the binary, for the engine behind the URL.
fn migrator(backend: Backend) -> Migrator {
    // (version, name, sqlite, postgres): versions are never reused or renumbered.
    let all = [
        (
            1,
            "freshen",
            include_str!("../../migrations/sqlite/0001_freshen.sql"),
            include_str!("../../migrations/postgres/0001_freshen.sql"),
        ),
        (
            2,
            "locks",
            include_str!("../../migrations/sqlite/0002_locks.sql"),
            include_str!("../../migrations/postgres/0002_locks.sql"),
        ),
        (
            3,
            "timeline",
            include_str!("../../migrations/sqlite/0003_timeline.sql"),
            include_str!("../../migrations/postgres/0003_timeline.sql"),
        ),
        (
            4,
            "reserved",
            include_str!("../../migrations/sqlite/0004_reserved.sql"),
            include_str!("../../migrations/postgres/0004_reserved.sql"),
        ),
        (
            5,
            "fleet",
            include_str!("../../migrations/sqlite/0005_fleet.sql"),
            include_str!("../../migrations/postgres/0005_fleet.sql"),
        ),
        (
            6,
            "items_unchecked",
            include_str!("../../migrations/sqlite/0006_items_unchecked.sql"),
            include_str!("../../migrations/postgres/0006_items_unchecked.sql"),
        ),
        (
            7,
            "keys",
            include_str!("../../migrations/sqlite/0007_keys.sql"),
            include_str!("../../migrations/postgres/0007_keys.sql"),
        ),
        (
            8,
            "ledger",
            include_str!("../../migrations/sqlite/0008_ledger.sql"),
            include_str!("../../migrations/postgres/0008_ledger.sql"),
        ),
        (
            9,
            "outage",
            include_str!("../../migrations/sqlite/0009_outage.sql"),
            include_str!("../../migrations/postgres/0009_outage.sql"),
        ),
    ];
    let migrations = all
        .into_iter()
        .map(|(version, name, sqlite, postgres)| {
            let sql = match backend {
                Backend::Sqlite => sqlite,
                Backend::Postgres => postgres,
            };
            Migration::new(
                version,
                Cow::Borrowed(name),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}
