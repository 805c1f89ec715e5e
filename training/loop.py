"""Pieces every training stage shares: config from recipe + flags, LoRA setup, deterministic
length-bucketed batch order, LR schedule, resumable checkpoints, progress log.

Resume contract: a checkpoint holds the trainable weights, optimizer, scheduler, RNG states, the
optimizer step and the position in the data order (epoch, micro-batch). The data order is a pure
function of (seed, epoch), so a rerun continues exactly where the last checkpoint left off; a
SIGKILLed run loses at most one checkpoint interval. Checkpoints are written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
import time
from pathlib import Path
from typing import Any, Sequence

from training.common import atomic_torch_save, atomic_write_json, load_yaml

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------------------------------------
# config: dataclass defaults <- recipe YAML section <- command-line flags
# ---------------------------------------------------------------------------------------------

def add_dataclass_args(ap: argparse.ArgumentParser, cls) -> None:
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
        if isinstance(default, bool):
            ap.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction)
        elif isinstance(default, list):
            ap.add_argument(flag, dest=f.name, default=None, type=lambda s: [x for x in s.split(",") if x])
        elif isinstance(default, int):
            ap.add_argument(flag, dest=f.name, default=None, type=int)
        elif isinstance(default, float):
            ap.add_argument(flag, dest=f.name, default=None, type=float)
        else:
            ap.add_argument(flag, dest=f.name, default=None, type=str)


def build_config(cls, args: argparse.Namespace, section: str):
    """cls defaults, then `section` of --recipe (if any), then flags given on the command line."""
    values: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    if getattr(args, "recipe", None):
        recipe = load_yaml(args.recipe)
        sec = dict(recipe.get(section) or {})
        unknown = set(sec) - names
        if unknown:
            raise SystemExit(f"{args.recipe}: unknown {section} settings {sorted(unknown)}")
        values.update(sec)
    for n in names:
        v = getattr(args, n, None)
        if v is not None:
            values[n] = v
    return cls(**values)


# ---------------------------------------------------------------------------------------------
# model pieces
# ---------------------------------------------------------------------------------------------

def n_layers(model) -> int:
    return int(model.config.num_hidden_layers)


def lora_config(model, *, r: int, alpha: float, dropout: float, targets: Sequence[str],
                top_layers: int = 0):
    """peft LoraConfig; top_layers > 0 puts adapters on the last N transformer blocks only."""
    from peft import LoraConfig
    kw: dict[str, Any] = {}
    if top_layers and top_layers < n_layers(model):
        L = n_layers(model)
        kw["layers_to_transform"] = list(range(L - top_layers, L))
        kw["layers_pattern"] = "layers"
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                      bias="none", task_type="CAUSAL_LM", **kw)


def trainable_state(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.named_parameters() if v.requires_grad}


def load_trainable_state(model, state: dict) -> None:
    params = dict(model.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise ValueError(f"checkpoint has parameters this model lacks: {missing[:3]}...")
    import torch
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v.to(params[k].device, params[k].dtype))


def autocast(device: str, precision: str):
    """bf16 autocast on request (or 'auto' on CUDA); a no-op context for fp32."""
    import contextlib
    import torch
    if precision == "bf16" or (precision == "auto" and device.startswith("cuda")):
        return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_lambda(warmup: int, total: int, min_ratio: float = 0.1):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if total <= warmup:
            return 1.0
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    return f


# ---------------------------------------------------------------------------------------------
# torchrun (DDP): WORLD_SIZE / RANK / LOCAL_RANK from the launcher; a plain run is world 1
# ---------------------------------------------------------------------------------------------

def init_distributed(device: str) -> tuple[int, int, str]:
    """(world, rank, device). Under torchrun: NCCL on CUDA (one GPU per process), else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0, device
    import torch
    import torch.distributed as dist
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return world, rank, device


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist
        dist.barrier()


def finish_distributed(world: int) -> None:
    if world > 1:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def all_sum(world: int, device: str, *values: float) -> tuple:
    if world <= 1:
        return values
    import torch
    import torch.distributed as dist
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return tuple(t.tolist())


def no_sync(model):
    """DDP's no_sync for accumulation micro-batches; a plain model has nothing to sync."""
    import contextlib
    return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# data order
# ---------------------------------------------------------------------------------------------

