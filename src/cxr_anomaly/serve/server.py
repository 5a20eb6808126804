"""Running the scoring service under uvicorn: in the foreground (``cxr-anomaly serve``) or, for
tests and load tests, in a thread on a loopback port.

Both use :class:`~cxr_anomaly.serve.protocol.GuardedH11Protocol` (header and body timeouts,
connection cap) and the idle timeout of the app's :class:`~cxr_anomaly.serve.app.ServiceSettings`.
A non-loopback address without a bearer token is refused unless asked for.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ..errors import ConfigError
from .app import ServiceSettings, create_app, model_version
from .protocol import guarded_protocol

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("localhost",)


@dataclass
class BackgroundServer:
    """A uvicorn server running in a thread on a loopback port (for tests and load tests)."""

    url: str
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout=10)


def server_config(app: FastAPI, **options: Any) -> Any:
    """uvicorn's configuration of ``app``: the guarded protocol (header and body timeouts, connection
    cap) bound to ``app.state.connection_limits``, and the idle timeout of its settings."""
    import uvicorn

    settings: ServiceSettings = app.state.settings
    return uvicorn.Config(
        app,
        http=guarded_protocol(app.state.connection_limits),
        timeout_keep_alive=settings.idle_timeout_seconds,
        **options,
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


def ensure_descriptors(max_connections: int) -> None:
    """Raise the soft limit of open files to what ``max_connections`` need, up to the hard limit;
    below it, accept() would fail in a loop that floods the log instead of refusing connections."""
    import resource

    needed = max_connections + 256  # the model, the log, temporary files and pool threads
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            logger.warning(
                "open-file limit %d is below the %d that max_connections=%d needs; lower "
                "--max-connections or raise the limit (ulimit -n)",
                target,
                needed,
                max_connections,
            )


def start_background_server(
    app: FastAPI, *, host: str = "127.0.0.1", startup_timeout: float = 20.0
) -> BackgroundServer:
    """Serve ``app`` with uvicorn in a daemon thread on a free port; return when it accepts requests.

    Raises:
        RuntimeError: the server did not start within ``startup_timeout`` seconds.
    """
    import uvicorn

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(server_config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True, name=f"uvicorn:{port}")
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start on {host}:{port} within {startup_timeout} s")
        time.sleep(0.02)
    return BackgroundServer(f"http://{host}:{port}", server, thread)


def run_server(
    model_path: str | Path,
    settings: ServiceSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int | None = None,
    device: str = "auto",
    allow_open: bool = False,
) -> None:
    """Load the checkpoint or ONNX graph and serve it with uvicorn until interrupted.

    Args:
        device: where a checkpoint scores (``auto``: CUDA when available, else the CPU); an
            ONNX graph always runs on the CPU.
        threads: intra-op threads of this server process, for PyTorch (``torch.set_num_threads``)
            and for onnxruntime when serving a graph; None keeps their defaults (one per core).
            One thread is faster on a machine whose cores are shared with other busy processes,
            where spinning OpenMP threads wait on each other.
        allow_open: serve a non-loopback address without a token (refused otherwise).

    Raises:
        ConfigError: a non-loopback ``host`` without a token and without ``allow_open``.
    """
    import torch
    import uvicorn

    if threads is not None and threads < 1:
        raise ValueError(f"threads={threads}; expected at least 1")
    if settings.token is None and not is_loopback(host):
        if not allow_open:
            raise ConfigError(
                f"refusing to serve on {host} without a bearer token: anyone who can reach it "
                "could score films; pass --token (or set CXR_ANOMALY_TOKEN), or --allow-open"
            )
        logger.warning(
            "serving on %s without a bearer token (--allow-open): anyone who can reach it can score films", host
        )
    if threads is not None:
        torch.set_num_threads(threads)
    app = create_app(model_path, settings, device=device, onnx_threads=threads)
    ensure_descriptors(settings.max_connections)
    logger.info("serving %s (%s) on http://%s:%d", model_path, model_version(model_path), host, port)
    uvicorn.Server(server_config(app, host=host, port=port, log_level="info")).run()


__all__ = [
    "BackgroundServer",
    "ensure_descriptors",
    "is_loopback",
    "run_server",
    "server_config",
    "start_background_server",
]
