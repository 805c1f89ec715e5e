"""The two protocols the search talks to, and the executor's. No heavy imports here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence


class ContextFull(RuntimeError):
    """A text does not fit a model's context window (the search kills the branch, not the search)."""


@dataclass(frozen=True)
class Candidate:
    """One generated continuation: text without its stop marker, the marker that ended it
    (None when the token limit, the context or EOS ended it) and tokens generated. `logprob` is
    the summed natural-log probability of those tokens under the policy's own distribution
    (temperature 1, before top-k/top-p): how sure the policy was of its step; None when the
    backend does not report it. Two candidates are equal when their text, stop and tokens are:
    logprob is a measurement whose last digits depend on the batch it was decoded in."""

    text: str
    stop: str | None
    tokens: int
    logprob: float | None = field(default=None, compare=False)


# A sibling that starts a new chat turn or problem has left the step format: end it, unparsed.
ROGUE = ("<|user|>", "<|im_end|>", "<|im_start|>", "<|endoftext|>")


def first_stop(text: str, stop: Sequence[str], rogue: Sequence[str] = ROGUE) -> tuple[int, str | None] | None:
    """Earliest stop string in text: (cut position, marker); rogue strings give marker None."""
    best = None
    for s in list(stop) + list(rogue):
        j = text.find(s)
        if j != -1 and (best is None or j < best[0]):
            best = (j, s if s in stop else None)
    return best


def sibling_temperatures(n: int, temperature: float, greedy_first: bool) -> list[float]:
    """The temperature of each of n siblings: all `temperature`, or sibling 0 greedy (0.0)."""
    return [0.0 if greedy_first and i == 0 else temperature for i in range(n)]


class Policy(Protocol):
    """Proposes candidate next steps for a prefix (prompt + steps so far)."""

    name: str
    n_ctx: int

    def generate(
        self,
        prefix: str,
        *,
        n: int,
        max_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        seed: int,
        stop: Sequence[str],
        greedy_first: bool = False,
    ) -> list[Candidate]:
        """n candidates; candidate i is sampled with seed `seed + i`, so results are reproducible.
        With greedy_first, candidate 0 is the greedy continuation (temperature 0) instead."""
        ...

    def count_tokens(self, text: str) -> int: ...


class ValueModel(Protocol):
    """The process preference model: a score in [-1, 1] for prompt + steps so far."""

    name: str

    def score(self, prefix: str, steps: Sequence[str]) -> list[float]:
        """Score `prefix + s` for each s in steps (siblings share the prefix, computed once)."""
        ...


class Executor(Protocol):
    def run(self, codes: Sequence[str]): ...  # -> rstar_app.sandbox.ExecResult
