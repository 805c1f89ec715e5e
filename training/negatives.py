"""Synthetic step pairs from verified trajectories: a CPU-budget supplement to the MCTS pairs.

rStar-Math's PPM learns from pairs of sibling steps whose MCTS Q-values differ. On 2 CPU cores a
round yields ~2 such pairs per problem-minute, too few to train on alone (68 pairs gave a PPM at
0.27 held-out accuracy). This stage adds cheap, clearly-labelled pairs: for a verified bootstrap
trajectory and one of its code steps k,
    prefix = prompt + steps 1..k-1,   pos = step k,   neg = step k with one arithmetic slip,
where the slip is an operator swap (+ <-> -, * <-> /) or one operand replaced by another number from
the problem, made in the code and, consistently, in the comment's formula and its "= value" (the
new value is executed, so the wrong step is internally coherent, as a policy's mistakes are).
Only pairs whose wrong step still runs and changes the value are kept. They are training-only:
the PPM's held-out accuracy is measured on MCTS pairs (training/ppm.py `extra_pairs`).

    python -m training.negatives --trajectories training/data/bootstrap_gsm8k.jsonl --n 600 --out syn.jsonl
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rstar_app.steps import END_STEP, build_prompt  # noqa: E402
from training.common import iter_jsonl, run_programs, write_jsonl  # noqa: E402

SWAP = {ast.Add: "-", ast.Sub: "+", ast.Mult: "/", ast.Div: "*"}  # the operator each slip writes instead
COMMENT_OPS = "+-*x×/÷"  # how a comment may write an operator (GSM8K solutions use x and the unicode signs too)
NUM = r"\d+(?:,\d{3})*(?:\.\d+)?"
FORMULA = re.compile(rf"((?:\$?{NUM}|[()])(?:\s*(?:[-+*/x×÷]|[()])*\s*(?:\$?{NUM}|[()]))*)\s*=\s*\$?({NUM})")


def split_steps(text: str) -> tuple[list[str], str]:
    """Bootstrap/SFT solution text -> (intermediate code steps without their marker, the rest)."""
    parts = text.split(END_STEP + "\n")
    return parts[:-1], parts[-1]


def fmt_value(v: float) -> str:
    if abs(v - round(v)) < 1e-9:
        return str(int(round(v)))
    return f"{v:.2f}".rstrip("0").rstrip(".") if abs(v) >= 0.01 else f"{v:.3g}"


def _code_line(step: str) -> tuple[int, str, str, ast.expr] | None:
    """(line index, target name, expression source, parsed expression) of the step's assignment."""
    lines = step.rstrip("\n").split("\n")
    for i, line in enumerate(lines):
        if line.lstrip().startswith("#") or not line.strip():
            continue
        try:
            node = ast.parse(line).body[0]
        except (SyntaxError, IndexError):
            return None
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            return i, node.targets[0].id, line, node.value
        return None
    return None


def slips(step: str, question: str) -> list[tuple[str, str]]:
    """Candidate wrong versions of a step: [(new step text, description)], not yet executed."""
    found = _code_line(step)
    if found is None:
        return []
    i, _, line, expr = found
    lines = step.rstrip("\n").split("\n")
    comment = "\n".join(lines[:i])
    out = []
    binops = sorted((n for n in ast.walk(expr) if isinstance(n, ast.BinOp) and type(n.op) in SWAP),
                    key=lambda n: (n.left.end_col_offset, n.right.col_offset))
    for j, b in enumerate(binops):
        gap = line[b.left.end_col_offset:b.right.col_offset]
        sym = SWAP[type(b.op)]
        new_gap = re.sub(r"[-+*/]", sym, gap, count=1)
        if new_gap == gap:
            continue
        new_line = line[:b.left.end_col_offset] + new_gap + line[b.right.col_offset:]
        new_comment = _swap_in_comment(comment, j, len(binops), sym)
        if new_comment is not None:
            out.append((new_comment + "\n" + new_line, f"operator {j} -> {sym}"))
    q_nums = sorted({float(n.replace(",", "")) for n in re.findall(NUM, question)})
    consts = [n for n in ast.walk(expr) if isinstance(n, ast.Constant) and isinstance(n.value, (int, float))
              and not isinstance(n.value, bool)]
    for c in consts:
        src = line[c.col_offset:c.end_col_offset]
        for other in q_nums:
            if other == c.value or other == 0:
                continue
            rep = fmt_value(other)
            new_line = line[:c.col_offset] + rep + line[c.end_col_offset:]
            new_comment = _replace_in_comment(comment, src, rep)
            if new_comment is not None:
                out.append((new_comment + "\n" + new_line, f"operand {src} -> {rep}"))
    return out


def _edit_formula(comment: str, edit) -> str | None:
    """Apply `edit(formula) -> new formula | None` to the comment's first "a op b = c" formula. A
    comment without any number is left as it is (the code slip alone is consistent with it); one
    with numbers but no editable formula gives None (no pair)."""
    m = FORMULA.search(comment)
    if m is None:
        return comment if not _has_numbers(comment) else None
    new = edit(m.group(1))
    return None if new is None else comment[:m.start(1)] + new + comment[m.end(1):]


