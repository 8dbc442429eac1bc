"""Micro-batching: concurrent requests are gathered into one scoring call on a single worker thread.

The event loop never runs the model. Jobs wait in a bounded queue (counted in pairs); one asyncio task takes the
jobs that are queued, up to ``max_batch_pairs``, and hands them to a one-thread executor as one ``score`` call.
If the model was idle when a job arrived, the task first waits up to ``max_wait_ms`` for company; jobs that piled
up while the model was busy go at once. A job whose caller has gone away before its batch starts is dropped.

Fairness: with ``max_slice_cost`` and ``pair_cost`` set, a job whose estimated cost is above ``max_slice_cost`` is
split into slices of about that cost, scored one per call and taken in turn with other jobs (round robin: a job
with slices left goes back in the queue behind the jobs that arrived while its slice was scored). While such a job
is queued, every call is kept to about one slice, so a small request waits about one slice behind a large one
instead of the large one's whole time. Without a large job, calls gather everything queued as before.

Keys: a job may carry a ``key`` (e.g. a truncation direction); one call only gathers jobs of one key, and the
function gets the key as a third argument (jobs without a key: two arguments, as before). Jobs of another key
keep their place in the queue for the next call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from cappy.errors import InputError

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Scores, or (scores, token counts) for a batcher built with returns_lengths=True; called with a third argument,
# the jobs' key, when they have one.
ScoreFn = Callable[..., Sequence[float] | tuple[Sequence[float], Sequence[int]]]
# One pair's estimated cost (e.g. an upper bound of its token count), computed on the event loop: keep it cheap.
PairCost = Callable[[str, str], int]


class Overloaded(RuntimeError):
    """The queue is full: the caller should retry later (HTTP 429)."""


class ShuttingDown(RuntimeError):
    """The batcher is closing and accepts no new work (HTTP 503)."""


@dataclass(eq=False)
class _Job:
    instructions: list[str]
    responses: list[str]
    future: asyncio.Future
    key: Hashable = None  # jobs of one key only are scored together; the function gets it as a third argument
    enqueued: float = field(default_factory=time.perf_counter)
    ends: list[int] | None = None  # slice boundaries (pair indices) of a split job; None: one slice, the whole job
    cost: list[int] | None = None  # cumulative estimated cost: cost[k] of the first k pairs (when slicing is on)
    taken: int = 0  # pairs handed to a scoring call so far
    parts: list[tuple[np.ndarray, np.ndarray | None]] = field(default_factory=list)  # the scored slices, in order

    def __len__(self) -> int:
        return len(self.instructions)

    @property
    def left(self) -> int:
        """Pairs not yet handed to a scoring call."""
        return len(self) - self.taken

    def next_slice(self) -> int:
        """The end of the next slice."""
        if self.ends is None:
            return len(self)
        return next(e for e in self.ends if e > self.taken)


def _slice_ends(costs: Sequence[int], max_cost: int, max_pairs: int) -> list[int]:
    """Boundaries of consecutive slices of at most ``max_cost`` (at least one pair) and ``max_pairs`` each."""
    ends, cost, start = [], 0, 0
    for i, c in enumerate(costs):
        if i > start and (cost + c > max_cost or i - start >= max_pairs):
            ends.append(i)
            cost, start = 0, i
        cost += c
    ends.append(len(costs))
    return ends


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
    With ``max_slice_cost`` and ``pair_cost`` (e.g. 2048 and an upper bound of a pair's tokens), large jobs are
    scored in slices taken in turn with other jobs (see the module's docstring).
    """

    def __init__(
        self,
        score_fn: ScoreFn,
        max_batch_pairs: int = 256,
        max_wait_ms: float = 2.0,
        max_queue_pairs: int = 4096,
        returns_lengths: bool = False,
        max_slice_cost: int | None = None,
        pair_cost: PairCost | None = None,
    ) -> None:
        if max_batch_pairs < 1 or max_queue_pairs < 1 or max_wait_ms < 0:
            raise InputError("max_batch_pairs and max_queue_pairs must be positive and max_wait_ms >= 0")
        if (max_slice_cost is None) != (pair_cost is None) or (max_slice_cost is not None and max_slice_cost < 1):
            raise InputError("slicing needs both a positive max_slice_cost and a pair_cost function")
        self.score_fn = score_fn
        self.returns_lengths = returns_lengths
        self.max_batch_pairs = max_batch_pairs
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue_pairs = max_queue_pairs
        self.max_slice_cost = max_slice_cost
        self.pair_cost = pair_cost
        self._jobs: deque[_Job] = deque()
        self._queued_pairs = 0
        self._split_jobs = 0  # split jobs accepted and not finished: while any, calls are kept to about one slice
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
            "split_requests": 0,  # requests scored in slices (above max_slice_cost)
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
    async def score(self, instructions: list[str], responses: list[str], key: Hashable = None) -> np.ndarray:
        """Queue pairs and wait for their scores (float32, input order). A ``key`` other than None is scored only
        with jobs of the same key and passed to the function (e.g. ``key="left"``, a truncation direction).

        Raises :class:`Overloaded` when the queue has no room and :class:`ShuttingDown` while closing.
        Cancelling the awaiting task withdraws the job's pairs that no batch has started.
        """
        return (await self._submit(instructions, responses, key))[0]

    async def score_with_lengths(
        self, instructions: list[str], responses: list[str], key: Hashable = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`score`, also with each pair's token count as scored (int64); needs ``returns_lengths=True``.

        Example: ``scores, lengths = await batcher.score_with_lengths(["q", "q"], ["a", "b"])``
        """
        if not self.returns_lengths:
            raise RuntimeError("this MicroBatcher was built without returns_lengths=True: it has no token counts")
        scores, lengths = await self._submit(instructions, responses, key)
        assert lengths is not None
        return scores, lengths

    async def _submit(
        self, instructions: list[str], responses: list[str], key: Hashable = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if len(instructions) != len(responses):
            raise InputError(f"got {len(instructions)} instructions and {len(responses)} responses")
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
        job = _Job(list(instructions), list(responses), asyncio.get_running_loop().create_future(), key)
        if self.pair_cost is not None and self.max_slice_cost is not None:
            costs = [self.pair_cost(i, r) for i, r in zip(job.instructions, job.responses)]
            job.cost = [0, *itertools.accumulate(costs)]
            if n > 1 and job.cost[-1] > self.max_slice_cost:
                job.ends = _slice_ends(costs, self.max_slice_cost, self.max_batch_pairs)
                self._split_jobs += 1
                self.stats["split_requests"] += 1
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
            batch, unfinished = self._take_batch()
            if batch:
                await self._run_batch(loop, batch)
            # behind the jobs that arrived while the slice was scored: they wait about one slice, not the whole job
            self._jobs.extend(job for job in unfinished if job.left)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[_Job, int, int]]) -> None:
        instr = [s for job, a, b in batch for s in job.instructions[a:b]]
        resp = [s for job, a, b in batch for s in job.responses[a:b]]
        try:
            scores, lengths = await loop.run_in_executor(self._executor, self._score, instr, resp, batch[0][0].key)
        except Exception as err:  # the model failed on this batch: every caller in it gets the error
            logger.exception("scoring a batch of %d pairs failed", len(instr))
            for job, _, _ in batch:
                if not job.future.done():
                    job.future.set_exception(err)
        else:
            pos = 0
            for job, a, b in batch:
                if not job.future.done():
                    job.parts.append(
                        (scores[pos : pos + b - a], None if lengths is None else lengths[pos : pos + b - a])
                    )
                    if b == len(job):
                        job.future.set_result(self._joined(job.parts))
                pos += b - a
            self.stats["batches"] += 1
            self.stats["pairs"] += len(instr)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(instr))
        finally:
            self._queued_pairs -= len(instr)
            for job, _, b in batch:
                if job.left and job.future.done():  # a split job that failed, or whose caller left, mid-way
                    self._withdraw(job, cancelled=job.future.cancelled())
                elif job.ends is not None and b == len(job):
                    self._split_jobs -= 1

    @staticmethod
    def _joined(parts: list[tuple[np.ndarray, np.ndarray | None]]) -> tuple[np.ndarray, np.ndarray | None]:
        if len(parts) == 1:
            return parts[0]
        scores = np.concatenate([p[0] for p in parts])
        return scores, (None if parts[0][1] is None else np.concatenate([p[1] for p in parts]))

    def _pending_live(self) -> int:
        return sum(j.left for j in self._jobs if not j.future.done())

    def _take_batch(self) -> tuple[list[tuple[_Job, int, int]], list[_Job]]:
        """Pop work from the front: (job, start, end) slices up to ``max_batch_pairs`` (always at least one live
        job), all of the first live job's key, and the split jobs taken that have slices left (they go back in the
        queue after this batch). Jobs of other keys keep their places.

        While a split job is in the queue, the batch is also kept to ``max_slice_cost`` (estimated): the next
        call then comes after about one slice, whoever waits for it."""
        batch: list[tuple[_Job, int, int]] = []
        unfinished: list[_Job] = []
        passed: deque[_Job] = deque()  # live jobs of another key, in queue order
        size = cost = 0
        fair = self._split_jobs > 0
        while self._jobs:
            job = self._jobs[0]
            if job.future.done():  # cancelled by its caller before (the rest of) its work started
                self._jobs.popleft()
                self._withdraw(job, cancelled=True)
                continue
            if batch and job.key != batch[0][0].key:
                passed.append(self._jobs.popleft())
                continue
            end = job.next_slice()
            n = end - job.taken
            job_cost = job.cost[end] - job.cost[job.taken] if fair and job.cost is not None else 0
            if batch and (size + n > self.max_batch_pairs or (fair and cost + job_cost > self.max_slice_cost)):
                break
            self._jobs.popleft()
            batch.append((job, job.taken, end))
            job.taken = end
            size += n
            cost += job_cost
            if job.left:
                unfinished.append(job)
        self._jobs.extendleft(reversed(passed))
        return batch, unfinished

    def _withdraw(self, job: _Job, cancelled: bool) -> None:
        """Forget the pairs of ``job`` that no batch has taken (its future is done)."""
        self._queued_pairs -= job.left
        if job.ends is not None:
            self._split_jobs -= 1
        job.taken = len(job)
        if cancelled:
            self.stats["cancelled"] += 1

    def _score(
        self, instructions: list[str], responses: list[str], key: Hashable = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        t0 = time.perf_counter()
        try:
            result = (
                self.score_fn(instructions, responses) if key is None else self.score_fn(instructions, responses, key)
            )
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
