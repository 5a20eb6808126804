"""Preprocessing cache build rate against its ceiling, cores x single-core decode rate.

Run: ``.venv/bin/python -m benchmarks.bench_cache [--copies 15] [--output runs/bench_cache.json]``

The films are the real 1024² NIH PNGs of ``../shared/data/nih_fullres``, copied ``--copies``
times into a temporary folder (distinct paths, so each copy is a distinct cache entry; the
copies stay outside the repository and are deleted afterwards). In the same run:

1. the single-core rate: the same decode-and-resize function the decoding threads use, in one thread,
   measured before and after the build and averaged, so load drifting during the run is shared;
2. the build rate: :func:`decode_many` with a fresh cache and one decoding thread per core, timed from the
   call to its return (pool start, shard writes and fsync included);
3. the reuse time: the same call again, which must decode nothing.

``efficiency = build rate / (cores x single-core rate)``; the target is >= 0.90. The machine's
load average is recorded because other processes on the cores lower the build rate. On a busy
machine wall-clock rates say more about the neighbours than about the cache, so the CPU cost is
reported too: ``cpu_efficiency`` = films per CPU-second of the build (the process, all its
threads) / films per CPU-second of the single-core decode; 1.0 means the pool, the hand-over
and the shard writes cost nothing beyond the decoding itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.bench_features import replicate
from cxr_anomaly.config import DataConfig
from cxr_anomaly.data.cache import CacheReport, decode_file, decode_many, default_workers

logger = logging.getLogger(__name__)

DEFAULT_SOURCE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "nih_fullres"
TARGET_EFFICIENCY = 0.90


@dataclass(frozen=True)
class CacheBenchmarkResult:
    """Numbers of one benchmark run (all rates in films per second)."""

    films: int
    cores: int
    image_size: int
    single_core_rate_before: float
    single_core_rate_after: float
    single_core_rate: float
    ceiling_rate: float
    build_seconds: float
    build_rate: float
    efficiency: float
    meets_target: bool
    reuse_seconds: float
    reused_films: int
    decoded_on_reuse: int
    single_core_cpu_rate: float
    build_cpu_seconds: float
    cpu_efficiency: float
    load_average_before: tuple[float, float, float]
    load_average_after: tuple[float, float, float]


@dataclass(frozen=True)
class SingleCoreRate:
    """Films per wall-clock second and per CPU-second, decoded in this process."""

    wall_rate: float
    cpu_rate: float


def single_core_rate(paths: list[str], data_config: DataConfig) -> SingleCoreRate:
    """Decode and resize ``paths`` in this process, timing wall clock and CPU."""
    decode_file(paths[0], data_config)  # warm imports and the page cache of the first film
    started, cpu_started = time.perf_counter(), time.process_time()
    for path in paths:
        decode_file(path, data_config)
    return SingleCoreRate(
        len(paths) / (time.perf_counter() - started), len(paths) / max(time.process_time() - cpu_started, 1e-9)
    )


def run_benchmark(
    source: Path, copies: int, single_films: int, workers: int | None, work_dir: Path, image_size: int = 64
) -> CacheBenchmarkResult:
    """Copy the films, measure the single-core rate, build the cache, then reuse it."""
    originals = sorted(source.glob("*.png"))
    if not originals:
        raise FileNotFoundError(f"no PNG films in {source}")
    films_dir = work_dir / "films"
    paths = replicate(originals, copies * len(originals), films_dir, ".png")["path"].tolist()
    data_config = DataConfig(image_size=image_size)
    cores = default_workers() if workers is None else workers
    probe = paths[: max(2, min(single_films, len(paths)))]

    load_before = os.getloadavg()
    before = single_core_rate(probe, data_config)
    reports: list[CacheReport] = []
    started = time.perf_counter()
    decode_many(paths, data_config, cache_dir=work_dir / "cache", workers=cores, report=reports)
    build_seconds = time.perf_counter() - started
    build_cpu = reports[0].cpu_seconds  # the process's CPU time: every thread's
    after = single_core_rate(probe, data_config)
    load_after = os.getloadavg()

    started = time.perf_counter()
    decode_many(paths, data_config, cache_dir=work_dir / "cache", workers=cores, report=reports)
    reuse_seconds = time.perf_counter() - started

    rate = (before.wall_rate + after.wall_rate) / 2.0
    cpu_rate = (before.cpu_rate + after.cpu_rate) / 2.0
    build_rate = len(paths) / build_seconds
    efficiency = build_rate / (cores * rate)
    return CacheBenchmarkResult(
        films=len(paths),
        cores=cores,
        image_size=image_size,
        single_core_rate_before=before.wall_rate,
        single_core_rate_after=after.wall_rate,
        single_core_rate=rate,
        ceiling_rate=cores * rate,
        build_seconds=build_seconds,
        build_rate=build_rate,
        efficiency=efficiency,
        meets_target=efficiency >= TARGET_EFFICIENCY,
        reuse_seconds=reuse_seconds,
        reused_films=reports[1].reused,
        decoded_on_reuse=reports[1].decoded,
        single_core_cpu_rate=cpu_rate,
        build_cpu_seconds=build_cpu,
        cpu_efficiency=(len(paths) / build_cpu) / cpu_rate,
        load_average_before=load_before,
        load_average_after=load_after,
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; writes the result as JSON and logs a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder of full-size PNG films")
    parser.add_argument("--copies", type=int, default=30, help="copies of each film (20 films each)")
    parser.add_argument("--single-films", type=int, default=60, help="films timed on one core")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: one per core)")
    parser.add_argument("--output", type=Path, default=Path("runs/bench_cache.json"))
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI: 1 copy, 5 timed films")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    copies, single_films = (1, 5) if arguments.smoke else (arguments.copies, arguments.single_films)
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as work_dir:
        result = run_benchmark(arguments.source, copies, single_films, arguments.workers, Path(work_dir))
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(asdict(result), indent=2) + "\n")
    logger.info(
        "%d films, %d cores: single core %.1f/s, ceiling %.1f/s, build %.1f/s = %.1f%% of the "
        "ceiling (target %.0f%%); CPU efficiency %.1f%%; reuse %.2f s; load %s -> %s; written to %s",
        result.films,
        result.cores,
        result.single_core_rate,
        result.ceiling_rate,
        result.build_rate,
        100 * result.efficiency,
        100 * TARGET_EFFICIENCY,
        100 * result.cpu_efficiency,
        result.reuse_seconds,
        result.load_average_before,
        result.load_average_after,
        arguments.output,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
