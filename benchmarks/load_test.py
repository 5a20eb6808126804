"""Bounded load test of ``cxr-anomaly serve`` on loopback: latency percentiles and errors.

Run: ``.venv/bin/python -m benchmarks.load_test --model runs/x/model.pt [--requests 1000]
[--concurrency 16] [--output runs/load_test.json]``

The service runs as its own process (``cxr-anomaly serve`` on a free loopback port, as a user
would start it); this process is the client, posting the same real NIH1000 film (64x64 PNG by
default, or ``--film``) ``--requests`` times with ``--concurrency`` requests in flight. It reports
p50/p90/p99/max latency, throughput, the error count (anything but HTTP 200) and the service's
batching statistics from /healthz. Client and server share the machine's cores, so the load
average before the run is recorded too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cxr_anomaly.serve.loadtest import run_load_test

DEFAULT_FILM = (
    Path(__file__).resolve().parent.parent.parent
    / "shared"
    / "data"
    / "nih1000"
    / "test"
    / "1_abnormal"
    / "00000211_011.png"
)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], timeout_seconds: float = 120.0) -> None:
    """Poll /healthz until the service answers.

    Raises:
        RuntimeError: the server process exited or did not answer in time.
    """
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before answering")
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url}/healthz did not answer within {timeout_seconds} s")


def main(argv: list[str] | None = None) -> int:
    """Start the service, run the load test, print and optionally save the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", required=True, type=Path, help="checkpoint (model.pt) or exported graph (*.onnx) to serve"
    )
    parser.add_argument("--film", type=Path, default=DEFAULT_FILM, help="film to post (PNG, JPEG or DICOM)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument(
        "--threads", type=int, default=None, help="the server's threads, PyTorch's and onnxruntime's (serve --threads)"
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON file for the result")
    args = parser.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "cxr_anomaly.cli",
        "serve",
        "--model",
        str(args.model),
        "--port",
        str(port),
        "--max-batch-size",
        str(args.max_batch_size),
        "--batch-wait-ms",
        str(args.batch_wait_ms),
    ]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    environment = {key: value for key, value in os.environ.items() if key != "CXR_ANOMALY_TOKEN"}
    load_before = os.getloadavg()
    server = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_healthy(url, server)
        result = run_load_test(
            url,
            args.film.read_bytes(),
            filename=args.film.name,
            num_requests=args.requests,
            concurrency=args.concurrency,
        )
        batching = httpx.get(f"{url}/healthz", timeout=5.0).json()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    report = {
        **result.to_dict(),
        "batching": batching,
        "film": str(args.film),
        "model": str(args.model),
        "max_batch_size": args.max_batch_size,
        "batch_wait_ms": args.batch_wait_ms,
        "server_threads": args.threads,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
