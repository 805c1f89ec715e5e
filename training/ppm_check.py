"""Pair accuracy of an exported PPM as the engine runs it (llama.cpp, stacked adapter + value head),
on the same problem-level split training.ppm uses, per pair kind: held-out MCTS pairs, held-out
extra (synthetic) pairs, and a sample of the training pairs (does it fit what it saw?).

    python -m training.ppm_check --ppm-dir training/runs/cpu-small/round-2/ppm \
        --pairs training/runs/cpu-small/round-2/pairs.jsonl --extra-pairs .../pairs_synthetic.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.common import read_jsonl, resolve_base  # noqa: E402
from training.ppm import accuracy_by_kind, split_pairs  # noqa: E402


def pair_accuracy(pairs: Sequence[dict], score: Callable[[str, list[str]], list[float]]) -> dict:
    """{kind: {pairs, accuracy}} plus 'all'; ties count half, as in training.ppm.evaluate."""
    kinds, hits = [], []
    for p in pairs:
        a, b = score(p["prefix"], [p["pos"], p["neg"]])
        kinds.append(str(p.get("kind") or "step"))
        hits.append(1.0 if a > b else 0.5 if a == b else 0.0)
    return accuracy_by_kind(kinds + ["all"] * len(hits), hits + hits)


def check(pairs: list[dict], extra: list[dict], score, *, eval_frac: float, seed: int, train_sample: int) -> dict:
    tr, ev = split_pairs(pairs, eval_frac, seed)
    _, extra_ev = split_pairs(extra, eval_frac, seed)
    return {"held_out_mcts": pair_accuracy(ev, score),
            "held_out_extra": pair_accuracy(extra_ev[:train_sample], score) if extra_ev else {},
            "train_mcts_sample": pair_accuracy(tr[:train_sample], score),
            "held_out_problems": len({p.get("problem_id") for p in ev})}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="PPM pair accuracy through llama.cpp, by pair kind")
    ap.add_argument("--ppm-dir", required=True, help="training.ppm output (ppm.gguf + value_head.npz)")
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--extra-pairs", nargs="*", default=[])
    ap.add_argument("--base", default="")
    ap.add_argument("--eval-frac", type=float, default=0.2, help="as the PPM was trained (recipe ppm.eval_frac)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", type=int, default=60, help="pairs scored from the training / extra sets")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args(argv)
    from rstar_app.models.llama_cpp import LlamaPPM
    d = Path(a.ppm_dir)
    ppm = LlamaPPM(resolve_base(a.base or None), d / "value_head.npz", adapter=str(d / "ppm.gguf"),
                   n_threads=a.threads or None, n_ctx=1024, max_candidates=2)
    extra = [p for f in a.extra_pairs for p in read_jsonl(f)]
    out = check(read_jsonl(a.pairs), extra, ppm.score, eval_frac=a.eval_frac, seed=a.seed, train_sample=a.sample)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
