"""Speed of the features detector on a CUDA GPU (issue 10, point 5), beside its ceiling there.

Run on a machine with a GPU, from the repository root::

    python -m benchmarks.bench_features_gpu --data DATA [--weights FILE] --output result.json

``DATA`` holds ``rsna_normal224`` and ``nih_fullres`` (or a copy with their manifests and the
films named there); ``--weights`` is the Lite0 weight file where the package that ships it is
not installed. :mod:`benchmarks.bench_features` is the CPU benchmark; this one measures what a
GPU changes. The detector is the default one, ``Config()``, fitted on ``--fit-films`` normals.

What it measures (medians of ``--repeats`` runs after one warm-up):

- **decode**: :func:`cxr_anomaly.data.dataset.load_images` of ``--films`` 1024 px PNGs
  (``nih_fullres`` replicated), every core, no cache;
- **scoring**: :func:`cxr_anomaly.scoring.score_films` on the decoded films in fp32 and bf16, at
  the detector's GPU batch (256) and at each other size in ``--batches``, preprocessing on the
  GPU as the library does (each batch's scores are copied to the host, which synchronises), and
  beside it the same loop with the films preprocessed on the CPU's threads, as the library did
  before it preprocessed on the device;
- **preprocessing alone**: ``model_input`` of every film at the GPU batch, on the GPU and on the
  CPU's threads (with the copy to the GPU);
- **the ceiling**: the backbone's forward pass alone on a batch of 64 model inputs already on
  the GPU, channels_last, synchronised: the films/s of a scorer that did nothing else;
- **from files**: decode and scoring together, as ``cxr-anomaly score`` runs them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.bench_features import fullres_paths, measure_fit, replicate, rsna_rows
from benchmarks.common import git_commit, uncommitted_files
from cxr_anomaly.config import Config, with_overrides
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.inference import inference_autocast, native_bf16, to_channels_last, to_device
from cxr_anomaly.scoring import score_films

logger = logging.getLogger("bench_features_gpu")


def median_seconds(run: Callable[[], object], repeats: int, synchronise: bool) -> tuple[float, list[float]]:
    """Median wall seconds of ``run`` over ``repeats`` calls after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        if synchronise:  # GPU work is asynchronous: wait for it on both sides of the clock
            torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        if synchronise:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--weights", default="", help="Lite0 state_dict file (default: the package's)")
    parser.add_argument("--fit-films", type=int, default=5000, help="normals of the timed fit (issue 31: 5,000)")
    parser.add_argument("--films", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument(
        "--batches",
        type=int,
        nargs="*",
        default=[16],
        help="scoring batch sizes timed beside the detector's own GPU batch",
    )
    parser.add_argument("--device", default="cuda", help="cuda (the point), or cpu for a smoke test")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_features_gpu: no CUDA device; benchmarks.bench_features measures the CPU")
    on_gpu = device.type == "cuda"
    config = with_overrides(Config(), "features", weights_path=args.weights)
    detector, fit = measure_fit(config, rsna_rows(args.data, args.fit_films), str(device))

    work = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    try:
        rows = replicate(fullres_paths(args.data), args.films, work / "png", ".png")
        decode_seconds, _ = median_seconds(lambda: load_images(rows, config.data), args.repeats, synchronise=False)
        pixels = load_images(rows, config.data).pixels
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result: dict[str, object] = {
        "commit": git_commit(),
        "uncommitted": uncommitted_files("src", "benchmarks"),
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": native_bf16("cpu"),
        "fit_films": args.fit_films,
        "fit_seconds": fit.seconds_total - fit.seconds["decode"],
        "fit_stages_seconds": fit.seconds,
        "films": args.films,
        "repeats": args.repeats,
        "decode_films_per_s": args.films / decode_seconds,
    }
    to_channels_last(detector)
    batch = detector.model_input(pixels[:64], device).contiguous(memory_format=torch.channels_last)  # (64, 3, S, S)
    library_batch = detector.scoring_batch_size(device)

    def preprocess(where: str) -> Callable[[], None]:
        def run() -> None:
            for start in range(0, len(pixels), library_batch):
                detector.model_input(pixels[start : start + library_batch], where).to(device)

        return run

    # the preprocessing alone, as the library runs it on the device and as it ran before on the CPU's threads
    for where in sorted({device.type, "cpu"}):
        seconds, _ = median_seconds(preprocess(where), args.repeats, on_gpu)
        result[f"preprocessing_on_{where}_films_per_s"] = args.films / seconds
        logger.info("preprocessing on the %s (and the copy to %s): %.0f films/s", where, device, args.films / seconds)
    for precision in args.precisions:

        def backbone_only() -> None:
            with torch.inference_mode(), inference_autocast(device, precision):
                detector.backbone(batch)

        ceiling_seconds, _ = median_seconds(backbone_only, args.repeats * 5, on_gpu)
        ceiling = len(batch) / ceiling_seconds
        figures: dict[str, object] = {"ceiling_films_per_s": ceiling}
        for batch_size in [library_batch] + sorted(set(args.batches) - {library_batch}):

            def scoring() -> None:
                score_films(detector, pixels, device=device, precision=precision, batch_size=batch_size)

            def scoring_cpu_preprocessing() -> None:  # the library before commit f7b194b
                for start in range(0, len(pixels), batch_size):
                    images = to_device(detector.model_input(pixels[start : start + batch_size], "cpu"), device)
                    with torch.inference_mode(), inference_autocast(device, precision):
                        detector(images).score.float().cpu()

            score_seconds, _ = median_seconds(scoring, args.repeats, on_gpu)
            before_seconds, _ = median_seconds(scoring_cpu_preprocessing, args.repeats, on_gpu)
            scored, before = args.films / score_seconds, args.films / before_seconds
            from_files = args.films / (decode_seconds + score_seconds)
            figures[f"batch_{batch_size}"] = {
                "scoring_films_per_s": scored,
                "scoring_share_of_ceiling": scored / ceiling,
                "scoring_cpu_preprocessing_films_per_s": before,
                "from_files_films_per_s": from_files,
                "from_files_share_of_ceiling": from_files / ceiling,
            }
            logger.info(
                "%s, batch %d: ceiling %.0f films/s, scoring %.0f (%.0f%%; %.0f with preprocessing on "
                "the CPU), from files %.0f films/s",
                precision,
                batch_size,
                ceiling,
                scored,
                100 * scored / ceiling,
                before,
                from_files,
            )
        result[precision] = figures
    args.output.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
