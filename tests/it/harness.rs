//! The test environment (after fd's `TestEnv`): a temporary directory with a
//! config file (the shipped `config.toml` with a test's keys set by `toml_edit`)
//! and a seeded database (one sample for both engines), the in-process sandbox as the vendor, and
//! the real `freshen` binary run with a cleared environment.
//!
//! The database is SQLite (a file in the directory), or with
//! `FRESHEN_TEST_DATABASE=postgres` a fresh PostgreSQL database per test on
//! `FRESHEN_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432`),
//! dropped when the test ends. A test that needs PostgreSQL and cannot reach it
//! fails.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use freshen::sandbox::{Sandbox, SandboxOptions};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{Connection, Executor, Row};
use tempfile::TempDir;
use tokio::process::{Child, Command};
use toml_edit::DocumentMut;

/// The config's tunable keys; everything else is as in the shipped `config.toml`.
#[derive(Debug, Clone)]
pub struct Conf {
    pub rate: u32,
    pub max_concurrency: u32,
    pub max_attempts: u32,
    pub base_delay: &'static str,
    pub batch_size: usize,
    pub allowance: i64,
    pub reserve: i64,
    pub headers: &'static str,
    pub max_outage: &'static str,
    pub max_delay: &'static str,
    pub lock_stale_after: &'static str,
}

impl Default for Conf {
    fn default() -> Self {
        Conf {
            rate: 5000,
            max_concurrency: 16,
            max_attempts: 3,
            base_delay: "20ms",
            batch_size: 50,
            allowance: 1_000_000,
            reserve: 0,
            headers: "",
            max_outage: "1m",
            max_delay: "1s",
            lock_stale_after: "60s",
        }
    }
}

/// The sample `people` table, on either database: `records` rows (keys
/// 1..=records) as `demo`'s sample (a third never refreshed, the rest on dates
/// spread over the year), and a `writes` column counting every update of
/// `refreshed_at` (a trigger: the one statement each engine writes its own way).
async fn seed_people(db: &AnyPool, postgres: bool, records: u64) {
    let (key, trigger) = if postgres {
        (
            "BIGINT",
            "CREATE FUNCTION count_writes() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN NEW.writes := OLD.writes + 1; RETURN NEW; END $$;
             CREATE TRIGGER count_writes BEFORE UPDATE OF refreshed_at ON people
               FOR EACH ROW EXECUTE FUNCTION count_writes();",
        )
    } else {
        (
            "INTEGER",
            "CREATE TRIGGER count_writes AFTER UPDATE OF refreshed_at ON people
             BEGIN UPDATE people SET writes = writes + 1 WHERE id = NEW.id; END;",
        )
    };
    db.execute(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE people (id {key} PRIMARY KEY, name TEXT NOT NULL, title TEXT, \
         company TEXT, score BIGINT, refreshed_at TEXT, writes BIGINT NOT NULL DEFAULT 0); \
         {trigger}"
    )))
    .await
    .unwrap();
    // Two-digit month and day, written so both engines read it alike.
    let two = |n: &str| format!("CASE WHEN {n} < 10 THEN '0' ELSE '' END || CAST({n} AS TEXT)");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
         INSERT INTO people (id, name, refreshed_at) \
         SELECT i, 'Person ' || CAST(i AS TEXT), CASE WHEN i % 3 = 0 THEN NULL \
           ELSE '2026-' || {} || '-' || {} || 'T08:00:00Z' END FROM n",
        two("1 + i % 10"),
        two("1 + i % 28"),
    )))
    .bind(records as i64)
    .execute(db)
    .await
    .unwrap();
    db.close().await;
}

/// The shipped configuration: every test's config starts from it.
pub const SHIPPED_CONFIG: &str = include_str!("../../config.toml");

/// Sets the dotted `key` (`api.timeout`) of `doc` to `value`.
fn set_key(doc: &mut DocumentMut, key: &str, value: toml_edit::Value) {
    let mut item = doc.as_item_mut();
    for part in key.split('.') {
        item = &mut item[part];
    }
    *item = toml_edit::Item::Value(value);
}

