"""ONNX export of the scoring graph: parity with PyTorch on real films, metadata, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_anomaly.checkpoint import load_checkpoint
from cxr_anomaly.cli import main
from cxr_anomaly.config import with_overrides
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.export import ExportError, OnnxScorer, export_checkpoint, export_onnx
from cxr_anomaly.models.base import output_names
from cxr_anomaly.models.tang2019 import Tang2019Detector
from cxr_anomaly.models.tang2019.config import tang2019_config
from cxr_anomaly.models.tang2019.training import build_detector
from cxr_anomaly.scoring import score_films

pytest.importorskip("onnxruntime")


def real_test_films(nih1000: Path, count: int) -> np.ndarray:
    """uint8 films (count, 64, 64): the first normal and abnormal NIH1000 test films."""
    manifest = load_inputs(nih1000 / "manifest.csv")
    rows = manifest[manifest["split"] == "test"].groupby("label").head(count // 2).reset_index(drop=True)
    return load_images(rows, tang2019_config().data, workers=1).pixels


def test_onnx_scores_match_pytorch_on_real_films(tiny_nih_model: object, tmp_path: Path) -> None:
    """Max |score difference| <= 1e-4 in fp32 between onnxruntime and PyTorch, raw and components."""
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--model", str(tiny_nih_model.checkpoint), "--out", str(onnx_path)]) == 0
    loaded = load_checkpoint(tiny_nih_model.checkpoint)
    pixels = real_test_films(tiny_nih_model.nih1000, 40)
    reference = score_films(loaded.detector, pixels, precision="fp32", keep_maps=True)
    scorer = OnnxScorer(onnx_path)
    assert (
        scorer.output_names
        == output_names(loaded.detector)
        == ("score", "reconstruction", "adversarial", "latent", "code_distance", "anomaly_map")
    )
    # batches of 16 exercise the dynamic batch dimension (the export traced a batch of 2)
    exported = scorer.score_films(pixels, batch_size=16)
    difference = np.max(np.abs(exported.raw - reference.raw))
    assert difference <= 1e-4, ("raw", difference)
    assert set(exported.components) == set(reference.components)
    for name in ("reconstruction", "adversarial", "latent", "code_distance"):
        difference = np.max(np.abs(exported.components[name] - reference.components[name]))
        assert difference <= 1e-4, (name, difference)
    # the anomaly map (the residual heatmap) is exported too
    maps = scorer.score_tensor(loaded.detector.model_input(pixels[:4]).numpy())["anomaly_map"]  # (4, 1, 64, 64)
    assert maps.shape == (4, 1, 64, 64)
    assert np.max(np.abs(maps[:, 0] - reference.anomaly_maps[:4])) <= 1e-4
    assert scorer.config == loaded.config
    assert scorer.calibration is not None and scorer.calibration.to_dict() == loaded.calibration.to_dict()


@pytest.mark.parametrize("skips", [(32, 16, 8, 4), (8, 4)])
def test_variant_without_discriminator_exports_nan_components(tmp_path: Path, skips: tuple[int, ...]) -> None:
    config = with_overrides(
        tang2019_config(), "model", variant="u", base_channels=8, latent_dim=8, skip_connections=skips
    )
    detector = Tang2019Detector(config, build_detector(config))
    result = export_onnx(detector, config, tmp_path / "u.onnx")
    assert result.detector == detector.description and "(u," in result.detector
    assert result.output_names == output_names(detector)
    assert result.size_bytes == (tmp_path / "u.onnx").stat().st_size
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64), dtype=np.uint8)
    exported = OnnxScorer(result.path).score_films(pixels)
    reference = score_films(detector, pixels, precision="fp32")
    assert np.all(np.isnan(exported.components["adversarial"])) and np.all(np.isnan(exported.components["latent"]))
    assert np.all(np.isnan(exported.components["code_distance"]))  # a fresh detector stores no training codes
    np.testing.assert_allclose(exported.raw, reference.raw, atol=1e-4, rtol=0)


def test_code_knn_score_is_exported(tiny_nih_model: object, tmp_path: Path) -> None:
    loaded = load_checkpoint(tiny_nih_model.checkpoint)
    config = with_overrides(loaded.config, "score", method="code_knn")
    # the score is the detector's: the same trained networks under the code_knn score
    detector = Tang2019Detector(config, loaded.detector.networks)
    result = export_onnx(detector, config, tmp_path / "knn.onnx")
    pixels = real_test_films(tiny_nih_model.nih1000, 8)
    exported = OnnxScorer(result.path).score_films(pixels)
    reference = score_films(detector, pixels, precision="fp32")
    assert np.all(np.isfinite(exported.raw))
    np.testing.assert_allclose(exported.raw, exported.components["code_distance"], atol=0, rtol=0)
    np.testing.assert_allclose(exported.raw, reference.raw, atol=1e-4, rtol=0)


def test_missing_checkpoint_and_missing_onnx_file_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pt"
    with pytest.raises(Exception, match="absent.pt"):
        export_checkpoint(missing, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
    assert main(["export", "--model", str(missing), "--out", str(tmp_path / "out.onnx")]) == 2
    with pytest.raises(ExportError, match="absent.onnx"):
        OnnxScorer(tmp_path / "absent.onnx")


def test_foreign_onnx_file_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ExportError, match="not a cxr-anomaly scoring graph"):
        OnnxScorer(path)


def test_cli_scores_an_onnx_graph_like_its_checkpoint_with_a_report(
    tiny_nih_model: object, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``score --model model.onnx`` (onnxruntime, fp32) writes the table and worklist that
    ``--model model.pt --precision fp32`` does (``auto`` would score the checkpoint in bf16 on a
    CPU that computes it natively)."""
    import pandas as pd

    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--model", str(tiny_nih_model.checkpoint), "--out", str(onnx_path)]) == 0
    films = tiny_nih_model.nih1000 / "test"
    tables = {}
    for name, model in (("torch", tiny_nih_model.checkpoint), ("onnx", onnx_path)):
        out = tmp_path / f"{name}.csv"
        assert (
            main(
                [
                    "score",
                    "--model",
                    str(model),
                    str(films),
                    "--out",
                    str(out),
                    "--precision",
                    "fp32",
                    "--device",
                    "cpu",
                    "--report",
                    str(tmp_path / f"{name}.html"),
                    "--no-progress",
                ]
            )
            == 0
        )
        tables[name] = pd.read_csv(out).sort_values("path").reset_index(drop=True)
        assert (tmp_path / f"{name}.html").stat().st_size > 10_000  # thumbnails and heatmaps inline
    torch_table, onnx_table = tables["torch"], tables["onnx"]
    assert list(onnx_table["path"]) == list(torch_table["path"]) and len(onnx_table) == 200
    for column in ("score", "score_raw", "reconstruction", "latent", "percentile"):
        assert np.max(np.abs(onnx_table[column] - torch_table[column])) <= 1e-3, column
    assert list(onnx_table["decision"]) == list(torch_table["decision"])
    assert (
        main(
            [
                "score",
                "--model",
                str(onnx_path),
                str(films),
                "--out",
                str(tmp_path / "bf16.csv"),
                "--precision",
                "bf16",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "model.onnx: an ONNX graph is scored in fp32, not precision='bf16'" in caplog.text
    assert (
        main(
            [
                "score",
                "--model",
                str(onnx_path),
                str(films),
                "--out",
                str(tmp_path / "gpu.csv"),
                "--device",
                "cuda",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "model.onnx: an ONNX graph is scored on the CPU" in caplog.text
    if not torch.cuda.is_available():  # a checkpoint asked for a GPU that is not there
        assert (
            main(
                [
                    "score",
                    "--model",
                    str(tiny_nih_model.checkpoint),
                    str(films),
                    "--out",
                    str(tmp_path / "gpu.csv"),
                    "--device",
                    "cuda",
                    "--no-progress",
                ]
            )
            == 2
        )
        assert "device='cuda', but torch sees no CUDA device here" in caplog.text
    scorer = OnnxScorer(onnx_path)
    assert scorer.anomaly_map_scale == load_checkpoint(tiny_nih_model.checkpoint).anomaly_map_scale
