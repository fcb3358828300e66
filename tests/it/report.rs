//! What a run leaves to look at: its timeline in `freshen_samples`, `freshen
//! report` (HTML and JSON), and `--metrics-file` for Prometheus.

use std::collections::HashSet;
use std::time::Duration;

use freshen::sandbox::{Fault, SandboxOptions};
use serde_json::Value;
use sqlx::Row;

use crate::harness::{Conf, TestEnv, assert_exit, read_json, text};

/// One run through a throttle, an outage and a permanent failure; returns the env
/// and the run's `--summary-json`.
async fn eventful_run(records: u64) -> (TestEnv, Value) {
    let mut env = TestEnv::new(records).await;
    env.vendor(SandboxOptions {
        faults: vec![
            ("40".into(), Fault::Throttle(2)),
            ("7".into(), Fault::Status(404)),
            ("8".into(), Fault::Status(404)),
            ("9".into(), Fault::Status(422)),
        ],
        outage_start: Some(Duration::from_millis(1500)),
        outage: Duration::from_millis(2500),
        latency: Duration::from_millis(5),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 200,
        max_attempts: 2,
        ..Conf::default()
    });
    let summary = env.dir.path().join("summary.json");
    let out = env
        .freshen(&["run", "--summary-json", summary.to_str().unwrap()])
        .await;
    assert_exit(&out, 0);
    let stats = env.sandbox().stats();
    assert!(stats.during_outage > 0, "the run met the outage: {stats:?}");
    (env, read_json(&summary))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_shows_throttles_and_the_outage_and_the_report_agrees_with_the_summary() {
    let (env, summary) = eventful_run(600).await;

    let db = env.db().await;
    let rows = sqlx::query(
        "SELECT calls_ok, calls_throttled, calls_transient, calls_permanent, credits, paused, outage, \
         records_done, records_failed, concurrency, ceiling FROM freshen_samples \
         WHERE run_id = (SELECT MAX(id) FROM freshen_runs) ORDER BY at_ms",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    let col = |i: usize| -> Vec<i64> { rows.iter().map(|r| r.get::<i64, _>(i)).collect() };
    let (ok, throttled, transient, permanent, credits) = (col(0), col(1), col(2), col(3), col(4));
    let (paused, outage, done, failed) = (col(5), col(6), col(7), col(8));
    assert!(
        rows.len() >= 3,
        "{} samples for a run of seconds",
        rows.len()
    );

    // The throttle and the outage are in the timeline, where they happened.
    let throttled_at: Vec<usize> = (0..rows.len()).filter(|i| throttled[*i] > 0).collect();
    assert!(!throttled_at.is_empty(), "no sample has a throttled call");
    assert!(throttled_at.iter().all(|i| paused[*i] == 1));
    let down = (0..rows.len()).filter(|i| outage[*i] == 1).count();
    assert!(down >= 1, "no sample marks the 2.5 s outage");
    assert!(down < rows.len(), "every sample marked as an outage");
    // During the outage only probes go out: the outage samples answer few calls.
    let calls_down: i64 = (0..rows.len())
        .filter(|i| outage[*i] == 1)
        .map(|i| ok[i] + throttled[i] + transient[i] + permanent[i])
        .sum();
    let calls_all: i64 = (0..rows.len())
        .map(|i| ok[i] + throttled[i] + transient[i] + permanent[i])
        .sum();
    assert!(
        calls_down * 2 < calls_all,
        "{calls_down} of {calls_all} calls in outage samples"
    );
    // Nothing falls between samples: they add up to the run's own counts.
    let sum = |v: &[i64]| v.iter().sum::<i64>();
    let calls = &summary["calls"];
    assert_eq!(sum(&ok), calls["ok"].as_i64().unwrap());
    assert_eq!(sum(&throttled), calls["throttled"].as_i64().unwrap());
    assert_eq!(sum(&transient), calls["transient"].as_i64().unwrap());
    assert_eq!(sum(&permanent), calls["permanent"].as_i64().unwrap());
    assert_eq!(sum(&credits), summary["credits"]["spent"].as_i64().unwrap());
    assert_eq!(sum(&done), summary["records"]["done"].as_i64().unwrap());
    assert_eq!(sum(&failed), summary["records"]["failed"].as_i64().unwrap());
    for r in &rows {
        assert!(
            (1..=16).contains(&r.get::<i64, _>(9)),
            "concurrency within its limits"
        );
        assert_eq!(r.get::<f64, _>(10), 200.0, "the configured ceiling");
    }

    // report --json says what the summary said.
    let out = env.freshen(&["report", "--json"]).await;
    assert_exit(&out, 0);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["run"], summary["run"]);
    assert_eq!(report["status"], summary["status"]);
    assert_eq!(report["records"], summary["records"]);
    assert_eq!(report["calls"], summary["calls"]);
    assert_eq!(report["credits"]["spent"], summary["credits"]["spent"]);
    assert_eq!(
        report["credits"]["remaining"],
        summary["credits"]["remaining"]
    );
    assert_eq!(report["credits"]["period"], summary["credits"]["period"]);
    let samples = report["samples"].as_array().unwrap();
    assert_eq!(samples.len(), rows.len());
    assert_eq!(samples.iter().filter(|s| s["outage"] == true).count(), down);
    // Failures grouped by reason, most frequent first, with their keys.
    let failures = report["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(failures[0]["count"], 2);
    assert!(failures[0]["reason"].as_str().unwrap().contains("404"));
    assert_eq!(failures[0]["examples"], serde_json::json!(["7", "8"]));
    assert_eq!(failures[1]["count"], 1);
    assert_eq!(failures[1]["examples"], serde_json::json!(["9"]));

    // The same run by number, as one self-contained HTML page.
    let html = env.dir.path().join("report.html");
    let run = summary["run"].to_string();
    let out = env
        .freshen(&["report", "--run", &run, "--out", html.to_str().unwrap()])
        .await;
    assert_exit(&out, 0);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.contains(&format!("Run {run} ")));
    assert_eq!(
        page.matches("<svg").count(),
        3,
        "rate, concurrency, credits"
    );
    assert!(page.contains("vendor down (breaker open)"));
    for external in ["<script", "src=", "href=", "@import", "url("] {
        assert!(
            !page.contains(external),
            "the page loads something: {external}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_names_a_missing_run_and_needs_an_output() {
    let mut env = TestEnv::new(5).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    let out = env.freshen(&["report", "--json"]).await;
    assert_exit(&out, 1);
    assert!(
        text(&out.stdout).contains("no run yet"),
        "{}",
        text(&out.stdout)
    );
    assert_exit(&env.freshen(&["run"]).await, 0);

    let out = env.freshen(&["report", "--run", "99", "--json"]).await;
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("no run 99"),
        "{}",
        text(&out.stderr)
    );
    // With --json, standard output stays JSON.
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json["error"].as_str().unwrap().contains("no run 99"),
        "{json}"
    );
    let out = env.freshen(&["report"]).await;
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("--out"), "{}", text(&out.stderr));
}

