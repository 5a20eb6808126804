"""The service's limits and options (:class:`ServiceSettings`); docs/service-limits.md explains each."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..read_limits import ReadLimits
from .protocol import ConnectionLimits

TOKEN_ENVIRONMENT_VARIABLE = "CXR_ANOMALY_TOKEN"
MIN_IMAGE_SIDE = 16  # smaller uploads are icons or mistakes, not chest films


@dataclass(frozen=True)
class ServiceSettings:
    """Limits and options of the service.

    Attributes:
        token: bearer token required on scoring requests; None leaves them open.
        max_upload_bytes: largest accepted file.
        max_image_side: largest accepted width or height in pixels (checked before decoding).
        max_batch_size: the most concurrent films scored in one forward pass.
        batch_wait_seconds: how long the first film of a batch waits for others.
        heatmap_max_side: longer side of returned heatmaps (the original resolution, shrunk to this).
        max_in_flight: scoring requests being read, decoded or scored at once; more get 503.
        max_queued_films: films waiting for the scorer; more get 503.
        memory_budget_bytes: bytes that films being decoded may take at once, reserved from what
            their headers declare; a film waits up to ``admission_wait_seconds`` for room, then 503.
        admission_wait_seconds: the longest wait for room in the memory budget.
        decode_threads: threads that decode films.
        retry_after_seconds: the ``Retry-After`` of a 503.
        header_timeout_seconds: time a connection has to send complete request headers.
        body_timeout_seconds: time a request body has to arrive, from its headers.
        idle_timeout_seconds: time an idle keep-alive connection is kept.
        max_connections: connections open at once; more are closed on arrival.
    """

    token: str | None = None
    max_upload_bytes: int = 32 * 1024 * 1024
    max_image_side: int = 8192
    max_batch_size: int = 32
    batch_wait_seconds: float = 0.005
    heatmap_max_side: int = 1024
    max_in_flight: int = 32
    max_queued_films: int = 32
    memory_budget_bytes: int = 1024 * 1024 * 1024
    admission_wait_seconds: float = 5.0
    decode_threads: int = 2
    retry_after_seconds: int = 1
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 60.0
    idle_timeout_seconds: float = 5.0
    max_connections: int = 256

    def __post_init__(self) -> None:
        for name in (
            "max_upload_bytes",
            "max_in_flight",
            "max_queued_films",
            "memory_budget_bytes",
            "decode_threads",
            "max_connections",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; expected a positive number")
        for name in ("header_timeout_seconds", "body_timeout_seconds", "idle_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}; expected a positive number of seconds")
        if self.admission_wait_seconds < 0 or self.retry_after_seconds < 0:
            raise ValueError(
                f"admission_wait_seconds={self.admission_wait_seconds}, retry_after_seconds="
                f"{self.retry_after_seconds}; expected non-negative numbers"
            )
        if self.max_image_side < MIN_IMAGE_SIDE:
            raise ValueError(f"max_image_side={self.max_image_side}; expected at least {MIN_IMAGE_SIDE}")
        if self.token is not None and not self.token.strip():
            raise ValueError("token is empty; pass a non-empty token or none")

    @classmethod
    def from_environment(cls, *, token: str | None = None, **values: Any) -> ServiceSettings:
        """Settings whose token defaults to the ``CXR_ANOMALY_TOKEN`` environment variable."""
        return cls(token=token if token is not None else (os.environ.get(TOKEN_ENVIRONMENT_VARIABLE) or None), **values)

    @property
    def read_limits(self) -> ReadLimits:
        """What an upload's header may declare: sides up to ``max_image_side``."""
        return ReadLimits.for_side(self.max_image_side)

    @property
    def connection_limits(self) -> ConnectionLimits:
        """The protocol's timeouts and connection cap."""
        return ConnectionLimits(
            header_timeout=self.header_timeout_seconds,
            body_timeout=self.body_timeout_seconds,
            max_connections=self.max_connections,
        )
