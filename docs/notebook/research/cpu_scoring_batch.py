"""Which CPU scoring batch is fastest for the features detector, by thread count and precision.

Usage::

    python -m docs.notebook.research.cpu_scoring_batch --data DATA --output result.json \\
        [--threads 2 4 8 16] [--batches 16 32 64] [--films 128] [--repeats 3] [--precisions fp32 bf16]

Why: the features detector scores 16 films a pass on a CPU (``CPU_SCORING_BATCH_SIZE``), chosen
on this project's 2-core machine, where 16 beat 64 in 11 of 12 repeats. On the lent GPU
machine's 16 Xeon cores (native bf16) ``make bench``'s features part found the opposite (172
films/s at 16, 305 at 64). This script times :func:`cxr_anomaly.scoring.score_films` on the same
decoded 1024 px films (``nih_fullres`` replicated, decoded at 224 px) for each thread count,
precision and batch, in interleaved order within each repeat so that drifting load hits all
alike; figures are medians over the repeats after one warm-up of each cell.

The ceiling, per thread count and precision: the backbone's forward pass alone on a batch of 64
model inputs (channels_last, inference mode, autocast where bf16), median of five, films/s. The
detector is the default one fitted on ``--fit-films`` normals *without* fine-tuning: scoring
speed does not depend on the weights' values, and the fit then takes seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from benchmarks.bench_features import fullres_paths, replicate, rsna_rows
from benchmarks.common import git_commit, machine_facts

from cxr_anomaly.config import Config, with_overrides
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.inference import inference_autocast, native_bf16, to_channels_last
from cxr_anomaly.models.registry import fit_detector
from cxr_anomaly.scoring import score_films

logger = logging.getLogger("cpu_scoring_batch")


def ceiling_films_per_second(detector: torch.nn.Module, inputs: torch.Tensor, precision: str) -> float:
    """Films/s of the backbone's forward pass alone on ``inputs`` (64, 3, S, S), median of five after a warm-up."""

    def forward() -> None:
        with torch.inference_mode(), inference_autocast(torch.device("cpu"), precision):
            detector.backbone(inputs)

    forward()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        forward()
        times.append(time.perf_counter() - started)
    return len(inputs) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--films", type=int, default=128)
    parser.add_argument("--fit-films", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32", "bf16"],
        choices=["fp32", "bf16"],
        help="those timed (bf16 only where the CPU has it natively)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = with_overrides(Config(), "features", finetune_epochs=0)
    train = load_images(rsna_rows(args.data, args.fit_films), config.data).pixels
    detector = to_channels_last(fit_detector(config, train, progress=False).detector.eval())
    work = Path(tempfile.mkdtemp(prefix="cpu_scoring_batch_"))
    try:
        rows = replicate(fullres_paths(args.data), args.films, work / "png", ".png")
        pixels: np.ndarray = load_images(rows, config.data).pixels  # (films, 224, 224) uint8
    finally:
        shutil.rmtree(work, ignore_errors=True)
    inputs = detector.model_input(pixels[:64]).contiguous(memory_format=torch.channels_last)  # (64, 3, 224, 224)
    precisions = ["fp32", "bf16"] if native_bf16("cpu") else ["fp32"]  # emulated bf16 takes a minute a film
    precisions = [precision for precision in precisions if precision in args.precisions]
    cells = [
        (threads, precision, batch) for threads in args.threads for precision in precisions for batch in args.batches
    ]

    def score(cell: tuple[int, str, int]) -> float:
        threads, precision, batch = cell
        torch.set_num_threads(threads)
        started = time.perf_counter()
        score_films(detector, pixels, batch_size=batch, precision=precision)
        return len(pixels) / (time.perf_counter() - started)

    ceilings = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for precision in precisions:
            ceilings[f"{threads}/{precision}"] = ceiling_films_per_second(detector, inputs, precision)
    for cell in cells:  # warm-up: oneDNN builds its primitives per shape, thread count and precision
        score(cell)
    rates: dict[tuple[int, str, int], list[float]] = {cell: [] for cell in cells}
    for repeat in range(args.repeats):
        for cell in cells:
            rates[cell].append(score(cell))
        logger.info("repeat %d/%d done", repeat + 1, args.repeats)
    table = []
    for cell in cells:
        threads, precision, batch = cell
        median = statistics.median(rates[cell])
        best = max(statistics.median(rates[(threads, precision, other)]) for other in args.batches)
        ceiling = ceilings[f"{threads}/{precision}"]
        table.append(
            {
                "threads": threads,
                "precision": precision,
                "batch": batch,
                "films_per_s": median,
                "repeats": rates[cell],
                "share_of_ceiling": median / ceiling,
                "ceiling_films_per_s": ceiling,
                "share_of_best_batch": median / best,
            }
        )
        logger.info(
            "%2d threads %s batch %2d: %7.1f films/s (%3.0f%% of the ceiling %.0f; %3.0f%% of the best batch) %s",
            threads,
            precision,
            batch,
            median,
            100 * median / ceiling,
            ceiling,
            100 * median / best,
            [round(rate, 1) for rate in rates[cell]],
        )
    result = {
        "commit": git_commit(),
        "machine": machine_facts(),
        "films": args.films,
        "fit_films": args.fit_films,
        "repeats": args.repeats,
        "table": table,
    }
    args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
