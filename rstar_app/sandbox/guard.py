"""The Python-level guard installed in a worker before model code runs: an audit hook and an
import allow-list.

The audit hook (PEP 578) is the important half. CPython calls it for every sensitive operation
(open, socket, subprocess, os.system, exec of new processes, ctypes, gc introspection, ...) no
matter how the code reached the function: via `__import__`, `importlib`, `sys.modules`, a
`__subclasses__()` walk, `__globals__` of some library function or frame walking. Hooks cannot be
removed by Python code, so once installed it sees everything for the life of the process. It is
an *allow-list*: any event it does not know is refused.

The hook never consults state the program could change: its policy lives in positional default
arguments (an immutable tuple; rebinding `__defaults__` or `__code__` is itself an audited event
that the hook refuses) and it calls no module-level helpers that could be monkeypatched. The
violation log is mutable, but tampering with it only changes the verdict of the tampering program
itself (each program gets a fresh process).

The import allow-list is hygiene with clear error messages (`import os` -> "import of 'os' is not
allowed"), not a boundary: allowed modules expose others (random._os is os). The boundary is this
hook plus the kernel layers in kernel.py.
"""

from __future__ import annotations

import builtins
import os
import sys
from typing import Callable

# What a step may import itself. Modules these need internally import freely.
ALLOWED_IMPORTS = frozenset({
    "math", "cmath", "fractions", "decimal", "itertools", "functools", "operator", "collections",
    "statistics", "random", "re", "string", "datetime", "heapq", "bisect", "numbers", "sympy",
    "numpy", "mpmath", "copy", "typing", "dataclasses",
})

# Never imported for the first time inside a worker, whoever asks (the 'import' audit event).
DENIED_MODULES = frozenset({
    "socket", "_socket", "ssl", "_ssl", "select", "selectors", "asyncio", "subprocess",
    "_posixsubprocess", "multiprocessing", "_multiprocessing", "concurrent", "ctypes", "_ctypes",
    "cffi", "_cffi_backend", "pty", "tty", "termios", "fcntl", "mmap", "resource", "signal",
    "urllib", "http", "ftplib", "smtplib", "poplib", "imaplib", "nntplib", "telnetlib",
    "webbrowser", "xmlrpc", "socketserver", "pdb", "code", "codeop", "readline", "shutil",
    "tempfile", "sqlite3", "_sqlite3", "dbm", "shelve", "zipimport", "importlib_metadata",
})

# Events that are part of running ordinary Python and of the allowed libraries.
SAFE_EVENTS = frozenset({
    "compile", "exec", "builtins.id", "object.__getattr__", "object.__delattr__", "sys._getframe",
    "function.__new__", "time.sleep", "pickle.find_class", "sys.unraisablehook", "array.__new__",
    "builtins.input", "builtins.input/result",  # stdin is empty: input() raises EOFError
})


class SandboxViolation(PermissionError):
    """An operation the sandbox refuses. A PermissionError, so library code that copes with
    unreadable files copes with it too."""


class ForbiddenImport(ImportError):
    """`import x` of a module that is not on the allow-list."""


