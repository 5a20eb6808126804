"""DistributedDataParallel training with 2 gloo processes on CPU, on real films (issue 7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from cxr_anomaly import distributed
from cxr_anomaly.checkpoint import load_checkpoint
from cxr_anomaly.config import Config, with_overrides
from cxr_anomaly.errors import ConfigError
from cxr_anomaly.models.tang2019.config import tang2019_config
from cxr_anomaly.models.tang2019.state import load_training_state
from cxr_anomaly.models.tang2019.steps import EVENTS_NAME
from cxr_anomaly.models.tang2019.training import build_detector

WORLD_SIZE = 2


def small_config() -> Config:
    """A narrow detector; a global batch of 16 is 8 films per rank, 4 steps per epoch on 64 films."""
    config = with_overrides(tang2019_config(), "model", base_channels=8, latent_dim=16)
    return with_overrides(config, "train", epochs=1, batch_size=16, device="cpu")


# The real CLI under torchrun, with the tang2019 training loop (which fit_detector calls) wrapped so
# that each rank also saves its own final weights: the test, not the library, compares them. A script file, because
# pytest's importlib mode keeps test modules out of reach of other processes.
WORKER = """
import sys
from pathlib import Path

import torch

from cxr_anomaly import cli
from cxr_anomaly.distributed import current_context
from cxr_anomaly.models.tang2019 import training

weights_dir = Path(sys.argv[1])
train_detector = training.train_detector


def train_and_save_rank_weights(*args, **kwargs):
    result = train_detector(*args, **kwargs)
    rank = current_context().rank
    torch.save({"state": result.detector.state_dict(), "world_size": result.world_size},
               weights_dir / f"rank{rank}.pt")
    return result


if __name__ == "__main__":  # the image decoder's process pool re-imports this file
    training.train_detector = train_and_save_rank_weights
    sys.exit(cli.main(sys.argv[2:]))
"""


def test_torchrun_trains_identical_ranks_and_writes_one_loadable_checkpoint(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "nih1000"
    manifest = pd.read_csv(folder / "manifest.csv")
    normals = manifest[manifest["label"] == 0]
    rows = pd.concat(
        [normals[normals["split"] == "train"].head(64), normals[normals["split"] != "train"].head(8)]
    ).copy()
    rows["path"] = [str(folder / path) for path in rows["path"]]
    rows.to_csv(tmp_path / "manifest.csv", index=False)
    (tmp_path / "config.toml").write_text(
        '[model]\nbase_channels = 8\nlatent_dim = 16\n[train]\nepochs = 1\nbatch_size = 16\ndevice = "cpu"\n'
    )
    (tmp_path / "worker.py").write_text(WORKER)
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD_SIZE}",
        str(tmp_path / "worker.py"),
        str(tmp_path),
        "train",
        "--method",
        "tang2019",
        "--data",
        str(tmp_path / "manifest.csv"),
        "--out",
        str(run_dir),
        "--config",
        str(tmp_path / "config.toml"),
        "--no-progress",
    ]
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert finished.stdout.count("trained on") == 1  # rank 0 speaks for the job

    # Every rank ends with the same weights, and training did change them.
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
    assert all(saved["world_size"] == WORLD_SIZE for saved in ranks)
    initial = build_detector(small_config()).state_dict()
    changed = 0
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), f"{key} differs between ranks"
        changed += int(value.is_floating_point() and not torch.equal(value, initial[key]))
    floating = sum(value.is_floating_point() for value in initial.values())
    assert changed > 0.9 * floating, f"training updated only {changed} of {floating} tensors"

    # Rank 0 alone wrote the run's files; the checkpoint loads and holds rank 0's weights.
    assert sorted(path.name for path in run_dir.iterdir()) == [
        "config.json",
        "model.pt",
        "training_events.jsonl",
        "training_log.json",
        "training_state.pt",
    ]
    model = load_checkpoint(run_dir / "model.pt")
    assert model.calibration is not None and len(model.training["history"]) == 1
    assert model.training["world_size"] == WORLD_SIZE
    assert model.training["rank_weight_difference"] == 0.0
    assert model.config.method == "tang2019"
    for key, value in model.detector.networks.state_dict().items():
        assert torch.equal(value, ranks[0]["state"][key]), key
    events = [json.loads(line) for line in (run_dir / EVENTS_NAME).read_text().splitlines()]
    assert [event["event"] for event in events].count("start") == 1
    state = load_training_state(run_dir / "training_state.pt")
    assert state.world_size == WORLD_SIZE and len(state.noise_rng_states) == WORLD_SIZE
    assert not torch.equal(state.noise_rng_states[0], state.noise_rng_states[1])  # a seed per rank
    assert state.global_step == 4  # 64 films, 8 per rank per step


def test_sync_batchnorm_needs_cuda() -> None:
    detector = build_detector(with_overrides(tang2019_config(), "model", base_channels=8))
    with pytest.raises(ConfigError, match="sync_batchnorm"):
        distributed.convert_sync_batchnorm(detector, torch.device("cpu"))


def test_single_process_context_and_rank_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in distributed.LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched_by_torchrun()
    context = distributed.initialise_from_environment("cpu")
    assert (context.rank, context.world_size, context.is_main, context.is_distributed) == (0, 1, True, False)
    assert distributed.rank_seed(5, 0) == 5  # rank 0 keeps the single-process stream
    assert len({distributed.rank_seed(5, rank) for rank in range(8)}) == 8
    monkeypatch.setenv("WORLD_SIZE", "1")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "0")
    assert not distributed.launched_by_torchrun()  # a one-process torchrun needs no group


def test_train_options_reach_the_config() -> None:
    from cxr_anomaly.cli import build_parser, training_config

    arguments = build_parser().parse_args(
        ["train", "--data", "x.csv", "--out", "run", "--sync-batchnorm", "--checkpoint-every-steps", "25", "--resume"]
    )
    config = training_config(arguments)
    assert config.train.sync_batchnorm and config.train.checkpoint_every_steps == 25 and arguments.resume
    plain = training_config(build_parser().parse_args(["train", "--data", "x.csv", "--out", "run"]))
    assert not plain.train.sync_batchnorm and plain.train.checkpoint_every_steps == 0
    assert plain.method == "features" and config.method == "features"  # the default family
    tang = training_config(
        build_parser().parse_args(
            ["train", "--data", "x.csv", "--out", "run", "--method", "tang2019", "--variant", "u", "--sync-batchnorm"]
        )
    )
    assert tang.method == "tang2019" and tang.model.variant == "u" and tang.train.sync_batchnorm
    assert tang.data.image_size == 64
    with pytest.raises(ConfigError, match="--variant u applies to a family with network variants"):
        training_config(build_parser().parse_args(["train", "--data", "x.csv", "--out", "run", "--variant", "u"]))
