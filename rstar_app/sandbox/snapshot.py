"""Prefix snapshots: the state a program has after its first k steps, as bytes.

rStar-style search re-runs the cumulative program of every tree node, so sibling nodes re-execute
their whole shared prefix. After a program succeeds the worker pickles its namespace (plus the
hidden state of the libraries the next steps could observe: random generators, the decimal
context, numpy print/error options) and the parent keeps the bytes under the hash of the code.
A later program with that prefix starts from the bytes and only executes its new steps.

A snapshot is only taken when restoring it is indistinguishable from re-executing the prefix.
It is refused (`Unsafe`) when the namespace holds things pickle would copy by reference to code
the next worker does not have (functions, classes and lambdas the steps defined, generators,
open files), when a library module or the builtins were modified in place, when the program left
files in its scratch directory, or when the bytes would exceed the size cap. The parent treats the
bytes as opaque: they are only ever unpickled inside another sandboxed worker, with an unpickler
that resolves nothing outside the allowed libraries.
"""

from __future__ import annotations

import ast
import builtins
import decimal
import io
import pickle
import random
import sys
import types
from typing import Any

from .guard import ALLOWED_IMPORTS

# Modules a snapshot may name (classes, functions, reconstructors) besides the allowed libraries.
_EXTRA_MODULES = frozenset({"builtins", "copyreg", "collections", "_collections", "_decimal",
                            "_datetime", "_random", "_operator", "_functools", "rstar_app"})
_DENIED_BUILTINS = frozenset({"eval", "exec", "compile", "open", "__import__", "input",
                              "breakpoint", "exit", "quit", "help", "globals", "locals", "vars"})
# Module dicts whose singletons (random.random is a method of a hidden Random, np.random.rand of a
# hidden RandomState) must be pickled by name, not copied, so they keep sharing state.
_SINGLETON_MODULES = ("random", "numpy", "numpy.random", "numpy.random.mtrand", "sympy",
                      "decimal", "fractions", "statistics", "math", "cmath", "mpmath")


class Unsafe(Exception):
    """This state cannot be snapshotted faithfully; the run simply is not cached."""


def _module(name: str) -> types.ModuleType:
    """Unpickling helper: an already loaded, allowed module."""
    if name.partition(".")[0] not in ALLOWED_IMPORTS or name not in sys.modules:
        raise pickle.UnpicklingError(f"module {name!r} is not available in a snapshot")
    return sys.modules[name]


def _global(module: str, attr: str) -> Any:
    """Unpickling helper: a singleton living in an allowed module (e.g. random.random)."""
    return getattr(_module(module), attr)


class Baseline:
    """What the libraries looked like before the program ran (taken once, in the zygote)."""

    def __init__(self) -> None:
        self.singletons: dict[int, tuple[str, str, Any]] = {}
        for modname in _SINGLETON_MODULES:
            mod = sys.modules.get(modname)
            for attr, value in (vars(mod).items() if mod is not None else ()):
                if not isinstance(value, (type, types.ModuleType, types.FunctionType, int, float,
                                          str, bytes, bool, type(None))):
                    self.singletons.setdefault(id(value), (modname, attr, value))
        self.random_state = random.getstate()
        self.np_state = _np_random_state()
        self.np_options = _np_options()


# Calls that can change state outside the namespace in ways a snapshot would not carry over.
_UNSAFE_CALLS = frozenset({"setattr", "delattr", "vars", "globals", "exec", "eval", "compile",
                           "__import__"})
_HARMLESS_DUNDERS = frozenset({"__name__", "__doc__", "__class__", "__qualname__", "__module__"})


def static_check(tree: ast.AST) -> tuple[str | None, set[str]]:
    """Look at a step's code for ways it could change state that a snapshot of the namespace
    would not carry (math.pi = 3, np.linalg.solve = f, setattr(...), vars(m)[...] = ...).

    Returns (reason it is unsafe or None, names whose items it assigns: checked after every
    step, since `a[0] = 1` is fine for the program's own list but not for a library's dict).
    Any attribute assignment is treated as unsafe: `m = math; m.tau = 1; m = 5` would slip
    through a check of what names are bound to, and the program's own objects with attributes
    (instances of classes it defined) cannot be snapshotted anyway. A static check instead of
    comparing every library object before/after: touching them all would copy most of the
    zygote's memory pages into the worker (tens of ms)."""
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id in _UNSAFE_CALLS or (node.id.startswith("__")
                                             and node.id not in _HARMLESS_DUNDERS):
                return f"uses {node.id}", roots
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("__") and node.attr not in _HARMLESS_DUNDERS:
                return f"uses .{node.attr}", roots
            if isinstance(node.ctx, (ast.Store, ast.Del)):
                return f"assigns the attribute .{node.attr}", roots
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del)):
            base = node.value
            while isinstance(base, ast.Subscript):
                base = base.value
            if not isinstance(base, ast.Name):
                return "assigns an item of a computed object", roots
            roots.add(base.id)
    return None, roots


def runtime_check(ns: dict, roots: set[str], baseline: "Baseline") -> str | None:
    """The names whose attributes/items the program assigned must be its own plain objects."""
    for name in roots:
        if name not in ns:
            return f"assigns into {name}, which is not a program variable"
        value = ns[name]
        if isinstance(value, (types.ModuleType, type, types.FunctionType,
                              types.BuiltinFunctionType)) or id(value) in baseline.singletons:
            return f"modifies the library object {name}"
    return None


