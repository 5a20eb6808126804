"""A bounded load test of a running scoring service: N requests, C at a time, latency percentiles.

Used by ``benchmarks/load_test.py`` (1,000 requests at 16 concurrent on loopback) and, smaller,
by the test suite. Every request posts the same real film; a request counts as an error when it
fails to connect, times out or gets a status other than 200.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class LoadTestResult:
    """Latency and errors of a load test.

    Attributes:
        requests: requests sent.
        concurrency: requests in flight at once.
        errors: requests that did not get a 200 response.
        status_counts: responses per HTTP status (``"error"`` for transport failures).
        seconds: wall time of the whole test.
        throughput: completed requests per second.
        p50_ms: median latency in milliseconds.
        p90_ms: 90th percentile latency.
        p99_ms: 99th percentile latency.
        max_ms: slowest request.
    """

    requests: int
    concurrency: int
    errors: int
    status_counts: dict[str, int]
    seconds: float
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    def to_dict(self) -> dict[str, object]:
        """Plain values for JSON."""
        return asdict(self)


async def _run(
    url: str,
    payload: bytes,
    filename: str,
    num_requests: int,
    concurrency: int,
    token: str | None,
    timeout_seconds: float,
) -> LoadTestResult:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    next_request = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_request
        while next_request < num_requests:
            next_request += 1  # no await between the check and the increment: no race in one loop
            started = time.perf_counter()
            try:
                response = await client.post(f"{url}/v1/score", files={"file": (filename, payload)}, headers=headers)
                statuses[str(response.status_code)] += 1
            except httpx.HTTPError:
                statuses["error"] += 1
            latencies.append((time.perf_counter() - started) * 1000.0)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_seconds, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    values = np.asarray(latencies)
    return LoadTestResult(
        requests=num_requests,
        concurrency=concurrency,
        errors=num_requests - statuses.get("200", 0),
        status_counts=dict(statuses),
        seconds=seconds,
        throughput=num_requests / seconds,
        p50_ms=float(np.percentile(values, 50)),
        p90_ms=float(np.percentile(values, 90)),
        p99_ms=float(np.percentile(values, 99)),
        max_ms=float(values.max()),
    )


def run_load_test(
    url: str,
    payload: bytes,
    *,
    filename: str = "film.png",
    num_requests: int = 1000,
    concurrency: int = 16,
    token: str | None = None,
    timeout_seconds: float = 60.0,
) -> LoadTestResult:
    """Post ``payload`` to ``url``/v1/score ``num_requests`` times, ``concurrency`` at a time.

    Args:
        url: the service's base URL, e.g. ``http://127.0.0.1:8000``.
        payload: the file to upload (a PNG, JPEG or DICOM film).
        filename: the name sent with the upload.
        num_requests: requests in total.
        concurrency: requests in flight at once.
        token: bearer token, if the service requires one.
        timeout_seconds: a request slower than this counts as an error.
    """
    if num_requests < 1 or concurrency < 1:
        raise ValueError(f"num_requests={num_requests}, concurrency={concurrency}; both must be at least 1")
    return asyncio.run(_run(url.rstrip("/"), payload, filename, num_requests, concurrency, token, timeout_seconds))
