"""All benchmarks in one command: ``make bench`` (= ``.venv/bin/python -m benchmarks.run``).

Runs :mod:`benchmarks.bench_model` (scoring and training throughput against the convolution and
GEMM ceilings measured in the same run, single-film latency, bf16, torch.compile, onnxruntime,
profiles), :mod:`benchmarks.bench_cache` (full-size PNG preprocessing rate against the
decode rate) and :mod:`benchmarks.bench_features` (the features detector: fit time for 5,000
normals, scoring throughput from 1024 px PNG and DICOM against the backbone's convolution
ceiling, the speed-ups tried) and :mod:`benchmarks.bench_score_bound` (``cxr-anomaly score`` from
1024 px PNG, 12-bit DICOM and JPEG 2000 DICOM files against the bound of its slower stage, on the
CPU and, where there is one, on the GPU), prints a summary and writes everything to
``benchmarks/results.json``.

``--smoke`` is the tiny mode CI runs: it checks that every benchmark works, not how fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks import bench_features, bench_score_bound
from benchmarks.bench_features import DEFAULT_DATA, FeaturesBenchmarkResult, run_features_benchmark
from benchmarks.bench_model import ModelBenchmarkResult, run_model_benchmark
from benchmarks.common import git_commit

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"


def run_features(smoke: bool) -> FeaturesBenchmarkResult | dict[str, str]:
    """The features-detector benchmark of :mod:`benchmarks.bench_features`, or why it could not run."""
    missing = [name for name in ("rsna_normal224", "nih_fullres") if not (DEFAULT_DATA / name).is_dir()]
    if missing:
        return {"skipped": f"no {', '.join(missing)} under {DEFAULT_DATA}"}
    return run_features_benchmark(smoke=smoke)


def run_score_bound(smoke: bool) -> dict[str, bench_score_bound.ScoreBoundResult | dict[str, str]]:
    """Scoring from files against its bound (:mod:`benchmarks.bench_score_bound`) on the CPU and,
    where torch sees one, on the GPU; by device, or why it could not run."""
    missing = [name for name in ("rsna_normal224", "nih_fullres") if not (DEFAULT_DATA / name).is_dir()]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if missing:
        return {device: {"skipped": f"no {', '.join(missing)} under {DEFAULT_DATA}"} for device in devices}
    return {device: bench_score_bound.run_score_bound_benchmark(smoke=smoke, device=device) for device in devices}


def print_score_bound(results: dict[str, bench_score_bound.ScoreBoundResult | dict[str, str]]) -> None:
    """Each device's scoring ratios beside their bounds, or why they were not measured."""
    for device, result in results.items():
        print()
        if isinstance(result, dict):
            print(f"scoring from files against its bound on {device}: skipped ({result['skipped']})")
            continue
        for line in bench_score_bound.summary_lines(result):
            print(line)
    if "cpu" in results and "cuda" not in results:
        print("scoring from files against its bound on a GPU: not measured (torch sees no CUDA device)")


def run_cache_benchmark(smoke: bool) -> dict[str, Any]:
    """The preprocessing benchmark of :mod:`benchmarks.bench_cache`, or why it could not run."""
    try:
        from benchmarks.bench_cache import DEFAULT_SOURCE, run_benchmark
    except ImportError as error:
        return {"skipped": f"benchmarks.bench_cache unavailable: {error}"}
    if not DEFAULT_SOURCE.is_dir():
        return {"skipped": f"no full-size films at {DEFAULT_SOURCE}"}
    copies, single_films = (1, 5) if smoke else (30, 60)
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as work_dir:
        result = run_benchmark(DEFAULT_SOURCE, copies, single_films, None, Path(work_dir))
    return asdict(result)


