//! `limits.windows` (issue 18 point 7): a vendor with several windows, every
//! call passing each; a long window used up ends the run as a quota does.

use std::time::Duration;

use freshen::sandbox::SandboxOptions;

use crate::harness::{Conf, TestEnv, assert_exit, read_json, text};

/// Records of the two-window runs: at 20/s, 8 s of calls.
const RECORDS: u64 = 160;

/// The sandbox plays a vendor of two windows, 20 calls a second and 60 in 5 s,
/// counted in fixed windows from its start.
async fn two_window_vendor(records: u64) -> TestEnv {
    let mut env = TestEnv::new(records).await;
    env.vendor(SandboxOptions {
        quota: vec![(20, Duration::from_secs(1)), (60, Duration::from_secs(5))],
        latency: Duration::from_millis(5),
        ..SandboxOptions::default()
    })
    .await;
    env
}

/// The most calls the sandbox saw in any of its fixed windows of `seconds`.
fn most_in_a_window(per_second: &[u64], seconds: usize) -> u64 {
    per_second
        .chunks(seconds)
        .map(|w| w.iter().sum())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_windows_held_by_the_pacer_draw_no_429() {
    let env = two_window_vendor(RECORDS).await;
    env.write_config(&Conf {
        rate: 100,
        max_concurrency: 8,
        max_delay: "10s",
        ..Conf::default()
    });
    env.set_keys(&[("limits.windows", r#"["20/1s", "60/5s"]"#)]);
    let summary = env.dir.path().join("summary.json");
    let out = env
        .freshen(&["run", "--summary-json", summary.to_str().unwrap()])
        .await;
    assert_exit(&out, 0);

    let stats = env.sandbox().stats();
    // Every call holds a slot of each window from before it is sent until a
    // window after its answer, so the vendor, which counts it in between, never
    // sees a 21st call in a second or a 61st in 5 s: not one 429.
    assert_eq!(
        (stats.requests, stats.ok, stats.throttled),
        (RECORDS, RECORDS, 0),
        "{stats:?}"
    );
    assert!(most_in_a_window(&stats.per_second, 1) <= 20, "{stats:?}");
    assert!(most_in_a_window(&stats.per_second, 5) <= 60, "{stats:?}");
    assert_eq!(stats.credits_billed, RECORDS);
    assert_eq!(env.item_states().await, (RECORDS as i64, 0, 0));
    env.assert_each_written_once(RECORDS as usize).await;
    let json = read_json(&summary);
    assert_eq!(json["status"], "complete");
    assert_eq!(json["calls"]["total"], RECORDS);
    assert_eq!(json["calls"]["throttled"], 0);
    assert_eq!(json["credits"]["spent"], RECORDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_vendor_with_only_limits_rate_throttles() {
    // The per-second window as limits.rate, as a config could say it before
    // windows: 20 calls a second meet the 5 s window's 60 after 3 s. The run
    // calls for 8 s at least, so whatever its start's place among the vendor's
    // windows, one of them overlaps it by more than 3 s: at least one 429.
    let env = two_window_vendor(RECORDS).await;
    env.write_config(&Conf {
        rate: 20,
        max_concurrency: 8,
        max_delay: "10s",
        ..Conf::default()
    });
    let summary = env.dir.path().join("summary.json");
    let out = env
        .freshen(&["run", "--summary-json", summary.to_str().unwrap()])
        .await;
    assert_exit(&out, 0);
    let stats = env.sandbox().stats();
    assert_eq!(stats.ok, RECORDS);
    assert!(stats.throttled > 0, "{stats:?}");
    assert_eq!(stats.requests, RECORDS + stats.throttled);
    assert_eq!(stats.credits_billed, RECORDS, "a 429 is not billed");
    env.assert_each_written_once(RECORDS as usize).await;
    let json = read_json(&summary);
    assert_eq!(json["calls"]["throttled"], stats.throttled);
    assert_eq!(json["credits"]["spent"], RECORDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_window_used_up_ends_the_run_until_it_frees() {
    // 50 calls an hour, 80 records: the 51st call would wait an hour, far past
    // retry.max_delay. The vendor itself has no quota: freshen stops on its own
    // count, without a refused call.
    let mut env = TestEnv::new(80).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf {
        rate: 100,
        max_concurrency: 8,
        max_delay: "1s",
        ..Conf::default()
    });
    env.set_keys(&[("limits.windows", r#"["50/1h"]"#)]);
    let summary = env.dir.path().join("summary.json");
    let args = ["run", "--summary-json", summary.to_str().unwrap()];
    let before = jiff::Timestamp::now();
    let out = env.freshen(&args).await;
    assert_exit(&out, 3);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("limits.windows 50/1h has no call free before"),
        "{stdout}"
    );
    let stats = env.sandbox().stats();
    assert_eq!((stats.requests, stats.throttled), (50, 0), "{stats:?}");
    assert_eq!(env.item_states().await, (50, 0, 30));
    let records = env.records().await;
    let written: Vec<_> = records.iter().filter(|r| r.writes > 0).collect();
    assert_eq!(written.len(), 50);
    assert!(written.iter().all(|r| r.writes == 1 && r.matches_vendor()));
    let json = read_json(&summary);
    assert_eq!(json["status"], "quota");
    assert_eq!(json["exit_code"], 3);
    assert_eq!(json["credits"]["spent"], 50);
    // An hour after the calls' answers, to the whole second.
    let until: jiff::Timestamp = json["resume_after"].as_str().unwrap().parse().unwrap();
    let ahead = until.duration_since(before).as_secs();
    assert!(
        (3600..3700).contains(&ahead),
        "resume_after {until}: {ahead} s ahead"
    );

    let status = text(&env.freshen(&["status"]).await.stdout);
    let at = format!("no call before {}", json["resume_after"].as_str().unwrap());
    assert!(status.contains(&at), "{at} in {status}");

    // Started again before then: nothing is sent.
    let out = env.freshen(&args).await;
    assert_exit(&out, 3);
    assert!(
        text(&out.stdout).contains("nothing sent"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(env.sandbox().stats().requests, 50, "no call in between");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_window_is_named_with_its_key_and_entry() {
    let env = TestEnv::new(1).await;
    env.write_config(&Conf::default());
    for (entry, says) in [
        ("15/fortnight", "`fortnight` is not a window"),
        ("0/s", "`0` is not a count of calls"),
        ("500", "is not CALLS/WINDOW"),
    ] {
        env.set_keys(&[("limits.windows", &format!(r#"["15/s", "{entry}"]"#))]);
        let out = env.freshen(&["run"]).await;
        assert_exit(&out, 2);
        let err = text(&out.stderr);
        assert!(
            err.contains("limits.windows[1]")
                && err.contains(&format!("entry \"{entry}\""))
                && err.contains(says),
            "{entry}: {err}"
        );
        assert!(
            err.contains(&format!("{}:", env.config_path().display())),
            "{err}"
        );
    }
}
