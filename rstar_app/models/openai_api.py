"""A policy served by an OpenAI-compatible completions API (vLLM, SGLang, llama.cpp's server,
llama-cpp-python's `llama_cpp.server`), so a large policy on a GPU box drives the same search.

Servers differ in what they support: vLLM/SGLang return `n` choices per request and say which
stop string matched (`stop_reason`); llama-cpp-python's server ignores `n` and reports only
`finish_reason`. So: ask for n, top up with single requests (seed + i) when fewer come back, and
when a server does not say which marker stopped a step, ask it with a 3-token greedy probe after
the shared "<end_of_" prefix (cheap: the server's prefix cache holds the text).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from ..steps import ANSWER, END_ANSWER, STOP
from .base import Candidate

_PREFIX = "<end_of_"


class OpenAIPolicy:
    """Policy backed by `POST {base_url}/completions`.

    Args:
        base_url: e.g. "http://127.0.0.1:8000/v1".
        model: model name the server expects (None: ask /models for the first one).
        tokenizer_path: a GGUF whose vocabulary counts tokens locally (context-window checks);
            without it tokens are estimated at 3.5 characters each.
        timeout: seconds per HTTP request.
    """

    def __init__(self, base_url: str, *, model: str | None = None, n_ctx: int = 4096,
                 tokenizer_path: str | Path | None = None, timeout: float = 120.0, api_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout, self.api_key, self.n_ctx = timeout, api_key, n_ctx
        self.model = model or self._first_model()
        self.name = f"{self.model} @ {self.base_url}"
        self._vocab = None
        if tokenizer_path:
            import llama_cpp
            self._vocab = llama_cpp.Llama(model_path=str(tokenizer_path), vocab_only=True, verbose=False)

    def count_tokens(self, text: str) -> int:
        if self._vocab is not None:
            return len(self._vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))
        return int(len(text) / 3.5) + 1

    def generate(self, prefix: str, *, n: int, max_tokens: int, temperature: float, top_p: float = 0.95,
                 top_k: int = 40, seed: int = 0, stop: Sequence[str] = STOP,
                 greedy_first: bool = False) -> list[Candidate]:
        """n candidates; candidate i uses seed + i when the server samples one per request. With
        greedy_first, candidate 0 is a separate temperature-0 request."""
        if greedy_first and n > 1 and temperature > 0:
            head = self.generate(prefix, n=1, max_tokens=max_tokens, temperature=0.0, top_p=top_p,
                                 top_k=top_k, seed=seed, stop=stop)
            return head + self.generate(prefix, n=n - 1, max_tokens=max_tokens, temperature=temperature,
                                        top_p=top_p, top_k=top_k, seed=seed + 1, stop=stop)
        body = {"prompt": prefix, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                "top_k": top_k, "seed": seed, "n": n, "stop": list(stop)}
        choices = self._complete(body)["choices"][:n]
        got = [self._candidate(prefix, c, stop) for c in choices]
        for i in range(len(got), n):  # servers that ignore n
            one = self._complete({**body, "n": 1, "seed": seed + i})["choices"][0]
            got.append(self._candidate(prefix, one, stop))
        return got

    def _candidate(self, prefix: str, choice: dict, stop: Sequence[str]) -> Candidate:
        text = choice.get("text", "")
        tokens = self.count_tokens(text) + 1
        if choice.get("finish_reason") != "stop":
            return Candidate(text, None, tokens)
        reason = choice.get("stop_reason")
        if isinstance(reason, str) and reason in stop:
            return Candidate(text, reason, tokens)
        if ANSWER in text and END_ANSWER in stop:
            return Candidate(text, END_ANSWER, tokens)
        return Candidate(text, self._probe(prefix + text, stop), tokens)

    def _probe(self, text: str, stop: Sequence[str]) -> str | None:
        """Which marker follows `text`? The server stopped on one of them without saying which."""
        out = self._complete({"prompt": text + _PREFIX, "max_tokens": 3, "temperature": 0.0, "n": 1})
        tail = _PREFIX + out["choices"][0].get("text", "")
        return next((s for s in stop if tail.startswith(s[: len(_PREFIX) + 2])), None)

    def _first_model(self) -> str:
        data = self._request("GET", "/models")
        try:
            return data["data"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(f"{self.base_url}/models lists no model; pass --api-model") from None

    def _complete(self, body: dict) -> dict:
        return self._request("POST", "/completions", {"model": self.model, **body})

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(self.base_url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{self.base_url}{path}: HTTP {e.code}: {e.read()[:300]!r}") from None
        except (urllib.error.URLError, TimeoutError) as e:
            raise RuntimeError(f"cannot reach the policy server at {self.base_url}: {e}") from None
