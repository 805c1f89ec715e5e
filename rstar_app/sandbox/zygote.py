"""The zygote: a warm, trusted process that forks sandboxed workers.

Importing numpy and sympy takes about a second; forking a process that already has them takes
about a millisecond. The zygote imports everything the programs may need once, freezes the heap
(gc.freeze, so workers do not copy pages just by collecting garbage) and then only forks. It never
runs model code itself, so nothing a program does can affect the next program.

It keeps a small pool of idle workers already confined and waiting (worker.prepare), so a run does
not even wait for fork + set-up. Protocol with the parent, over an AF_UNIX SOCK_SEQPACKET socket
(one JSON message per packet, in order):

  -> {"op": "take"}                 <- {"pid", "scratch"} + two fds: the worker's request pipe
                                       (write end) and result pipe (read end), via SCM_RIGHTS
  -> {"op": "reap", "pid", "reply"} kill the worker, wait for it, delete its scratch directory;
                                     with reply: <- {"status": raw wait status}
  -> {"op": "exit"}                 kill every worker and exit (also on EOF: the parent died)

The parent talks to the worker directly through the pipes; the zygote never sees programs.
"""

from __future__ import annotations

import gc
import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
from collections import deque

# The step allow-list plus what those libraries import lazily on common paths (measured):
# imported here once instead of being compiled from source in every worker.
PRELOAD = (
    "numpy.fft", "numpy.random", "numpy.polynomial", "numpy.linalg", "sympy.combinatorics",
    "sympy.integrals.heurisch", "sympy.integrals.manualintegrate", "sympy.integrals.risch",
    "sympy.integrals.meijerint", "sympy.sets.handlers.functions", "sympy.sets.handlers.issubset",
    "sympy.sets.setexpr", "sympy.assumptions.wrapper", "sympy.parsing.sympy_parser",
    "sympy.solvers.diophantine", "sympy.physics.units", "sympy.physics.matrices",
    "sympy.tensor.tensor", "sympy.stats", "sympy.series.formal", "sympy.ntheory.continued_fraction",
    "secrets", "hashlib", "unicodedata", "json", "pickle", "copyreg",
)

# Runs once in the zygote: fills sympy's caches and triggers lazy imports, so every worker starts
# warm (the first sympy call in a cold process is ~10x slower than later ones).
WARMUP = """
import sympy as sp, numpy as np, fractions, decimal, statistics
x, y = sp.symbols('x y')
sp.solve(x**2 - 4, x); sp.simplify((x**2 - 1) / (x - 1)); sp.factor(x**2 - 1)
sp.sympify('x**2 + 1'); sp.nsimplify(0.5); sp.Rational(1, 3) + 1; sp.integrate(x * sp.sin(x), x)
sp.limit(sp.sin(x) / x, x, 0); sp.Matrix([[1, 2], [3, 4]]).det(); sp.factorint(360)
sp.linsolve([x + y - 2, x - y], [x, y]); sp.N(sp.pi, 20); sp.expand((x + 1)**3); str(x**2 / 3)
np.linalg.solve(np.eye(2), [1, 2]); np.array([1.5]).round(2); str(np.arange(3) / 2)
fractions.Fraction(3, 4) + 1; decimal.Decimal('1.1') * 3; statistics.mean([1, 2])
"""


class _Worker:
    __slots__ = ("pid", "req_w", "res_r", "scratch")

    def __init__(self, pid: int, req_w: int, res_r: int, scratch: str) -> None:
        self.pid, self.req_w, self.res_r, self.scratch = pid, req_w, res_r, scratch


