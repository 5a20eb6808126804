"""`cxr-anomaly benchmark` end to end on a tiny real subset: table, figures, cell reuse.

Two fitted cells, one seed: the features detector (memory bank 256) and tang2019 U (8 base
channels, 1 epoch), fitted on 40 rsna_normal224 normals (4 more held out for calibration) and
tested on 30 films of nih_pneumonia256 and 30 of NIH1000's test split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxr_anomaly.cli import main
from cxr_anomaly.errors import ConfigError
from cxr_anomaly.jobs.benchmark import BenchmarkOptions, benchmark_configs, parse_method, parse_test_collections

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def subset(folder: Path, table: pd.DataFrame, path: Path) -> Path:
    """Write ``table`` as a manifest with absolute paths into ``folder``'s films."""
    table = table.assign(path=[str(folder / name) for name in table["path"]])
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def manifests(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Manifests of the training normals and the two test collections, in a temporary folder."""
    folder = tmp_path_factory.mktemp("manifests")
    rsna = shared_data / "rsna_normal224"
    pneumonia = shared_data / "nih_pneumonia256"
    nih1000 = shared_data / "nih1000"
    pneumonia_table = pd.read_csv(pneumonia / "manifest.csv")
    # both classes in both views, so that every per-view column is defined
    pneumonia_rows = pneumonia_table.groupby(["label", "view"]).head(8).groupby("label").head(15)
    nih_table = pd.read_csv(nih1000 / "manifest.csv")
    test_rows = nih_table[nih_table["split"] == "test"].groupby("label").head(15)
    train_rows = nih_table[nih_table["split"] == "train"].head(10)  # must not be tested on
    return {
        "train": subset(rsna, pd.read_csv(rsna / "manifest.csv").head(44), folder / "rsna.csv"),
        "pneumonia": subset(pneumonia, pneumonia_rows, folder / "pneumonia.csv"),
        "nih1000": subset(nih1000, pd.concat([train_rows, test_rows]), folder / "nih1000.csv"),
    }


@pytest.fixture(scope="module")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "small.toml"
    path.write_text(
        "[features]\nmemory_bank_size = 256\npooled_bank_size = 64\nbatch_size = 16\nfinetune_epochs = 0\n"
        "[model]\nbase_channels = 8\n[train]\nepochs = 1\nbatch_size = 16\n"
    )
    return path


def test_benchmark_writes_table_and_figures_and_reuses_cells(
    manifests: dict[str, Path], small_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench"
    arguments = [
        "benchmark",
        "--train",
        str(manifests["train"]),
        "--test",
        f"pneumonia={manifests['pneumonia']}",
        f"nih1000={manifests['nih1000']}",
        "--methods",
        "features,features:gaussian,tang2019:u",
        "--seeds",
        "1",
        "--out",
        str(out),
        "--config",
        str(small_config),
        "--bootstrap-resamples",
        "20",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    assert main(arguments) == 0
    assert "2 cells run, 0 reused" in capsys.readouterr().out

    for name in (
        "table.csv",
        "table.md",
        "roc_pneumonia.png",
        "roc_nih1000.png",
        "films_pneumonia_features-seed0.png",
        "films_nih1000_tang2019-u-seed0.png",
        "cells/features-seed0/scores_nih1000.npz",
        "cells/tang2019-u-seed0/calibration.npz",
        "cells/tang2019-u-seed0/result.json",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "table.csv")
    assert table["method"].tolist() == [
        "features",
        "features:gaussian",
        "tang2019:u",
        "pca5",
        "knn5",
        "view only (AP = 1)",
    ]
    assert table["kind"].tolist() == ["model"] * 3 + ["baseline"] * 2 + ["view_only"]
    assert table["score"].tolist()[:3] == ["pooled_knn", "gaussian", "eq6"]
    for collection, adults in (("pneumonia", ("adults_auc_PA", "adults_auc_AP")), ("nih1000", ())):
        for key in ("auc", "auc_PA", "auc_AP", "auc_view_balanced", *adults, "auc_score_predicts_ap_in_normals"):
            assert table[f"{collection}:{key}_mean"].iloc[:5].between(0.0, 1.0).all(), (collection, key)
            assert table[f"{collection}:{key}_low"].iloc[:5].notna().all(), (collection, key)  # one run: an interval
        assert table[f"{collection}:auc_seed0"].iloc[:3].notna().all()
        assert f"{collection}:beats_baselines_in_every_view" in table
    # One fit gives both feature rows, with different scores.
    assert table.loc[0, "nih1000:auc_mean"] != table.loc[1, "nih1000:auc_mean"]
    # The view-only row is the AUC of "AP = 1" on the tested films, which are NIH1000's test split only.
    tested = pd.read_csv(manifests["nih1000"]).query("split == 'test'")
    view_only = table.iloc[5]
    assert view_only["nih1000:auc_mean"] == pytest.approx(roc_auc_score(tested["label"], tested["view"] == "AP"))
    assert view_only["nih1000:auc_score_predicts_ap_in_normals_mean"] == 1.0
    markdown = (out / "table.md").read_text()
    assert "### nih1000 (test split: 15 normal + 15 abnormal; PA" in markdown
    assert "### pneumonia (all rows: 15 normal + 15 abnormal; PA 7 + 7, AP 8 + 8; ages known, 1 under 18)" in markdown
    assert "| knn5 (baseline) | pixels, 64 px | 1 |" in markdown and "| view only (AP = 1) | view | 1 |" in markdown
    assert "score predicts AP in normals" in markdown
    # adults' columns where a collection has minors (nih_pneumonia256), not where all are adults
    sections = {section.split(" ")[0]: section for section in markdown.split("### ")[1:]}
    assert "adults PA" in sections["pneumonia"]  # ages known: adults reported (every film in nih1000 is one)

    result = json.loads((out / "cells" / "features-seed0" / "result.json").read_text())
    assert result["num_train_films"] == 40 and result["num_calibration_films"] == 4
    metrics = result["metrics"]["nih1000"]["pooled_knn"]
    assert metrics["num_normal"] + metrics["num_abnormal"] == 30
    with np.load(out / "cells" / "tang2019-u-seed0" / "scores_nih1000.npz") as stored:
        assert stored["raw"].shape == (30,) and stored["figure_reconstructions"].shape == (12, 64, 64)
    stamps = {path: path.stat().st_mtime_ns for path in (out / "cells").rglob("*") if path.is_file()}

    # A rerun with one more feature score fits nothing: both cells are reused, the new row comes
    # from the stored components of the features fit.
    arguments[arguments.index("--methods") + 1] += ",features:patch_knn"
    assert main(arguments) == 0
    assert "0 cells run, 2 reused" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    again = pd.read_csv(out / "table.csv")
    assert again["method"].tolist()[3] == "features:patch_knn"
    assert again.drop(index=3).reset_index(drop=True)["nih1000:auc_mean"].tolist() == table["nih1000:auc_mean"].tolist()

    # --first-seed adds a seed without refitting the earlier one's cells.
    seed_one = arguments[:]
    seed_one[seed_one.index("--methods") + 1] = "tang2019:u"
    seed_one += ["--first-seed", "1"]
    assert main(seed_one) == 0
    assert "1 cells run, 0 reused" in capsys.readouterr().out
    assert (out / "cells" / "tang2019-u-seed1" / "result.json").is_file()
    assert "nih1000:auc_seed1" in pd.read_csv(out / "table.csv")


def test_methods_test_collections_and_config_are_checked(tmp_path: Path) -> None:
    assert parse_method("tang2019:u+d+e").kind == "tang2019-u+d+e"
    assert parse_method("features:patch_knn").kind == "features"
    for bad, message in (
        ("tang2019", "needs a variant"),
        ("features:mean", "unknown feature score"),
        ("ganomaly", "unknown family 'ganomaly'"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_method(bad)
    with pytest.raises(ConfigError, match="twice"):
        BenchmarkOptions(methods=("features", "features"))
    with pytest.raises(ConfigError, match="seeds"):
        BenchmarkOptions(seeds=())
    assert parse_test_collections(["a=x.csv", "b.2=y"]) == {"a": Path("x.csv"), "b.2": Path("y")}
    for bad, message in (
        (["nih1000"], "expected NAME=DATA"),
        (["a/b=x"], "must be letters"),
        (["a=x", "a=y"], "given twice"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_test_collections(bad)
    config_file = tmp_path / "bad.toml"
    config_file.write_text('method = "tang2019"\n')
    with pytest.raises(ConfigError, match="leave method out"):
        benchmark_configs(config_file)
    configs = benchmark_configs(None, epochs=2)
    assert configs["features"].data.image_size == 224 and configs["tang2019"].data.image_size == 64
    assert configs["tang2019"].train.epochs == 2
