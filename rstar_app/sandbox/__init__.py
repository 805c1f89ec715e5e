r"""Sandboxed execution of model-written step code.

    from rstar_app.sandbox import Sandbox, SandboxLimits
    with Sandbox(workers=2, limits=SandboxLimits(cpu_seconds=2)) as sb:
        r = sb.run(["a = 2\n", "b = a * 3\n", "print(b)\n"])   # r.ok, r.stdout == "6\n"

Modules: limits (the value types), pool (Sandbox, the parent side), zygote (warm fork server),
worker (the child side), guard (audit hook + import allow-list), kernel (rlimits, privileges,
Landlock, seccomp), snapshot (what a prefix snapshot is), cache (the parent's LRU of them),
protocol (message framing), cli.
"""

from .limits import ExecResult, SandboxLimits
from .pool import Sandbox

__all__ = ["Sandbox", "ExecResult", "SandboxLimits"]
