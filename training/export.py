"""peft LoRA adapter -> llama.cpp LoRA GGUF; PPM value head -> .npz; sha256 of everything.

llama.cpp (0.3.36 / vendored 0c1e570) adapter layout, as its loader checks it:
  KV: general.architecture (must equal the base's), general.type = "adapter",
      adapter.type = "lora", adapter.lora.alpha (float32; scale = alpha / rank, or 1 when alpha = 0).
  Tensors: "<base tensor name>.lora_a" / ".lora_b", e.g. blk.3.attn_q.weight.lora_a.
  Shapes: lora_a is peft's lora_A as is (numpy [r, in] -> ggml ne [in, r]), lora_b is peft's lora_B
  as is ([out, r] -> ne [r, out]); the loader requires a.ne[0] == W.ne[0], b.ne[1] == W.ne[1],
  a.ne[1] == b.ne[0].
  Llama q/k: the GGUF base stores attn_q / attn_k rows permuted for its RoPE layout (transformers
  un-permutes them when it loads a GGUF), so lora_b of q and k gets the same row permutation
  (n_head for q, n_head_kv for k). lora_a is untouched (the permutation acts on output rows).
  Other architectures (qwen2) keep the HF row order in their GGUF: their lora_b is written as is.

    python -m training.export --adapter runs/sft/adapter --out weights/policy-r1.gguf [--verify]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from training.common import atomic_path, atomic_write_json, base_gguf_path, command_line, resolve_base, sha256_file  # noqa: E402

HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------

def base_hparams(base: str | os.PathLike | None) -> dict:
    """architecture, n_head, n_head_kv, n_layer, hidden of a GGUF file or an HF directory."""
    path = resolve_base(base)
    if path.is_file():
        import gguf
        r = gguf.GGUFReader(str(path))
        arch = r.fields["general.architecture"].contents()
        get = lambda k: r.fields[f"{arch}.{k}"].contents()  # noqa: E731
        return {"arch": arch, "n_head": int(get("attention.head_count")),
                "n_head_kv": int(get("attention.head_count_kv")), "n_layer": int(get("block_count")),
                "hidden": int(get("embedding_length"))}
    cfg = json.loads((path / "config.json").read_text())
    arch = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}.get(
        (cfg.get("architectures") or ["LlamaForCausalLM"])[0], "llama")
    return {"arch": arch, "n_head": cfg["num_attention_heads"],
            "n_head_kv": cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
            "n_layer": cfg["num_hidden_layers"], "hidden": cfg["hidden_size"]}


def read_peft(adapter_dir: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file
    d = Path(adapter_dir)
    cfg = json.loads((d / "adapter_config.json").read_text())
    return cfg, load_file(str(d / "adapter_model.safetensors"))


def peft_scale(cfg: dict) -> float:
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError("per-module rank/alpha patterns are not supported by this exporter")
    r, alpha = cfg["r"], cfg["lora_alpha"]
    return alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r


def lora_pairs(tensors: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{gguf base tensor name: (A [r, in], B [out, r])} from peft's saved names."""
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, t in tensors.items():
        if ".lora_A." in name:
            which, stem = "A", name.split(".lora_A.")[0]
        elif ".lora_B." in name:
            which, stem = "B", name.split(".lora_B.")[0]
        else:
            raise ValueError(f"unexpected tensor {name!r} in the adapter (only LoRA A/B are exported)")
        if ".layers." not in stem:
            raise ValueError(f"unsupported LoRA target {stem!r} (only transformer-block linears)")
        layer_part = stem.split(".layers.", 1)[1]
        layer, module = layer_part.split(".", 1)
        if module not in HF_TO_GGUF:
            raise ValueError(f"unsupported LoRA target module {module!r}")
        pairs.setdefault(f"blk.{int(layer)}.{HF_TO_GGUF[module]}.weight", {})[which] = t
    out = {}
    for k, v in pairs.items():
        if set(v) != {"A", "B"}:
            raise ValueError(f"{k}: lora_A or lora_B missing")
        out[k] = (v["A"], v["B"])
    return out


# architectures whose GGUF conversion reorders attn_q / attn_k rows (llama.cpp's LlamaModel does;
# Qwen2Model and most others keep the HF order, and transformers undoes it for "llama" only)
ROPE_PERMUTED = frozenset({"llama"})


