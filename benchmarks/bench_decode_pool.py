"""Where parallel decoding starts to pay: ``decode_many`` in the calling thread against its pool.

Run: ``.venv/bin/python -m benchmarks.bench_decode_pool [--counts 16 64 128 256 512] [--repeats 3]
[--format png|dicom] [--import-torch]``

The films are the real 1024² NIH PNGs of ``../shared/data/nih_fullres``, copied into a temporary
folder (distinct paths, so each copy is decoded; deleted afterwards), or with ``--format dicom``
uncompressed 8-bit DICOM copies of them; they are read with the features detector's data
settings (224 px) and no cache, as ``score`` reads films it has not seen. Each timing is one
call in a fresh Python process, as one ``cxr-anomaly score`` is, so starting the pool is
counted; ``--warm`` times repeated calls in one process instead, the service's case.
``--import-torch`` makes that process's main module import torch first, as a user's script, a
notebook exported to a script, or this project's benchmarks do: a pool of worker *processes*
re-imported that module in every worker (the decoding pool up to commit 41bb588); a pool of
threads does not. For each count the two ways run alternately,
``--repeats`` times; the medians of wall milliseconds per film are printed with the load
average. ``data/cache.py``'s ``SERIAL_BELOW`` is chosen from this table.
"""

from __future__ import annotations

import importlib
import sys

if "--import-torch" in sys.argv:  # at the top of the main module, where a script imports it
    importlib.import_module("torch")

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from cxr_anomaly.config import preset_config
from cxr_anomaly.data.cache import decode_many, default_workers

SOURCE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "nih_fullres"


def copies_of_films(source: Path, count: int, folder: Path, file_format: str = "png") -> list[str]:
    """``count`` distinct paths, cycling through the source PNGs (or DICOM versions of them)."""
    originals = sorted(source.glob("*.png"))
    if not originals:
        raise FileNotFoundError(f"no PNG films in {source}")
    from benchmarks.bench_features import dicom_copies, replicate  # imports torch: only in the parent

    if file_format == "dicom":
        return dicom_copies(originals, count, folder)["path"].tolist()
    return replicate(originals, count, folder, ".png")["path"].tolist()


def time_call(paths: list[str], workers: int) -> float:
    """Milliseconds per film of one ``decode_many`` call without cache or in-thread threshold."""
    started = time.perf_counter()
    decode_many(paths, preset_config("features").data, workers=workers, progress=False, serial_below=0)
    return (time.perf_counter() - started) / len(paths) * 1000


def time_fresh_call(paths: list[str], workers: int, import_torch: bool = False) -> float:
    """:func:`time_call` in a new Python process (imports not counted, the pool's start is)."""
    command = [sys.executable, "-m", "benchmarks.bench_decode_pool", "--one-call", str(workers)]
    result = subprocess.run(
        [*command, *(["--import-torch"] if import_torch else []), *paths], check=True, capture_output=True, text=True
    )
    return float(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints one JSON row per film count."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[16, 64, 128, 256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--format", choices=("png", "dicom"), default="png")
    parser.add_argument(
        "--import-torch",
        action="store_true",
        help="the timed process's main module imports torch (see the module docstring)",
    )
    parser.add_argument("--warm", action="store_true", help="repeated calls in this process")
    parser.add_argument("--output", type=Path, default=None, help="JSON of the table")
    parser.add_argument("--one-call", type=int, default=None, help=argparse.SUPPRESS)  # WORKERS PATH...
    args, rest = parser.parse_known_args(argv)
    if args.one_call is not None:  # the child of time_fresh_call
        print(time_call(rest, args.one_call))
        return 0
    workers = default_workers()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_decode_pool_") as folder:
        paths = copies_of_films(SOURCE, max(args.counts), Path(folder), args.format)
        time_call(paths[:2], workers=1)  # imports and page cache
        for count in args.counts:
            timings: dict[str, list[float]] = {"in_process": [], "pool": []}
            load_before = os.getloadavg()[0]
            for _ in range(args.repeats):
                for way, way_workers in (("in_process", 1), ("pool", workers)):
                    timings[way].append(
                        time_call(paths[:count], way_workers)
                        if args.warm
                        else time_fresh_call(paths[:count], way_workers, args.import_torch)
                    )
            row = {
                "films": count,
                "format": args.format,
                "workers": workers,
                "fresh_process": not args.warm,
                "main_imports_torch": args.import_torch,
                "load_average": [load_before, os.getloadavg()[0]],
                **{f"{way}_ms_per_film": statistics.median(values) for way, values in timings.items()},
            }
            row["pool_speedup"] = row["in_process_ms_per_film"] / row["pool_ms_per_film"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.output is not None:
        args.output.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
