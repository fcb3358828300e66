//! Bad input: exit code 2 and a message naming the key or flag, and the fix.

use crate::harness::{Conf, SHIPPED_CONFIG, TestEnv, assert_exit, text};

/// Runs `freshen run` with the test config edited by `edit`, expecting exit 2 and
/// every one of `needles` in the error.
async fn rejects(env: &TestEnv, edit: impl Fn(String) -> String, args: &[&str], needles: &[&str]) {
    env.write_config(&Conf::default());
    let text_before = std::fs::read_to_string(env.config_path()).unwrap();
    let edited = edit(text_before.clone());
    assert!(
        edited != text_before || !args.is_empty(),
        "the edit changed nothing"
    );
    std::fs::write(env.config_path(), edited).unwrap();
    let mut full = vec!["run"];
    full.extend_from_slice(args);
    let out = env.freshen(&full).await;
    assert_exit(&out, 2);
    let err = text(&out.stderr);
    for needle in needles {
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_configuration_exits_2_naming_the_key() {
    let env = TestEnv::new(5).await;
    let set = |from: &'static str, to: &'static str| {
        move |s: String| {
            assert!(s.contains(from), "{from}");
            s.replace(from, to)
        }
    };
    rejects(
        &env,
        set("[limits]", "[limits]\nrat = 1"),
        &[],
        &["config.toml", "unknown field `rat`"],
    )
    .await;
    rejects(
        &env,
        set("table = \"people\"\n", ""),
        &[],
        &["missing field `table`"],
    )
    .await;
    rejects(
        &env,
        set("base_url = \"http", "base_url = \"ht tp"),
        &[],
        &["api.base_url", "not a URL"],
    )
    .await;
    rejects(
        &env,
        set("\ntimeout = \"5s\"", "\ntimeout = \"5 parsecs\""),
        &[],
        &["api.timeout", "not a duration"],
    )
    .await;
    rejects(
        &env,
        set(
            "[api.response]",
            "headers = { Authorization = \"Bearer ${NOT_SET_ANYWHERE}\" }\n[api.response]",
        ),
        &[],
        &[
            "api.headers.Authorization",
            "${NOT_SET_ANYWHERE}",
            "not set",
        ],
    )
    .await;
    rejects(
        &env,
        set("table = \"people\"", "table = \"people; DROP TABLE x\""),
        &[],
        &["source.table", "plain identifier"],
    )
    .await;
    rejects(
        &env,
        set("\"/score\" = \"score\"", "\"/score\" = \"rank\""),
        &[],
        &["api.response.\"/score\"", "`rank`", "lacks"],
    )
    .await;
    rejects(
        &env,
        set("table = \"people\"", "table = \"persons\""),
        &[],
        &["source.table", "does not exist"],
    )
    .await;
    rejects(
        &env,
        |s| s,
        &["--ids", "5..x"],
        &["--ids", "`x` is not an integer"],
    )
    .await;
    rejects(
        &env,
        |s| s,
        &["--stale-before", "yesterday"],
        &["--stale-before", "`yesterday`"],
    )
    .await;
    rejects(&env, |s| s, &["--ids", "abc"], &["--ids abc", "integer"]).await;
    // A missing file names itself and the flag.
    let out = env
        .bare_command(&["status", "--config", "/nonexistent/freshen.toml"])
        .output()
        .await
        .unwrap();
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("/nonexistent/freshen.toml"));
}

/// The tests run on the shipped `config.toml`: the written file holds every key
/// and comment of it, the keys a test sets aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_config_is_the_shipped_one_with_its_keys_set() {
    let env = TestEnv::new(1).await;
    env.write_config(&Conf::default());
    let written = std::fs::read_to_string(env.config_path()).unwrap();
    for comment in SHIPPED_CONFIG.lines().filter(|l| l.starts_with('#')) {
        assert!(written.contains(comment), "lost: {comment}");
    }
    let table = |text: &str| text.parse::<toml::Table>().unwrap();
    let (shipped, written) = (table(SHIPPED_CONFIG), table(&written));
    let set = [
        "database.url",
        "api.base_url",
        "api.timeout",
        "limits.rate",
        "limits.max_concurrency",
        "retry.max_attempts",
        "retry.base_delay",
        "retry.max_delay",
        "retry.max_outage",
        "checkpoint.batch_size",
        "checkpoint.interval",
        "credits.allowance",
        "credits.reserve",
        "lock.stale_after",
    ];
    assert_eq!(written["limits"]["rate"].as_integer(), Some(5000));
    assert_eq!(written["api"]["timeout"].as_str(), Some("5s"));
    for (section, keys) in &shipped {
        for (key, value) in keys.as_table().unwrap() {
            let dotted = format!("{section}.{key}");
            let got = &written[section][key];
            if !set.contains(&dotted.as_str()) {
                assert_eq!(got, value, "{dotted} is as shipped");
            }
        }
    }
}
