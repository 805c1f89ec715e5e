"""Answer extraction and equivalence.

Numbers (the GSM8K / SVAMP / MultiArith case) are compared numerically: whole numbers exactly,
others with a small relative tolerance (a printed float's rounding); anything else goes to
math-verify, which understands LaTeX (fractions, roots, sets).
math-verify parses a bare LaTeX gold such as `\\sqrt{117}` to nothing, so both sides are wrapped as
`$\\boxed{...}$` first.
"""

from __future__ import annotations

import functools
import re

from .steps import extract_boxed

_NUM = re.compile(r"^[-+]?(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?$")
_UNITS = re.compile(r"\\(?:text|mbox|mathrm)\{[^{}]*\}|\\[,;!]|\\?\$|%|\\%|dollars?|cents?")


def to_number(text: str | None) -> float | None:
    """'1,234.50', '\\$12', '12 dollars', '\\frac{3}{4}', '3/4' -> float; None when not a plain number."""
    if text is None:
        return None
    t = _UNITS.sub(" ", str(text)).strip().rstrip(".")
    if re.search(r"\d\s+[\d/.]", t):  # '3 1/2', '2 or 3' (words gone): not one plain number
        return None
    t = re.sub(r"\s+", "", t)
    frac = re.fullmatch(r"(?:\\d?frac\{(-?\d+)\}\{(-?\d+)\}|(-?\d+)/(-?\d+))", t)
    if frac:
        a, b = [int(x) for x in frac.groups() if x is not None]
        return a / b if b else None
    if t and _NUM.match(t) and any(ch.isdigit() for ch in t):
        try:
            return float(t.replace(",", ""))
        except ValueError:
            return None
    return None


def extract_answer(text: str) -> str | None:
    """The answer in a model's final text: the last \\boxed{...}, else the last number."""
    box = extract_boxed(text)
    if box is not None:
        return box
    nums = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return nums[-1].rstrip(",") if nums else None


@functools.lru_cache(maxsize=4096)
def same_answer(a: str | None, b: str | None) -> bool:
    """True when two answers are mathematically equal (whole numbers exactly, other numbers within 1e-6
    relative, else math-verify)."""
    if a is None or b is None:
        return False
    if a.strip() == b.strip():
        return True
    x, y = to_number(a), to_number(b)
    if x is not None and y is not None:
        if x == int(x) and y == int(y):  # whole numbers exactly: 1000000 is not 1000001
            return x == y
        return abs(x - y) <= 1e-6 * max(1.0, abs(x), abs(y))  # a printed float's rounding
    return _math_verify(a, b)


def is_correct(pred: str | None, gold: str | None) -> bool:
    return same_answer(gold, pred)


def _math_verify(a: str, b: str) -> bool:
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - math-verify is a declared dependency
        return False
    try:
        # Timeouts off: math-verify's timeouts use SIGALRM, which only works in the main thread
        # (the web app grades in worker threads). Inputs are short, bounded strings.
        ga = parse(f"$\\boxed{{{a}}}$", parsing_timeout=None)
        gb = parse(f"$\\boxed{{{b}}}$", parsing_timeout=None)
        return bool(ga and gb and verify(ga, gb, timeout_seconds=None))
    except Exception:
        return False
