"""Compare two runs on the problems both attempted (the numbers the README quotes).

    python -m training.compare training/runs/cpu-small/round-2/rollouts.practice.jsonl \
        training/runs/cpu-small/round-3/rollouts.practice.jsonl
    python -m training.compare eval_runs/svamp-policy-r3-greedy-r8-k4-s0-ss1234.jsonl \
        eval_runs/svamp-r3-ppm-mcts-r8-k4-s0-ss1234.jsonl

Either file may be training rollouts or `rstar-app eval` rows. Rows are matched by id, so a run still
in progress is compared on its finished prefix. Per file: `solved` (some terminal of the tree graded
correct: what SFT extraction can use; eval rows call it `in_tree`), `correct` (the answer the search
selected), mean `seconds`; then how many problems only one of the two solved / got right, and an
exact two-sided sign test on the latter (McNemar's test for paired right/wrong outcomes): the chance
of a split at least this uneven if neither run were better.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rstar_app.jsonl import read_rows  # noqa: E402


def _index(path: str | Path) -> dict[str, dict]:
    # repair=False: the file may be a round still being written; never truncate its torn last line.
    # A row whose search raised (`error`) is no attempt: a rerun retries it (training.rollouts).
    return {r["id"]: r for r in read_rows(path, repair=False) if "id" in r and "error" not in r}


def compare(a: str | Path, b: str | Path) -> dict:
    """Summary of runs `a` and `b` (rollouts or eval JSONL) over their shared ids (raises if they share none)."""
    if not (Path(a).is_file() and Path(b).is_file()):
        raise ValueError(f"no such file: {a if not Path(a).is_file() else b}")
    ra, rb = _index(a), _index(b)
    shared = [i for i in ra if i in rb]
    if not shared:
        raise ValueError(f"{a} and {b} share no problem ids")

    def side(rows: dict[str, dict]) -> dict:
        sel = [rows[i] for i in shared]
        return {"solved": sum(_solved(r) for r in sel),
                "correct": sum(_correct(r) for r in sel),
                "mean_seconds": round(sum(float(r.get("seconds", 0.0)) for r in sel) / len(sel), 1)}

    def only(key, x: dict, y: dict) -> int:
        return sum(key(x[i]) and not key(y[i]) for i in shared)

    right_a, right_b = only(_correct, ra, rb), only(_correct, rb, ra)
    return {"shared": len(shared), "a": side(ra), "b": side(rb),
            "solved_only_a": only(_solved, ra, rb), "solved_only_b": only(_solved, rb, ra),
            "correct_only_a": right_a, "correct_only_b": right_b,
            "sign_test_p": round(sign_test(right_a, right_b), 4)}


def _solved(r: dict) -> bool:
    return bool(r.get("solved", r.get("in_tree")))  # rollouts say `solved`, eval rows `in_tree`


def _correct(r: dict) -> bool:
    return bool(r.get("correct"))


def sign_test(k: int, m: int) -> float:
    """Exact two-sided sign test: P(a split of k + m fair coin flips at least as uneven as k : m)."""
    n = k + m
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, m) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def format_table(summary: dict, a: str, b: str) -> str:
    n = summary["shared"]
    lines = [f"{n} problems in both files",
             "| run | solved (in tree) | correct (selected) | s / problem | solved only here | correct only here |",
             "|---|---|---|---|---|---|"]
    for key in ("a", "b"):
        s = summary[key]
        lines.append(f"| {a if key == 'a' else b} | {s['solved']} / {n} | {s['correct']} / {n} | {s['mean_seconds']} "
                     f"| {summary['solved_only_' + key]} | {summary['correct_only_' + key]} |")
    lines.append(f"sign test on correct ({summary['correct_only_a']} vs {summary['correct_only_b']} problems "
                 f"only one got right): two-sided p = {summary['sign_test_p']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", help="rollouts or eval JSONL (e.g. the earlier round, or greedy)")
    ap.add_argument("b", help="rollouts or eval JSONL (e.g. the later round, or MCTS)")
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
