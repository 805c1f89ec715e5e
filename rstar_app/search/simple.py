"""Baselines behind the same interface as MCTS: greedy and step-level beam search with the PPM
(independent samples, majority and best-of-N, are in sampling.py). All draw from the same tree so
they can be drawn and compared at equal token budgets."""

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