def _swap_in_comment(comment: str, j: int, n_ops: int, sym: str) -> str | None:
    """Swap the j-th operator of the comment's formula when it has the code's n_ops operators."""
    def edit(formula: str) -> str | None:
        ops = [k for k, ch in enumerate(formula) if ch in COMMENT_OPS and _is_op(formula, k)]
        if len(ops) != n_ops:
            return None
        k = ops[j]
        return formula[:k] + sym + formula[k + 1:]
    return _edit_formula(comment, edit)


def _replace_in_comment(comment: str, src: str, rep: str) -> str | None:
    """Replace the operand `src` (a whole number, not part of one) in the comment's formula."""
    def edit(formula: str) -> str | None:
        hit = re.search(rf"(?<![\d.]){re.escape(src)}(?![\d.])", formula)
        return None if hit is None else formula[:hit.start()] + rep + formula[hit.end():]
    return _edit_formula(comment, edit)


def _has_numbers(comment: str) -> bool:
    return bool(re.search(r"\d", re.sub(r"Step \d+:", "", comment)))


def _is_op(formula: str, k: int) -> bool:
    ch = formula[k]
    if ch in "x×":  # 'x' is an operator only between spaces or digits
        left, right = formula[:k].rstrip()[-1:], formula[k + 1:].lstrip()[:1]
        return bool(left) and bool(right) and (left.isdigit() or left == ")") and (right.isdigit() or right in "($")
    return True


def _with_value(step: str, value: float) -> str:
    """Put the executed value after the comment formula's '=' (comment lines only)."""
    i = _code_line(step)[0]
    lines = step.rstrip("\n").split("\n")
    comment = "\n".join(lines[:i])
    m = FORMULA.search(comment)
    if m is None:
        return step
    comment = comment[:m.start(2)] + fmt_value(value) + comment[m.end(2):]
    return "\n".join([comment, *lines[i:]])


def make_pairs(rows: list[dict], n: int, *, seed: int = 0, executor: str = "local") -> list[dict]:
    """Up to n pairs, at most one per trajectory, in a seeded random order of trajectories and steps."""
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    pairs: list[dict] = []
    batch = 64
    for start in range(0, len(order), batch):
        if len(pairs) >= n:
            break
        jobs = []  # (row, k, steps, wrong step)
        for idx in order[start:start + batch]:
            row = rows[idx]
            steps, _ = split_steps(row["text"])
            if not steps:
                continue
            k = rng.randrange(len(steps))
            cands = slips(steps[k], row["question"])
            if cands:  # operator slip or operand slip with equal odds, then one of that kind
                kinds = sorted({d.split()[0] for _, d in cands})
                kind = rng.choice(kinds)
                jobs.append((row, k, steps, rng.choice([t for t, d in cands if d.startswith(kind)])))
        programs = []
        for row, k, steps, wrong in jobs:
            name = _code_line(steps[k])[1]
            prior = list(steps[:k])
            programs.append(prior + [steps[k], f"print({name})"])
            programs.append(prior + [wrong, f"print({name})"])
        results = run_programs(programs, executor=executor, timeout=5.0)
        for jn, (row, k, steps, wrong) in enumerate(jobs):
            (ok_a, out_a, _), (ok_b, out_b, _) = results[2 * jn], results[2 * jn + 1]
            try:
                va, vb = float(out_a.strip().splitlines()[-1]), float(out_b.strip().splitlines()[-1])
            except (ValueError, IndexError):
                continue
            if not (ok_a and ok_b) or abs(va - vb) < 1e-9 or abs(vb) > 1e12 or vb != vb:
                continue
            prefix = build_prompt(row["question"]) + "".join(s.rstrip("\n") + "\n" + END_STEP + "\n" for s in steps[:k])
            pairs.append({"prefix": prefix, "pos": steps[k].rstrip("\n") + "\n" + END_STEP + "\n",
                          "neg": _with_value(wrong, vb).rstrip("\n") + "\n" + END_STEP + "\n",
                          "q_pos": 1.0, "q_neg": -1.0, "kind": "synthetic", "node": k,
                          "problem_id": str(row.get("problem_id") or row.get("id"))})
            if len(pairs) >= n:
                break
    return pairs


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="synthetic PPM step pairs (one arithmetic slip) from verified trajectories")
    ap.add_argument("--trajectories", required=True, help="JSONL with question + text (training/bootstrap.py output)")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--executor", default="local", choices=["local", "sandbox", "auto"])
    a = ap.parse_args(argv)
    rows = list(iter_jsonl(a.trajectories))
    pairs = make_pairs(rows, a.n, seed=a.seed, executor=a.executor)
    write_jsonl(a.out, pairs)
    stats = {"pairs": len(pairs), "trajectories": len(rows), "out": a.out}
    print(json.dumps(stats))
    return stats


if __name__ == "__main__":
    main()
