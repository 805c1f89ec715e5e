"""The worker: a process forked from the zygote that runs exactly one program, then dies.

Life of a worker:
  1. set-up (trusted code, while idle in the zygote's pool): close inherited descriptors, enter
     its scratch directory, rlimits, no_new_privs, Landlock, drop root, seccomp, then the Python
     guard (import allow-list + audit hook). From here on nothing can be undone.
  2. wait for one request: the steps still to run, and maybe a snapshot of the steps before them
  3. run each step with exec() in one namespace, stdout captured with a cap, a CPU timer armed
  4. answer with one frame (JSON header + optional snapshot blob), exit

One process per program means no state leaks between programs (random seeds, monkeypatched
modules, threads, open files, sympy caches), and a program that breaks its worker only breaks
itself. The zygote keeps a pool of workers already at step 2, so step 1 costs nothing at run time.
"""

from __future__ import annotations

import ast
import fcntl
import io
import math
import os
import random
import re
import signal
import sys
import time
from typing import Any, NoReturn

from . import guard, kernel, protocol, snapshot

MAX_REQUEST_BYTES = 64 << 20
STARTED = b"S"  # first byte on the result pipe: the worker has the program and is running it
TRUNCATION_MARKER = "\n[output truncated: the program printed more than {n} characters]"


class _CpuTimeout(BaseException):
    """Raised by the CPU timer. BaseException so `except Exception` in a step does not eat it."""


class _OutputOverflow(BaseException):
    """Raised when the program prints past the output limit."""


class CappedStdout(io.TextIOBase):
    """sys.stdout for the program: keeps at most `limit` characters and raises once past it, so a
    print('x' * 10**8) or an endless print loop cannot grow the worker's memory."""

    def __init__(self, limit: int, text: str = "", written: int = 0) -> None:
        super().__init__()
        self.limit = limit
        self.parts = [text] if text else []
        self.written = written            # characters the program tried to print, capped
        self.overflowed = written > limit

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if self.overflowed:
            raise _OutputOverflow()
        room = self.limit - self.written
        if len(s) > room:
            self.parts.append(s[:room])
            self.written = self.limit + 1
            self.overflowed = True
            raise _OutputOverflow()
        self.parts.append(s)
        self.written += len(s)
        return len(s)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def getvalue(self) -> str:
        text = "".join(self.parts)
        self.parts = [text]
        return text


class _Discard(io.TextIOBase):
    """sys.stderr for the program (warnings go nowhere, and cost no memory)."""

    def write(self, s: str) -> int:
        return len(s)

    def writable(self) -> bool:
        return True


# ------------------------------------------------------------------------------------- set-up


def isolate_fds(req_fd: int, res_fd: int) -> None:
    """First thing after fork: keep only the two pipes (as fds 3 and 4) and /dev/null on 0-2."""
    # Via fds >= 10 first, in case the pipes already sit on 3 or 4. Everything else is closed:
    # the zygote's socket to the parent, the pipes of the other idle workers.
    high_req = fcntl.fcntl(req_fd, fcntl.F_DUPFD, 10)
    high_res = fcntl.fcntl(res_fd, fcntl.F_DUPFD, 10)
    os.dup2(high_req, 3)
    os.dup2(high_res, 4)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(5, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 65536)


def report_setup_failure(e: BaseException) -> NoReturn:
    """Answer the request pipe with the reason set-up failed, never run the program."""
    try:
        protocol.write_all(4, STARTED + protocol.encode({
            "kind": "crash", "stdout": "", "cpu": 0.0, "setup_failed": True,
            "error": f"sandbox set-up failed: {type(e).__name__}: {_clean(str(e))}"}))
    finally:
        os._exit(70)


def prepare(cfg: dict, scratch: str) -> dict:
    """Confine this (freshly forked) process. Returns what is active, reported with each result."""
    for sig in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_IGN)  # SIGXFSZ ignored: an oversized write raises EFBIG instead
    os.chdir(scratch)
    os.umask(0o077)

    lim = cfg["limits"]
    cpu_limit = math.ceil(lim["cpu_seconds"]) + 1  # the precise limit is the timer in run()
    kernel.set_rlimits(cpu_seconds=(cpu_limit, cpu_limit + 1),
                       memory_bytes=lim["memory_mb"] << 20, file_bytes=lim["max_file_bytes"],
                       open_files=lim["max_open_files"], processes=lim["max_processes"])
    kernel.no_new_privs()
    roots = tuple(cfg["read_roots"])
    landlock_abi = kernel.landlock(list(roots), [scratch])
    kernel.drop_privileges(cfg["privilege_mode"])
    kernel.die_with_parent()
    if os.getppid() != cfg["zygote_pid"]:
        os._exit(0)  # the zygote died between fork and PDEATHSIG
    seccomp = cfg["seccomp"].install(os.getpid())

    sys.path[:] = [p for p in sys.path if p and any(p.startswith(r) for r in roots)]
    sys.setrecursionlimit(lim["recursion_limit"])
    log: list[str] = []
    guard.lockdown(scratch, roots, log, lim["max_files"])
    return {"landlock": landlock_abi, "seccomp": seccomp, "user": cfg["privilege_mode"],
            "log": log}


