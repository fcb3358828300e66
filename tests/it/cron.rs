//! The README's crontab entry, read from the README itself: it must be a line
//! crontab accepts (no `\` continuation: crontab has none; five valid time
//! fields), and its command, run as cron runs it (`%` handling, `/bin/sh`), must
//! do nothing on a day that is not the month's last, and the estimate then the
//! run on the last day.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use freshen::sandbox::SandboxOptions;

use crate::harness::{Conf, TestEnv, text};

/// The crontab entries (not comments, not blank) of the README's ```cron block.
fn readme_entries() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let block = readme
        .split("```cron\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the README has a ```cron block");
    block
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// One cron time field: `*`, `*/n`, `a`, `a-b`, `a-b/n` and lists of them, in range.
fn valid_field(field: &str, min: u32, max: u32) -> bool {
    field.split(',').all(|part| {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        let step_ok = step.is_none_or(|s| s.parse::<u32>().is_ok_and(|n| n > 0));
        let num = |s: &str| s.parse::<u32>().ok().filter(|n| (min..=max).contains(n));
        let range_ok = match range.split_once('-') {
            _ if range == "*" => true,
            Some((a, b)) => matches!((num(a), num(b)), (Some(a), Some(b)) if a <= b),
            None => num(range).is_some() && step.is_none(),
        };
        step_ok && range_ok
    })
}

/// Splits an entry into its five time fields and its command, as cron does; the
/// command's unescaped `%` ends it (the rest is its standard input) and `\%` is `%`.
fn parse_entry(entry: &str) -> ([String; 5], String) {
    let mut rest = entry.trim_start();
    let mut fields: Vec<String> = Vec::new();
    for _ in 0..5 {
        let end = rest.find(char::is_whitespace).expect("five time fields");
        fields.push(rest[..end].to_owned());
        rest = rest[end..].trim_start();
    }
    let limits = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    for (f, (min, max)) in fields.iter().zip(limits) {
        assert!(valid_field(f, min, max), "bad cron field `{f}` in {entry}");
    }
    let mut command = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'%') => {
                command.push('%');
                chars.next();
            }
            '%' => break,
            c => command.push(c),
        }
    }
    (fields.try_into().expect("five"), command)
}

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs the command as cron would (`/bin/sh -c`, a bare PATH), in `home`, with
/// the README's directories moved under `root` and a `date` that answers
/// `tomorrow_day` for `date -d tomorrow +%d`.
async fn run_as_cron(command: &str, root: &Path, tomorrow_day: &str) -> std::process::Output {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(root.join("log")).unwrap();
    write_script(
        &bin.join("date"),
        &format!(
            "if [ \"$1\" = -d ] && [ \"$2\" = tomorrow ] && [ \"$3\" = +%d ]; then echo {tomorrow_day}; \
             else exec /bin/date \"$@\"; fi"
        ),
    );
    let command = command
        .replace("/srv/freshen", &root.display().to_string())
        .replace("/var/log/freshen", &root.join("log").display().to_string());
    let child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&command)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .current_dir(root)
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sh runs");
    let group = child.id().expect("a pid");
    match tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await {
        Ok(out) => out.expect("sh ran"),
        Err(_) => {
            // A paced run would go on until 23:30: end the whole group.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .status();
            panic!("the cron command still ran after 30 s: it started a run");
        }
    }
}

#[tokio::test]
async fn the_readme_crontab_entry_is_one_valid_line() {
    let entries = readme_entries();
    assert_eq!(entries.len(), 1, "one entry: {entries:#?}");
    let entry = &entries[0];
    assert!(
        !entry.trim_end().ends_with('\\'),
        "crontab has no line continuation: {entry}"
    );
    let (fields, command) = parse_entry(entry);
    assert_eq!(fields[2], "28-31", "the entry fires on the last days only");
    // The shell accepts the command as cron hands it over.
    let out = std::process::Command::new("/bin/sh")
        .args(["-n", "-c", &command])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[tokio::test]
async fn the_readme_crontab_entry_calls_nothing_before_the_last_day() {
    let (_, command) = parse_entry(&readme_entries()[0]);
    let mut env = TestEnv::new(20).await;
    env.vendor(SandboxOptions::default()).await;
    env.write_config(&Conf::default());
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_freshen"),
        env.dir.path().join("freshen"),
    )
    .unwrap();
    // The 28th of a 31-day month: tomorrow is the 29th.
    let out = run_as_cron(&command, env.dir.path(), "29").await;
    assert_eq!(
        env.sandbox().stats().requests,
        0,
        "no vendor call on a day that is not the last; {}",
        text(&out.stderr)
    );
    let log = std::fs::read_to_string(env.dir.path().join("log/run.log")).unwrap_or_default();
    assert_eq!(log, "", "nothing ran: {log}");
    assert!(
        env.try_item_states().await.map_or(true, |s| s == (0, 0, 0)),
        "no run was planned"
    );
}

#[tokio::test]
async fn the_readme_crontab_entry_estimates_then_runs_on_the_last_day() {
    let (_, command) = parse_entry(&readme_entries()[0]);
    let dir = tempfile::tempdir().unwrap();
    // A stand-in freshen that notes each invocation: the last day's run is paced
    // to 23:30, which a test cannot wait for.
    write_script(
        &dir.path().join("freshen"),
        &format!(
            "echo \"$1\" >> {}/calls; [ \"$1\" = run ] && exit 3; exit 0",
            dir.path().display()
        ),
    );
    let out = run_as_cron(&command, dir.path(), "01").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    assert_eq!(calls, "estimate\nrun\n");
    let log = std::fs::read_to_string(dir.path().join("log/run.log")).unwrap();
    assert_eq!(log, "freshen exit 3\n", "the run's exit code is logged");
}
