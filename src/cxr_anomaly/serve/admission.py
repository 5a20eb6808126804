"""Admission control of the scoring service: requests in flight and the memory they may hold.

Two bounds, both answered with ``503 Service Unavailable`` and ``Retry-After`` when reached, so
that a burst makes clients wait and retry instead of making the server grow until it dies:

- :class:`InFlightLimit`: the scoring requests being read, decoded or scored at once; one more
  is refused at once, before its body is read.
- :class:`MemoryBudget`: bytes that uploads being read and films being decoded may hold at once,
  reserved from what each declares (the ``Content-Length``, the image header) before the memory
  is taken. A request waits a bounded time for room, then is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

logger = logging.getLogger(__name__)


class ServiceBusyError(Exception):
    """The service is at a limit; the client should retry later.

    Attributes:
        reason: which limit, for the response's message.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class AdmissionStatistics:
    """Refusals so far.

    Attributes:
        refused_in_flight: requests refused because too many were in flight.
        refused_memory: requests refused because the memory budget stayed full.
        refused_queue: films refused because the scoring queue was full.
    """

    refused_in_flight: int = 0
    refused_memory: int = 0
    refused_queue: int = 0

    @property
    def refused(self) -> int:
        """Requests answered 503, for any limit."""
        return self.refused_in_flight + self.refused_memory + self.refused_queue


class InFlightLimit:
    """At most ``limit`` requests inside :meth:`admit` at once; one more raises :class:`ServiceBusyError`."""

    def __init__(self, limit: int, statistics: AdmissionStatistics) -> None:
        if limit < 1:
            raise ValueError(f"limit={limit}; expected at least 1")
        self.limit = limit
        self.active = 0
        self.statistics = statistics

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one place for the request while the block runs (the event loop is single-threaded)."""
        if self.active >= self.limit:
            self.statistics.refused_in_flight += 1
            raise ServiceBusyError(f"{self.limit} scoring requests are already in flight")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


class MemoryBudget:
    """Bytes that requests may reserve at once; a reservation waits for room, at most ``wait_seconds``.

    A reservation larger than the whole budget is cut to the budget: such a film waits until it
    can be decoded alone, rather than being refused by a budget smaller than the side limit allows.
    """

    def __init__(self, total_bytes: int, wait_seconds: float, statistics: AdmissionStatistics) -> None:
        if total_bytes < 1:
            raise ValueError(f"total_bytes={total_bytes}; expected a positive number")
        if wait_seconds < 0:
            raise ValueError(f"wait_seconds={wait_seconds}; expected a non-negative number")
        self.total_bytes = total_bytes
        self.wait_seconds = wait_seconds
        self.reserved_bytes = 0
        self.statistics = statistics
        self._changed: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()  # test clients may run each request on a new loop
        if self._changed is None or self._loop is not loop:
            self._changed, self._loop = asyncio.Condition(), loop
        return self._changed

    async def acquire(self, nbytes: int) -> int:
        """Reserve ``nbytes`` (cut to the budget); return the bytes reserved, to pass to :meth:`release`.

        Raises:
            ServiceBusyError: no room came within ``wait_seconds``.
        """
        wanted = max(0, min(int(nbytes), self.total_bytes))
        changed = self._condition()
        async with changed:
            try:
                await asyncio.wait_for(
                    changed.wait_for(lambda: self.reserved_bytes + wanted <= self.total_bytes), self.wait_seconds
                )
            except TimeoutError:
                self.statistics.refused_memory += 1
                raise ServiceBusyError(
                    f"the memory budget of {self.total_bytes} bytes stayed full for {self.wait_seconds:g} s"
                ) from None
            self.reserved_bytes += wanted
        return wanted

    async def release(self, nbytes: int) -> None:
        """Give back bytes reserved by :meth:`acquire` and wake the requests waiting for room."""
        changed = self._condition()
        async with changed:
            self.reserved_bytes = max(0, self.reserved_bytes - nbytes)
            changed.notify_all()

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[int]:
        """:meth:`acquire` for the block's duration, released however it ends."""
        reserved = await self.acquire(nbytes)
        try:
            yield reserved
        finally:
            await self.release(reserved)
