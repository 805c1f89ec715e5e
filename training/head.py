"""Refit the PPM's value head on the search's own finished solutions, the adapter frozen.

    python -m training.head --rollouts training/runs/cpu-small/round-2/rollouts.practice.jsonl,training/runs/cpu-small/round-3/rollouts.practice.jsonl \
        --pairs training/runs/cpu-small/round-3/pairs.jsonl --out training/runs/cpu-small/round-3/head

Why: the searches grow a right answer in far more trees than they select one (in tree 38% vs selected
14% on the round-3 table), and the shipped PPM ranks a right terminal over a wrong one of the same
tree only ~64% of the time. The pair rules of the PPM stage keep 2 best vs 2 worst siblings per prefix,
so a tree's many finished solutions give it only a handful of terminal pairs. Here every (right,
wrong) terminal pair of a tree counts (each tree weighs the same), plus the step pairs, so the head
stays a process model that also scores partial solutions during the search.

Features are h_last read by the engine's own llama.cpp PPM (the numbers the head sees at run time),
cached by text in <out>/features.npz so a killed run resumes. The head is fit in numpy: Bradley-Terry
on tanh scores (the PPM stage's loss), L2 toward the current head, the strength chosen by K-fold
cross-validation over problems. <out>/report.json holds the held-out numbers of the old and new head.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rstar_app.grading import is_correct  # noqa: E402
from rstar_app.jsonl import read_rows  # noqa: E402
from rstar_app.tree import Tree, group_by_answer  # noqa: E402

LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


# ---------------------------------------------------------------------------------------------
# data: texts to embed and the pairs over them
# ---------------------------------------------------------------------------------------------

def _mixed_group(problem: str, tree: Tree, gold) -> tuple[dict | None, bool]:
    """(the tree's row if its terminals are both right and wrong, else None; whether all are right):
    {problem, prompt, texts, right[bool], answer group index of each terminal (equivalent answers
    share one)}."""
    ts = tree.terminals()
    ok = [bool(is_correct(nd.answer, gold)) for nd in ts]
    if not ok or all(ok) or not any(ok):
        return None, bool(ok) and all(ok)
    gid = {nd.id: i for i, g in enumerate(group_by_answer(ts)) for nd in g}
    return {"problem": problem, "prompt": tree.prompt, "texts": [tree.text(nd) for nd in ts],
            "right": ok, "group": [gid[nd.id] for nd in ts]}, False


def terminal_groups(rollout_files: list[str]) -> list[dict]:
    """_mixed_group's rows of the rollout trees (training.rollouts output, read as training.selection
    reads it: rows whose search raised skipped, one tree per problem, a live file left as it is)."""
    from training.selection import rollout_trees
    rows = (_mixed_group(rid, tree, gold)[0] for rid, tree, gold in rollout_trees(rollout_files))
    return [g for g in rows if g]


def tree_dir_groups(dirs: list[str]) -> tuple[list[dict], int]:
    """_mixed_group's rows of tree directories written by `rstar-app eval --save-trees` (gold read
    from each tree), plus how many graded trees had only right terminals (right whatever the head
    does). A directory that is missing or holds no graded tree is an error, not an empty row."""
    out, all_right = [], 0
    for d in dirs:
        graded = 0
        for f in sorted(Path(d).glob("*.json")):
            tree = Tree.read(f)
            if tree.gold is None:
                continue
            graded += 1
            row, right = _mixed_group(f"{d}:{f.stem}", tree, tree.gold)
            all_right += right
            if row:
                out.append(row)
        if not graded:
            raise SystemExit(f"error: {d} holds no search tree with a gold answer "
                             "(expected a directory written by `rstar-app eval --save-trees`)")
    return out, all_right


def step_pairs(pair_files: list[str]) -> list[dict]:
    """Step pairs of the PPM stage ({problem_id, prefix, pos, neg}); terminal-kind pairs are skipped
    here since terminal_groups covers every one of them."""
    rows = [p for f in pair_files for p in read_rows(f)]
    return [p for p in rows if p.get("kind", "step") != "final"]


def key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class FeatureCache:
    """text sha1 -> h_last, saved as <path> (keys [N], feats [N, hidden], model) every `every` new rows.
    `model` names what made the features (base and PPM adapter sha256): a cache made by another model
    is refused rather than mixed into this fit (one written before the field existed is taken as is;
    model None: only reading, any cache)."""

    def __init__(self, path: Path, every: int = 64, *, model: str | None = None):
        self.path, self.every, self.new, self.model = path, every, 0, model
        self.rows: dict[str, np.ndarray] = {}
        if path.is_file():
            with np.load(path) as z:
                made_by = str(z["model"]) if "model" in z.files else None
                if model is not None and made_by is not None and made_by != model:
                    raise SystemExit(f"error: {path} holds features of another model ({made_by}; now {model}): "
                                     "pass another --out, or delete it to start over")
                self.rows = {str(k): v for k, v in zip(z["keys"], z["feats"])}

    def missing(self, texts: list[str]) -> list[str]:
        return [t for t in texts if key(t) not in self.rows]

    def put(self, texts: list[str], feats: np.ndarray) -> None:
        for t, v in zip(texts, feats):
            self.rows[key(t)] = v.astype(np.float32)
        self.new += len(texts)
        if self.new >= self.every:
            self.save()

    def save(self) -> None:
        if not self.rows:
            return
        ks = sorted(self.rows)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(ks), feats=np.stack([self.rows[k] for k in ks]), model=np.array(self.model or ""))
        tmp.replace(self.path)
        self.new = 0

    def __getitem__(self, text: str) -> np.ndarray:
        return self.rows[key(text)].astype(np.float64)


def embed_all(ppm, cache: FeatureCache, jobs: list[tuple[str, list[str]]], progress: bool = True) -> None:
    """jobs: [(shared prefix, full texts)]; each text is embedded once, siblings in one batch."""
    todo = [(pre, cache.missing(ts)) for pre, ts in jobs]
    todo = [(pre, ts) for pre, ts in todo if ts]
    total, done, t0 = sum(len(ts) for _, ts in todo), 0, time.monotonic()
    for pre, ts in todo:
        cache.put(ts, ppm.features(pre, [t[len(pre):] for t in ts]))
        done += len(ts)
        if progress:
            rate = done / max(time.monotonic() - t0, 1e-9)
            print(f"\rembedded {done}/{total} ({rate:.1f}/s, ~{(total - done) / max(rate, 1e-9) / 60:.1f} min left)",
                  end="", file=sys.stderr, flush=True)
    cache.save()
    if progress and total:
        print(file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# fit: weighted Bradley-Terry on tanh(w . h + b), L2 toward the old head
# ---------------------------------------------------------------------------------------------

def pair_arrays(groups: list[dict], spairs: list[dict], cache: FeatureCache, step_weight: float):
    """(H_pos [P, d], H_neg [P, d], weight [P], problem [P], is_terminal [P]). Each tree's terminal
    pairs share weight 1; all step pairs together weigh step_weight x the number of trees."""
    pos, neg, wt, prob, term = [], [], [], [], []
    for g in groups:
        R = [cache[t] for t, ok in zip(g["texts"], g["right"]) if ok]
        W = [cache[t] for t, ok in zip(g["texts"], g["right"]) if not ok]
        for r in R:
            for w in W:
                pos.append(r), neg.append(w), wt.append(1.0 / (len(R) * len(W)))
                prob.append(g["problem"]), term.append(True)
    n_step = len(spairs)
    for p in spairs:
        pos.append(cache[p["prefix"] + p["pos"]]), neg.append(cache[p["prefix"] + p["neg"]])
        wt.append(step_weight * max(len(groups), 1) / max(n_step, 1))
        prob.append(str(p.get("problem_id") or p["prefix"][:200])), term.append(False)
    return np.stack(pos), np.stack(neg), np.array(wt), np.array(prob), np.array(term)


def fit(Hp, Hn, wt, w0, b0, lam: float, iters: int = 400, lr: float = 0.05) -> tuple[np.ndarray, float]:
    """Minimise sum wt * -log sigmoid(tanh(s+) - tanh(s-)) / sum wt + lam * |w - w0|^2 with Adam.
    Features are standardised inside (the head stays in raw h space on return)."""
    mu, sd = np.concatenate([Hp, Hn]).mean(0), np.concatenate([Hp, Hn]).std(0) + 1e-6
    Xp, Xn = (Hp - mu) / sd, (Hn - mu) / sd
    # raw head w0 . h + b0 == v0 . x + c0 with x = (h - mu) / sd
    v, c = w0 * sd, b0 + float(w0 @ mu)
    v0 = v.copy()
    wn = wt / wt.sum()
    m, s2, beta1, beta2 = np.zeros(v.size + 1), np.zeros(v.size + 1), 0.9, 0.999
    for t in range(1, iters + 1):
        tp, tn = np.tanh(Xp @ v + c), np.tanh(Xn @ v + c)
        g_margin = -wn * (1.0 - 1.0 / (1.0 + np.exp(-(tp - tn))))   # d loss / d margin
        gp, gn = g_margin * (1 - tp ** 2), -g_margin * (1 - tn ** 2)
        gv = Xp.T @ gp + Xn.T @ gn + 2 * lam * (v - v0)
        gc = gp.sum() + gn.sum()
        g = np.append(gv, gc)
        m = beta1 * m + (1 - beta1) * g
        s2 = beta2 * s2 + (1 - beta2) * g * g
        step = lr * (m / (1 - beta1 ** t)) / (np.sqrt(s2 / (1 - beta2 ** t)) + 1e-8)
        v, c = v - step[:-1], c - step[-1]
    w = v / sd
    return w, float(c - w @ mu)


def pair_wins(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """1 where the positive scores higher, 0.5 on a tie, 0 where it loses (broadcast like pos > neg)."""
    return np.where(pos > neg, 1.0, np.where(pos == neg, 0.5, 0.0))


def held_out_scores(groups, Hp, Hn, term, prob, w, b, test: set[str], cache) -> dict:
    """On the test problems: terminal and step pair accuracy (over pairs, ties half), and in how many
    trees the best-scored terminal / the PPM-weighted vote picks a right answer."""
    sel = np.isin(prob, list(test))
    hit = pair_wins(np.tanh(Hp @ w + b), np.tanh(Hn @ w + b))
    out = {}
    for name, mask in (("terminal_pairs", sel & term), ("step_pairs", sel & ~term)):
        out[name] = float(hit[mask].mean()) if mask.any() else None
        out[name + "_n"] = int(mask.sum())
    return out | selection_scores([g for g in groups if g["problem"] in test], cache, w, b)


def selection_scores(groups: list[dict], cache, w, b) -> dict:
    """In how many of these trees the best-scored terminal / the PPM-weighted vote is right."""
    top1, vote = [], []
    for g in groups:
        s = np.tanh(np.stack([cache[t] for t in g["texts"]]) @ w + b)
        top1.append(g["right"][int(np.argmax(s))])
        # the PPM-weighted vote: each answer group scores the sum of its terminals' (s + 1) / 2
        gid = np.array(g["group"])
        best = int(np.argmax([((s[gid == k] + 1) / 2).sum() for k in range(gid.max() + 1)]))
        vote.append(g["right"][int(np.flatnonzero(gid == best)[0])])
    return {"top1_right": int(sum(top1)), "vote_right": int(sum(vote)), "trees": len(top1)}


def transfer_scores(groups: list[dict], cache, w, b) -> dict:
    """Terminal pair accuracy (ties half, each tree's pairs weigh the same as in the fit) and the
    selection counts on trees the head never saw, e.g. another benchmark's eval trees."""
    acc, wins = [], []
    for g in groups:
        s = np.tanh(np.stack([cache[t] for t in g["texts"]]) @ w + b)
        R, W = s[np.array(g["right"])], s[~np.array(g["right"])]
        won = pair_wins(R[:, None], W[None, :])  # (|R|, |W|): every (right, wrong) pair of the tree
        acc.append(float(won.mean()))
        wins.extend(won.ravel().tolist())
    # pooled over all pairs: the same figure as training.selection's "PPM ranking", so the two compare
    return {"terminal_pairs_per_tree": round(float(np.mean(acc)), 4) if acc else None,
            "terminal_pairs_pooled": round(float(np.mean(wins)), 4) if wins else None,
            "pairs": len(wins)} | selection_scores(groups, cache, w, b)


def fold_of(problem: str, folds: int, seed: int) -> int:
    return int(hashlib.sha256(f"{seed}:{problem}".encode()).hexdigest(), 16) % folds


def cross_validate(groups, spairs, cache, w0, b0, *, folds: int, seed: int, step_weight: float) -> dict:
    Hp, Hn, wt, prob, term = pair_arrays(groups, spairs, cache, step_weight)
    fold = np.array([fold_of(p, folds, seed) for p in prob])
    gfold = {g["problem"]: fold_of(g["problem"], folds, seed) for g in groups}
    results: dict[str, list[dict]] = {"old": []} | {f"lambda={lam:g}": [] for lam in LAMBDAS}
    for k in range(folds):
        test = {p for p, f in gfold.items() if f == k} | set(prob[fold == k].tolist())
        tr = fold != k
        results["old"].append(held_out_scores(groups, Hp, Hn, term, prob, w0, b0, test, cache))
        for lam in LAMBDAS:
            w, b = fit(Hp[tr], Hn[tr], wt[tr], w0, b0, lam)
            results[f"lambda={lam:g}"].append(held_out_scores(groups, Hp, Hn, term, prob, w, b, test, cache))
    summary = {}
    for name, rs in results.items():
        def pooled(field):
            num = sum((r[field] or 0) * r[field + "_n"] for r in rs)
            den = sum(r[field + "_n"] for r in rs)
            return round(num / den, 4) if den else None
        summary[name] = {"terminal_pairs": pooled("terminal_pairs"), "step_pairs": pooled("step_pairs"),
                         "top1_right": sum(r["top1_right"] for r in rs), "vote_right": sum(r["vote_right"] for r in rs),
                         "trees": sum(r["trees"] for r in rs)}
    return summary


def publish(head: Path, report: dict, weights_dir: Path, name: str) -> Path:
    """Put the refit head into <weights_dir>/<name> and point the manifest's PPM at it (replacing the
    old head file), with its sha256, command and held-out numbers."""
    from training.common import publish_ppm_file
    return publish_ppm_file(weights_dir, "head", head, name, command=report["command"], tool="training.head",
                            record_key="head_refit",
                            record={k: report[k] for k in ("trees", "step_pairs", "folds", "lambda", "cross_validation",
                                                           "start_head", "rollouts", "pairs", "transfer") if k in report})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rollouts", required=True, help="comma-separated rollout files (training.rollouts output)")
    ap.add_argument("--pairs", default="", help="comma-separated step-pair files (PPM stage input)")
    ap.add_argument("--out", required=True, help="directory for features.npz, value_head.npz, report.json")
    ap.add_argument("--weights", default=None, help="weights directory whose PPM adapter and head to start from")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--step-weight", type=float, default=1.0,
                    help="all step pairs together weigh this many times all trees' terminal pairs")
    ap.add_argument("--publish", metavar="NAME", default=None,
                    help="copy the new head into the weights directory as NAME and update its manifest")
    ap.add_argument("--transfer", default="",
                    help="comma-separated tree directories (`rstar-app eval --save-trees`) to score the old and new "
                         "head on, never fit on: does the refit carry over to another benchmark")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)

    from rstar_app.models.llama_cpp import LlamaPPM
    from rstar_app.weights import WEIGHTS_DIR, load_weights
    wts = load_weights(a.weights)
    if wts.ppm_head is None:
        print("error: the weights have no PPM to refit", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = terminal_groups([f for f in a.rollouts.split(",") if f])
    spairs = step_pairs([f for f in a.pairs.split(",") if f])
    print(f"{len(groups)} trees with right and wrong terminals, {len(spairs)} step pairs", file=sys.stderr)
    if not groups:
        print("error: no tree has both a right and a wrong terminal", file=sys.stderr)
        return 1
    ppm = LlamaPPM(wts.base, wts.ppm_head, adapter=str(wts.ppm_adapter) if wts.ppm_adapter else None,
                   n_ctx=4096, n_threads=a.threads)
    with np.load(wts.ppm_head) as z:
        w0, b0 = np.asarray(z["weight"], np.float64).reshape(-1), float(np.asarray(z["bias"]).reshape(-1)[0])
    from training.common import sha256_file
    made_by = f"base {sha256_file(wts.base)[:16]}, adapter " + (sha256_file(wts.ppm_adapter)[:16] if wts.ppm_adapter else "none")
    cache = FeatureCache(out / "features.npz", model=made_by)
    jobs = [(g["prompt"], g["texts"]) for g in groups] + [(p["prefix"], [p["prefix"] + p["pos"], p["prefix"] + p["neg"]])
                                                         for p in spairs]
    transfer = {d: tree_dir_groups([d]) for d in a.transfer.split(",") if d}  # dir -> (groups, all-right trees)
    jobs += [(g["prompt"], g["texts"]) for groups_d, _ in transfer.values() for g in groups_d]
    embed_all(ppm, cache, jobs, progress=not a.no_progress)

    cv = cross_validate(groups, spairs, cache, w0, b0, folds=a.folds, seed=a.seed, step_weight=a.step_weight)
    best = max(LAMBDAS, key=lambda lam: (cv[f"lambda={lam:g}"]["terminal_pairs"], lam))
    Hp, Hn, wt, _, _ = pair_arrays(groups, spairs, cache, a.step_weight)
    w, b = fit(Hp, Hn, wt, w0, b0, best)
    np.savez(out / "value_head.npz", weight=w.astype(np.float32), bias=np.array([b], np.float32))
    report = {"trees": len(groups), "step_pairs": len(spairs), "folds": a.folds, "seed": a.seed,
              "step_weight": a.step_weight, "lambda": best, "cross_validation": cv,
              "start_head": wts.ppm_head.name, "adapter": wts.ppm_adapter.name if wts.ppm_adapter else None,
              "rollouts": a.rollouts.split(","), "pairs": [f for f in a.pairs.split(",") if f],
              "command": "python -m training.head " + " ".join(sys.argv[1:] if argv is None else argv)}
    if transfer:
        report["transfer"] = {d: {"mixed_trees": len(gs), "all_right_trees": n_right,
                                  "old": transfer_scores(gs, cache, w0, b0), "new": transfer_scores(gs, cache, w, b)}
                              for d, (gs, n_right) in transfer.items()}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nheld out ({a.folds}-fold by problem) | terminal pairs (pooled) | step pairs | best terminal right"
          " | PPM-weighted vote right")
    for name, s in cv.items():
        print(f"{name:>14} | {s['terminal_pairs']} | {s['step_pairs']} | {s['top1_right']} / {s['trees']}"
              f" | {s['vote_right']} / {s['trees']}")
    for d, t in report.get("transfer", {}).items():
        print(f"\ntransfer to {d} ({t['mixed_trees']} trees with right and wrong terminals; {t['all_right_trees']} more"
              " are right whatever the head does) | terminal pairs (per tree) | best terminal right | PPM-weighted vote right")
        for name in ("old", "new"):
            s = t[name]
            print(f"{name:>14} | {s['terminal_pairs_per_tree']} (pooled {s['terminal_pairs_pooled']} of {s['pairs']})"
                  f" | {s['top1_right']} / {s['trees']} | {s['vote_right']} / {s['trees']}")
    print(f"chosen lambda {best:g}; head -> {out / 'value_head.npz'}")
    if a.publish:
        print(f"published {publish(out / 'value_head.npz', report, Path(a.weights) if a.weights else WEIGHTS_DIR, a.publish)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
