//! Several workers on one run (`run --join`), and a run that loses its database
//! connections: PostgreSQL only, whichever database the rest of the suite runs on.

use std::time::Duration;

use freshen::sandbox::{Fault, SandboxOptions};
use sqlx::Row;
use tokio::process::Child;

use crate::harness::{Conf, TestEnv, assert_exit, finish, text};

/// (period spent, runs' credits spent, calls answered ok by the runs' counts).
async fn ledger(env: &TestEnv) -> (i64, i64, i64) {
    let db = env.db().await;
    let row = sqlx::query(
        "SELECT (SELECT spent FROM freshen_credit_periods), \
         (SELECT CAST(SUM(credits_spent) AS BIGINT) FROM freshen_runs), \
         (SELECT CAST(SUM(calls_ok) AS BIGINT) FROM freshen_runs)",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_a_run_and_a_killed_one_strands_nothing() {
    const R: u32 = 200;
    const BURST: u32 = 20;
    let mut env = TestEnv::new_postgres(3000).await;
    env.vendor(SandboxOptions {
        rate: f64::from(R),
        burst: BURST,
        latency: Duration::from_millis(20),
        ..SandboxOptions::default()
    })
    .await;
    // Each worker alone would send at the whole rate: only sharing keeps the
    // three of them within it.
    env.write_config(&Conf {
        rate: R,
        max_concurrency: 16,
        lock_stale_after: "2s",
        ..Conf::default()
    });
    let workers: Vec<Child> = (0..3).map(|_| env.spawn(&["run", "--join"])).collect();
    env.wait_for_calls(600).await;

    // A run without --join may not work the table meanwhile.
    let plain = env.freshen(&["run"]).await;
    assert_exit(&plain, 5);
    assert!(
        text(&plain.stderr).contains("run --join"),
        "{}",
        text(&plain.stderr)
    );

    // status lists the three workers, each with claims and a fresh heartbeat.
    let status = env.freshen(&["status", "--json"]).await;
    assert_exit(&status, 0);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let listed = status["run"]["workers"].as_array().expect("workers listed");
    assert_eq!(listed.len(), 3, "{status:#}");
    for w in listed {
        assert!(w["heartbeat_age_ms"].as_i64().unwrap() < 2000, "{w}");
        assert!(w["live"].as_bool().unwrap(), "{w}");
    }

    // Kill one mid-run: its claims lapse after lock.stale_after and the others
    // take its items over.
    let mut workers = workers.into_iter();
    let mut victim = workers.next().unwrap();
    env.wait_for_calls(1200).await;
    victim.kill().await.unwrap();
    victim.wait().await.unwrap();
    for worker in workers {
        let out = finish(worker).await;
        assert_exit(&out, 0);
    }

    env.assert_each_written_once(3000).await;
    assert_eq!(env.item_states().await, (3000, 0, 0));
    let db = env.db().await;
    let (status, claimants): (String, i64) = sqlx::query_as(
        "SELECT (SELECT status FROM freshen_runs), \
         (SELECT COUNT(DISTINCT lease_owner) FROM freshen_items)",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    assert_eq!(status, "complete");
    assert_eq!(claimants, 3, "every worker refreshed some of the records");

    // The vendor's limit held over the whole run, for the three together.
    let stats = env.sandbox().stats();
    let busiest = stats.per_second.iter().max().copied().unwrap_or_default();
    assert!(
        busiest <= u64::from(R + BURST),
        "at most {R}/s plus a burst of {BURST}: {:?}",
        stats.per_second
    );
    assert!(
        stats.throttled * 100 <= stats.requests,
        "{} of {} calls throttled",
        stats.throttled,
        stats.requests
    );

    // Credits: charged exactly for the billed answers the runs recorded, and
    // what the killed worker held reserved (its calls out may have been billed:
    // counted as spent, as uncertain).
    let (spent, charged, ok) = ledger(&env).await;
    let db = env.db().await;
    let uncertain: i64 = sqlx::query_scalar("SELECT uncertain FROM freshen_credit_periods")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(spent, charged);
    assert_eq!(charged, ok + uncertain);
    assert!(ok >= 3000, "{ok}");
    assert!(uncertain <= 2 * 16 * 4, "at most a few blocks: {uncertain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_one_budget_and_spend_all_of_it() {
    let mut env = TestEnv::new_postgres(2000).await;
    env.vendor(SandboxOptions {
        latency: Duration::from_millis(5),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 1000,
        allowance: 700,
        reserve: 100,
        ..Conf::default()
    });
    let workers: Vec<Child> = (0..3).map(|_| env.spawn(&["run", "--join"])).collect();
    for worker in workers {
        assert_exit(&finish(worker).await, 3);
    }
    // Not a split of 200 each that strands what one worker could not use: the
    // run spends the budget to the last credit, and never more.
    let (spent, charged, ok) = ledger(&env).await;
    assert_eq!((spent, charged, ok), (600, 600, 600));
    assert_eq!(env.sandbox().stats().requests, 600);
    assert_eq!(env.item_states().await, (600, 0, 1400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_seen_by_one_worker_pauses_them_all() {
    // Four seconds of work at the rate, so both workers have calls to make
    // through the whole pause.
    let mut env = TestEnv::new_postgres(4000).await;
    // Key 40 answers 429 with Retry-After: 3 once, then 200.
    env.vendor(SandboxOptions {
        faults: vec![("40".into(), Fault::ThrottleFor(Duration::from_secs(3)))],
        latency: Duration::from_millis(5),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 1000,
        max_delay: "5s",
        ..Conf::default()
    });
    let a = env.spawn(&["run", "--join"]);
    let b = env.spawn(&["run", "--join"]);
    assert_exit(&finish(a).await, 0);
    assert_exit(&finish(b).await, 0);
    assert_eq!(env.item_states().await, (4000, 0, 0));

    // The worker that saw the 429 shares the pause through the database; the
    // other learns it with its next rate tokens (within about 50 ms on a quiet
    // machine). Calls already on their way may land just after. The window is
    // wide of both ends, so a loaded machine's lag does not fail the test:
    // nothing arrives from 1 s to 2.8 s into the vendor's 3 s, where a worker
    // that did not share the pause would be sending at full rate.
    env.assert_one_throttle_paused_all(Duration::from_secs(1)..Duration::from_millis(2800));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_through_an_outage_send_it_about_what_one_sends() {
    let mut env = TestEnv::new_postgres(1500).await;
    env.vendor(SandboxOptions {
        outage_start: Some(Duration::from_millis(1000)),
        outage: Duration::from_secs(4),
        latency: Duration::from_millis(5),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 300,
        max_attempts: 2,
        ..Conf::default()
    });
    let workers: Vec<Child> = (0..4).map(|_| env.spawn(&["run", "--join"])).collect();
    for worker in workers {
        assert_exit(&finish(worker).await, 0);
    }
    env.assert_each_written_once(1500).await;
    assert_eq!(env.item_states().await, (1500, 0, 0), "no record failed");
    // One worker alone sends about ten calls into a 4 s outage: the three that
    // open its breaker and a probe every 750 ms at most (seven). Four workers,
    // each with its own breaker, sent four times that and more (43-54 here
    // before the breaker was checked again after the shared rate token). Sharing
    // one breaker they send its probes once, and what each had on its way at
    // the outage's first instant: 5-19 in 20 runs, 24 once with other tests
    // beside it.
    let stats = env.sandbox().stats();
    assert!(stats.during_outage > 0, "the run met the outage: {stats:?}");
    assert!(
        stats.during_outage <= 25,
        "{} calls during a 4 s outage from four workers",
        stats.during_outage
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_needs_postgresql() {
    let mut env = TestEnv::new_sqlite(10).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    let out = env.freshen(&["run", "--join"]).await;
    assert_exit(&out, 2);
    let err = text(&out.stderr);
    assert!(
        err.contains("--join needs PostgreSQL") && err.contains("database.url"),
        "{err}"
    );
    assert_eq!(env.sandbox().stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_its_database_connections_being_killed() {
    let mut env = TestEnv::new_postgres(2000).await;
    env.vendor(SandboxOptions {
        latency: Duration::from_millis(5),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 400,
        ..Conf::default()
    });
    let run = env.spawn(&["run"]);
    for calls in [500, 1000, 1500] {
        env.wait_for_calls(calls).await;
        let db = env.db().await;
        let killed: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()) AS k",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        db.close().await;
        assert!(killed >= 1, "the run's connections were there to kill");
    }
    let out = finish(run).await;
    assert_exit(&out, 0);
    env.assert_each_written_once(2000).await;
    assert_eq!(env.item_states().await, (2000, 0, 0));
    let (spent, charged, ok) = ledger(&env).await;
    assert_eq!((spent, charged), (ok, ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_workers_asking_at_once_for_the_fleets_probe_only_one_gets_it() {
    use std::sync::Arc;
    use tokio::sync::Barrier;

    let env = TestEnv::new_postgres(1).await;
    env.write_config(&Conf::default());
    let config = freshen::config::Config::load(&env.config_path(), None).unwrap();
    let store = Arc::new(freshen::store::Store::connect(&config).await.unwrap());
    store
        .outage_opened(Some("a test"), Duration::ZERO)
        .await
        .unwrap();
    const ASKERS: usize = 8;
    for round in 0..40 {
        // The probe is due now, for whichever worker asks first.
        let pg = store.postgres().expect("on PostgreSQL");
        pg.probe_failed(Duration::ZERO).await.unwrap();
        let barrier = Arc::new(Barrier::new(ASKERS));
        let mut asks = tokio::task::JoinSet::new();
        for _ in 0..ASKERS {
            let (store, barrier) = (store.clone(), barrier.clone());
            asks.spawn(async move {
                let pg = store.postgres().expect("on PostgreSQL");
                barrier.wait().await;
                pg.fleet_outage(true, Duration::from_secs(30))
                    .await
                    .unwrap()
            });
        }
        let looks = asks.join_all().await;
        assert!(looks.iter().all(|l| l.open), "round {round}: {looks:?}");
        let probes = looks.iter().filter(|l| l.probe).count();
        assert_eq!(
            probes, 1,
            "round {round}: {probes} of {ASKERS} took the probe"
        );
    }
}
