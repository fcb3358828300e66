#!/usr/bin/env python3
"""Speed and footprint: freshen's own cost when the vendor costs nothing.

`freshen sandbox` runs in its own process with no rate limit and no latency;
freshen refreshes a fresh database of N records against it, under
/usr/bin/time -v. One row per (database, records, max_concurrency):

  records/s     records resolved over the wall time of the whole `freshen run`
  plan s        the plan (one INSERT ... SELECT), from freshen's log line
  peak RSS MiB  maximum resident set size of the freshen process
  CPU ms/1k     user + system CPU seconds of the freshen process per 1,000 records
  written       records whose refreshed_at was set by the run (must equal N)
  check         every record holds the sandbox's values for its key (title,
                company, score: `sandbox::person`, recomputed here) and the
                vendor answered exactly N calls: each record called and written once

With --repeat K each row is run K times and shown as the median, with the
range (min-max) beside it. The sandbox runs with --lean (no per-call record)
when the binary has it.

Usage: python3 bench/speed.py [--records 100000 1000000] [--db sqlite postgres]
                              [--repeat 3] [--bin target/release/freshen]
Build first: cargo build --release. PostgreSQL: postgres://postgres@127.0.0.1:5432
(a database `freshen_bench` is created and dropped).
"""

import argparse
import os
import statistics
import re
import sqlite3
import subprocess
import sys
import tempfile
import time

from common import ROOT, config, free_port, sandbox_stats, wait_for

PG_SERVER = os.environ.get("FRESHEN_BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432")



TITLES = ["Engineer", "Analyst", "Designer", "Manager", "Director", "Consultant", "Researcher", "Architect"]
COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Tyrell"]


def person(key):
    """The sandbox's answer for a key (src/sandbox/mod.rs, `person`): FNV-1a of the key."""
    h = 0xcbf29ce484222325
    for b in key.encode():
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return TITLES[h % 8], COMPANIES[(h >> 8) % 8], (h >> 16) % 1000


def check_rows(rows):
    """Rows of (id, title, company, score, refreshed_at): how many are wrong."""
    bad = 0
    for key, title, company, score, refreshed in rows:
        if refreshed is None or (title, company, int(score) if score is not None else None) != person(str(key)):
            bad += 1
    return bad


def psql(db, sql):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", f"{PG_SERVER}/{db}", "-c", sql],
                   check=True, stdout=subprocess.DEVNULL)


def seed(kind, tmp, records):
    """Creates the people table; returns (database.url, a function counting written records, cleanup)."""
    if kind == "sqlite":
        path = os.path.join(tmp, "bench.db")
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, title TEXT, "
                   "company TEXT, score INTEGER, refreshed_at TEXT)")
        db.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                   "INSERT INTO people (id, name) SELECT i, 'Person ' || i FROM n", (records,))
        db.commit()
        db.close()

        def written():
            db = sqlite3.connect(path)
            n = db.execute("SELECT COUNT(*) FROM people WHERE refreshed_at IS NOT NULL AND title IS NOT NULL").fetchone()[0]
            bad = check_rows(db.execute("SELECT id, title, company, score, refreshed_at FROM people"))
            db.close()
            return n, bad
        return f"sqlite://{path}", written, lambda: None
    psql("postgres", "DROP DATABASE IF EXISTS freshen_bench WITH (FORCE)")
    psql("postgres", "CREATE DATABASE freshen_bench")
    psql("freshen_bench", "CREATE TABLE people (id BIGINT PRIMARY KEY, name TEXT NOT NULL, title TEXT, "
                          "company TEXT, score BIGINT, refreshed_at TEXT)")
    psql("freshen_bench", f"INSERT INTO people (id, name) SELECT i, 'Person ' || i FROM generate_series(1, {records}) i")

    def written():
        out = subprocess.run(["psql", "-tA", f"{PG_SERVER}/freshen_bench", "-c",
                              "SELECT COUNT(*) FROM people WHERE refreshed_at IS NOT NULL AND title IS NOT NULL"],
                             check=True, capture_output=True, text=True)
        dump = subprocess.run(["psql", "-tA", "-F", "\t", "-P", "null=\\N", f"{PG_SERVER}/freshen_bench", "-c",
                               "SELECT id, title, company, score, refreshed_at FROM people"],
                              check=True, capture_output=True, text=True)
        rows = ([None if v == "\\N" else v for v in line.split("\t")] for line in dump.stdout.splitlines() if line)
        return int(out.stdout.strip()), check_rows(rows)
    return f"{PG_SERVER}/freshen_bench", written, lambda: psql("postgres", "DROP DATABASE IF EXISTS freshen_bench WITH (FORCE)")


