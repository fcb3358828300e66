//! The database misbehaving under a run: locked by another writer, removed, or
//! altered. freshen waits where waiting helps, stops with a message that names the
//! problem where it does not, and never leaves a record half written.

use std::time::Duration;

use freshen::sandbox::SandboxOptions;
use sqlx::Executor;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};

use crate::harness::{Conf, TestEnv, assert_exit, finish, text};

/// Another writer: a connection holding SQLite's write lock until dropped.
async fn hold_write_lock(env: &TestEnv) -> SqliteConnection {
    let mut conn =
        SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(env.db_path()))
            .await
            .unwrap();
    conn.execute("BEGIN EXCLUSIVE").await.unwrap();
    conn
}

/// A vendor slow enough that a run is still going when the test acts on it.
async fn slow_env(records: u64) -> TestEnv {
    let mut env = TestEnv::new(records).await;
    env.vendor(SandboxOptions {
        latency: Duration::from_millis(20),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        max_concurrency: 4,
        batch_size: 10,
        ..Conf::default()
    });
    env
}

/// Each item done has its record written once with the vendor's values, and each
/// record not done was not written at all: no record is half written.
async fn nothing_half_written(env: &TestEnv) {
    let db = env.db().await;
    let done: Vec<i64> = sqlx::query_scalar(
        "SELECT CAST(key AS INTEGER) FROM freshen_items \
         WHERE run_id = (SELECT MAX(id) FROM freshen_runs) AND state = 'done'",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    for r in env.records().await {
        if done.contains(&r.id) {
            assert!(
                r.writes == 1 && r.matches_vendor() && r.refreshed_at.is_some(),
                "{r:?}"
            );
        } else {
            assert_eq!(r.writes, 0, "{r:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_writer_is_waited_for() {
    let mut env = TestEnv::new(20).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    let lock = hold_write_lock(&env).await;
    let mut child = env.spawn(&["run"]);
    // While the other writer holds the lock, freshen waits (busy timeout 10 s).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "freshen gave up at once"
    );
    assert_eq!(env.sandbox().stats().requests, 0);
    lock.close().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(env.item_states().await, (20, 0, 0));
    nothing_half_written(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_past_the_busy_timeout_is_reported_and_left_sound() {
    let mut env = TestEnv::new(20).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    let lock = hold_write_lock(&env).await;
    let out = env.freshen(&["run"]).await;
    lock.close().await.unwrap();
    assert_exit(&out, 1);
    let err = text(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with("error: cannot open the database")
                && l.contains("locked by another writer")),
        "{err}"
    );
    assert_eq!(
        env.sandbox().stats().requests,
        0,
        "no call without a database"
    );
    assert_eq!(env.integrity().await, "ok");
    // Once the other writer is gone, the same command does the job.
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    assert_eq!(env.item_states().await, (20, 0, 0));
    nothing_half_written(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_file_removed_mid_run_stops_with_a_clear_error() {
    let env = slow_env(400).await;
    let child = env.spawn(&["run"]);
    env.wait_for_calls(40).await;
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", env.db_path().display());
        let _ = std::fs::remove_file(path);
    }
    let out = finish(child).await;
    let (status, stderr) = (out.status, text(&out.stderr));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("was removed or replaced during the run")
            && stderr.contains(&env.db_path().display().to_string()),
        "{stderr}"
    );
    // It stopped instead of calling the vendor for records it can no longer keep.
    assert!(env.sandbox().stats().requests < 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_column_dropped_from_the_table_is_named_at_start() {
    let mut env = TestEnv::new(3).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    let db = env.db().await;
    db.execute("ALTER TABLE people DROP COLUMN score")
        .await
        .unwrap();
    db.close().await;
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 2);
    let err = text(&out.stderr);
    assert!(
        err.contains("api.response.\"/score\"") && err.contains("`score`") && err.contains("lacks"),
        "{err}"
    );
    assert_eq!(env.sandbox().stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_column_dropped_mid_run_stops_without_writing_half() {
    let env = slow_env(400).await;
    let child = env.spawn(&["run"]);
    env.wait_for_calls(40).await;
    let db = env.db().await;
    db.execute("ALTER TABLE people DROP COLUMN score")
        .await
        .unwrap();
    db.close().await;
    let out = finish(child).await;
    let (status, stderr) = (out.status, text(&out.stderr));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("score"), "{stderr}");
    assert_eq!(env.integrity().await, "ok");
    // Records written before the change are whole; the batch that failed left no trace.
    let db = env.db().await;
    let rows =
        sqlx::query("SELECT COUNT(*), COALESCE(SUM(writes), 0) FROM people WHERE writes > 0")
            .fetch_one(&db)
            .await
            .unwrap();
    let (written, writes): (i64, i64) = (rows.get(0), rows.get(1));
    let done: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM freshen_items WHERE run_id = (SELECT MAX(id) FROM freshen_runs) \
         AND state = 'done'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    assert_eq!((written, writes), (done, done));
    let (_, _, pending) = env.item_states().await;
    assert!(pending > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_mid_run_past_the_busy_timeout_stops_without_writing_half() {
    let env = slow_env(400).await;
    // Its run lock cannot be released while the database is locked either: it goes
    // stale, and the rerun below takes it over.
    env.write_config(&Conf {
        max_concurrency: 4,
        batch_size: 10,
        lock_stale_after: "1s",
        ..Conf::default()
    });
    let child = env.spawn(&["run"]);
    env.wait_for_calls(40).await;
    let lock = hold_write_lock(&env).await;
    let out = finish(child).await;
    lock.close().await.unwrap();
    let (status, stderr) = (out.status, text(&out.stderr));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("error: ") && l.contains("database is locked")),
        "{stderr}"
    );
    assert_eq!(env.integrity().await, "ok");
    nothing_half_written(&env).await;
    // The same command resumes and finishes the job.
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    assert_eq!(env.item_states().await, (400, 0, 0));
    nothing_half_written(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_is_reported_as_read_only() {
    // The run is made as `nobody`, to whom the database (root's, 0644) is
    // read-only. (A file made read-only under a running process cannot be had:
    // its open descriptors keep writing, and a read-only remount is refused
    // while files are open for writing.)
    let env = slow_env(20).await;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(env.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = tokio::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_freshen"))
        .arg("run")
        .arg("--config")
        .arg(env.config_path())
        .env_clear()
        .output()
        .await
        .expect("setpriv runs (util-linux)");
    assert_exit(&out, 1);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("read-only to this process"), "{stderr}");
    assert!(
        !stderr.contains("locked"),
        "not mistaken for a lock: {stderr}"
    );
    assert_eq!(env.sandbox().stats().requests, 0);
    assert_eq!(env.integrity().await, "ok");
}

/// The filesystem under the database turns read-only mid-run. The kernel will
/// not remount a filesystem read-only while files are open for writing, so
/// `fixtures/erofs.c`, preloaded into freshen, makes every write to the
/// database's files fail with EROFS from the moment a flag file appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_made_read_only_mid_run_stops_without_writing_half() {
    let env = slow_env(400).await;
    // The lock cannot be released on a read-only database either: it goes
    // stale, and the rerun takes it over.
    env.write_config(&Conf {
        max_concurrency: 4,
        batch_size: 10,
        lock_stale_after: "1s",
        ..Conf::default()
    });
    let shim = env.dir.path().join("erofs.so");
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&shim)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/fixtures/erofs.c"
        ))
        .arg("-ldl")
        .output()
        .expect("cc runs");
    assert!(built.status.success(), "{}", text(&built.stderr));
    let flag = env.dir.path().join("read-only-now");
    let child = env
        .command(&["run"])
        .env("LD_PRELOAD", &shim)
        .env("FRESHEN_EROFS_FLAG", &flag)
        .env("FRESHEN_EROFS_MATCH", env.db_path())
        .spawn()
        .unwrap();
    env.wait_for_calls(60).await;
    std::fs::write(&flag, b"").unwrap();
    let out = finish(child).await;
    let (status, stderr) = (out.status, text(&out.stderr));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("could not write to the database"),
        "{stderr}"
    );
    // The filesystem is writable again: what was committed is sound and whole,
    // the batch that failed left nothing, and the rerun finishes the rest.
    std::fs::remove_file(&flag).unwrap();
    assert_eq!(env.integrity().await, "ok");
    nothing_half_written(&env).await;
    let (done, _, pending) = env.item_states().await;
    assert!(done > 0 && pending > 0, "{done} done, {pending} pending");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_exit(&env.freshen(&["run"]).await, 0);
    env.assert_each_written_once(400).await;
}

/// Each way of naming the database wrong gets a message that blames the right
/// place, names the database once (engine, user, host) and comes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_messages_blame_the_right_place_and_name_the_database() {
    let env = TestEnv::new_sqlite(5).await;
    env.write_config(&Conf::default());

    // A bad --database-url is the flag's fault, not config.toml's.
    let out = env
        .freshen(&["status", "--database-url", "mysql://u@h/db"])
        .await;
    assert_exit(&out, 2);
    let err = text(&out.stderr);
    assert!(
        err.contains("--database-url") && !err.contains("database.url in"),
        "{err}"
    );

    // A missing PostgreSQL database: engine, user, host and name, the cause once.
    let server = std::env::var("FRESHEN_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let missing = format!("{server}/freshen_no_such_database");
    let out = env.freshen(&["status", "--database-url", &missing]).await;
    assert_exit(&out, 1);
    let err = text(&out.stderr);
    assert!(err.contains(&missing), "{err}");
    assert_eq!(err.matches("does not exist").count(), 1, "{err}");
    assert!(!err.contains("(database url)"), "{err}");

    // A closed port: said as such, not "pool timed out" after 30 s.
    let out = env
        .freshen(&[
            "status",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/x",
        ])
        .await;
    assert_exit(&out, 1);
    let err = text(&out.stderr);
    assert!(
        err.contains("connection refused") && !err.contains("timed out"),
        "{err}"
    );
}

/// A relative SQLite path in config.toml is read from the config file's
/// directory, like api.ca_file, wherever freshen runs; errors show the resolved path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_sqlite_path_is_relative_to_the_config_file() {
    let env = TestEnv::new_sqlite(5).await;
    env.write_config(&Conf::default());
    env.edit_config(|c| c.replace(&env.db_url(), "sqlite://test.db"));
    let elsewhere = tempfile::tempdir().unwrap();
    let out = env
        .command(&["status"])
        .current_dir(elsewhere.path())
        .output()
        .await
        .unwrap();
    assert_exit(&out, 0);
    assert!(!elsewhere.path().join("test.db").exists());

    env.edit_config(|c| c.replace("sqlite://test.db", "sqlite://gone.db"));
    let out = env
        .command(&["status"])
        .current_dir(elsewhere.path())
        .output()
        .await
        .unwrap();
    assert_exit(&out, 1);
    let resolved = env.dir.path().join("gone.db");
    assert!(
        text(&out.stderr).contains(&resolved.display().to_string()),
        "{}",
        text(&out.stderr)
    );
}
