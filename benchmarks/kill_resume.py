"""Kill training runs with SIGKILL at random moments, resume them, compare with an uninterrupted run.

The longer version of ``tests/test_resume.py``, for one process or for a ``torchrun`` job of
several (the whole process group is killed, as a lost node or an out-of-memory kill would)::

    .venv/bin/python -m benchmarks.kill_resume --data ../shared/data/nih1000/manifest.csv \\
        --train-normals 48 --out runs/kills --trials 5 --kills-per-trial 3 [--processes 2]

With ``--train-normals N`` the first N train-split normals and 8 other normals of the manifest
are used; without ``--config`` the run uses the test's small settings (:data:`SMALL_CONFIG`).

For each trial it checks that every file left after each kill opens (training state, checkpoint,
JSON, CSV), then resumes until the run finishes and requires the final ``model.pt`` to equal the
uninterrupted run's exactly (weights and calibration). Prints and writes a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr_anomaly.checkpoint import load_checkpoint
from cxr_anomaly.models.tang2019.state import load_training_state

SMALL_CONFIG = """\
method = "tang2019"  # the GAN training loop is what can be killed and resumed
[model]
base_channels = 8
latent_dim = 16
[train]
epochs = {epochs}
batch_size = 8
checkpoint_every_steps = 2
device = "cpu"
"""


def train_command(data: Path, config: Path, run_dir: Path, processes: int, resume: bool) -> list[str]:
    """``cxr-anomaly train``, under torchrun when more than one process is asked for."""
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = launcher + [
        "-m",
        "cxr_anomaly.cli",
        "train",
        "--data",
        str(data),
        "--out",
        str(run_dir),
        "--config",
        str(config),
        "--no-progress",
    ]
    return command + (["--resume"] if resume else [])


def events(run_dir: Path) -> list[dict]:
    """The run's event log."""
    path = run_dir / "training_events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def check_files(run_dir: Path) -> int:
    """Open every file of the run; return the number of hidden temporaries (allowed after a kill)."""
    temporaries = 0
    for path in sorted(run_dir.iterdir()):
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            temporaries += 1
        elif path.name == "training_state.pt":
            load_training_state(path)
        elif path.name == "model.pt":
            load_checkpoint(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            events(run_dir)
        elif path.suffix == ".csv":
            pd.read_csv(path)
        else:
            raise RuntimeError(f"unexpected file {path}")
    return temporaries


def kill_once(command: list[str], run_dir: Path, delay: float, environment: dict[str, str]) -> dict:
    """Start, wait for training to begin, wait ``delay`` s, SIGKILL the process group."""
    before = len(events(run_dir))
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while len(events(run_dir)) <= before and process.poll() is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the run never started")
        time.sleep(0.02)
    time.sleep(delay)
    if process.poll() is not None:
        if process.returncode != 0:
            raise RuntimeError(f"the run failed with status {process.returncode}")
        return {"delay": round(delay, 2), "outcome": "finished before the kill"}
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    last = (events(run_dir) or [{}])[-1]
    return {
        "delay": round(delay, 2),
        "outcome": "killed",
        "last_event": last.get("event"),
        "global_step": last.get("global_step"),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the trials and report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--train-normals", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the small settings")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--kills-per-trial", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--latest-kill-seconds", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.train_normals is not None:
        table = pd.read_csv(args.data)
        normals = table[table["label"] == 0]
        rows = pd.concat(
            [
                normals[normals["split"] == "train"].head(args.train_normals),
                normals[normals["split"] != "train"].head(8),
            ]
        ).copy()
        rows["path"] = [str((args.data.parent / path).resolve()) for path in rows["path"]]
        args.data = args.out / "manifest.csv"
        rows.to_csv(args.data, index=False)
    if args.config is None:
        args.config = args.out / "config.toml"
        args.config.write_text(SMALL_CONFIG.format(epochs=args.epochs))
    started = time.perf_counter()
    reference_dir = args.out / "reference"
    subprocess.run(
        train_command(args.data, args.config, reference_dir, args.processes, False),
        env=environment,
        check=True,
        capture_output=True,
    )
    reference = load_checkpoint(reference_dir / "model.pt")
    rng = np.random.default_rng(args.seed)
    trials = []
    for trial in range(args.trials):
        run_dir = args.out / f"trial_{trial}"
        kills, temporaries = [], 0
        for kill in range(args.kills_per_trial):
            command = train_command(args.data, args.config, run_dir, args.processes, kill > 0)
            kills.append(kill_once(command, run_dir, float(rng.uniform(0, args.latest_kill_seconds)), environment))
            temporaries += check_files(run_dir)
        subprocess.run(
            train_command(args.data, args.config, run_dir, args.processes, True),
            env=environment,
            check=True,
            capture_output=True,
        )
        left = check_files(run_dir)
        final = load_checkpoint(run_dir / "model.pt")
        identical = all(
            torch.equal(value, final.detector.state_dict()[key])
            for key, value in reference.detector.state_dict().items()
        )
        trials.append(
            {
                "kills": kills,
                "temporaries_after_kills": temporaries,
                "temporaries_at_end": left,
                "identical_to_uninterrupted": identical,
                "same_calibration": final.calibration == reference.calibration,
                "epochs": len(final.training["history"]),
            }
        )
    summary = {
        "processes": args.processes,
        "trials": trials,
        "all_identical": all(t["identical_to_uninterrupted"] and t["same_calibration"] for t in trials),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0 if summary["all_identical"] and all(t["temporaries_at_end"] == 0 for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