def make_audit_hook(scratch: str, read_roots: tuple[str, ...], log: list[str],
                    max_files: int = 16) -> Callable:
    """The audit hook for a worker whose scratch directory is `scratch`.

    Reads are allowed below `scratch` and `read_roots` (the Python library directories, needed by
    lazy imports inside sympy/numpy); writes only below `scratch`. Compiled bytecode (.pyc) is
    refused quietly so imports fall back to the source and `marshal.loads` (which can build
    malicious code objects) can stay forbidden. At most `max_files` different files may be
    opened for writing (with RLIMIT_FSIZE this bounds the disk a program can fill). Every other
    refusal is appended to `log`.
    """
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    scratch = scratch.rstrip("/")

    def hook(event, args, _safe=SAFE_EVENTS, _denied_mods=DENIED_MODULES,
             _scratch=scratch, _roots=tuple(r.rstrip("/") + "/" for r in read_roots),
             _wflags=write_flags, _type=type, _str=str, _bytes=bytes, _int=int, _tuple=tuple,
             _log=log, _violation=SandboxViolation, _quiet=PermissionError,
             _written=set(), _max_files=max_files, _len=len):
        if event in _safe:
            return
        if event == "open" or event == "os.listdir" or event == "os.scandir":
            path = args[0] if _type(args) is _tuple and args else None
            if path is None and event != "open":
                path = "."  # listdir() with no argument: the current directory (the scratch dir)
            if _type(path) is _bytes:
                path = path.decode("utf-8", "surrogateescape")
            if _type(path) is not _str:
                # file descriptors (the worker's pipes!) and path-like objects, whose __fspath__
                # could answer differently the second time, are refused outright
                msg = f"{event}() of {_type(path).__name__} objects is not allowed (use a file name)"
                _log.append(msg)
                raise _violation(msg)
            full = path if path[:1] == "/" else _scratch + "/" + path
            writing = event == "open" and _type(args[2]) is _int and (args[2] & _wflags) != 0
            if ".." not in full.split("/"):
                if full == _scratch or full.startswith(_scratch + "/"):
                    if not writing:
                        return
                    _written.add(full)
                    if _len(_written) <= _max_files:
                        return
                    msg = f"too many files: the program may write at most {_max_files} files"
                    _log.append(msg)
                    raise _violation(msg)
                if not writing:
                    for root in _roots:
                        if full.startswith(root) or full + "/" == root:
                            if full[-4:] == ".pyc":
                                raise _quiet("compiled bytecode is not read in the sandbox")
                            return
            what = "writing " if writing else ("listing " if event != "open" else "")
            msg = (f"{what}{path!r} is not allowed: the program may only use files in its "
                   "own scratch directory")
            _log.append(msg)
            raise _violation(msg)
        if event == "import":
            name = args[0] if _type(args) is _tuple and args else ""
            if _type(name) is _str and name.partition(".")[0] not in _denied_mods:
                return
            msg = f"import of {name!r} is not allowed in the sandbox"
        elif event == "object.__setattr__":
            # type attributes are set all the time by sympy; function internals never legitimately
            name = args[1] if _type(args) is _tuple and args[1:] else None
            if not (_type(name) is _str and name in ("__code__", "__defaults__", "__kwdefaults__")):
                return
            msg = f"changing a function's {name} is not allowed in the sandbox"
        else:
            msg = f"operation {event!r} is not allowed in the sandbox"
        _log.append(msg)
        raise _violation(msg)

    return hook


def install_import_guard(log: list[str]) -> None:
    """Replace builtins.__import__ with a wrapper that checks imports made by the program.

    An import is the program's unless the namespace it is made from (the `globals` argument, or
    the caller's globals when none is passed) is the dict of a real, loaded module: so internal
    imports of numpy and sympy pass, while `import os` in a step, in a function the step defined,
    in exec("...", {}) or via __builtins__['__import__'] is checked. Imports made from C
    (PyImport_Import: datetime.date.today() importing time) pass the current frame's globals, i.e.
    the step's, but always with an empty *list* as fromlist, which Python syntax never produces;
    those pass too. (A program can imitate that call; this layer gives clear errors for honest
    mistakes, the audit hook is what stops dishonest ones.)
    """
    original = builtins.__import__
    allowed_text = ", ".join(sorted(ALLOWED_IMPORTS))

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0,
                       _orig=original, _allowed=ALLOWED_IMPORTS, _modules=sys.modules,
                       _getframe=sys._getframe, _log=log, _type=type, _dict=dict, _str=str,
                       _list=list, _getattr=getattr):
        if _type(fromlist) is _list and not fromlist:
            return _orig(name, globals, locals, fromlist, level)
        g = globals if globals is not None else _getframe(1).f_globals
        trusted = False
        if _type(g) is _dict and g.get("__name__") != "__main__":
            mod = _modules.get(g.get("__name__"))
            trusted = mod is not None and _getattr(mod, "__dict__", None) is g
        if not trusted:
            if level != 0:
                msg = "relative imports are not allowed in the sandbox"
            elif _type(name) is not _str or name.partition(".")[0] not in _allowed:
                msg = f"import of {name!r} is not allowed (allowed: {allowed_text})"
            else:
                msg = None
            if msg is not None:
                _log.append(msg)
                raise ForbiddenImport(msg)
        return _orig(name, globals, locals, fromlist, level)

    builtins.__import__ = guarded_import


def lockdown(scratch: str, read_roots: tuple[str, ...], log: list[str], max_files: int = 16) -> None:
    """Install the import guard and the audit hook. Irreversible for the life of the process."""
    # Make the dangerous modules unimportable by name even when already loaded (the worker's own
    # plumbing loaded socket); the objects stay reachable by walking, which is what the hook is for.
    for name in ("socket", "_socket", "subprocess", "_posixsubprocess", "ctypes", "_ctypes",
                 "resource", "signal", "multiprocessing", "select", "selectors", "fcntl", "mmap"):
        sys.modules[name] = None  # type: ignore[assignment]
    install_import_guard(log)
    sys.addaudithook(make_audit_hook(scratch, read_roots, log, max_files))
