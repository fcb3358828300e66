//! Credits: the budget stops a run exactly, and a vendor out of credits stops it
//! cleanly. Charges are written with the records they paid for.

use freshen::sandbox::{Fault, SandboxOptions};

use crate::harness::{Conf, TestEnv, assert_exit, read_json, text};

async fn period_spent(env: &TestEnv) -> i64 {
    let db = env.db().await;
    let spent = sqlx::query_scalar("SELECT spent FROM freshen_credit_periods")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    spent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_stops_the_run_at_exactly_allowance_less_reserve() {
    let mut env = TestEnv::new(5000).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf {
        allowance: 1000,
        ..Conf::default()
    });
    let text_config = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        text_config.replace("allowance = 1000", "allowance = 1000\nreserve = 100"),
    )
    .unwrap();
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
    assert_eq!(period_spent(&env).await, 900);
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
    assert_eq!(period_spent(&env).await, 18);
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
        period_spent(&env).await,
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
    assert_eq!(period_spent(&env).await, 500);
    // Without a cap it finishes.
    assert_exit(&env.freshen(&["run"]).await, 0);
    assert_eq!(env.item_states().await, (1000, 0, 0));
}
