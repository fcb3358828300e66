//! Request templates (issue 18 point 1): a vendor that takes a POST with a JSON
//! body gets one whose values keep their columns' SQL types, and a vendor that
//! takes its key in the query string gets it there, the key a secret in every
//! log line, message, summary, report, status and database row.

use freshen::sandbox::SandboxOptions;

use crate::harness::{Conf, TestEnv, assert_exit, read_json, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_body_vendor_gets_each_record_as_typed_json() {
    let mut env = TestEnv::new(60).await;
    env.vendor(SandboxOptions {
        record_headers: true,
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf::default());
    env.set_keys(&[
        ("api.method", "\"POST\""),
        ("api.path", "\"/v1/people\""),
        (
            "api.body",
            "{ id = \"{id}\", name = \"{name}\", title = \"{title}\", \
             greeting = \"hello {name}\", min_likelihood = 6, tags = [\"{company}\"] }",
        ),
    ]);
    // Some titles NULL, some not: a NULL goes as nothing, a value as text.
    let db = env.db().await;
    sqlx::query("UPDATE people SET title = CASE WHEN id % 3 = 0 THEN NULL ELSE 'x' || id END")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let before = env.records().await;
    let names = names(&env).await;
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    env.assert_each_written_once(60).await;
    let seen = env.sandbox().requests_seen();
    assert_eq!(seen.len(), 60, "one call a record");
    for call in &seen {
        assert_eq!(
            (call.method.as_str(), call.target.as_str()),
            ("POST", "/v1/people")
        );
        let body = call.body.as_ref().expect("a JSON body");
        let id = body["id"]
            .as_i64()
            .expect("the integer key is a JSON number");
        let record = &before[(id - 1) as usize];
        let name = &names[(id - 1) as usize];
        assert_eq!(body["name"], serde_json::json!(name));
        assert_eq!(body["greeting"], serde_json::json!(format!("hello {name}")));
        assert_eq!(body["min_likelihood"], serde_json::json!(6));
        // A NULL column is left out of its object (api.body_nulls = "omit"),
        // and is null in an array.
        assert_eq!(
            body.get("title").and_then(|t| t.as_str()),
            record.title.as_deref()
        );
        assert_eq!(body["tags"][0].as_str(), record.company.as_deref());
    }

    // body_nulls = "null": the member is sent as null.
    env.set_keys(&[
        ("api.body_nulls", "\"null\""),
        ("api.body", "{ id = \"{id}\", x = \"{title}\" }"),
    ]);
    let db = env.db().await;
    sqlx::query("UPDATE people SET title = NULL, refreshed_at = NULL WHERE id = 1")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    assert_exit(&env.freshen(&["run", "--ids", "1"]).await, 0);
    let last = env.sandbox().requests_seen().pop().unwrap();
    assert_eq!(last.body.unwrap(), serde_json::json!({"id": 1, "x": null}));
}

/// The sample's `name` of each record, by key - 1.
async fn names(env: &TestEnv) -> Vec<String> {
    let db = env.db().await;
    let names = sqlx::query_scalar("SELECT name FROM people ORDER BY id")
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    names
}

const QUERY_KEY: &str = "hq-live-7Ktz2Wq9PmX4";
const WRONG_KEY: &str = "hq-old-3Rbn8Vc1LsY6";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_the_query_string_stays_secret_everywhere() {
    let mut env = TestEnv::new(40).await;
    env.vendor(SandboxOptions {
        api_key: Some(QUERY_KEY.into()),
        key_param: Some("api_key".into()),
        record_headers: true,
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf::default());
    env.set_keys(&[
        ("api.path", "\"/v1/lookup\""),
        (
            "api.query",
            "{ id = \"{id}\", api_key = \"${HUNTER_KEY}\" }",
        ),
    ]);
    let summary = env.dir.path().join("summary.json");
    let run = [
        "run",
        "--log",
        "trace",
        "--summary-json",
        summary.to_str().unwrap(),
    ];

    // A wrong key: the vendor's 401 repeats it; freshen's message does not.
    let wrong = env
        .freshen_with_env(&run, &[("HUNTER_KEY", WRONG_KEY)])
        .await;
    assert_exit(&wrong, 6);
    let err = text(&wrong.stderr);
    assert!(
        err.contains("401") && err.contains("invalid API key '(redacted)'"),
        "{err}"
    );
    let mut shown = format!("{err}{}", text(&wrong.stdout));
    shown.push_str(&std::fs::read_to_string(&summary).unwrap());

    let right = env
        .freshen_with_env(&run, &[("HUNTER_KEY", QUERY_KEY)])
        .await;
    assert_exit(&right, 0);
    env.assert_each_written_once(40).await;
    let json = read_json(&summary);
    assert_eq!(json["records"]["done"], 40, "{json}");
    let seen = env.sandbox().requests_seen();
    let last = seen.last().unwrap();
    assert!(
        last.target.starts_with("/v1/lookup?")
            && last.target.contains(&format!("api_key={QUERY_KEY}")),
        "the key is sent in the query: {}",
        last.target
    );
    assert!(
        text(&right.stderr).contains(" TRACE "),
        "logged at trace level"
    );
    shown.push_str(&text(&right.stdout));
    shown.push_str(&text(&right.stderr));
    shown.push_str(&std::fs::read_to_string(&summary).unwrap());
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["report", "--json"],
    ] {
        let out = env
            .freshen_with_env(args, &[("HUNTER_KEY", QUERY_KEY)])
            .await;
        assert_exit(&out, 0);
        shown.push_str(&text(&out.stdout));
        shown.push_str(&text(&out.stderr));
    }
    let html = env.dir.path().join("report.html");
    let out = env
        .freshen(&["report", "--out", html.to_str().unwrap()])
        .await;
    assert_exit(&out, 0);
    shown.push_str(&std::fs::read_to_string(&html).unwrap());
    let bytes = env.database_bytes();
    for key in [QUERY_KEY, WRONG_KEY] {
        assert!(!shown.contains(key), "{key} shown:\n{shown}");
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "{key} is in the database"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_naming_a_column_the_table_lacks_names_its_key() {
    let env = TestEnv::new(5).await;
    env.write_config(&Conf::default());
    env.set_keys(&[("api.query", "{ domain = \"{domain}\" }")]);
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 2);
    let err = text(&out.stderr);
    assert!(
        err.contains("api.query.domain") && err.contains("`domain`") && err.contains("people"),
        "{err}"
    );
}