def summary_lines(model: ModelBenchmarkResult, cache: dict[str, Any]) -> list[str]:
    """Human-readable lines of the headline figures."""
    lines = [
        f"CPU {model.cpu_model}, {model.threads} threads, native bf16: {model.native_bf16}; "
        f"load {model.load_average_before[0]:.2f} -> {model.load_average_after[0]:.2f}",
        f"FLOPs per image: scoring {model.scoring_gflop_per_image:.3f} GFLOP, "
        f"training step {model.training_gflop_per_image:.3f} GFLOP",
        "ceilings (median): conv "
        + ", ".join(f"{k} {v:.1f}" for k, v in model.conv_ceiling_gflops.items())
        + " GFLOP/s; GEMM "
        + ", ".join(f"{k} {v:.1f}" for k, v in model.gemm_gflops.items())
        + " GFLOP/s",
    ]
    for title, results, batch in (
        ("scoring", model.scoring, model.scoring_batch),
        ("training", model.training, model.training_batch),
    ):
        lines.append(f"{title} (batch {batch}): images/s | conv ceiling | fraction | GEMM ceiling | fraction")
        for item in results:
            lines.append(
                f"  {item.name:<48} {item.images_per_second:8.1f} | {item.ceiling_images_per_second:8.1f}"
                f" | {item.fraction_of_ceiling:5.2f} | {item.gemm_ceiling_images_per_second:8.1f}"
                f" | {item.fraction_of_gemm_ceiling:5.2f}" + (f"  ({item.note})" if item.note else "")
            )
    lines.append(
        f"single-film latency ({model.latency.calls} calls): p50 {model.latency.p50_ms:.1f} ms, "
        f"p99 {model.latency.p99_ms:.1f} ms"
    )
    if "skipped" in cache:
        lines.append(f"preprocessing: skipped ({cache['skipped']})")
    else:
        lines.append(
            f"preprocessing of {cache['films']} full-size PNGs: {cache['build_rate']:.1f} films/s against "
            f"a decode ceiling of {cache['ceiling_rate']:.1f} ({cache['cores']} x "
            f"{cache['single_core_rate']:.1f} single-core) = {100 * cache['efficiency']:.0f}%"
        )
    lines.extend(f"note: {note}" for note in model.notes)
    return lines


def markdown_tables(model: ModelBenchmarkResult) -> str:
    """The throughput figures as Markdown tables, for docs/results.md."""
    rows = []
    for title, results, batch, flops in (
        ("scoring", model.scoring, model.scoring_batch, model.scoring_gflop_per_image),
        ("training", model.training, model.training_batch, model.training_gflop_per_image),
    ):
        rows.append(f"\n{title}, batch {batch}, {flops:.3f} GFLOP per image; medians of {model.repeats} repeats\n")
        rows.append(
            "| variant | images/s | conv ceiling, images/s | fraction | GEMM ceiling, images/s | fraction | note |"
        )
        rows.append("|---|---|---|---|---|---|---|")
        for item in results:
            rows.append(
                f"| {item.name} | {item.images_per_second:.1f} | {item.ceiling_images_per_second:.1f} | "
                f"{item.fraction_of_ceiling:.2f} | {item.gemm_ceiling_images_per_second:.1f} | "
                f"{item.fraction_of_gemm_ceiling:.2f} | {item.note} |"
            )
    return "\n".join(rows)


def print_features(result: FeaturesBenchmarkResult | dict[str, str]) -> None:
    """The features benchmark's summary and table, or why it was skipped."""
    if isinstance(result, dict):
        print(f"\nfeatures detector: skipped ({result['skipped']})")
        return
    print()
    for line in bench_features.summary_lines(result):
        print(line)
    print(bench_features.markdown_table(result))
    if result.profile:
        print(f"\nprofile: one features scoring batch\n{result.profile}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, print the summary, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI (checks that it works)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats of the model figures (default 5)")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--no-cache", action="store_true", help="leave the preprocessing benchmark out")
    parser.add_argument("--no-features", action="store_true", help="leave the features-detector benchmark out")
    parser.add_argument("--no-score-bound", action="store_true", help="leave scoring from files against its bound out")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file to write")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    load_before = os.getloadavg()
    commit = git_commit()  # before the run: others may commit while it lasts
    model = run_model_benchmark(
        smoke=arguments.smoke, repeats=arguments.repeats, include_compile=False if arguments.no_compile else None
    )
    cache = {"skipped": "--no-cache"} if arguments.no_cache else run_cache_benchmark(arguments.smoke)
    features = {"skipped": "--no-features"} if arguments.no_features else run_features(arguments.smoke)
    bound = {"all": {"skipped": "--no-score-bound"}} if arguments.no_score_bound else run_score_bound(arguments.smoke)
    results = {
        "command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "seconds": time.perf_counter() - started,
        "model": asdict(model),
        "preprocessing": cache,
        "features": features if isinstance(features, dict) else asdict(features),
        "score_bound": {device: item if isinstance(item, dict) else asdict(item) for device, item in bound.items()},
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(results, indent=2) + "\n")
    for line in summary_lines(model, cache):
        print(line)
    for profile in model.profiles:
        print(f"\nprofile: {profile.what}\n{profile.table}")
    print(markdown_tables(model))
    print_features(features)
    print_score_bound(bound)
    print(f"written to {arguments.output} in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
