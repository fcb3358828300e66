//! Flow control against the sandbox: each mechanism that keeps freshen from
//! overwhelming the vendor. Bounds are loose and nothing here measures speed;
//! `bench/flow.py` does that.

use std::time::Duration;

use freshen::sandbox::{Fault, SandboxOptions};

use crate::harness::{Conf, TestEnv, assert_exit, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_every_worker_for_the_retry_after() {
    let mut env = TestEnv::new(300).await;
    env.vendor(SandboxOptions {
        faults: vec![("40".into(), Fault::Throttle(1))],
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 2000,
        max_delay: "5s",
        ..Conf::default()
    });
    assert_exit(&env.freshen(&["run"]).await, 0);

    // Calls already past the pacer may land just after the 429; none starts during
    // the rest of the vendor's second (Retry-After: 1).
    env.assert_one_throttle_paused_all(Duration::from_millis(100)..Duration::from_millis(900));
    assert_eq!(env.item_states().await, (300, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_waiting_to_retry_does_not_hold_a_concurrency_slot() {
    let mut env = TestEnv::new(20).await;
    env.vendor(SandboxOptions {
        faults: vec![("1".into(), Fault::Flaky(1))],
        ..SandboxOptions::default()
    })
    .await;
    // One call at a time, and a long backoff for the record that failed.
    env.write_config(&Conf {
        max_concurrency: 1,
        base_delay: "1s",
        ..Conf::default()
    });
    assert_exit(&env.freshen(&["run"]).await, 0);

    // Record 1 waits out its backoff (a tenth of the 1 s base delay, the vendor
    // being otherwise healthy) before its second try; the others are called in
    // the meantime, not after it.
    let timeline = env.sandbox().timeline();
    let tries: Vec<usize> = (0..timeline.keys.len())
        .filter(|i| timeline.keys[*i] == "1")
        .collect();
    assert_eq!(tries.len(), 2, "{:?}", timeline.keys);
    let failed_at = timeline.arrivals[tries[0]];
    let meanwhile = timeline
        .arrivals
        .iter()
        .filter(|a| **a > failed_at && **a < timeline.arrivals[tries[1]])
        .count();
    assert!(
        meanwhile >= 5,
        "only {meanwhile} calls while record 1 waited: its wait held the only slot"
    );
    assert_eq!(env.item_states().await, (20, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_headers_set_the_pace_without_rejections() {
    let mut env = TestEnv::new(400).await;
    env.vendor(SandboxOptions {
        rate: 200.0,
        burst: 10,
        ratelimit_headers: true,
        latency: Duration::from_millis(10),
        ..SandboxOptions::default()
    })
    .await;
    // The config claims five times what the vendor allows.
    env.write_config(&Conf {
        rate: 1000,
        max_concurrency: 32,
        ..Conf::default()
    });
    assert_exit(&env.freshen(&["run"]).await, 0);
    let stats = env.sandbox().stats();
    assert_eq!(stats.ok, 400);
    assert!(
        stats.throttled * 50 <= stats.requests,
        "{} of {} calls throttled",
        stats.throttled,
        stats.requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_without_headers_is_learnt_from_throttling() {
    let mut env = TestEnv::new(400).await;
    env.vendor(SandboxOptions {
        rate: 150.0,
        burst: 10,
        latency: Duration::from_millis(10),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 1000,
        max_concurrency: 32,
        max_delay: "2s",
        ..Conf::default()
    });
    assert_exit(&env.freshen(&["run"]).await, 0);
    let stats = env.sandbox().stats();
    assert_eq!(stats.ok, 400);
    // Without adaptation every other call would be refused at 1000/s against 150/s.
    assert!(
        stats.throttled * 5 <= stats.requests,
        "{} of {} calls throttled",
        stats.throttled,
        stats.requests
    );
    assert_eq!(
        env.item_states().await,
        (400, 0, 0),
        "throttled calls are not attempts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_cap_without_headers_is_found_and_held() {
    let mut env = TestEnv::new(600).await;
    env.vendor(SandboxOptions {
        max_concurrency: 4,
        latency: Duration::from_millis(20),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 1000,
        max_concurrency: 64,
        max_attempts: 5,
        ..Conf::default()
    });
    assert_exit(&env.freshen(&["run"]).await, 0);
    let stats = env.sandbox().stats();
    assert_eq!(stats.ok, 600);
    assert_eq!(stats.max_in_flight, 4, "the cap was reached");
    assert!(
        stats.unavailable * 10 <= stats.requests,
        "{} of {} calls refused",
        stats.unavailable,
        stats.requests
    );
    assert_eq!(env.item_states().await, (600, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_pauses_the_run_without_failing_records_or_spending_attempts() {
    let mut env = TestEnv::new(600).await;
    env.vendor(SandboxOptions {
        outage_start: Some(Duration::from_millis(600)),
        outage: Duration::from_millis(1500),
        latency: Duration::from_millis(5),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 200,
        max_attempts: 2,
        ..Conf::default()
    });
    assert_exit(&env.freshen(&["run"]).await, 0);
    let stats = env.sandbox().stats();
    assert!(stats.during_outage > 0, "the run met the outage: {stats:?}");
    assert!(
        stats.during_outage <= 25,
        "{} calls during a 1.5 s outage",
        stats.during_outage
    );
    assert_eq!(
        env.item_states().await,
        (600, 0, 0),
        "no record failed, though max_attempts is 2"
    );
    let db = env.db().await;
    let most: i64 = sqlx::query_scalar("SELECT MAX(attempts) FROM freshen_items")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    assert!(most <= 2, "an item spent {most} attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_failing_one_call_in_ten_is_not_an_outage() {
    let mut env = TestEnv::new(1000).await;
    // Errors come back at once, successes after 20 ms: a few errors arrive
    // together while the successes sent between them are still on the way.
    env.vendor(SandboxOptions {
        error_rate: 0.1,
        instant_errors: true,
        latency: Duration::from_millis(20),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 300,
        max_attempts: 10,
        ..Conf::default()
    });
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    let stats = env.sandbox().stats();
    assert!(stats.errors >= 50, "the vendor failed calls: {stats:?}");
    // Five failures in a row, the run that opens the breaker at this share,
    // happen by chance about once in 100,000 calls.
    let outages = text(&out.stderr).matches("fails every call").count();
    assert!(
        outages <= 1,
        "{outages} outages called on a vendor that works"
    );
    let db = env.db().await;
    let paused: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM freshen_samples WHERE outage = 1")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    assert!(
        paused <= 1,
        "{paused} seconds of the timeline marked as an outage"
    );
    assert_eq!(env.item_states().await, (1000, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_always_fail_are_not_an_outage_when_left_alone_at_the_tail() {
    let mut env = TestEnv::new(300).await;
    // Three poison keys: answered 500 every time.
    env.vendor(SandboxOptions {
        faults: ["10", "20", "30"]
            .iter()
            .map(|k| (k.to_string(), Fault::Status(500)))
            .collect(),
        ..SandboxOptions::default()
    })
    .await;
    // Their retries come long after every other record is done, one after another.
    env.write_config(&Conf {
        base_delay: "300ms",
        max_attempts: 4,
        max_outage: "10s",
        ..Conf::default()
    });
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    assert!(
        !text(&out.stderr).contains("fails every call"),
        "three keys failing in turn were called an outage"
    );
    assert_eq!(env.item_states().await, (297, 3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_outage_the_run_checkpoints_and_exits_4_then_resumes() {
    let mut env = TestEnv::new(400).await;
    env.vendor(SandboxOptions {
        outage_start: Some(Duration::from_millis(500)),
        outage: Duration::from_secs(3600),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 200,
        max_outage: "2s",
        ..Conf::default()
    });
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 4);
    assert!(
        text(&out.stdout).contains("retry.max_outage"),
        "{}",
        text(&out.stdout)
    );
    let (done, failed, pending) = env.item_states().await;
    assert!(
        done > 0 && pending > 0 && failed == 0,
        "{done} done, {failed} failed, {pending} pending"
    );
    assert_eq!(
        done as u64,
        env.sandbox().stats().ok,
        "every answer before the outage was checkpointed"
    );

    // The vendor is back: the next run resumes and finishes.
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf {
        rate: 200,
        ..Conf::default()
    });
    assert_exit(&env.freshen(&["run"]).await, 0);
    assert_eq!(env.item_states().await, (400, 0, 0));
    assert!(env.records().await.iter().all(|r| r.writes == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_that_drops_mid_run_is_followed() {
    let mut env = TestEnv::new(500).await;
    env.vendor(SandboxOptions {
        rate: 300.0,
        burst: 10,
        rate_changes: vec![(Duration::from_millis(700), 80.0)],
        ratelimit_headers: true,
        latency: Duration::from_millis(5),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 300,
        max_delay: "2s",
        ..Conf::default()
    });
    assert_exit(&env.freshen(&["run"]).await, 0);
    let stats = env.sandbox().stats();
    assert_eq!(stats.ok, 500);
    assert!(
        stats.throttled * 20 <= stats.requests,
        "{} of {} calls throttled",
        stats.throttled,
        stats.requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_503s_do_not_shrink_the_concurrency_limit() {
    // A load balancer answering one call in ten with a 503 and no Retry-After: at
    // once, before the vendor's latency, or after it (a backend failing its work).
    for instant in [true, false] {
        let mut env = TestEnv::new(1500).await;
        env.vendor(SandboxOptions {
            error_rate: 0.1,
            error_status: 503,
            instant_errors: instant,
            latency: Duration::from_millis(30),
            ..SandboxOptions::default()
        })
        .await;
        env.write_config(&Conf {
            max_attempts: 10,
            ..Conf::default()
        });
        let out = env.freshen(&["run"]).await;
        assert_exit(&out, 0);
        let stats = env.sandbox().stats();
        assert!(stats.errors >= 50, "the vendor failed calls: {stats:?}");
        // Errors that do not grow with the calls in flight are not overload: the
        // limit stays at its maximum of 16 (the old law fell to 1 or 2 in flight).
        assert!(
            stats.max_in_flight >= 12,
            "instant errors {instant}: at most {} in flight",
            stats.max_in_flight
        );
        assert_eq!(env.item_states().await, (1500, 0, 0));
    }
}
