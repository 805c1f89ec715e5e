"""llama-cpp-python backends: a batched policy and an incremental PPM over one loaded GGUF model.

Why the low-level API: the high-level `Llama` object caches one sequence and re-evaluates a prefix
whenever the search jumps between branches. Here each backend owns a context of its own on the
shared model (one adapter per context), with
  * seq 0 holding the current prefix (prompt + steps so far), decoded once and trimmed, not redone,
    when the next prefix shares tokens with it;
  * a bounded LRU of per-prefix KV snapshots (`llama_state_seq_get/set_data`, KV only, ~23 KB per
    token) so returning to an earlier branch restores instead of re-prefilling;
  * sequences 1..K for K siblings: the prefix is copied (`llama_memory_seq_cp`, shared cells in a
    unified KV cache) and each `llama_decode` carries one token per live sibling;
  * or, for `generate_many` (K different prefixes, e.g. best-of-N's samples one step each), one
    sequence per prefix that it keeps between calls, so a sample's next call decodes only its
    new step.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import ROGUE as _ROGUE, Candidate, ContextFull, first_stop as _first_stop, sibling_temperatures

_MODELS: dict[tuple[str, int], object] = {}
_MODELS_LOCK = threading.Lock()


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "llama-cpp-python is not installed. Install rstar-app with `python -m rstar_app.install` "
            "(it builds llama.cpp with the flags this CPU needs)."
        ) from e
    return llama_cpp


def default_threads(cgroup_root: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup") -> int:
    """CPUs this process may really use, at most 8: its affinity mask, capped by a cgroup CPU quota
    (a 2-CPU container on a 64-core host reports 64 in os.cpu_count(); 64 threads there would
    crawl). Decoding gains little past 8 threads."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 2
    quota = cgroup_cpu_quota(cgroup_root, self_cgroup)
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, min(n, 8))


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup") -> float | None:
    """CPUs' worth of time per period that this process's cgroups allow (the tightest quota of its
    cgroup and every ancestor, cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us`), None without one.

    A container usually sees its own cgroup as the root of the mount; a systemd slice or a v1 host
    without a cgroup namespace puts it at the path /proc/self/cgroup names, so both are read."""
    base = Path(root)
    try:
        lines = Path(self_cgroup).read_text().splitlines()
    except OSError:
        lines = []
    places = [(base, "v2")]  # the mount root: a container's own cgroup under a cgroup namespace
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = [p for p in path.split("/") if p and p not in (".", "..")]
        if controllers == "":  # v2 unified hierarchy ("0::/user.slice/...")
            mounts = [(base, "v2"), (base / "unified", "v2")]
        elif "cpu" in controllers.split(","):  # v1 ("4:cpu,cpuacct:/docker/<id>")
            mounts = [(base / controllers, "v1"), (base / "cpu", "v1")]
        else:
            continue
        for mount, kind in mounts:
            places += [(mount.joinpath(*rel[:i]), kind) for i in range(len(rel) + 1)]
    quotas = [q for q in (_read_quota(d, kind) for d, kind in dict.fromkeys(places)) if q is not None]
    return min(quotas) if quotas else None


