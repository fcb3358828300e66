#!/usr/bin/env python3
"""Kill storm: freshen killed with SIGKILL at random moments, rerun at once, until
the table is done; then every record is checked.

One `freshen sandbox` (its own process, a little latency) is the vendor. On
SQLite one `freshen run` is killed K times (at a random moment after it starts:
during the plan, mid-run, or during the last checkpoint) and started again each
time at once. On PostgreSQL three `freshen run --join` workers share the run, and
K times a random one of them is killed and started again at once. A last run
finishes the table. Then:

  right      every record holds the sandbox's values for its key
  once       every record's refreshed_at was written exactly once (a trigger
             counts the writes): no record bought twice and written twice
  billed     the calls the vendor billed (every 200)
  ledger     the period's spent in freshen's ledger: every billed answer
             checkpointed, plus what killed runs held reserved (their calls in
             flight, and credits granted but not yet sent), counted as spent
  uncertain  of the ledger, the killed runs' reservations
  over       ledger - billed: credits counted that the vendor did not bill
             (unsent reservations of killed runs); never negative, or the
             ledger under-counts what the vendor billed
  allowance  the period's allowance: the ledger never passes it
  lost/kill  (wall time - the same table's wall time without kills) / K

Usage: python3 bench/killstorm.py [--db sqlite postgres] [--records 200000]
                                  [--kills 25] [--seed 1] [--bin target/release/freshen]
Build first: cargo build --release.
"""

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

from common import ROOT, config, free_port, sandbox_stats, wait_for
from speed import PG_SERVER, psql, seed

LOCK = '\n[lock]\nstale_after = "3s"\n'


def count_writes(kind, url):
    """A `writes` column counted up by a trigger on every write of refreshed_at."""
    if kind == "sqlite":
        db = sqlite3.connect(url.removeprefix("sqlite://"))
        db.executescript(
            "ALTER TABLE people ADD COLUMN writes INTEGER NOT NULL DEFAULT 0;"
            "CREATE TRIGGER count_writes AFTER UPDATE OF refreshed_at ON people "
            "BEGIN UPDATE people SET writes = writes + 1 WHERE id = NEW.id; END;")
        db.commit()
        db.close()
        return
    psql("freshen_bench",
         "ALTER TABLE people ADD COLUMN writes BIGINT NOT NULL DEFAULT 0; "
         "CREATE FUNCTION count_writes() RETURNS trigger LANGUAGE plpgsql AS "
         "$$ BEGIN NEW.writes := OLD.writes + 1; RETURN NEW; END $$; "
         "CREATE TRIGGER count_writes BEFORE UPDATE OF refreshed_at ON people "
         "FOR EACH ROW EXECUTE FUNCTION count_writes();")


def query(kind, url, sql):
    if kind == "sqlite":
        db = sqlite3.connect(url.removeprefix("sqlite://"))
        row = db.execute(sql).fetchone()
        db.close()
        return row
    out = subprocess.run(["psql", "-tA", "-F", "\t", f"{PG_SERVER}/freshen_bench", "-c", sql],
                         check=True, capture_output=True, text=True)
    return [None if v == "" else int(v) for v in out.stdout.strip().split("\t")]


def start(binary, config_path, join):
    cmd = [binary, "run", "--config", config_path, "--log", "warn"] + (["--join"] if join else [])
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc):
    _, err = proc.communicate()
    if proc.returncode not in (0, 3, 5):
        print(err, file=sys.stderr)
        raise SystemExit(f"freshen exited {proc.returncode}")
    return proc.returncode


def storm(binary, kind, records, kills, rng, latency):
    with tempfile.TemporaryDirectory() as tmp:
        url, written, cleanup = seed(kind, tmp, records)
        count_writes(kind, url)
        port = free_port()
        config_path = os.path.join(tmp, "config.toml")
        allowance = records + records // 5
        with open(config_path, "w") as f:
            f.write(config(url, port, 64).replace("allowance = 100000000", f"allowance = {allowance}") + LOCK)
        sandbox = subprocess.Popen([binary, "sandbox", "--listen", f"127.0.0.1:{port}", "--latency", latency,
                                    "--lean"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        join = kind == "postgres"
        try:
            wait_for(port)
            began = time.monotonic()
            procs = [start(binary, config_path, join) for _ in range(3 if join else 1)]
            for _ in range(kills):
                time.sleep(rng.uniform(0.2, 3.0))
                i = rng.randrange(len(procs))
                procs[i].send_signal(signal.SIGKILL)
                procs[i].wait()
                procs[i] = start(binary, config_path, join)
            for p in procs:
                finish(p)
            # Whatever a killed worker left: runs until the table is done.
            for _ in range(20):
                if finish(start(binary, config_path, join)) == 0 and \
                        query(kind, url, "SELECT COUNT(*) FROM people WHERE refreshed_at IS NULL")[0] == 0:
                    break
                time.sleep(0.5)
            wall = time.monotonic() - began
            billed = sandbox_stats(port)["ok"]
        finally:
            sandbox.terminate()
            sandbox.wait()
        n_written, bad = written()
        once = query(kind, url, "SELECT COUNT(*) FROM people WHERE writes <> 1")[0]
        spent, uncertain = query(kind, url, "SELECT SUM(spent), SUM(uncertain) FROM freshen_credit_periods")
        cleanup()
    return {"kind": kind, "wall": wall, "written": n_written, "bad": bad, "not_once": once,
            "billed": billed, "ledger": spent, "uncertain": uncertain, "allowance": allowance}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                                                 "release", "freshen"))
    p.add_argument("--db", nargs="+", default=["sqlite", "postgres"])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--kills", type=int, default=25)
    p.add_argument("--latency", default="5ms", help="the sandbox's latency per call")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if not os.path.exists(args.bin):
        raise SystemExit(f"{args.bin} not found: run `cargo build --release` first, or pass --bin")
    print(f"load average {os.getloadavg()[0]:.2f}; {args.records} records, {args.kills} kills, "
          f"sandbox latency {args.latency}")
    print(f"{'db':9} {'right':>8} {'once':>6} {'billed':>8} {'ledger':>8} {'uncertain':>9} {'over':>6} "
          f"{'allowance':>9} {'wall s':>7} {'lost/kill s':>11}")
    failed = False
    for kind in args.db:
        base = storm(args.bin, kind, args.records, 0, random.Random(args.seed), args.latency)
        r = storm(args.bin, kind, args.records, args.kills, random.Random(args.seed), args.latency)
        ok = (r["written"] == args.records and r["bad"] == 0 and r["not_once"] == 0
              and r["billed"] <= r["ledger"] <= r["allowance"])
        failed |= not ok
        lost = (r["wall"] - base["wall"]) / max(args.kills, 1)
        print(f"{kind:9} {r['written'] - r['bad']:>8} {args.records - r['not_once']:>6} {r['billed']:>8} "
              f"{r['ledger']:>8} {r['uncertain']:>9} {r['ledger'] - r['billed']:>6} {r['allowance']:>9} "
              f"{r['wall']:>7.1f} {lost:>11.2f}  {'ok' if ok else 'FAILED'} (without kills: {base['wall']:.1f} s)",
              flush=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
