"""Many searches, one device: concurrent Policy.generate() calls run as one batch.

One search asks for K (4-8) siblings at a time; on a GPU a 4-row forward costs about what a
256-row one does (kernel launches, not arithmetic), so GPU rollouts run many searches in threads
(`training.rollouts --parallel M`) and this front gathers their calls into one
`generate_batch` (rstar_app.models.torch_hf). It runs in lockstep: a batch starts when every
registered client is waiting (or `max_wait` after the first call, so a client busy in the sandbox
or PPM cannot stall the rest for long), which keeps batches full because a search spends nearly
all its time waiting for the policy.

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
        self.result: list[Candidate] | None = None
        self.error: BaseException | None = None


class BatchingPolicy:
    """Thread-safe Policy front over a backend with `generate_batch(requests)` (TorchPolicy).

    Args:
        policy: the backend; one batch thread is its only caller.
        max_rows: the most rows (siblings of all requests) in one batch; more wait for the next.
        max_wait: seconds a batch waits, after its first request, for the other clients.
    """

    def __init__(self, policy, *, max_rows: int = 256, max_wait: float = 0.5) -> None:
        if max_rows < 1 or max_wait < 0:
            raise ValueError("max_rows must be >= 1 and max_wait >= 0")
        self.policy, self.max_rows, self.max_wait = policy, max_rows, max_wait
        self.name, self.n_ctx = policy.name, policy.n_ctx
        self.stats = policy.stats
        self.batches = {"batches": 0, "requests": 0, "rows": 0}  # mean batch size = rows / batches
        self._cv = threading.Condition()
        self._pending: list[tuple[object, _Slot]] = []
        self._clients = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="batching-policy", daemon=True)
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
        """Policy.generate: blocks until the batch holding this call has run."""
        from .torch_hf import GenRequest
        req = GenRequest(prefix, n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                         top_k=top_k, seed=seed, stop=tuple(stop), greedy_first=greedy_first)
        if n > self.max_rows:
            raise ValueError(f"n={n} exceeds the batch's max_rows={self.max_rows}")
        slot = _Slot()
        with self._cv:
            if self._closed:
                raise RuntimeError("the batching policy is closed")
            self._pending.append((req, slot))
            self._cv.notify_all()
        slot.done.wait()
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    def close(self) -> None:
        """Finish the queued calls, then stop the batch thread."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=60)

    def _take(self) -> list[tuple[object, _Slot]] | None:
        with self._cv:
            while not self._pending and not self._closed:
                self._cv.wait()
            if not self._pending:
                return None
            deadline = time.monotonic() + self.max_wait
            while len(self._pending) < self._clients and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            batch, rows = [], 0
            while self._pending and (not batch or rows + self._pending[0][0].n <= self.max_rows):
                item = self._pending.pop(0)
                batch.append(item)
                rows += item[0].n
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            try:
                results = self.policy.generate_batch([req for req, _ in batch])
                for (_, slot), res in zip(batch, results):
                    slot.result = res
                self.batches["batches"] += 1
                self.batches["requests"] += len(batch)
                self.batches["rows"] += sum(req.n for req, _ in batch)
            except BaseException as e:  # noqa: BLE001 - handed to every caller of this batch
                for _, slot in batch:
                    slot.error = e
            finally:
                for _, slot in batch:
                    slot.done.set()
