#!/usr/bin/env python3
"""Flow-control benchmark: how close freshen gets to the vendor's real capacity,
and how few calls it wastes, in the scenarios of issue 3.

For each scenario it starts `freshen sandbox` in its own process, creates a fresh
SQLite database of 2,000 records, runs `freshen run` against it, and reads the
sandbox's counters. It prints one table row per scenario:

  wall/ideal   wall time of `freshen run` over records / vendor capacity (+ outage)
  rejected     calls the vendor refused (429, 503, 500) as a share of all calls
  in outage    calls that reached the vendor during its outage window
  failed       records that ended failed

Usage: python3 bench/flow.py [--bin target/release/freshen] [--records 2000] [--only NAME] [--long]
  --long: issue 15's rows instead (20,000 and 60,000 records, 1 s and 2 s latency,
          5/10/20% instant 503s), each with its own record count and latency
Build first: cargo build --release
"""

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time

from common import ROOT, config, end_on_signals, free_port, sandbox, sandbox_stats, wait_for


# name, sandbox flags, config (rate, max_concurrency), ideal seconds for 2,000 records
SCENARIOS = [
    ("limit 200/s, config 200/s", ["--rate", "200", "--burst", "20"], (200, 32), 10.0),
    ("limit 200/s, config 200/s, headers", ["--rate", "200", "--burst", "20", "--ratelimit-headers"], (200, 32), 10.0),
    ("limit 200/s, config 1000/s x64", ["--rate", "200", "--burst", "20"], (1000, 64), 10.0),
    ("limit 200/s, config 1000/s x64, headers", ["--rate", "200", "--burst", "20", "--ratelimit-headers"], (1000, 64), 10.0),
    ("8 in flight, 503 beyond, config x64", ["--max-concurrency", "8"], (1000, 64), 12.5),
    ("limit 200/s, 5 s outage from 3 s", ["--rate", "200", "--burst", "20", "--outage-start", "3s", "--outage", "5s"], (200, 32), 15.0),
    ("limit 200/s, 5 s outage from 3 s, headers",
     ["--rate", "200", "--burst", "20", "--outage-start", "3s", "--outage", "5s", "--ratelimit-headers"], (200, 32), 15.0),
    # Not an outage: a vendor that fails one call in ten at random. Ideal: the
    # 2,000 / 0.9 calls it takes, at 200/s.
    ("limit 200/s, 10% of calls fail (500)", ["--rate", "200", "--burst", "20", "--error-rate", "0.1", "--instant-errors"],
     (200, 32), 2000 / 0.9 / 200),
    # Two windows (Hunter's 15/s and 500/min, scaled): 50 a second and 300 in
    # 10 s, fixed windows from the sandbox's start. Ideal: six full 10 s
    # windows of 300, then the last 200 at 50/s.
    ("windows 50/1s + 300/10s, config the windows", ["--quota", "50/1s", "--quota", "300/10s"],
     (50, 32, ["50/1s", "300/10s"]), 64.0),
    ("windows 50/1s + 300/10s, config rate 50 only", ["--quota", "50/1s", "--quota", "300/10s"], (50, 32), 64.0),
]

# Issue 15's rows: (name, sandbox flags, config (rate, max_concurrency), ideal seconds,
# records, latency). Ideal: records over what the vendor takes (successes only).
LONG = [
    ("limit 200/s, config 1000/s x64, 20k", ["--rate", "200", "--burst", "20"], (1000, 64), 100.0, 20000, "50ms"),
    ("limit 1200/s, config 1500/s, 60k", ["--rate", "1200", "--burst", "120"], (1500, 64), 50.0, 60000, "10ms"),
    ("limit 200/s, 1 s latency, x256", ["--rate", "200", "--burst", "20"], (200, 256), 20.0, 4000, "1s"),
    ("limit 100/s, 2 s latency, x256", ["--rate", "100", "--burst", "10"], (100, 256), 20.0, 2000, "2s"),
] + [
    (f"limit 200/s, {p}% instant 503", ["--rate", "200", "--burst", "20", "--error-rate", str(p / 100),
                                         "--error-status", "503", "--instant-errors"],
     (200, 32), 2000 / (200 * (1 - p / 100)), 2000, "50ms")
    for p in (5, 10, 20)
] + [
    ("limit 200/s, 10% 503 after the latency", ["--rate", "200", "--burst", "20", "--error-rate", "0.1",
                                                 "--error-status", "503"], (200, 32), 2000 / 180, 2000, "50ms"),
]



