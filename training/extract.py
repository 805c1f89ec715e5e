"""MCTS traces -> policy SFT data and PPM preference pairs (rStar-Math's rules, as pure functions).

SFT: per problem, the top-k (2) correct root-to-terminal trajectories by average Q over their steps
(ties: the higher minimum Q), dropping any trajectory with a failed (error) step.

PPM pairs {prefix, pos, neg}:
  * at every node with both outcomes below it: its children that lead to a correct answer (a
    correct terminal in the subtree) vs those that lead only to wrong ends (wrong terminals or dead
    branches): the 2 highest-Q correct-leading vs the 2 lowest-Q wrong-leading, same prefix; a step
    whose code failed is no positive (the reference: a step that raises is not a valid node);
  * the final answer step: whole trajectories, highest vs lowest average Q (prefix = the prompt),
    positives without a failed step (as SFT's);
  * kept when Q(pos) - Q(neg) >= q_margin (0.5) and the edit distance of the two texts >= min_edit (20).
Prefixes are rebuilt with build_prompt(problem) (no few-shot examples), the prompt the trained
models see; `prefix + pos` is exactly the string the search's PPM scores.

    python -m training.extract --traces runs/r1/rollouts.jsonl --sft-out sft.jsonl --pairs-out pairs.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rstar_app.steps import Step, build_prompt, render_step  # noqa: E402
from rstar_app.tree import DEAD, ERROR, TERMINAL, TRACE_FORMAT, Node, Tree  # noqa: E402
from training.common import iter_jsonl, write_jsonl  # noqa: E402


@dataclass(frozen=True)
class ExtractConfig:
    sft_top_k: int = 2
    pairs_per_side: int = 2       # best correct-leading vs worst wrong-leading children per node
    final_pairs_per_side: int = 2
    q_margin: float = 0.5
    min_edit: int = 20
    final_pairs: bool = True


# ---------------------------------------------------------------------------------------------
# small pure helpers
# ---------------------------------------------------------------------------------------------

def edit_distance(a: str, b: str, cap: int | None = None) -> int:
    """Levenshtein distance; with `cap`, returns early once the distance surely reaches cap."""
    if a == b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    if cap is not None and len(a) - len(b) >= cap:
        return len(a) - len(b)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        if cap is not None and min(cur) >= cap:
            return min(cur)
        prev = cur
    return prev[-1]


def rendered(node: Node) -> str:
    return render_step(Step(node.kind, node.text, code=node.code), node.output)


def steps_text(tree: Tree, node: Node) -> str:
    """The rendered steps from the root to `node` (without the prompt)."""
    return "".join(rendered(nd) for nd in tree.path(node)[1:])


def prompt_of(tree: Tree) -> str:
    return build_prompt(tree.problem)


def outcomes(tree: Tree) -> dict[int, tuple[bool, bool]]:
    """node id -> (a correct terminal below, a wrong end below), subtree included."""
    memo: dict[int, tuple[bool, bool]] = {}
    for nd in reversed(tree.nodes):  # children always have larger ids than their parent
        good = nd.status == TERMINAL and nd.correct is True
        bad = (nd.status == TERMINAL and nd.correct is False) or nd.status == DEAD
        for c in nd.children:
            g, b = memo[c]
            good, bad = good or g, bad or b
        memo[nd.id] = (good, bad)
    return memo


def trajectories(tree: Tree) -> list[tuple[Node, list[Node]]]:
    """(terminal, path without the root) for every answered terminal."""
    return [(t, tree.path(t)[1:]) for t in tree.terminals()]


def path_stats(path: list[Node]) -> tuple[float, float]:
    qs = [nd.value for nd in path]
    return (sum(qs) / len(qs), min(qs)) if qs else (0.0, 0.0)


def has_error(path: list[Node]) -> bool:
    return any(nd.status in (ERROR, DEAD) or nd.error for nd in path)


# ---------------------------------------------------------------------------------------------
# the two extractions
# ---------------------------------------------------------------------------------------------

def sft_examples(tree: Tree, cfg: ExtractConfig = ExtractConfig(), *, problem_id: str | None = None) -> list[dict]:
    """Top-k correct trajectories by (average Q, minimum Q); none with an error step."""
    cands = []
    for term, path in trajectories(tree):
        if term.correct is not True or has_error(path):
            continue
        avg_q, min_q = path_stats(path)
        cands.append((avg_q, min_q, -term.id, term, path))
    cands.sort(key=lambda c: (c[0], c[1], c[2]), reverse=True)
    out, seen = [], set()
    for avg_q, min_q, _, term, path in cands:
        text = steps_text(tree, term)
        key = " ".join(text.split())
        if key in seen:
            continue
        seen.add(key)
        out.append({"id": f"{problem_id}#{term.id}" if problem_id else str(term.id), "problem_id": problem_id,
                    "question": tree.problem, "gold": tree.gold, "text": text, "n_steps": len(path),
                    "avg_q": round(avg_q, 6), "min_q": round(min_q, 6)})
        if len(out) >= cfg.sft_top_k:
            break
    return out


def _pairs_from(pos: list, neg: list, prefix: str, cfg: ExtractConfig, meta: dict) -> Iterable[dict]:
    for qp, tp, np_ in pos:
        for qn, tn, nn in neg:
            if qp - qn < cfg.q_margin:
                continue
            if edit_distance(tp, tn, cap=cfg.min_edit) < cfg.min_edit:
                continue
            yield {"prefix": prefix, "pos": tp, "neg": tn, "q_pos": round(qp, 6), "q_neg": round(qn, 6),
                   "pos_node": np_, "neg_node": nn, **meta}


def ppm_pairs(tree: Tree, cfg: ExtractConfig = ExtractConfig(), *, problem_id: str | None = None) -> list[dict]:
    out_of = outcomes(tree)
    prompt = prompt_of(tree)
    pairs: list[dict] = []
    for nd in tree.nodes:
        good, bad = out_of[nd.id]
        if not (good and bad) or not nd.children:
            continue
        kids = [tree.nodes[c] for c in nd.children]
        pos = [k for k in kids if out_of[k.id][0] and k.status not in (ERROR, DEAD) and not k.error]
        neg = [k for k in kids if not out_of[k.id][0] and out_of[k.id][1]]
        if not pos or not neg:
            continue
        pos = sorted(pos, key=lambda k: (k.value, -k.id), reverse=True)[: cfg.pairs_per_side]
        neg = sorted(neg, key=lambda k: (k.value, k.id))[: cfg.pairs_per_side]
        prefix = prompt + steps_text(tree, nd)
        pairs += _pairs_from([(k.value, rendered(k), k.id) for k in pos], [(k.value, rendered(k), k.id) for k in neg],
                             prefix, cfg, {"kind": "step", "node": nd.id, "problem_id": problem_id})
    if cfg.final_pairs:
        right, wrong = [], []
        for term, path in trajectories(tree):
            avg_q, _ = path_stats(path)
            if term.correct is True and has_error(path):
                continue  # as for SFT: a right answer reached through a failing step is no example to prefer
            (right if term.correct is True else wrong if term.correct is False else []).append(
                (avg_q, steps_text(tree, term), term.id))
        right = sorted(right, key=lambda r: (r[0], -r[2]), reverse=True)[: cfg.final_pairs_per_side]
        wrong = sorted(wrong, key=lambda r: (r[0], r[2]))[: cfg.final_pairs_per_side]
        pairs += _pairs_from(right, wrong, prompt, cfg, {"kind": "final", "node": 0, "problem_id": problem_id})
    return pairs


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------

def load_traces(paths: Iterable[str | Path]) -> Iterable[tuple[str | None, Tree]]:
    """Rollout rows ({id, trace, ...}) or bare traces, from JSONL files or single JSON files; one
    trace per problem id, the first one read (a problem searched twice, e.g. by two shard layouts of
    one round or after a retried error row, must not count twice in the SFT set or the pairs)."""
    seen: set[str] = set()
    for p in paths:
        p = Path(p)
        rows: Iterable[dict]
        if p.suffix == ".json":
            rows = [json.loads(p.read_text())]
        else:
            rows = iter_jsonl(p)
        for row in rows:
            if "trace" not in row and row.get("format") != TRACE_FORMAT:
                continue  # a rollout row for a problem whose search failed
            trace = row.get("trace", row)
            pid = row.get("id") if "trace" in row else (trace.get("meta") or {}).get("id")
            if pid is not None:
                if str(pid) in seen:
                    continue
                seen.add(str(pid))
            tree = Tree.from_json(trace)
            if tree.gold is None and row.get("gold") is not None:
                tree.gold = str(row["gold"])
            yield pid, tree


def extract(paths: Iterable[str | Path], cfg: ExtractConfig = ExtractConfig()) -> tuple[list[dict], list[dict], dict]:
    sft, pairs = [], []
    stats = {"problems": 0, "solved": 0, "sft": 0, "pairs_step": 0, "pairs_final": 0}
    for pid, tree in load_traces(paths):
        stats["problems"] += 1
        stats["solved"] += any(t.correct for t in tree.terminals())
        s = sft_examples(tree, cfg, problem_id=pid)
        p = ppm_pairs(tree, cfg, problem_id=pid)
        sft += s
        pairs += p
    stats["sft"] = len(sft)
    stats["pairs_step"] = sum(p["kind"] == "step" for p in pairs)
    stats["pairs_final"] = sum(p["kind"] == "final" for p in pairs)
    return sft, pairs, stats


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="traces -> SFT JSONL + PPM pairs JSONL")
    ap.add_argument("--traces", nargs="+", required=True, help="rollout JSONL files (or trace .json files)")
    ap.add_argument("--sft-out", required=True)
    ap.add_argument("--pairs-out", required=True)
    d = ExtractConfig()
    ap.add_argument("--sft-top-k", type=int, default=d.sft_top_k)
    ap.add_argument("--pairs-per-side", type=int, default=d.pairs_per_side)
    ap.add_argument("--q-margin", type=float, default=d.q_margin)
    ap.add_argument("--min-edit", type=int, default=d.min_edit)
    ap.add_argument("--no-final-pairs", action="store_true")
    a = ap.parse_args(argv)
    cfg = ExtractConfig(sft_top_k=a.sft_top_k, pairs_per_side=a.pairs_per_side, final_pairs_per_side=a.pairs_per_side,
                        q_margin=a.q_margin, min_edit=a.min_edit, final_pairs=not a.no_final_pairs)
    sft, pairs, stats = extract(a.traces, cfg)
    write_jsonl(a.sft_out, sft)
    write_jsonl(a.pairs_out, pairs)
    print(json.dumps(stats))
    return stats


if __name__ == "__main__":
    main()
