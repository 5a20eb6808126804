"""Throughput of ``cxr-anomaly listen`` beside ``cxr-anomaly score`` on the same films.

``python -m benchmarks.bench_pacs [--model MODEL.pt] [--films N]``. Real 1024 px NIH films
(``../shared/data/nih_fullres``, repeated under new patients to reach N) are written as 12-bit DX
DICOM. Two rates, films per second, each with the model already loaded:

- **listen**: Orthanc (on loopback) C-STOREs the N films to a running listener; the clock runs from
  the store request to the last film's results (an SR and a heatmap) being stored back in Orthanc:
  receive, keep with fsync, record, decode, score, build the results, C-STORE them back.
- **score**: ``cxr-anomaly score`` on the same N DICOM files, minus the same command on one file
  (process start and model loading, which the listener pays once).

Without ``--model`` a small detector is fitted first (the default family, frozen backbone, 300
RSNA normals: a benchmark model, not a good one). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.bench_model import cpu_model_name
from benchmarks.common import git_commit

logger = logging.getLogger(__name__)

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPOSITORY_ROOT.parent / "shared" / "data"


def fit_small_model(data: Path, folder: Path) -> Path:
    """The default family with a frozen backbone, fitted on 300 RSNA normals."""
    from cxr_anomaly.config import preset_config, with_overrides
    from cxr_anomaly.jobs.train import train_job

    normals = data / "rsna_normal224"
    manifest = pd.read_csv(normals / "manifest.csv").head(300)
    manifest["path"] = [str(normals / path) for path in manifest["path"]]
    manifest_path = folder / "normals.csv"
    manifest.to_csv(manifest_path, index=False)
    config = with_overrides(preset_config("features"), "features", finetune_epochs=0)
    config = with_overrides(config, "train", device="cpu", precision="fp32")
    return train_job([manifest_path], folder / "run", config, progress=False).checkpoint


def write_films(data: Path, folder: Path, count: int) -> list[Path]:
    """``count`` DX films from the 1024 px NIH films, each under its own fake patient."""
    from cxr_anomaly.pacs.testing import film_dataset_from_png

    source = data / "nih_fullres"
    paths = [source / path for path in pd.read_csv(source / "manifest.csv")["path"]]
    films = []
    for index in range(count):
        dataset = film_dataset_from_png(
            paths[index % len(paths)], patient_id=f"BENCH-{index:04d}", study_uid=None, bits=12, patient_age="045Y"
        )
        films.append(folder / f"film{index:04d}.dcm")
        dataset.save_as(films[-1], enforce_file_format=True)
    return films


def returned(state: Path) -> int:
    """Films whose results went back, read from the listener's store."""
    database = state / "films.sqlite"
    if not database.exists():
        return 0
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return int(connection.execute("SELECT COUNT(*) FROM films WHERE state = 'returned'").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        connection.close()


def listener_rate(model: Path, films: list[Path], folder: Path) -> float:
    """Films per second through Orthanc -> listener -> results back in Orthanc."""
    from cxr_anomaly.pacs.orthanc_process import start_orthanc

    orthanc = start_orthanc(folder / "orthanc")
    state = folder / "state"
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT / "src")}
    listener = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cxr_anomaly.cli",
            "listen",
            "--model",
            str(model),
            "--store",
            str(state),
            "--port",
            str(orthanc.listener_port),
            "--send-to",
            f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
            "--precision",
            "fp32",
        ],
        stdout=(folder / "listener.log").open("wb"),
        stderr=subprocess.STDOUT,
        env=environment,
    )
    try:
        ids = [orthanc.post("/instances", path.read_bytes())["ID"] for path in films]
        time.sleep(15.0)  # the listener loads its model
        started = time.perf_counter()
        orthanc.post_json("/modalities/cxr/store", {"Resources": ids, "Synchronous": True})
        while returned(state) < len(films):
            if time.perf_counter() - started > 1800:
                raise TimeoutError("the listener did not return every film within 30 minutes")
            time.sleep(0.1)
        return len(films) / (time.perf_counter() - started)
    finally:
        listener.send_signal(signal.SIGTERM)
        listener.wait(60)
        orthanc.stop()


def score_seconds(model: Path, films: list[Path], folder: Path) -> float:
    """Wall seconds of ``cxr-anomaly score`` on these files."""
    manifest = folder / f"score{len(films)}.csv"
    pd.DataFrame({"path": [str(path) for path in films]}).to_csv(manifest, index=False)
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cxr_anomaly.cli",
            "score",
            "--model",
            str(model),
            str(manifest),
            "--out",
            str(folder / f"scores{len(films)}.csv"),
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--no-progress",
        ],
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT / "src")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    """Run both measurements and print them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: fit a small one first)")
    parser.add_argument("--films", type=int, default=60, help="films to send (default 60)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-pacs-") as scratch:
        folder = Path(scratch)
        model = args.model or fit_small_model(args.data, folder)
        films = write_films(args.data, folder, args.films)
        listen = listener_rate(model, films, folder)
        whole, one = score_seconds(model, films, folder), score_seconds(model, films[:1], folder)
    result = {
        "commit": git_commit(),
        "machine": platform.processor() or platform.machine(),
        "cpu": cpu_model_name(),
        "cores": os.cpu_count(),
        "films": args.films,
        "film_size": "1024x1024, 12-bit DX",
        "listen_films_per_second": round(listen, 2),
        "score_films_per_second": round((args.films - 1) / max(whole - one, 1e-9), 2),
        "score_seconds_all": round(whole, 1),
        "score_seconds_one": round(one, 1),
        "model": "given" if args.model else "frozen features detector fitted on 300 RSNA normals",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