def rope_heads(tensor: str, arch: str, n_head: int, n_head_kv: int) -> int | None:
    """The head count by which the GGUF reorders `tensor`'s lora_b rows, or None if it keeps them."""
    if arch not in ROPE_PERMUTED:
        return None
    return n_head if ".attn_q." in tensor else n_head_kv if ".attn_k." in tensor else None


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order for RoPE: per head, interleave the two halves."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of permute_rows: llama.cpp's q/k row order back to transformers'."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_lora_gguf(path: str | os.PathLike, *, base=None) -> tuple[float, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(alpha, {gguf base tensor name: (A [r, in], B [out, r])} in HF row order) of an adapter GGUF
    written by write_lora_gguf: the inverse of the exporter (q/k lora_b rows un-permuted)."""
    import gguf
    hp = base_hparams(base)
    r = gguf.GGUFReader(str(path))
    if r.fields.get("adapter.type") is None or r.fields["adapter.type"].contents() != "lora":
        raise ValueError(f"{path} is not a LoRA adapter GGUF")
    alpha = float(r.fields["adapter.lora.alpha"].contents())
    parts: dict[str, dict[str, np.ndarray]] = {}
    for t in r.tensors:
        stem, which = t.name.rsplit(".", 1)  # blk.N.attn_q.weight . lora_a
        # GGUFReader gives numpy arrays in [ne1, ne0] order, i.e. A [r, in] and B [out, r] as written
        parts.setdefault(stem, {})[which] = np.asarray(t.data, dtype=np.float32).reshape(
            [int(x) for x in reversed(t.shape)])
    pairs = {}
    for stem, v in parts.items():
        a, b = v["lora_a"], v["lora_b"]
        if heads := rope_heads(stem, hp["arch"], hp["n_head"], hp["n_head_kv"]):
            b = unpermute_rows(b, heads)
        pairs[stem] = (a, b)
    return alpha, pairs


def _pad_rank(a: np.ndarray, b: np.ndarray, rank: int, *, scaled: bool) -> tuple[np.ndarray, np.ndarray]:
    """A [r, in], B [out, r] as rank-`rank` factors with the same delta under peft's one scale
    alpha / rank: zero rows / columns added, and B times rank / r when the scale depends on the rank."""
    r = a.shape[0]
    if r == rank:
        return a, b
    a = np.concatenate([a, np.zeros((rank - r, a.shape[1]), a.dtype)])
    b = np.concatenate([b * (rank / r if scaled else 1.0), np.zeros((b.shape[0], rank - r), b.dtype)], axis=1)
    return a, b.astype(a.dtype)


def import_lora_gguf(path: str | os.PathLike, out_dir: str | os.PathLike, *, base=None) -> Path:
    """Adapter GGUF -> peft adapter directory (so a shipped policy can initialise the next round's
    PPM, whose training merges a peft policy adapter first). A stacked adapter (alpha 0, scales folded
    into B) imports as one LoRA of summed rank with alpha = rank (scale 1). Tensors of a lower rank
    than the largest (a stacked adapter whose parts cover different layers) are padded with zeros,
    their B scaled so that each keeps llama.cpp's scale, alpha / its own rank (1 when alpha is 0)."""
    import torch
    from peft import get_peft_model

    from training import loop
    from training.common import load_base
    alpha, pairs = read_lora_gguf(path, base=base)
    rank = max(a.shape[0] for a, _ in pairs.values())
    pairs = {k: _pad_rank(a, b, rank, scaled=bool(alpha)) for k, (a, b) in pairs.items()}
    gguf_to_hf = {v: k for k, v in HF_TO_GGUF.items()}
    layers = sorted({int(k.split(".")[1]) for k in pairs})
    targets = sorted({gguf_to_hf[k.split(".")[2]].split(".")[-1] for k in pairs})
    model, _ = load_base(base)
    n = loop.n_layers(model)
    cfg = loop.lora_config(model, r=rank, alpha=alpha if alpha else float(rank), dropout=0.0, targets=targets,
                           top_layers=n - layers[0] if layers == list(range(layers[0], n)) else 0)
    pm = get_peft_model(model, cfg)
    params = dict(pm.named_parameters())
    with torch.no_grad():
        for stem, (a, b) in pairs.items():
            layer, module = int(stem.split(".")[1]), gguf_to_hf[stem.split(".")[2]]
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            params[f"{prefix}.lora_A.default.weight"].copy_(torch.from_numpy(a))
            params[f"{prefix}.lora_B.default.weight"].copy_(torch.from_numpy(b))
    out = Path(out_dir)
    pm.save_pretrained(str(out))
    return out


def as_peft_dir(adapter: str | os.PathLike, cache_dir: str | os.PathLike, *, base=None) -> str:
    """A peft adapter directory for `adapter`: itself when it is one, else (an adapter GGUF, e.g. a
    shipped round) imported once into cache_dir and reused on later calls (resumed runs) while the
    GGUF's sha256 is the one cache_dir records: a redone or republished round (same path, new bytes)
    is imported again instead of silently serving the old adapter."""
    if Path(adapter).is_dir():
        return str(adapter)
    cache, sha = Path(cache_dir), sha256_file(adapter)
    stamp = cache / "imported_from.json"
    fresh = (cache / "adapter_config.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()).get("sha256") == sha
    if not fresh:
        import shutil
        shutil.rmtree(cache, ignore_errors=True)
        import_lora_gguf(adapter, cache, base=base)
        atomic_write_json(stamp, {"adapter": str(adapter), "sha256": sha})
    return str(cache)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------

def write_lora_gguf(out: str | os.PathLike, pairs: dict[str, tuple[np.ndarray, np.ndarray]], *,
                    arch: str, alpha: float, n_head: int, n_head_kv: int, dtype: str = "f16",
                    name: str = "rstar-app LoRA", extra_kv: dict | None = None) -> Path:
    """Write an adapter GGUF. `pairs` are in HF layout; q/k lora_b rows are permuted here where the
    architecture's GGUF permutes them (ROPE_PERMUTED)."""
    import gguf
    out = Path(out)
    np_dtype = {"f16": np.float16, "f32": np.float32}[dtype]
    with atomic_path(out, mode=0o644) as tmp:
        w = gguf.GGUFWriter(tmp, arch=arch)
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_name(name)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        for k, v in (extra_kv or {}).items():
            w.add_string(f"rstar.{k}", str(v))
        def order(k: str):
            parts = k.split(".")
            return (int(parts[1]), parts[2])
        for tname in sorted(pairs, key=order):
            a, b = (np.asarray(x, dtype=np.float32) for x in pairs[tname])
            if heads := rope_heads(tname, arch, n_head, n_head_kv):
                b = permute_rows(b, heads)
            w.add_tensor(tname + ".lora_a", np.ascontiguousarray(a.astype(np_dtype)))
            w.add_tensor(tname + ".lora_b", np.ascontiguousarray(b.astype(np_dtype)))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out


def export_lora(adapter_dir: str | os.PathLike, out: str | os.PathLike, *, base=None,
                dtype: str = "f16", stack: list[str | os.PathLike] | None = None) -> Path:
    """One peft adapter -> adapter GGUF with its own alpha. With `stack` (adapters applied under it,
    e.g. the policy LoRA under the PPM LoRA), all are concatenated into one LoRA of summed rank with
    each scale folded into B and alpha = 0 (llama.cpp then uses scale 1)."""
    hp = base_hparams(base)
    cfg, tensors = read_peft(adapter_dir)
    pairs = lora_pairs(tensors)
    if not stack:
        return write_lora_gguf(out, pairs, arch=hp["arch"], alpha=cfg["lora_alpha"] if not cfg.get("use_rslora")
                               else cfg["lora_alpha"] * cfg["r"] ** 0.5,
                               n_head=hp["n_head"], n_head_kv=hp["n_head_kv"], dtype=dtype,
                               extra_kv={"adapter_dir": Path(adapter_dir).name})
    merged: dict[str, list] = {}
    for d in [*stack, adapter_dir]:
        c, t = read_peft(d)
        s = peft_scale(c)
        for k, (a, b) in lora_pairs(t).items():
            merged.setdefault(k, []).append((a.astype(np.float32), b.astype(np.float32) * s))
    folded = {k: (np.concatenate([a for a, _ in v], 0), np.concatenate([b for _, b in v], 1))
              for k, v in merged.items()}
    return write_lora_gguf(out, folded, arch=hp["arch"], alpha=0.0, n_head=hp["n_head"],
                           n_head_kv=hp["n_head_kv"], dtype=dtype,
                           extra_kv={"stacked": ",".join(Path(p).name for p in [*stack, adapter_dir])})


def export_value_head(weight, bias, out: str | os.PathLike, *, meta: dict | None = None) -> Path:
    """Value head as .npz (what rstar_app.models.llama_cpp.LlamaPPM reads): weight [hidden] f32,
    bias [1] f32, meta (a JSON string). score = tanh(weight . h + bias), h = the final-norm hidden
    state of the last token (llama.cpp embeddings with pooling NONE)."""
    w = np.asarray(weight, dtype=np.float32).reshape(-1)
    b = np.asarray(bias, dtype=np.float32).reshape(1)
    md = {"format": "rstar-app-value-head", "version": 1, "hidden": int(w.shape[0]),
          "activation": "tanh", "input": "final-norm hidden state of the last token", **(meta or {})}
    out = Path(out)
    with atomic_path(out, mode=0o644) as tmp, open(tmp, "wb") as f:
        np.savez(f, weight=w, bias=b, meta=np.array(json.dumps(md, default=str)))
    return out


def load_value_head(path: str | os.PathLike) -> tuple[np.ndarray, float, dict]:
    with np.load(str(path)) as z:
        meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        return np.asarray(z["weight"], dtype=np.float32), float(np.asarray(z["bias"]).reshape(-1)[0]), meta


def describe(paths: list[str | os.PathLike]) -> dict:
    return {str(p): {"sha256": sha256_file(p), "bytes": Path(p).stat().st_size} for p in paths}


# ---------------------------------------------------------------------------------------------
# verification against llama.cpp
# ---------------------------------------------------------------------------------------------

def torch_reference(base, adapter_dir, prompt: str, n_new: int = 24):
    """(last-position log-probs, greedy continuation ids) of torch base + LoRA."""
    import torch
    from peft import PeftModel

    from training.common import load_base
    model, tok = load_base(base)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1).numpy()
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, do_sample=False)
    return logp, gen[0, ids.shape[1]:].tolist(), ids[0].tolist()


