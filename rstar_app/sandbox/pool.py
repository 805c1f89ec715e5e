"""The parent side: `Sandbox`, which runs programs in workers forked by a zygote process.

    parent (this module, trusted)
      |-- zygote (trusted, warm: numpy + sympy imported, never runs model code)
            |-- worker, worker, ... (one per program: confined, then forked-and-forgotten)

`Sandbox.run(codes)` takes an idle worker from the zygote, writes the program to it, waits for the
answer with a wall-clock deadline and has the worker killed and reaped afterwards, whatever
happened. A dead zygote is restarted transparently.

Prefix cache (cache.py): the parent keeps an LRU of opaque snapshot bytes keyed by the hash of
the steps (snapshot.py). Any worker can restore any snapshot, so there is no routing to do between
workers; the cache is shared by all of them and by all threads.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import weakref
from collections import deque
from typing import Sequence

from .cache import Entry, SnapshotCache, prefix_keys
from .limits import KINDS, ExecResult, SandboxLimits
from .protocol import FrameReader, ProtocolError, encode, write_all
from .worker import STARTED, seconds_text
from .zygote import remove_tree

MAX_PROGRAM_CHARS = 1 << 20    # all steps together; a model never writes this much
MAX_STEPS = 1024
ZYGOTE_START_SECONDS = 120.0   # importing numpy + sympy on a loaded 2-core machine


def read_roots() -> list[str]:
    """Directories a worker may read: the Python standard library and the site directories that
    hold numpy/sympy/mpmath (lazy imports). Never the project or the user's home."""
    roots: set[str] = set()
    paths = sysconfig.get_paths()
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(name):
            roots.add(paths[name])
    for pkg in ("numpy", "sympy", "mpmath"):
        spec = importlib.util.find_spec(pkg)
        if spec and spec.submodule_search_locations:
            site = os.path.dirname(list(spec.submodule_search_locations)[0])
            if os.path.basename(site) in ("site-packages", "dist-packages"):
                roots.add(site)
    out: set[str] = set()
    for r in roots:
        out.add(os.path.abspath(r))
        out.add(os.path.realpath(r))
    return sorted(p for p in out if os.path.isdir(p))


class _ZygoteHandle:
    """One zygote process and the socket to it. Not thread-safe: Sandbox holds a lock."""

    def __init__(self, cfg: dict, scratch_root: str) -> None:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        project_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        boot = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
                "from rstar_app.sandbox.zygote import main; main()")
        # Only these variables: no PYTHONPATH/LD_PRELOAD/secrets from the app's environment.
        env = {"PYTHONHASHSEED": "0", "PYTHONUTF8": "1", "OPENBLAS_NUM_THREADS": "1",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}
        self.log_path = os.path.join(scratch_root, "zygote.log")
        # -s: no user site-packages, -B: never write .pyc, -P (3.11+): no cwd on sys.path
        flags = ["-s", "-B"] + (["-P"] if sys.version_info >= (3, 11) else [])
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *flags, "-c", boot, project_root, json.dumps(cfg),
                 str(child_sock.fileno())],
                env=env, cwd=scratch_root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=log, pass_fds=[child_sock.fileno()], start_new_session=True)
        child_sock.close()
        self.sock = parent_sock
        self.ready: dict | None = None

    def _recv(self, timeout: float | None) -> tuple[dict, list[int]]:
        self.sock.settimeout(timeout)
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 2)
        finally:
            self.sock.settimeout(None)
        if not data:
            for fd in fds:
                os.close(fd)
            raise ProtocolError("the zygote exited")
        return json.loads(data), fds

    def wait_ready(self) -> dict:
        if self.ready is None:
            try:
                self.ready, _ = self._recv(ZYGOTE_START_SECONDS)
            except (OSError, ProtocolError) as e:
                raise RuntimeError(f"the sandbox zygote failed to start ({e}): "
                                   f"{self._log_tail()}") from None
        return self.ready

    def take(self) -> tuple[int, str, int, int]:
        """(worker pid, its scratch directory, request fd, result fd)."""
        self.wait_ready()
        self.sock.sendall(json.dumps({"op": "take"}).encode())
        msg, fds = self._recv(60.0)
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            raise ProtocolError("the zygote did not hand over a worker")
        return int(msg["pid"]), str(msg["scratch"]), fds[0], fds[1]

    def reap(self, pid: int, reply: bool) -> int | None:
        self.sock.sendall(json.dumps({"op": "reap", "pid": pid, "reply": reply}).encode())
        if not reply:
            return None
        msg, _ = self._recv(30.0)
        return msg.get("status")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace").strip() or "(no output)"
        except OSError:
            return "(no log)"

    def close(self) -> None:
        try:
            self.sock.sendall(json.dumps({"op": "exit"}).encode())
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc.pid)
            self.proc.wait()
        self.sock.close()