def has_lean(binary):
    out = subprocess.run([binary, "sandbox", "--help"], capture_output=True, text=True)
    return "--lean" in out.stdout


def run(binary, kind, records, conc, lean, sandbox_bin, wrap=()):
    with tempfile.TemporaryDirectory() as tmp:
        url, written, cleanup = seed(kind, tmp, records)
        port = free_port()
        config_path = os.path.join(tmp, "config.toml")
        with open(config_path, "w") as f:
            f.write(config(url, port, conc))
        sandbox = subprocess.Popen([sandbox_bin, "sandbox", "--listen", f"127.0.0.1:{port}", "--latency", "0ms"]
                                   + (["--lean"] if lean else []),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(port)
            start = time.monotonic()
            out = subprocess.run(["/usr/bin/time", "-v", *wrap, binary, "run", "--config", config_path, "--log", "info"],
                                 capture_output=True, text=True)
            wall = time.monotonic() - start
            if out.returncode != 0:
                print(out.stdout, out.stderr, file=sys.stderr)
                raise SystemExit(f"{kind} {records}: freshen exited {out.returncode}")
            calls = sandbox_stats(port)["requests"]
            n_written, bad = written()
        finally:
            sandbox.terminate()
            sandbox.wait()
            cleanup()
    err = out.stderr
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", err).group(1))
    system = float(re.search(r"System time \(seconds\): ([\d.]+)", err).group(1))
    plan = re.search(r"planned run \d+: \d+ records, stalest first, in ([\d.]+) s", err)
    return {
        "db": kind,
        "records": records,
        "conc": conc,
        "rate": records / wall,
        "plan_s": float(plan.group(1)) if plan else float("nan"),
        "rss_mib": rss_kib / 1024,
        "cpu_ms_per_1k": (user + system) * 1000 / (records / 1000),
        "written": n_written,
        "ok": n_written == records and bad == 0 and calls == records,
        "detail": f"{bad} wrong, {calls} calls",
    }


def spread(values, fmt):
    """The median, and the range when there is more than one value."""
    med = format(statistics.median(values), fmt)
    if len(values) == 1:
        return med
    return f"{med} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                                                 "release", "freshen"))
    p.add_argument("--records", type=int, nargs="+", default=[100_000])
    p.add_argument("--db", nargs="+", default=["sqlite", "postgres"])
    p.add_argument("--conc", type=int, nargs="+", default=[64, 1],
                   help="max_concurrency values; 1 is the comparison row (run only at the smallest size)")
    p.add_argument("--sandbox-bin", help="the binary serving the sandbox (default: --bin), to compare builds "
                                          "against the same vendor")
    p.add_argument("--wrap", default="", help="a command to run freshen under, for profiles: "
                                              "--wrap 'perf record -g -o /tmp/perf.data'")
    p.add_argument("--repeat", type=int, default=1, help="runs per row: the median and the range are shown")
    args = p.parse_args()
    if not os.path.exists(args.bin):
        raise SystemExit(f"{args.bin} not found: run `cargo build --release` first, or pass --bin")
    sandbox_bin = args.sandbox_bin or args.bin
    lean = has_lean(sandbox_bin)
    print(f"load average {os.getloadavg()[0]:.2f}; sandbox {'--lean' if lean else 'recording every call'}")
    print(f"{'db':9} {'records':>9} {'conc':>5} {'records/s':>22} {'plan s':>18} {'peak RSS MiB':>18} "
          f"{'CPU ms/1k':>20} {'written':>9} check")
    failed = False
    for kind in args.db:
        for records in args.records:
            for conc in args.conc:
                if conc == 1 and records != min(args.records):
                    continue
                n = records if conc != 1 else min(records, 20_000)
                rs = [run(args.bin, kind, n, conc, lean, sandbox_bin, args.wrap.split()) for _ in range(args.repeat)]
                ok = all(r["ok"] for r in rs)
                failed |= not ok
                print(f"{kind:9} {n:>9} {conc:>5} {spread([r['rate'] for r in rs], '.0f'):>22} "
                      f"{spread([r['plan_s'] for r in rs], '.2f'):>18} "
                      f"{spread([r['rss_mib'] for r in rs], '.1f'):>18} "
                      f"{spread([r['cpu_ms_per_1k'] for r in rs], '.1f'):>20} "
                      f"{min(r['written'] for r in rs):>9} {'ok' if ok else 'FAILED: ' + rs[-1]['detail']}",
                      flush=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
