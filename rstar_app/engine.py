"""Engine: loads the models and the sandbox once per process and runs searches on them.

The CLI, the web app, evaluation and training rollouts all go through `Engine`, so each gets the
same models, prompt and search code.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from pathlib import Path
from typing import Callable

from .config import SearchConfig
from .selector import Selector
from .tree import Event, Tree, resolve_vote
from .weights import Weights, load_selector, load_weights, sha256


class Engine:
    """Models + sandbox, loaded once. Thread-safe: searches are serialised on one lock (one model
    in memory, one search at a time; the web app queues in front of it), unless `concurrent`:
    then the models are thread-safe themselves (models.batching over the torch backend) and
    searches run side by side."""

    def __init__(self, *, policy, ppm=None, executor, few_shot: bool = False, description: str = "",
                 weights: Weights | None = None, concurrent: bool = False,
                 selector: Selector | None = None, model_files: tuple[str | Path, ...] = (),
                 identity: str = "") -> None:
        self.policy, self.ppm, self.executor = policy, ppm, executor
        # what the answers depend on: local model files (hashed) and what no file says (prompt, server)
        self.model_files, self.identity = tuple(Path(f) for f in model_files), identity
        self.selector = selector    # the weights' learned answer rule; only alongside their PPM
        self.few_shot, self.description, self.weights = few_shot, description, weights
        self.lock = threading.Lock()
        self.concurrent = concurrent

    @classmethod
    def load(
        cls,
        *,
        weights_dir: str | Path | None = None,
        policy_path: str | Path | None = None,
        policy_adapter: str | Path | None = None,
        ppm_path: str | Path | None = None,
        ppm_adapter: str | Path | None = None,
        ppm_head: str | Path | None = None,
        api_url: str | None = None,
        api_model: str | None = None,
        few_shot: bool | None = None,
        no_ppm: bool = False,
        max_candidates: int = 8,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        sandbox_workers: int = 1,
    ) -> "Engine":
        """Build an engine from weights/manifest.json (default) or explicit paths.

        policy_path / ppm_path override the manifest's GGUF files (any GGUF works); api_url uses
        an OpenAI-compatible server as the policy instead of a local model.
        """
        from .bases import resolve
        from .models.llama_cpp import ModelFileError
        from .sandbox import Sandbox

        try:  # a base fetched by `python -m rstar_app.bases` may be named instead of its path
            policy_path = resolve(policy_path) if policy_path else None
        except FileNotFoundError as e:
            raise ModelFileError(str(e)) from None

        # verify: the shipped files are ~23 MB (hashed in ~0.05 s); a corrupt adapter would otherwise
        # load and quietly write nonsense
        w = load_weights(weights_dir, verify=True) if not (policy_path and (ppm_head or no_ppm)) else None
        base = Path(policy_path) if policy_path else w.base
        adapter = policy_adapter if policy_path else (w.policy_adapter if w else None)
        shot = few_shot if few_shot is not None else (w.few_shot if w and not policy_path else adapter is None)
        head = ppm_head or (w.ppm_head if w else None)
        selector = None
        if head and not no_ppm and w and not (ppm_head or ppm_path or ppm_adapter):
            # fit on the weights' own PPM scores (a PPM given by path gets none: "auto" = top-k vote);
            # read before the models load, so a broken file is reported at once
            selector = load_selector(w)
        if api_url:
            from .models.openai_api import OpenAIPolicy
            policy = OpenAIPolicy(api_url, model=api_model, n_ctx=n_ctx, tokenizer_path=base)
        else:
            from .models.llama_cpp import LlamaPolicy
            policy = LlamaPolicy(base, adapter=str(adapter) if adapter else None, max_candidates=max_candidates,
                                 n_ctx=n_ctx, n_threads=n_threads)
        ppm, pbase = None, None
        if head and not no_ppm:
            from .models.llama_cpp import LlamaPPM
            if ppm_head or ppm_path:
                pbase, padapter = ppm_path or base, ppm_adapter
            else:  # the manifest's PPM head (and adapter unless one is given) on the manifest's base
                pbase, padapter = w.base, ppm_adapter or w.ppm_adapter
            ppm = LlamaPPM(pbase, head, adapter=str(padapter) if padapter else None,
                           max_candidates=max_candidates, n_ctx=n_ctx, n_threads=n_threads)
        desc = w.describe(ppm=ppm is not None) if (w and not policy_path and not api_url) else (
            f"policy {getattr(policy, 'name', '?')}" + (f", {ppm.name}" if ppm else ", no PPM"))
        if selector is not None:
            desc += f", answers by {w.selector.name}"
        if shot:
            desc += " [few-shot prompt]"
        # a served policy is named by its model @ url, not by local files it never loads
        files = ([] if api_url else [base, adapter]) + ([pbase, head, padapter] if ppm else []) + (
            [w.selector] if selector is not None else [])
        # empty in the usual case (trained policy, local files): fingerprints stay those recorded before
        identity = "; ".join(x for x in ("few-shot prompt" if shot else "",
                                          f"policy {getattr(policy, 'name', api_url)}" if api_url else "") if x)
        return cls(policy=policy, ppm=ppm, executor=Sandbox(workers=sandbox_workers), few_shot=shot,
                   description=desc, weights=w, selector=selector, model_files=tuple(f for f in files if f),
                   identity=identity)

    def fingerprint(self) -> str | None:
        """sha256 over the model files' own sha256s and the identity line (16 hex digits), or None
        for an engine built from objects: tells whether two evaluation runs searched with the same models."""
        if not (self.model_files or self.identity):
            return None
        sums = {f: sha256(f) for f in set(self.model_files)}  # the base is listed for policy and PPM: read once
        h = hashlib.sha256(self.identity.encode())
        for f in self.model_files:
            h.update(f"{f.name}:{sums[f]};".encode())
        return h.hexdigest()[:16]

    def vote_rule(self, config: SearchConfig) -> str:
        """The answer rule `config.vote` resolves to on this engine ("auto": learned if it has a selector)."""
        return resolve_vote(config.vote, self.selector is not None)

    def solve(self, problem: str, config: SearchConfig, *, gold: str | None = None,
              on_event: Callable[[Event], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> Tree:
        """Run one search (see search.run); raises steps.ProblemError for unusable problems."""
        from .search import run
        from .steps import clean_problem
        clean_problem(problem)  # refuse bad input before waiting for the lock
        with contextlib.nullcontext() if self.concurrent else self.lock:
            tree = run(problem, policy=self.policy, ppm=self.ppm, executor=self.executor, config=config,
                       few_shot=self.few_shot, gold=gold, on_event=on_event, should_stop=should_stop,
                       selector=self.selector)
        tree.meta["engine"] = self.description
        return tree

    def close(self) -> None:
        self.executor.close()
