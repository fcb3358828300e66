//! Crashes and interrupts: nothing lost, nothing written twice, few calls repeated.

use std::time::Duration;

use freshen::sandbox::SandboxOptions;

use crate::harness::{Conf, TestEnv, assert_exit, text};

/// Sends SIGINT, as Ctrl-C would.
async fn interrupt(child: &tokio::process::Child) {
    let pid = child.id().expect("the child runs").to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
}

/// Waits until the newest run has at least `done` records done, while `child` runs.
async fn wait_for_done(env: &TestEnv, child: &mut tokio::process::Child, done: i64) {
    for _ in 0..600 {
        if env.try_item_states().await.is_ok_and(|(d, _, _)| d >= done) {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                e.read_to_string(&mut err).await.unwrap();
            }
            panic!("freshen ended ({status}) before {done} records were done:\n{err}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the run did not reach {done} done records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_several_points_loses_nothing_and_writes_nothing_twice() {
    const RECORDS: u64 = 2000;
    let mut env = TestEnv::new(RECORDS).await;
    env.vendor(SandboxOptions {
        latency: Duration::from_millis(5),
        ..SandboxOptions::default()
    })
    .await;
    let conf = Conf {
        rate: 1500,
        max_concurrency: 16,
        batch_size: 50,
        lock_stale_after: "1s",
        ..Conf::default()
    };
    env.write_config(&conf);

    let mut kills = 0;
    for point in [200, 700, 1300] {
        let mut child = env.spawn(&["run"]);
        wait_for_done(&env, &mut child, point).await;
        child.kill().await.unwrap(); // SIGKILL
        kills += 1;
        // The dead run's lock stands until it is stale.
        tokio::time::sleep(Duration::from_millis(1300)).await;
    }
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    assert!(
        text(&out.stderr).contains("resuming run 1"),
        "{}",
        text(&out.stderr)
    );

    assert_eq!(env.item_states().await, (RECORDS as i64, 0, 0));
    env.assert_each_written_once(RECORDS as usize).await;
    let repeated_bound = RECORDS + (conf.max_concurrency as u64 + conf.batch_size as u64) * kills;
    let ok = env.sandbox().stats().ok;
    assert!(
        ok >= RECORDS && ok <= repeated_bound,
        "{ok} successful calls, bound {repeated_bound}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_checkpoints_and_exits_130_then_resumes() {
    let mut env = TestEnv::new(1000).await;
    env.vendor(SandboxOptions {
        latency: Duration::from_millis(20),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 400,
        max_concurrency: 8,
        ..Conf::default()
    });

    let mut child = env.spawn(&["run"]);
    wait_for_done(&env, &mut child, 100).await;
    interrupt(&child).await;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_exit(&out, 130);

    // Everything answered before the exit is in the database: the calls the vendor
    // answered with success equal the records marked done.
    let (done, failed, pending) = env.item_states().await;
    assert_eq!(done as u64, env.sandbox().stats().ok);
    assert!(pending > 0 && failed == 0);
    let db = env.db().await;
    let status: String = sqlx::query_scalar("SELECT status FROM freshen_runs WHERE id = 1")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(status, "interrupted");

    assert_exit(&env.freshen(&["run"]).await, 0);
    assert_eq!(env.item_states().await, (1000, 0, 0));
    assert_eq!(
        env.sandbox().stats().ok,
        1000,
        "no call repeated after a clean interrupt"
    );
    assert!(env.records().await.iter().all(|r| r.writes == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_exits_at_once_without_draining() {
    let mut env = TestEnv::new(50).await;
    // Every answer takes 3 s: draining the calls in flight would take that long.
    env.vendor(SandboxOptions {
        latency: Duration::from_secs(3),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 100,
        max_concurrency: 4,
        ..Conf::default()
    });

    let child = env.spawn(&["run"]);
    // Wait until calls are in flight.
    env.wait_for_calls(2).await;
    for _ in 0..2 {
        interrupt(&child).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_exit(&out, 130);
    assert!(
        text(&out.stderr).contains("exiting at once"),
        "{}",
        text(&out.stderr)
    );
    // The calls in flight were abandoned, not drained: nothing was written.
    assert_eq!(env.item_states().await.0, 0);
    assert!(env.records().await.iter().all(|r| r.writes == 0));
}

/// An interrupted demo says how to go on with the demo, not with `run`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_demo_says_to_rerun_the_demo() {
    let env = TestEnv::new_sqlite(2000).await;
    env.write_config(&Conf {
        rate: 200,
        ..Conf::default()
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = env.spawn(&["demo", "--listen", &port.to_string()]);
    wait_for_done(&env, &mut child, 50).await;
    interrupt(&child).await;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_exit(&out, 130);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("interrupted: `freshen demo` resumes"),
        "{stdout}"
    );
    assert!(!stdout.contains("freshen run"), "{stdout}");
    // And it does.
    let out = env.freshen(&["demo", "--listen", &port.to_string()]).await;
    assert_exit(&out, 0);
    assert_eq!(env.item_states().await, (2000, 0, 0));
}
