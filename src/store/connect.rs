//! Opening the database: the pool and its per-connection set-up, the first
//! connection's diagnostics, freshen's migrations, and the configured table
//! checked against the database before anything runs.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor, Row};

use super::{
    Backend, Ident, Kinds, Statements, Store, first_connect, keys, ledger, lock, migrations,
    session,
};
use crate::config::Config;
use crate::error::usage;
use crate::record::ColumnKind;

/// A file's identity: the same path can come to name another file.
pub(super) fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
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
        let backend = config.database_url.backend();
        let pool = pool(config, backend, create).await?;

        // sqlx's migrator locks on PostgreSQL, not on SQLite: two first starts at
        // once would both create freshen's tables.
        let serial = match backend {
            Backend::Sqlite => lock::migrations_lock(url).await?,
            Backend::Postgres => None,
        };
        migrations::migrator(backend)
            .run(&pool)
            .await
            .with_context(|| format!("applying freshen's migrations to {shown}"))?;
        drop(serial);

        let kinds = check_table(config, &pool, backend).await?;
        let key_column = keys::KeyColumn::inspect(
            &pool,
            backend,
            config.source.table.as_str(),
            config.source.key.as_str(),
        )
        .await?;
        Ok(Store {
            table: config.source.table.as_str().to_owned(),
            sql: Statements::new(config, kinds.key, &key_column, &kinds.mapped, backend),
            ledger: ledger::Sql::new(backend),
            pool,
            backend,
            key_kind: kinds.key,
            key_column,
            kinds,
            sqlite_file: sqlite_file(url, backend),
            os_lock: Default::default(),
            session: (backend == Backend::Postgres).then(|| session::Settings::new(config)),
        })
    }
}

const SQLITE_SETUP: &str =
    "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;";

/// The pool, each connection set up for freshen; a failure says why.
async fn pool(config: &Config, backend: Backend, create: bool) -> Result<AnyPool> {
    let url = config.database_url.expose();
    let shown = config.database_display();
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
    match pool {
        Ok(pool) => Ok(pool),
        Err(e) => {
            let why = match (&e, backend) {
                (sqlx::Error::PoolTimedOut, Backend::Sqlite) => {
                    why_sqlite_timed_out(&sqlite_url).await
                }
                _ => format!(": {}", first_connect::describe(&e)),
            };
            Err(anyhow::anyhow!(
                "cannot open the database {shown} ({}){why}",
                config.database_source
            ))
        }
    }
}

/// sqlx retries a connection whose setup failed until the pool's timeout, then
/// says only that it timed out: one connection made by hand tells why.
async fn why_sqlite_timed_out(sqlite_url: &str) -> String {
    let probe = async {
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(sqlite_url).await?;
        conn.execute(SQLITE_SETUP).await.map(|_| ())
    };
    match tokio::time::timeout(Duration::from_secs(12), probe).await {
        Ok(Err(sqlx::Error::Database(db))) if db.message().contains("readonly") => {
            ": the file is read-only to this process; freshen writes the results and its own \
             tables there, so give its user write access to the file and its directory"
                .to_owned()
        }
        Ok(Err(other)) if !other.to_string().contains("locked") => format!(": {other}"),
        _ => ": the database stayed locked by another writer past the 10 s busy timeout; let \
              that transaction finish, then rerun"
            .to_owned(),
    }
}

/// Every configured column must exist in the table; returns their kinds.
async fn check_table(config: &Config, pool: &AnyPool, backend: Backend) -> Result<Kinds> {
    let shown = config.database_display();
    let columns = table_columns(pool, backend, config.source.table.as_str()).await?;
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
    for (at, column) in config.api.placeholders() {
        kind_of(&at, column)?;
    }
    let params = config
        .api
        .columns(&config.source.key)
        .iter()
        .map(|c| kind_of("api", c))
        .collect::<Result<Vec<_>>>()?;
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
    Ok(Kinds {
        key: key_kind,
        mapped,
        params,
    })
}

/// SQLite goes on writing into a file removed under it (in WAL mode it does not
/// notice), and those writes are lost: checkpoints check the file first.
fn sqlite_file(url: &str, backend: Backend) -> Option<(std::path::PathBuf, (u64, u64))> {
    use std::str::FromStr;
    match backend {
        Backend::Sqlite => sqlx::sqlite::SqliteConnectOptions::from_str(url)
            .ok()
            .map(|o| o.get_filename().to_owned())
            .and_then(|path| Some((file_id(&path)?, path)))
            .map(|(id, path)| (path, id)),
        Backend::Postgres => None,
    }
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
