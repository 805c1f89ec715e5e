"""torch + transformers backends of the two protocols: for a GPU (training rollouts of the `gpu`
recipe, bigger bases from a local HF directory) and for checking llama.cpp against torch.

Same contract as llama_cpp.py: K siblings in one batch, sibling i sampled with its own seed
(`seed + i`, a torch.Generator per row, so a row's text does not depend on its batch mates),
samplers in llama.cpp's order (top-k -> top-p -> temperature -> draw), the same stop and rogue
markers. What it does not do: prefix KV reuse across calls. The prefix is prefilled once per call
as a batch of K identical rows (one forward; cheap on a GPU, and it keeps the code independent of
transformers' cache classes).

Adapters are peft directories (merged into the base on load); training.rollouts converts an
adapter GGUF back with training.export.import_lora_gguf.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Sequence

from .base import ROGUE, Candidate, first_stop, sibling_temperatures


def _torch():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the torch backend needs torch and transformers: "
                          "`python -m rstar_app.install --dev` installs them") from e
    return torch


def pick_device(requested: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    torch = _torch()
    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str):
    """'auto' -> bf16 on a CUDA device that supports it, fp32 otherwise."""
    torch = _torch()
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, dtype)


def load_causal_lm(path: str | os.PathLike, *, dtype: str = "float32"):
    """(model, tokenizer) for a GGUF file (dequantised by transformers) or an HF directory.

    A GGUF-loaded model refuses save_pretrained: we never save the base, only adapters."""
    torch = _torch()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = Path(path)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if path.is_file():  # GGUF
        kw = dict(gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch_dtype, **kw)
        tok = AutoTokenizer.from_pretrained(str(path.parent), **kw)
        # a GGUF-dequantised model carries a quantization_config that blocks saving/peft merges
        if getattr(model.config, "quantization_config", None) is not None:
            try:
                del model.config.quantization_config
            except AttributeError:
                model.config.quantization_config = None
    elif path.is_dir():
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
        tok = AutoTokenizer.from_pretrained(str(path))
    else:
        raise FileNotFoundError(f"model {path} not found (a GGUF file or an HF model directory)")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _merge(model, adapter: str | os.PathLike | None):
    if not adapter:
        return model
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter} is not a peft adapter directory (no adapter_config.json)")
    from peft import PeftModel
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def _cache_of(res):
    cache = getattr(res, "cache", None)
    return cache if cache is not None else res.past_key_values


def _encode(tok, text: str) -> list[int]:
    # split_special_tokens: marker-like text stays plain text, as llama.cpp's special=False does
    return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


class TorchPolicy:
    """K candidate next steps per call, batched on one device.

    Args:
        model_path: a GGUF file or an HF model directory.
        adapter: optional peft LoRA directory, merged into the weights on load.
        device / dtype: 'auto' picks CUDA + bf16 when available.
        max_candidates: the most siblings one call may ask for.
        n_ctx: the longest prefix + step, in tokens.
    """

    def __init__(self, model_path: str | os.PathLike, *, adapter: str | os.PathLike | None = None,
                 device: str = "auto", dtype: str = "auto", max_candidates: int = 8, n_ctx: int = 4096,
                 name: str | None = None):
        torch = _torch()
        self.device = pick_device(device)
        model, self.tok = load_causal_lm(model_path, dtype="float32")
        self.model = _merge(model, adapter).to(self.device, pick_dtype(dtype, self.device)).eval()
        self.n_ctx, self.max_candidates = n_ctx, max_candidates
        eos = self.model.generation_config.eos_token_id
        self.eos = {i for i in [self.tok.eos_token_id, *(eos if isinstance(eos, list) else [eos])]
                    if isinstance(i, int)}
        self.name = name or Path(model_path).name + (f" + {Path(adapter).name}" if adapter else "") + " (torch)"
        self.stats = {"prefill_tokens": 0, "generated_tokens": 0}
        self._torch = torch
        # transformers 5.x renamed forward's past_key_values to cache; 4.x only knows the old name
        self._cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def count_tokens(self, text: str) -> int:
        return len(_encode(self.tok, text))

    def generate(self, prefix: str, *, n: int, max_tokens: int, temperature: float, top_p: float = 0.95,
                 top_k: int = 40, seed: int = 0, stop: Sequence[str] = (),
                 greedy_first: bool = False) -> list[Candidate]:
        """n siblings in one batch; sibling i samples with seed `seed + i` (sibling 0 greedily
        with greedy_first)."""
        if not 1 <= n <= self.max_candidates:
            raise ValueError(f"n must be in [1, {self.max_candidates}]")
        torch = self._torch
        toks = _encode(self.tok, prefix)
        if not toks:
            raise ValueError("empty prefix")
        max_tokens = min(max_tokens, self.n_ctx - len(toks))
        temps = sibling_temperatures(n, temperature, greedy_first)
        gens = [torch.Generator(device=self.device).manual_seed(int(seed + i) % 2**63) for i in range(n)]
        out_tok: list[list[int]] = [[] for _ in range(n)]
        result: list[Candidate | None] = [None] * n
        ids = torch.tensor([toks] * n, device=self.device)
        with torch.inference_mode():
            res = self.model(input_ids=ids, use_cache=True)
            self.stats["prefill_tokens"] += len(toks)
            past, logits = _cache_of(res), res.logits[:, -1].float()
            for _ in range(max(max_tokens, 0)):
                nxt = [self._sample(logits[i], temps[i], top_p, top_k, gens[i]) for i in range(n)]
                for i, tok in enumerate(nxt):
                    if result[i] is not None:
                        continue
                    if tok in self.eos:
                        result[i] = Candidate(self._text(out_tok[i]), None, len(out_tok[i]) + 1)
                        continue
                    out_tok[i].append(tok)
                    text = self._text(out_tok[i])
                    hit = first_stop(text, stop, ROGUE)
                    if hit is not None:
                        result[i] = Candidate(text[:hit[0]], hit[1], len(out_tok[i]))
                    elif len(out_tok[i]) >= max_tokens:
                        result[i] = Candidate(text, None, len(out_tok[i]))
                if all(r is not None for r in result):
                    break
                # finished rows keep decoding (their tokens are ignored): one rectangular batch
                res = self.model(input_ids=torch.tensor(nxt, device=self.device)[:, None],
                                 use_cache=True, **{self._cache_kw: past})
                past, logits = _cache_of(res), res.logits[:, -1].float()
        self.stats["generated_tokens"] += sum(map(len, out_tok))
        return [r if r is not None else Candidate(self._text(out_tok[i]), None, len(out_tok[i]))
                for i, r in enumerate(result)]

    def _text(self, toks: list[int]) -> str:
        return self.tok.decode(toks, skip_special_tokens=False).replace("\ufffd", "")

    def _sample(self, logits, temperature: float, top_p: float, top_k: int, gen) -> int:
        """llama.cpp's chain: top-k, then top-p on the softmax at T=1, then temperature, then draw."""
        torch = self._torch
        if temperature <= 0:
            return int(torch.argmax(logits))
        k = min(top_k, logits.numel()) if top_k > 0 else logits.numel()
        vals, idx = torch.topk(logits, k)              # sorted, descending
        if top_p < 1.0:
            cum = torch.softmax(vals, -1).cumsum(-1)
            keep = int((cum < top_p).sum()) + 1         # the smallest set whose mass reaches top_p
            vals, idx = vals[:keep], idx[:keep]
        probs = torch.softmax(vals / temperature, -1)
        return int(idx[torch.multinomial(probs, 1, generator=gen)])


