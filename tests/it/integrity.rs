//! Hostile schemas and keys (issue 14, "data lost or never written"): every
//! record's update touches exactly one row or fails alone with the reason; a
//! value the database rejects fails its record, not its batch, and every billed
//! call stays charged; NULL and duplicate keys are skipped at plan time and
//! reported (`--strict` refuses them); keys that cannot name one URL path
//! segment (`.`, `..`, empty, or too long) fail at once without a call.
//!
//! Each test asserts the records' values in the user table, the items' states
//! and reasons, the credits charged (the period's and the run's), the vendor's
//! call count and the exit code.

use freshen::sandbox::{SandboxOptions, person};
use sqlx::Row;

use crate::harness::{Conf, TestEnv, assert_exit, on_postgres, text};

/// The mapped columns and `refreshed_at`, as every table here has them.
const COLUMNS: &str = "title TEXT, company TEXT, score BIGINT, refreshed_at TEXT";

/// A table made by `sql` on the database given, the sandbox, the default config.
async fn env_on(postgres: bool, sql: &str) -> TestEnv {
    let mut env = TestEnv::with_schema(postgres, sql).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    env
}

/// A row of `people`: the key as text, the mapped values, whether refreshed.
#[derive(Debug)]
struct Person {
    key: Option<String>,
    title: Option<String>,
    company: Option<String>,
    score: Option<i64>,
    refreshed: bool,
}

impl Person {
    /// Whether it holds exactly the vendor's answer for its key.
    fn holds_vendors(&self) -> bool {
        let p = person(self.key.as_deref().unwrap_or_default());
        self.refreshed
            && self.title.as_deref() == p["title"].as_str()
            && self.company.as_deref() == p["company"].as_str()
            && self.score == p["score"].as_i64()
    }

    /// Whether it was never written.
    fn untouched(&self) -> bool {
        !self.refreshed && self.title.is_none() && self.score.is_none()
    }
}

