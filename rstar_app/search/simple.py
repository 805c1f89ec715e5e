"""Baselines behind the same interface as MCTS: greedy, majority vote, best-of-N with the PPM,
and step-level beam search with the PPM. All draw from the same tree so they can be drawn and
compared at equal token budgets."""

from __future__ import annotations

from ..tree import TERMINAL, Node, Tree
from .common import Search, backup_terminal, run_loop, walk_to_terminal


def greedy(s: Search) -> Tree:
    """One trajectory, temperature 0: the policy's own answer."""
    def body(_: int) -> bool:
        end = walk_to_terminal(s, s.tree.root, temperature=0.0)
        if end is not None:
            backup_terminal(s, end)
        return False  # a second greedy sample would be identical
    return run_loop(s, body)


ALL_TERMINALS = 10**9
# strategies whose final vote is not over config.top_k_vote terminals (re-votes of saved trees use this)
VOTE_TOP_K = {"majority": ALL_TERMINALS}


def majority(s: Search) -> Tree:
    """`rollouts` sampled trajectories; the most frequent answer wins (no PPM needed)."""
    def body(_: int) -> bool:
        end = walk_to_terminal(s, s.tree.root)
        return True  # terminals keep value 0: ranking is by the vote alone
    return run_loop(s, body, top_k=VOTE_TOP_K["majority"])  # every trajectory votes


def best_of_n(s: Search) -> Tree:
    """`rollouts` sampled trajectories; the one whose answer the PPM scores highest wins."""
    if s.ppm is None:
        raise ValueError("best-of-N needs a PPM: load one or use --strategy majority")
    def body(_: int) -> bool:
        end = walk_to_terminal(s, s.tree.root)
        if end is not None:
            backup_terminal(s, end)
        return True
    return run_loop(s, body)


def beam(s: Search) -> Tree:
    """Step-level beam search: expand every beam node into K candidates, keep the `beam_width`
    best children by PPM score, repeat until all beams end (at most max_depth levels)."""
    if s.ppm is None:
        raise ValueError("beam search needs a PPM: load one or use --strategy majority")
    beams: list[Node] = [s.tree.root]

    def body(_: int) -> bool:
        nonlocal beams
        children: list[Node] = []
        for node in beams:
            for ch in s.expand(node):
                if ch.status == TERMINAL:
                    backup_terminal(s, ch)
                else:
                    children.append(ch)
        children.sort(key=lambda ch: (ch.ppm or 0.0, -ch.id), reverse=True)
        beams = children[: s.config.beam_width]
        return bool(beams)

    return run_loop(s, body, limit=s.config.max_depth + 1)

