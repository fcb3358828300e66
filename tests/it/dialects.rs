//! Rate-limit headers in each vendor family's spelling (issue 18 point 8):
//! a vendor that says its limit is followed, whichever way it says it.

use std::time::Duration;

use freshen::sandbox::{Dialect, SandboxOptions, Stats};
use serde_json::Value;

use crate::harness::{Conf, TestEnv, assert_exit};

const RECORDS: u64 = 200;

/// A run of 200 records, one call at a time, against a vendor that allows 50
/// calls a second (a bucket of 50), configured ten times faster; with
/// `dialect`, the vendor says its limit on every answer. One call at a time,
/// the answer that says nothing is left comes before the next call is sent:
/// a run that reads it need not meet a 429 (with more in flight, the calls
/// already out when it comes are refused, whatever the dialect). The vendor's
/// counters, and the run's samples (`report --json`).
async fn run_against(dialect: Option<Dialect>) -> (Stats, Vec<Value>) {
    let mut env = TestEnv::new(RECORDS).await;
    env.vendor(SandboxOptions {
        rate: 50.0,
        burst: 50,
        latency: Duration::from_millis(2),
        ratelimit_headers: dialect.is_some(),
        ratelimit_dialect: dialect.unwrap_or_default(),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 500,
        max_concurrency: 1,
        max_delay: "2s",
        ..Conf::default()
    });
    assert_exit(&env.freshen(&["run"]).await, 0);
    env.assert_each_written_once(RECORDS as usize).await;
    let stats = env.sandbox().stats();
    assert_eq!(stats.ok, RECORDS, "{dialect:?}");
    assert_eq!(stats.requests, RECORDS + stats.throttled, "{dialect:?}");
    let out = env.freshen(&["report", "--json"]).await;
    assert_exit(&out, 0);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let samples = report["samples"].as_array().unwrap().clone();
    (stats, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ratelimit_dialect_is_read_and_spares_the_429s() {
    let (blind, _) = run_against(None).await;
    assert!(
        blind.throttled >= 1,
        "without headers the limit is learnt from a 429: {blind:?}"
    );

    // The current IETF draft states the policy (q=50;w=1): the pacer's rate
    // is set to 50 at the first answer and stays there.
    let (ietf, samples) = run_against(Some(Dialect::Ietf)).await;
    let paced: Vec<f64> = samples
        .iter()
        .map(|s| s["paced_rate"].as_f64().unwrap())
        .collect();
    assert!(
        !paced.is_empty() && paced.iter().all(|&r| r <= 50.0 + 1e-9),
        "paced at {paced:?}, the vendor said 50/s"
    );
    assert_eq!(ietf.throttled, 0, "{ietf:?}");

    // X-RateLimit-* and OpenAI's *-Requests state no window, only what is
    // left and when it resets: the run waits for the reset when nothing is
    // left (a pause with no 429 behind it), instead of spending a refused call.
    for dialect in [Dialect::X, Dialect::Openai] {
        let (stats, samples) = run_against(Some(dialect)).await;
        assert_eq!(stats.throttled, 0, "{dialect:?}: {stats:?}");
        assert!(
            samples.iter().any(|s| s["paused"] == true),
            "{dialect:?}: no wait for a reset in {samples:?}"
        );
    }
}
