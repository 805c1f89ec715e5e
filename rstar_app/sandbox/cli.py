"""`rstar-app sandbox FILE.py [--timeout S]`: run a file exactly as a step's code would run.

Prints the program's stdout; on a contained failure prints "<kind>: <message>" to stderr and
exits 1. Exit status 2 is for usage errors (missing file, bad option).
"""

from __future__ import annotations

import argparse
import json
import sys

from .limits import SandboxLimits
from .pool import Sandbox


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rstar-app sandbox",
        description="Run a Python file in the step sandbox (the same limits, allow-list and "
                    "isolation as model-written step code) and print its output.")
    p.add_argument("file", help="Python file to run as one step ('-' reads standard input)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="CPU time limit in seconds (default: %(default)s, i.e. the step default "
                        f"of {SandboxLimits().cpu_seconds:g} s); the wall-clock limit is twice it")
    p.add_argument("--memory", type=int, default=None, metavar="MB",
                   help=f"address-space limit (default {SandboxLimits().memory_mb} MB)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 contained failure, 2 usage error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.file == "-":
            code = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as f:
                code = f.read()
    except (OSError, UnicodeDecodeError) as e:
        print(f"rstar-app sandbox: cannot read {args.file}: {e}", file=sys.stderr)
        return 2
    changes: dict = {"cache_mb": 0}
    if args.timeout is not None:
        changes["cpu_seconds"] = args.timeout
        changes["wall_seconds"] = max(2 * args.timeout, args.timeout + 1.0)
    if args.memory is not None:
        changes["memory_mb"] = args.memory
    try:
        limits = SandboxLimits().replace(**changes)
    except ValueError as e:
        print(f"rstar-app sandbox: {e}", file=sys.stderr)
        return 2
    with Sandbox(limits=limits) as sandbox:
        result = sandbox.run([code])
    if args.json:
        print(json.dumps({"ok": result.ok, "kind": result.kind, "stdout": result.stdout,
                          "error": result.error, "seconds": round(result.seconds, 4)}))
        return 0 if result.ok else 1
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    if not result.ok:
        print(f"{result.kind}: {result.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # python -m rstar_app.sandbox.cli FILE.py
    sys.exit(main())
