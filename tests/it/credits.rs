//! Credits: the budget stops a run exactly, and a vendor out of credits stops it
//! cleanly. Charges are written with the records they paid for.

use freshen::sandbox::{Fault, SandboxOptions};

use crate::harness::{Conf, TestEnv, assert_exit, read_json, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_stops_the_run_at_exactly_allowance_less_reserve() {
    let mut env = TestEnv::new(5000).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf {
        allowance: 1000,
        reserve: 100,
        ..Conf::default()
    });
    let summary = env.dir.path().join("summary.json");

    let out = env
        .freshen(&["run", "--summary-json", summary.to_str().unwrap()])
        .await;
    assert_exit(&out, 3);
    assert!(
        text(&out.stdout).contains("credit budget"),
        "{}",
        text(&out.stdout)
    );
    let stats = env.sandbox().stats();
    assert_eq!(stats.requests, 900, "billed calls");
    assert_eq!(env.period_spent().await, 900);
    let (done, failed, pending) = env.item_states().await;
    assert_eq!((done, failed, pending), (900, 0, 4100));
    let s = read_json(&summary);
    assert_eq!(s["status"], "budget");
    assert_eq!(s["credits"]["spent"], 900);
    assert_eq!(s["credits"]["remaining"], 100);

    // Nothing more this period: the next run spends nothing and says why.
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 3);
    assert_eq!(env.sandbox().stats().requests, 900);

    // The next period: moving the reset day to today starts a period today, with
    // a fresh allowance, and the same run resumes the rest.
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .day();
    let reset = if today == 1 { 2 } else { today };
    env.set_keys(&[("credits.reset_day", &reset.to_string())]);
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 3);
    assert_eq!(env.sandbox().stats().requests, 1800);
    assert_eq!(env.item_states().await, (1800, 0, 3200), "run 1 resumed");
    let db = env.db().await;
    let periods: Vec<i64> =
        sqlx::query_scalar("SELECT spent FROM freshen_credit_periods ORDER BY period")
            .fetch_all(&db)
            .await
            .unwrap();
    let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM freshen_runs")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(periods.iter().sum::<i64>(), 1800);
    assert!(periods.iter().all(|p| *p == 900), "{periods:?}");
    assert_eq!(runs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbilled_answers_release_their_reservation() {
    let mut env = TestEnv::new(20).await;
    // 400 and 422 are not billed by default (billed_statuses = ["2xx", "404"]).
    env.vendor(SandboxOptions {
        faults: vec![
            ("1".into(), Fault::Status(400)),
            ("2".into(), Fault::Status(422)),
            ("3".into(), Fault::Status(404)),
        ],
        ..SandboxOptions::default()
    })
    .await;
    // 20 calls, 2 unbilled, 19 credits: all 20 can go only if the unbilled answers
    // give their reservations back. In any order one credit stays free for the next
    // call, since at most 18 are ever charged; without the release the run would
    // stop after 19 calls. (With 18 credits the outcome would depend on order: a
    // call cannot start once 18 billed answers have spent everything, since nobody
    // knows beforehand that its answer will not be billed.)
    env.write_config(&Conf {
        allowance: 19,
        ..Conf::default()
    });
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    assert_eq!(env.sandbox().stats().requests, 20);
    assert_eq!(env.period_spent().await, 18);
    assert_eq!(env.item_states().await, (17, 3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_402_mid_run_stops_cleanly_with_nothing_failed() {
    let mut env = TestEnv::new(500).await;
    env.vendor(SandboxOptions {
        credits: Some(200),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf::default());
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 3);
    assert!(text(&out.stdout).contains("402"), "{}", text(&out.stdout));
    let (done, failed, pending) = env.item_states().await;
    assert_eq!(done, 200);
    assert_eq!(failed, 0);
    assert_eq!(pending, 300);
    assert_eq!(
        env.period_spent().await,
        200,
        "the charges are the billed answers recorded"
    );
    let db = env.db().await;
    let status: String = sqlx::query_scalar("SELECT status FROM freshen_runs")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(status, "out_of_credits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_credits_caps_the_run_over_its_resumes() {
    let mut env = TestEnv::new(1000).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());

    let out = env.freshen(&["run", "--max-credits", "300"]).await;
    assert_exit(&out, 3);
    assert_eq!(env.sandbox().stats().requests, 300);
    assert_eq!(env.item_states().await, (300, 0, 700));
    // Resuming with the same cap spends nothing more: the run has had its 300.
    assert_exit(&env.freshen(&["run", "--max-credits", "300"]).await, 3);
    assert_eq!(env.sandbox().stats().requests, 300);
    // A higher cap lets it go on to that total.
    assert_exit(&env.freshen(&["run", "--max-credits", "500"]).await, 3);
    assert_eq!(env.sandbox().stats().requests, 500);
    assert_eq!(env.period_spent().await, 500);
    // Without a cap it finishes.
    assert_exit(&env.freshen(&["run"]).await, 0);
    assert_eq!(env.item_states().await, (1000, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vendors_remaining_count_is_trusted_when_it_is_lower() {
    let mut env = TestEnv::new(500).await;
    // The vendor has 80 credits left on the account; freshen's own ledger
    // thinks 1,000 (another tool spent from the same account).
    env.vendor(SandboxOptions {
        credits: Some(80),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        allowance: 1000,
        reserve: 10,
        ..Conf::default()
    });
    env.set_keys(&[("credits.remaining_header", "\"X-Credits-Remaining\"")]);
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 3);
    let stats = env.sandbox().stats();
    assert_eq!(
        stats.payment_required, 0,
        "stopped before the vendor refused"
    );
    let spent = env.period_spent().await;
    // 80 left less the 10 in reserve: exactly 70, to the vendor's last credit.
    assert_eq!(spent, 70, "spent {spent}");
    assert_eq!(spent as u64, stats.ok);
    let db = env.db().await;
    let vendor: Option<i64> =
        sqlx::query_scalar("SELECT vendor_remaining FROM freshen_credit_periods")
            .fetch_one(&db)
            .await
            .unwrap();
    db.close().await;
    assert_eq!(
        vendor,
        Some(80 - spent),
        "the vendor's last count is recorded"
    );
    let status = env.freshen(&["status"]).await;
    assert!(
        text(&status.stdout).contains(&format!("the vendor counted {} left", 80 - spent)),
        "{}",
        text(&status.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_exceeded_problem_stops_the_run_as_out_of_credits() {
    let mut env = TestEnv::new(200).await;
    env.vendor(SandboxOptions {
        faults: vec![("50".into(), Fault::QuotaExceeded)],
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        max_concurrency: 1,
        ..Conf::default()
    });
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 3);
    let (done, failed, pending) = env.item_states().await;
    assert_eq!(failed, 0, "nothing marked failed");
    assert_eq!(done + pending, 200);
    assert!(pending >= 1, "the quota-exceeded record stays pending");
    let db = env.db().await;
    let status: String = sqlx::query_scalar("SELECT status FROM freshen_runs")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(status, "out_of_credits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_run_the_ledger_matches_the_billed_answers_recorded() {
    let mut env = TestEnv::new(3000).await;
    env.vendor(SandboxOptions {
        latency: std::time::Duration::from_millis(5),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 400,
        allowance: 2000,
        reserve: 100,
        lock_stale_after: "1s",
        ..Conf::default()
    });
    for _ in 0..3 {
        let mut child = env.spawn(&["run"]);
        env.wait_for_calls(env.sandbox().stats().requests + 300)
            .await;
        child.kill().await.unwrap();
        child.wait().await.unwrap();
        let db = env.db().await;
        // Every billed answer recorded (the default billed statuses: 2xx and 404;
        // the sandbox answers 200) is charged, and nothing else.
        let (spent, uncertain, done): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT spent FROM freshen_credit_periods), \
             (SELECT uncertain FROM freshen_credit_periods), \
             (SELECT COUNT(*) FROM freshen_items WHERE state = 'done')",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        let charged: i64 =
            sqlx::query_scalar("SELECT CAST(SUM(credits_spent) AS BIGINT) FROM freshen_runs")
                .fetch_one(&db)
                .await
                .unwrap();
        db.close().await;
        // The killed run's reservation is counted as spent once its heartbeat
        // is stale (the calls it had out may have been billed), as uncertain.
        assert_eq!(
            spent - uncertain,
            done,
            "the period's spent count is the records written, and the dead run's reservations"
        );
        assert_eq!(charged, spent, "the run's own count agrees");
        assert!(spent <= 1900, "never past allowance less reserve: {spent}");
        tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    }
    // The last run stops exactly at the budget, still in step; the vendor
    // billed no more than the ledger counts.
    assert_exit(&env.freshen(&["run"]).await, 3);
    assert_eq!(env.period_spent().await, 1900);
    let db = env.db().await;
    let uncertain: i64 = sqlx::query_scalar("SELECT uncertain FROM freshen_credit_periods")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(env.item_states().await.0, 1900 - uncertain);
    assert!(env.sandbox().stats().ok <= 1900);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_remaining_refreshes_the_stalest_records_the_credits_pay_for() {
    let mut env = TestEnv::new(500).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf {
        allowance: 300,
        reserve: 50,
        ..Conf::default()
    });
    let out = env.freshen(&["run", "--spend-remaining"]).await;
    assert_exit(&out, 0);
    assert_eq!(env.sandbox().stats().requests, 250);
    assert_eq!(env.period_spent().await, 250);
    let db = env.db().await;
    let (total, last_seq): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT total FROM freshen_runs), \
         (SELECT MAX(seq) FROM freshen_items WHERE state = 'done')",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        (total, last_seq),
        (250, 250),
        "the 250 stalest, planned and done"
    );
    db.close().await;

    // Spent out: the next start spends nothing and says so.
    let out = env.freshen(&["run", "--spend-remaining"]).await;
    assert_exit(&out, 3);
    assert!(
        text(&out.stdout).contains("nothing to spend"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(env.sandbox().stats().requests, 250);

    // More credits (a new period, or a bigger allowance): a new run, on the
    // records the first one did not reach.
    let db = env.db().await;
    sqlx::query("UPDATE freshen_credit_periods SET allowance = 500")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    assert_exit(&env.freshen(&["run", "--spend-remaining"]).await, 0);
    assert_eq!(env.sandbox().stats().requests, 450);
    let db = env.db().await;
    let written_twice: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM people WHERE writes > 1")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(
        written_twice, 0,
        "the second run took the records still stalest"
    );
    assert_eq!(env.period_spent().await, 450);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pace_until_spreads_the_calls_to_the_deadline() {
    let mut env = TestEnv::new(30).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf {
        rate: 1000,
        ..Conf::default()
    });
    let past = env.freshen(&["run", "--pace-until", "2020-01-01"]).await;
    assert_exit(&past, 2);
    assert!(
        text(&past.stderr).contains("--pace-until"),
        "{}",
        text(&past.stderr)
    );
    assert!(
        text(&past.stderr).contains("in the past"),
        "{}",
        text(&past.stderr)
    );

    let deadline = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(4)).to_string();
    assert_exit(&env.freshen(&["run", "--pace-until", &deadline]).await, 0);
    let arrivals = env.sandbox().timeline().arrivals;
    assert_eq!(arrivals.len(), 30);
    // Unpaced, 30 calls at 1000/s take a few milliseconds; paced, they spread
    // over most of the 4 s.
    let span = *arrivals.last().unwrap() - arrivals[0];
    assert!(span.as_secs_f64() > 2.0, "30 calls over {span:?}");
    assert_eq!(env.item_states().await, (30, 0, 0));
}

/// The calls the vendor refused for credits (402) are calls: the summary, the
/// status, the report and the metrics count every call the vendor saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_402_calls_count_among_the_calls() {
    let mut env = TestEnv::new(300).await;
    env.vendor(SandboxOptions {
        credits: Some(100),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf::default());
    let summary = env.dir.path().join("summary.json");
    let metrics = env.dir.path().join("freshen.prom");
    let out = env
        .freshen(&[
            "run",
            "--summary-json",
            summary.to_str().unwrap(),
            "--metrics-file",
            metrics.to_str().unwrap(),
        ])
        .await;
    assert_exit(&out, 3);
    let stats = env.sandbox().stats();
    assert!(stats.payment_required >= 1, "{stats:?}");
    assert_eq!(stats.ok, 100);
    let calls = stats.requests as i64;

    let json = read_json(&summary);
    assert_eq!(json["calls"]["total"], calls, "{json}");
    assert_eq!(json["calls"]["ok"], 100, "{json}");
    assert_eq!(
        json["calls"]["throttled"], stats.payment_required as i64,
        "the 402s are refusals for the vendor's limits: {json}"
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("{calls} total")),
        "the summary's line: {stdout}"
    );

    let out = env.freshen(&["status", "--json"]).await;
    assert_exit(&out, 0);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &status["run"]["calls"];
    let sum: i64 = ["ok", "throttled", "transient", "permanent"]
        .iter()
        .map(|k| c[k].as_i64().unwrap())
        .sum();
    assert_eq!(sum, calls, "{c}");

    let out = env.freshen(&["report", "--json"]).await;
    assert_exit(&out, 0);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["calls"]["total"], calls, "{}", report["calls"]);

    let prom = std::fs::read_to_string(&metrics).unwrap();
    let total: f64 = prom
        .lines()
        .filter(|l| l.starts_with("freshen_calls_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, calls as f64, "{prom}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billed_throttle_of_a_record_left_pending_by_a_stop_is_charged() {
    use std::time::Duration;

    let mut env = TestEnv::new(20).await;
    // Key 1's first call is a 429 that asks for a 30 s pause, and this vendor
    // bills its 429s: the record is between tries, holding a charge, when the
    // run is stopped during the pause.
    env.vendor(SandboxOptions {
        faults: vec![("1".into(), Fault::ThrottleFor(Duration::from_secs(30)))],
        latency: Duration::from_millis(20),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        max_concurrency: 2,
        ..Conf::default()
    });
    env.set_keys(&[
        ("credits.billed_statuses", r#"["2xx", "404", "429"]"#),
        ("retry.max_delay", "\"1m\""),
    ]);
    let child = env.spawn(&["run"]);
    for _ in 0..1000 {
        if env.sandbox().stats().throttled > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(env.sandbox().stats().throttled, 1, "key 1 was throttled");
    // The other call in flight comes back; then the pause holds every worker.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().expect("running").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().await.unwrap();
    assert_exit(&out, 130);
    let stats = env.sandbox().stats();
    assert_eq!(
        env.period_spent().await as u64,
        stats.ok + stats.throttled,
        "every billed answer is charged, the 429 of the record left pending too"
    );
    let (done, _, _) = env.item_states().await;

    // The rerun resumes it: the record is called again and written.
    assert_exit(&env.freshen(&["run"]).await, 0);
    let stats = env.sandbox().stats();
    assert_eq!(env.period_spent().await as u64, stats.ok + stats.throttled);
    assert!(done < 20);
    env.assert_each_written_once(20).await;
}

/// A vendor whose calls cost 1 to 5 credits each, said in X-Credits-Used and
/// in the body's `credits_consumed`, read as `reported` says; `credits.cost`
/// is the most one call may cost, reserved before it goes out.
async fn costly_vendor(records: u64, allowance: i64, reported: (&str, &str)) -> TestEnv {
    let mut env = TestEnv::new(records).await;
    env.vendor(SandboxOptions {
        cost_range: Some((1, 5)),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        allowance,
        reserve: 0,
        ..Conf::default()
    });
    env.set_keys(&[("credits.cost", "5"), reported]);
    env
}

const COST_HEADER: (&str, &str) = ("credits.cost_header", "\"X-Credits-Used\"");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_the_answers_body_reports_is_charged_too() {
    let env = costly_vendor(
        200,
        100_000,
        ("credits.cost_pointer", "\"/credits_consumed\""),
    )
    .await;
    assert_exit(&env.freshen(&["run"]).await, 0);
    let billed = env.sandbox().stats().credits_billed;
    assert!(billed > 200, "costs of 1 to 5: {billed}");
    assert_eq!(env.period_spent().await as u64, billed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_that_reports_each_calls_cost_is_charged_what_it_billed() {
    let env = costly_vendor(300, 100_000, COST_HEADER).await;
    assert_exit(&env.freshen(&["run"]).await, 0);
    let billed = env.sandbox().stats().credits_billed;
    assert!(billed > 300 && billed < 1500, "costs of 1 to 5: {billed}");
    assert_eq!(env.period_spent().await as u64, billed);
    env.assert_each_written_once(300).await;
    // The estimate uses what past records cost, not the most a call may cost.
    let out = env
        .freshen(&["estimate", "--json", "--offline", "--ids", "1..300"])
        .await;
    assert_exit(&out, 0);
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["credits"]["needed"].as_u64(), Some(billed));
    let mean = e["credits"]["mean_cost"].as_f64().unwrap();
    assert!((mean - billed as f64 / 300.0).abs() < 1e-9, "{mean}");

    // A budget that cannot cover them all stops within one call's most of it.
    let env = costly_vendor(300, 400, COST_HEADER).await;
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 3);
    let spent = env.period_spent().await;
    assert_eq!(spent as u64, env.sandbox().stats().credits_billed);
    assert!(
        (396..=400).contains(&spent),
        "spent {spent} of 400: {}",
        text(&out.stdout)
    );
}
