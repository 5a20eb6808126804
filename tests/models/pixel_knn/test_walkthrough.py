"""The pixel_knn family, added as one folder and one registry line, through every command on real
NIH1000 films: train, score, evaluate, calibrate, benchmark, export (ONNX) and serve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_anomaly.baselines import KNNBaseline
from cxr_anomaly.checkpoint import load_checkpoint
from cxr_anomaly.cli import main
from cxr_anomaly.config import DataConfig
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KNN_BASELINE = "5-NN pixel distance, 64 px"


@pytest.fixture(scope="module")
def manifest(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 train normals, 8 val normals and 8 + 8 test films of NIH1000, patient-disjoint."""
    root = shared_data / "nih1000"
    table = pd.read_csv(root / "manifest.csv")
    table["path"] = [str(root / path) for path in table["path"]]
    test = pd.concat([table[(table.split == "test") & (table.label == label)].head(8) for label in (0, 1)])
    rest = table[~table.patient_id.isin(test.patient_id)]
    train = rest[(rest.split == "train") & (rest.label == 0)].head(24)
    val = rest[(rest.split == "valid") & (rest.label == 0)].head(8)
    path = tmp_path_factory.mktemp("nih") / "manifest.csv"
    pd.concat([train, val.assign(split="val"), test])[["path", "label", "split", "patient_id", "view"]].to_csv(
        path, index=False
    )
    return path


@pytest.fixture(scope="module")
def checkpoint(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    assert (
        main(["train", "--method", "pixel_knn", "--data", str(manifest), "--out", str(run_dir), "--no-progress"]) == 0
    )
    return run_dir / "model.pt"


def pixels_of(manifest: Path, split: str, label: int | None = None) -> np.ndarray:
    table = load_inputs([manifest])
    rows = table[(table.split == split) & ((table.label == label) if label is not None else True)]
    return load_images(rows, DataConfig(image_size=64)).pixels


def test_train_stores_the_training_normals(checkpoint: Path, manifest: Path) -> None:
    model = load_checkpoint(checkpoint)
    assert model.config.method == "pixel_knn" and model.detector.family == "pixel_knn"
    assert model.training["family"] == "pixel_knn" and model.training["num_train_images"] == 24
    assert model.training["num_calibration_images"] == 8
    assert tuple(model.detector.bank.shape) == (24, 64 * 64)
    assert model.calibration is not None and model.calibration.num_normals == 8


def test_score_gives_the_5nn_pixel_distance(checkpoint: Path, manifest: Path, tmp_path: Path) -> None:
    table = load_inputs([manifest])
    test = table[table.split == "test"]
    films = tmp_path / "films.csv"
    test.to_csv(films, index=False)
    out = tmp_path / "scores.csv"
    assert (
        main(
            [
                "score",
                "--model",
                str(checkpoint),
                str(films),
                "--out",
                str(out),
                "--normalisation",
                "raw",
                "--no-progress",
            ]
        )
        == 0
    )
    scores = pd.read_csv(out).set_index("path").loc[test["path"]]
    expected = (
        KNNBaseline(DataConfig(image_size=64)).fit(pixels_of(manifest, "train", 0)).score(pixels_of(manifest, "test"))
    )
    np.testing.assert_allclose(scores["pixel_distance"], expected, rtol=1e-5)
    np.testing.assert_allclose(scores["score"], expected, rtol=1e-5)


def test_evaluate_agrees_with_the_pixel_baseline(checkpoint: Path, manifest: Path, tmp_path: Path) -> None:
    assert (
        main(["evaluate", "--model", str(checkpoint), "--data", str(manifest), "--out", str(tmp_path), "--no-progress"])
        == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "pixel_knn" and (metrics["num_normal"], metrics["num_abnormal"]) == (8, 8)
    # the same 5-NN distance on the same training normals: the same ranking of the test films
    assert metrics["auc"] == pytest.approx(metrics["baselines"][KNN_BASELINE]["auc"])
    assert (tmp_path / "roc.png").is_file() and (tmp_path / "films.png").is_file()


def test_calibrate_stores_an_operating_point(checkpoint: Path, manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "sensitive.pt"
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(checkpoint),
                "--data",
                str(manifest),
                "--split",
                "test",
                "--target-sensitivity",
                "0.75",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    calibration = load_checkpoint(out).calibration
    assert calibration.operating_point == "sensitivity" and calibration.validation_sensitivity >= 0.75


def test_benchmark_runs_a_pixel_knn_row(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    assert (
        main(
            [
                "benchmark",
                "--train",
                str(manifest),
                "--test",
                f"nih={manifest}",
                "--methods",
                "pixel_knn",
                "--seeds",
                "1",
                "--out",
                str(out),
                "--bootstrap-resamples",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    table = pd.read_csv(out / "table.csv").set_index("method")
    assert table.loc["pixel_knn", "kind"] == "model" and table.loc["pixel_knn", "score"] == "raw"
    # fitted on the same training normals, the family and the 5-NN baseline rank the test films alike
    assert table.loc["pixel_knn", "nih:auc_mean"] == pytest.approx(table.loc["knn5", "nih:auc_mean"])
    assert (out / "cells" / "pixel_knn-seed0" / "result.json").is_file()


def test_export_and_serve_score_like_the_checkpoint(checkpoint: Path, manifest: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from fastapi.testclient import TestClient

    from cxr_anomaly.serve import ServiceSettings, create_app

    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--model", str(checkpoint), "--out", str(onnx_path)]) == 0
    film = Path(load_inputs([manifest]).query("split == 'test'")["path"].iloc[-1])
    expected = load_checkpoint(checkpoint, precision="fp32").score_films(pixels_of_film(film)).raw[0]
    for model in (checkpoint, onnx_path):
        with TestClient(create_app(model, ServiceSettings())) as client:
            assert client.get("/v1/model").json()["method"] == "pixel_knn"
            body = client.post("/v1/score?heatmap=true", files={"file": ("x.png", film.read_bytes(), "image/png")})
            assert body.status_code == 200, body.text
            assert body.json()["score_raw"] == pytest.approx(expected, rel=1e-5), model.name
            assert body.json()["heatmap_png"]


def pixels_of_film(path: Path) -> np.ndarray:
    return load_images(pd.DataFrame({"path": [str(path)]}), DataConfig(image_size=64)).pixels