def seed(path, records):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, title TEXT, "
               "company TEXT, score INTEGER, refreshed_at TEXT)")
    db.executemany("INSERT INTO people (id, name) VALUES (?, ?)", ((i, f"Person {i}") for i in range(1, records + 1)))
    db.commit()
    db.close()


def run(binary, name, sandbox_flags, rate, conc, ideal, records, latency, log="warn", log_to=None, sandbox_bin=None,
        windows=None):
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.db")
        seed(db, records)
        port = free_port()
        config_path = os.path.join(tmp, "config.toml")
        with open(config_path, "w") as f:
            f.write(config(f"sqlite://{db}", port, conc, rate=rate, base_delay="500ms", max_delay="60s", max_outage="5m",
                           windows=windows))
        cmd = [sandbox_bin or binary, "sandbox", "--listen", f"127.0.0.1:{port}", "--latency", latency] + sandbox_flags
        with sandbox(cmd) as vendor:
            wait_for(port)
            if vendor.poll() is not None:
                raise SystemExit(f"{name}: the sandbox exited {vendor.returncode} at start")
            summary = os.path.join(tmp, "summary.json")
            start = time.monotonic()
            # A run that hangs must not hold the sandbox (and the machine) forever.
            limit = 10 * ideal * records / 2000 + 60
            try:
                out = subprocess.run([binary, "run", "--config", config_path, "--summary-json", summary,
                                      "--log", log], capture_output=True, text=True, timeout=limit)
            except subprocess.TimeoutExpired as e:
                if log_to and e.stderr:
                    with open(log_to, "wb") as f:
                        f.write(e.stderr if isinstance(e.stderr, bytes) else e.stderr.encode())
                raise SystemExit(f"{name}: freshen did not finish within {limit:.0f} s (killed)")
            wall = time.monotonic() - start
            if log_to:
                with open(log_to, "w") as f:
                    f.write(out.stderr)
            if out.returncode != 0:
                print(out.stdout, out.stderr, file=sys.stderr)
                raise SystemExit(f"{name}: freshen exited {out.returncode}")
            stats = sandbox_stats(port)
            with open(summary) as f:
                result = json.load(f)
    rejected = stats["throttled"] + stats["unavailable"] + stats["errors"]
    return {
        "scenario": name,
        "wall_s": round(wall, 2),
        "ideal_s": ideal * records / 2000,
        "wall_over_ideal": round(wall / (ideal * records / 2000), 3),
        "calls": stats["requests"],
        "rejected_share": round(rejected / max(stats["requests"], 1), 4),
        "calls_in_outage": stats["during_outage"],
        "failed": result["records"]["failed"],
        "load": round(os.getloadavg()[0], 2),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "freshen"))
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--latency", default="50ms")
    p.add_argument("--only", help="run the scenarios whose name contains this text")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    p.add_argument("--log", default="warn", help="freshen's log level (--log), e.g. debug to see every pace change")
    p.add_argument("--log-dir", help="keep each run's log in this directory, one file per scenario")
    p.add_argument("--sandbox-bin", help="run the sandbox from this binary (to bench an older freshen against "
                   "a sandbox with --error-status and --instant-errors)")
    p.add_argument("--long", action="store_true", help="run issue 15's rows (long runs, own record counts) instead")
    args = p.parse_args()
    end_on_signals()
    if not os.path.exists(args.bin):
        raise SystemExit(f"{args.bin} not found: run `cargo build --release` first, or pass --bin")

    rows = []
    print(f"{'scenario':44} {'wall/ideal':>10} {'rejected':>9} {'calls':>6} {'in outage':>9} {'failed':>6} {'load':>5}")
    table = [(n, f, c, i, args.records, args.latency) for n, f, c, i in SCENARIOS]
    if args.long:
        table = [(n, f, c, i * 2000 / r, r, lat) for n, f, c, i, r, lat in LONG]
    for name, flags, (rate, conc, *windows), ideal, records, latency in table:
        if args.only and args.only not in name:
            continue
        log_to = None
        if args.log_dir:
            os.makedirs(args.log_dir, exist_ok=True)
            log_to = os.path.join(args.log_dir, re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".log")
        row = run(args.bin, name, flags, rate, conc, ideal, records, latency, args.log, log_to, args.sandbox_bin,
                  windows[0] if windows else None)
        rows.append(row)
        print(f"{name:44} {row['wall_over_ideal']:>10.3f} {row['rejected_share']:>8.1%} {row['calls']:>6} "
              f"{row['calls_in_outage']:>9} {row['failed']:>6} {row['load']:>5.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