pub struct TestEnv {
    pub dir: TempDir,
    pub sandbox: Option<Sandbox>,
    /// The PostgreSQL database of this test, when the suite runs on PostgreSQL.
    pg: Option<PgDatabase>,
}

/// Which database the suite runs on: `FRESHEN_TEST_DATABASE`.
pub fn on_postgres() -> bool {
    match std::env::var("FRESHEN_TEST_DATABASE").as_deref() {
        Err(_) | Ok("" | "sqlite") => false,
        Ok("postgres") => true,
        Ok(other) => panic!("FRESHEN_TEST_DATABASE={other}: use sqlite or postgres"),
    }
}

fn postgres_server() -> String {
    std::env::var("FRESHEN_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database created for one test and dropped after it.
struct PgDatabase {
    name: String,
}

impl PgDatabase {
    async fn create() -> PgDatabase {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "freshen_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let admin = format!("{}/postgres", postgres_server());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is needed by this test: {e}"));
        conn.execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name}"
        )))
        .await
        .unwrap();
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        conn.close().await.unwrap();
        PgDatabase { name }
    }

    fn url(&self) -> String {
        format!("{}/{}", postgres_server(), self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop is synchronous and may run inside the test's runtime: drop the
        // database from a thread with a runtime of its own.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let admin = format!("{}/postgres", postgres_server());
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = conn
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}

impl TestEnv {
    /// A directory with a `people` table of `records` rows (keys 1..=records); every
    /// update of `refreshed_at` is counted in a `writes` column by a trigger, so a test
    /// can prove each record was written exactly once.
    pub async fn new(records: u64) -> TestEnv {
        TestEnv::seeded(records, on_postgres()).await
    }

    /// As [`TestEnv::new`], on PostgreSQL whatever `FRESHEN_TEST_DATABASE` says:
    /// for what only PostgreSQL does (`run --join`, dropped connections).
    pub async fn new_postgres(records: u64) -> TestEnv {
        TestEnv::seeded(records, true).await
    }

    /// As [`TestEnv::new`], on SQLite whatever `FRESHEN_TEST_DATABASE` says.
    pub async fn new_sqlite(records: u64) -> TestEnv {
        TestEnv::seeded(records, false).await
    }

    async fn seeded(records: u64, postgres: bool) -> TestEnv {
        let env = TestEnv::empty_on(postgres).await;
        env.create_sqlite_file().await;
        seed_people(&env.db().await, postgres, records).await;
        env
    }

    /// A directory (and, on PostgreSQL, an empty database) with no table yet.
    async fn empty() -> TestEnv {
        TestEnv::empty_on(on_postgres()).await
    }

    async fn empty_on(postgres: bool) -> TestEnv {
        let pg = if postgres {
            Some(PgDatabase::create().await)
        } else {
            None
        };
        TestEnv {
            dir: tempfile::tempdir().expect("a temp dir"),
            sandbox: None,
            pg,
        }
    }

    /// A directory whose database (SQLite or PostgreSQL, as `postgres` says) holds
    /// what `sql` makes: the `people` table of a hostile schema, say. One or more
    /// statements, without parameters.
    pub async fn with_schema(postgres: bool, sql: &str) -> TestEnv {
        let env = TestEnv::empty_on(postgres).await;
        env.create_sqlite_file().await;
        let db = env.db().await;
        db.execute(sqlx::AssertSqlSafe(sql.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        db.close().await;
        env
    }

    /// Creates the SQLite file, empty, when the test is on SQLite.
    async fn create_sqlite_file(&self) {
        if self.pg.is_none() {
            let options = SqliteConnectOptions::new()
                .filename(self.db_path())
                .create_if_missing(true);
            SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .unwrap()
                .close()
                .await;
        }
    }

    /// A directory whose `people` table has text keys, as given.
    pub async fn with_text_keys(keys: &[&str]) -> TestEnv {
        let env = TestEnv::empty().await;
        env.create_sqlite_file().await;
        let db = env.db().await;
        db.execute(
            "CREATE TABLE people (id TEXT PRIMARY KEY, title TEXT, company TEXT, score BIGINT, \
             refreshed_at TEXT, writes BIGINT NOT NULL DEFAULT 0)",
        )
        .await
        .unwrap();
        for key in keys {
            sqlx::query("INSERT INTO people (id) VALUES ($1)")
                .bind(*key)
                .execute(&db)
                .await
                .unwrap();
        }
        db.close().await;
        env
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("test.db")
    }

    pub fn db_url(&self) -> String {
        match &self.pg {
            Some(pg) => pg.url(),
            None => format!("sqlite://{}", self.db_path().display()),
        }
    }

    /// Everything the database holds, as bytes: the SQLite file and its WAL, or a
    /// `pg_dump` of the test's PostgreSQL database.
    pub fn database_bytes(&self) -> Vec<u8> {
        match &self.pg {
            Some(pg) => {
                let out = std::process::Command::new("pg_dump")
                    .arg(pg.url())
                    .output()
                    .expect("pg_dump runs");
                assert!(out.status.success(), "{}", text(&out.stderr));
                out.stdout
            }
            None => {
                let mut bytes = std::fs::read(self.db_path()).unwrap();
                bytes
                    .extend(std::fs::read(self.dir.path().join("test.db-wal")).unwrap_or_default());
                bytes
            }
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Starts the sandbox on a free port with these options.
    pub async fn vendor(&mut self, opts: SandboxOptions) -> &Sandbox {
        let opts = SandboxOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..opts
        };
        self.sandbox = Some(Sandbox::start(opts).await.expect("the sandbox starts"));
        self.sandbox.as_ref().unwrap()
    }

    pub fn sandbox(&self) -> &Sandbox {
        self.sandbox.as_ref().expect("vendor() was called")
    }

    /// Waits until the sandbox has seen at least `calls` calls (a run is under way).
    pub async fn wait_for_calls(&self, calls: u64) {
        // Generous: on a loaded 2-core machine a run can take seconds to start.
        for _ in 0..2000 {
            if self.sandbox().stats().requests >= calls {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the vendor did not see {calls} calls within 20 s");
    }

    /// Writes `config.toml`: the shipped one, pointing at the database and the
    /// sandbox, with `c`'s keys set (comments and every other key as shipped).
    pub fn write_config(&self, c: &Conf) {
        let mut doc: DocumentMut = SHIPPED_CONFIG
            .parse()
            .expect("the shipped config.toml parses");
        let base_url = self
            .sandbox
            .as_ref()
            .map_or("http://127.0.0.1:9".into(), Sandbox::base_url);
        let keys: [(&str, toml_edit::Value); 14] = [
            ("database.url", self.db_url().into()),
            ("api.base_url", base_url.into()),
            ("api.timeout", "5s".into()),
            ("limits.rate", i64::from(c.rate).into()),
            (
                "limits.max_concurrency",
                i64::from(c.max_concurrency).into(),
            ),
            ("retry.max_attempts", i64::from(c.max_attempts).into()),
            ("retry.base_delay", c.base_delay.into()),
            ("retry.max_delay", c.max_delay.into()),
            ("retry.max_outage", c.max_outage.into()),
            ("checkpoint.batch_size", (c.batch_size as i64).into()),
            ("checkpoint.interval", "100ms".into()),
            ("credits.allowance", c.allowance.into()),
            ("credits.reserve", c.reserve.into()),
            ("lock.stale_after", c.lock_stale_after.into()),
        ];
        for (key, value) in keys {
            set_key(&mut doc, key, value);
        }
        if !c.headers.is_empty() {
            let headers: DocumentMut = c.headers.parse().expect("Conf::headers is TOML");
            for (key, item) in headers.iter() {
                doc["api"][key] = item.clone();
            }
        }
        std::fs::write(self.config_path(), doc.to_string()).unwrap();
    }

    /// Sets keys of the written config (`("credits.reserve", "10")`: a dotted key
    /// and a TOML value), adding those it lacks; every other line stays as it is.
    pub fn set_keys(&self, keys: &[(&str, &str)]) {
        let text = std::fs::read_to_string(self.config_path()).unwrap();
        let mut doc: DocumentMut = text.parse().expect("the written config parses");
        for (key, value) in keys {
            let value = value
                .parse()
                .unwrap_or_else(|e| panic!("{key} = {value} is not a TOML value: {e}"));
            set_key(&mut doc, key, value);
        }
        std::fs::write(self.config_path(), doc.to_string()).unwrap();
    }

    /// `freshen ARGS --config <this env's config>`, with a cleared environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.bare_command(args);
        cmd.arg("--config").arg(self.config_path());
        cmd
    }

    /// `freshen ARGS` in this env's directory, with a cleared environment.
    pub fn bare_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_freshen"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs freshen to the end and returns its output.
    pub async fn freshen(&self, args: &[&str]) -> Output {
        tokio::time::timeout(Duration::from_secs(120), self.command(args).output())
            .await
            .expect("freshen finished within 2 minutes")
            .expect("freshen started")
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args).spawn().expect("freshen started")
    }

    /// A connection to the test's database, whichever it is.
    pub async fn db(&self) -> AnyPool {
        sqlx::any::install_default_drivers();
        AnyPoolOptions::new()
            .max_connections(1)
            .connect(&self.db_url())
            .await
            .unwrap()
    }

    /// The test's SQLite database, for tests of SQLite itself.
    pub async fn sqlite_db(&self) -> SqlitePool {
        assert!(self.pg.is_none(), "this test is about SQLite");
        let options = SqliteConnectOptions::new()
            .filename(self.db_path())
            .busy_timeout(Duration::from_secs(10));
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap()
    }

    /// Items of the newest run by state: (done, failed, pending).
    pub async fn item_states(&self) -> (i64, i64, i64) {
        self.try_item_states()
            .await
            .expect("freshen's tables exist")
    }

    /// Like `item_states`, or an error while freshen has not created its tables yet.
    pub async fn try_item_states(&self) -> Result<(i64, i64, i64), sqlx::Error> {
        let db = self.db().await;
        let row = sqlx::query(
            "SELECT COUNT(CASE WHEN state = 'done' THEN 1 END), \
             COUNT(CASE WHEN state = 'failed' THEN 1 END), \
             COUNT(CASE WHEN state = 'pending' THEN 1 END) FROM freshen_items \
             WHERE run_id = (SELECT MAX(id) FROM freshen_runs)",
        )
        .fetch_one(&db)
        .await;
        db.close().await;
        let row = row?;
        Ok((row.get(0), row.get(1), row.get(2)))
    }

    /// Every record: (id, title, company, score, writes, refreshed_at is set).
    pub async fn records(&self) -> Vec<Record> {
        let db = self.db().await;
        let rows = sqlx::query(
            "SELECT id, title, company, score, writes, refreshed_at FROM people ORDER BY id",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        db.close().await;
        rows.iter()
            .map(|r| Record {
                id: r.get(0),
                title: r.get(1),
                company: r.get(2),
                score: r.get(3),
                writes: r.get(4),
                refreshed_at: r.get(5),
            })
            .collect()
    }

    /// Asserts that the table holds `count` records, each written exactly once
    /// (the trigger's count) with the vendor's values.
    pub async fn assert_each_written_once(&self, count: usize) {
        let records = self.records().await;
        assert_eq!(records.len(), count);
        for r in &records {
            assert_eq!(r.writes, 1, "record {} written {} times", r.id, r.writes);
            assert!(r.matches_vendor(), "record {} holds {r:?}", r.id);
        }
    }

    /// Asserts that the vendor answered exactly one 429 (with `Retry-After: 1`),
    /// that no call arrived within `quiet` after it, and that calls came again
    /// once its second was over.
    pub fn assert_one_throttle_paused_all(&self, quiet: std::ops::Range<Duration>) {
        let timeline = self.sandbox().timeline();
        assert_eq!(timeline.throttled.len(), 1);
        let t = timeline.throttled[0];
        let during = timeline
            .arrivals
            .iter()
            .filter(|a| **a > t + quiet.start && **a < t + quiet.end)
            .count();
        assert_eq!(during, 0, "calls during the pause");
        assert!(
            timeline
                .arrivals
                .iter()
                .any(|a| *a >= t + Duration::from_secs(1)),
            "the run went on after the pause"
        );
    }

    /// Credits spent in every period, as the ledger counts them.
    pub async fn period_spent(&self) -> i64 {
        let db = self.db().await;
        let spent = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(spent), 0) AS BIGINT) FROM freshen_credit_periods",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        db.close().await;
        spent
    }

    /// The state and reason of one record's item in the newest run.
    pub async fn item(&self, key: &str) -> (String, Option<String>, i64) {
        let db = self.db().await;
        let row = sqlx::query(
            "SELECT state, reason, attempts FROM freshen_items \
             WHERE run_id = (SELECT MAX(id) FROM freshen_runs) AND key = $1",
        )
        .bind(key)
        .fetch_one(&db)
        .await;
        db.close().await;
        let row = row.expect("the key is in the newest run");
        (row.get(0), row.get(1), row.get(2))
    }
}

#[derive(Debug)]
pub struct Record {
    pub id: i64,
    pub title: Option<String>,
    pub company: Option<String>,
    pub score: Option<i64>,
    pub writes: i64,
    pub refreshed_at: Option<String>,
}

impl Record {
    /// Whether the record holds exactly what the sandbox answers for its key.
    pub fn matches_vendor(&self) -> bool {
        let p = freshen::sandbox::person(&self.id.to_string());
        self.title.as_deref() == p["title"].as_str()
            && self.company.as_deref() == p["company"].as_str()
            && self.score == p["score"].as_i64()
    }
}

/// Waits for a spawned freshen (at most 2 minutes: a hang fails the test) and
/// returns its output.
pub async fn finish(child: Child) -> Output {
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("freshen finished within 2 minutes")
        .expect("freshen ran")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit code, showing the output when it differs.
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

// ---- helpers for the security, hostile-vendor and database-fault tests ----------

impl TestEnv {
    /// Rewrites the config file through `edit`, which must change it.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let before = std::fs::read_to_string(self.config_path()).unwrap();
        let after = edit(before.clone());
        assert_ne!(before, after, "the edit changed nothing");
        std::fs::write(self.config_path(), after).unwrap();
    }

    /// Runs freshen to the end with these extra environment variables.
    pub async fn freshen_with_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .expect("freshen finished within 2 minutes")
            .expect("freshen started")
    }

    /// Every row of every table, each value through SQLite's `quote()`, one line a row.
    pub async fn dump(&self) -> String {
        let db = self.sqlite_db().await;
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                .fetch_all(&db)
                .await
                .unwrap();
        let mut out = String::new();
        for table in tables {
            let columns: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_table_info($1) ORDER BY cid")
                    .bind(&table)
                    .fetch_all(&db)
                    .await
                    .unwrap();
            let row = columns
                .iter()
                .map(|c| format!("quote(\"{c}\")"))
                .collect::<Vec<_>>()
                .join(" || '|' || ");
            let sql = format!("SELECT {row} FROM \"{table}\"");
            let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_all(&db)
                .await
                .unwrap();
            out.push_str(&format!("-- {table}\n"));
            for r in rows {
                out.push_str(&r);
                out.push('\n');
            }
        }
        db.close().await;
        out
    }

    /// Rows of the `people` table.
    pub async fn records_count(&self) -> i64 {
        let db = self.db().await;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM people")
            .fetch_one(&db)
            .await
            .unwrap();
        db.close().await;
        n
    }

    /// `PRAGMA integrity_check`: "ok" for a sound database file.
    pub async fn integrity(&self) -> String {
        let db = self.sqlite_db().await;
        let check: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&db)
            .await
            .unwrap();
        db.close().await;
        check
    }
}

/// A second sandbox on a free loopback port, beside the env's own.
pub async fn another_sandbox(opts: SandboxOptions) -> Sandbox {
    Sandbox::start(SandboxOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..opts
    })
    .await
    .expect("the sandbox starts")
}
