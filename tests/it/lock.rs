//! Cron safety: one run at a time per table, and a dead holder's lock taken over.

use std::time::Duration;

use freshen::sandbox::SandboxOptions;

use crate::harness::{Conf, TestEnv, assert_exit, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_exits_5_naming_the_holder_until_the_lock_is_stale() {
    let mut env = TestEnv::new(100).await;
    env.vendor(SandboxOptions {
        latency: Duration::from_millis(200),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 50,
        max_concurrency: 4,
        lock_stale_after: "2s",
        ..Conf::default()
    });

    let mut first = env.spawn(&["run"]);
    env.wait_for_calls(1).await;
    let pid = first.id().unwrap();
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 5);
    let err = text(&out.stderr);
    assert!(
        err.contains("holds the lock") && err.contains(&format!(":{pid} ")),
        "{err}"
    );
    assert!(err.contains("lock.stale_after"), "{err}");

    // The holder dies without releasing: its lock stands until it is stale.
    first.kill().await.unwrap();
    assert_exit(&env.freshen(&["run"]).await, 5);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    assert!(
        text(&out.stderr).contains("resuming run 1"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env.item_states().await, (100, 0, 0));
    assert!(env.records().await.iter().all(|r| r.writes == 1));

    // Released at the end: the next run is not locked out.
    assert_exit(&env.freshen(&["run"]).await, 0);
}