def batch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                bucket: int = 64) -> list[list[int]]:
    """Length-bucketed batches for one epoch, a pure function of (lengths, seed, epoch): shuffle,
    sort within windows of batch_size*bucket so batches hold similar lengths (little padding), then
    shuffle the batches."""
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    window = max(batch_size, batch_size * bucket)
    batches: list[list[int]] = []
    for w in range(0, len(idx), window):
        chunk = sorted(idx[w:w + window], key=lambda i: lengths[i])
        batches.extend(chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------

_CKPT = re.compile(r"^ckpt-(\d+)\.pt$")


class Checkpointer:
    """out_dir/checkpoints/ckpt-<step>.pt, written atomically; keeps the newest `keep`."""

    def __init__(self, out_dir: str | os.PathLike, keep: int = 2):
        self.dir = Path(out_dir) / "checkpoints"
        self.keep = max(1, keep)

    def list(self) -> list[tuple[int, Path]]:
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.iterdir():
            m = _CKPT.match(p.name)
            if m:
                out.append((int(m.group(1)), p))
        return sorted(out)

    def cleanup_partial(self) -> None:
        """Temp files of a write that was killed midway."""
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                if p.name.startswith(".") and p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)

    def save(self, state: dict, step: int) -> Path:
        path = self.dir / f"ckpt-{step:07d}.pt"
        atomic_torch_save(state, path)
        for _, old in self.list()[:-self.keep]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self) -> dict | None:
        """The newest checkpoint that loads; a corrupt one is skipped (and reported)."""
        import torch
        self.cleanup_partial()
        for step, path in reversed(self.list()):
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except Exception as e:  # noqa: BLE001
                print(f"[resume] checkpoint {path.name} unreadable ({type(e).__name__}); trying an older one")
        return None


def rng_state() -> dict:
    import torch
    st = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    import torch
    random.setstate(st["python"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# settings a resumed run must share with its checkpoint: they shape the optimiser state, the LR
# schedule and the batches that the checkpoint restores (a changed --lr would be silently undone)
RESUME_SETTINGS = ("lr", "head_lr", "warmup_steps", "min_lr_ratio", "epochs", "max_steps", "lora_r", "lora_alpha",
                   "lora_dropout", "lora_targets", "top_layers", "batch_size", "grad_accum", "seed")


def run_ident(cfg: Any, data: Sequence, **extra) -> dict:
    """What a checkpoint records and a resuming run must match: a hash of the encoded data (token ids,
    not just their lengths), the cfg's RESUME_SETTINGS it has, and `extra`."""
    import hashlib
    digest = hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]
    return {"data_hash": digest, **{k: getattr(cfg, k) for k in RESUME_SETTINGS if hasattr(cfg, k)}, **extra}


def check_resume_compatible(saved: dict, current: dict, keys: Sequence[str]) -> None:
    diff = {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}
    if diff:
        raise SystemExit(
            "the checkpoint in the output dir was made with different settings "
            f"{diff}; use a new --out or delete its checkpoints/ to start over")


# ---------------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------------

class Progress:
    """Step log with tokens/s; kept in memory and written into the final log JSON."""

    def __init__(self, total_steps: int, every: int, start_step: int = 0, quiet: bool = False):
        self.total, self.every, self.quiet = total_steps, max(1, every), quiet
        self.t0 = self.t_last = time.time()
        self.tokens = self.tokens_last = 0
        self.history: list[dict] = []
        self.loss_acc, self.loss_n = 0.0, 0
        self.start_step = start_step

    def add(self, step: int, loss: float, tokens: int, lr: float, extra: dict | None = None) -> None:
        self.tokens += tokens
        self.loss_acc += loss
        self.loss_n += 1
        if step % self.every == 0 or step == self.total:
            now = time.time()
            rec = {"step": step, "loss": round(self.loss_acc / self.loss_n, 5), "lr": lr,
                   "tok_per_s": round((self.tokens - self.tokens_last) / max(1e-9, now - self.t_last), 1),
                   "elapsed_s": round(now - self.t0, 1), **(extra or {})}
            self.history.append(rec)
            eta = (now - self.t0) / max(1, step - self.start_step) * (self.total - step)
            if not self.quiet:
                    print(f"step {step}/{self.total} loss {rec['loss']:.4f} lr {lr:.2e} "
                      f"{rec['tok_per_s']:.0f} tok/s eta {eta / 60:.1f} min"
                      + "".join(f" {k} {v}" for k, v in (extra or {}).items()), flush=True)
            self.t_last, self.tokens_last = now, self.tokens
            self.loss_acc, self.loss_n = 0.0, 0

    def summary(self) -> dict:
        dt = time.time() - self.t0
        return {"tokens": self.tokens, "seconds": round(dt, 1),
                "tok_per_s": round(self.tokens / max(1e-9, dt), 1)}


def save_adapter_atomic(model, out_dir: str | os.PathLike) -> Path:
    """peft save_pretrained into a temp dir, then swap it into place."""
    import shutil
    out = Path(out_dir)
    tmp = out.with_name("." + out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), safe_serialization=True)
    old = out.with_name("." + out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)
    return out


def write_log(path: str | os.PathLike, obj: dict) -> None:
    atomic_write_json(path, json.loads(json.dumps(obj, default=str)))
