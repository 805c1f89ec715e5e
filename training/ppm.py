"""Process preference model: policy-initialised LM + new LoRA + value head, Bradley-Terry on step pairs.

Model: base, with the policy LoRA merged in (torch), a fresh LoRA on top, and a value head
Linear(hidden, 1) on the final-norm hidden state of the last token; score = tanh(head(h)).
Loss (rStar-Math): -E[log sigmoid(bt_scale * (r(prefix+pos) - r(prefix+neg)))].
Held-out pairs (split by problem, so no prefix leaks) report pair accuracy before and after.

Export (what rstar_app.models.llama_cpp.LlamaPPM loads): one adapter GGUF that stacks the policy
LoRA and the PPM LoRA (llama.cpp applies one adapter per context), and value_head.npz.
The string scored is exactly `prefix + pos`, tokenised whole, as LlamaPPM does.

    python -m training.ppm --pairs pairs.jsonl --policy-adapter runs/sft/adapter --out runs/ppm
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training import loop  # noqa: E402
from training.common import command_line, load_base, pick_device, read_jsonl, resolve_base  # noqa: E402


@dataclass
class PPMConfig:
    pairs: str = "pairs.jsonl"
    extra_pairs: list = field(default_factory=list)  # training-only pair files (training/negatives.py)
    out: str = "runs/ppm"
    base: str = ""
    policy_adapter: str = ""       # peft dir or adapter .gguf merged into the base first ('' = plain base)
    max_seq_len: int = 512         # pairs with a longer side are dropped
    batch_size: int = 4            # pairs per micro-batch (2x sequences)
    grad_accum: int = 2
    lr: float = 1e-4               # LoRA
    head_lr: float = 1e-3          # value head
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    epochs: float = 1.0
    max_steps: int = 0
    subset: int = 0
    eval_frac: float = 0.1         # share of problems held out
    eval_max: int = 256            # held-out pairs evaluated at most
    bt_scale: float = 1.0
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: list = field(default_factory=lambda: list(loop.LORA_TARGETS))
    top_layers: int = 0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0
    save_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 5
    export: bool = True            # write ppm.gguf (+ value_head.npz) into out/ at the end
    export_dtype: str = "f16"      # f16 | f32: the adapter GGUF's tensors (evolve: the recipe's export.dtype)
    stop_after: int = 0            # testing: exit after N steps of this invocation, as if killed


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------

class ValueModel:
    """LM backbone (with LoRA) + Linear(hidden, 1) head; score = tanh(head(h_last))."""

    def __init__(self, peft_model, head):
        self.lm = peft_model
        self.head = head
        self.backbone = peft_model.get_base_model().model  # LlamaModel: final-norm hidden states

    def scores(self, ids, att):
        import torch
        h = self.backbone(input_ids=ids, attention_mask=att).last_hidden_state
        last = att.sum(1) - 1
        h_last = h[torch.arange(h.size(0), device=h.device), last].float()
        with torch.autocast(device_type=h.device.type, enabled=False):  # the head stays fp32
            return torch.tanh(self.head(h_last).squeeze(-1))

    def train(self, mode: bool = True):
        self.lm.train(mode)
        self.head.train(mode)


def build_model(cfg: PPMConfig, device: str):
    import torch
    from peft import PeftModel, get_peft_model
    base_path = resolve_base(cfg.base)
    model, tok = load_base(base_path)
    if cfg.policy_adapter:
        model = PeftModel.from_pretrained(model, cfg.policy_adapter).merge_and_unload()
    peft_model = get_peft_model(model, loop.lora_config(
        model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=cfg.lora_targets,
        top_layers=cfg.top_layers))
    head = torch.nn.Linear(model.config.hidden_size, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    peft_model.to(device)
    head.to(device)
    return ValueModel(peft_model, head), tok, base_path


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def split_key(pair: dict) -> str:
    return str(pair.get("problem_id") or pair["prefix"][:2000])


def split_pairs(pairs: list[dict], eval_frac: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out set by problem (hash of problem id), so no prefix is shared across the split."""
    def bucket(p):
        h = hashlib.sha256(f"{seed}:{split_key(p)}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64
    tr = [p for p in pairs if bucket(p) >= eval_frac]
    ev = [p for p in pairs if bucket(p) < eval_frac]
    return tr, ev


def encode_pair(tok, p: dict) -> tuple[list[int], list[int]]:
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return enc(p["prefix"] + p["pos"]), enc(p["prefix"] + p["neg"])


def collate_pairs(items, pad_id: int):
    """[(pos_ids, neg_ids)] -> ids/att of 2B sequences: pos rows first, then neg rows."""
    import torch
    seqs = [x for x, _ in items] + [y for _, y in items]
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        att[i, :len(s)] = 1
    return ids, att


def bt_loss(r, n_pairs: int, scale: float):
    import torch.nn.functional as F
    pos, neg = r[:n_pairs], r[n_pairs:]
    return -F.logsigmoid(scale * (pos - neg)), pos, neg


def evaluate(vm: ValueModel, enc, cfg: PPMConfig, device: str, pad: int, kinds: list[str] | None = None) -> dict:
    """Pair accuracy (ties count half), BT loss and mean margin; with `kinds`, accuracy per kind."""
    import torch
    if not enc:
        return {"pairs": 0, "accuracy": None}
    vm.train(False)
    loss, margin = 0.0, 0.0
    hits: list[float] = []
    with torch.no_grad():
        for b in range(0, len(enc), cfg.batch_size):
            items = enc[b:b + cfg.batch_size]
            ids, att = (t.to(device) for t in collate_pairs(items, pad))
            with loop.autocast(device, cfg.precision):
                r = vm.scores(ids, att)
            l, pos, neg = bt_loss(r.float(), len(items), cfg.bt_scale)
            hits += ((pos > neg).float() + 0.5 * (pos == neg).float()).tolist()
            loss += float(l.sum())
            margin += float((pos - neg).sum())
    vm.train(True)
    n = len(enc)
    correct = sum(hits)
    out = {"pairs": n, "accuracy": round(correct / n, 4), "loss": round(loss / n, 5), "mean_margin": round(margin / n, 5)}
    if kinds:
        out["by_kind"] = accuracy_by_kind(kinds, hits)
    return out


def accuracy_by_kind(kinds: list[str], hits: list[float]) -> dict:
    """{kind: {pairs, accuracy}} from per-pair hits (1 right, 0.5 tie, 0 wrong)."""
    by: dict[str, list[float]] = {}
    for k, h in zip(kinds, hits):
        by.setdefault(k, []).append(h)
    return {k: {"pairs": len(v), "accuracy": round(sum(v) / len(v), 4)} for k, v in sorted(by.items())}


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------

def train(cfg: PPMConfig) -> dict:
    import torch
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    t0 = time.time()
    if cfg.policy_adapter.endswith(".gguf"):  # a shipped llama.cpp adapter: back to peft first
        from training.export import as_peft_dir
        cfg = dataclasses.replace(cfg, policy_adapter=as_peft_dir(cfg.policy_adapter, out / "policy_adapter",
                                                                   base=cfg.base or None))
    vm, tok, base_path = build_model(cfg, device)
    print(f"[ppm] model ready in {time.time() - t0:.1f}s on {device}", flush=True)
    pairs = read_jsonl(cfg.pairs)
    tr, ev = split_pairs(pairs, cfg.eval_frac, cfg.seed)
    # extra (synthetic) pairs are split by problem the same way; their held-out part is reported on
    # its own (does the PPM learn them at all?), while the publish gate reads the MCTS pairs only
    extra, extra_ev = split_pairs([p for f in cfg.extra_pairs for p in read_jsonl(f)], cfg.eval_frac, cfg.seed)
    tr += extra
    rng = random.Random(cfg.seed)
    rng.shuffle(tr)
    if cfg.subset:
        tr = tr[: cfg.subset]
    ev, extra_ev = ev[: cfg.eval_max], extra_ev[: cfg.eval_max]

    def enc_all(ps):
        kept, dropped, kinds = [], 0, []
        for p in ps:
            x, y = encode_pair(tok, p)
            if max(len(x), len(y)) > cfg.max_seq_len:
                dropped += 1
            else:
                kept.append((x, y))
                kinds.append(str(p.get("kind") or "step"))
        return kept, dropped, kinds

    enc, dropped, _ = enc_all(tr)
    eval_enc, _, eval_kinds = enc_all(ev)
    extra_eval_enc, _, _ = enc_all(extra_ev)

    def evaluate_all() -> dict:
        return {"mcts": evaluate(vm, eval_enc, cfg, device, pad, eval_kinds),
                "extra": evaluate(vm, extra_eval_enc, cfg, device, pad) if extra_eval_enc else None}
    if not enc:
        raise SystemExit(f"no training pair fits max_seq_len={cfg.max_seq_len} ({len(pairs)} pairs in {cfg.pairs})")
    lengths = [max(len(x), len(y)) for x, y in enc]
    micro_per_epoch = math.ceil(len(enc) / cfg.batch_size)
    if micro_per_epoch < cfg.grad_accum:
        raise SystemExit(f"{micro_per_epoch} batches per epoch < grad_accum={cfg.grad_accum}")
    total_steps = cfg.max_steps or max(1, int(math.ceil(cfg.epochs * (micro_per_epoch // cfg.grad_accum))))
    print(f"[ppm] {len(enc)} train pairs ({len(extra)} extra, {dropped} too long), {len(eval_enc)} held-out, "
          f"{total_steps} steps", flush=True)

    lora_params = [p for p in vm.lm.parameters() if p.requires_grad]
    head_params = list(vm.head.parameters())
    opt = torch.optim.AdamW([{"params": lora_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.head_lr}],
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, loop.lr_lambda(cfg.warmup_steps, total_steps, cfg.min_lr_ratio))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    ck = loop.Checkpointer(out, cfg.keep_checkpoints)
    ident = loop.run_ident(cfg, enc, policy_adapter=cfg.policy_adapter)
    step, epoch, micro, history = 0, 0, 0, []
    eval_before = None
    state = ck.load_latest()
    if state is not None:
        loop.check_resume_compatible(state["ident"], ident, list(ident))
        loop.load_trainable_state(vm.lm, state["trainable"])
        vm.head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        loop.set_rng_state(state["rng"])
        step, epoch, micro = state["step"], state["epoch"], state["micro"]
        history, eval_before = state.get("history", []), state.get("eval_before")
        if eval_before is not None and "mcts" not in eval_before:  # a checkpoint from before extra pairs
            eval_before = {"mcts": eval_before, "extra": None}
        print(f"[ppm] resumed from step {step}", flush=True)
    else:
        eval_before = evaluate_all()
        print(f"[ppm] held-out before training: {eval_before['mcts']}; extra pairs: {eval_before['extra']}", flush=True)

    prog = loop.Progress(total_steps, cfg.log_every, start_step=step)

    def checkpoint():
        ck.save({"trainable": loop.trainable_state(vm.lm), "head": vm.head.state_dict(),
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": loop.rng_state(),
                 "step": step, "epoch": epoch, "micro": micro, "ident": ident, "eval_before": eval_before,
                 "history": history + prog.history, "config": dataclasses.asdict(cfg)}, step)

    vm.train(True)
    order = loop.batch_order(lengths, cfg.batch_size, cfg.seed, epoch)
    while step < total_steps:
        if micro + cfg.grad_accum > len(order):
            epoch, micro = epoch + 1, 0
            order = loop.batch_order(lengths, cfg.batch_size, cfg.seed, epoch)
        group = order[micro:micro + cfg.grad_accum]
        n_pairs = sum(len(b) for b in group)
        opt.zero_grad(set_to_none=True)
        tot, acc, toks = 0.0, 0, 0
        for b in group:
            items = [enc[i] for i in b]
            ids, att = (t.to(device) for t in collate_pairs(items, pad))
            with loop.autocast(device, cfg.precision):
                r = vm.scores(ids, att)
            l, pos, neg = bt_loss(r.float(), len(items), cfg.bt_scale)
            (l.sum() / n_pairs).backward()
            tot += float(l.detach().sum())
            acc += int((pos > neg).sum())
            toks += int(att.sum())
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(lora_params + head_params, cfg.grad_clip)
        opt.step()
        sched.step()
        step += 1
        micro += cfg.grad_accum
        prog.add(step, tot / n_pairs, toks, sched.get_last_lr()[0], {"train_acc": round(acc / n_pairs, 3)})
        if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
            checkpoint()
        if cfg.stop_after and step - prog.start_step >= cfg.stop_after and step < total_steps:
            return {"stopped_at": step}

    run_summary = prog.summary()  # training only: evaluation and saving are not in tokens/s
    eval_after = evaluate_all()
    print(f"[ppm] held-out after training: {eval_after['mcts']}; extra pairs: {eval_after['extra']}", flush=True)
    adapter_dir = loop.save_adapter_atomic(vm.lm, out / "ppm_adapter")
    from training.export import export_value_head
    head_path = export_value_head(vm.head.weight.detach().cpu().numpy(), vm.head.bias.detach().cpu().numpy(),
                                  out / "value_head.npz", meta={"bt_scale": cfg.bt_scale, "policy_adapter": cfg.policy_adapter})
    checkpoint()
    files = {"ppm_adapter": str(adapter_dir), "value_head": str(head_path)}
    if cfg.export:
        try:
            from training.export import export_lora
            stack = [cfg.policy_adapter] if cfg.policy_adapter else None
            files["ppm_gguf"] = str(export_lora(adapter_dir, out / "ppm.gguf", base=base_path, stack=stack,
                                                  dtype=cfg.export_dtype))
        except ImportError as e:
            print(f"[ppm] GGUF export skipped ({e}); run training.export later", flush=True)
    log = {"stage": "ppm", "command": command_line(), "config": dataclasses.asdict(cfg), "device": device,
           "base": str(base_path), "pairs_total": len(pairs), "extra_pairs": len(extra), "train_pairs": len(enc), "dropped_too_long": dropped,
           "eval_before": eval_before["mcts"], "eval_after": eval_after["mcts"],
           "eval_extra_before": eval_before["extra"], "eval_extra_after": eval_after["extra"], "steps": step, "this_run": run_summary,
           "history": history + prog.history, "files": files}
    loop.write_log(out / "train_log.json", log)
    return log


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="PPM training (Bradley-Terry on step pairs)")
    ap.add_argument("--recipe", help="YAML recipe; its `ppm:` section sets defaults")
    loop.add_dataclass_args(ap, PPMConfig)
    args = ap.parse_args(argv)
    return train(loop.build_config(PPMConfig, args, "ppm"))


if __name__ == "__main__":
    main()