class TorchPPM:
    """Process preference model in torch: tanh(w . h_last + b), h_last the final-norm hidden state
    of the last token of `prefix + step` (the string LlamaPPM and training.ppm score).

    Args:
        model_path: the base (GGUF or HF directory).
        head_path: value_head.npz (weight [hidden], bias [1]).
        policy_adapter / ppm_adapter: peft directories merged in that order (training.ppm's model).
    """

    def __init__(self, model_path: str | os.PathLike, head_path: str | os.PathLike, *,
                 policy_adapter: str | os.PathLike | None = None, ppm_adapter: str | os.PathLike | None = None,
                 device: str = "auto", dtype: str = "auto", max_candidates: int = 8, name: str | None = None):
        import numpy as np
        torch = _torch()
        self.device = pick_device(device)
        model, self.tok = load_causal_lm(model_path, dtype="float32")
        model = _merge(_merge(model, policy_adapter), ppm_adapter)
        self.backbone = model.model.to(self.device, pick_dtype(dtype, self.device)).eval()
        with np.load(head_path) as z:
            w = np.asarray(z["weight"], dtype=np.float32).reshape(-1)
            b = float(np.asarray(z["bias"]).reshape(-1)[0])
        if w.shape[0] != model.config.hidden_size:
            raise ValueError(f"PPM head {head_path} has width {w.shape[0]}, model has {model.config.hidden_size}")
        self.w, self.b = torch.tensor(w, device=self.device), b
        self.max_candidates = max_candidates
        self.name = name or f"PPM {Path(ppm_adapter).name if ppm_adapter else Path(model_path).name} (torch)"
        self._torch = torch

    def score(self, prefix: str, steps: Sequence[str]) -> list[float]:
        torch = self._torch
        out: list[float] = []
        pad = self.tok.pad_token_id
        for s in range(0, len(steps), self.max_candidates):
            seqs = [_encode(self.tok, prefix + st) for st in steps[s:s + self.max_candidates]]
            width = max(map(len, seqs))
            ids = torch.tensor([q + [pad] * (width - len(q)) for q in seqs], device=self.device)
            att = torch.tensor([[1] * len(q) + [0] * (width - len(q)) for q in seqs], device=self.device)
            with torch.inference_mode():
                h = self.backbone(input_ids=ids, attention_mask=att).last_hidden_state
                h_last = h[torch.arange(len(seqs), device=self.device), att.sum(1) - 1].float()
                out += torch.tanh(h_last @ self.w + self.b).tolist()
        return out
