//! Each class of answer, and what it does to the record and to the number of calls.

use freshen::sandbox::{Fault, SandboxOptions};

use crate::harness::{Conf, TestEnv, assert_exit};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_answer_class_ends_its_record_as_it_should() {
    let mut env = TestEnv::new(20).await;
    let fault = |key: &str, f: Fault| (key.to_string(), f);
    env.vendor(SandboxOptions {
        faults: vec![
            fault("5", Fault::Status(404)),
            fault("6", Fault::Malformed),
            fault("7", Fault::Oversized),
            fault("8", Fault::WrongType),
            fault("9", Fault::Flaky(2)),
            fault("10", Fault::Throttle(1)),
            fault("11", Fault::Flaky(10)),
            fault("12", Fault::Status(422)),
        ],
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        max_attempts: 3,
        ..Conf::default()
    });

    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);

    let failed = |reason: &str| (String::from("failed"), Some(reason.to_string()));
    let (state, reason, attempts) = env.item("5").await;
    assert_eq!((state, reason), failed("404 Not Found"));
    assert_eq!(attempts, 1);
    let (state, reason, _) = env.item("6").await;
    assert_eq!(state, "failed");
    assert!(reason.unwrap().starts_with("answer is not JSON"));
    let (state, reason, _) = env.item("7").await;
    assert_eq!(
        (state, reason),
        failed("answer larger than api.max_body_bytes (1048576 bytes)")
    );
    let (state, reason, _) = env.item("8").await;
    assert_eq!(
        (state, reason),
        failed("/score: expected an integer, got a string")
    );
    let (state, reason, attempts) = env.item("9").await;
    assert_eq!(
        (state.as_str(), reason, attempts),
        ("done", None, 3),
        "transient twice, then success"
    );
    let (state, _, attempts) = env.item("10").await;
    assert_eq!(
        (state.as_str(), attempts),
        ("done", 1),
        "a 429 is not an attempt"
    );
    let (state, reason, attempts) = env.item("11").await;
    assert_eq!(state, "failed");
    assert_eq!(attempts, 3);
    assert!(
        reason
            .unwrap()
            .contains("503 Service Unavailable (after 3 attempts)")
    );
    let (state, reason, _) = env.item("12").await;
    assert_eq!((state, reason), failed("422 Unprocessable Entity"));

    // One call per record, plus 2 for the flaky one, 1 for the throttled one,
    // and 2 more for the one that never recovers.
    let stats = env.sandbox().stats();
    assert_eq!(stats.requests, 20 + 2 + 1 + 2, "{stats:?}");
    assert_eq!(stats.throttled, 1);

    let records = env.records().await;
    for r in &records {
        let failed = [5, 6, 7, 8, 11, 12].contains(&r.id);
        assert_eq!(r.writes, i64::from(!failed), "record {}", r.id);
        assert_eq!(r.matches_vendor(), !failed, "record {}", r.id);
    }
}
