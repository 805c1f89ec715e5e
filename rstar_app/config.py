"""One typed dataclass of search settings, validated on creation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .tree import VOTE_RULES

STRATEGIES = ("mcts", "mcts_sim", "greedy", "best_of_n", "majority", "beam")


@dataclass(frozen=True)
class SearchConfig:
    """Settings shared by every search strategy.

    Budgets are ANDed: the search stops at whichever of rollouts / seconds / tokens runs out first.
    """

    strategy: str = "mcts"
    # -- budgets --
    rollouts: int = 8            # MCTS rollouts; samples for best_of_n / majority
    time_limit: float = 0.0      # wall-clock seconds, 0 = unlimited
    max_tokens: int = 0          # generated tokens over the whole search, 0 = unlimited
    # -- tree shape --
    candidates: int = 4          # K candidate next steps per expansion (paper: 8 train / 32 inference)
    max_depth: int = 16          # steps below the root; deeper branches are dead
    max_step_tokens: int = 160   # tokens per generated step
    max_code_errors: int = 1     # consecutive failing steps tolerated on a branch before it is dead
    beam_width: int = 2          # step-beam search: children kept per level
    # -- scoring --
    c_puct: float = 2.0          # UCT exploration constant (paper: 2)
    vote: str = "auto"           # final answer rule, one of tree.VOTE_RULES (see Tree.vote); "auto" =
                                 # the weights' learned selector when the engine has one, else top-k
    top_k_vote: int = 4          # "top-k": majority vote over the top-k terminals by value
    # -- sampling --
    temperature: float = 0.7
    greedy_first: bool = False   # sibling 0 of each expansion is the greedy (T = 0) step, the rest sampled
    top_p: float = 0.95
    top_k: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.vote not in VOTE_RULES:
            raise ValueError(f"vote must be one of {VOTE_RULES}, got {self.vote!r}")
        _check_range("rollouts", self.rollouts, 1, 4096)
        _check_range("candidates", self.candidates, 1, 64)
        _check_range("max_depth", self.max_depth, 1, 64)
        _check_range("max_step_tokens", self.max_step_tokens, 8, 2048)
        _check_range("max_code_errors", self.max_code_errors, 0, 16)
        _check_range("beam_width", self.beam_width, 1, 64)
        _check_range("top_k_vote", self.top_k_vote, 1, 4096)
        _check_range("top_k", self.top_k, 0, 100000)
        if self.time_limit < 0 or self.max_tokens < 0:
            raise ValueError("time_limit and max_tokens must be >= 0 (0 means unlimited)")
        if not 0.0 <= self.temperature <= 5.0:
            raise ValueError(f"temperature must be in [0, 5], got {self.temperature}")
        if not isinstance(self.greedy_first, bool):
            raise ValueError(f"greedy_first must be true or false, got {self.greedy_first!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.c_puct <= 100.0:
            raise ValueError(f"c_puct must be in [0, 100], got {self.c_puct}")
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {self.seed}")

    def replace(self, **changes) -> "SearchConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SearchConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown search settings: {sorted(unknown)}")
        return cls(**d)


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
