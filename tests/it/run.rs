//! The main job end to end: every selected record refreshed with the vendor's values.

use std::time::Duration;

use freshen::sandbox::SandboxOptions;

use crate::harness::{Conf, TestEnv, assert_exit, read_json, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_every_record_with_the_vendors_values() {
    let mut env = TestEnv::new(3000).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    let summary = env.dir.path().join("summary.json");

    let out = env
        .freshen(&["run", "--summary-json", summary.to_str().unwrap()])
        .await;
    assert_exit(&out, 0);

    let records = env.records().await;
    assert_eq!(records.len(), 3000);
    for r in &records {
        assert!(r.matches_vendor(), "record {} holds {r:?}", r.id);
        assert_eq!(r.writes, 1, "record {} written {} times", r.id, r.writes);
        assert!(
            r.refreshed_at
                .as_deref()
                .is_some_and(|t| t.starts_with("20") && t.ends_with('Z'))
        );
    }
    let s = read_json(&summary);
    assert_eq!(s["status"], "complete");
    assert_eq!(s["records"]["done"], 3000);
    assert_eq!(s["records"]["pending"], 0);
    assert_eq!(s["calls"]["ok"], 3000);
    assert_eq!(s["credits"]["spent"], 3000);
    assert_eq!(env.sandbox().stats().ok, 3000);
    assert!(
        text(&out.stdout).contains("3000 done"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_a_complete_selection_spends_nothing() {
    let mut env = TestEnv::new(50).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    assert_exit(&env.freshen(&["run"]).await, 0);
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    assert!(
        text(&out.stdout).contains("is complete"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(env.sandbox().stats().requests, 50);

    assert_exit(&env.freshen(&["run", "--new"]).await, 0);
    assert_eq!(env.sandbox().stats().requests, 100);
    assert!(env.records().await.iter().all(|r| r.writes == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_flags_choose_the_records_stalest_first() {
    let mut env = TestEnv::new(300).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());

    let out = env
        .freshen(&["run", "--ids", "10..19", "--ids", "250", "--ids", "7"])
        .await;
    assert_exit(&out, 0);
    let refreshed: Vec<i64> = env
        .records()
        .await
        .iter()
        .filter(|r| r.writes > 0)
        .map(|r| r.id)
        .collect();
    assert_eq!(refreshed, [7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 250]);

    // Stalest first: the sample leaves every third record never refreshed (NULL),
    // and those come before any dated one.
    let out = env.freshen(&["run", "--limit", "20"]).await;
    assert_exit(&out, 0);
    let db = env.db().await;
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT key FROM freshen_items WHERE run_id = (SELECT MAX(id) FROM freshen_runs) ORDER BY seq",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(keys.len(), 20);
    assert!(
        keys.iter().all(|k| k.parse::<i64>().unwrap() % 3 == 0),
        "{keys:?}"
    );

    // --stale-before: records refreshed before the date, or never. Records the runs
    // above refreshed carry today's date; the sample's others run from January to
    // October 2026.
    let expected: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM people WHERE refreshed_at IS NULL OR refreshed_at < '2026-02-01T00:00:00Z'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(expected > 0);
    let out = env.freshen(&["run", "--stale-before", "2026-02-01"]).await;
    assert_exit(&out, 0);
    let planned: i64 = sqlx::query_scalar(
        "SELECT total FROM freshen_runs WHERE id = (SELECT MAX(id) FROM freshen_runs)",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    assert_eq!(planned, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_the_environment_never_leave_the_process() {
    let mut env = TestEnv::new(30).await;
    env.vendor(SandboxOptions {
        faults: vec![("3".into(), freshen::sandbox::Fault::Status(404))],
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        headers: r#"headers = { Authorization = "Bearer ${VENDOR_TOKEN}" }"#,
        ..Conf::default()
    });
    let summary = env.dir.path().join("summary.json");
    let secret = "tok-3f9a7c1e5b";

    let out = env
        .command(&[
            "run",
            "--log",
            "trace",
            "--summary-json",
            summary.to_str().unwrap(),
        ])
        .env("VENDOR_TOKEN", secret)
        .output()
        .await
        .unwrap();
    assert_exit(&out, 0);
    let status = env
        .command(&["status", "--json"])
        .env("VENDOR_TOKEN", secret)
        .output()
        .await
        .unwrap();
    let db_bytes = env.database_bytes();

    for (what, bytes) in [
        ("stdout", &out.stdout),
        ("stderr", &out.stderr),
        ("status", &status.stdout),
        ("summary", &std::fs::read(&summary).unwrap()),
        ("database", &db_bytes),
    ] {
        assert!(
            !text(bytes).contains(secret),
            "the secret leaked into {what}"
        );
    }
    // The trace log did run: it is not vacuously clean.
    assert!(!out.stderr.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_keys_are_encoded_into_the_path_and_written_back() {
    let keys = ["p-001", "a b", "x/y", "ü?&=#", "50%"];
    let mut env = TestEnv::with_text_keys(&keys).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());

    let out = env
        .freshen(&[
            "run", "--ids", "x/y", "--ids", "a b", "--ids", "ü?&=#", "--ids", "50%", "--ids",
            "p-001",
        ])
        .await;
    assert_exit(&out, 0);
    let db = env.db().await;
    for key in keys {
        let (title, score): (Option<String>, Option<i64>) =
            sqlx::query_as("SELECT title, score FROM people WHERE id = $1")
                .bind(key)
                .fetch_one(&db)
                .await
                .unwrap();
        let p = freshen::sandbox::person(key);
        assert_eq!(title.as_deref(), p["title"].as_str(), "key {key:?}");
        assert_eq!(score, p["score"].as_i64(), "key {key:?}");
    }
    db.close().await;
    assert_eq!(
        env.sandbox()
            .stats()
            .per_key_ok
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .len(),
        5
    );

    // A range needs an integer key.
    let out = env.freshen(&["run", "--ids", "1..5"]).await;
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("a range needs an integer key"),
        "{}",
        text(&out.stderr)
    );
}

/// `--summary-json` after every exit: a script reading it after the run must
/// never find last month's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_json_is_written_on_every_exit() {
    let mut env = TestEnv::new(300).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf {
        reserve: Conf::default().allowance,
        ..Conf::default()
    });
    let path = env.dir.path().join("last.json");
    let file = path.to_str().unwrap();
    let stale = || std::fs::write(&path, "{\"status\": \"last month\"}").unwrap();
    let check = |out: &std::process::Output, code: i32, status: &str| {
        assert_exit(out, code);
        let json = read_json(&path);
        assert_eq!(json["exit_code"], code, "{json}");
        assert_eq!(json["status"], status, "{json}");
    };

    // Nothing to spend: exit 3 before any call.
    stale();
    let out = env
        .freshen(&["run", "--spend-remaining", "--summary-json", file])
        .await;
    check(&out, 3, "budget");

    // A usage error after the flags parse: exit 2, the message kept.
    stale();
    let out = env
        .freshen(&["run", "--pace-until", "2001-01-01", "--summary-json", file])
        .await;
    check(&out, 2, "usage_error");
    assert!(
        read_json(&path)["message"]
            .as_str()
            .unwrap()
            .contains("--pace-until")
    );

    // The database cannot be opened: exit 1.
    stale();
    let missing = env.dir.path().join("no/such/dir/x.db");
    let url = format!("sqlite://{}", missing.display());
    let out = env
        .freshen(&["run", "--database-url", &url, "--summary-json", file])
        .await;
    check(&out, 1, "error");

    // Another run holds the lock: exit 5.
    env.write_config(&Conf {
        rate: 50,
        ..Conf::default()
    });
    let mut first = env.spawn(&["run"]);
    env.wait_for_calls(1).await;
    stale();
    let out = env.freshen(&["run", "--summary-json", file]).await;
    check(&out, 5, "locked");
    first.kill().await.unwrap();
    let _ = first.wait().await;

    // The full summary carries the exit code too.
    env.write_config(&Conf {
        lock_stale_after: "1s",
        ..Conf::default()
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stale();
    let out = env.freshen(&["run", "--summary-json", file]).await;
    check(&out, 0, "complete");
    assert_eq!(read_json(&path)["records"]["done"], 300);
}

/// A wrong `api.base_url` (nothing listens there) is not an outage to probe for
/// `retry.max_outage` (30 minutes here): the run stops after
/// `retry.connect_grace` with exit 4, naming the key and the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_base_url_stops_within_the_connect_grace() {
    let env = TestEnv::new(50).await;
    // No sandbox: the config points at 127.0.0.1:9, where nothing listens.
    env.write_config(&Conf {
        max_outage: "30m",
        ..Conf::default()
    });
    env.set_keys(&[("retry.connect_grace", "\"2s\"")]);
    let summary = env.dir.path().join("last.json");
    let out = env
        .freshen(&["run", "--summary-json", summary.to_str().unwrap()])
        .await;
    assert_exit(&out, 4);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stdout.contains("cannot reach the vendor at api.base_url (http://127.0.0.1:9)")
            && stdout.contains("retry.connect_grace (2s)"),
        "{stdout}"
    );
    assert!(stdout.contains("Connection refused"), "{stdout}");
    // The outage line names the cause at info level.
    assert!(
        stderr.contains("the vendor fails every call (connection failed:"),
        "{stderr}"
    );
    let json = read_json(&summary);
    assert_eq!(json["status"], "outage");
    assert_eq!(json["exit_code"], 4);
    assert!(
        json["cause"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{json}"
    );
    assert_eq!(env.item_states().await, (0, 0, 50), "nothing marked failed");
}

/// `demo` on a busy port: the advice names a flag `demo` takes, and the flag works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_a_busy_port_advises_its_own_listen_flag() {
    let env = TestEnv::new_sqlite(20).await;
    env.write_config(&Conf::default());
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let out = env.freshen(&["demo", "--listen", &busy_addr]).await;
    assert_exit(&out, 1);
    assert!(
        text(&out.stderr).contains("`freshen demo --listen 127.0.0.1:8078`"),
        "{}",
        text(&out.stderr)
    );
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let free_addr = free.local_addr().unwrap().to_string();
    drop(free);
    let out = env.freshen(&["demo", "--listen", &free_addr]).await;
    assert_exit(&out, 0);
    assert!(text(&out.stdout).contains(&format!("listening on http://{free_addr}")));
    assert_eq!(env.item_states().await, (20, 0, 0));
}

/// A selection of nothing plans nothing; a negative count is a number said wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_selection_plans_nothing_and_negative_counts_are_named() {
    let mut env = TestEnv::new(20).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    for args in [
        &["run", "--limit", "0"][..],
        &["run", "--ids", "5000..6000"],
    ] {
        let out = env.freshen(args).await;
        assert_exit(&out, 0);
        assert!(
            text(&out.stdout).contains("nothing matched"),
            "{}",
            text(&out.stdout)
        );
    }
    let out = env.freshen(&["estimate", "--ids", "5000"]).await;
    assert_exit(&out, 0);
    assert!(
        text(&out.stdout).contains("nothing matched"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(env.sandbox().stats().requests, 0);
    let db = env.db().await;
    let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM freshen_runs")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(runs, 0, "no run planned");

    for args in [
        &["run", "--limit", "-1"][..],
        &["run", "--max-credits", "-3"],
    ] {
        let out = env.freshen(args).await;
        assert_exit(&out, 2);
        assert!(
            text(&out.stderr).contains("must be a positive whole number"),
            "{}",
            text(&out.stderr)
        );
    }
}
