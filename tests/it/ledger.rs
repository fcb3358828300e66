//! One credit ledger for every run in the database: runs of two tables share a
//! period's budget, a run spends from the period current when each call is sent,
//! a killed run's calls in flight are counted as spent, a process suspended past
//! its lease stops spending, and the workers of a joined run hand each other
//! the last credits instead of waiting on each other forever.

use std::time::Duration;

use freshen::sandbox::SandboxOptions;
use sqlx::Executor;

use crate::harness::{Conf, TestEnv, assert_exit, finish, text};

/// The period's spent, by period.
async fn periods(env: &TestEnv) -> Vec<(String, i64)> {
    let db = env.db().await;
    let rows = sqlx::query_as("SELECT period, spent FROM freshen_credit_periods ORDER BY period")
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    rows
}

async fn spent(env: &TestEnv) -> i64 {
    periods(env).await.iter().map(|(_, s)| s).sum()
}

/// A second table, `people2`, with the same records as `people`, and a config
/// for it beside the first.
async fn second_table(env: &TestEnv) -> std::path::PathBuf {
    let db = env.db().await;
    db.execute(
        "CREATE TABLE people2 (id BIGINT PRIMARY KEY, name TEXT, title TEXT, company TEXT, \
         score BIGINT, refreshed_at TEXT)",
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO people2 (id, name, refreshed_at) SELECT id, name, refreshed_at FROM people",
    )
    .await
    .unwrap();
    db.close().await;
    let config = std::fs::read_to_string(env.config_path()).unwrap();
    let path = env.dir.path().join("people2.toml");
    std::fs::write(
        &path,
        config.replace("table = \"people\"", "table = \"people2\""),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_two_tables_share_the_periods_budget() {
    let mut env = TestEnv::new(5000).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf {
        rate: 2000,
        allowance: 6000,
        reserve: 0,
        ..Conf::default()
    });
    let other = second_table(&env).await;
    let first = env.spawn(&["run"]);
    let mut second = env.bare_command(&["run"]);
    second.arg("--config").arg(&other);
    let second = second.spawn().unwrap();
    let (a, b) = (finish(first).await, finish(second).await);
    let codes = [a.status.code(), b.status.code()];
    assert!(
        codes.contains(&Some(3)),
        "one of them stops at the budget: {codes:?}\n{}\n{}",
        text(&a.stderr),
        text(&b.stderr)
    );
    assert_eq!(spent(&env).await, 6000, "exactly the allowance, not 10,000");
    assert_eq!(env.sandbox().stats().ok, 6000, "billed by the vendor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_after_the_periods_reset_are_charged_to_the_new_period() {
    let mut env = TestEnv::new(8000).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf {
        rate: 500,
        allowance: 3000,
        reserve: 0,
        ..Conf::default()
    });
    // Two seconds before a month's end (credits.reset_day = 1, UTC), by the
    // clock credit periods are reckoned with.
    let out = env
        .freshen_with_env(&["run"], &[("FRESHEN_FAKE_NOW", "2026-11-30T23:59:58Z")])
        .await;
    assert_exit(&out, 3);
    let by_period = periods(&env).await;
    let nov = by_period
        .iter()
        .find(|(p, _)| p == "2026-11-01")
        .map_or(0, |(_, s)| *s);
    let dec = by_period
        .iter()
        .find(|(p, _)| p == "2026-12-01")
        .map_or(0, |(_, s)| *s);
    assert_eq!(
        dec, 3000,
        "the new period's allowance is spent: {by_period:?}"
    );
    // About two seconds at 500/s before the reset, and never the whole old allowance.
    assert!((1..3000).contains(&nov), "{by_period:?}");
    assert_eq!(nov + dec, env.sandbox().stats().ok as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_never_push_the_vendors_bill_past_the_allowance() {
    let env = killed_four_times(3000).await;
    let out = unlocked_run(&env).await;
    assert_exit(&out, 3);
    let billed = env.sandbox().stats().ok as i64;
    let ledger = spent(&env).await;
    assert!(
        billed <= 3000,
        "the vendor billed {billed} of an allowance of 3000"
    );
    assert_eq!(ledger, 3000, "the ledger reaches the allowance exactly");
    // What the ledger counts but the vendor never billed: what each dead run
    // held unsent (at most one and a half blocks of 4 x 32 calls in hand, and
    // the reservations of the 4 x 32 records it had dispatched).
    assert!(
        ledger - billed <= 4 * (192 + 128),
        "ledger {ledger}, billed {billed}"
    );
    let db = env.db().await;
    let uncertain: i64 = sqlx::query_scalar("SELECT uncertain FROM freshen_credit_periods")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    assert!(
        uncertain >= ledger - billed,
        "the dead runs' reservations are counted as uncertain: {uncertain}"
    );
}

#[tokio::test]
async fn a_killed_run_counts_what_it_sent_and_gives_back_what_it_held_unsent() {
    let env = killed_four_times(100_000).await;
    let out = unlocked_run(&env).await;
    assert_exit(&out, 0);
    let billed = env.sandbox().stats().ok as i64;
    let ledger = spent(&env).await;
    // The calls each killed run had out are billed (the sandbox serves a call
    // to its end, as vendors do) and counted; what it held granted and unsent
    // (up to one and a half blocks of 32 calls) goes back. Only a call counted
    // as sent in the instant before its request was written can be over: one
    // a worker at the most, 32 a kill (seen: 0 to 9 over the four kills; the
    // reaper before the sent log was 475 over).
    assert!(
        billed <= ledger && ledger <= billed + 4 * 32,
        "ledger {ledger}, billed {billed}"
    );
}

/// 6,000 records, a vendor at 50 ms, and four runs each SIGKILLed once it has
/// made 400 more calls.
async fn killed_four_times(allowance: i64) -> TestEnv {
    let mut env = TestEnv::new(6000).await;
    env.vendor(SandboxOptions {
        latency: Duration::from_millis(50),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 1000,
        max_concurrency: 32,
        allowance,
        reserve: 0,
        lock_stale_after: "2s",
        ..Conf::default()
    });
    for _ in 0..4 {
        let mut child = working(&env, 400).await;
        child.kill().await.unwrap();
        child.wait().await.unwrap();
    }
    env
}

/// A run that has made `calls` more calls. A run that finds the table still
/// locked by one just killed (exit 5) is started again until it works.
async fn working(env: &TestEnv, calls: u64) -> tokio::process::Child {
    let target = env.sandbox().stats().requests + calls;
    loop {
        let mut child = env.spawn(&["run"]);
        loop {
            if env.sandbox().stats().requests >= target {
                return child;
            }
            if let Some(status) = child.try_wait().unwrap() {
                if status.code() != Some(5) {
                    let out = child.wait_with_output().await.unwrap();
                    panic!(
                        "only a lock can stop it this early: {status}\n{}\n{}",
                        text(&out.stdout),
                        text(&out.stderr)
                    );
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `freshen run` to its end, started again while the table is still locked by
/// a run just killed (exit 5).
async fn unlocked_run(env: &TestEnv) -> std::process::Output {
    for _ in 0..40 {
        let out = env.freshen(&["run"]).await;
        if out.status.code() != Some(5) {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the table stayed locked");
}

/// SIGSTOP and SIGCONT.
fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Keys the vendor billed more than once.
fn billed_twice(env: &TestEnv) -> usize {
    env.sandbox()
        .stats()
        .per_key_ok
        .values()
        .filter(|n| **n > 1)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_suspended_past_its_lease_spends_nothing_more() {
    let mut env = TestEnv::new(3000).await;
    env.vendor(SandboxOptions {
        latency: Duration::from_millis(20),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 400,
        max_concurrency: 4,
        batch_size: 10,
        allowance: 2000,
        reserve: 0,
        lock_stale_after: "2s",
        ..Conf::default()
    });
    let a = env.spawn(&["run"]);
    env.wait_for_calls(200).await;
    signal(&a, "-STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Another run of the table starts meanwhile (a cron run, say): it may take
    // the work over or find the table locked; either way A must not spend on.
    let b = env.spawn(&["run"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&a, "-CONT");
    let (a, b) = (finish(a).await, finish(b).await);
    let _ = (text(&a.stderr), text(&b.stderr));
    // Whatever is left, one more run finishes, at the budget.
    let out = unlocked_run(&env).await;
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        text(&out.stderr)
    );
    let ledger = spent(&env).await;
    assert!(ledger <= 2000, "spent {ledger} of 2000");
    assert!(env.sandbox().stats().ok as i64 <= 2000);
    // Only what A had out when it stopped can be billed twice (B, or the last
    // run, called it again): its calls in flight (4) and the answers not yet
    // checkpointed (a batch of 10); not calls of a process that knew it was fenced.
    assert!(
        billed_twice(&env) <= 14,
        "{} keys billed twice",
        billed_twice(&env)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_worker_suspended_past_its_lease_spends_nothing_more() {
    let mut env = TestEnv::new_postgres(4000).await;
    env.vendor(SandboxOptions {
        latency: Duration::from_millis(20),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 400,
        max_concurrency: 32,
        batch_size: 10,
        allowance: 2500,
        reserve: 0,
        lock_stale_after: "2s",
        ..Conf::default()
    });
    let mut workers: Vec<_> = (0..4).map(|_| env.spawn(&["run", "--join"])).collect();
    env.wait_for_calls(300).await;
    signal(&workers[0], "-STOP");
    tokio::time::sleep(Duration::from_secs(6)).await;
    signal(&workers[0], "-CONT");
    for w in workers.drain(..) {
        let out = finish(w).await;
        assert!(
            matches!(out.status.code(), Some(0 | 3 | 5)),
            "{:?} {}",
            out.status,
            text(&out.stderr)
        );
    }
    let out = env.freshen(&["run", "--join"]).await;
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        text(&out.stderr)
    );
    let ledger = spent(&env).await;
    assert!(ledger <= 2500, "spent {ledger} of 2500");
    assert!(env.sandbox().stats().ok as i64 <= 2500);
    // The stopped worker's calls in flight (32) and its unwritten answers (10).
    assert!(
        billed_twice(&env) <= 42,
        "{} keys billed twice",
        billed_twice(&env)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_workers_hand_each_other_the_last_credits() {
    let mut env = TestEnv::new_postgres(3000).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf {
        rate: 2000,
        max_concurrency: 20,
        allowance: 3000,
        reserve: 0,
        ..Conf::default()
    });
    let workers: Vec<_> = (0..3).map(|_| env.spawn(&["run", "--join"])).collect();
    for w in workers {
        let out = tokio::time::timeout(Duration::from_secs(60), finish(w))
            .await
            .expect("no worker waits forever on the others");
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "{:?} {}",
            out.status,
            text(&out.stderr)
        );
    }
    assert_eq!(env.item_states().await, (3000, 0, 0));
    assert_eq!(spent(&env).await, 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_names_the_limit_that_stopped_it() {
    let mut env = TestEnv::new(300).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf {
        allowance: 100,
        reserve: 0,
        ..Conf::default()
    });
    let out = env.freshen(&["run", "--max-credits", "50"]).await;
    assert_exit(&out, 3);
    assert!(
        text(&out.stdout).contains("--max-credits is spent"),
        "{}",
        text(&out.stdout)
    );
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 3);
    assert!(
        text(&out.stdout).contains("the period's allowance less credits.reserve is spent"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(spent(&env).await, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vendors_stored_count_goes_down_with_every_credit_spent_after_it() {
    let mut env = TestEnv::new(1000).await;
    env.vendor(SandboxOptions {
        credits: Some(500),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        allowance: 10_000,
        reserve: 0,
        ..Conf::default()
    });
    env.set_keys(&[("credits.remaining_header", "\"X-Credits-Remaining\"")]);
    assert_exit(&env.freshen(&["run", "--max-credits", "100"]).await, 3);
    // The vendor's count (400 left) is stored; later runs do not read the header.
    env.write_config(&Conf {
        allowance: 10_000,
        reserve: 0,
        ..Conf::default()
    });
    assert_exit(&env.freshen(&["run", "--max-credits", "250"]).await, 3);
    let status = env.freshen(&["status"]).await;
    assert!(
        text(&status.stdout).contains("the vendor counted 250 left"),
        "400 less the 150 spent since: {}",
        text(&status.stdout)
    );
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 3);
    assert!(
        text(&out.stdout).contains("the vendor's own count of credits left"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(spent(&env).await, 500);
    assert_eq!(env.sandbox().stats().payment_required, 0, "never refused");
}

/// Sessions of this test's database waiting for a lock.
async fn waiting_for_locks(env: &TestEnv) -> i64 {
    let db = env.db().await;
    let n = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    n
}

async fn until_waiting(env: &TestEnv, n: i64) {
    let started = std::time::Instant::now();
    while waiting_for_locks(env).await < n {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{n} sessions never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_in_flight_when_its_holder_leaves_does_not_deadlock() {
    use std::sync::Arc;

    let mut env = TestEnv::new_postgres(1).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    assert_exit(&env.freshen(&["run"]).await, 0);
    let config = freshen::config::Config::load(&env.config_path(), None).unwrap();
    let store = Arc::new(freshen::store::Store::connect(&config).await.unwrap());
    let period = config.credits.periods.label_at(freshen::credits::now());
    let worker = "a-test-host:1".to_owned();
    store.register(1, &worker).await.unwrap();

    let holder = freshen::store::Holder {
        worker: worker.clone(),
        run: 1,
        allowance: config.credits.allowance,
        reserve: 0,
        grant_unit: 1,
        run_limit: None,
        stale_after: Duration::from_secs(60),
    };
    // The holder holds credits, so its leave takes the period's row too.
    assert_eq!(
        store
            .grant(&holder, &period, 5, None)
            .await
            .unwrap()
            .granted,
        5
    );
    // Another session holds the period's row, so the grant and the leave
    // below both wait: the grant first, then the leave.
    let mut other = <sqlx::PgConnection as sqlx::Connection>::connect(&env.db_url())
        .await
        .unwrap();
    other.execute("BEGIN").await.unwrap();
    sqlx::query("SELECT 1 FROM freshen_credit_periods WHERE period = $1 FOR UPDATE")
        .bind(&period)
        .execute(&mut other)
        .await
        .unwrap();
    let grant = tokio::spawn({
        let (store, period) = (store.clone(), period.clone());
        async move { store.grant(&holder, &period, 10, None).await }
    });
    until_waiting(&env, 1).await;
    let leave = tokio::spawn({
        let (store, worker) = (store.clone(), worker.clone());
        async move { store.leave(&worker).await }
    });
    until_waiting(&env, 2).await;
    other.execute("COMMIT").await.unwrap();

    let granted = grant.await.unwrap().expect("the grant goes through");
    leave.await.unwrap().expect("the leave goes through");
    // The grant came first: it was granted, and the leave gave it back.
    assert_eq!(granted.granted, 10);
    let db = env.db().await;
    let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM freshen_reservations")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(held, 0);
    db.close().await;
}
