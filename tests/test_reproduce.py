"""`cxr-anomaly reproduce` end to end on a small real NIH subset: table, figures and resume.

Two variants, one seed, one short epoch of a narrow network (8 base channels) on 40 normals.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cxr_anomaly.cli import main
from cxr_anomaly.config import with_overrides
from cxr_anomaly.errors import ConfigError
from cxr_anomaly.jobs.reproduce import ReproduceOptions, reproduce_job
from cxr_anomaly.models.tang2019.config import tang2019_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_manifest(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 NIH1000 rows (both classes, both views) as a manifest with absolute paths."""
    folder = shared_data / "nih1000"
    table = pd.read_csv(folder / "manifest.csv").iloc[::3].reset_index(drop=True)
    table["path"] = [str(folder / path) for path in table["path"]]
    path = tmp_path_factory.mktemp("manifest") / "manifest.csv"
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def small_config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "small.toml"
    path.write_text("[model]\nbase_channels = 8\n[train]\nepochs = 1\nbatch_size = 16\n")
    return path


def test_reproduce_writes_table_and_figures_and_resumes(
    small_manifest: Path, small_config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    arguments = [
        "reproduce",
        "--data",
        str(small_manifest),
        "--out",
        str(out),
        "--seeds",
        "1",
        "--variants",
        "u,u+d+e",
        "--max-train-normals",
        "40",
        "--config",
        str(small_config_file),
        "--no-progress",
    ]
    assert main(arguments) == 0
    first = capsys.readouterr().out
    assert "2 cells run, 0 reused" in first
    for name in ("table.md", "table.csv", "roc.png", "figure2.png", "split.csv", "baselines.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "table.csv")
    assert table["method"].tolist() == ["u", "u", "u+d+e", "u+d+e", "pca5", "knn5"]
    assert table["score"].fillna("").tolist() == ["eq6", "code_knn", "eq6", "code_knn", "", ""]
    assert table["kind"].tolist() == ["model"] * 4 + ["baseline"] * 2
    assert table["auc_mean"].between(0.0, 1.0).all()
    assert {"auc_PA_mean", "auc_AP_mean", "average_precision_mean", "val_auc_mean"} <= set(table.columns)
    markdown = (out / "table.md").read_text()
    assert "| u+d+e | eq. 6 | 1 |" in markdown and "| u+d+e | code kNN | 1 |" in markdown
    assert "knn5 (baseline)" in markdown and "AUC, PA films" in markdown

    split = pd.read_csv(out / "split.csv")
    patients_per_split = split.groupby("patient_id")["split"].nunique()
    assert (patients_per_split == 1).all(), "the re-split must be patient-disjoint"
    trained = split[split["used_for"] == "train_normal"]
    assert len(trained) == 40 and (trained["label"] == 0).all()

    cell = json.loads((out / "cells" / "u+d+e-seed0" / "result.json").read_text())
    for method in ("eq6", "code_knn"):
        metrics = cell["test"][method]
        assert metrics["num_normal"] + metrics["num_abnormal"] == int((split["split"] == "test").sum())
        assert set(metrics["component_auc"]) == {"reconstruction", "adversarial", "latent", "code_distance"}
    # The code kNN score is the code distance component itself; eq. 6 is not.
    assert cell["test"]["code_knn"]["auc"] == cell["test"]["code_knn"]["component_auc"]["code_distance"]
    modified = {name: (out / "cells" / name / "result.json").stat().st_mtime_ns for name in ("u-seed0", "u+d+e-seed0")}

    # Resume: the same command again reuses both finished cells and rewrites the table.
    assert main(arguments) == 0
    second = capsys.readouterr().out
    assert "0 cells run, 2 reused" in second
    for name, stamp in modified.items():
        assert (out / "cells" / name / "result.json").stat().st_mtime_ns == stamp
    assert pd.read_csv(out / "table.csv")["auc_mean"].tolist() == table["auc_mean"].tolist()


def test_a_half_written_or_changed_cell_is_run_again(small_manifest: Path, tmp_path: Path) -> None:
    config = with_overrides(
        with_overrides(tang2019_config(), "model", base_channels=8), "train", epochs=1, batch_size=16
    )
    options = ReproduceOptions(variants=("u",), seeds=(0,), max_train_normals=24)
    first = reproduce_job([small_manifest], tmp_path, config, options, progress=False)
    assert first.cells_run == ["u-seed0"]
    # A killed run leaves no result.json: the cell is not finished and runs again.
    (tmp_path / "cells" / "u-seed0" / "result.json").unlink()
    second = reproduce_job([small_manifest], tmp_path, config, options, progress=False)
    assert second.cells_run == ["u-seed0"]
    # Other settings must not reuse the cell either.
    changed = with_overrides(config, "loss", weight_reconstruction=10.0)
    third = reproduce_job([small_manifest], tmp_path, changed, options, progress=False)
    assert third.cells_run == ["u-seed0"] and third.cells_skipped == []


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="variants"):
        ReproduceOptions(variants=("u", "u+x"))
    with pytest.raises(ConfigError, match="seeds"):
        ReproduceOptions(seeds=())
    with pytest.raises(ConfigError, match="split"):
        ReproduceOptions(split="random")


def test_several_seeds_add_a_seed_ensemble_row(small_manifest: Path, tmp_path: Path) -> None:
    config = with_overrides(
        with_overrides(tang2019_config(), "model", base_channels=8), "train", epochs=1, batch_size=16
    )
    options = ReproduceOptions(variants=("u",), seeds=(0, 1), max_train_normals=24)
    outcome = reproduce_job([small_manifest], tmp_path, config, options, progress=False)
    table = outcome.table.set_index(["method", "score"])
    assert table.loc[("u", "code_knn"), "runs"] == 2
    ensemble = table.loc[("u ensemble", "code_knn")]
    assert ensemble["kind"] == "ensemble" and ensemble["runs"] == 1
    assert 0.0 <= ensemble["auc_mean"] <= 1.0
    assert "u ensemble of 2 seeds" in outcome.table_md.read_text()


def test_view_filter_and_patient_disjoint_split(small_manifest: Path) -> None:
    import numpy as np

    from cxr_anomaly.data.manifest import load_inputs
    from cxr_anomaly.jobs.reproduce import prepare_split

    manifest = load_inputs([small_manifest])
    pixels = np.zeros((len(manifest), 64, 64), dtype=np.uint8)
    split = prepare_split(manifest, pixels, ReproduceOptions(view="PA", split_seed=3))
    assert set(split.manifest["view"]) == {"PA"}
    assert (split.manifest.groupby("patient_id")["split"].nunique() == 1).all()
    assert len(split.train_normals) == int(
        ((split.manifest["split"] == "train") & (split.manifest["label"] == 0)).sum()
    )
    assert split.test_views is not None and set(split.test_views) == {"PA"}


def test_cell_files_are_written_durably(small_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 13 point 9: scores.npz and result.json go through files.atomic_write (fsync of
    # the file, rename, fsync of the folder), not a rename of an unsynced file.
    import os

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    config = with_overrides(
        with_overrides(tang2019_config(), "model", base_channels=8), "train", epochs=1, batch_size=16
    )
    options = ReproduceOptions(variants=("u",), seeds=(0,), max_train_normals=24)
    reproduce_job([small_manifest], tmp_path, config, options, progress=False)
    cell = tmp_path / "cells" / "u-seed0"
    names = [Path(path).name for path in synced]
    for final in ("scores.npz", "result.json"):
        assert (cell / final).is_file()
        assert any(name.startswith(f".{final}.") for name in names), (final, synced)
    assert names.count(cell.name) >= 2, synced
    assert not [path.name for path in cell.iterdir() if path.name.startswith(".")]
