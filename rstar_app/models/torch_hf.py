"""torch + transformers backends of the two protocols: for a GPU (training rollouts of the `gpu`
recipe, bigger bases from a local HF directory) and for checking llama.cpp against torch.

Same contract as llama_cpp.py: K siblings in one batch, sibling i sampled with its own seed
(`seed + i`: a per-row uniform stream, so a row's text does not depend on its batch mates),
samplers in llama.cpp's order (top-k -> top-p -> temperature -> draw), the same stop and rogue
markers. `generate_batch` runs many calls (different prefixes, left-padded) as one batch;
rstar_app.models.batching feeds it the concurrent calls of many searches, which is what keeps a
GPU busy (one search's K rows leave it launch-bound). What it does not do: prefix KV reuse across
calls; each call prefills its prefix once per row (cheap on a GPU, and it keeps the code
independent of transformers' cache classes).

Adapters are peft directories (merged into the base on load); training.rollouts converts an
adapter GGUF back with training.export.import_lora_gguf.
"""

from __future__ import annotations

import inspect
import os
import threading
from dataclasses import dataclass
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
        # one tokenizer for the batch thread and the searches' count_tokens (rollouts --parallel):
        # a fast tokenizer toggles its own state for split_special_tokens, so calls take turns
        self._tok_lock = threading.Lock()
        # transformers 5.x renamed forward's past_key_values to cache; 4.x only knows the old name
        self._cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def count_tokens(self, text: str) -> int:
        with self._tok_lock:
            return len(_encode(self.tok, text))

    def generate(self, prefix: str, *, n: int, max_tokens: int, temperature: float, top_p: float = 0.95,
                 top_k: int = 40, seed: int = 0, stop: Sequence[str] = (),
                 greedy_first: bool = False) -> list[Candidate]:
        """n siblings in one batch; sibling i samples with seed `seed + i` (sibling 0 greedily
        with greedy_first)."""
        return self.generate_batch([GenRequest(prefix, n=n, max_tokens=max_tokens, temperature=temperature,
                                               top_p=top_p, top_k=top_k, seed=seed, stop=tuple(stop),
                                               greedy_first=greedy_first)])[0]

    def generate_batch(self, requests: Sequence["GenRequest"]) -> list[list[Candidate]]:
        """Many generate() calls (different prefixes) as one left-padded batch, run to the end."""
        rows = [self.rows_for(r) for r in requests]
        self.advance([row for rs in rows for row in rs])
        return [[row.result for row in rs] for rs in rows]

    def rows_for(self, request: "GenRequest") -> list["GenRow"]:
        """The request's n siblings as rows for advance(); raises ValueError for a bad request."""
        if not 1 <= request.n <= self.max_candidates:
            raise ValueError(f"n must be in [1, {self.max_candidates}]")
        with self._tok_lock:
            toks = _encode(self.tok, request.prefix)
        if not toks:
            raise ValueError("empty prefix")
        limit = max(min(request.max_tokens, self.n_ctx - len(toks)), 0)
        temps = sibling_temperatures(request.n, request.temperature, request.greedy_first)
        return [GenRow(request, toks, t, request.seed + i, limit) for i, t in enumerate(temps)]

    def advance(self, rows: Sequence["GenRow"], *, max_steps: int | None = None) -> None:
        """Generate up to `max_steps` more tokens (all, when None) for every unfinished row, in
        one left-padded batch: one forward and one host sync per token. A row stopped by
        max_steps keeps its tokens and is prefilled again, prompt + tokens so far, by the next
        call, so rows can leave and join between calls (models.batching does that). A row's
        text depends only on its own request and seed (up to float rounding)."""
        torch = self._torch
        active = [r for r in rows if r.result is None]
        if not active:
            return
        R, dev = len(active), self.device
        seqs = [r.prompt + r.out for r in active]
        width = max(map(len, seqs))
        steps = max(r.limit - len(r.out) for r in active)
        steps = steps if max_steps is None else min(steps, max_steps)
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(q)) + q for q in seqs], device=dev)
        att = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in seqs], device=dev)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        samp = _RowSampler([r.temperature for r in active], [r.request.top_p for r in active],
                           [r.request.top_k for r in active], [r.uniforms for r in active], dev)
        drawn = torch.tensor([len(r.out) for r in active], device=dev)  # each row's place in its stream
        with torch.inference_mode():
            # logits of the last position only: all of them would be rows x width x vocab (~38 GB bf16
            # for 192 rows of 2,000 tokens), rebuilt every chunk
            res = self.model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True, logits_to_keep=1)
            self.stats["prefill_tokens"] += sum(map(len, seqs))
            past, logits, last = _cache_of(res), res.logits[:, -1].float(), pos[:, -1:]
            for t in range(steps):
                tok_t = samp.draw(logits, drawn + t)
                lp_t = torch.log_softmax(logits, -1).gather(1, tok_t[:, None])[:, 0]  # T=1 (Candidate.logprob)
                host = torch.stack([tok_t.double(), lp_t.double()]).tolist()  # the step's only host sync
                nxt = [int(x) for x in host[0]]
                for r, tok, lp in zip(active, nxt, host[1]):
                    if r.result is None:
                        r.logprob += lp
                        self._take_token(r, tok)
                if t == steps - 1 or all(r.result is not None for r in active):
                    break
                # finished rows keep decoding (their tokens are ignored): one rectangular batch
                att = torch.cat([att, att.new_ones(R, 1)], 1)
                last = last + 1
                res = self.model(input_ids=tok_t[:, None], attention_mask=att,
                                 position_ids=last, use_cache=True, **{self._cache_kw: past})
                past, logits = _cache_of(res), res.logits[:, -1].float()

    def _take_token(self, r: "GenRow", tok: int) -> None:
        if tok in self.eos:
            r.result = Candidate(self._text(r.out), None, len(r.out) + 1, r.logprob)
            return
        r.out.append(tok)
        self.stats["generated_tokens"] += 1
        text = self._text(r.out)
        hit = first_stop(text, r.request.stop, ROGUE)
        if hit is not None:
            r.result = Candidate(text[:hit[0]], hit[1], len(r.out), r.logprob)
        elif len(r.out) >= r.limit:
            r.result = Candidate(text, None, len(r.out), r.logprob)

    def _text(self, toks: list[int]) -> str:
        with self._tok_lock:
            return self.tok.decode(toks, skip_special_tokens=False).replace("\ufffd", "")


