"""What the benchmark scripts share: the config they run freshen with, and the
sandbox's port, start and counters."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
rate = {rate}
{burst}{windows}max_concurrency = {conc}

[retry]
max_attempts = 5
base_delay = "{base_delay}"
max_delay = "{max_delay}"
max_outage = "{max_outage}"

[credits]
allowance = 100000000
"""


def config(url, port, conc, rate=1_000_000, burst=None, base_delay="100ms", max_delay="5s", max_outage="1m",
           windows=None):
    """freshen's config.toml for a benchmark: the sample table, the sandbox on `port`
    (limits.burst left at freshen's default unless given; limits.windows a list of
    "CALLS/WINDOW" when given)."""
    return CONFIG.format(url=url, port=port, rate=rate, conc=conc,
                         burst=f"burst = {burst}\n" if burst is not None else "",
                         windows=f"windows = {json.dumps(windows)}\n" if windows else "",
                         base_delay=base_delay, max_delay=max_delay, max_outage=max_outage)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"the sandbox did not start on port {port}")


def sandbox_stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sandbox/stats") as r:
        return json.load(r)


def _exit_on(signum, _frame):
    raise SystemExit(f"stopped by signal {signum}")


def end_on_signals():
    """SIGTERM and SIGHUP end the script through SystemExit, so every `finally` (the
    sandbox's end among them) runs; Ctrl-C already does."""
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _exit_on)


def stop(proc, grace=5):
    """Ends `proc` and its process group: SIGTERM, then SIGKILL if it is still there
    after `grace` seconds (a sandbox stuck in its graceful shutdown, say)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def sandbox(cmd):
    """Runs `freshen sandbox` (`cmd`) in its own process group for the `with` block and
    always ends it, whatever ends the block (an error, Ctrl-C, SIGTERM once
    `end_on_signals` is set): a sandbox left behind keeps its port and CPU and skews
    the next runs."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)