def remove_tree(path: str) -> None:
    """Delete a scratch directory, never raising: a program may leave anything there (the seccomp
    filter refuses mkdir, but cleanup must not be what takes the zygote down if that ever slips)."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except Exception:  # RecursionError on a very deep tree: shutil.rmtree recurses in 3.11
        pass


def _warm_up(cfg: dict) -> None:
    import importlib

    from .guard import ALLOWED_IMPORTS
    for name in sorted(ALLOWED_IMPORTS) + list(PRELOAD):
        try:
            importlib.import_module(name)
        except Exception:
            pass  # an optional library missing: programs importing it get a clean ImportError
    if cfg.get("warmup", True):
        try:
            exec(compile(WARMUP, "<warmup>", "exec"), {"__name__": "__warmup__"})
        except Exception:
            pass
    # Every program starts from the same random state and hash seed (PYTHONHASHSEED=0 in the
    # environment): runs are reproducible, and cached and uncached runs agree.
    import random

    import numpy
    random.seed(0)
    numpy.random.seed(0)


class Zygote:
    def __init__(self, cfg: dict, sock: socket.socket) -> None:
        from . import kernel, snapshot
        self.cfg = cfg
        self.sock = sock
        self.idle: deque[_Worker] = deque()
        self.taken: dict[int, _Worker] = {}
        self.pending: dict[int, str] = {}  # killed workers still to be waited for -> scratch
        # two spare workers beyond the concurrency: back-to-back runs never wait for fork + set-up
        self.target = cfg["workers"] + 2
        cfg["privilege_mode"] = kernel.privilege_mode(cfg["read_roots"])
        cfg["zygote_pid"] = os.getpid()
        cfg["seccomp"] = kernel.Seccomp()
        self.baseline = snapshot.Baseline()
        self.uid = kernel.NOBODY if cfg["privilege_mode"] == "nobody" else os.geteuid()

    def fork_worker(self) -> _Worker:
        from . import worker
        scratch = tempfile.mkdtemp(prefix="w-", dir=self.cfg["scratch_root"])
        if self.uid != os.geteuid():
            os.chown(scratch, self.uid, self.uid)
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # ------------------------------------------------ the worker
            try:
                worker.isolate_fds(req_r, res_w)  # now: request on fd 3, result on fd 4
                iso = worker.prepare(self.cfg, scratch)
            except BaseException as e:  # set-up failed: say so instead of running unconfined
                worker.report_setup_failure(e)
            worker.serve(self.cfg, scratch, self.baseline, iso)
        os.close(req_r)
        os.close(res_w)
        for fd in (req_w, res_r):
            os.set_inheritable(fd, False)
        return _Worker(pid, req_w, res_r, scratch)

    def take(self) -> None:
        # An idle worker that died (killed from outside, failed set-up) is handed out anyway: the
        # parent sees its pipes closed (or its set-up error message) and asks for another.
        w = self.idle.popleft() if self.idle else self.fork_worker()
        self.taken[w.pid] = w
        msg = json.dumps({"pid": w.pid, "scratch": w.scratch}).encode()
        socket.send_fds(self.sock, [msg], [w.req_w, w.res_r])
        os.close(w.req_w)
        os.close(w.res_r)

    def reap(self, pid: int, reply: bool) -> None:
        w = self.taken.pop(pid, None)
        status = None
        if w is not None:
            _kill(pid)
            if reply:
                status = _wait(pid)
                remove_tree(w.scratch)
            else:  # wait later, when idle: the parent is not waiting for this
                self.pending[pid] = w.scratch
        if reply:
            self.sock.send(json.dumps({"status": status}).encode())

    def discard(self, w: _Worker) -> None:
        _kill(w.pid)
        _wait(w.pid)
        for fd in (w.req_w, w.res_r):
            _close(fd)
        remove_tree(w.scratch)

    def finish_pending(self) -> None:
        for pid, scratch in self.pending.items():
            _wait(pid)
            remove_tree(scratch)
        self.pending.clear()

    def serve(self) -> str:
        """Answer the parent until it says exit ('exit') or goes away ('eof')."""
        self.sock.send(json.dumps({"ready": True, "privilege_mode": self.cfg["privilege_mode"],
                                   "pid": os.getpid()}).encode())
        while True:
            if len(self.idle) < self.target:
                self.idle.append(self.fork_worker())
                continue
            timeout = 0 if self.pending else None
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                self.finish_pending()
                continue
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                return "eof"  # the parent is gone
            msg = json.loads(data)
            op = msg.get("op")
            if op == "take":
                self.take()
            elif op == "reap":
                self.reap(int(msg["pid"]), bool(msg.get("reply")))
            elif op == "exit":
                return "exit"

    def shutdown(self) -> None:
        for w in list(self.idle):
            self.discard(w)
        for pid, w in list(self.taken.items()):
            _kill(pid)
            _wait(pid)
            remove_tree(w.scratch)
        self.finish_pending()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait(pid: int) -> int | None:
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def main() -> None:
    """Entry point: python -c '...zygote.main()' CONFIG_JSON SOCKET_FD."""
    cfg = json.loads(sys.argv[1])
    sock = socket.socket(fileno=int(sys.argv[2]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    _warm_up(cfg)
    os.environ.clear()  # the programs get an empty environment (unsetenv, not just the dict)
    zygote = Zygote(cfg, sock)
    gc.collect()
    gc.freeze()  # workers share the warm heap copy-on-write; collecting must not touch it
    reason = "error"
    try:
        reason = zygote.serve()
    finally:
        zygote.shutdown()
        if reason != "exit":  # the parent died without cleaning up: do it for it
            remove_tree(cfg["scratch_root"])
