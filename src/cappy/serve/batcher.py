"""Micro-batching: concurrent requests are gathered into one scoring call on a single worker thread.

The event loop never runs the model. Jobs wait in a bounded queue (counted in pairs); one asyncio task takes the
jobs that are queued, up to ``max_batch_pairs``, and hands them to a one-thread executor as one ``score`` call.
If the model was idle when a job arrived, the task first waits up to ``max_wait_ms`` for company; jobs that piled
up while the model was busy go at once. A job whose caller has gone away before its batch starts is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Scores, or (scores, token counts) for a batcher built with returns_lengths=True.
ScoreFn = Callable[[list[str], list[str]], Sequence[float] | tuple[Sequence[float], Sequence[int]]]


class Overloaded(RuntimeError):
    """The queue is full: the caller should retry later (HTTP 429)."""


class ShuttingDown(RuntimeError):
    """The batcher is closing and accepts no new work (HTTP 503)."""


@dataclass
class _Job:
    instructions: list[str]
    responses: list[str]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    def __len__(self) -> int:
        return len(self.instructions)


class MicroBatcher:
    """Score pairs from many concurrent callers with as few model calls as possible.

    Example:
        >>> batcher = MicroBatcher(lambda i, r: scorer.score(i, r), max_batch_pairs=256, max_wait_ms=2)
        >>> await batcher.start()
        >>> await batcher.score(["What is 2+2?"], ["4"])
        array([0.91], dtype=float32)
        >>> await batcher.close()  # finishes every accepted job first

    With ``returns_lengths=True`` the function returns ``(scores, token counts)`` (as ``Cappy.score(...,
    return_lengths=True)`` does) and :meth:`score_with_lengths` hands each caller its share of both.
    """

    def __init__(
        self,
        score_fn: ScoreFn,
        max_batch_pairs: int = 256,
        max_wait_ms: float = 2.0,
        max_queue_pairs: int = 4096,
        returns_lengths: bool = False,
    ) -> None:
        if max_batch_pairs < 1 or max_queue_pairs < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_pairs and max_queue_pairs must be positive and max_wait_ms >= 0")
        self.score_fn = score_fn
        self.returns_lengths = returns_lengths
        self.max_batch_pairs = max_batch_pairs
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue_pairs = max_queue_pairs
        self._jobs: deque[_Job] = deque()
        self._queued_pairs = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        # One thread: the model and its tokenizer are used by one thread at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cappy-score")
        self.stats: dict[str, float] = {
            "requests": 0,
            "pairs": 0,
            "batches": 0,
            "largest_batch": 0,
            "cancelled": 0,
            "rejected": 0,
            "busy_s": 0.0,  # seconds the scoring thread spent in score calls
        }

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the worker task on the running event loop."""
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="cappy-batcher")

    async def close(self) -> None:
        """Stop accepting work, finish every job already accepted, then stop the worker."""
        self._closing = True
        if self._task is not None:
            assert self._wake is not None
            self._wake.set()
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    @property
    def queued_pairs(self) -> int:
        """Pairs accepted and not yet scored (queued or in the running batch)."""
        return self._queued_pairs

    # ------------------------------------------------------------------ API
    async def score(self, instructions: list[str], responses: list[str]) -> np.ndarray:
        """Queue pairs and wait for their scores (float32, input order).

        Raises :class:`Overloaded` when the queue has no room and :class:`ShuttingDown` while closing.
        Cancelling the awaiting task withdraws the job if its batch has not started.
        """
        return (await self._submit(instructions, responses))[0]

    async def score_with_lengths(self, instructions: list[str], responses: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`score`, also with each pair's token count as scored (int64); needs ``returns_lengths=True``.

        Example: ``scores, lengths = await batcher.score_with_lengths(["q", "q"], ["a", "b"])``
        """
        if not self.returns_lengths:
            raise RuntimeError("this MicroBatcher was built without returns_lengths=True: it has no token counts")
        scores, lengths = await self._submit(instructions, responses)
        assert lengths is not None
        return scores, lengths

    async def _submit(self, instructions: list[str], responses: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        if len(instructions) != len(responses):
            raise ValueError(f"got {len(instructions)} instructions and {len(responses)} responses")
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        if self._task is None or self._wake is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        n = len(instructions)
        if n == 0:
            return np.empty(0, dtype=np.float32), (np.empty(0, dtype=np.int64) if self.returns_lengths else None)
        if self._queued_pairs + n > self.max_queue_pairs:
            self.stats["rejected"] += 1
            raise Overloaded(
                f"the queue is full ({self._queued_pairs} pairs waiting, limit {self.max_queue_pairs}); retry later"
            )
        job = _Job(list(instructions), list(responses), asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._queued_pairs += n
        self.stats["requests"] += 1
        self._wake.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            if not job.future.done():
                job.future.cancel()
            raise

    async def run_in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the scoring thread (for tokenizer work that must not race the model's)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------------ worker
    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            idle = not self._jobs
            while not self._jobs:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            if idle and self.max_wait > 0:
                # The model was idle: give concurrent callers a moment to join this batch.
                deadline = loop.time() + self.max_wait
                while self._pending_live() < self.max_batch_pairs and not self._closing:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), remaining)
                    except asyncio.TimeoutError:
                        break
            batch = self._take_batch()
            if not batch:
                continue
            instr = [s for job in batch for s in job.instructions]
            resp = [s for job in batch for s in job.responses]
            try:
                scores, lengths = await loop.run_in_executor(self._executor, self._score, instr, resp)
            except Exception as err:  # the model failed on this batch: every caller in it gets the error
                logger.exception("scoring a batch of %d pairs failed", len(instr))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
            else:
                pos = 0
                for job in batch:
                    if not job.future.done():
                        part = None if lengths is None else lengths[pos : pos + len(job)]
                        job.future.set_result((scores[pos : pos + len(job)], part))
                    pos += len(job)
                self.stats["batches"] += 1
                self.stats["pairs"] += len(instr)
                self.stats["largest_batch"] = max(self.stats["largest_batch"], len(instr))
            finally:
                self._queued_pairs -= len(instr)

    def _pending_live(self) -> int:
        return sum(len(j) for j in self._jobs if not j.future.done())

    def _take_batch(self) -> list[_Job]:
        """Pop jobs from the front up to ``max_batch_pairs`` (always at least one live job)."""
        batch: list[_Job] = []
        size = 0
        while self._jobs:
            job = self._jobs[0]
            if job.future.done():  # cancelled by its caller before its batch started
                self._jobs.popleft()
                self._queued_pairs -= len(job)
                self.stats["cancelled"] += 1
                continue
            if batch and size + len(job) > self.max_batch_pairs:
                break
            batch.append(self._jobs.popleft())
            size += len(job)
        return batch

    def _score(self, instructions: list[str], responses: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        t0 = time.perf_counter()
        try:
            result = self.score_fn(instructions, responses)
        finally:
            self.stats["busy_s"] += time.perf_counter() - t0
        lengths = None
        if self.returns_lengths:
            result, counts = result
            lengths = np.asarray(counts, dtype=np.int64).reshape(-1)
        scores = np.asarray(result, dtype=np.float32).reshape(-1)
        for what, got in (("scores", scores), ("token counts", lengths)):
            if got is not None and got.shape[0] != len(instructions):
                raise RuntimeError(f"the scorer returned {got.shape[0]} {what} for {len(instructions)} pairs")
        return scores, lengths
