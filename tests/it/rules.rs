//! Answer rules (issue 18 point 2): `[[api.answers]]` give statuses the meaning
//! a vendor gives them, tried before the built-in rules.

use std::process::Output;
use std::time::Duration;

use freshen::sandbox::{Fault, SandboxOptions};

use crate::harness::{Conf, TestEnv, assert_exit, read_json, text};

/// Items of the newest run in `state`, with their most attempts and a reason.
async fn in_state(env: &TestEnv, state: &str) -> (i64, i64, Option<String>) {
    let db = env.db().await;
    let row: (i64, Option<i64>, Option<String>) = sqlx::query_as(
        "SELECT COUNT(*), MAX(attempts), MAX(reason) FROM freshen_items \
         WHERE run_id = (SELECT MAX(id) FROM freshen_runs) AND state = $1",
    )
    .bind(state)
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    (row.0, row.1.unwrap_or(0), row.2)
}

const HUNTER: &str = "[\
    { status = \"403\", pointer = \"/errors/0/id\", equals = \"too_many_requests\", means = \"throttle\" }, \
    { status = \"429\", pointer = \"/errors/0/id\", equals = \"usage_exceeded\", means = \"out_of_credits\" }]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hunters_403_is_its_rate_limit_and_its_429_its_credits_running_out() {
    let mut env = TestEnv::new(80).await;
    env.vendor(SandboxOptions {
        rate: 40.0,
        burst: 4,
        credits: Some(50),
        throttle_status: 403,
        no_credits_status: 429,
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 400,
        max_concurrency: 8,
        ..Conf::default()
    });

    // Without rules, a 403 is a refused key: the run stops at once.
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 6);
    assert_eq!(env.item_states().await.1, 0, "nothing failed");

    env.set_keys(&[("api.answers", HUNTER)]);
    let summary = env.dir.path().join("summary.json");
    let out = env
        .freshen(&["run", "--summary-json", summary.to_str().unwrap()])
        .await;
    assert_exit(&out, 3);
    let stats = env.sandbox().stats();
    assert!(
        stats.throttled > 0,
        "the vendor refused for its rate: {stats:?}"
    );
    let (done, failed, pending) = env.item_states().await;
    assert_eq!((done, failed), (50, 0), "{}", text(&out.stderr));
    assert_eq!(pending, 30, "the rest left for next month");
    assert_eq!(stats.credits_billed, 50);
    // The refused run gave back what it had reserved: the period's spent is
    // what the vendor billed, both runs together.
    assert_eq!(env.period_spent().await, 50, "{stats:?}");
    assert_eq!(read_json(&summary)["status"], "out_of_credits");
    // Each record was one attempt: the 403s were throttles, not tries.
    assert_eq!(in_state(&env, "done").await.1, 1);
}

/// A run of `records` against a vendor that queues each key's first
/// `queued` calls (202), with a rule that waits `wait` and tries again.
async fn run_against_a_queue(records: u64, queued: u32, wait: &str) -> (TestEnv, Output) {
    let mut env = TestEnv::new(records).await;
    env.vendor(SandboxOptions {
        queued,
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        max_attempts: 3,
        ..Conf::default()
    });
    let rule =
        format!("[{{ status = \"202\", means = \"later\", wait = \"{wait}\", billed = false }}]");
    env.set_keys(&[("api.answers", &rule)]);
    let out = env.freshen(&["run"]).await;
    (env, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_answer_is_tried_later_without_spending_an_attempt() {
    let (env, out) = run_against_a_queue(20, 2, "50ms").await;
    assert_exit(&out, 0);
    env.assert_each_written_once(20).await;
    let stats = env.sandbox().stats();
    assert_eq!((stats.queued, stats.requests), (40, 60), "{stats:?}");
    assert_eq!(
        in_state(&env, "done").await,
        (20, 1, None),
        "one attempt each"
    );
    assert_eq!(env.period_spent().await, 20, "the 202s were not billed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_still_queued_after_max_attempts_laters_fails_with_the_reason() {
    let (env, out) = run_against_a_queue(5, 10, "10ms").await;
    assert_exit(&out, 0);
    let (failed, _, reason) = in_state(&env, "failed").await;
    assert_eq!(failed, 5);
    let reason = reason.unwrap();
    assert!(
        reason.contains("202 Accepted") && reason.contains("still not ready after 3 tries"),
        "{reason}"
    );
    assert_eq!(env.sandbox().stats().queued, 15, "three laters a record");
    assert_eq!(env.period_spent().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_match_rule_marks_the_record_no_match_not_failed() {
    let mut env = TestEnv::new(20).await;
    env.vendor(SandboxOptions {
        faults: vec![
            ("5".into(), Fault::Status(404)),
            ("6".into(), Fault::Status(404)),
        ],
        latency: Duration::from_millis(5),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf::default());
    env.set_keys(&[(
        "api.answers",
        "[{ status = \"404\", means = \"no_match\" }]",
    )]);
    let summary = env.dir.path().join("summary.json");
    let out = env
        .freshen(&["run", "--summary-json", summary.to_str().unwrap()])
        .await;
    assert_exit(&out, 0);
    let json = read_json(&summary);
    assert_eq!(json["records"]["no_match"], 2, "{json}");
    assert_eq!(json["records"]["failed"], 0, "{json}");
    assert_eq!(json["status"], "complete");
    let (n, attempts, reason) = in_state(&env, "no_match").await;
    assert_eq!((n, attempts), (2, 1));
    assert!(reason.unwrap().starts_with("404 Not Found"));
    assert_eq!(
        env.period_spent().await,
        20,
        "a 404 is billed (credits.billed_statuses)"
    );
    let status = env.freshen(&["status"]).await;
    assert!(
        text(&status.stdout).contains("2 no match"),
        "{}",
        text(&status.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rule_names_its_entry_and_key() {
    let env = TestEnv::new(3).await;
    env.write_config(&Conf::default());
    env.set_keys(&[(
        "api.answers",
        "[{ means = \"ok\" }, { means = \"retry\", wait = \"1s\" }]",
    )]);
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 2);
    let err = text(&out.stderr);
    assert!(
        err.contains("api.answers[1].wait") && err.contains("throttle"),
        "{err}"
    );
}

/// The `hunter` sandbox profile, configured as README's worked example is:
/// the key in the query string, the two windows, Hunter's 403 and 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hunter_profile_is_refreshed_within_its_windows_until_its_credits_run_out() {
    use freshen::sandbox::{PROFILE_KEY, Profile};
    let mut env = TestEnv::new(60).await;
    let mut opts = SandboxOptions {
        credits: Some(40),
        ..SandboxOptions::default()
    };
    Profile::Hunter.apply(&mut opts);
    env.vendor(opts).await;
    env.write_config(&Conf {
        max_concurrency: 8,
        ..Conf::default()
    });
    env.set_keys(&[
        ("api.path", "\"/v1/lookup\""),
        (
            "api.query",
            "{ id = \"{id}\", api_key = \"${HUNTER_API_KEY}\" }",
        ),
        ("api.answers", HUNTER),
        ("limits.windows", "[\"15/s\", \"500/min\"]"),
    ]);
    let out = env
        .freshen_with_env(&["run"], &[("HUNTER_API_KEY", PROFILE_KEY)])
        .await;
    assert_exit(&out, 3);
    let stats = env.sandbox().stats();
    assert_eq!(stats.throttled, 0, "the windows held: {stats:?}");
    assert_eq!(
        env.item_states().await,
        (40, 0, 20),
        "{}",
        text(&out.stderr)
    );
    assert_eq!((stats.credits_billed, env.period_spent().await), (40, 40));
}
