"""Independent samples: majority vote and best-of-N with the PPM, drawn in waves that advance one
step at a time together.

N trajectories at the config's temperature; majority votes over all their answers, best-of-N lets
the answer rule (learned selector, or top-k vote by PPM score) pick. Why waves: on 2 CPU cores one
decode of 8 rows costs little more than one of a single row (shipped policy: 73 tokens/s for 1 row,
160 for 8), so the W samples of a wave make one policy call per step (`generate_many`, one
continuation per prefix, each row's earlier tokens kept in its KV sequence) instead of one each:
best-of-16 ran 1.9x faster than one sample after another (`rstar-app bench` has the row). A policy
without `generate_many` gets waves of one: plain sequential sampling.

Each sample grows in a scratch tree of its own and is grafted onto the search tree when its wave
ends, sample after sample, so the result reads as if sampled one after another: each rollout's
nodes are contiguous (Tree.prefix stays exact) and meta["rollout_tokens"] counts per sample. The
price: a page drawing the tree live sees a wave's samples only when the wave ends.
"""

from __future__ import annotations

import time
from dataclasses import fields
from typing import Sequence

from ..models.base import Candidate, Policy
from ..steps import STOP
from ..tree import DEAD, TERMINAL, Cancelled, Event, Node, Tree
from .common import OutOfBudget, Search, backup_terminal

# Node fields a graft copies; id, parent, depth and children are the search tree's own
_COPIED = tuple(f.name for f in fields(Node) if f.name not in ("id", "parent", "depth", "children"))


ALL_TERMINALS = 10**9
# strategies whose final vote is not over config.top_k_vote terminals (re-votes of saved trees use this)
VOTE_TOP_K = {"majority": ALL_TERMINALS}


def majority(s: Search) -> Tree:
    """`rollouts` sampled trajectories; the most frequent answer wins (no PPM needed)."""
    return sample(s, backup=False, top_k=VOTE_TOP_K["majority"])  # every trajectory votes


def best_of_n(s: Search) -> Tree:
    """`rollouts` sampled trajectories; the answer rule picks among their answers by PPM score."""
    if s.ppm is None:
        raise ValueError("best-of-N needs a PPM: load one or use --strategy majority")
    return sample(s, backup=True)


def sample(s: Search, *, backup: bool, top_k: int | None = None) -> Tree:
    """`rollouts` trajectories from the root, in waves; each terminal's reward is backed up when
    `backup` (else terminals keep their PPM init, or value 0: a vote by counts alone). The answer
    is voted over `top_k` terminals (default config.top_k_vote). With greedy_first, sample 0 is
    the greedy trajectory."""
    width = max(1, int(getattr(s.policy, "max_candidates", 1))) if hasattr(s.policy, "generate_many") else 1
    s.tree.meta["wave"] = width  # samples per policy call (1: one after another)
    stopped, wave = None, []
    try:
        while s.rollouts < s.config.rollouts:
            stopped = s.out_of_budget()
            if stopped:
                break
            if s.tree.root.status == DEAD or s.prepare(s.tree.root) is None:
                break  # the prompt itself leaves no room for a step (the root is killed once)
            first, tokens = s.rollouts, s.tokens
            wave = [Tree(s.tree.problem, s.tree.prompt, gold=s.tree.gold)
                    for _ in range(min(width, s.config.rollouts - first))]
            _sample_wave(s, wave, first, backup)
            for scratch in wave:
                _graft(s, scratch)
                tokens += sum(nd.tokens for nd in scratch.nodes)
                s.end_rollout(tokens)
            wave = []
    except Cancelled:
        stopped = "cancelled"
    except OutOfBudget as e:
        stopped = str(e)
    for scratch in wave:  # a wave cut short: its unfinished samples stay, like a cut-off rollout
        _graft(s, scratch)
    return s.finish(stopped, top_k)


def _sample_wave(s: Search, wave: list[Tree], first: int, backup: bool) -> None:
    """Walk every scratch tree of the wave from its root to an answer or a dead end, one step of
    all live samples per policy call. Sample j of the wave is rollout `first + j`."""
    c = s.config
    ends: list[Node | None] = [t.root for t in wave]  # where each sample stands; None once it ended
    temps = [0.0 if c.greedy_first and first + j == 0 else c.temperature for j in range(len(wave))]
    depth = 0
    while True:
        prefixes: dict[int, str] = {}
        for j, node in enumerate(ends):
            if node is not None:
                p = s.prepare(node, wave[j])
                if p is None:
                    ends[j] = None
                else:
                    prefixes[j] = p
        if not prefixes:
            return
        rows = list(prefixes)
        t0 = time.monotonic()
        cands = generate_many(
            s.policy, [prefixes[j] for j in rows], temperatures=[temps[j] for j in rows],
            seeds=[sample_seed(c.seed, first + j, depth) for j in rows],
            max_tokens=c.max_step_tokens, top_p=c.top_p, top_k=c.top_k, stop=STOP)
        s.gen_seconds += time.monotonic() - t0
        s.expansions += len(rows)
        s.tokens += sum(cd.tokens for cd in cands)
        for j, cd in zip(rows, cands):
            live = s.admit(ends[j], prefixes[j], [cd], wave[j])
            node = live[0] if live else None
            if node is not None and node.status == TERMINAL:
                if backup:
                    backup_terminal(s, node, wave[j])
                node = None
            ends[j] = node
        depth += 1


def sample_seed(seed: int, sample: int, depth: int) -> int:
    """The sampling seed of step `depth` of sample `sample`: distinct and reproducible."""
    return (seed * 1_000_003 + (sample + 1) * 7919 + depth * 104_729) % (2**31 - 64)


def generate_many(policy: Policy, prefixes: Sequence[str], *, temperatures: Sequence[float],
                  seeds: Sequence[int], max_tokens: int, top_p: float, top_k: int,
                  stop: Sequence[str]) -> list[Candidate]:
    """One continuation of each prefix: in batches where the policy can (LlamaPolicy.generate_many),
    else one `generate(n=1)` call each."""
    many = getattr(policy, "generate_many", None)
    if many is not None:
        return many(prefixes, temperatures=temperatures, seeds=seeds, max_tokens=max_tokens, top_p=top_p,
                    top_k=top_k, stop=stop)
    out = []
    for prefix, temp, seed in zip(prefixes, temperatures, seeds):
        got = policy.generate(prefix, n=1, max_tokens=max_tokens, temperature=temp, top_p=top_p, top_k=top_k,
                              seed=seed, stop=stop)
        out.append(got[0] if got else Candidate("", None, 0))  # nothing generated: an invalid step
    return out


def _graft(s: Search, scratch: Tree) -> None:
    """Copy a scratch tree's nodes under the search tree's root, in creation order, final state
    included; the scratch root's visits and value (dead ends backed up -1) go to the real root."""
    tree, ids = s.tree, {0: 0}
    for nd in scratch.nodes[1:]:
        ids[nd.id] = tree.add(tree.nodes[ids[nd.parent]], **{k: getattr(nd, k) for k in _COPIED}).id
    src, root = scratch.root, s.tree.root
    if src.n or src.status == DEAD:
        root.q, root.n = root.q + src.q, root.n + src.n
        change = {"q": root.q, "n": root.n, "value": root.value}
        if src.status == DEAD:
            root.status, root.reason = DEAD, src.reason
            change.update(status=DEAD, reason=src.reason)
        tree.emit(Event("update", 0, change))