def _read_started(fd: int, deadline: float) -> bool:
    """True once the STARTED byte arrived, False on EOF (or garbage) before it. On timeout True:
    the wall-clock deadline handling after it reports the timeout."""
    timeout = max(0.0, deadline - time.monotonic())
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return True
    try:
        return os.read(fd, 1) == STARTED
    except OSError:
        return False


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


class _Resources:
    """What must be released even if a Sandbox is never closed (weakref.finalize target)."""

    def __init__(self, scratch_root: str) -> None:
        self.scratch_root = scratch_root
        self.zygote: _ZygoteHandle | None = None
        self.owner = os.getpid()

    def release(self) -> None:
        if os.getpid() != self.owner:
            return  # a forked copy of the app: the zygote and files belong to the original
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None
        remove_tree(self.scratch_root)


class SandboxUnavailable(RuntimeError):
    """This system cannot confine step programs (the sandbox needs Linux)."""


class Sandbox:
    """Runs cumulative step programs in confined, disposable worker processes.

    >>> with Sandbox() as sb:
    ...     sb.run(["a = 2\\n", "b = a * 3\\n", "print(b)\\n"]).stdout
    '6\\n'

    `workers` is how many programs may run at the same time (further callers wait); `run` is
    thread-safe. See kernel.py and guard.py for what a worker is and is not allowed to do.
    """

    def __init__(self, *, workers: int = 1, limits: SandboxLimits | None = None) -> None:
        if not sys.platform.startswith("linux"):
            raise SandboxUnavailable(
                f"the step sandbox needs Linux (prctl, seccomp, Landlock, /proc), not {sys.platform}: searches "
                "run their code there only; use a Linux machine, VM or container (opening traces works anywhere)")
        if not isinstance(workers, int) or not 1 <= workers <= 64:
            raise ValueError(f"workers must be an integer in [1, 64], got {workers!r}")
        self.limits = limits if limits is not None else SandboxLimits()
        if not isinstance(self.limits, SandboxLimits):
            raise TypeError("limits must be a SandboxLimits")
        self.workers = workers
        self._slots = threading.BoundedSemaphore(workers)
        self._chan = threading.Lock()
        cache_bytes = self.limits.cache_mb << 20
        self._cache = SnapshotCache(cache_bytes)
        self._snapshot_cap = min(4 << 20, cache_bytes // 4)
        self._closed = False
        self._recent: deque[tuple[int, str]] = deque(maxlen=64)  # (worker pid, scratch): tests
        self.isolation: dict = {}
        self.scratch_root = tempfile.mkdtemp(prefix="rstar-sandbox-")
        os.chmod(self.scratch_root, 0o711)  # a worker that dropped to nobody must reach its dir
        self._cfg = {"limits": self.limits.to_dict(), "workers": workers,
                     "scratch_root": self.scratch_root, "read_roots": read_roots()}
        self._res = _Resources(self.scratch_root)
        self._finalizer = weakref.finalize(self, self._res.release)
        self._res.zygote = _ZygoteHandle(self._cfg, self.scratch_root)  # starts importing now

    # ------------------------------------------------------------------------------ public API

    def run(self, codes: Sequence[str]) -> ExecResult:
        """Run the code of each step so far, in order, as one program; never raises for anything
        the program does. Thread-safe."""
        t0 = time.perf_counter()
        if self._closed:
            raise RuntimeError("this Sandbox is closed")
        codes = list(codes)
        if not all(isinstance(c, str) for c in codes):
            raise TypeError("codes must be a sequence of str")
        if len(codes) > MAX_STEPS or sum(map(len, codes)) > MAX_PROGRAM_CHARS:
            return ExecResult(False, "", f"program too large (limit: {MAX_STEPS} steps, "
                              f"{MAX_PROGRAM_CHARS} characters)", "forbidden", 0.0)
        if not codes:
            return ExecResult(True, "", None, "ok", time.perf_counter() - t0)
        caching = self._snapshot_cap > 0
        keys = prefix_keys(codes) if caching else []
        k, entry = self._cache.longest(keys) if caching else (0, None)
        if entry is not None and k == len(codes):
            return ExecResult(True, entry.stdout, None, "ok", time.perf_counter() - t0, cached=True)
        with self._slots:
            header: dict | None = None
            blob = b""
            # idle workers killed from outside are only noticed when taken: try past all of them
            for _ in range(self.workers + 6):
                outcome = self._attempt(codes, k, entry, caching)
                if outcome is None:  # the worker never got the program: try another
                    continue
                header, blob = outcome
                if header.get("restore_failed") and entry is not None:
                    self._cache.drop(keys[k - 1])
                    k, entry = 0, None
                    header = None
                    continue
                break
            if header is None:
                header = {"kind": "crash", "stdout": "", "error": "no sandbox worker could be "
                          "started (see the zygote log in the sandbox scratch directory)"}
        result = ExecResult(header["kind"] == "ok", header["stdout"], header["error"],
                            header["kind"], time.perf_counter() - t0, cached=entry is not None)
        if result.ok and blob and caching:
            self._cache.put(keys[-1], Entry(blob, result.stdout, header["cpu"]))
        return result

    def close(self) -> None:
        """Kill the zygote and every worker, delete the scratch directories. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._chan:
            self._finalizer()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------------------ internals

    def _zygote(self, *, replace: bool = False) -> _ZygoteHandle:
        """The running zygote, started (again) if needed. Caller holds self._chan."""
        z = self._res.zygote
        if z is not None and (replace or not z.alive()):
            z.proc.kill()  # its workers die with it (PDEATHSIG)
            try:
                z.close()
            except Exception:
                pass
            z = self._res.zygote = None
        if z is None:
            z = self._res.zygote = _ZygoteHandle(self._cfg, self.scratch_root)
        return z

    def _take(self) -> tuple[int, int, int]:
        with self._chan:
            if self._closed:
                raise RuntimeError("this Sandbox is closed")
            try:
                pid, scratch, req_fd, res_fd = self._zygote().take()
            except (OSError, ProtocolError, ValueError, KeyError):
                # dead or wedged: start a fresh one (a start failure raises RuntimeError)
                pid, scratch, req_fd, res_fd = self._zygote(replace=True).take()
            self._recent.append((pid, scratch))
            return pid, req_fd, res_fd

    def _reap(self, pid: int, reply: bool) -> int | None:
        with self._chan:
            z = self._res.zygote
            if z is None:
                return None
            try:
                return z.reap(pid, reply)
            except (OSError, ProtocolError, ValueError):
                z.proc.kill()  # the next _take restarts it; its workers die with it
                return None

    def _attempt(self, codes: list[str], k: int, entry: Entry | None,
                 caching: bool) -> tuple[dict, bytes] | None:
        """One run in one worker: (header, snapshot blob), or None when the worker was dead
        before it got the program."""
        lim = self.limits
        pid, req_fd, res_fd = self._take()
        reaped = False
        try:
            request = {"codes": codes[k:], "first": k, "snapshot": caching,
                       "snapshot_cap": self._snapshot_cap}
            reader = FrameReader(res_fd, max_header=16 * lim.max_output + (1 << 16),
                                 max_blob=self._snapshot_cap)
            t0 = time.monotonic()
            try:
                write_all(req_fd, encode(request, entry.blob if entry else b""))
            except OSError:
                pass  # the worker is gone; it may still have said why (set-up failure)
            finally:
                os.close(req_fd)
            # The worker's first byte says it got the program. A worker that dies before that
            # (killed while idle) did not run anything: the caller retries with another one.
            if not _read_started(res_fd, t0 + lim.wall_seconds):
                return None
            try:
                frame = reader.read(t0 + lim.wall_seconds)
            except ProtocolError:  # died without a complete answer
                status = self._reap(pid, reply=True)
                reaped = True
                return self._death(status, time.monotonic() - t0), b""
            if frame is None:
                return {"kind": "timeout", "stdout": "", "cpu": 0.0, "error":
                        f"timed out after {seconds_text(lim.wall_seconds)} s (wall clock)"}, b""
            header, blob = frame
            return self._checked(header), blob
        finally:
            os.close(res_fd)
            if not reaped:
                self._reap(pid, reply=False)

    def _checked(self, header: dict) -> dict:
        """Validate a worker's answer (it comes from untrusted territory)."""
        kind = header.get("kind")
        stdout = header.get("stdout")
        error = header.get("error")
        cpu = header.get("cpu")
        limit = self.limits.max_output + 200
        if (kind not in KINDS or not isinstance(stdout, str) or len(stdout) > limit
                or not (error is None or isinstance(error, str))):
            return {"kind": "crash", "stdout": "", "cpu": 0.0,
                    "error": "the worker sent a malformed result"}
        try:  # a forged int of 400 digits would raise OverflowError in isfinite
            cpu = float(cpu) if type(cpu) in (int, float) else math.nan
        except OverflowError:
            cpu = math.nan
        if not math.isfinite(cpu) or cpu < 0:
            cpu = self.limits.cpu_seconds
        if kind == "ok":
            error = None
        elif not error:
            error = kind
        iso = header.get("isolation")
        if isinstance(iso, dict):
            self.isolation = {k: v for k, v in iso.items()
                              if isinstance(k, str) and isinstance(v, (bool, int, str))}
        out = {"kind": kind, "stdout": stdout, "error": error[:1000] if error else None,
               "cpu": float(cpu)}
        if header.get("restore_failed") is True:
            out["restore_failed"] = True
        return out

    def _death(self, status: int | None, elapsed: float) -> dict:
        """A worker died without answering: say how, in the user's terms."""
        lim = self.limits
        msg = "the program crashed the worker"
        kind = "crash"
        if status is not None and os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and elapsed >= lim.cpu_seconds):
                kind = "timeout"
                msg = f"timed out after {seconds_text(lim.cpu_seconds)} s (CPU time limit)"
            elif sig == signal.SIGSYS:
                kind, msg = "forbidden", "the program made a forbidden system call"
            else:
                msg += f" (killed by {signal.Signals(sig).name})" if sig in signal.valid_signals() \
                    else f" (killed by signal {sig})"
        elif status is not None and os.WIFEXITED(status):
            msg = f"the program exited without a result (exit status {os.WEXITSTATUS(status)})"
        return {"kind": kind, "stdout": "", "error": msg, "cpu": 0.0}

    # ------------------------------------------------------------------------- for the tests

    def _zygote_pid(self) -> int | None:
        z = self._res.zygote
        return z.proc.pid if z is not None else None
