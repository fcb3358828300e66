//! Cron safety: one run at a time per table; a dead holder's lock is taken over at
//! once (it dies with its process: an OS file lock, a database session); signals
//! drain; PostgreSQL's lock and statement timeouts; migrations that two first
//! starts cannot collide in.

use std::time::{Duration, Instant};

use freshen::sandbox::SandboxOptions;
use sqlx::{Connection, Executor};

use crate::harness::{Conf, TestEnv, assert_exit, text};

/// Sends `signal` (`-INT`, `-HUP`, `-TERM`) to the child.
async fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("the child runs").to_string();
    let kill = tokio::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
}

/// A lock that is stale only after this long: a rerun that waits for staleness
/// is unmistakable (the harness gives a run two minutes).
const TEN_MINUTES: &str = "10m";

async fn status_json(env: &TestEnv) -> serde_json::Value {
    let out = env.freshen(&["status", "--json", "--offline"]).await;
    assert_exit(&out, 0);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_exits_5_naming_the_holder_and_a_killed_holder_blocks_nothing() {
    let mut env = TestEnv::new(100).await;
    env.vendor(SandboxOptions {
        latency: Duration::from_millis(200),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 50,
        max_concurrency: 4,
        lock_stale_after: TEN_MINUTES,
        ..Conf::default()
    });

    let mut first = env.spawn(&["run"]);
    env.wait_for_calls(12).await;
    let pid = first.id().unwrap();
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 5);
    let err = text(&out.stderr);
    assert!(
        err.contains("holds the lock") && err.contains(&format!(":{pid} ")),
        "{err}"
    );
    assert!(err.contains("lock.stale_after"), "{err}");
    let status = status_json(&env).await;
    assert_eq!(status["lock"]["live"], true, "{status:#}");

    // The holder dies without releasing: its lock dies with it. status says so,
    // and counts no credits reserved by it.
    first.kill().await.unwrap();
    first.wait().await.unwrap();
    let status = status_json(&env).await;
    assert_eq!(status["lock"]["live"], false, "{status:#}");
    assert_eq!(status["credits"]["reserved"], 0, "{status:#}");

    // An immediate rerun takes the lock over and resumes.
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    assert!(
        text(&out.stderr).contains("resuming run 1"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env.item_states().await, (100, 0, 0));
    assert!(env.records().await.iter().all(|r| r.writes == 1));

    // Released at the end: the next run is not locked out.
    assert_exit(&env.freshen(&["run"]).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_exits_at_once_and_leaves_nothing_that_blocks() {
    let mut env = TestEnv::new(50).await;
    // Every answer takes 3 s: draining the calls in flight would take that long.
    env.vendor(SandboxOptions {
        latency: Duration::from_secs(3),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 100,
        max_concurrency: 4,
        lock_stale_after: TEN_MINUTES,
        ..Conf::default()
    });

    let child = env.spawn(&["run"]);
    env.wait_for_calls(2).await;
    for _ in 0..2 {
        signal(&child, "-INT").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_exit(&out, 130);

    // Straight after: not locked out, and the run resumes to the end.
    // (A quick vendor now, for the rest.)
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf {
        rate: 100,
        max_concurrency: 4,
        lock_stale_after: TEN_MINUTES,
        ..Conf::default()
    });
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    assert!(
        text(&out.stderr).contains("resuming run 1"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env.item_states().await, (50, 0, 0));
    assert!(env.records().await.iter().all(|r| r.writes == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_drains_and_checkpoints_like_sigterm() {
    let mut env = TestEnv::new(1000).await;
    env.vendor(SandboxOptions {
        latency: Duration::from_millis(50),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 400,
        max_concurrency: 8,
        lock_stale_after: TEN_MINUTES,
        ..Conf::default()
    });

    let child = env.spawn(&["run"]);
    env.wait_for_calls(100).await;
    signal(&child, "-HUP").await;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_exit(&out, 130);

    // Every call the vendor answered is written: none lost to the hangup.
    let (done, failed, pending) = env.item_states().await;
    let stats = env.sandbox().stats();
    assert_eq!(done as u64, stats.ok, "{stats:?}");
    assert_eq!(stats.ok, stats.requests, "{stats:?}");
    assert!(pending > 0 && failed == 0);
    let written = env.records().await.iter().filter(|r| r.writes == 1).count();
    assert_eq!(written as u64, stats.requests);

    assert_exit(&env.freshen(&["run"]).await, 0);
    env.assert_each_written_once(1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_first_starts_on_a_fresh_sqlite_database_take_turns() {
    for attempt in 0..5 {
        let mut env = TestEnv::new_sqlite(100).await;
        env.vendor(SandboxOptions {
            latency: Duration::from_millis(100),
            ..SandboxOptions::default()
        })
        .await;
        env.write_config(&Conf {
            rate: 100,
            max_concurrency: 4,
            lock_stale_after: TEN_MINUTES,
            ..Conf::default()
        });
        let (a, b) = tokio::join!(env.freshen(&["run"]), env.freshen(&["run"]));
        let mut codes = [a.status.code(), b.status.code()];
        codes.sort();
        assert_eq!(
            codes,
            [Some(0), Some(5)],
            "attempt {attempt}: one runs, the other is locked out\nA: {}\nB: {}",
            text(&a.stderr),
            text(&b.stderr)
        );
        env.assert_each_written_once(100).await;
    }
}

/// A PostgreSQL session that holds `LOCK TABLE people IN ACCESS EXCLUSIVE MODE`
/// in an open transaction, as `adversary`.
async fn lock_the_table(env: &TestEnv) -> sqlx::PgConnection {
    let mut conn =
        sqlx::PgConnection::connect(&format!("{}?application_name=adversary", env.db_url()))
            .await
            .unwrap();
    conn.execute("BEGIN").await.unwrap();
    conn.execute("LOCK TABLE people IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_another_session_locks_stops_the_run_naming_the_holder() {
    let mut env = TestEnv::new_postgres(50).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    env.set_keys(&[("database.lock_timeout", "\"2s\"")]);
    // Migrations first, so the plan is what waits.
    assert_exit(&env.freshen(&["status", "--offline"]).await, 0);

    let adversary = lock_the_table(&env).await;
    let started = Instant::now();
    let out = env.freshen(&["run"]).await;
    let took = started.elapsed();
    assert_exit(&out, 1);
    let err = text(&out.stderr);
    assert!(err.contains("database.lock_timeout (2s)"), "{err}");
    assert!(
        err.contains("application_name `adversary`")
            && err.contains("AccessExclusiveLock on people"),
        "{err}"
    );
    // Generous: the point is that it does not wait for the other session.
    assert!(took < Duration::from_secs(60), "{took:?}");
    adversary.close().await.unwrap();

    // Once the other session is gone, the run goes through.
    assert_exit(&env.freshen(&["run"]).await, 0);
    env.assert_each_written_once(50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_out_another_sessions_lock() {
    let mut env = TestEnv::new_postgres(2000).await;
    env.vendor(SandboxOptions {
        latency: Duration::from_millis(20),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 200,
        max_concurrency: 4,
        ..Conf::default()
    });
    // Far longer than the test waits: only the stop can end the wait.
    env.set_keys(&[("database.lock_timeout", "\"10m\"")]);

    let child = env.spawn(&["run"]);
    env.wait_for_calls(50).await;
    let adversary = lock_the_table(&env).await;
    // The next checkpoint waits for the table.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    signal(&child, "-TERM").await;
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("SIGTERM ends the run within a minute while the table stays locked")
        .unwrap();
    let took = started.elapsed();
    assert_exit(&out, 1);
    let err = text(&out.stderr);
    assert!(err.contains("application_name `adversary`"), "{err}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    adversary.close().await.unwrap();

    // What was checkpointed before stays; the rest resumes, nothing twice.
    assert_exit(&env.freshen(&["run"]).await, 0);
    env.assert_each_written_once(2000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_marks_a_dead_worker_gone_and_prunes_its_row_once_it_holds_nothing() {
    let mut env = TestEnv::new_postgres(400).await;
    env.vendor(SandboxOptions {
        latency: Duration::from_millis(200),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 50,
        max_concurrency: 4,
        lock_stale_after: TEN_MINUTES,
        ..Conf::default()
    });
    let mut worker = env.spawn(&["run", "--join"]);
    env.wait_for_calls(12).await;
    worker.kill().await.unwrap();
    worker.wait().await.unwrap();

    // Its heartbeat is fresh, but its process is gone from this host.
    let status = status_json(&env).await;
    let listed = status["run"]["workers"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1, "{status:#}");
    assert_eq!(listed[0]["live"], false, "{status:#}");
    assert_eq!(status["lock"]["live"], false, "{status:#}");
    // Its reservation, if any, counts as spent in the ledger (the calls it had
    // out may have been billed), so its row can go at once.
    assert_eq!(listed[0]["pruned"], true, "{status:#}");
    let status = status_json(&env).await;
    assert_eq!(
        status["run"]["workers"],
        serde_json::json!([]),
        "{status:#}"
    );

    // The lock died with the worker: a plain run resumes at once.
    assert_exit(&env.freshen(&["run"]).await, 0);
    env.assert_each_written_once(400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_old_samples_and_finished_runs_items_and_says_how_many() {
    let mut env = TestEnv::new(60).await;
    env.vendor(SandboxOptions {
        latency: Duration::from_millis(20),
        ..SandboxOptions::default()
    })
    .await;
    // About three seconds a run: a few samples each.
    env.write_config(&Conf {
        rate: 20,
        max_concurrency: 4,
        ..Conf::default()
    });
    assert_exit(&env.freshen(&["run"]).await, 0);
    assert_exit(&env.freshen(&["run", "--new"]).await, 0);
    let db = env.db().await;
    let count = |sql: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    // Run 1 finished two months ago; the samples of runs 1 and 2 are as old.
    sqlx::query("UPDATE freshen_runs SET finished_at = '2020-01-01T00:00:00Z' WHERE id = 1")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE freshen_samples SET at_ms = at_ms - 5184000000 WHERE run_id IN (1, 2)")
        .execute(&db)
        .await
        .unwrap();
    // Run 3 starts now: run 2 finished a moment ago and keeps its items; run 3
    // keeps its samples.
    assert_exit(&env.freshen(&["run", "--new"]).await, 0);
    let old_samples = count("SELECT COUNT(*) FROM freshen_samples WHERE run_id IN (1, 2)").await;
    let all_samples = count("SELECT COUNT(*) FROM freshen_samples").await;
    assert!(old_samples >= 2, "{old_samples}");
    assert_eq!(
        count("SELECT COUNT(*) FROM freshen_items WHERE run_id = 1").await,
        60
    );

    let removed = |out: &std::process::Output| {
        assert_exit(out, 0);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            v["removed"]["samples"].as_i64().unwrap(),
            v["removed"]["items"].as_i64().unwrap(),
            v["removed"]["runs"].as_i64().unwrap(),
        )
    };
    let dry = env
        .freshen(&["prune", "--older-than", "30d", "--dry-run", "--json"])
        .await;
    assert_eq!(removed(&dry), (old_samples, 60, 1));
    assert_eq!(
        count("SELECT COUNT(*) FROM freshen_samples").await,
        all_samples
    );

    let out = env
        .freshen(&["prune", "--older-than", "30d", "--json"])
        .await;
    assert_eq!(removed(&out), (old_samples, 60, 1));
    assert_eq!(
        count("SELECT COUNT(*) FROM freshen_items WHERE run_id = 1").await,
        0
    );
    // The runs finished since keep their items, and every run its row and counts.
    assert_eq!(
        count("SELECT COUNT(*) FROM freshen_items WHERE run_id > 1").await,
        120
    );
    assert_eq!(count("SELECT COUNT(*) FROM freshen_runs").await, 3);
    assert!(count("SELECT COUNT(*) FROM freshen_samples WHERE run_id = 3").await > 0);
    assert_eq!(
        count("SELECT COUNT(*) FROM freshen_samples").await,
        all_samples - old_samples
    );
    db.close().await;

    // The estimate's history leaves the pruned run out whole: its credits
    // without its records would read as a 50% retry overhead.
    let estimate = env.freshen(&["estimate", "--json", "--offline"]).await;
    assert_exit(&estimate, 0);
    assert!(
        text(&estimate.stdout).contains("\"retry_overhead\": 0.0"),
        "{}",
        text(&estimate.stdout)
    );

    let text_out = env.freshen(&["prune", "--older-than", "30d"]).await;
    assert_exit(&text_out, 0);
    assert!(
        text(&text_out.stdout).starts_with("removed 0 samples"),
        "{}",
        text(&text_out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_holder_is_taken_over_after_stale_after_and_stops_when_it_resumes() {
    let mut env = TestEnv::new(300).await;
    env.vendor(SandboxOptions {
        latency: Duration::from_millis(50),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 40,
        max_concurrency: 2,
        lock_stale_after: "6s",
        ..Conf::default()
    });
    let first = env.spawn(&["run"]);
    env.wait_for_calls(10).await;
    // Stopped, its process (and its OS or session lock) stays: only the
    // heartbeat's age lets another run in.
    signal(&first, "-STOP").await;
    let stopped = Instant::now();
    let out = env.freshen(&["run"]).await;
    // (Unless this machine took longer than stale_after to start that run.)
    if stopped.elapsed() < Duration::from_secs(5) {
        assert_exit(&out, 5);
    }
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(stopped.elapsed())).await;
    let second = env.spawn(&["run"]);
    env.wait_for_calls(env.sandbox().stats().requests + 10)
        .await;
    signal(&first, "-CONT").await;
    let first = crate::harness::finish(first).await;
    // It stopped calling as soon as it could tell: its own lease refused (exit
    // 5, fenced) or the table's lock found taken over (exit 130), whichever it
    // saw first.
    assert!(
        matches!(first.status.code(), Some(5 | 130)),
        "{:?}\n{}",
        first.status,
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        text(&first.stderr).contains("another run took over the lock")
            || text(&first.stderr).contains("heartbeat went stale"),
        "{}",
        text(&first.stderr)
    );
    let second = crate::harness::finish(second).await;
    assert_exit(&second, 0);
    assert_eq!(env.item_states().await, (300, 0, 0));
}
