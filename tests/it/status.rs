//! `freshen status`, during and after a run, from the database alone.

use std::time::Duration;

use freshen::sandbox::SandboxOptions;

use crate::harness::{Conf, TestEnv, assert_exit, text};

async fn status(env: &TestEnv) -> serde_json::Value {
    let out = env.freshen(&["status", "--json"]).await;
    assert_exit(&out, 0);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_right_counts_during_and_after_a_run() {
    let mut env = TestEnv::new(800).await;
    env.vendor(SandboxOptions {
        latency: Duration::from_millis(10),
        faults: vec![("4".into(), freshen::sandbox::Fault::Status(404))],
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 300,
        ..Conf::default()
    });

    let before = status(&env).await;
    assert!(before["run"].is_null());

    let child = env.spawn(&["run"]);
    let mut seen_midway = false;
    for _ in 0..300 {
        let s = status(&env).await;
        let r = &s["run"]["records"];
        if s["run"]["status"] == "running"
            && r["done"].as_i64() > Some(0)
            && r["pending"].as_i64() > Some(0)
        {
            assert_eq!(r["total"], 800);
            let sum = r["done"].as_i64().unwrap()
                + r["failed"].as_i64().unwrap()
                + r["pending"].as_i64().unwrap();
            assert_eq!(sum, 800);
            // The status's count is the database's.
            let (done, _, _) = env.item_states().await;
            assert!(done >= r["done"].as_i64().unwrap());
            seen_midway = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_midway, "status never showed the run in progress");
    let out = child.wait_with_output().await.unwrap();
    assert_exit(&out, 0);

    let after = status(&env).await;
    assert_eq!(after["run"]["status"], "complete");
    assert_eq!(after["run"]["records"]["done"], 799);
    assert_eq!(after["run"]["records"]["failed"], 1);
    assert_eq!(after["run"]["records"]["pending"], 0);
    assert_eq!(after["run"]["failures"][0][0], "4");
    assert_eq!(
        after["credits"]["spent"], 800,
        "the 404 is billed too, as configured by default"
    );

    let human = env.freshen(&["status"]).await;
    assert!(
        text(&human.stdout).contains("799 done, 1 failed, 0 pending"),
        "{}",
        text(&human.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_the_outage_a_run_is_in_and_its_cause() {
    let mut env = TestEnv::new(600).await;
    env.vendor(SandboxOptions {
        outage_start: Some(Duration::from_millis(500)),
        outage: Duration::from_secs(3),
        latency: Duration::from_millis(5),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 100,
        ..Conf::default()
    });
    let child = env.spawn(&["run"]);
    let mut seen = None;
    for _ in 0..100 {
        let s = status(&env).await;
        if !s["run"]["outage"].is_null() {
            seen = Some(s["run"]["outage"].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outage = seen.expect("status showed the outage while the run was in it");
    let cause = outage["cause"].as_str().unwrap_or_default();
    assert!(
        cause.contains("503"),
        "the cause is the vendor's answer: {outage}"
    );
    let human = env.freshen(&["status"]).await;
    let human = text(&human.stdout);
    assert!(
        human.contains("outage") && human.contains("503") || !human.contains("running"),
        "{human}"
    );
    assert_exit(&child.wait_with_output().await.unwrap(), 0);
    let after = status(&env).await;
    assert!(after["run"]["outage"].is_null(), "{after:#}");
}

/// Smaller things an operator meets: the selection said in words, a bad log
/// filter named, the exit codes in `--help`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_all_records_and_bad_log_filters_and_help_are_plain() {
    let mut env = TestEnv::new(10).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    assert_exit(&env.freshen(&["run"]).await, 0);
    let out = env.freshen(&["status"]).await;
    assert_exit(&out, 0);
    assert!(
        text(&out.stdout).contains("(selection: all records)"),
        "{}",
        text(&out.stdout)
    );

    let out = env.freshen(&["status", "--log", "freshen=loud"]).await;
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("--log `freshen=loud`"),
        "{}",
        text(&out.stderr)
    );

    for args in [&["--help"][..], &["run", "--help"], &["demo", "--help"]] {
        let out = env.bare_command(args).output().await.unwrap();
        assert_exit(&out, 0);
        let help = text(&out.stdout);
        assert!(
            help.contains("Exit codes:") && help.contains("130  interrupted"),
            "{help}"
        );
        assert!(
            help.contains("5    another run of the same table holds the lock"),
            "{help}"
        );
        for exit in freshen::Exit::ALL {
            let code = format!("{} ", exit.code());
            assert!(
                help.lines().any(|l| l.trim_start().starts_with(&code)),
                "exit code {code}missing from {args:?}: {help}"
            );
        }
    }
}

/// `status` reads the database: it needs no vendor token unless it would ask
/// the vendor (`credits.remaining_url`), and then it says what it skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_needs_no_vendor_token_and_says_what_it_skipped() {
    let mut env = TestEnv::new(10).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf {
        headers: r#"headers = { Authorization = "Bearer ${VENDOR_TOKEN}" }"#,
        ..Conf::default()
    });
    let with_token = |args: &[&str]| {
        let mut cmd = env.command(args);
        cmd.env("VENDOR_TOKEN", "t0k3n");
        cmd
    };
    assert_exit(&with_token(&["run"]).output().await.unwrap(), 0);

    // Without the token: the run and the credits, from the database.
    let out = env.freshen(&["status"]).await;
    assert_exit(&out, 0);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("10 done, 0 failed, 0 pending"), "{stdout}");
    assert!(stdout.contains("credits "), "{stdout}");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let out = env.freshen(&["status", "--json"]).await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["run"]["records"]["done"], 10);
    // Nor do the other commands that read the database.
    for args in [
        &["estimate", "--offline"][..],
        &["report", "--json"],
        &["prune", "--dry-run"],
    ] {
        assert_exit(&env.freshen(args).await, 0);
    }

    // With credits.remaining_url it would ask the vendor: without the token it
    // does not, says so and why, and reports the database's figures.
    env.set_keys(&[
        ("credits.remaining_url", "\"/v1/account\""),
        ("credits.remaining_pointer", "\"/credits/remaining\""),
    ]);
    let out = env.freshen(&["status"]).await;
    assert_exit(&out, 0);
    let err = text(&out.stderr);
    assert!(
        err.contains("credits.remaining_url")
            && err.contains("VENDOR_TOKEN")
            && err.contains("--offline"),
        "{err}"
    );
    assert!(
        text(&out.stdout).contains("10 done"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        env.sandbox().stats().account,
        0,
        "no call without the token"
    );
    // --offline: nothing to skip, nothing said.
    let out = env.freshen(&["status", "--offline"]).await;
    assert_exit(&out, 0);
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    // With the token it asks.
    assert_exit(&with_token(&["status"]).output().await.unwrap(), 0);
    assert_eq!(env.sandbox().stats().account, 1);

    // A run calls the vendor: it still refuses to start without the token.
    let out = env.freshen(&["run", "--new"]).await;
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("${VENDOR_TOKEN}"),
        "{}",
        text(&out.stderr)
    );
}

/// A `--log` filter that does not say what it means is an error naming the
/// directive, not a silent default: a misspelt level would log nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_log_directive_is_named() {
    let env = TestEnv::new(1).await;
    env.write_config(&Conf::default());
    for (filter, named) in [
        ("info,freshen=loud", "`freshen=loud`"),
        ("debugg", "`debugg`"),
        ("warning", "`warning`"),
        ("freshen=debug,inf", "`inf`"),
    ] {
        let out = env.freshen(&["status", "--log", filter]).await;
        assert_exit(&out, 2);
        let err = text(&out.stderr);
        assert!(
            err.contains("--log") && err.contains(&format!("directive {named}")),
            "{filter}: {err}"
        );
    }
    // Levels (any case), targets with a level, and a crate freshen logs from.
    for filter in [
        "DEBUG",
        "freshen=debug,warn",
        "sqlx",
        "freshen::engine=trace",
        "off",
    ] {
        let out = env.freshen(&["status", "--log", filter]).await;
        assert_exit(&out, 0);
    }
}
