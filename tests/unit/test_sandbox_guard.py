"""The audit hook's policy, called directly (it is not installed in the test process)."""

import os

import pytest

from rstar_app.sandbox.guard import (ALLOWED_IMPORTS, DENIED_MODULES, SandboxViolation,
                                     make_audit_hook)

SCRATCH = "/tmp/rstar-sandbox-test/w-1"
ROOTS = ("/usr/lib/python3.11", "/opt/site-packages")
RD, WR = os.O_RDONLY | os.O_CLOEXEC, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


@pytest.fixture
def hook():
    log: list[str] = []
    h = make_audit_hook(SCRATCH, ROOTS, log, max_files=3)
    h.log = log  # type: ignore[attr-defined]
    return h


@pytest.mark.parametrize("path,flags", [
    ("data.txt", WR), ("data.txt", RD), (SCRATCH + "/sub/f", WR), (SCRATCH, RD),
    ("/usr/lib/python3.11/json/__init__.py", RD), ("/opt/site-packages/sympy/core/basic.py", RD),
    (b"rel.bin", WR),
])
def test_allowed_opens(hook, path, flags):
    assert hook("open", (path, "r", flags)) is None
    assert hook.log == []


@pytest.mark.parametrize("path,flags", [
    ("/etc/passwd", RD), ("/root/.ssh/id_rsa", RD), ("/proc/self/environ", RD),
    ("../../etc/passwd", RD), ("../w-2/secret", RD), (SCRATCH + "/../w-2/x", RD),
    ("/usr/lib/python3.11/../../../etc/shadow", RD), ("/usr/lib/python3.11/os.py", WR),
    ("/tmp/pwned", WR), ("/tmp/rstar-sandbox-test/w-10/x", RD),  # a sibling sharing the prefix
    ("/usr/lib/python3.11x/evil", RD), (3, RD), (4, WR),
])
def test_refused_opens(hook, path, flags):
    with pytest.raises(SandboxViolation):
        hook("open", (path, "r", flags))
    assert len(hook.log) == 1


def test_pathlike_objects_are_refused_even_if_they_look_fine(hook):
    class Sneaky:
        calls = 0

        def __fspath__(self):  # answers a harmless path first, then the secret
            Sneaky.calls += 1
            return "ok.txt" if Sneaky.calls == 1 else "/etc/passwd"

    with pytest.raises(SandboxViolation):
        hook("open", (Sneaky(), "r", RD))
    with pytest.raises(SandboxViolation):
        hook("open", (type("S", (str,), {})("ok.txt"), "r", RD))  # str subclass


def test_bytecode_is_refused_quietly_so_imports_use_source(hook):
    with pytest.raises(PermissionError) as e:
        hook("open", ("/opt/site-packages/sympy/__pycache__/x.cpython-311.pyc", "r", RD))
    assert not isinstance(e.value, SandboxViolation) and hook.log == []


def test_listing(hook):
    hook("os.listdir", (None,))              # the scratch dir
    hook("os.scandir", ("/opt/site-packages/numpy",))
    with pytest.raises(SandboxViolation, match="listing '/'"):
        hook("os.listdir", ("/",))


def test_file_count_limit(hook):
    for name in ("a", "b", "c", "a"):
        hook("open", (name, "w", WR))
    with pytest.raises(SandboxViolation, match="at most 3 files"):
        hook("open", ("d", "w", WR))


@pytest.mark.parametrize("event,args", [
    ("os.system", ("id",)), ("subprocess.Popen", ("sh", ["sh"], None, None)),
    ("socket.__new__", (None, 2, 1, 0)), ("socket.connect", (None, ("127.0.0.1", 22))),
    ("socket.getaddrinfo", ("example.com", 80, 0, 0, 0)), ("os.fork", ()), ("os.exec", ("/bin/sh",)),
    ("os.posix_spawn", ("/bin/sh",)), ("os.kill", (1, 9)), ("ctypes.dlopen", ("libc.so.6",)),
    ("ctypes.call_function", (0, ())), ("gc.get_objects", (None,)), ("gc.get_referrers", ()),
    ("sys.addaudithook", ()), ("marshal.loads", (b"",)), ("code.__new__", ()),
    ("resource.setrlimit", (0, (1, 1))), ("os.chdir", ("/",)), ("os.symlink", ("/", "x", -1)),
    ("os.putenv", ("A", "B")), ("sys._current_frames", ()), ("sys.settrace", ()),
    ("mmap.__new__", (-1, 10, 0, 0)), ("some.future.event", ()),
])
def test_everything_unknown_or_dangerous_is_refused(hook, event, args):
    with pytest.raises(SandboxViolation):
        hook(event, args)
    assert hook.log


@pytest.mark.parametrize("event,args", [
    ("compile", (b"", "<step 1>")), ("exec", (None,)), ("builtins.id", (1,)),
    ("object.__getattr__", (None, "gi_frame")), ("sys._getframe", (None,)),
    ("import", ("sympy.stats", None, [], [], [])), ("object.__setattr__", (int, "x", 1)),
    ("builtins.input", ("",)), ("pickle.find_class", ("numpy", "ndarray")),
])
def test_ordinary_python_is_allowed(hook, event, args):
    hook(event, args)
    assert hook.log == []


@pytest.mark.parametrize("name", ["socket", "_socket", "subprocess", "ctypes", "multiprocessing.pool",
                                  "urllib.request"])
def test_fresh_imports_of_dangerous_modules_are_refused(hook, name):
    with pytest.raises(SandboxViolation):
        hook("import", (name, None, [], [], []))


@pytest.mark.parametrize("attr", ["__code__", "__defaults__", "__kwdefaults__"])
def test_function_internals_cannot_be_rebound(hook, attr):
    with pytest.raises(SandboxViolation):
        hook("object.__setattr__", (hook, attr, None))


def test_hook_keeps_its_policy_out_of_reach(hook):
    # no closure cells (cell_contents can be rebound without an audit event) and no globals use
    assert hook.__closure__ is None
    assert not any(name in hook.__code__.co_names for name in ("len", "isinstance", "os", "sys"))
    assert isinstance(hook.__defaults__, tuple)


def test_allow_list_is_the_documented_one():
    for name in ("math", "cmath", "fractions", "decimal", "itertools", "functools", "operator",
                 "collections", "statistics", "random", "re", "string", "datetime", "heapq",
                 "bisect", "numbers", "sympy", "numpy"):
        assert name in ALLOWED_IMPORTS
    assert not ALLOWED_IMPORTS & {"os", "sys", "subprocess", "socket", "ctypes", "importlib",
                                  "builtins", "gc", "signal", "resource", "threading", "io"}
    assert {"socket", "subprocess", "ctypes"} <= DENIED_MODULES