def _np_random_state() -> Any:
    np = sys.modules.get("numpy")
    return np.random.get_state() if np is not None and hasattr(np, "random") else None


def _np_options() -> Any:
    np = sys.modules.get("numpy")
    return (np.get_printoptions(), np.geterr()) if np is not None else None


def _same_np_state(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return a[0] == b[0] and (a[1] == b[1]).all() and a[2:] == b[2:]


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, baseline: Baseline) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.baseline = baseline

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.ModuleType:
            if sys.modules.get(obj.__name__) is obj and obj.__name__.partition(".")[0] in ALLOWED_IMPORTS:
                return _module, (obj.__name__,)
            raise Unsafe(f"module {obj.__name__}")
        ref = self.baseline.singletons.get(id(obj))
        if ref is not None and ref[2] is obj:
            return _global, (ref[0], ref[1])
        # Things defined by the steps themselves would be pickled as a reference to __main__,
        # which the next worker does not have: re-execute instead.
        if isinstance(obj, (type, types.FunctionType)):
            if getattr(obj, "__module__", None) == "__main__":
                raise Unsafe(f"{obj.__name__} is defined by the program")
        elif isinstance(obj, (types.GeneratorType, types.CoroutineType, types.CodeType,
                              types.FrameType, types.TracebackType, io.IOBase)):
            raise Unsafe(f"a {type(obj).__name__} object")
        elif getattr(type(obj), "__module__", None) == "__main__":
            raise Unsafe(f"an instance of {type(obj).__name__}, defined by the program")
        # library functions and classes are pickled by name; anything pickle cannot name
        # (lambdas, local functions) makes dumps() fail, which is also Unsafe
        return NotImplemented


class _CappedBuffer(io.BytesIO):
    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def write(self, b: Any) -> int:  # type: ignore[override]
        if self.tell() + len(b) > self.cap:
            raise Unsafe(f"snapshot larger than {self.cap} bytes")
        return super().write(b)


def _check_sets(values: list, limit: int = 200_000) -> None:
    """A set is pickled as its elements and rebuilt by adding them back, which can give another
    iteration order (after deletions, or collisions) and another table size (so later additions
    order differently). Refuse unless the rebuild is indistinguishable. Walks plain containers
    only (pickle's fast path skips reducer_override for them); a bounded walk."""
    stack, seen, n = list(values), set(), 0
    while stack:
        obj = stack.pop()
        t = type(obj)
        if t not in (list, tuple, dict, set, frozenset) or id(obj) in seen:
            continue
        seen.add(id(obj))
        n += len(obj)
        if n > limit:
            raise Unsafe("namespace too large to check")
        if t is dict:
            stack.extend(obj.keys())
            stack.extend(obj.values())
            continue
        if t in (set, frozenset):
            rebuilt = set() if t is set else None
            if rebuilt is not None:
                for x in obj:
                    rebuilt.add(x)
            else:
                rebuilt = frozenset(list(obj))
            if list(rebuilt) != list(obj) or sys.getsizeof(rebuilt) != sys.getsizeof(obj):
                raise Unsafe("a set whose order would change when rebuilt")
        stack.extend(obj)


def dumps(namespace: dict, state: dict, baseline: Baseline, cap: int) -> bytes:
    """Pickle the program's namespace and the library state next to it; raises Unsafe."""
    ns = {k: v for k, v in namespace.items() if k != "__builtins__"}
    _check_sets(list(ns.values()))
    libs: dict[str, Any] = {"decimal": decimal.getcontext()}
    if random.getstate() != baseline.random_state:
        libs["random"] = random.getstate()
    np_state = _np_random_state()
    if not _same_np_state(np_state, baseline.np_state):
        libs["np_random"] = np_state
    if _np_options() != baseline.np_options:
        libs["np_options"] = _np_options()
    buf = _CappedBuffer(cap)
    try:
        _Pickler(buf, baseline).dump({"ns": ns, "libs": libs, "state": state})
    except Unsafe:
        raise
    except Exception as e:  # PicklingError, TypeError "cannot pickle", RecursionError, ...
        raise Unsafe(f"{type(e).__name__}: {e}") from None
    return buf.getvalue()


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        top = module.partition(".")[0]
        ok = (top in ALLOWED_IMPORTS or top in _EXTRA_MODULES) and module in sys.modules
        if module == "builtins" and name in _DENIED_BUILTINS:
            ok = False
        if top == "rstar_app" and (module, name) not in (
                (__name__, "_module"), (__name__, "_global")):
            ok = False
        if not ok:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a snapshot")
        return super().find_class(module, name)


def loads(blob: bytes) -> tuple[dict, dict]:
    """Restore library state from a snapshot and return (namespace without builtins, state)."""
    data = _Unpickler(io.BytesIO(blob)).load()
    libs = data["libs"]
    decimal.setcontext(libs["decimal"])
    if "random" in libs:
        random.setstate(libs["random"])
    np = sys.modules.get("numpy")
    if np is not None:
        if "np_random" in libs:
            np.random.set_state(libs["np_random"])
        if "np_options" in libs:
            printopts, err = libs["np_options"]
            np.set_printoptions(**printopts)
            np.seterr(**err)
    return data["ns"], data["state"]


def fresh_builtins() -> dict:
    """A private copy of the builtins for a program's namespace (its changes stay its own)."""
    return dict(vars(builtins))
