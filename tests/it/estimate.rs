//! `freshen estimate`: no call to the vendor, and figures the following `run`
//! then bears out.

use freshen::sandbox::SandboxOptions;

use crate::harness::{Conf, TestEnv, assert_exit, text};

/// Gives every record a known `refreshed_at`: every 4th never refreshed, the
/// others on a day of 2026 that depends on the key.
async fn known_ages(env: &TestEnv) {
    let db = env.db().await;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM people")
        .fetch_all(&db)
        .await
        .unwrap();
    let mut tx = db.begin().await.unwrap();
    for id in ids {
        let at =
            (id % 4 != 0).then(|| format!("2026-{:02}-{:02}T08:00:00Z", 1 + id % 9, 1 + id % 28));
        sqlx::query("UPDATE people SET refreshed_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    db.close().await;
}

async fn estimate_json(env: &TestEnv, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["estimate", "--json"];
    all.extend_from_slice(args);
    let out = env.freshen(&all).await;
    assert_exit(&out, 0);
    serde_json::from_slice(&out.stdout).expect("estimate --json prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_estimate_calls_nothing_and_the_run_bears_it_out() {
    let mut env = TestEnv::new(400).await;
    known_ages(&env).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf {
        allowance: 250,
        reserve: 20,
        ..Conf::default()
    });
    let flags = ["--stale-before", "2026-06-01"];

    let e = estimate_json(&env, &flags).await;
    assert_eq!(env.sandbox().stats().requests, 0, "no call to the vendor");
    let db = env.db().await;
    let (stale, fresh): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(CASE WHEN refreshed_at IS NULL OR refreshed_at < '2026-06-01T00:00:00Z' \
                THEN 1 END), \
                COUNT(CASE WHEN refreshed_at >= '2026-06-01T00:00:00Z' THEN 1 END) FROM people",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(e["selected"], stale);
    assert_eq!(e["skipped_fresh"], fresh);
    assert_eq!(e["credits"]["needed"], stale, "1 credit each, no past runs");
    assert_eq!(e["credits"]["budget"], 230);
    assert_eq!(e["verdict"], "partial");
    assert_eq!(e["covered"], 230);
    let cut_key = e["cut"]["key"].as_str().unwrap().to_owned();
    let cut_at: Option<String> =
        sqlx::query_scalar("SELECT refreshed_at FROM people WHERE id = $1")
            .bind(cut_key.parse::<i64>().unwrap())
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(e["cut"]["refreshed_at"].as_str(), cut_at.as_deref());
    db.close().await;

    let mut run = vec!["run"];
    run.extend_from_slice(&flags);
    assert_exit(&env.freshen(&run).await, 3);
    let db = env.db().await;
    let (total, done, last_done): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT total FROM freshen_runs), \
                (SELECT COUNT(*) FROM freshen_items WHERE state = 'done'), \
                (SELECT MAX(seq) FROM freshen_items WHERE state = 'done')",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    let key_at_cut: String = sqlx::query_scalar("SELECT key FROM freshen_items WHERE seq = $1")
        .bind(last_done)
        .fetch_one(&db)
        .await
        .unwrap();
    let spent: i64 = sqlx::query_scalar("SELECT spent FROM freshen_credit_periods")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(
        total, stale,
        "the run planned the records the estimate selected"
    );
    assert_eq!(
        done, 230,
        "the budget reached the records the estimate said"
    );
    assert_eq!(last_done, 230, "stalest first, with no gap");
    assert_eq!(
        key_at_cut, cut_key,
        "the budget cut where the estimate said"
    );
    assert_eq!(spent, 230);

    // Now the estimate is of the unfinished run, which nothing more can pay for.
    let e = estimate_json(&env, &flags).await;
    assert_eq!(e["resumes_run"], 1);
    assert_eq!(e["selected"], stale - 230);
    assert_eq!(e["covered"], 0);
    assert_eq!(e["credits"]["period"]["spent"], 230);
    assert_eq!(env.sandbox().stats().requests, 230, "still no call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_overhead_of_past_runs_is_in_the_credits_needed() {
    let mut env = TestEnv::new(100).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    // A past run that paid for 100 records and, say, 10 billed retries.
    assert_exit(&env.freshen(&["run", "--ids", "1..100"]).await, 0);
    let db = env.db().await;
    sqlx::query("UPDATE freshen_runs SET credits_spent = 110")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    // Another selection of the same table: 100 records at 1.1 credits each.
    let e = estimate_json(&env, &[]).await;
    assert_eq!(e["selected"], 100);
    let overhead = e["credits"]["retry_overhead"].as_f64().unwrap();
    assert!((overhead - 0.1).abs() < 1e-9, "{overhead}");
    assert_eq!(e["credits"]["needed"], 110);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_human_estimate_reads_at_a_glance() {
    let env = TestEnv::new(400).await;
    known_ages(&env).await;
    env.write_config(&Conf {
        allowance: 250,
        reserve: 20,
        ..Conf::default()
    });
    let out = env
        .freshen(&["estimate", "--stale-before", "2026-06-01"])
        .await;
    assert_exit(&out, 0);
    let out = text(&out.stdout);
    insta::with_settings!({filters => vec![(r"from \d{4}-\d{2}-\d{2}", "from [period start]")]}, {
        insta::assert_snapshot!(out);
    });
    let capped = env
        .freshen(&[
            "estimate",
            "--stale-before",
            "2026-06-01",
            "--max-credits",
            "50",
        ])
        .await;
    let capped = text(&capped.stdout);
    insta::with_settings!({filters => vec![(r"from \d{4}-\d{2}-\d{2}", "from [period start]")]}, {
        insta::assert_snapshot!("max_credits", capped);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_endpoint_is_asked_unbilled_unless_offline() {
    let mut env = TestEnv::new(50).await;
    env.vendor(SandboxOptions {
        credits: Some(30),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        allowance: 1000,
        ..Conf::default()
    });
    env.set_keys(&[("credits.remaining_url", "\"/v1/account\"")]);
    let out = env.freshen(&["estimate"]).await;
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("credits.remaining_pointer"),
        "{}",
        text(&out.stderr)
    );
    env.set_keys(&[("credits.remaining_pointer", "\"/credits/remaining\"")]);

    let e = estimate_json(&env, &["--offline"]).await;
    assert_eq!(env.sandbox().stats().account, 0, "--offline asks nothing");
    assert_eq!(e["asked_account"], false);
    let out = env.freshen(&["estimate", "--offline"]).await;
    assert!(text(&out.stdout).contains("no call to the vendor"));

    assert_eq!(e["credits"]["period"]["available"], 1000);

    let e = estimate_json(&env, &[]).await;
    let stats = env.sandbox().stats();
    assert_eq!((stats.requests, stats.account), (0, 1), "one unbilled call");
    assert_eq!(e["credits"]["period"]["vendor_remaining"], 30);
    assert_eq!(e["credits"]["period"]["available"], 30, "the lower count");
    assert_eq!(e["covered"], 30);
    assert_eq!(e["verdict"], "partial");
    assert_eq!(e["asked_account"], true);
    // The text says what it called.
    let out = env.freshen(&["estimate"]).await;
    assert_exit(&out, 0);
    assert!(
        text(&out.stdout).contains("one unbilled call to the vendor's account endpoint")
            && !text(&out.stdout).contains("no call to the vendor"),
        "{}",
        text(&out.stdout)
    );

    // So does its help.
    for args in [&["--help"][..], &["estimate", "--help"]] {
        let out = env.bare_command(args).output().await.unwrap();
        let help = text(&out.stdout);
        assert!(!help.contains("makes no call to the vendor"), "{help}");
        assert!(help.contains("makes no billed call"), "{help}");
    }

    // The run trusts it too: 30 billed calls, and no 402.
    assert_exit(&env.freshen(&["run"]).await, 3);
    let stats = env.sandbox().stats();
    assert_eq!((stats.ok, stats.payment_required), (30, 0));
}