/// Every family the file holds once a run is under way.
const FAMILIES: [&str; 11] = [
    "freshen_run_in_progress",
    "freshen_run_id",
    "freshen_records",
    "freshen_calls_total",
    "freshen_run_credits_spent",
    "freshen_credits_allowance",
    "freshen_credits_spent",
    "freshen_credits_remaining",
    "freshen_last_run_exit_code",
    "freshen_last_run_end_timestamp_seconds",
    "freshen_metrics_updated_timestamp_seconds",
];

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses")
}

fn value(scrape: &prometheus_parse::Scrape, metric: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == metric
                && s.labels.get("table") == Some("people")
                && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v))
        })
        .unwrap_or_else(|| panic!("{metric} {label:?} is missing"));
    match sample.value {
        prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{metric}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_file_is_never_seen_half_written() {
    let mut env = TestEnv::new(1200).await;
    env.vendor(SandboxOptions {
        latency: Duration::from_millis(5),
        ..SandboxOptions::default()
    })
    .await;
    env.write_config(&Conf {
        rate: 300,
        ..Conf::default()
    });
    let metrics = env.dir.path().join("freshen.prom");
    // An earlier run's end, as the file holds it: kept while this run works.
    let earlier = "freshen_last_run_exit_code{table=\"people\"} 3\n\
         freshen_last_run_end_timestamp_seconds{table=\"people\"} 1790000000\n\
         freshen_last_run_status{table=\"people\",status=\"budget\"} 1\n";
    std::fs::write(&metrics, earlier).unwrap();
    let summary = env.dir.path().join("summary.json");
    let mut child = env.spawn(&[
        "run",
        "--metrics-file",
        metrics.to_str().unwrap(),
        "--metrics-every",
        "20ms",
        "--summary-json",
        summary.to_str().unwrap(),
    ]);

    // Read the file as fast as possible while the run rewrites it every 20 ms.
    let mut versions = HashSet::new();
    let mut reads = 0u32;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let text = std::fs::read_to_string(&metrics).expect("the file is always there");
        reads += 1;
        if text == earlier {
            // Not rewritten yet.
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let scrape = parse(&text);
        // Whole: every family with its HELP, and the last line of the file.
        let in_progress = value(&scrape, "freshen_run_in_progress", None);
        if in_progress == 1.0 {
            let families = if text.contains("freshen_records{") {
                &FAMILIES[..]
            } else {
                // Before the run is planned: what the file says at first.
                &[
                    "freshen_run_in_progress",
                    "freshen_last_run_exit_code",
                    "freshen_last_run_end_timestamp_seconds",
                    "freshen_metrics_updated_timestamp_seconds",
                ][..]
            };
            for family in families {
                assert!(scrape.docs.contains_key(*family), "{family} in:\n{text}");
                value(&scrape, family, None);
            }
            assert_eq!(value(&scrape, "freshen_last_run_exit_code", None), 3.0);
            if text.contains("freshen_records{") {
                let done = value(&scrape, "freshen_records", Some(("status", "done")));
                let failed = value(&scrape, "freshen_records", Some(("status", "failed")));
                let pending = value(&scrape, "freshen_records", Some(("status", "pending")));
                assert_eq!(done + failed + pending, 1200.0, "{text}");
            }
        }
        assert!(text.ends_with('\n'), "cut short:\n{text}");
        versions.insert(text);
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert_eq!(status.code(), Some(0));
    assert!(
        versions.len() >= 5,
        "{} versions in {reads} reads: the run was too short to test anything",
        versions.len()
    );

    // At exit: the run's end, as the summary says.
    let text = std::fs::read_to_string(&metrics).unwrap();
    let scrape = parse(&text);
    let summary = read_json(&summary);
    assert_eq!(value(&scrape, "freshen_run_in_progress", None), 0.0);
    assert_eq!(value(&scrape, "freshen_last_run_exit_code", None), 0.0);
    assert_eq!(
        value(
            &scrape,
            "freshen_last_run_status",
            Some(("status", "complete"))
        ),
        1.0
    );
    let ended = value(&scrape, "freshen_last_run_end_timestamp_seconds", None);
    assert!(ended > 1_790_000_000.0, "{ended}");
    assert_eq!(
        value(&scrape, "freshen_records", Some(("status", "done"))),
        summary["records"]["done"].as_f64().unwrap()
    );
    for outcome in ["ok", "throttled", "transient", "permanent"] {
        assert_eq!(
            value(&scrape, "freshen_calls_total", Some(("outcome", outcome))),
            summary["calls"][outcome].as_f64().unwrap(),
            "{outcome}"
        );
    }
    assert_eq!(
        value(&scrape, "freshen_credits_remaining", None),
        summary["credits"]["remaining"].as_f64().unwrap()
    );
    // No temporary file left behind.
    let left: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_metrics_file_is_a_usage_error_naming_the_flag() {
    let mut env = TestEnv::new(5).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    let path = env.dir.path().join("no-such-dir/freshen.prom");
    let out = env
        .freshen(&["run", "--metrics-file", path.to_str().unwrap()])
        .await;
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("--metrics-file"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env.item_states().await, (0, 0, 0), "no run started");
}

#[tokio::test]
async fn with_no_run_the_report_says_so_in_json_and_fails() {
    let mut env = TestEnv::new(5).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    let out = env.freshen(&["report", "--json"]).await;
    assert_exit(&out, 1);
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is JSON ({e}): {}", text(&out.stdout)));
    assert!(
        json["error"].as_str().unwrap().contains("no run yet"),
        "{json}"
    );
    assert_eq!(json["table"], "people");

    let page = env.dir.path().join("report.html");
    let out = env
        .freshen(&["report", "--out", page.to_str().unwrap()])
        .await;
    assert_exit(&out, 1);
    assert!(
        text(&out.stderr).contains("nothing to report"),
        "{}",
        text(&out.stderr)
    );
    assert!(!page.exists());
}

/// What the README says of the metrics file is what it holds: every family
/// freshen writes has a row in the README's table, and the exit-code gauge's
/// HELP names every code of the README's exit-code table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_documents_every_metric_and_the_exit_code_help_every_code() {
    const README: &str = include_str!("../../README.md");
    let mut env = TestEnv::new(20).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    let metrics = env.dir.path().join("freshen.prom");
    let path = metrics.to_str().unwrap();
    assert_exit(&env.freshen(&["run", "--metrics-file", path]).await, 0);
    // A second run, so the file holds both the run in progress and the last end.
    assert_exit(
        &env.freshen(&["run", "--new", "--metrics-file", path]).await,
        0,
    );
    let scrape = parse(&std::fs::read_to_string(&metrics).unwrap());

    // The metric names in the README's table: `freshen_credits_{a,b}` is two.
    let table = README
        .split("| metric | what |")
        .nth(1)
        .expect("the README has a metrics table")
        .split("\n\n")
        .next()
        .unwrap();
    let mut documented = Vec::new();
    for cell in table.split('`').skip(1).step_by(2) {
        let name = cell.split('{').next().unwrap();
        match cell.split_once("_{") {
            Some((stem, rest)) if !rest.starts_with('"') && !rest.contains('=') => {
                for part in rest.split('}').next().unwrap().split(',') {
                    documented.push(format!("{stem}_{part}"));
                }
            }
            _ => documented.push(name.to_owned()),
        }
    }
    for family in scrape.docs.keys() {
        assert!(
            documented.contains(family),
            "{family} is not in the README's metrics table ({documented:?})"
        );
    }

    let codes: Vec<&str> = README
        .split("## Exit codes")
        .nth(1)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(' ').next())
        .filter(|c| c.parse::<u8>().is_ok())
        .collect();
    let every: Vec<String> = freshen::Exit::ALL
        .iter()
        .map(|e| e.code().to_string())
        .collect();
    assert_eq!(
        codes, every,
        "the README's table lists every exit code, in order"
    );
    let help = &scrape.docs["freshen_last_run_exit_code"];
    for code in codes {
        assert!(
            help.split(|c: char| !c.is_ascii_digit()).any(|n| n == code),
            "exit code {code} is not in the HELP: {help}"
        );
    }
}
