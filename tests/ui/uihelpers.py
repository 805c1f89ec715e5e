"""Helpers for the web app tests: start app.py on a free loopback port, wait for an idle server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "unit"))  # the scripted fakes (fakes.py)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's; the installer checks the same name
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
START_TIMEOUT = 180  # the machine is slow and shared: never assert on speed, only wait generously


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(*args: str, log_name: str = "app"):
    """Start `python app.py --port P ARGS` and yield its URL once it answers; stop it after."""
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"rstar-ui-test-{log_name}-{port}.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    env.pop("SPACE_ID", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *args], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not answer within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the sandbox workers go too
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def wait_idle(client, timeout: float = 600) -> dict:
    """Wait until no search runs or waits on the server (after a cancel or between tests)."""
    import concurrent.futures
    deadline = time.monotonic() + timeout
    while True:
        try:
            st = client.predict(api_name="/status")
        except concurrent.futures.CancelledError:
            # gradio_client race: right after job.cancel() the same Client's next call can be
            # reported cancelled too; the server is fine, so ask again
            time.sleep(0.5)
            continue
        if st["running"] == 0 and st["waiting"] == 0:
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"server still busy after {timeout} s: {st}")
        time.sleep(1)
