"""Compare two rounds' rollouts on the problems both attempted (the numbers the README quotes).

    python -m training.compare training/runs/cpu-small/round-2/rollouts.practice.jsonl \
        training/runs/cpu-small/round-3/rollouts.practice.jsonl

Rows are matched by id, so a round still in progress is compared on its finished prefix. Per file:
`solved` (some trajectory in the tree graded correct: what SFT extraction can use), `correct` (the
answer the search selected), mean `seconds`; then how many problems only one of the two solved.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rstar_app.jsonl import read_rows  # noqa: E402


def _index(path: str | Path) -> dict[str, dict]:
    # repair=False: the file may be a round still being written; never truncate its torn last line
    return {r["id"]: r for r in read_rows(path, repair=False) if "id" in r}


def compare(a: str | Path, b: str | Path) -> dict:
    """Summary of rollouts files `a` and `b` over their shared ids (raises if they share none)."""
    if not (Path(a).is_file() and Path(b).is_file()):
        raise ValueError(f"no such rollouts file: {a if not Path(a).is_file() else b}")
    ra, rb = _index(a), _index(b)
    shared = [i for i in ra if i in rb]
    if not shared:
        raise ValueError(f"{a} and {b} share no problem ids")

    def side(rows: dict[str, dict]) -> dict:
        sel = [rows[i] for i in shared]
        return {"solved": sum(bool(r.get("solved")) for r in sel),
                "correct": sum(bool(r.get("correct")) for r in sel),
                "mean_seconds": round(sum(float(r.get("seconds", 0.0)) for r in sel) / len(sel), 1)}

    only_a = sum(bool(ra[i].get("solved")) and not rb[i].get("solved") for i in shared)
    only_b = sum(bool(rb[i].get("solved")) and not ra[i].get("solved") for i in shared)
    return {"shared": len(shared), "a": side(ra), "b": side(rb),
            "solved_only_a": only_a, "solved_only_b": only_b}


def format_table(summary: dict, a: str, b: str) -> str:
    n = summary["shared"]
    lines = [f"{n} problems in both files",
             "| rollouts | solved (in tree) | correct (selected) | s / problem | solved only here |",
             "|---|---|---|---|---|"]
    for key, name, only in (("a", a, "solved_only_a"), ("b", b, "solved_only_b")):
        s = summary[key]
        lines.append(f"| {name} | {s['solved']} / {n} | {s['correct']} / {n} | {s['mean_seconds']} | {summary[only]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", help="rollouts JSONL (e.g. the earlier round)")
    ap.add_argument("b", help="rollouts JSONL (e.g. the later round)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    args = ap.parse_args(argv)
    try:
        summary = compare(args.a, args.b)
    except (OSError, ValueError) as e:
        sys.exit(f"compare: {e}")
    print(json.dumps(summary) if args.json else format_table(summary, args.a, args.b))
    return summary


if __name__ == "__main__":
    main()