# ------------------------------------------------------------------------------------ running


def serve(cfg: dict, scratch: str, baseline: snapshot.Baseline, iso: dict) -> NoReturn:
    """Wait for the one request, run it, answer, exit. Never returns."""
    try:
        request, blob = protocol.read_frame(3, max_header=MAX_REQUEST_BYTES, max_blob=MAX_REQUEST_BYTES)
    except Exception:
        os._exit(0)  # the parent went away or the pool is shutting down
    os.write(4, STARTED)  # from here on, a death is the program's doing (no retry elsewhere)
    try:
        header, out_blob = run(request, blob, cfg, scratch, baseline, iso["log"])
    except BaseException as e:  # a bug in the worker itself: still answer cleanly
        header, out_blob = {"kind": "crash", "stdout": "", "error": f"internal sandbox error: "
                            f"{type(e).__name__}: {_clean(str(e))}", "cpu": 0.0}, b""
    header["isolation"] = {k: v for k, v in iso.items() if k != "log"}
    try:
        protocol.write_all(4, protocol.encode(header, out_blob))
    finally:
        os._exit(0)


def run(request: dict, blob: bytes, cfg: dict, scratch: str, baseline: snapshot.Baseline,
        log: list[str]) -> tuple[dict, bytes]:
    """Run the steps of one request. Returns (result header, snapshot blob or b'')."""
    lim = cfg["limits"]
    codes: list[str] = request["codes"]
    first: int = request["first"]          # index of codes[0] in the whole program
    last = first + len(codes)              # steps are numbered 1..last for messages
    ns: dict[str, Any] = {"__name__": "__main__", "__doc__": None}
    state = {"stdout": "", "written": 0, "cpu": 0.0}
    # random reseeds itself from os.urandom in every forked child (os.register_at_fork): put
    # back the zygote's fixed state so every program starts from the same one.
    random.setstate(baseline.random_state)
    if blob:
        try:
            restored, state = snapshot.loads(blob)
        except Exception as e:
            return {"kind": "crash", "stdout": "", "error": f"snapshot restore failed: {e}",
                    "cpu": 0.0, "restore_failed": True}, b""
        ns.update(restored)
    step_builtins = snapshot.fresh_builtins()
    ns["__builtins__"] = step_builtins
    out = CappedStdout(lim["max_output"], state["stdout"], state["written"])
    sys.stdout, sys.stderr, sys.stdin = out, _Discard(), io.StringIO("")

    budget = lim["cpu_seconds"] - state["cpu"]
    exc: BaseException | None = None
    unsafe: str | None = None    # why this program's state could not be snapshotted faithfully
    roots: set[str] = set(state.get("roots", ()))
    timed_out = [False]
    cpu0 = time.process_time()
    try:
        # Compile everything first: like one concatenated program, a syntax error anywhere means
        # nothing runs. Each step is its own file name so errors say which step and line.
        compiled = []
        for i, code in enumerate(codes):
            filename = f"<step {first + i + 1}>"
            tree = ast.parse(code, filename)
            reason, names = snapshot.static_check(tree)
            unsafe = unsafe or reason
            roots |= names
            compiled.append(compile(tree, filename, "exec", dont_inherit=True))

        def on_timer(signum: int, frame: Any) -> None:
            timed_out[0] = True
            # never raise into run() itself (its except/finally bookkeeping): only into the
            # program or the libraries it called; the 50 ms re-fire catches it there
            if frame is None or frame.f_code not in _OWN_CODE:
                raise _CpuTimeout()

        signal.signal(signal.SIGPROF, on_timer)
        if budget <= 0:
            on_timer(0, None)
        # ITIMER_PROF counts this process's CPU time; re-fires every 50 ms in case a step
        # swallows the first exception with a bare except.
        signal.setitimer(signal.ITIMER_PROF, budget, 0.05)
        for code in compiled:
            exec(code, ns)
            # after every step: names it assigned items of (a[0] = 1) must be its own objects
            unsafe = unsafe or snapshot.runtime_check(ns, roots, baseline)
    except SystemExit as e:
        if e.code not in (None, 0):
            exc = e
        unsafe = "the program exited"  # later steps must not run after a snapshot of it
    except BaseException as e:
        exc = e
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
    cpu = state["cpu"] + (time.process_time() - cpu0)
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__

    stdout = _sanitize(out.getvalue())
    if out.overflowed:
        stdout += TRUNCATION_MARKER.format(n=lim["max_output"])
    kind, error = classify(exc, log, out.overflowed, timed_out[0], lim, last)
    header = {"kind": kind, "stdout": stdout, "error": error, "cpu": cpu}
    if kind != "ok" or not request.get("snapshot"):
        return header, b""
    state = {"stdout": out.getvalue(), "written": out.written, "cpu": cpu, "roots": sorted(roots)}
    try:
        return header, _snapshot(ns, state, unsafe, request["snapshot_cap"], scratch, baseline)
    except (snapshot.Unsafe, MemoryError, RecursionError) as e:
        header["snapshot_refused"] = _clean(str(e))
        return header, b""


