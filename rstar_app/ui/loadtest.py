"""Load test: N concurrent gradio_client clients send searches to the app for a fixed time.

    python -m rstar_app.ui.loadtest --seconds 600 --clients 8   # the full form (README figures)
    python -m rstar_app.ui.loadtest --url http://127.0.0.1:7860/ --seconds 60
    (short form, in the default test suite: tests/ui/test_ui_api.py::test_loadtest_short_form)

Bounded on purpose: loopback addresses only, a fixed duration after which no new search is sent,
and a hard deadline for the searches still in flight (they are cancelled). Each client loops:
send one small search (1 rollout, 2 candidates), wait for its result, repeat. Prints completed /
rejected-as-busy (the app's "Busy: ..." message) / errors, p50/p95 time in line (measured by the
server: trace meta queue_wait_s), and the server's RSS (app process + sandbox workers): before the
load (after one warm-up search), the peak during it, and after it. Exit status 1 when an error
occurred (anything that is neither a result nor a clear busy message). Requests still waiting in
line when the time is up are withdrawn; searches still running at the deadline are cancelled; both
are counted apart from errors.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBLEMS = [
    "Tom has 3 boxes with 4 apples in each box. How many apples does he have?",
    "Sara has 5 pens and buys 7 more. How many pens does she have now?",
    "A baker makes 12 cakes a day. How many cakes does he make in 5 days?",
    "Jake has 15 marbles and gives 6 to his friend. How many marbles does he have left?",
]


def loopback_only(url: str) -> str:
    host = urllib.parse.urlparse(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise SystemExit(f"refusing {url}: the load test only targets loopback addresses (127.0.0.1, ::1, localhost)")
    return url


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(max_waiting: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    env.pop("SPACE_ID", None)  # never bind 0.0.0.0 here
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port),
                             "--max-waiting", str(max_waiting)], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"app.py exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"app.py did not answer within 300 s; see {log_path}")


def stop_app(proc: subprocess.Popen) -> None:
    import signal
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.completed = self.busy = self.withdrawn = self.unfinished = 0
        self.errors: list[str] = []
        self.busy_messages: list[str] = []  # a few, so a caller can check what clients were told
        self.waits: list[float] = []
        self.latency: list[float] = []

    def add(self, kind: str, **kw) -> None:
        with self.lock:
            if kind == "completed":
                self.completed += 1
                self.waits.append(kw["wait"])
                self.latency.append(kw["latency"])
            elif kind == "busy":
                self.busy += 1
                if len(self.busy_messages) < 5:
                    self.busy_messages.append(kw["message"])
            elif kind == "withdrawn":
                self.withdrawn += 1
            elif kind == "unfinished":
                self.unfinished += 1
            else:
                self.errors.append(kw["message"])


WAITING = "in line"  # the app's status line while a request waits ("... you are number k in line ...")


def client_loop(url: str, idx: int, until: float, hard_deadline: float, stats: Stats, settings: dict,
                busy_pause: float) -> None:
    """Send searches until `until`. A request still waiting in line at `until` is withdrawn (it
    never started); one still running at `hard_deadline` is cancelled and counted unfinished."""
    from gradio_client import Client

    try:
        client = Client(url, verbose=False)
    except Exception as e:  # noqa: BLE001 - every failure is counted, none stops the others
        stats.add("error", message=f"client {idx}: connect: {type(e).__name__}: {e}")
        return
    k = idx
    while time.monotonic() < until:
        problem = PROBLEMS[k % len(PROBLEMS)]
        k += 1
        t0 = time.monotonic()
        job = client.submit(problem, settings["rollouts"], settings["candidates"], 2.0, 0.7, k,
                            settings["time_limit"], "mcts", api_name="/solve")
        ended = None
        while not job.done():
            now = time.monotonic()
            outs = job.outputs()
            waiting = bool(outs) and WAITING in str(outs[-1][1])
            if now > until and waiting:
                ended = "withdrawn"
            elif now > hard_deadline:
                ended = "unfinished"
            if ended:
                job.cancel()
                stats.add(ended)
                return
            time.sleep(0.5)
        try:
            _, _, trace = job.result(timeout=60)
        except Exception as e:  # noqa: BLE001
            msg = str(e)
            if "Busy:" in msg:
                stats.add("busy", message=msg[:300])
                time.sleep(busy_pause)  # a polite client backs off before retrying
            else:
                stats.add("error", message=f"client {idx}: {type(e).__name__}: {msg[:300]}")
            continue
        stats.add("completed", wait=float(trace["meta"].get("queue_wait_s", 0.0)), latency=time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running app on a loopback address (default: start app.py here)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=180.0, help="how long new searches are sent")
    p.add_argument("--grace", type=float, default=600.0, help="max extra seconds for searches in flight")
    p.add_argument("--max-waiting", type=int, default=4, help="line length of the app started here")
    p.add_argument("--rollouts", type=int, default=1)
    p.add_argument("--candidates", type=int, default=2)
    p.add_argument("--time-limit", type=float, default=120.0, help="per-search time limit (s)")
    p.add_argument("--busy-pause", type=float, default=2.0, help="seconds a client waits after a busy answer")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up search (server already warm)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if not 1 <= args.clients <= 32 or not 0 < args.seconds <= 3600:
        raise SystemExit("use 1-32 clients and 0-3600 seconds")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from gradio_client import Client

    proc = None
    if args.url:
        url = loopback_only(args.url)
    else:
        log = Path(os.environ.get("TMPDIR", "/tmp")) / "rstar-loadtest-app.log"
        proc, url = start_app(args.max_waiting, log)
        print(f"started app.py at {url} (log: {log})", flush=True)
    try:
        probe = Client(url, verbose=False)
        t = time.monotonic()
        if not args.no_warmup:  # one search first, so "before" is measured with the model loaded
            probe.predict(PROBLEMS[0], 1, 1, 2.0, 0.7, 0, min(600.0, args.time_limit), "mcts", api_name="/solve")
        warmup = time.monotonic() - t
        before = probe.predict(api_name="/status")
        peak = {"rss": 0.0}
        trend: list[tuple] = []  # (s since start, app MB, sandbox MB, KV-snapshot cache MB) every ~30 s
        sampling = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not sampling.is_set():
                try:
                    st = probe.predict(api_name="/status")
                    app, kids = st.get("rss_mb", 0), st.get("children_rss_mb", 0)
                    peak["rss"] = max(peak["rss"], app + kids)
                    if not trend or time.monotonic() - t0 - trend[-1][0] >= 30:
                        trend.append((round(time.monotonic() - t0), round(app, 1), round(kids, 1),
                                      round(st.get("kv_snapshots_mb", 0), 1)))
                except Exception:  # noqa: BLE001 - a missed sample is not a load-test error
                    pass
                sampling.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stats = Stats()
        start = time.monotonic()
        until, hard = start + args.seconds, start + args.seconds + args.grace
        settings = {"rollouts": args.rollouts, "candidates": args.candidates, "time_limit": args.time_limit}
        threads = [threading.Thread(target=client_loop, args=(url, i, until, hard, stats, settings, args.busy_pause),
                                    daemon=True) for i in range(args.clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=max(1.0, hard - time.monotonic() + 30))
        elapsed = time.monotonic() - start
        sampling.set()
        sampler.join(timeout=10)
        time.sleep(2)
        after = probe.predict(api_name="/status")
    finally:
        if proc is not None:
            stop_app(proc)

    rss = lambda st: st.get("rss_mb", 0) + st.get("children_rss_mb", 0)  # noqa: E731
    fig = {
        "clients": args.clients, "seconds": round(elapsed, 1), "rollouts": args.rollouts,
        "candidates": args.candidates, "max_waiting": after.get("max_waiting"), "warmup_s": round(warmup, 1),
        "completed": stats.completed, "rejected_busy": stats.busy, "errors": len(stats.errors),
        "withdrawn_at_end": stats.withdrawn, "unfinished_at_deadline": stats.unfinished,
        "queue_wait_p50_s": pct(stats.waits, 50), "queue_wait_p95_s": pct(stats.waits, 95),
        "latency_p50_s": pct(stats.latency, 50), "latency_p95_s": pct(stats.latency, 95),
        "rss_before_mb": round(rss(before), 1), "rss_peak_mb": round(max(peak["rss"], rss(before), rss(after)), 1),
        "rss_after_mb": round(rss(after), 1), "kv_snapshots_after_mb": after.get("kv_snapshots_mb"),
        "server_served": after.get("served"),
        "server_rejected_busy": after.get("rejected_busy"), "sessions_after": after.get("sessions"),
        "rss_trend_mb": trend,
    }
    f = lambda v: "–" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))  # noqa: E731
    print(f"\n{args.clients} clients for {fig['seconds']:.0f} s ({args.rollouts} rollout(s), {args.candidates} "
          f"candidates per search; line: 1 running + {fig['max_waiting']} waiting)\n")
    rows = [("completed", fig["completed"]), ("rejected as busy (clear message)", fig["rejected_busy"]),
            ("errors", fig["errors"]),
            ("still waiting at the end (withdrawn) / running at the deadline (cancelled)",
             f"{fig['withdrawn_at_end']} / {fig['unfinished_at_deadline']}"),
            ("queue wait p50 / p95 (s)", f"{f(fig['queue_wait_p50_s'])} / {f(fig['queue_wait_p95_s'])}"),
            ("request latency p50 / p95 (s)", f"{f(fig['latency_p50_s'])} / {f(fig['latency_p95_s'])}"),
            ("RSS before (MB, app + sandbox)", f(fig["rss_before_mb"])), ("RSS peak (MB)", f(fig["rss_peak_mb"])),
            ("RSS after (MB)", f(fig["rss_after_mb"]))]
    print("| figure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\nRSS every ~30 s (seconds: app + sandbox MB, of which the app's KV-snapshot cache): "
          + ", ".join(f"{t}: {a:.0f}+{k:.0f} ({kv:.0f})" for t, a, k, kv in trend))
    for e in stats.errors[:10]:
        print("error:", e)
    if args.json:
        args.json.write_text(json.dumps({**fig, "error_messages": stats.errors[:50],
                                         "busy_messages": stats.busy_messages}, indent=2) + "\n")
    return 1 if stats.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
