"""Scoring from files: decode everything, then score; or decode the next chunk while scoring this one.

What ``cxr-anomaly score`` does is the first: :func:`load_images`, then ``score_films``. The
second overlaps the two in a reader thread, chunk by chunk. The timing is films per second over
``--films`` copies of the 1024 px ``nih_fullres`` PNGs, with no cache. Each way runs
``--repeats`` times, alternately, after a warm-up.

    python -m benchmarks.research.overlap_probe --model runs/demo/run/model.pt --films 256 --chunk 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.bench_decode_pool import copies_of_films
from benchmarks.bench_features import DEFAULT_DATA
from cxr_anomaly.checkpoint import LoadedModel, load_checkpoint
from cxr_anomaly.data.dataset import load_images


def sequential(model: LoadedModel, rows: pd.DataFrame, chunk: int) -> float:
    """Films per second of decoding every film, then scoring them."""
    started = time.perf_counter()
    model.score_films(load_images(rows, model.config.data).pixels)
    return len(rows) / (time.perf_counter() - started)


def overlapped(model: LoadedModel, rows: pd.DataFrame, chunk: int) -> float:
    """Films per second of decoding chunk k + 1 in a reader thread while chunk k is scored."""
    chunks = [rows.iloc[begin:begin + chunk] for begin in range(0, len(rows), chunk)]

    def decode(part: pd.DataFrame) -> np.ndarray:
        return load_images(part, model.config.data).pixels

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(decode, chunks[0])
        for index in range(len(chunks)):
            pixels = pending.result()
            if index + 1 < len(chunks):
                pending = reader.submit(decode, chunks[index + 1])
            model.score_films(pixels)
    return len(rows) / (time.perf_counter() - started)


def main() -> None:
    """Command-line entry point; prints each way's rates and medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--films", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = load_checkpoint(args.model)
    ways: dict[str, Callable[[LoadedModel, pd.DataFrame, int], float]] = {
        "sequential": sequential, "overlapped": overlapped}
    rates: dict[str, list[float]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory(prefix="overlap_probe_") as folder:
        rows = pd.DataFrame({"path": copies_of_films(args.data / "nih_fullres", args.films, Path(folder))})
        model.score_films(load_images(rows.iloc[:16], model.config.data).pixels)  # warm-up
        for _ in range(args.repeats):
            for name, way in ways.items():
                rates[name].append(way(model, rows, args.chunk))
    print(", ".join(f"{name} {[round(rate, 1) for rate in values]} films/s (median {statistics.median(values):.1f})"
                    for name, values in rates.items()) + f"; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
