"""Search strategies as plain functions sharing one signature; `run` dispatches by config.strategy."""

from __future__ import annotations

from typing import Callable

from ..config import SearchConfig
from ..models.base import Executor, Policy, ValueModel
from ..selector import Selector
from ..steps import build_prompt
from ..tree import Event, Tree
from .common import Search
from .mcts import mcts, mcts_sim
from .sampling import VOTE_TOP_K, best_of_n, majority
from .simple import beam, greedy

STRATEGIES: dict[str, Callable[[Search], Tree]] = {
    "mcts": mcts, "mcts_sim": mcts_sim, "greedy": greedy, "majority": majority, "best_of_n": best_of_n, "beam": beam,
}


def vote_top_k(strategy: str, config: SearchConfig) -> int:
    """How many top-ranked terminals `strategy`'s final top-k vote counts (majority: all of them)."""
    return VOTE_TOP_K.get(strategy, config.top_k_vote)


def run(
    problem: str,
    *,
    policy: Policy,
    executor: Executor,
    config: SearchConfig,
    ppm: ValueModel | None = None,
    few_shot: bool = False,
    gold: str | None = None,
    on_event: Callable[[Event], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    selector: Selector | None = None,
) -> Tree:
    """Search for a solution of `problem` and return the whole tree (answer in tree.answer).

    Args:
        problem: the word problem; refused with steps.ProblemError when empty or too long.
        policy / ppm / executor: the models and the sandbox (see models.base).
        config: strategy and budgets.
        few_shot: prepend worked examples (for a base model never fine-tuned on the format).
        gold: ground truth, used as the terminal reward (training rollouts). Never pass it when
            measuring accuracy: then rewards come from the PPM only.
        on_event: called with every Event as the tree grows (UI streaming).
        should_stop: polled between events; True cancels and returns the partial tree.
        selector: the learned answer rule, used when config.vote is "auto" or "learned".
    """
    tree = Tree(problem, build_prompt(problem, few_shot=few_shot), gold=gold)
    if on_event is not None:
        tree.listeners.append(on_event)
    tree.meta.update({"strategy": config.strategy, "policy": getattr(policy, "name", "?"),
                      "ppm": getattr(ppm, "name", None), "few_shot": few_shot})
    s = Search(tree, policy, ppm, executor, config, gold=gold, should_stop=should_stop,
               selector=selector)
    return STRATEGIES[config.strategy](s)


__all__ = ["run", "STRATEGIES", "Search", "vote_top_k"]