def _read_quota(directory: Path, kind: str) -> float | None:
    """One cgroup's CPU quota in CPUs, None when it has none or the files are absent/unreadable."""
    try:
        if kind == "v2":
            quota, period = (directory / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
        return None if quota < 0 else quota / period
    except (OSError, ValueError, ZeroDivisionError):
        return None


class ModelFileError(RuntimeError):
    """A model/adapter file is missing or unreadable; the message names the file and the fix."""


def load_model(path: str | os.PathLike, *, n_threads: int | None = None):
    """Load a GGUF once per process (cached); raises ModelFileError with a fix for bad files."""
    path = str(Path(path).expanduser().resolve())
    n_threads = n_threads or default_threads()
    with _MODELS_LOCK:
        if (path, n_threads) in _MODELS:
            return _MODELS[(path, n_threads)]
        _check_gguf(path, "model")
        L = _llama_cpp()
        try:
            # n_ctx is tiny: this object's own context is unused, we only borrow its model + vocab
            llm = L.Llama(model_path=path, n_ctx=64, n_batch=64, n_threads=n_threads, verbose=False)
        except Exception as e:
            raise ModelFileError(f"llama.cpp could not load {path}: {e}. The file may be corrupt or "
                                 "not a GGUF model: re-install the weights (see README).") from None
        _MODELS[(path, n_threads)] = llm
        return llm


def _check_gguf(path: str, what: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{what} file not found: {path}. Check the path, or re-install the "
                             "default weights with `python -m rstar_app.install`.")
    with open(p, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelFileError(f"{what} file is not a GGUF file (bad magic): {path}. It may be "
                                 "truncated or a Git LFS pointer; replace it with the real file.")


class SeqContext:
    """One llama context over a shared model: prefix bookkeeping, snapshots, batched decode."""

    def __init__(self, llm, *, n_ctx: int, n_seq: int, n_batch: int = 512, embeddings: bool = False,
                 adapter: str | None = None, snapshot_mb: int = 256, n_threads: int | None = None):
        L = self.L = _llama_cpp()
        self.llm = llm
        self.vocab = L.llama_model_get_vocab(llm.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, n_batch, n_batch, n_seq
        cp.kv_unified = True  # without it siblings get "failed to find a memory slot"
        cp.n_threads = cp.n_threads_batch = n_threads or default_threads()
        if embeddings:
            cp.embeddings = True
            cp.pooling_type = L.LLAMA_POOLING_TYPE_NONE
        self.ctx = L.llama_init_from_model(llm.model, cp)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context (n_ctx={n_ctx}, n_seq={n_seq})")
        self.adapter = None
        if adapter:
            _check_gguf(adapter, "adapter")
            self.adapter = L.llama_adapter_lora_init(llm.model, str(adapter).encode())
            if not self.adapter:
                raise ModelFileError(f"llama.cpp could not load the LoRA adapter {adapter}: it may be "
                                     "corrupt or made for another base model.")
            L.llama_set_adapters_lora(self.ctx, (L.llama_adapter_lora_p_ctypes * 1)(self.adapter), 1,
                                      (ctypes.c_float * 1)(1.0))
        self.mem = L.llama_get_memory(self.ctx)
        self.n_ctx, self.n_seq, self.n_batch = n_ctx, n_seq, n_batch
        self.batch = L.llama_batch_init(n_batch, 0, n_seq)
        self.held: list[int] = []                  # tokens whose KV seq 0 holds
        self.seq_tokens: dict[int, list[int]] = {}  # what seqs 1..n hold, where known (generate_many)
        self.snapshots: OrderedDict[tuple, object] = OrderedDict()
        self.snapshot_bytes, self.snapshot_limit = 0, snapshot_mb * 2**20
        # prefill_tokens / reused_tokens: seq 0; row_*: the rows of generate_many, in their own seqs
        self.stats = {"prefill_tokens": 0, "reused_tokens": 0, "snapshot_restores": 0,
                      "row_prefill_tokens": 0, "row_reused_tokens": 0}
        self.lock = threading.Lock()

    # -- tokens --
    def tokenize(self, text: str) -> list[int]:
        # special=False: marker-like text in a problem stays plain text, never a control token
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def piece(self, tok: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self.L.llama_token_to_piece(self.vocab, tok, buf, 64, 0, False)
        return buf.raw[:max(n, 0)]

    def token_logprob(self, i: int, tok: int) -> float:
        """log p(tok) under the logits of output i of the last batch: temperature 1, no top-k/top-p,
        so it measures the model, not the sampler (read before the next decode overwrites them)."""
        row = np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
        m = float(row.max())
        return float(row[tok]) - m - float(np.log(np.exp(row - m).sum()))

    # -- decoding --
    def decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """entries = (token, pos, seq, want_output), at most n_batch of them."""
        b = self.batch
        assert 0 < len(entries) <= self.n_batch  # larger batches abort the process in ggml
        for i, (tok, pos, seq, out) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, out
            b.seq_id[i][0] = seq
        b.n_tokens = len(entries)
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise ContextFull(f"llama_decode returned {rc} (context of {self.n_ctx} tokens full?)")

    def load_prefix(self, toks: list[int], *, output_last: bool, keep_others: bool = False) -> int:
        """Make seq 0 hold `toks`, decoding only what neither seq 0 nor a snapshot already holds.
        Clears seqs 1..n unless keep_others. Returns the batch index of the last token's output
        (when output_last)."""
        L = self.L
        if not toks:
            raise ValueError("empty prefix")
        if len(toks) + 1 >= self.n_ctx:
            raise ContextFull(f"prefix of {len(toks)} tokens does not fit the {self.n_ctx}-token context")
        if not keep_others:
            self.forget_rows()
        keep = len(toks) - 1 if output_last else len(toks)  # the last token is re-decoded for its output
        common = _lcp(self.held, toks, keep)
        best = max((k for k in self.snapshots if common < len(k) <= keep and tuple(toks[:len(k)]) == k),
                   key=len, default=None)
        if best is not None:
            L.llama_memory_seq_rm(self.mem, 0, -1, -1)
            self.held = []  # seq 0 is empty now, whatever the restore below does
            data = self.snapshots[best]
            self.snapshots.move_to_end(best)
            if L.llama_state_seq_set_data(self.ctx, data, len(data), 0) == 0:
                raise RuntimeError("restoring a KV snapshot failed")
            self.held, common = list(best), len(best)
            self.stats["snapshot_restores"] += 1
        L.llama_memory_seq_rm(self.mem, 0, common, -1)
        self.held = self.held[:common]
        self.stats["reused_tokens"] += common
        self.stats["prefill_tokens"] += len(toks) - common
        # The last token goes alone in a batch of one when its output is wanted: ggml's matmul
        # kernels differ by batch size, so this makes the first sampled token independent of how
        # much of the prefix was cached (reproducible searches, batched == sequential siblings).
        body = len(toks) - 1 if output_last else len(toks)
        for start in range(common, body, self.n_batch):
            chunk = toks[start:min(start + self.n_batch, body)]
            self.decode([(t, start + j, 0, False) for j, t in enumerate(chunk)])
        if output_last:
            self.decode([(toks[-1], len(toks) - 1, 0, True)])
        self.held = list(toks)
        if len(toks) - common > 8:
            self._snapshot(tuple(toks))
        return 0

    def forget_rows(self) -> None:
        """Clear seqs 1..n (and what we know they hold)."""
        for s in range(1, self.n_seq):
            self.L.llama_memory_seq_rm(self.mem, s, -1, -1)
        self.seq_tokens.clear()

    def place(self, rows: list[list[int]]) -> tuple[list[int], list[int]]:
        """A sequence in 1..n for each row (the one holding the longest start of it, greedily)
        and how many of the row's tokens it holds already (at most all but the last); the
        sequences no row gets are cleared, so only these rows hold cells."""
        pairs = sorted(((_lcp(self.seq_tokens.get(q, ()), t, len(t) - 1), -r, q)
                        for r, t in enumerate(rows) for q in range(1, self.n_seq)), reverse=True)
        seq, reuse = [0] * len(rows), [0] * len(rows)
        taken: set[int] = set()
        for held, r, q in pairs:
            if not seq[-r] and q not in taken:
                seq[-r], reuse[-r] = q, held
                taken.add(q)
        for q in range(1, self.n_seq):
            if q not in taken:
                self.L.llama_memory_seq_rm(self.mem, q, -1, -1)
                self.seq_tokens.pop(q, None)
        for q in taken:
            self.seq_tokens.pop(q, None)  # re-set once the row's sampling has ended
        return seq, reuse

    def fork(self, n: int) -> None:
        """Copy seq 0 (the prefix) to seqs 1..n."""
        for s in range(1, n + 1):
            self.L.llama_memory_seq_cp(self.mem, 0, s, -1, -1)

    def _snapshot(self, key: tuple) -> None:
        L = self.L
        size = L.llama_state_seq_get_size(self.ctx, 0)
        if size > self.snapshot_limit // 4:
            return
        buf = (ctypes.c_uint8 * size)()
        L.llama_state_seq_get_data(self.ctx, buf, size, 0)
        old = self.snapshots.pop(key, None)  # the same prefix again (a rerun, a greedy sibling): replace it
        if old is not None:
            self.snapshot_bytes -= len(old)
        self.snapshots[key] = buf
        self.snapshot_bytes += size
        while self.snapshot_bytes > self.snapshot_limit:
            _, old = self.snapshots.popitem(last=False)
            self.snapshot_bytes -= len(old)

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.L.llama_batch_free(self.batch)
            self.L.llama_free(self.ctx)
            self.ctx = None

    def __del__(self):  # pragma: no cover
        try:
            self.close()
        except Exception:
            pass


def _lcp_all(seqs: Sequence[Sequence[int]]) -> int:
    """Tokens all of seqs share, leaving each at least its last token of its own."""
    common = min(len(t) for t in seqs) - 1
    for t in seqs[1:]:
        common = _lcp(seqs[0], t, common)
    return common


def _lcp(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class LlamaPolicy:
    """K candidate next steps for a prefix in one batch (see module docstring).

    Args:
        model_path: the base (or merged) GGUF.
        adapter: optional LoRA adapter GGUF applied to this policy's context only.
        max_candidates: the most siblings one call may ask for (sequences in the context).
        n_ctx: the longest prefix + step, in tokens.
        max_step_tokens: room reserved per sibling on top of the prefix.
    """

    def __init__(self, model_path: str | os.PathLike, *, adapter: str | None = None,
                 max_candidates: int = 8, n_ctx: int = 4096, max_step_tokens: int = 256,
                 n_threads: int | None = None, snapshot_mb: int = 256, name: str | None = None):
        self.llm = load_model(model_path, n_threads=n_threads)
        self.n_ctx = n_ctx
        self.max_candidates = max_candidates
        self.cx = SeqContext(self.llm, n_ctx=n_ctx + max_candidates * max_step_tokens,
                             n_seq=max_candidates + 1, n_threads=n_threads, adapter=adapter,
                             snapshot_mb=snapshot_mb)
        self.eos = set()
        self.name = name or Path(model_path).name + (f" + {Path(adapter).name}" if adapter else "")

    def count_tokens(self, text: str) -> int:
        return len(self.cx.tokenize(text))

    def generate(self, prefix: str, *, n: int, max_tokens: int, temperature: float, top_p: float = 0.95,
                 top_k: int = 40, seed: int = 0, stop: Sequence[str] = (),
                 greedy_first: bool = False) -> list[Candidate]:
        """n siblings in one batch; sibling i samples with seed `seed + i` (same text as a
        sequential call with n=1 and that seed); with greedy_first, sibling 0 is the greedy one."""
        if not 1 <= n <= self.max_candidates:
            raise ValueError(f"n must be in [1, {self.max_candidates}]")
        cx, L = self.cx, self.cx.L
        with cx.lock:
            toks = cx.tokenize(prefix)
            last = cx.load_prefix(toks, output_last=True)
            cx.fork(n)
            samplers = [self._sampler(t, top_p, top_k, seed + i)
                        for i, t in enumerate(sibling_temperatures(n, temperature, greedy_first))]
            try:
                return self._sample_loop([len(toks)] * n, {i: last for i in range(n)}, samplers, max_tokens,
                                         list(stop), cx.n_ctx - len(toks), list(range(1, n + 1)))[0]
            finally:
                for smp in samplers:
                    L.llama_sampler_free(smp)

    def generate_many(self, prefixes: Sequence[str], *, temperatures: Sequence[float], seeds: Sequence[int],
                      max_tokens: int, top_p: float = 0.95, top_k: int = 40,
                      stop: Sequence[str] = ()) -> list[Candidate]:
        """One continuation of each prefix, up to `max_candidates` prefixes per batch (fewer when
        their own tokens would overflow the context); row i samples with temperatures[i] and
        seeds[i]. Made for prefixes that grow call after call (independent samples, one step per
        call): each row goes to the sequence already holding the longest start of it, so only its
        new tokens (the last step and its output) are decoded; what no sequence holds is copied
        from seq 0 (the prefixes' shared start, decoded once)."""
        if not len(prefixes) == len(temperatures) == len(seeds):
            raise ValueError("prefixes, temperatures and seeds must have the same length")
        cx, L = self.cx, self.cx.L
        out: list[Candidate] = []
        with cx.lock:
            toks = [cx.tokenize(p) for p in prefixes]
            for group in self._groups(toks, max_tokens):
                rows = [toks[i] for i in group]
                seqs, reuse = cx.place(rows)
                common = _lcp_all(rows)
                keep = _lcp(cx.held, rows[0], common)
                if keep < len(cx.held):  # seq 0 keeps no more than the rows' shared start: bounded cells
                    L.llama_memory_seq_rm(cx.mem, 0, keep, -1)
                    cx.held = cx.held[:keep]
                if any(r < common for r in reuse):
                    cx.load_prefix(rows[0][:common], output_last=False, keep_others=True)
                for q, r in zip(seqs, reuse):
                    if r < common:  # nothing useful held: start from the shared prefix in seq 0
                        L.llama_memory_seq_rm(cx.mem, q, -1, -1)
                        L.llama_memory_seq_cp(cx.mem, 0, q, -1, -1)
                    else:
                        L.llama_memory_seq_rm(cx.mem, q, r, -1)
                start = [max(r, common) for r in reuse]
                # each row's own tokens but its last, in full batches; then the last tokens together
                own = [(tok, pos, q, False) for t, q, st in zip(rows, seqs, start)
                       for pos, tok in enumerate(t[:-1]) if pos >= st]
                for b in range(0, len(own), cx.n_batch):
                    cx.decode(own[b:b + cx.n_batch])
                cx.decode([(t[-1], len(t) - 1, q, True) for t, q in zip(rows, seqs)])
                cx.stats["row_prefill_tokens"] += len(own) + len(rows)
                cx.stats["row_reused_tokens"] += sum(start)
                samplers = [self._sampler(temperatures[i], top_p, top_k, seeds[i]) for i in group]
                try:
                    # cells: seq 0, each row's own tokens, and one more copy of the shared start for
                    # rows whose sequences were forked from an earlier seq 0 (see _groups)
                    budget = cx.n_ctx - len(cx.held) - common - sum(len(t) - common for t in rows)
                    got, fed = self._sample_loop([len(t) for t in rows], {r: r for r in range(len(rows))}, samplers,
                                                 max_tokens, list(stop), budget, seqs)
                finally:
                    for smp in samplers:
                        L.llama_sampler_free(smp)
                if fed is None:  # the context filled up mid-batch: forget what the sequences hold
                    cx.forget_rows()
                else:
                    cx.seq_tokens.update({q: t + f for q, t, f in zip(seqs, rows, fed)})
                out += got
        return out

    def _groups(self, toks: list[list[int]], max_tokens: int) -> list[list[int]]:
        """Consecutive rows per batch: at most max_candidates, and within the context's cells the
        shared prefix twice (seq 0's copy, and an older one rows kept from an earlier call) plus
        every row's own tokens and max_tokens new ones."""
        groups: list[list[int]] = []
        for i in range(len(toks)):
            g = groups[-1] + [i] if groups and len(groups[-1]) < self.max_candidates else None
            if g is not None:
                common = _lcp_all([toks[j] for j in g])
                if 2 * common + sum(len(toks[j]) - common + max_tokens for j in g) <= self.cx.n_ctx:
                    groups[-1] = g
                    continue
            groups.append([i])
        return groups

    def _sample_loop(self, lens: list[int], idx: dict[int, int], samplers, max_tokens: int, stop: list[str],
                     budget_cells: int, seqs: list[int]) -> tuple[list[Candidate], list[list[int]] | None]:
        """Sample every row until its stop string, EOS or max_tokens. Row i continues a prefix of
        lens[i] tokens held in sequence seqs[i]; idx maps each row to its logits' index in the last
        batch; budget_cells = cells left in the context for all rows' new tokens. Returns the
        candidates and, per row, the sampled tokens decoded into its sequence (None when the
        context filled up and a decode failed)."""
        cx, L = self.cx, self.cx.L
        n = len(lens)
        out_tok: list[list[int]] = [[] for _ in range(n)]
        fed: list[list[int]] | None = [[] for _ in range(n)]
        raw = [b"" for _ in range(n)]
        lp = [0.0] * n  # summed log-probability of each row's tokens (Candidate.logprob)
        result: list[Candidate | None] = [None] * n
        while idx:
            entries, order = [], []
            for i, bi in list(idx.items()):
                tok = L.llama_sampler_sample(samplers[i], cx.ctx, bi)
                lp[i] += cx.token_logprob(bi, tok)
                if L.llama_vocab_is_eog(cx.vocab, tok):
                    result[i] = Candidate(_text(raw[i]), None, len(out_tok[i]) + 1, lp[i])
                    del idx[i]
                    continue
                out_tok[i].append(tok)
                raw[i] += cx.piece(tok)
                text = _text(raw[i])
                hit = _first_stop(text, stop, _ROGUE)
                if hit is not None:
                    cut, marker = hit
                    result[i] = Candidate(text[:cut], marker, len(out_tok[i]), lp[i])
                    del idx[i]
                elif len(out_tok[i]) >= max_tokens or sum(map(len, out_tok)) >= budget_cells - n:
                    result[i] = Candidate(text, None, len(out_tok[i]), lp[i])
                    del idx[i]
                else:
                    entries.append((tok, lens[i] + len(out_tok[i]) - 1, seqs[i], True))
                    order.append(i)
            if entries:
                try:
                    cx.decode(entries)
                except ContextFull:
                    for i in order:
                        result[i] = Candidate(_text(raw[i]), None, len(out_tok[i]), lp[i])
                    fed = None
                    break
                for i in order:
                    fed[i].append(out_tok[i][-1])
                idx = {i: j for j, i in enumerate(order)}
        return [r for r in result if r is not None], fed

    def token_logprobs(self, prefix: str, continuation: str) -> list[tuple[bytes, float]]:
        """(piece, log p) for every token of `continuation` given `prefix` and the tokens before it,
        under this policy at temperature 1: what `generate` records as Candidate.logprob, for text it
        did not sample (a saved tree's steps). One teacher-forced pass; seq 0 keeps `prefix` after."""
        cx, L = self.cx, self.cx.L
        with cx.lock:
            ptoks, toks = cx.tokenize(prefix), cx.tokenize(prefix + continuation)
            k = _lcp(ptoks, toks, len(ptoks))  # where prefix + continuation stops tokenising like prefix
            k = k if k == len(ptoks) else max(k - 1, 1)
            if len(toks) + 1 >= cx.n_ctx:
                raise ContextFull(f"{len(toks)} tokens do not fit the {cx.n_ctx}-token context")
            if k >= len(toks):
                return []
            cx.load_prefix(toks[:k], output_last=True)
            out = [(cx.piece(toks[k]), cx.token_logprob(0, toks[k]))]
            for start in range(k, len(toks) - 1, cx.n_batch):  # token j's output predicts token j + 1
                chunk = range(start, min(start + cx.n_batch, len(toks) - 1))
                cx.decode([(toks[j], j, 0, True) for j in chunk])
                out += [(cx.piece(toks[j + 1]), cx.token_logprob(i, toks[j + 1])) for i, j in enumerate(chunk)]
            L.llama_memory_seq_rm(cx.mem, 0, k, -1)
            cx.held = cx.held[:k]
        # where the prefix's last tokens merged with the continuation's first, drop the tokens that
        # lie wholly inside the prefix (a straddling one counts as the continuation's)
        inside = len(prefix.encode("utf-8")) - sum(len(cx.piece(t)) for t in toks[:k])
        while out and inside >= len(out[0][0]) > 0:
            inside -= len(out.pop(0)[0])
        return out

    def _sampler(self, temperature: float, top_p: float, top_k: int, seed: int):
        L = self.cx.L
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if temperature <= 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            return chain
        if top_k > 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(top_k))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(top_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(temperature))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed))
        return chain

    @property
    def stats(self) -> dict:
        return dict(self.cx.stats)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="ignore")


class LlamaPPM:
    """Process preference model: tanh(w . h_last + b) over prompt + steps so far.

    h_last is the final hidden state of the last token, read in an embeddings context (pooling
    NONE). The shared prefix is decoded once with embeddings off; then all siblings' new tokens but
    their last go in one batch (embeddings off), and their K last tokens in one more (embeddings on).
    """

    def __init__(self, model_path: str | os.PathLike, head_path: str | os.PathLike, *,
                 adapter: str | None = None, max_candidates: int = 8, n_ctx: int = 4096,
                 max_step_tokens: int = 256, n_threads: int | None = None, snapshot_mb: int = 128,
                 name: str | None = None):
        self.llm = load_model(model_path, n_threads=n_threads)
        head_path = Path(head_path)
        if not head_path.is_file():
            raise ModelFileError(f"PPM value head not found: {head_path}. Re-install the weights.")
        try:
            with np.load(head_path) as z:
                self.w = np.asarray(z["weight"], dtype=np.float64).reshape(-1)
                self.b = float(np.asarray(z["bias"]).reshape(-1)[0])
        except Exception as e:
            raise ModelFileError(f"PPM value head {head_path} is unreadable ({e}); re-install the weights.") from None
        L = _llama_cpp()
        hidden = L.llama_model_n_embd(self.llm.model)
        if self.w.shape[0] != hidden:
            raise ModelFileError(f"PPM head {head_path} has width {self.w.shape[0]}, model has {hidden}")
        self.cx = SeqContext(self.llm, n_ctx=n_ctx + max_candidates * max_step_tokens,
                             n_seq=max_candidates + 1, embeddings=True, adapter=adapter,
                             n_threads=n_threads, snapshot_mb=snapshot_mb)
        self.max_candidates, self.hidden = max_candidates, hidden
        self.name = name or f"PPM {Path(adapter).name if adapter else Path(model_path).name}"

    # All K siblings in one decode: measured 1.3x faster per step than one after another on fresh
    # siblings (`rstar-app bench`: ~31 vs ~41 ms). False scores them one at a time.
    batch_siblings: bool = True

    def score(self, prefix: str, steps: Sequence[str]) -> list[float]:
        return [float(x) for x in np.tanh(self.features(prefix, steps) @ self.w + self.b)]

    def features(self, prefix: str, steps: Sequence[str]) -> np.ndarray:
        """h_last of prefix + each step: [len(steps), hidden] float64 (what the head reads; used
        by training.head to refit the head without the torch stack)."""
        size = self.max_candidates if self.batch_siblings else 1
        out = [self._features_group(prefix, list(steps[s:s + size])) for s in range(0, len(steps), size)]
        return np.concatenate(out) if out else np.zeros((0, self.hidden))

    def _features_group(self, prefix: str, steps: list[str]) -> np.ndarray:
        cx, L = self.cx, self.cx.L
        with cx.lock:
            full = [cx.tokenize(prefix + st) for st in steps]
            shared = _lcp_all(full)   # each sibling keeps >= 1 own token
            L.llama_set_embeddings(cx.ctx, False)
            cx.load_prefix(full[0][:shared], output_last=False)
            cx.fork(len(steps))
            # siblings' own tokens but the last: one batch, embeddings off (an embeddings batch
            # makes llama.cpp output every token); then the K last tokens with embeddings on
            body = [(tok, p, i + 1, False) for i, f in enumerate(full) for p, tok in enumerate(f[:-1]) if p >= shared]
            for s in range(0, len(body), cx.n_batch):
                cx.decode(body[s:s + cx.n_batch])
            L.llama_set_embeddings(cx.ctx, True)
            try:
                cx.decode([(f[-1], len(f) - 1, i + 1, True) for i, f in enumerate(full)])
                return np.stack([np.ctypeslib.as_array(L.llama_get_embeddings_ith(cx.ctx, i), shape=(self.hidden,))
                                 .astype(np.float64) for i in range(len(full))])
            finally:
                L.llama_set_embeddings(cx.ctx, False)

    @property
    def stats(self) -> dict:
        return dict(self.cx.stats)
