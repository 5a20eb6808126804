"""Micro-batching: concurrent scoring requests share one forward pass.

Each request puts its film on a queue and awaits a future. A single worker task takes the first
waiting film, gathers others that arrive within ``max_wait_seconds`` (up to ``max_batch_size``),
scores them together in one worker thread (so the event loop keeps accepting uploads while the
network runs) and resolves every future. Under light load a film waits at most
``max_wait_seconds``; under heavy load batches fill up and the per-film cost falls. At most
``max_queued`` films wait at once: one more raises :class:`QueueFullError` at once (the service
answers 503), so a burst cannot grow the queue without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from ..image_base import stack_films

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")


class QueueFullError(RuntimeError):
    """``max_queued`` films already wait for the scorer."""


@dataclass
class BatchStatistics:
    """What the batcher has done so far.

    Attributes:
        batches: forward passes run.
        films: films scored.
        largest_batch: the most films scored in one pass.
    """

    batches: int = 0
    films: int = 0
    largest_batch: int = 0


class BatchScorer(Generic[ResultT]):
    """Collects concurrent single-film requests into batches for ``score_batch``.

    Args:
        score_batch: scores uint8 films (B, S, S) and returns one result per film, in order.
        max_batch_size: the most films per call of ``score_batch``.
        max_wait_seconds: how long the first film of a batch waits for company.
        max_queued: the most films waiting (queued or in the batch being scored); None: no bound.
    """

    def __init__(
        self,
        score_batch: Callable[[np.ndarray], list[ResultT]],
        *,
        max_batch_size: int = 32,
        max_wait_seconds: float = 0.005,
        max_queued: int | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size}; expected at least 1")
        if max_queued is not None and max_queued < 1:
            raise ValueError(f"max_queued={max_queued}; expected at least 1")
        if max_wait_seconds < 0:
            raise ValueError(f"max_wait_seconds={max_wait_seconds}; expected a non-negative number")
        self.score_batch = score_batch
        self.max_batch_size = max_batch_size
        self.max_wait_seconds = max_wait_seconds
        self.max_queued = max_queued
        self.waiting = 0  # films between score() and their result; the event loop is single-threaded
        self.statistics = BatchStatistics()
        # one thread: the network is not shared between threads, and batching gives the speed-up
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-score")
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[ResultT]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _ensure_worker(self) -> asyncio.Queue[tuple[np.ndarray, asyncio.Future[ResultT]]]:
        """Start the worker on the running loop (test clients may run each request on a new loop)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done() or self._queue is None:
            self._loop = loop
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run(self._queue), name="cxr-anomaly batcher")
        return self._queue

    async def score(self, film: np.ndarray) -> ResultT:
        """Score one uint8 film (S, S), batched with whatever else is waiting.

        Raises:
            QueueFullError: ``max_queued`` films are already waiting.
        """
        if self.max_queued is not None and self.waiting >= self.max_queued:
            raise QueueFullError(f"{self.max_queued} films already wait for the scorer")
        queue = self._ensure_worker()
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self.waiting += 1
        try:
            await queue.put((film, future))
            return await future
        finally:
            self.waiting -= 1

    async def _gather(
        self, queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[ResultT]]]
    ) -> list[tuple[np.ndarray, asyncio.Future[ResultT]]]:
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_seconds
        while len(batch) < self.max_batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self, queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[ResultT]]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather(queue)
            live = [(film, future) for film, future in batch if not future.done()]  # drop cancelled
            if not live:
                continue
            films = stack_films([film for film, _ in live])  # (B, S, S); uint16 once one film is 16-bit
            try:
                results = await loop.run_in_executor(self._executor, self.score_batch, films)
            except Exception as error:  # every waiting request must hear about the failure
                logger.exception("scoring a batch of %d films failed", len(live))
                for _, future in live:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.statistics.batches += 1
            self.statistics.films += len(live)
            self.statistics.largest_batch = max(self.statistics.largest_batch, len(live))
            for (_, future), result in zip(live, results):
                if not future.done():
                    future.set_result(result)

    def close(self) -> None:
        """Stop the worker task and its thread; a later :meth:`score` starts fresh ones."""
        if self._worker is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._worker.cancel)
        self._worker = None
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-score")
