"""The two value types of the sandbox: the limits a program runs under and the result it gets back.

Kept free of imports beyond the standard library so that the search code, the UI and the worker
processes can all use them cheaply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Every ExecResult.kind the sandbox produces. 'ok' is the only one with ok=True.
KINDS = ("ok", "error", "timeout", "memory", "forbidden", "crash", "output_limit")


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one program (the cumulative code of all steps so far).

    CPU and memory are enforced inside the worker by the kernel (setrlimit, a CPU timer) and the
    wall clock by the parent, which kills the worker; none of them can be lifted by the program.
    """

    cpu_seconds: float = 2.0      # CPU time of the whole cumulative program
    wall_seconds: float = 5.0     # wall-clock time of one run() (the parent kills the worker after it)
    memory_mb: int = 512          # address space (RLIMIT_AS) of the worker, interpreter included
    max_output: int = 4000        # characters of stdout kept; printing more stops the program
    max_file_bytes: int = 1 << 20  # largest file the program may write in its scratch directory
    max_files: int = 16           # files the program may create in its scratch directory
    max_open_files: int = 32      # RLIMIT_NOFILE (the interpreter itself needs a handful)
    max_processes: int = 0        # RLIMIT_NPROC: 0 = the program cannot fork or start threads
    recursion_limit: int = 1000   # Python frames; deeper recursion is a clean RecursionError
    cache_mb: int = 64            # prefix-snapshot cache held by the Sandbox; 0 disables caching

    def __post_init__(self) -> None:
        if not 0.05 <= self.cpu_seconds <= 600:
            raise ValueError(f"cpu_seconds must be in [0.05, 600], got {self.cpu_seconds}")
        if not 0.1 <= self.wall_seconds <= 3600:
            raise ValueError(f"wall_seconds must be in [0.1, 3600], got {self.wall_seconds}")
        if self.wall_seconds < self.cpu_seconds:
            raise ValueError(
                f"wall_seconds ({self.wall_seconds}) must be >= cpu_seconds ({self.cpu_seconds}): "
                "CPU time never exceeds wall time for a single-threaded program"
            )
        # Below ~256 MB numpy + sympy (already loaded in the worker) leave no room for the program.
        _check_int("memory_mb", self.memory_mb, 256, 1 << 20)
        _check_int("max_output", self.max_output, 16, 10_000_000)
        _check_int("max_file_bytes", self.max_file_bytes, 0, 1 << 34)
        _check_int("max_files", self.max_files, 0, 100_000)
        _check_int("max_open_files", self.max_open_files, 16, 4096)
        # Only 0 is truly enforced by the worker (seccomp refuses clone); larger values are
        # accepted for forward compatibility but still mean "no new processes" there.
        _check_int("max_processes", self.max_processes, 0, 0)
        _check_int("recursion_limit", self.recursion_limit, 50, 100_000)
        _check_int("cache_mb", self.cache_mb, 0, 1 << 16)

    def replace(self, **changes: object) -> "SandboxLimits":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class ExecResult:
    """What running a cumulative program produced.

    stdout is the output of the whole program (truncated to limits.max_output characters with a
    marker when it was longer); error is a short message meant for a person or a model, never a
    traceback of the sandbox's own code.
    """

    ok: bool
    stdout: str
    error: str | None
    kind: str           # one of KINDS
    seconds: float      # wall time of the run() call
    cached: bool = False  # True when the prefix cache served part (or all) of the work

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.ok != (self.kind == "ok"):
            raise ValueError(f"ok={self.ok} contradicts kind={self.kind!r}")
