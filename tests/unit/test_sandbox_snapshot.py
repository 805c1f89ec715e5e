"""Snapshot safety rules, and pickling round trips in-process (the worker does the same)."""

import ast
import decimal
import pickle
import random

import pytest

from rstar_app.sandbox import snapshot


def reason(code: str) -> str | None:
    return snapshot.static_check(ast.parse(code))[0]


@pytest.mark.parametrize("code", [
    "x = 1\nprint(x)", "a = [1, 2]\na[0] = 3\nm = [[0]]\nm[0][0] = 1", "d = {}\nd['k'] = 1",
    "import numpy as np\nv = np.zeros(3)\nv[1] = 2", "print(type(1).__name__)",
    "if __name__ == '__main__':\n    print(1)", "import math\nprint(math.pi)",
])
def test_ordinary_steps_are_snapshot_safe(code):
    assert reason(code) is None


@pytest.mark.parametrize("code", [
    "setattr(x, 'a', 1)", "vars(m)['pi'] = 3", "exec('x = 1')", "eval('1')", "globals()['x'] = 1",
    "import math\nmath.__dict__['pi'] = 3", "__builtins__['len'] = None",
    "f().attr = 1", "a.b.c = 1", "().__class__.__base__", "x.__defaults__ = ()",
    "g()[0] = 1", "import math\nm = math\nm.tau = 1\nm = 5", "del obj.attr", "np.x[0] = 1",
])
def test_state_changing_tricks_make_a_step_unsafe(code):
    assert reason(code) is not None


def test_item_assignment_roots_are_checked_at_run_time():
    _, roots = snapshot.static_check(ast.parse("import math\nd = {}\nd['k'] = 1\nm[0][1] = 2"))
    assert roots == {"d", "m"}
    import math
    base = snapshot.Baseline()
    assert snapshot.runtime_check({"d": {}, "m": [[0, 0]]}, roots, base) is None
    assert snapshot.runtime_check({"d": {}, "m": math}, roots, base) is not None
    assert snapshot.runtime_check({"d": {}}, roots, base) is not None        # not the program's
    assert snapshot.runtime_check({"d": int, "m": []}, roots, base) is not None  # a class


@pytest.fixture
def baseline():
    state = random.getstate(), decimal.getcontext().copy()
    yield snapshot.Baseline()
    random.setstate(state[0])
    decimal.setcontext(state[1])


def test_round_trip_keeps_values_sharing_and_library_state(baseline):
    import fractions
    import math

    import numpy as np
    import sympy as sp
    x = sp.Symbol("x")
    shared = [1, 2]
    ns = {"math": math, "np": np, "x": x, "e": sp.sqrt(2) * x + sp.Rational(1, 3),
          "arr": np.arange(4.0), "f": fractions.Fraction(3, 4), "a": shared, "b": shared,
          "r": random.random, "d": decimal.Decimal("1.10"), "gen_rng": np.random.default_rng(1)}
    random.seed(123)
    expected_next = random.Random(123).random()
    blob = snapshot.dumps(ns, {"stdout": "hi\n"}, baseline, cap=1 << 20)
    random.seed(999)
    ns2, state = snapshot.loads(blob)
    assert state == {"stdout": "hi\n"}
    assert ns2["math"] is math and ns2["np"] is np and ns2["e"] == ns["e"]
    assert ns2["a"] is ns2["b"] and ns2["f"] == ns["f"] and (ns2["arr"] == ns["arr"]).all()
    # random.random still is the module's generator (by reference), with the saved state
    assert ns2["r"] is random.random and random.random() == expected_next
    assert ns2["gen_rng"].integers(100) == np.random.default_rng(1).integers(100)


@pytest.mark.parametrize("make", [
    lambda: {"f": lambda: 1},                                   # defined by the step
    lambda: {"g": (i for i in range(3))},                       # generator
    lambda: {"C": type("C", (), {"__module__": "__main__"})},   # class defined by the step
    lambda: {"big": b"x" * 5000},                               # over the size cap
    lambda: {"os": __import__("os")},                           # a module not on the allow-list
])
def test_unsafe_namespaces_are_refused(baseline, make):
    with pytest.raises(snapshot.Unsafe):
        snapshot.dumps(make(), {}, baseline, cap=4096)


def test_unpickler_resolves_nothing_outside_the_allowed_libraries(baseline):
    evil = pickle.dumps(__import__("os").system)   # 'posix system'
    with pytest.raises(pickle.UnpicklingError):
        snapshot._Unpickler(__import__("io").BytesIO(evil)).load()
    with pytest.raises(pickle.UnpicklingError):
        snapshot._Unpickler(__import__("io").BytesIO(pickle.dumps(eval))).load()
