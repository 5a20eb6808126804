"""Does decoding the next chunk of files while the current one is scored speed up scoring from files?

Usage::

    python -m docs.notebook.research.overlap_decode --data DATA --output result.json [--films 256]

``cxr-anomaly score`` decodes every film (:func:`cxr_anomaly.data.dataset.load_images`, threads),
then scores them (:func:`cxr_anomaly.scoring.score_films`). Here a second way: the files in chunks,
one background thread decoding chunk i+1 while the main thread scores chunk i. Both ways give the
same scores (checked). Films: ``nih_fullres``'s 1024 px PNGs replicated; the default detector
fitted on 64 normals without fine-tuning (the speed does not depend on the weights' values).
Rates are medians over ``--repeats`` rounds, each round running every way once, in turn.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from benchmarks.bench_features import fullres_paths, replicate, rsna_rows
from benchmarks.common import git_commit, machine_facts

from cxr_anomaly.config import Config, with_overrides
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.models.base import AnomalyDetector
from cxr_anomaly.models.registry import fit_detector
from cxr_anomaly.scoring import score_films

logger = logging.getLogger("overlap_decode")


def decode_then_score(detector: AnomalyDetector, rows: pd.DataFrame, config: Config) -> np.ndarray:
    """What ``cxr-anomaly score`` does: decode every file, then score every film."""
    return score_films(detector, load_images(rows, config.data).pixels).raw


def overlapped(detector: AnomalyDetector, rows: pd.DataFrame, config: Config, chunk: int) -> np.ndarray:
    """Decode chunk i+1 in a background thread while chunk i is scored."""
    chunks = [rows.iloc[begin : begin + chunk] for begin in range(0, len(rows), chunk)]
    scores = []
    with ThreadPoolExecutor(max_workers=1) as decoder:
        pending = decoder.submit(load_images, chunks[0], config.data)
        for index in range(len(chunks)):
            pixels = pending.result().pixels
            if index + 1 < len(chunks):
                pending = decoder.submit(load_images, chunks[index + 1], config.data)
            scores.append(score_films(detector, pixels).raw)
    return np.concatenate(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--films", type=int, default=256)
    parser.add_argument("--chunks", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = with_overrides(Config(), "features", finetune_epochs=0)
    train = load_images(rsna_rows(args.data, 64), config.data).pixels
    detector = fit_detector(config, train, progress=False).detector.eval()
    work = Path(tempfile.mkdtemp(prefix="overlap_decode_"))
    try:
        rows = replicate(fullres_paths(args.data), args.films, work, ".png")
        ways: dict[str, Callable[[], np.ndarray]] = {
            "decode, then score": lambda: decode_then_score(detector, rows, config)
        }
        for chunk in args.chunks:
            ways[f"overlapped, chunks of {chunk}"] = lambda chunk=chunk: overlapped(detector, rows, config, chunk)
        reference = ways["decode, then score"]()
        for name, run in ways.items():  # the warm-up also checks that every way gives the same scores
            if not np.array_equal(run(), reference):
                raise AssertionError(f"{name}: scores differ from decode-then-score")
        rates: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.repeats):
            for name, run in ways.items():
                started = time.perf_counter()
                run()
                rates[name].append(args.films / (time.perf_counter() - started))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    baseline = statistics.median(rates["decode, then score"])
    table = {
        name: {
            "films_per_s": statistics.median(values),
            "repeats": values,
            "ratio_to_decode_then_score": statistics.median(values) / baseline,
        }
        for name, values in rates.items()
    }
    for name, row in table.items():
        logger.info(
            "%-28s %7.1f films/s (%.2fx) %s",
            name,
            row["films_per_s"],
            row["ratio_to_decode_then_score"],
            [round(value, 1) for value in row["repeats"]],
        )
    args.output.write_text(
        json.dumps(
            {
                "commit": git_commit(),
                "machine": machine_facts(),
                "films": args.films,
                "repeats": args.repeats,
                "table": table,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
