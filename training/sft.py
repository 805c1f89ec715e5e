"""Policy SFT: LoRA on the base model over (question, solution text) pairs; loss on the solution only.

Input = build_prompt(question) + text (+ EOS). Length-bucketed batches (no cross-example packing:
masking stays exact), grad accumulation, warmup + cosine LR, bf16 autocast on CUDA, resumable
checkpoints (rerun the same command to continue), final peft adapter + train_log.json.

    python -m training.sft --data training/data/bootstrap_gsm8k.jsonl --out runs/sft-r1 \
        --recipe training/recipes/cpu-small.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
class SFTConfig:
    data: str = "training/data/bootstrap_gsm8k.jsonl"
    out: str = "runs/sft"
    base: str = ""                 # GGUF file or HF dir; '' = the shipped SmolLM2-135M Q4_1
    max_seq_len: int = 384         # longer examples are dropped (truncation would cut the answer)
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    epochs: float = 1.0
    max_steps: int = 0             # 0 = epochs decide
    subset: int = 0                # use N examples (seeded choice); 0 = all
    eval_size: int = 0             # held out for a loss estimate at the end
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: list = field(default_factory=lambda: list(loop.LORA_TARGETS))
    top_layers: int = 0            # LoRA on the last N blocks only (0 = all)
    add_eos: bool = True
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"           # auto | cpu | cuda | cuda:1
    precision: str = "auto"        # auto (bf16 on cuda, fp32 on cpu) | fp32 | bf16
    threads: int = 0               # torch CPU threads (0 = torch default)
    save_every: int = 50           # optimizer steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2
    log_every: int = 5
    init_adapter: str = ""         # start from an existing adapter (peft dir or .gguf; else a fresh LoRA)
    stop_after: int = 0            # testing: exit after N steps of this invocation, as if killed


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def load_examples(path: str) -> list[dict]:
    """Rows with question + text (bootstrap / extract output) or prompt + completion."""
    rows = read_jsonl(path)
    out = []
    for r in rows:
        if "question" in r and "text" in r:
            out.append({"id": r.get("id"), "question": r["question"], "text": r["text"]})
        elif "prompt" in r and "completion" in r:
            out.append({"id": r.get("id"), "prompt": r["prompt"], "text": r["completion"]})
        else:
            raise ValueError(f"{path}: rows need question+text or prompt+completion, got {sorted(r)}")
    return out


def encode(tok, ex: dict, *, add_eos: bool) -> tuple[list[int], list[int]]:
    """(input_ids, labels): the prompt is masked with -100. Prompt and solution are tokenised
    separately, exactly as at inference (the policy is given the tokenised prompt and continues)."""
    from rstar_app.steps import build_prompt
    prompt = ex.get("prompt") or build_prompt(ex["question"])
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(ex["text"], add_special_tokens=False)["input_ids"]
    if add_eos and tok.eos_token_id is not None:
        c = c + [tok.eos_token_id]
    return p + c, [-100] * len(p) + c


def select(examples: list, subset: int, eval_size: int, seed: int) -> tuple[list, list]:
    """(train, eval): a seeded shuffle; eval takes whole problems (same question or prompt) until it
    holds eval_size rows, so an up-weighted trajectory (evolve repeats the round's own ones) or the
    other trajectory of the same problem cannot sit on both sides. With one row per problem (the
    bootstrap set) this is the first eval_size rows of the shuffle, as training.unseen assumes.
    `subset` then caps the training rows."""
    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    key = lambda ex: ex.get("question") or ex.get("prompt") or ex.get("text")  # noqa: E731
    held: set = set()
    ev, tr = [], []
    for i in idx:
        k = key(examples[i])
        if k not in held and len(ev) < eval_size:
            held.add(k)
        (ev if k in held else tr).append(i)
    if subset:
        tr = tr[:subset]
    return [examples[i] for i in tr], [examples[i] for i in ev]


def collate(items: list[tuple[list[int], list[int]]], pad_id: int):
    import torch
    L = max(len(x) for x, _ in items)
    ids = torch.full((len(items), L), pad_id, dtype=torch.long)
    lab = torch.full((len(items), L), -100, dtype=torch.long)
    att = torch.zeros((len(items), L), dtype=torch.long)
    for i, (x, y) in enumerate(items):
        ids[i, :len(x)] = torch.tensor(x)
        lab[i, :len(y)] = torch.tensor(y)
        att[i, :len(x)] = 1
    return ids, att, lab


def token_loss_sum(model, ids, att, lab):
    """Summed next-token cross-entropy over labelled positions, and their count."""
    import torch.nn.functional as F
    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
    tgt = lab[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1),
                           ignore_index=-100, reduction="sum")
    return loss, int((tgt != -100).sum())


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------

def train(cfg: SFTConfig) -> dict:
    import torch
    from peft import PeftModel, get_peft_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    world, rank, device = loop.init_distributed(device)
    main_proc = rank == 0
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    t_load = time.time()
    base_path = resolve_base(cfg.base)
    model, tok = load_base(base_path)
    if main_proc:
        print(f"[sft] base {base_path} loaded in {time.time() - t_load:.1f}s; device {device}", flush=True)
    if cfg.init_adapter:  # continue a previous round's policy (a shipped adapter GGUF is imported to peft)
        from training.export import as_peft_dir
        init = as_peft_dir(cfg.init_adapter, out / "init_adapter", base=str(base_path))
        model = PeftModel.from_pretrained(model, init, is_trainable=True)
        if cfg.top_layers:  # train only the top blocks' LoRA: backward then stops there (~1.4x faster on CPU)
            low = loop.n_layers(model) - cfg.top_layers
            for name, p in model.named_parameters():
                if p.requires_grad and ".layers." in name and int(name.split(".layers.")[1].split(".")[0]) < low:
                    p.requires_grad_(False)
    else:
        model = get_peft_model(model, loop.lora_config(
            model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
            targets=cfg.lora_targets, top_layers=cfg.top_layers))
    model.to(device)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fwd = model
    if world > 1:  # torchrun: one process per GPU, batches split by rank, gradients all-reduced
        fwd = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)

    # data
    examples = load_examples(cfg.data)
    train_ex, eval_ex = select(examples, cfg.subset, cfg.eval_size, cfg.seed)
    enc, dropped = [], 0
    for ex in train_ex:
        x, y = encode(tok, ex, add_eos=cfg.add_eos)
        if len(x) > cfg.max_seq_len:
            dropped += 1
            continue
        enc.append((x, y))
    if not enc:
        raise SystemExit(f"no training example left: {len(train_ex)} after holding out {len(eval_ex)} for eval "
                         f"(eval_size={cfg.eval_size}), {dropped} longer than max_seq_len={cfg.max_seq_len}")
    eval_enc = [e for e in (encode(tok, ex, add_eos=cfg.add_eos) for ex in eval_ex) if len(e[0]) <= cfg.max_seq_len]
    lengths = [len(x) for x, _ in enc]
    micro_per_epoch = math.ceil(len(enc) / cfg.batch_size)
    per_step = cfg.grad_accum * world   # micro-batches per optimizer step, over all processes
    steps_per_epoch = max(1, micro_per_epoch // per_step)
    total_steps = cfg.max_steps or max(1, int(math.ceil(cfg.epochs * steps_per_epoch)))
    if main_proc:
        print(f"[sft] {len(enc)} examples ({dropped} longer than {cfg.max_seq_len} dropped), "
          f"{sum(lengths):,} tokens/epoch, {n_train:,} trainable params, {total_steps} steps", flush=True)

    if micro_per_epoch < per_step:
        raise SystemExit(f"{micro_per_epoch} batches per epoch < grad_accum x processes = {per_step}: lower one of them")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, loop.lr_lambda(cfg.warmup_steps, total_steps, cfg.min_lr_ratio))

    # resume
    ck = loop.Checkpointer(out, cfg.keep_checkpoints)
    step, epoch, micro = 0, 0, 0
    history: list[dict] = []
    ident = {**loop.run_ident(cfg, [x for x, _ in enc], init_adapter=cfg.init_adapter or None, world=world),
             "base": str(base_path)}  # recorded, not compared: the same base sits at another path elsewhere
    state = ck.load_latest()
    if state is not None:
        loop.check_resume_compatible(state["ident"], ident, [k for k in ident if k != "base"])
        loop.load_trainable_state(model, state["trainable"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        loop.set_rng_state(state["rng"])
        step, epoch, micro = state["step"], state["epoch"], state["micro"]
        history = state.get("history", [])
        print(f"[sft] resumed from step {step} (epoch {epoch}, batch {micro})", flush=True)

    def checkpoint():
        if not main_proc:
            loop.barrier(world)
            return
        ck.save({"trainable": loop.trainable_state(model), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "rng": loop.rng_state(), "step": step,
                 "epoch": epoch, "micro": micro, "ident": ident,
                 "history": history + prog.history, "config": dataclasses.asdict(cfg)}, step)
        loop.barrier(world)

    prog = loop.Progress(total_steps, cfg.log_every, start_step=step, quiet=not main_proc)
    model.train()
    order = loop.batch_order(lengths, cfg.batch_size, cfg.seed, epoch)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    while step < total_steps:
        if micro + per_step > len(order):  # epoch boundary (a ragged tail group is skipped)
            epoch, micro = epoch + 1, 0
            order = loop.batch_order(lengths, cfg.batch_size, cfg.seed, epoch)
        group = order[micro:micro + per_step]
        # the loss is normalised by the labelled tokens of the whole step (all processes)
        n_tok_group = sum(sum(1 for t in enc[i][1][1:] if t != -100) for b in group for i in b)
        mine = group[rank::world]
        opt.zero_grad(set_to_none=True)
        loss_total, tokens_in = 0.0, 0
        for j, b in enumerate(mine):
            ids, att, lab = (t.to(device) for t in collate([enc[i] for i in b], pad))
            sync = loop.no_sync(fwd) if j < len(mine) - 1 else contextlib.nullcontext()
            with sync:
                with loop.autocast(device, cfg.precision):
                    loss_sum, _ = token_loss_sum(fwd, ids, att, lab)
                # DDP averages gradients over processes: scale back to a sum
                (loss_sum * world / n_tok_group).backward()
            loss_total += float(loss_sum.detach())
            tokens_in += int(att.sum())
        loss_total, tokens_in = loop.all_sum(world, device, loss_total, tokens_in)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        step += 1
        micro += per_step
        prog.add(step, loss_total / n_tok_group, tokens_in, sched.get_last_lr()[0], {"epoch": epoch})
        if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
            checkpoint()
        if cfg.stop_after and step - prog.start_step >= cfg.stop_after and step < total_steps:
            print(f"[sft] stop_after={cfg.stop_after}: stopping at step {step} without saving", flush=True)
            loop.finish_distributed(world)
            return {"stopped_at": step}

    run_summary = prog.summary()  # training only: evaluation and saving are not in tokens/s
    eval_loss = evaluate(model, eval_enc, cfg, device, pad) if eval_enc and main_proc else None
    adapter_dir = loop.save_adapter_atomic(model, out / "adapter") if main_proc else out / "adapter"
    checkpoint()  # the final state too: a rerun of a finished run is a no-op
    loop.finish_distributed(world)
    if not main_proc:
        return {"rank": rank, "steps": step}
    log = {"stage": "sft", "command": command_line(), "config": dataclasses.asdict(cfg),
           "device": device, "processes": world, "base": str(base_path), "examples": len(enc), "dropped_too_long": dropped,
           "tokens_per_epoch": sum(lengths), "trainable_params": n_train, "steps": step,
           "epochs_seen": epoch + micro / max(1, len(order)), "eval_loss": eval_loss,
           "final_loss": (history + prog.history)[-1]["loss"] if (history + prog.history) else None,
           "this_run": run_summary, "history": history + prog.history,
           "adapter": str(adapter_dir)}
    loop.write_log(out / "train_log.json", log)
    print(f"[sft] done: {step} steps, {log['this_run']['tok_per_s']} tok/s this run, "
          f"eval_loss {eval_loss}, adapter {adapter_dir}", flush=True)
    return log


def evaluate(model, enc, cfg: SFTConfig, device: str, pad: int) -> float:
    import torch
    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for b in range(0, len(enc), cfg.batch_size):
            ids, att, lab = (t.to(device) for t in collate(enc[b:b + cfg.batch_size], pad))
            with loop.autocast(device, cfg.precision):
                s, k = token_loss_sum(model, ids, att, lab)
            tot += float(s)
            n += k
    model.train()
    return round(tot / max(1, n), 5)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="policy SFT (LoRA)")
    ap.add_argument("--recipe", help="YAML recipe; its `sft:` section sets defaults")
    loop.add_dataclass_args(ap, SFTConfig)
    args = ap.parse_args(argv)
    return train(loop.build_config(SFTConfig, args, "sft"))


if __name__ == "__main__":
    main()