def llama_reference(base_gguf, adapter_gguf, prompt_ids: list[int], n_new: int = 24):
    """(last-position log-probs, greedy continuation ids) of llama.cpp base + LoRA GGUF."""
    import llama_cpp
    from llama_cpp import Llama
    llm = Llama(model_path=str(base_gguf), lora_path=str(adapter_gguf) if adapter_gguf else None,
                n_ctx=512, n_batch=512, verbose=False, seed=0)
    llm.reset()
    llm.eval(prompt_ids)
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()
    m = logits.max()
    logp = logits - m - np.log(np.exp(logits - m).sum())
    out = []
    for t in llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True):
        out.append(t)
        if len(out) >= n_new or t == llm.token_eos():
            break
    return logp, out


def verify(base_gguf, adapter_dir, adapter_gguf, prompt: str | None = None, n_new: int = 24) -> dict:
    """KL(torch || llama.cpp) at the last prompt position and greedy continuations of both."""
    from rstar_app.steps import build_prompt
    prompt = prompt or build_prompt("Natalia sold clips to 48 of her friends in April, and then she sold "
                                    "half as many clips in May. How many clips did Natalia sell altogether?")
    lp_t, gen_t, ids = torch_reference(base_gguf, adapter_dir, prompt, n_new)
    lp_l, gen_l = llama_reference(base_gguf, adapter_gguf, ids, n_new)
    lp_b, _ = llama_reference(base_gguf, None, ids, 1)
    kl = float(np.sum(np.exp(lp_t) * (lp_t - lp_l)))
    # how far the adapter moves the base: a small `kl` only means something if this is larger
    kl_effect = float(np.sum(np.exp(lp_t) * (lp_t - lp_b)))
    same = gen_t[: len(gen_l)] == gen_l[: len(gen_t)]
    common = next((i for i, (x, y) in enumerate(zip(gen_t, gen_l)) if x != y), min(len(gen_t), len(gen_l)))
    return {"kl": kl, "kl_adapter_vs_base": kl_effect, "greedy_same": bool(same), "greedy_common_prefix": common,
            "torch_ids": gen_t, "llama_ids": gen_l, "argmax_same": int(lp_t.argmax()) == int(lp_l.argmax())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="export a peft LoRA adapter (and value head) for llama.cpp")
    ap.add_argument("--adapter", required=True, help="peft adapter dir (adapter_config.json + safetensors)")
    ap.add_argument("--out", required=True, help="output adapter .gguf")
    ap.add_argument("--base", default="", help="base GGUF or HF dir (for head counts); default: shipped SmolLM2")
    ap.add_argument("--dtype", default="f16", choices=["f16", "f32"])
    ap.add_argument("--stack", action="append", default=[],
                    help="adapter dir applied under this one (repeatable): writes one combined adapter")
    ap.add_argument("--head", help="value head .npz (PPM) to list with sha256 next to the adapter")
    ap.add_argument("--verify", action="store_true", help="compare with torch through llama_cpp (needs it)")
    ap.add_argument("--info", help="write sha256/sizes JSON here (default: <out>.json)")
    a = ap.parse_args(argv)
    out = export_lora(a.adapter, a.out, base=a.base or None, dtype=a.dtype, stack=a.stack or None)
    files = [out]
    if a.head:
        files.append(Path(a.head))
    info = {"command": command_line(), "files": describe(files), "adapter_dir": str(a.adapter),
            "stack": a.stack, "dtype": a.dtype}
    if a.verify:
        base = resolve_base(a.base or None)
        if not base.is_file():
            raise SystemExit("--verify needs a GGUF base")
        info["verify"] = verify(base, a.adapter, out)
    atomic_write_json(a.info or str(out) + ".json", info)
    print(json.dumps({k: v for k, v in info.items() if k != "command"}, indent=1))
    return info


if __name__ == "__main__":
    main()
