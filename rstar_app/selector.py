"""The learned answer selector: which of a finished tree's answers to give.

A search grows the right answer far more often than the PPM's top terminal or a plain vote picks
it (round-3 table: right answer in 30% of the trees, selected in 9.5%). The selector scores each
group of equivalent answers with a linear function of what the tree already holds, and the answer
with the highest score wins (a conditional logit: softmax over a tree's answers, fit by
training/selector.py on training-problem trees, never on benchmark problems):

    maxp, meanp, sump   PPM scores of the group's terminals: max, mean, sum of (ppm + 1) / 2
    logc, share         how many terminals reached this answer: log count, fraction of all terminals
    isint               the answer is a non-negative integer (word problems' answers mostly are)
    cov, covmean, full  how many of the problem's numbers the terminal's code uses: best, mean over
                        the group, and 1 when some terminal uses all of them
    lpmax, lpmean       how sure the policy was of the terminals' steps: the mean log-probability per
                        generated token along each path (Node.logprob / Node.tokens) in standard
                        deviations from the tree's mean over its terminals (its spread within a tree is
                        ~0.04 nats, so raw it would hardly move a fit), best and mean over the group;
                        0 for every group of a tree whose search did not record it (older trees), so
                        they shift all answers alike and the rest decide

Pure Python (no numpy): the engine and the trace viewer import it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tree import Node, Tree

SELECTOR_FORMAT = "rstar-app-selector"
FEATURES = ("maxp", "meanp", "sump", "logc", "share", "isint", "cov", "covmean", "full", "lpmax", "lpmean")

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def numbers_in(text: str) -> set[float]:
    """The decimal numbers written in `text` ('1,200' counts as 1200; signs and words are ignored)."""
    return {float(x) for x in _NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3})", "", text))}


def _is_whole(answer: str | None) -> float:
    try:
        x = float(str(answer).replace(",", "").replace("$", "").strip())
    except ValueError:
        return 0.0
    return float(math.isfinite(x) and x >= 0 and x == int(x))


def path_logprob(tree: "Tree", node: "Node") -> float | None:
    """Mean log-probability per generated token of the steps from the root to `node` (nats), or None
    when a step on the path has no recorded log-probability."""
    steps = tree.path(node)[1:]
    if not steps or any(nd.logprob is None for nd in steps):
        return None
    return sum(nd.logprob for nd in steps) / max(1, sum(nd.tokens for nd in steps))


def answer_features(tree: "Tree") -> list[tuple[list["Node"], dict[str, float]]]:
    """[(group of terminals with one answer, {feature: value})] for every answer in the tree, groups in
    the order of group_by_answer over the terminals ranked by (PPM, value): so a tie in score goes
    to the answer holding the best-scored terminal."""
    from .tree import group_by_answer
    ts = sorted(tree.terminals(), key=lambda nd: (nd.ppm if nd.ppm is not None else 0.0, nd.value, -nd.id),
                reverse=True)
    asked = numbers_in(tree.problem)
    lps = {nd.id: path_logprob(tree, nd) for nd in ts}
    known = [x for x in lps.values() if x is not None]
    mu = sum(known) / len(known) if known else 0.0
    sd = math.sqrt(sum((x - mu) ** 2 for x in known) / len(known)) if known else 0.0
    lps = {k: None if x is None else (x - mu) / sd if sd > 0 else 0.0 for k, x in lps.items()}
    floor = min((x for x in lps.values() if x is not None), default=0.0)  # unknown: the least sure
    out = []
    for g in group_by_answer(ts):
        lp = [floor if lps[nd.id] is None else lps[nd.id] for nd in g]
        p = [nd.ppm if nd.ppm is not None else 0.0 for nd in g]
        cov = [len(asked & numbers_in("\n".join(tree.codes(nd)))) / max(1, len(asked)) for nd in g]
        out.append((g, {"maxp": max(p), "meanp": sum(p) / len(p), "sump": sum((x + 1.0) / 2.0 for x in p),
                        "logc": math.log(len(g)), "share": len(g) / len(ts), "isint": _is_whole(g[0].answer),
                        "cov": max(cov), "covmean": sum(cov) / len(cov), "full": float(max(cov) >= 1.0),
                        "lpmax": max(lp), "lpmean": sum(lp) / len(lp)}))
    return out


@dataclass(frozen=True)
class Selector:
    """Linear scores over FEATURES; `choose` returns the winning answer group of a tree."""

    weights: dict[str, float]
    name: str = ""                         # "" = named by its file when loaded
    fit: dict = field(default_factory=dict, compare=False)   # how it was made (training/selector.py)

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown selector features {sorted(unknown)}; known: {FEATURES}")
        if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in self.weights.values()):
            raise ValueError("selector weights must be finite numbers")

    def score(self, feats: dict[str, float]) -> float:
        return sum(w * feats[k] for k, w in self.weights.items())

    def choose(self, tree: "Tree") -> list["Node"] | None:
        """The highest-scoring answer group (its best-PPM terminal first); None without terminals."""
        scored = answer_features(tree)
        if not scored:
            return None
        best = max(range(len(scored)), key=lambda i: (self.score(scored[i][1]), -i))
        return scored[best][0]

    def to_json(self) -> dict:
        return {"format": SELECTOR_FORMAT, "version": 1, "name": self.name, "features": list(FEATURES),
                "weights": self.weights, "fit": self.fit}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Selector":
        """Read a selector file; a clear ValueError when it is not one."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a readable selector file ({e})") from None
        if not isinstance(d, dict) or d.get("format") != SELECTOR_FORMAT or not isinstance(d.get("weights"), dict):
            raise ValueError(f"{path}: not an {SELECTOR_FORMAT} file")
        try:
            weights = {k: float(v) for k, v in d["weights"].items()}
            return cls(weights=weights, name=d.get("name") or Path(path).name, fit=d.get("fit") or {})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: bad selector weights ({e})") from None
