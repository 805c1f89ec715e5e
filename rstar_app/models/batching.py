"""Many searches, one device: concurrent Policy.generate() calls run as one batch.

One search asks for K (4-8) siblings at a time; on a GPU a 4-row forward costs about what a
256-row one does (kernel launches, not arithmetic), so GPU rollouts run many searches in threads
(`training.rollouts --parallel M`) and this front gathers their calls into the rows of one batch
of the backend (TorchPolicy.rows_for / advance).

Continuous batching in chunks: the batch advances `chunk_tokens` tokens at a time; between chunks
finished calls return to their searches and new calls join (rows carried over are prefilled
again with their own tokens). Without chunks one long sibling holds every other call of the
batch until it ends: measured on an H200, 24 searches, a batch ran ~160 token steps for rows
that averaged 33 tokens. It runs in lockstep: a chunk starts when every registered client is in
the batch or waiting to join (or after `max_wait` with an empty batch, `join_wait` between
chunks, so a client busy in the sandbox or PPM cannot stall the rest for long).

    front = BatchingPolicy(TorchPolicy(base, device="cuda"))
    with front.client():          # in each search thread, around its search
        engine.solve(...)
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

from .base import Candidate


class _Slot:
    __slots__ = ("done", "result", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: list | None = None  # list[Candidate] (policy) or list[float] (PPM)
        self.error: BaseException | None = None


class _Front:
    """What both fronts share: a caller parks its request in a slot and blocks; one thread (the
    subclass's `_loop`, started by the subclass once its fields are set) serves the queue."""

    def __init__(self, thread_name: str) -> None:
        self.batches = {"batches": 0, "requests": 0, "rows": 0}  # mean batch size = rows / batches
        self._cv = threading.Condition()
        self._pending: list[tuple[object, _Slot]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=thread_name, daemon=True)

    def _call(self, request) -> list:
        slot = _Slot()
        with self._cv:
            if self._closed:
                raise RuntimeError(f"{type(self).__name__} is closed")
            self._pending.append((request, slot))
            self._cv.notify_all()
        slot.done.wait()
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    def _pop_within(self, used: int, size) -> list[tuple[object, _Slot]]:
        """Queued calls, oldest first, while their rows (`size(request)`) fit in `max_rows` beside
        the `used` ones; at least one when none are used. Call with `_cv` held."""
        batch = []
        while self._pending and (not (batch or used) or used + size(self._pending[0][0]) <= self.max_rows):
            batch.append(self._pending.pop(0))
            used += size(batch[-1][0])
        return batch

    def close(self) -> None:
        """Serve the calls in flight and queued, then stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=120)

    def _loop(self) -> None:
        raise NotImplementedError


class BatchingPolicy(_Front):
    """Thread-safe Policy front over a backend with `rows_for(request)` and
    `advance(rows, max_steps=)` (TorchPolicy).

    Args:
        policy: the backend; one batch thread is its only caller.
        max_rows: the most rows (siblings of all calls) in one chunk; more calls wait.
        chunk_tokens: tokens per chunk, between which calls leave and join (None: each batch runs
            until its last row ends and nothing joins it).
        max_wait: seconds an empty batch waits, after its first call, for the other clients.
        join_wait: seconds a running batch waits between chunks for clients outside it.
    """

    def __init__(self, policy, *, max_rows: int = 256, chunk_tokens: int | None = 32, max_wait: float = 0.5,
                 join_wait: float = 0.05) -> None:
        if max_rows < 1 or max_wait < 0 or join_wait < 0 or (chunk_tokens is not None and chunk_tokens < 1):
            raise ValueError("max_rows and chunk_tokens must be >= 1, max_wait and join_wait >= 0")
        super().__init__("batching-policy")  # batches = chunks run; rows summed over chunks
        self.policy, self.max_rows, self.chunk_tokens = policy, max_rows, chunk_tokens
        self.max_wait, self.join_wait = max_wait, join_wait
        self.name, self.n_ctx = policy.name, policy.n_ctx
        self.stats = policy.stats
        self._clients = 0
        self._thread.start()

    @contextmanager
    def client(self) -> Iterator[None]:
        """Register the calling thread as a client for the duration (what lockstep waits for)."""
        with self._cv:
            self._clients += 1
        try:
            yield
        finally:
            with self._cv:
                self._clients -= 1
                self._cv.notify_all()

    def count_tokens(self, text: str) -> int:
        return self.policy.count_tokens(text)

    def generate(self, prefix: str, *, n: int, max_tokens: int, temperature: float, top_p: float = 0.95,
                 top_k: int = 40, seed: int = 0, stop: Sequence[str] = (),
                 greedy_first: bool = False) -> list[Candidate]:
        """Policy.generate: blocks until this call's rows have all ended."""
        from .torch_hf import GenRequest
        if n > self.max_rows:
            raise ValueError(f"n={n} exceeds the batch's max_rows={self.max_rows}")
        return self._call(GenRequest(prefix, n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                     top_k=top_k, seed=seed, stop=tuple(stop), greedy_first=greedy_first))

    def _take(self, live_calls: int, live_rows: int) -> list[tuple[object, _Slot]] | None:
        """Calls to admit before the next chunk; None when closed and nothing is left."""
        with self._cv:
            if not live_calls:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if not self._pending:
                    return None
            deadline = time.monotonic() + (self.join_wait if live_calls else self.max_wait)
            while len(self._pending) + live_calls < self._clients and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            return self._pop_within(live_rows, lambda req: req.n)

    def _loop(self) -> None:
        live: list[tuple[_Slot, list]] = []  # (caller's slot, its rows) of the calls in the batch
        while (new := self._take(len(live), sum(len(rows) for _, rows in live))) is not None:
            for req, slot in new:
                try:
                    live.append((slot, self.policy.rows_for(req)))
                except Exception as e:  # noqa: BLE001 - a bad call fails alone
                    slot.error = e
                    slot.done.set()
            if not live:
                continue
            self.batches["requests"] += len(new)
            try:
                rows = [r for _, rs in live for r in rs if r.result is None]
                if rows:
                    self.policy.advance(rows, max_steps=self.chunk_tokens)
                    self.batches["batches"] += 1
                    self.batches["rows"] += len(rows)
            except BaseException as e:  # noqa: BLE001 - handed to every caller in the batch
                for slot, _ in live:
                    slot.error = e
                    slot.done.set()
                live = []
                continue
            still = []
            for slot, rs in live:
                if all(r.result is not None for r in rs):
                    slot.result = [r.result for r in rs]
                    slot.done.set()
                else:
                    still.append((slot, rs))
            live = still


class BatchingPPM(_Front):
    """Thread-safe PPM front over TorchPPM: the score() calls that queue up while one batch runs
    go together into the next (one padded forward of up to `max_rows` texts). No lockstep: a PPM
    call is short, so whatever is waiting is batch enough."""

    def __init__(self, ppm, *, max_rows: int = 256) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        super().__init__("batching-ppm")
        self.ppm, self.max_rows, self.name = ppm, max_rows, ppm.name
        self._thread.start()

    def score(self, prefix: str, steps: Sequence[str]) -> list[float]:
        """PPM.score: blocks until the batch holding this call has run."""
        return self._call([prefix + st for st in steps])

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if not self._pending:
                    return
                batch = self._pop_within(0, len)
            rows = sum(len(texts) for texts, _ in batch)
            try:
                scores = self.ppm.score_texts([t for texts, _ in batch for t in texts], rows=self.max_rows)
                for texts, slot in batch:
                    slot.result, scores = scores[:len(texts)], scores[len(texts):]
                self.batches["batches"] += 1
                self.batches["requests"] += len(batch)
                self.batches["rows"] += rows
            except BaseException as e:  # noqa: BLE001 - handed to every caller of this batch
                for _, slot in batch:
                    slot.error = e
            finally:
                for _, slot in batch:
                    slot.done.set()