def _snapshot(ns: dict, state: dict, unsafe: str | None, cap: int, scratch: str,
              baseline: snapshot.Baseline) -> bytes:
    """The program's final state as bytes, or snapshot.Unsafe."""
    if unsafe:
        raise snapshot.Unsafe(unsafe)
    if os.listdir(scratch):
        raise snapshot.Unsafe("the program left files in its scratch directory")
    signal.signal(signal.SIGPROF, _snapshot_timeout)
    signal.setitimer(signal.ITIMER_PROF, 0.5, 0.05)  # pickling must not take long either
    try:
        return snapshot.dumps(ns, state, baseline, cap)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)


def _snapshot_timeout(signum: int, frame: Any) -> None:
    if frame is None or frame.f_code not in _OWN_CODE:
        raise snapshot.Unsafe("pickling the namespace took too long")


# Frames the timers must not raise into (the worker's own bookkeeping around the program).
_OWN_CODE = frozenset({run.__code__, _snapshot.__code__})


# ------------------------------------------------------------------------------------ messages


def classify(exc: BaseException | None, log: list[str], overflowed: bool, timed_out: bool,
             lim: dict, last_step: int) -> tuple[str, str | None]:
    """(kind, message) for the outcome of a program. Limits win over the exception they caused,
    and a refused operation makes the program 'forbidden' even if it caught the error."""
    where = _location(exc, last_step) if exc is not None else ""
    if overflowed:
        return "output_limit", (f"output limit exceeded: the program printed more than "
                                f"{lim['max_output']} characters{where}")
    if timed_out:
        return "timeout", f"timed out after {seconds_text(lim['cpu_seconds'])} s (CPU time limit)"
    if log:
        return "forbidden", _clean(log[0]) + where
    if exc is None:
        return "ok", None
    if isinstance(exc, MemoryError):
        return "memory", f"memory limit ({lim['memory_mb']} MB) exceeded{where}"
    if isinstance(exc, OSError) and exc.errno == 27:  # EFBIG from RLIMIT_FSIZE
        return "error", f"file size limit ({lim['max_file_bytes']} bytes) exceeded{where}"
    name = type(exc).__name__
    try:
        text = exc.msg if isinstance(exc, SyntaxError) and exc.msg else str(exc)
    except BaseException:
        text = "<unprintable message>"
    text = _clean(text)
    return "error", (f"{name}: {text}" if text else name) + where


_STEP_FILE = re.compile(r"<step (\d+)>")


def _location(exc: BaseException, last_step: int) -> str:
    """' (line N)' inside the last step, ' (step S, line N)' inside an earlier one."""
    step = line = None
    if isinstance(exc, SyntaxError) and exc.filename:
        m = _STEP_FILE.fullmatch(exc.filename)
        if m:
            step, line = int(m.group(1)), exc.lineno
    tb = exc.__traceback__
    while tb is not None:  # the innermost frame that belongs to a step
        m = _STEP_FILE.fullmatch(tb.tb_frame.f_code.co_filename)
        if m:
            step, line = int(m.group(1)), tb.tb_lineno
        tb = tb.tb_next
    if step is None or line is None:
        return ""
    return f" (line {line})" if step == last_step else f" (step {step}, line {line})"


def seconds_text(x: float) -> str:
    """2 -> '2.0', 0.25 -> '0.25'."""
    x = float(x)
    return f"{x:.1f}" if x == round(x, 1) else f"{x:g}"


def _clean(text: str, limit: int = 300) -> str:
    """One line, bounded length, encodable."""
    text = _sanitize(" ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sanitize(text: str) -> str:
    """Lone surrogates (print('\\ud800')) cannot be encoded; replace them."""
    return text.encode("utf-8", "replace").decode("utf-8")