async fn people(env: &TestEnv) -> Vec<Person> {
    let db = env.db().await;
    let rows = sqlx::query(
        "SELECT CAST(id AS TEXT), title, company, score, refreshed_at FROM people ORDER BY 1",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    rows.iter()
        .map(|r| Person {
            key: r.get(0),
            title: r.get(1),
            company: r.get(2),
            score: r.get(3),
            refreshed: r.get::<Option<String>, _>(4).is_some(),
        })
        .collect()
}

/// Credits charged: (the period's spent, the newest run's credits_spent).
async fn charged(env: &TestEnv) -> (i64, i64) {
    let db = env.db().await;
    let row = sqlx::query(
        "SELECT CAST((SELECT COALESCE(SUM(spent), 0) FROM freshen_credit_periods) AS BIGINT), \
         (SELECT credits_spent FROM freshen_runs ORDER BY id DESC LIMIT 1)",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    (row.get(0), row.get(1))
}

/// Every item of the newest run: (key, state, reason, attempts).
async fn items(env: &TestEnv) -> Vec<(String, String, Option<String>, i64)> {
    let db = env.db().await;
    let rows = sqlx::query(
        "SELECT key, state, reason, attempts FROM freshen_items \
         WHERE run_id = (SELECT MAX(id) FROM freshen_runs) ORDER BY seq",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Rows 1..=n of integer keys, as one INSERT on either database.
fn integer_rows(postgres: bool, n: u32) -> String {
    if postgres {
        format!("INSERT INTO people (id) SELECT i FROM generate_series(1, {n}) AS i;")
    } else {
        format!(
            "INSERT INTO people (id) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL \
             SELECT i + 1 FROM n WHERE i < {n}) SELECT i FROM n;"
        )
    }
}

/// Asserts a complete run: every listed key failed with a reason containing
/// `why` and left untouched, every other record holds the vendor's values, one
/// call and one credit per record.
async fn assert_fails_alone(env: &TestEnv, bad: &[String], why: &str, total: usize) {
    let rows = people(env).await;
    assert_eq!(rows.len(), total);
    for row in &rows {
        let key = row.key.clone().unwrap();
        if bad.contains(&key) {
            assert!(row.untouched(), "{row:?} was written");
        } else {
            assert!(row.holds_vendors(), "{row:?}");
        }
    }
    let items = items(env).await;
    assert_eq!(items.len(), total);
    for (key, state, reason, _) in &items {
        if bad.contains(key) {
            assert_eq!(state, "failed", "{key}");
            let reason = reason.clone().unwrap_or_default();
            assert!(reason.to_lowercase().contains(why), "{key}: {reason}");
        } else {
            assert_eq!((state.as_str(), reason), ("done", &None), "{key}");
        }
    }
    assert_eq!(charged(env).await, (total as i64, total as i64));
    assert_eq!(env.sandbox().stats().requests, total as u64);
}

// ---- 1: the key compared in its column's own type; exactly one row per update ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_keys_in_a_blob_or_untyped_column_are_written() {
    for declared in ["BLOB PRIMARY KEY", "PRIMARY KEY"] {
        let env = env_on(
            false,
            &format!(
                "CREATE TABLE people (id {declared}, {COLUMNS}); {}",
                integer_rows(false, 50)
            ),
        )
        .await;
        let out = env.freshen(&["run"]).await;
        assert_exit(&out, 0);
        let rows = people(&env).await;
        assert_eq!(rows.len(), 50);
        for row in &rows {
            assert!(row.holds_vendors(), "id {declared}: {row:?}");
        }
        assert!(items(&env).await.iter().all(|i| i.1 == "done"));
        assert_eq!(charged(&env).await, (50, 50));
        assert_eq!(env.sandbox().stats().requests, 50);
        // The keys are still integers: nothing rewrote them.
        let db = env.db().await;
        let integers: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM people WHERE typeof(id) = 'integer'")
                .fetch_one(&db)
                .await
                .unwrap();
        assert_eq!(integers, 50);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_update_touches_no_row_fails_alone() {
    let pg = on_postgres();
    // A trigger that silently skips the update of record 7: its update touches
    // no row, and must not be called done.
    let skip = if pg {
        "CREATE FUNCTION keep_7() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN IF OLD.id = 7 THEN RETURN NULL; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER keep_7 BEFORE UPDATE ON people FOR EACH ROW EXECUTE FUNCTION keep_7();"
    } else {
        "CREATE TRIGGER keep_7 BEFORE UPDATE ON people WHEN OLD.id = 7 \
         BEGIN SELECT RAISE(IGNORE); END;"
    };
    let env = env_on(
        pg,
        &format!(
            "CREATE TABLE people (id BIGINT PRIMARY KEY, {COLUMNS}); {} {skip}",
            integer_rows(pg, 20)
        ),
    )
    .await;
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    assert_fails_alone(&env, &["7".into()], "touched no row", 20).await;
    // The log names the record.
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("record 7 not written: its update touched no row"),
        "{stderr}"
    );
}

// ---- 2: a value the database rejects fails its record, not its batch ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_a_check_constraint_rejects_fails_its_record_alone() {
    let pg = on_postgres();
    let env = env_on(
        pg,
        &format!(
            "CREATE TABLE people (id BIGINT PRIMARY KEY, title TEXT, company TEXT, \
             score BIGINT CHECK (score < 990), refreshed_at TEXT); {}",
            integer_rows(pg, 400)
        ),
    )
    .await;
    let bad: Vec<String> = (1..=400)
        .map(|k: u32| k.to_string())
        .filter(|k| person(k)["score"].as_i64().unwrap() >= 990)
        .collect();
    assert!(bad.len() >= 2, "the sandbox's scores give {bad:?}");
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    assert_fails_alone(&env, &bad, "check constraint", 400).await;
    // Nothing is left to do, so nothing is billed again.
    let again = env.freshen(&["run"]).await;
    assert_exit(&again, 0);
    assert!(
        text(&again.stdout).contains("complete"),
        "{}",
        text(&again.stdout)
    );
    assert_eq!(env.sandbox().stats().requests, 400);
    assert_eq!(charged(&env).await, (400, 400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_too_long_for_its_varchar_fails_its_record_alone() {
    let env = env_on(
        true,
        &format!(
            "CREATE TABLE people (id BIGINT PRIMARY KEY, title VARCHAR(8), company TEXT, \
             score BIGINT, refreshed_at TEXT); {}",
            integer_rows(true, 100)
        ),
    )
    .await;
    let bad: Vec<String> = (1..=100)
        .map(|k: u32| k.to_string())
        .filter(|k| person(k)["title"].as_str().unwrap().len() > 8)
        .collect();
    assert!(!bad.is_empty());
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    assert_fails_alone(&env, &bad, "too long", 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uuid_keys_are_compared_as_uuids() {
    let env = env_on(
        true,
        &format!(
            "CREATE TABLE people (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), {COLUMNS}); \
             INSERT INTO people (title) SELECT NULL FROM generate_series(1, 30);"
        ),
    )
    .await;
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    assert_fails_alone(&env, &[], "", 30).await;
    // `--ids` compares as a uuid too.
    let one = people(&env).await[0].key.clone().unwrap();
    let estimate = env.freshen(&["estimate", "--ids", &one, "--offline"]).await;
    assert_exit(&estimate, 0);
    assert!(
        text(&estimate.stdout).contains("1 selected"),
        "{}",
        text(&estimate.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_key_in_an_integer_column_is_written() {
    let env = env_on(
        false,
        &format!(
            "CREATE TABLE people (id INTEGER NOT NULL UNIQUE, {COLUMNS}); {} \
             INSERT INTO people (id) VALUES ('abc');",
            integer_rows(false, 30)
        ),
    )
    .await;
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    assert_fails_alone(&env, &[], "", 31).await;
}

// ---- 3 and 4: NULL and duplicate keys, found at plan time ------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_keys_are_skipped_and_reported() {
    let pg = on_postgres();
    let env = env_on(
        pg,
        &format!(
            "CREATE TABLE people (id TEXT, {COLUMNS}); \
             INSERT INTO people (id) VALUES ('a'), ('b'), (NULL), ('c');"
        ),
    )
    .await;
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("1 record whose key `id` is NULL"),
        "{stderr}"
    );
    assert!(
        text(&out.stdout).contains("1 skipped"),
        "{}",
        text(&out.stdout)
    );
    let rows = people(&env).await;
    assert_eq!(rows.iter().filter(|r| r.holds_vendors()).count(), 3);
    assert!(rows.iter().any(|r| r.key.is_none() && r.untouched()));
    assert_eq!(items(&env).await.len(), 3);
    assert_eq!(charged(&env).await, (3, 3));
    assert_eq!(env.sandbox().stats().requests, 3);

    // --strict refuses such a plan, before any call.
    for args in [
        &["estimate", "--strict", "--offline"][..],
        &["run", "--strict", "--new"],
    ] {
        let strict = env.freshen(args).await;
        assert_exit(&strict, 2);
        let stderr = text(&strict.stderr);
        assert!(
            stderr.contains("1 record whose key `id` is NULL"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(env.sandbox().stats().requests, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_are_skipped_and_reported() {
    let pg = on_postgres();
    let env = env_on(
        pg,
        &format!(
            "CREATE TABLE people (id BIGINT, {COLUMNS}); {} \
             INSERT INTO people (id) VALUES (5), (7);",
            integer_rows(pg, 10)
        ),
    )
    .await;
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("4 records share a key `id` with another record (5, 7)"),
        "{stderr}"
    );
    assert!(
        text(&out.stdout).contains("4 skipped"),
        "{}",
        text(&out.stdout)
    );
    for row in people(&env).await {
        match row.key.as_deref() {
            Some("5" | "7") => assert!(row.untouched(), "{row:?}"),
            _ => assert!(row.holds_vendors(), "{row:?}"),
        }
    }
    assert_eq!(items(&env).await.len(), 8);
    assert_eq!(charged(&env).await, (8, 8));
    assert_eq!(env.sandbox().stats().requests, 8);

    // --strict refuses such a plan, before any call.
    for args in [
        &["estimate", "--strict", "--offline"][..],
        &["run", "--strict", "--new"],
    ] {
        let strict = env.freshen(args).await;
        assert_exit(&strict, 2);
        let stderr = text(&strict.stderr);
        assert!(
            stderr.contains("4 records share a key `id` with another record (5, 7)"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(env.sandbox().stats().requests, 8);
}

// ---- 5 and 6: keys that cannot be one path segment fail without a call ---------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segment_and_empty_keys_fail_without_a_call() {
    let pg = on_postgres();
    let env = env_on(
        pg,
        &format!(
            "CREATE TABLE people (id TEXT PRIMARY KEY, {COLUMNS}); \
             INSERT INTO people (id) VALUES ('.'), ('..'), (''), ('ok'), ('...'), ('a.b'), ('%2e');"
        ),
    )
    .await;
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    for (key, state, reason, attempts) in items(&env).await {
        match key.as_str() {
            "." | ".." | "" => {
                assert_eq!((state.as_str(), attempts), ("failed", 0), "{key:?}");
                let reason = reason.unwrap();
                assert!(reason.contains("path segment"), "{key:?}: {reason}");
            }
            _ => assert_eq!(state, "done", "{key:?}: {reason:?}"),
        }
    }
    for row in people(&env).await {
        match row.key.as_deref() {
            Some("." | ".." | "") => assert!(row.untouched(), "{row:?}"),
            _ => assert!(row.holds_vendors(), "{row:?}"),
        }
    }
    assert_eq!(env.sandbox().stats().requests, 4);
    assert_eq!(env.sandbox().stats().ok, 4);
    assert_eq!(charged(&env).await, (4, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_too_long_for_a_url_fails_at_once() {
    let pg = on_postgres();
    let long = "k".repeat(70_000);
    // No index on the key: PostgreSQL's btree refuses entries past 2.7 kB.
    let env = env_on(
        pg,
        &format!(
            "CREATE TABLE people (id TEXT, {COLUMNS}); \
             INSERT INTO people (id) VALUES ('{long}'), ('ok');"
        ),
    )
    .await;
    let out = env.freshen(&["run"]).await;
    assert_exit(&out, 0);
    let items = items(&env).await;
    assert_eq!(items.len(), 2);
    for (key, state, reason, attempts) in items {
        if key == long {
            assert_eq!((state.as_str(), attempts), ("failed", 0));
            let reason = reason.unwrap();
            assert!(
                reason.contains("key of 70000 bytes")
                    && reason.contains("8000")
                    && reason.len() < 400,
                "{reason}"
            );
        } else {
            assert_eq!(state, "done");
        }
    }
    assert_eq!(env.sandbox().stats().requests, 1);
    assert_eq!(charged(&env).await, (1, 1));
}
