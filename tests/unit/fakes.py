"""Scripted stand-ins for the policy, PPM and executor: tree arithmetic only. Real-model and
real-sandbox tests live in tests/integration."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from rstar_app.models.base import Candidate
from rstar_app.steps import END_ANSWER, END_CODE, END_STEP


def code(text):
    return Candidate(text, END_STEP, 5)


def final(text):
    return Candidate(text, END_CODE, 5)


def answer(value):
    return Candidate(f"The answer is \\boxed{{{value}}}", END_ANSWER, 5)


class ScriptedPolicy:
    """Returns the candidates scripted for the number of steps already in the prefix."""

    name, n_ctx = "scripted", 10_000

    def __init__(self, by_depth):
        self.by_depth = by_depth
        self.calls = []
        self.greedy_first = []  # the flag of each call, in order

    def count_tokens(self, text):
        return len(text) // 4

    def generate(self, prefix, *, n, max_tokens, temperature, top_p, top_k, seed, stop, greedy_first=False):
        depth = prefix.count(END_STEP) + prefix.count(END_CODE) + prefix.count(END_ANSWER)
        self.calls.append((depth, n, seed))
        self.greedy_first.append(greedy_first)
        options = self.by_depth[min(depth, len(self.by_depth) - 1)]
        return [options[(seed + i) % len(options)] for i in range(n)]


class TablePPM:
    """Scores a step by a lookup on its text (default 0)."""

    name = "table"

    def __init__(self, table):
        self.table = table

    def score(self, prefix, steps):
        return [next((v for k, v in self.table.items() if k in s), 0.0) for s in steps]


@dataclass
class Result:
    ok: bool
    stdout: str
    error: str | None
    kind: str
    seconds: float = 0.0
    cached: bool = False


class InProcessExecutor:
    """exec() in-process: ONLY for scripted unit tests (the real sandbox is tested separately)."""

    def run(self, codes):
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                exec("\n".join(codes), {})
            return Result(True, buf.getvalue(), None, "ok")
        except Exception as e:
            return Result(False, buf.getvalue(), f"{type(e).__name__}: {e}", "error")

    def close(self):
        pass
