"""uvicorn's HTTP/1.1 protocol (h11) with the timeouts and the connection cap it lacks.

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``), but a connection that
never completes its request headers, or a request body that trickles in at a byte a second, is
kept for as long as the client likes, and it accepts connections until the process runs out of
file descriptors. :class:`GuardedH11Protocol` adds:

- a header timeout: a connection must complete its request headers within ``header_timeout``
  seconds of opening, or of its first byte after a response (an idle keep-alive connection is
  closed after uvicorn's ``timeout_keep_alive``, set to the idle timeout);
- a body timeout: a request body must arrive whole within ``body_timeout`` seconds of its headers;
- a connection cap: beyond ``max_connections`` open at once, the connection that has waited
  longest without a request in progress (idle, or still sending its headers) is closed to make
  room; when every connection has a request in progress, the newcomer is closed instead, before
  it is read. Idle sockets therefore cannot lock out a health check.

A connection cut by a timeout is closed without a response; the application sees a disconnect.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)


@dataclass
class ConnectionLimits:
    """Timeouts and the connection cap, with counters of what they cut.

    Attributes:
        header_timeout: seconds a connection may take to send complete request headers.
        body_timeout: seconds a request body may take to arrive, from its headers.
        max_connections: connections open at once; more are closed on arrival.
        refused_connections: new connections closed because the cap was reached and none was idle.
        evicted_connections: idle connections closed to make room for a new one.
        header_timeouts: connections closed for slow or missing request headers.
        body_timeouts: connections closed for a slow request body.
    """

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 256
    refused_connections: int = 0
    evicted_connections: int = 0
    header_timeouts: int = 0
    body_timeouts: int = 0

    def __post_init__(self) -> None:
        if self.header_timeout <= 0 or self.body_timeout <= 0:
            raise ValueError(
                f"header_timeout={self.header_timeout}, body_timeout={self.body_timeout}; "
                "expected positive numbers of seconds"
            )
        if self.max_connections < 1:
            raise ValueError(f"max_connections={self.max_connections}; expected at least 1")


class GuardedH11Protocol(H11Protocol):
    """:class:`H11Protocol` with the header and body timeouts and the connection cap of ``limits``.

    Use :func:`guarded_protocol` to bind the limits: uvicorn builds one protocol per connection
    from the class.
    """

    limits: ConnectionLimits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._timed_cycle: object | None = None
        self._idle_since: float | None = None  # when it began to wait for a request; None while one runs

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._evict_longest_idle():
            self.limits.refused_connections += 1
            logger.debug("closed a connection on arrival: %d are open, the cap, all busy", self.limits.max_connections)
            transport.abort()  # frees the descriptor now, with nothing read or written
            return
        self._idle_since = self.loop.time()
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._headers_too_slow)

    def _evict_longest_idle(self) -> bool:
        """Close the connection that has waited longest without a request in progress; False if none."""
        idle = [
            other
            for other in self.connections
            if isinstance(other, GuardedH11Protocol)
            and other is not self
            and other._idle_since is not None
            and not other.transport.is_closing()
        ]
        if not idle:
            return False
        victim = min(idle, key=lambda other: other._idle_since or 0.0)
        victim._idle_since = None
        victim.transport.abort()
        self.limits.evicted_connections += 1
        return True

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._idle_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiting_for_headers = self.cycle is None or self.cycle.response_complete
        if waiting_for_headers and self._header_timer is None and not self.transport.is_closing():
            # the first byte of a request on a kept-alive connection starts its header clock
            self._header_timer = self.loop.call_later(self.limits.header_timeout, self._headers_too_slow)
        super().data_received(data)
        self._follow_cycle()

    def _follow_cycle(self) -> None:
        """Stop the header clock once a request has its headers; run the body clock until its end."""
        cycle = self.cycle
        if cycle is None:
            return
        if cycle is not self._timed_cycle:
            self._timed_cycle = cycle
            self._idle_since = None
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            if cycle.more_body:
                self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_too_slow)
        if not cycle.more_body and self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.limits.header_timeouts += 1
            logger.debug("closed a connection without complete request headers after %g s", self.limits.header_timeout)
            self.transport.close()

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self.limits.body_timeouts += 1
            logger.info("closed a connection whose request body took longer than %g s", self.limits.body_timeout)
            self.transport.close()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` class bound to ``limits``, for ``uvicorn.Config(http=...)``."""
    return type("BoundGuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})
