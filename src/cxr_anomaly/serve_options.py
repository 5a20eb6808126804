"""Command-line options of ``cxr-anomaly serve``'s limits, kept apart from :mod:`cxr_anomaly.cli`
(which stays small) and from :mod:`cxr_anomaly.serve` (whose import pulls in FastAPI)."""

from __future__ import annotations

import argparse
from typing import Any


def add_serve_limit_options(serve: argparse.ArgumentParser) -> None:
    """``serve``'s admission, memory, timeout and connection limits (docs/service-limits.md)."""
    limits = serve.add_argument_group(
        "limits", "admission control, memory, timeouts and connections; see docs/service-limits.md"
    )
    limits.add_argument(
        "--allow-open", action="store_true", help="serve a non-loopback --host without a token (refused otherwise)"
    )
    limits.add_argument(
        "--max-in-flight",
        type=int,
        default=32,
        help="scoring requests read, decoded or scored at once; more get 503 (default 32)",
    )
    limits.add_argument(
        "--max-queued-films", type=int, default=32, help="films waiting for the scorer; more get 503 (default 32)"
    )
    limits.add_argument(
        "--memory-budget-mb",
        type=float,
        default=1024.0,
        help="memory that films being decoded may take at once (default 1024)",
    )
    limits.add_argument(
        "--admission-wait",
        type=float,
        default=5.0,
        help="seconds a film may wait for room in the memory budget before 503 (default 5)",
    )
    limits.add_argument("--decode-threads", type=int, default=2, help="threads that decode films (default 2)")
    limits.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection has to send its request headers (default 10)",
    )
    limits.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        help="seconds a request body has to arrive, from its headers (default 60)",
    )
    limits.add_argument(
        "--idle-timeout", type=float, default=5.0, help="seconds an idle keep-alive connection is kept (default 5)"
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="connections open at once; more are closed on arrival (default 256)",
    )


def serve_limit_values(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~cxr_anomaly.serve.ServiceSettings` fields of the options of :func:`add_serve_limit_options`."""
    return {
        "max_in_flight": args.max_in_flight,
        "max_queued_films": args.max_queued_films,
        "memory_budget_bytes": int(args.memory_budget_mb * 1024 * 1024),
        "decode_threads": args.decode_threads,
        "admission_wait_seconds": args.admission_wait,
        "header_timeout_seconds": args.header_timeout,
        "body_timeout_seconds": args.body_timeout,
        "idle_timeout_seconds": args.idle_timeout,
        "max_connections": args.max_connections,
    }
