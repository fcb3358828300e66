//! What the vendor's answers mean for the run as a whole: a vendor that refuses
//! the key (401, 403) stops it at the first refusal, with nothing failed and
//! nothing spent, and the run resumes once the key is fixed.

use std::time::Duration;

use freshen::sandbox::{Fault, SandboxOptions};

use crate::harness::{Conf, TestEnv, assert_exit, read_json, text};

const RIGHT_KEY: &str = "right-key-Hq2v9TzL";
const EXPIRED_KEY: &str = "expired-key-Pw4m8RxN";
const HEADERS: &str = "headers = { Authorization = \"Bearer ${VENDOR_TOKEN}\" }";

/// The period's spent, the most attempts of any item.
async fn spent_and_attempts(env: &TestEnv) -> (i64, i64) {
    let db = env.db().await;
    let spent = sqlx::query_scalar("SELECT COALESCE(SUM(spent), 0) FROM freshen_credit_periods")
        .fetch_one(&db)
        .await
        .unwrap();
    let attempts = sqlx::query_scalar("SELECT COALESCE(MAX(attempts), 0) FROM freshen_items")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    (spent, attempts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_stops_the_run_at_the_first_refusal_with_nothing_failed_or_spent() {
    let mut env = TestEnv::new(500).await;
    env.vendor(SandboxOptions {
        api_key: Some(RIGHT_KEY.into()),
        latency: Duration::from_millis(20),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        headers: HEADERS,
        max_concurrency: 8,
        ..Conf::default()
    });
    let summary = env.dir.path().join("summary.json");
    let args = ["run", "--summary-json", summary.to_str().unwrap()];

    let out = env
        .freshen_with_env(&args, &[("VENDOR_TOKEN", EXPIRED_KEY)])
        .await;
    assert_exit(&out, 6);
    let err = text(&out.stderr);
    assert!(
        err.contains("401 Unauthorized")
            && err.contains("invalid API key '(redacted)'")
            && err.contains("api.headers")
            && err.contains("rerun"),
        "{err}"
    );
    assert!(
        !err.contains(EXPIRED_KEY),
        "the key is never repeated: {err}"
    );
    let stats = env.sandbox().stats();
    assert!(
        stats.requests <= 8,
        "at most max_concurrency calls: {}",
        stats.requests
    );
    assert_eq!(stats.unauthorized, stats.requests);
    assert_eq!(
        env.item_states().await,
        (0, 0, 500),
        "nothing done or failed"
    );
    assert_eq!(
        spent_and_attempts(&env).await,
        (0, 0),
        "nothing spent or tried"
    );
    let json = read_json(&summary);
    assert_eq!(
        (json["status"].as_str(), json["exit_code"].as_i64()),
        (Some("refused"), Some(6))
    );
    assert!(!json.to_string().contains(EXPIRED_KEY));

    // The key fixed, the same run resumes and completes.
    let out = env
        .freshen_with_env(&args, &[("VENDOR_TOKEN", RIGHT_KEY)])
        .await;
    assert_exit(&out, 0);
    env.assert_each_written_once(500).await;
    assert_eq!(
        read_json(&summary)["run"].as_i64(),
        Some(1),
        "run 1 resumed"
    );
    // The refused run gave its reservations back (it was not counted as a
    // crash whose reserved credits may have been billed).
    assert_eq!(
        spent_and_attempts(&env).await,
        (500, 1),
        "one credit a record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_mid_run_stops_it_and_fails_no_record() {
    let mut env = TestEnv::new(400).await;
    env.vendor(SandboxOptions {
        faults: vec![("200".into(), Fault::Status(403))],
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf::default());
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 6);
    assert!(
        text(&out.stderr).contains("403 Forbidden"),
        "{}",
        text(&out.stderr)
    );
    let (done, failed, pending) = env.item_states().await;
    assert_eq!(failed, 0);
    assert!(pending > 0 && done > 0, "{done} done, {pending} pending");
    // Every answer the run got before the refusal was checkpointed.
    assert_eq!(done as u64, env.sandbox().stats().ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_hit_mid_run_ends_it_until_the_window_resets() {
    // 100 calls per 3 s window; a Retry-After past retry.max_delay (1 s) is a
    // quota's window, not a burst to wait out.
    let mut env = TestEnv::new(150).await;
    env.vendor(SandboxOptions {
        quota: vec![(100, Duration::from_secs(3))],
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf::default());
    env.set_keys(&[
        ("retry.base_delay", "\"100ms\""),
        ("retry.max_delay", "\"1s\""),
    ]);
    let summary = env.dir.path().join("summary.json");
    let metrics = env.dir.path().join("freshen.prom");
    let args = [
        "run",
        "--summary-json",
        summary.to_str().unwrap(),
        "--metrics-file",
        metrics.to_str().unwrap(),
    ];

    let out = env.freshen(&args).await;
    assert_exit(&out, 3);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("asks for no call before"), "{stdout}");
    let json = read_json(&summary);
    assert_eq!(json["status"], "quota");
    let until: jiff::Timestamp = json["resume_after"].as_str().unwrap().parse().unwrap();
    // It did not wait the window out: the next window's calls were never made.
    assert_eq!(env.item_states().await, (100, 0, 50));
    let calls = env.sandbox().stats().requests;
    let prom = std::fs::read_to_string(&metrics).unwrap();
    let at = format!(
        "freshen_resume_after_timestamp_seconds{{table=\"people\"}} {}",
        until.as_second()
    );
    assert!(prom.contains(&at), "{at} in {prom}");
    let status = text(&env.freshen(&["status"]).await.stdout);
    assert!(
        status.contains(&format!(
            "no call before {json_until}",
            json_until = json["resume_after"].as_str().unwrap()
        )),
        "{status}"
    );

    // Started before the window resets: nothing is sent.
    let out = env.freshen(&args).await;
    assert_exit(&out, 3);
    assert!(
        text(&out.stdout).contains("nothing sent"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(env.sandbox().stats().requests, calls, "no call in between");

    // After it, the same run resumes and completes.
    let wait = until.duration_since(jiff::Timestamp::now());
    tokio::time::sleep(Duration::try_from(wait).unwrap_or_default() + Duration::from_millis(200))
        .await;
    let out = env.freshen(&args).await;
    assert_exit(&out, 0);
    env.assert_each_written_once(150).await;
    assert_eq!(read_json(&summary)["run"].as_i64(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_stops_the_run_within_the_failure_window() {
    // After 300 answers the vendor renames `title`: every later answer is
    // billed and cannot be written.
    let mut env = TestEnv::new(2000).await;
    env.vendor(SandboxOptions {
        schema_change_after: Some(300),
        ..SandboxOptions::default()
    })
    .await;
    const CONCURRENCY: i64 = 8;
    env.write_config(&Conf {
        max_concurrency: CONCURRENCY as u32,
        ..Conf::default()
    });
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 6);
    let err = text(&out.stderr);
    assert!(
        err.contains("of the last 100 records' first answers failed")
            && err.contains("`answer has no /title`")
            && err.contains("limits.max_failure_share"),
        "{err}"
    );
    let (done, failed, pending) = env.item_states().await;
    assert_eq!(done, 300, "every answer before the change is written");
    // The guard trips at 50 of 100 (the default share and window); the calls
    // already in flight then still come back, billed and unusable.
    assert!(
        (50..50 + CONCURRENCY).contains(&failed),
        "{failed} unusable answers"
    );
    assert_eq!(done + failed + pending, 2000);
    let (spent, _) = spent_and_attempts(&env).await;
    assert_eq!(spent, done + failed, "every billed answer is charged");
}
