"""Fit the learned answer selector (rstar_app/selector.py) on training-problem search trees.

    python -m training.selector --rollouts training/runs/cpu-small/round-4/rollouts.jsonl \
        --out training/runs/cpu-small/round-4/selector \
        --transfer training/runs/eval/gsm8k-r3-ppm-mcts-r8-k4-s0-ss1234.trees \
        [--baseline weights/selector-r3.json] [--publish weights]

Why: the PPM alone picks the right answer in few of the trees that hold it (round-3 table: 55 of the
172 such trees of 580), and a plain vote does no better; the tree holds more evidence than either
(how many terminals reached an answer, whether it is a whole number, whether the code used the
problem's numbers). The selector is a conditional logit: a softmax over each tree's answer groups,
maximising the log-probability of the right group(s) on trees that hold both right and wrong answers,
L2 strength chosen by K-fold cross-validation over problems (ties: the stronger). Only training
problems are fit; `--transfer` scores eval trees it never fits on, next to the engine's other rules.

Caveat: training rollouts back up the ground-truth reward, so right answers are searched more there
than at test time and `logc` / `share` look more telling in training than they are; the transfer
numbers are the ones to trust.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rstar_app.eval import gold_in_tree  # noqa: E402
from rstar_app.grading import is_correct  # noqa: E402
from rstar_app.selector import FEATURES, Selector, answer_features  # noqa: E402
from rstar_app.tree import Tree  # noqa: E402
from training.head import fold_of  # noqa: E402
from training.selection import load_trees, rollout_trees  # noqa: E402

LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0)


def tree_rows(trees: list[tuple[str, Tree, str]]) -> list[dict]:
    """Per tree with terminals: {problem, X [groups, features], right [groups] bool, in_tree}."""
    rows = []
    for pid, tree, gold in trees:
        scored = answer_features(tree)
        if scored:
            rows.append({"problem": pid, "X": np.array([[f[k] for k in FEATURES] for _, f in scored]),
                         "right": np.array([bool(is_correct(g[0].answer, gold)) for g, _ in scored])})
    return rows


def is_mixed(row: dict) -> bool:
    """The tree holds both a right and a wrong answer: the only kind the fit learns from."""
    return bool(0 < row["right"].sum() < len(row["right"]))


def mixed_trees(rows: list[dict]) -> int:
    return sum(map(is_mixed, rows))


def fit(rows: list[dict], lam: float, *, iters: int = 500, lr: float = 0.5) -> np.ndarray:
    """Weights [features] maximising mean log P(right groups) - lam / 2 |w|^2 (full-batch gradient ascent;
    the objective is concave, so this converges from zero)."""
    mixed = [r for r in rows if is_mixed(r)]
    w = np.zeros(len(FEATURES))
    if not mixed:
        return w
    for _ in range(iters):
        g = np.zeros_like(w)
        for r in mixed:
            s = r["X"] @ w
            p = np.exp(s - s.max())
            p /= p.sum()
            g += r["X"].T @ (r["right"] / r["right"].sum() - p)
        w += lr * (g / len(mixed) - lam * w)
    return w


def picks_right(rows: list[dict], w: np.ndarray) -> int:
    """Trees whose top-scored group is right (ties: the first group, as Selector.choose)."""
    return int(sum(r["right"][int(np.argmax(r["X"] @ w))] for r in rows))


def cross_validate(rows: list[dict], *, folds: int, seed: int) -> dict[str, int]:
    fold = [fold_of(r["problem"], folds, seed) for r in rows]
    out = {}
    for lam in LAMBDAS:
        right = 0
        for k in range(folds):
            w = fit([r for r, f in zip(rows, fold) if f != k], lam)
            right += picks_right([r for r, f in zip(rows, fold) if f == k], w)
        out[f"lambda={lam:g}"] = right
    return out


def dir_trees(d: str) -> list[tuple[str, Tree, str]]:
    """An eval tree directory's graded trees, or a rollouts file's (`.jsonl`; every row has a gold)."""
    trees = [(t.meta["id"], t, t.gold) for t in load_trees([d]) if t.gold is not None]
    if not trees:
        raise SystemExit(f"error: {d} holds no search tree with a gold answer (expected a directory written "
                         "by `rstar-app eval --save-trees` or a training rollouts .jsonl)")
    return trees


def transfer_scores(trees: list[tuple[str, Tree, str]], selector: Selector,
                    baseline: Selector | None = None) -> dict:
    """Right answers picked on these trees by the selector, by the engine's other rules and by a
    baseline selector (e.g. the shipped one)."""
    def right(rule: str, sel: Selector = selector) -> int:
        return sum(bool(is_correct(t.vote(4, rule, sel), gold)) for _, t, gold in trees)
    out = {"trees": len(trees), "learned": right("learned"), "top-4 vote": right("top-k"),
           "ppm-weighted": right("ppm-weighted"), "in_tree": sum(gold_in_tree(t, g) for _, t, g in trees)}
    if baseline is not None:
        out["baseline"] = right("learned", baseline)
    return out


def weight_vector(selector: Selector) -> np.ndarray:
    """[features] in FEATURES order (a feature the selector does not weigh counts 0)."""
    return np.array([selector.weights.get(k, 0.0) for k in FEATURES])


def publish(src: Path, report: dict, weights_dir: Path) -> Path:
    """Copy the selector next to the PPM it was fit on and name it in the manifest (replacing the old
    selector file), with its sha256, command and numbers."""
    from training.common import publish_ppm_file
    rnd = json.loads((weights_dir / "manifest.json").read_text()).get("round", 0)
    return publish_ppm_file(weights_dir, "selector", src, f"selector-r{rnd}.json", command=report["command"],
                            tool="training.selector", record_key="selector_fit",
                            record={k: v for k, v in report.items() if k != "command"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rollouts", required=True, help="comma-separated rollout files (training.rollouts output)")
    ap.add_argument("--out", required=True, help="directory for selector.json and report.json")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--transfer", default="",
                    help="comma-separated tree directories (`rstar-app eval --save-trees`) or rollout files "
                         "to score, never fit on")
    ap.add_argument("--baseline", metavar="SELECTOR_JSON", default=None,
                    help="a selector file (e.g. weights/selector-r3.json) to score next to the new fit, on the "
                         "training trees (it was not fit on them) and the transfer trees")
    ap.add_argument("--publish", metavar="WEIGHTS_DIR", default=None,
                    help="copy the selector into this weights directory and name it in its manifest")
    a = ap.parse_args(argv)
    try:
        base = Selector.load(a.baseline) if a.baseline else None
    except ValueError as e:
        print(f"error: --baseline {e}", file=sys.stderr)
        return 2

    rows = tree_rows(rollout_trees([f for f in a.rollouts.split(",") if f]))
    mixed = mixed_trees(rows)
    if not mixed:
        print("error: no tree holds both a right and a wrong answer: nothing to fit", file=sys.stderr)
        return 1
    cv = cross_validate(rows, folds=a.folds, seed=a.seed)
    lam = max(LAMBDAS, key=lambda x: (cv[f"lambda={x:g}"], x))
    w = fit(rows, lam)
    command = "python -m training.selector " + " ".join(sys.argv[1:] if argv is None else argv)
    sel = Selector(weights={k: round(float(v), 6) for k, v in zip(FEATURES, w)}, name="",  # named by its file
                   fit={"trees": len(rows), "mixed_trees": mixed, "lambda": lam, "command": command})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sel.save(out / "selector.json")
    report = {"trees": len(rows), "mixed_trees": mixed, "folds": a.folds, "seed": a.seed, "lambda": lam,
              "cross_validation_right": cv, "weights": sel.weights, "rollouts": a.rollouts.split(","),
              "command": command}
    if base is not None:
        report["baseline"] = {"selector": a.baseline, "training_right": picks_right(rows, weight_vector(base))}
    transfer = {d: transfer_scores(dir_trees(d), sel, base) for d in a.transfer.split(",") if d}
    if transfer:
        report["transfer"] = transfer
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")

    print(f"{len(rows)} training trees, {mixed} with both right and wrong answers")
    print(f"\nheld out ({a.folds}-fold by problem): trees whose top answer is right")
    for name, n in cv.items():
        print(f"  {name:>14}: {n} / {len(rows)}")
    print(f"chosen lambda {lam:g}; weights " + ", ".join(f"{k} {v:+.3f}" for k, v in sel.weights.items()))
    if base is not None:
        print(f"baseline {a.baseline} on all {len(rows)} training trees: {report['baseline']['training_right']}")
    if transfer:
        cols = [("learned", "learned")] + [("baseline", "baseline")] * (base is not None) + [
            ("top-4 vote", "top-4 vote"), ("PPM-weighted", "ppm-weighted"), ("in tree", "in_tree")]
        print("\n| trees never fit on | " + " | ".join(h for h, _ in cols) + " |\n|---|" + "---|" * len(cols))
        for d, t in transfer.items():
            print(f"| {d} ({t['trees']}) | " + " | ".join(str(t[k]) for _, k in cols) + " |")
    print(f"selector -> {out / 'selector.json'}")
    if a.publish:
        print(f"published {publish(out / 'selector.json', report, Path(a.publish))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