@dataclass(frozen=True)
class GenRequest:
    """One Policy.generate() call, as TorchPolicy.generate_batch takes it."""

    prefix: str
    n: int
    max_tokens: int
    temperature: float
    top_p: float = 0.95
    top_k: int = 40
    seed: int = 0
    stop: tuple[str, ...] = ()
    greedy_first: bool = False


class GenRow:
    """One sibling in generation: prompt token ids, sampler settings, tokens so far, and the
    Candidate once finished. Its uniforms are `max_tokens` numbers from a CPU generator seeded
    with the row's seed, so its draws depend on nothing else (batch, device, chunking)."""

    __slots__ = ("request", "prompt", "temperature", "limit", "out", "logprob", "result", "uniforms")

    def __init__(self, request: GenRequest, prompt: list[int], temperature: float, seed: int, limit: int):
        import torch
        self.request, self.prompt, self.temperature, self.limit = request, prompt, temperature, limit
        self.out: list[int] = []
        self.logprob = 0.0  # summed log-probability of `out` (and an EOS that ended it)
        self.result: Candidate | None = None if limit > 0 else Candidate("", None, 0)
        g = torch.Generator().manual_seed(int(seed) % 2**63)
        self.uniforms = torch.rand(max(request.max_tokens, 1), generator=g)


class _RowSampler:
    """llama.cpp's sampler chain (top-k -> top-p on the softmax at T=1 -> temperature -> draw) for
    all rows at once; each row draws by inverse CDF with the next number of its own stream.
    Temperature <= 0 is argmax."""

    def __init__(self, temps, top_p, top_k, streams, device: str):
        import torch
        vocab_all = [k if k > 0 else 1 << 30 for k in top_k]
        self.k = torch.tensor(vocab_all, device=device)
        self.kmax = max(vocab_all)
        self.temps = torch.tensor(temps, dtype=torch.float32, device=device)
        self.top_p = torch.tensor(top_p, dtype=torch.float32, device=device)
        u = torch.zeros(len(streams), max(len(x) for x in streams))
        for i, x in enumerate(streams):
            u[i, :len(x)] = x
        self.u = u.to(device)

    def draw(self, logits, index):
        """[R, V] float logits, [R] stream positions -> [R] token ids."""
        import torch
        kmax = min(self.kmax, logits.shape[-1])
        vals, idx = torch.topk(logits, kmax, dim=-1)                 # [R, kmax], sorted descending
        keep = torch.arange(kmax, device=logits.device)[None] < self.k[:, None]
        vals = vals.masked_fill(~keep, float("-inf"))
        p = torch.softmax(vals, -1)
        before = p.cumsum(-1) - p                                    # mass strictly above each entry
        keep &= (before < self.top_p[:, None]) | (self.top_p[:, None] >= 1.0)
        probs = torch.softmax(vals.masked_fill(~keep, float("-inf")) / self.temps.clamp(min=1e-6)[:, None], -1)
        cdf = probs.cumsum(-1)
        u = self.u.gather(1, index.clamp(max=self.u.shape[1] - 1)[:, None]).squeeze(1)
        j = torch.searchsorted(cdf.contiguous(), (u * cdf[:, -1])[:, None].contiguous()).clamp(max=kmax - 1)
        drawn = idx.gather(1, j).squeeze(1)
        return torch.where(self.temps <= 0, logits.argmax(-1), drawn)


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
        self._lock = threading.Lock()  # concurrent searches (rollouts --parallel) share one model
        self.name = name or f"PPM {Path(ppm_adapter).name if ppm_adapter else Path(model_path).name} (torch)"
        self._torch = torch

    def score(self, prefix: str, steps: Sequence[str]) -> list[float]:
        return self.score_texts([prefix + st for st in steps])

    def score_texts(self, texts: Sequence[str], *, rows: int | None = None) -> list[float]:
        """Scores of whole texts (prefix + step each), `rows` (default max_candidates) per forward."""
        torch = self._torch
        out: list[float] = []
        pad, rows = self.tok.pad_token_id, rows or self.max_candidates
        with self._lock, torch.inference_mode():
            for s in range(0, len(texts), rows):
                seqs = [_encode(self.tok, t) for t in texts[s:s + rows]]
                width = max(map(len, seqs))
                ids = torch.tensor([q + [pad] * (width - len(q)) for q in seqs], device=self.device)
                att = torch.tensor([[1] * len(q) + [0] * (width - len(q)) for q in seqs], device=self.device)
                h = self.backbone(input_ids=ids, attention_mask=att).last_hidden_state
                h_last = h[torch.arange(len(seqs), device=self.device), att.sum(1) - 1].float()
                out += torch.tanh(h_last @ self.w + self.b).tolist()
        return out
