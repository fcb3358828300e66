#!/usr/bin/env python3
"""Several workers on one run: `freshen run --join` with 1 worker, then 3.

`freshen sandbox` runs in its own process with a rate limit (429 over it) and a
latency; each worker may have `max_concurrency` calls in flight, so one worker
alone is held back by latency (about max_concurrency / latency calls per second)
and several together reach the vendor's limit, which they must share, not
exceed. One row per worker count, each on a fresh PostgreSQL database:

  records/s     records done over the wall time, first start to last exit
  calls/s       calls the sandbox saw over the same time; limit: its rate
  median/s      the median of the calls the sandbox saw in each whole second of the run
  peak/s        the most calls the sandbox saw in one second (limit + burst at most)
  throttled     429s as a share of all calls
  written       records whose refreshed_at was set (must equal N; every record's
                values are checked against the sandbox's, or the script fails)

Usage: python3 bench/join.py [--records 6000] [--workers 1 3] [--rate 400]
                             [--conc 8] [--latency 50ms] [--bin target/release/freshen]
Build first: cargo build --release. PostgreSQL: postgres://postgres@127.0.0.1:5432
(a database `freshen_bench` is created and dropped).
"""

import argparse
import os
import subprocess
import tempfile
import time

from common import ROOT, config, free_port, sandbox_stats, wait_for
from speed import seed

BURST = 20
os.environ.setdefault("PGOPTIONS", "-c client_min_messages=warning")


def run(binary, workers, records, rate, conc, latency):
    with tempfile.TemporaryDirectory() as tmp:
        url, written, cleanup = seed("postgres", tmp, records)
        try:
            port = free_port()
            config_path = os.path.join(tmp, "config.toml")
            with open(config_path, "w") as f:
                # The config states the vendor's real limit: the workers share it.
                f.write(config(url, port, conc, rate=rate, burst=BURST // 2))
            sandbox = subprocess.Popen([binary, "sandbox", "--listen", f"127.0.0.1:{port}",
                                        "--rate", str(rate), "--burst", str(BURST), "--latency", latency],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_for(port)
                start = time.monotonic()
                procs = [subprocess.Popen([binary, "run", "--join", "--config", config_path, "--log", "warn"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                         for _ in range(workers)]
                for p in procs:
                    _, err = p.communicate()
                    if p.returncode != 0:
                        raise SystemExit(f"a worker exited {p.returncode}: {err}")
                wall = time.monotonic() - start
                stats = sandbox_stats(port)
            finally:
                sandbox.terminate()
                sandbox.wait()
            n_written, bad = written()
            if bad:
                raise SystemExit(f"{bad} records do not hold the vendor's values")
        finally:
            cleanup()
    calls = stats["requests"]
    # Whole seconds only: the first and last are partial.
    seconds = stats["per_second"]
    first = next((i for i, n in enumerate(seconds) if n), 0)
    busy = seconds[first + 1:-1] or seconds
    return {
        "workers": workers,
        "records": records,
        "wall": wall,
        "rate": records / wall,
        "calls_rate": calls / wall,
        "peak": max(busy),
        "median": sorted(busy)[len(busy) // 2],
        "throttled": stats["throttled"] / max(calls, 1),
        "written": n_written,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "freshen"))
    p.add_argument("--records", type=int, default=6000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 3])
    p.add_argument("--rate", type=int, default=400, help="the vendor's limit, and limits.rate")
    p.add_argument("--conc", type=int, default=8, help="limits.max_concurrency of each worker")
    p.add_argument("--latency", default="50ms")
    args = p.parse_args()
    if not os.path.exists(args.bin):
        raise SystemExit(f"{args.bin} not found: run `cargo build --release` first, or pass --bin")
    print(f"vendor: {args.rate}/s (burst {BURST}), {args.latency} latency; each worker: "
          f"max_concurrency {args.conc}; {args.records} records")
    print(f"{'workers':>7} {'wall s':>7} {'records/s':>10} {'calls/s':>8} {'limit':>6} {'median/s':>9} {'peak/s':>7} "
          f"{'throttled':>10} {'written':>8}")
    for workers in args.workers:
        r = run(args.bin, workers, args.records, args.rate, args.conc, args.latency)
        print(f"{r['workers']:>7} {r['wall']:>7.1f} {r['rate']:>10.0f} {r['calls_rate']:>8.0f} {args.rate:>6} "
              f"{r['median']:>9} {r['peak']:>7} {r['throttled']:>10.2%} {r['written']:>8}", flush=True)


if __name__ == "__main__":
    main()
