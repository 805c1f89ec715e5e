"""Compare final-answer selection rules on saved search trees, without searching again.

    python -m rstar_app eval ... --save-trees          # writes <out>/<run>.trees/<id>.json
    python -m training.selection eval_runs/<run>.trees [more dirs ...]

A search can grow the right answer and still pick a wrong one. This prints, for every rule, how
many problems it answers correctly on the same trees, next to "in tree" (any terminal right: the
ceiling no rule can beat), so a selection miss (PPM / vote) can be told from a generation miss
(policy); then the chance level (a random terminal) and how often the PPM ranks a right terminal
above a wrong one of the same tree (and the policy's own log-probability, where the trees hold it).
Gold answers are only read to grade, after the rule has chosen.
`--budgets 8,16,32` adds the same rules on every tree cut back to its first 8, 16, 32 rollouts:
the accuracy-by-search-budget curve from one long run.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Callable

from rstar_app.eval import gold_in_tree
from rstar_app.grading import is_correct
from rstar_app.jsonl import read_rows
from rstar_app.search.sampling import ALL_TERMINALS
from rstar_app.selector import Selector, path_logprob
from rstar_app.tree import Node, Tree, group_by_answer


def top_k_vote(k: int) -> Callable[[Tree], str | None]:
    def rule(tree: Tree) -> str | None:
        return tree.vote(k)  # the engine's own rule (value, then PPM), k terminals
    rule.__name__ = f"top-{k} vote by value" if k < ALL_TERMINALS else "vote over all terminals"
    return rule


def ppm_weighted_vote(tree: Tree) -> str | None:
    return tree.vote(1, "ppm-weighted")  # the engine's --vote ppm-weighted


ppm_weighted_vote.__name__ = "vote weighted by terminal PPM"


def weighted_vote(weight: Callable[[Node], float], name: str) -> Callable[[Tree], str | None]:
    def rule(tree: Tree) -> str | None:
        groups = group_by_answer(tree.terminals())
        return max(groups, key=lambda g: sum(weight(nd) for nd in g))[0].answer if groups else None
    rule.__name__ = name
    return rule


def best_single(key: Callable[[Node], float], name: str) -> Callable[[Tree], str | None]:
    def rule(tree: Tree) -> str | None:
        ts = tree.terminals()
        return max(ts, key=key).answer if ts else None
    rule.__name__ = name
    return rule


def best_mean_path_ppm(tree: Tree) -> str | None:
    """The terminal whose steps have the highest mean PPM score: a whole-trajectory score."""
    def key(nd: Node) -> float:
        scores = [p.ppm for p in tree.path(nd)[1:] if p.ppm is not None]
        return sum(scores) / len(scores) if scores else -2.0
    ts = tree.terminals()
    return max(ts, key=key).answer if ts else None


best_mean_path_ppm.__name__ = "best mean path PPM"


def best_path_logprob(tree: Tree) -> str | None:
    """The terminal whose steps the policy was surest of (mean log-probability per token; trees that
    hold no log-probabilities fall back to the first terminal)."""
    def key(nd: Node) -> float:
        lp = path_logprob(tree, nd)
        return lp if lp is not None else float("-inf")
    ts = tree.terminals()
    return max(ts, key=key).answer if ts else None


best_path_logprob.__name__ = "best path policy log-prob"


BEST_TERMINAL_PPM = best_single(lambda nd: nd.ppm if nd.ppm is not None else -2.0, "best terminal PPM")
RULES: list[Callable[[Tree], str | None]] = [
    top_k_vote(1), top_k_vote(2), top_k_vote(4), top_k_vote(8), top_k_vote(ALL_TERMINALS),
    ppm_weighted_vote,
    weighted_vote(lambda nd: max(nd.value, 0.0) + 1e-6, "vote weighted by value"),
    BEST_TERMINAL_PPM,
    best_single(lambda nd: nd.value, "best terminal value"),
    best_mean_path_ppm, best_path_logprob,
]


# rules that read only PPM scores, log-probabilities and the tree's shape, never q / n: exact on Tree.prefix
PREFIX_RULES: list[Callable[[Tree], str | None]] = [
    weighted_vote(lambda nd: 1.0, "vote over all terminals (count only)"), ppm_weighted_vote, BEST_TERMINAL_PPM,
    best_mean_path_ppm, best_path_logprob,
]


def _learned(selector: Selector) -> Callable[[Tree], str | None]:
    def rule(tree: Tree) -> str | None:
        return tree.vote(1, "learned", selector)
    rule.__name__ = f"learned selector ({selector.name})"
    return rule


def rollout_trees(files: list[str]) -> list[tuple[str, Tree, str | None]]:
    """(problem id, tree, gold answer) of every row of training rollout files that holds a trace; the
    gold is the row's (else the trace's own); one tree per id, the first read (as training.extract).
    Read without cutting a torn last line: a live run may be appending to the file."""
    out, seen = [], set()
    for f in files:
        for r in read_rows(f, repair=False):
            if r.get("trace") and str(r["id"]) not in seen:
                seen.add(str(r["id"]))
                t = Tree.from_json(r["trace"])
                out.append((str(r["id"]), t, str(r["gold"]) if r.get("gold") is not None else t.gold))
    return out


def load_trees(dirs: list[str]) -> list[Tree]:
    """Trees of eval tree directories, or of training rollout files (`.jsonl`: their rows' traces,
    graded by the row's gold answer); each tree's problem id (file stem, row id) in meta["id"]."""
    trees = []
    for d in dirs:
        if str(d).endswith(".jsonl"):
            for rid, t, gold in rollout_trees([d]):
                t.gold, t.meta["id"] = gold, rid
                trees.append(t)
        else:
            for p in sorted(Path(d).glob("*.json")):
                t = Tree.read(p)
                t.meta["id"] = p.stem
                trees.append(t)
    return trees


def filter_ids(trees: list[Tree], *, only: str | None = None, drop: str | None = None) -> list[Tree]:
    """Trees whose problem id is (only) / is not (drop) among the ids of a JSONL file's rows (e.g.
    `training.unseen`'s problem list, or another run's rollouts)."""
    ids = lambda path: {str(r["id"]) for r in read_rows(path, repair=False) if "id" in r}  # noqa: E731
    keep, gone = (ids(only) if only else None), (ids(drop) if drop else set())
    return [t for t in trees if (keep is None or t.meta.get("id") in keep) and t.meta.get("id") not in gone]


def compare(trees: list[Tree], selector: Selector | None = None, *,
            rules: list[Callable[[Tree], str | None]] = RULES) -> list[tuple[str, int]]:
    """[(rule name, problems answered correctly)], with 'in tree' (the ceiling) last; with a selector,
    its rule too (the engine's --vote learned)."""
    graded = [t for t in trees if t.gold is not None]
    rules = rules + ([_learned(selector)] if selector else [])
    out = [(rule.__name__, sum(is_correct(rule(t), t.gold) for t in graded)) for rule in rules]
    out.append(("in tree (ceiling)", sum(gold_in_tree(t, t.gold) for t in graded)))
    return out


def _graded_terminals(t: Tree) -> list[tuple[Node, bool]]:
    return [(nd, is_correct(nd.answer, t.gold)) for nd in t.terminals()] if t.gold is not None else []


def random_terminal(trees: list[Tree]) -> float:
    """Expected number right when a terminal is picked uniformly at random: the chance level that a
    selection rule has to beat to mean anything."""
    total = 0.0
    for t in trees:
        graded = _graded_terminals(t)
        if graded:
            total += sum(ok for _, ok in graded) / len(graded)
    return total


def ppm_ranking(trees: list[Tree]) -> tuple[float | None, int]:
    """(share of (right, wrong) terminal pairs of the same tree where the right one has the higher
    PPM score, ties half; number of such pairs). 0.5 is a PPM that cannot tell them apart."""
    return ranking(trees, lambda t, nd: nd.ppm)


def logprob_ranking(trees: list[Tree]) -> tuple[float | None, int]:
    """ppm_ranking for the policy's mean log-probability of each terminal's path (trees that record it)."""
    return ranking(trees, path_logprob)


def ranking(trees: list[Tree], score: Callable[[Tree, Node], float | None]) -> tuple[float | None, int]:
    """(share of right-over-wrong terminal pairs by `score`, ties half; pairs); unscored terminals skipped."""
    per = [_tree_wins(t, score) for t in trees]
    wins, pairs = sum(w for w, _ in per), sum(n for _, n in per)
    return (wins / pairs if pairs else None), pairs


def _tree_wins(t: Tree, score: Callable[[Tree, Node], float | None]) -> tuple[float, int]:
    scored = [(score(t, nd), ok) for nd, ok in _graded_terminals(t)]
    scored = [(x, ok) for x, ok in scored if x is not None]
    wins, pairs = 0.0, 0
    for right in (p for p, ok in scored if ok):
        for wrong in (p for p, ok in scored if not ok):
            wins += 1.0 if right > wrong else 0.5 if right == wrong else 0.0
            pairs += 1
    return wins, pairs


def ranking_intervals(trees: list[Tree], scores: dict[str, Callable[[Tree, Node], float | None]], *,
                      n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of `ranking` for each score, resampling whole trees: the pairs
    of one tree share its problem and its samples, so counting pairs as independent (a binomial
    interval over 1,000 pairs) would claim far more certainty than ~50 mixed trees hold. With two
    scores also "<second> - <first>": the interval of their difference, on the same resamples. Only
    terminals that every score rates count (e.g. a partly log-probability-annotated run), so the
    scores are compared on the same pairs."""
    names = list(scores)

    def joint(f: Callable[[Tree, Node], float | None]) -> Callable[[Tree, Node], float | None]:
        return lambda t, nd: f(t, nd) if all(g(t, nd) is not None for g in scores.values()) else None
    per = [[_tree_wins(t, joint(scores[k])) for k in names] for t in trees]
    per = [p for p in per if any(n for _, n in p)]
    if not per:
        return {}
    rng = random.Random(seed)
    draws: list[list[float | None]] = []
    for _ in range(n_boot):
        pick = [per[rng.randrange(len(per))] for _ in per]
        draws.append([(sum(p[i][0] for p in pick) / n) if (n := sum(p[i][1] for p in pick)) else None
                      for i in range(len(names))])
    cols = {k: [d[i] for d in draws] for i, k in enumerate(names)}
    if len(names) == 2:
        cols[f"{names[1]} - {names[0]}"] = [None if a is None or b is None else b - a for a, b in draws]
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    out = {}
    for k, v in cols.items():
        v = sorted(x for x in v if x is not None)
        if v:
            out[k] = (v[int(lo_q * (len(v) - 1))], v[int(round(hi_q * (len(v) - 1)))])
    return out


def budget_curve(trees: list[Tree], budgets: list[int], selector: Selector | None = None) -> dict:
    """How the answer rules fare as the rollout budget grows, from one run's trees: each tree cut
    back to its first r rollouts for every r in `budgets` (the search is the same search, so the
    first r rollouts of a longer run are what a run with r rollouts grows). Returns {"budgets",
    "rules": {name: [correct at each r]}, "tokens": [mean generated tokens a problem at each r],
    "tokens_counted": "generated" (every sampled candidate, from meta["rollout_tokens"]) or, for trees
    saved without it, "in nodes" (the kept steps only: duplicate siblings are not counted)}."""
    rules: dict[str, list[int]] = {}
    tokens = []
    generated = all(t.meta.get("rollout_tokens") for t in trees)
    for r in budgets:
        cut = [t.prefix(r) for t in trees]
        for name, k in compare(cut, selector, rules=PREFIX_RULES):
            rules.setdefault(name, []).append(k)
        spent = [t.meta["rollout_tokens"][-1] if generated else sum(nd.tokens for nd in t.nodes) for t in cut]
        tokens.append(round(sum(spent) / max(1, len(cut))))
    return {"budgets": budgets, "rules": rules, "tokens": tokens,
            "tokens_counted": "generated" if generated else "in nodes"}


def _budgets(text: str) -> list[int]:
    try:
        out = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected rollout counts like 8,16,32, got {text!r}") from None
    if not out or out[0] < 1:
        raise argparse.ArgumentTypeError(f"rollout counts must be >= 1, got {text!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="tree directories written by `rstar-app eval --save-trees`, "
                                            "or training rollout files (.jsonl)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--selector", help="a selector file (weights/selector-r*.json) to add the learned rule")
    p.add_argument("--budgets", type=_budgets, metavar="R,R,...",
                   help="also score the trees cut back to their first R rollouts, for each R (trees saved "
                        "with their rollout boundaries; only rules that ignore q / n)")
    p.add_argument("--ids", metavar="JSONL", help="only the trees of problems whose id is in this file's rows")
    p.add_argument("--not-ids", metavar="JSONL", help="leave out the trees of problems whose id is in this file")
    a = p.parse_args(argv)
    try:
        trees = filter_ids([t for t in load_trees(a.dirs) if t.gold is not None], only=a.ids, drop=a.not_ids)
    except ValueError as e:  # Tree.read's message names the file and what is wrong with it
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not trees:
        print("no graded trees found (run `rstar-app eval --save-trees` first)", file=sys.stderr)
        return 1
    try:
        selector = Selector.load(a.selector) if a.selector else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = compare(trees, selector)
    chance = random_terminal(trees)
    ranking, pairs = ppm_ranking(trees)
    lp_ranking, lp_pairs = logprob_ranking(trees)
    ci = ranking_intervals(trees, {"ppm": lambda t, nd: nd.ppm, "logprob": path_logprob})
    iv = lambda k: f" [{ci[k][0]:.1%}, {ci[k][1]:.1%}]" if k in ci else ""  # noqa: E731
    try:
        curve = budget_curve(trees, a.budgets, selector) if a.budgets else None
    except ValueError as e:  # a tree without rollout boundaries
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps({"problems": len(trees), "rules": dict(rows), "random_terminal": round(chance, 2),
                          "ppm_ranking": ranking, "ppm_ranking_pairs": pairs, "logprob_ranking": lp_ranking,
                          "logprob_ranking_pairs": lp_pairs, "ranking_intervals_95": ci,
                          "budget_curve": curve}, indent=1))
        return 0
    print(f"{len(trees)} trees from {', '.join(a.dirs)}\n\n| rule | correct | accuracy |\n|---|---|---|")
    for name, k in rows:
        print(f"| {name} | {k} / {len(trees)} | {k / len(trees):.3f} |")
    print(f"| a random terminal (expected) | {chance:.1f} / {len(trees)} | {chance / len(trees):.3f} |")
    if ranking is not None:
        print(f"\nterminal PPM: a right terminal outscores a wrong one of the same tree in {ranking:.1%}{iv('ppm')} "
              f"of {pairs} pairs (chance 50%; [95% interval, whole trees resampled])")
    if lp_ranking is not None:
        print(f"policy log-probability (mean per token of the path): right over wrong in {lp_ranking:.1%}"
              f"{iv('logprob')} of {lp_pairs} pairs; its lead over the PPM:"
              + (f" [{100 * ci['logprob - ppm'][0]:+.1f}, {100 * ci['logprob - ppm'][1]:+.1f}] points"
                 if "logprob - ppm" in ci else " -"))
    if curve:
        print(f"\nby rollout budget (each tree cut back to its first R rollouts):\n\n| rule | "
              + " | ".join(f"R = {r}" for r in curve["budgets"]) + " |\n|---|" + "---|" * len(curve["budgets"]))
        counted = "tokens / problem" + (" (kept steps only)" if curve["tokens_counted"] == "in nodes" else "")
        for name, ks in list(curve["rules"].items()) + [(counted, curve["tokens"])]:
            print(f"| {name} | " + " | ".join(str(k) for k in ks) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
