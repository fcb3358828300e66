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

Usage: python3 bench/speed.py [--records 100000 1000000] [--db sqlite postgres]
                              [--bin target/release/freshen]
Build first: cargo build --release. PostgreSQL: postgres://postgres@127.0.0.1:5432
(a database `freshen_bench` is created and dropped).
"""

import argparse
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_SERVER = os.environ.get("FRESHEN_BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432")

CONFIG = """
[database]
url = "{url}"

[source]
table = "people"
key = "id"
refreshed_at = "refreshed_at"

[api]
base_url = "http://127.0.0.1:{port}"
path = "/v1/people/{{id}}"
timeout = "10s"

[api.response]
"/title" = "title"
"/company" = "company"
"/score" = "score"

[limits]
rate = 1000000
max_concurrency = {conc}

[retry]
max_attempts = 5
base_delay = "100ms"
max_delay = "5s"
max_outage = "1m"

[credits]
allowance = 100000000
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            db.close()
            return n
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
        return int(out.stdout.strip())
    return f"{PG_SERVER}/freshen_bench", written, lambda: psql("postgres", "DROP DATABASE IF EXISTS freshen_bench WITH (FORCE)")


def wait_for(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"the sandbox did not start on port {port}")


def run(binary, kind, records, conc):
    with tempfile.TemporaryDirectory() as tmp:
        url, written, cleanup = seed(kind, tmp, records)
        port = free_port()
        config = os.path.join(tmp, "config.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(url=url, port=port, conc=conc))
        sandbox = subprocess.Popen([binary, "sandbox", "--listen", f"127.0.0.1:{port}", "--latency", "0ms"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(port)
            start = time.monotonic()
            out = subprocess.run(["/usr/bin/time", "-v", binary, "run", "--config", config, "--log", "info"],
                                 capture_output=True, text=True)
            wall = time.monotonic() - start
            if out.returncode != 0:
                print(out.stdout, out.stderr, file=sys.stderr)
                raise SystemExit(f"{kind} {records}: freshen exited {out.returncode}")
            n_written = written()
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
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "freshen"))
    p.add_argument("--records", type=int, nargs="+", default=[100_000])
    p.add_argument("--db", nargs="+", default=["sqlite", "postgres"])
    p.add_argument("--conc", type=int, nargs="+", default=[64, 1],
                   help="max_concurrency values; 1 is the comparison row (run only at the smallest size)")
    args = p.parse_args()
    if not os.path.exists(args.bin):
        raise SystemExit(f"{args.bin} not found: run `cargo build --release` first, or pass --bin")
    print(f"{'db':9} {'records':>9} {'conc':>5} {'records/s':>10} {'plan s':>7} {'peak RSS MiB':>13} "
          f"{'CPU ms/1k':>10} {'written':>9}")
    for kind in args.db:
        for records in args.records:
            for conc in args.conc:
                if conc == 1 and records != min(args.records):
                    continue
                r = run(args.bin, kind, records if conc != 1 else min(records, 20_000), conc)
                print(f"{r['db']:9} {r['records']:>9} {r['conc']:>5} {r['rate']:>10.0f} {r['plan_s']:>7.2f} "
                      f"{r['rss_mib']:>13.1f} {r['cpu_ms_per_1k']:>10.1f} {r['written']:>9}", flush=True)


if __name__ == "__main__":
    main()
