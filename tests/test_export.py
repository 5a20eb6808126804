"""ONNX export of the scoring graph: parity with PyTorch on real films, metadata, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr_anomaly.checkpoint import load_checkpoint
from cxr_anomaly.cli import main
from cxr_anomaly.config import Config, with_overrides
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.export import ExportError, OnnxScorer, export_checkpoint, export_onnx
from cxr_anomaly.scoring import score_pixels
from cxr_anomaly.training import build_detector

pytest.importorskip("onnxruntime")


def real_test_films(nih1000: Path, count: int) -> np.ndarray:
    """uint8 films (count, 64, 64): the first normal and abnormal NIH1000 test films."""
    manifest = load_inputs(nih1000 / "manifest.csv")
    rows = manifest[manifest["split"] == "test"].groupby("label").head(count // 2).reset_index(drop=True)
    return load_images(rows, Config().data, workers=1).pixels


def test_onnx_scores_match_pytorch_on_real_films(tiny_nih_model: object, tmp_path: Path) -> None:
    """Max |score difference| <= 1e-4 in fp32 between onnxruntime and PyTorch, raw and components."""
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--model", str(tiny_nih_model.checkpoint), "--out", str(onnx_path)]) == 0
    loaded = load_checkpoint(tiny_nih_model.checkpoint)
    pixels = real_test_films(tiny_nih_model.nih1000, 40)
    reference = score_pixels(loaded.detector, pixels, loaded.config)
    scorer = OnnxScorer(onnx_path)
    # batches of 16 exercise the dynamic batch dimension (the export traced a batch of 2)
    exported = scorer.score_pixels(pixels, batch_size=16)
    for name in ("raw", "reconstruction", "adversarial", "latent", "code_distance"):
        difference = np.max(np.abs(getattr(exported, name) - getattr(reference, name)))
        assert difference <= 1e-4, (name, difference)
    assert scorer.config == loaded.config
    assert scorer.calibration is not None and scorer.calibration.to_dict() == loaded.calibration.to_dict()


def test_variant_without_discriminator_exports_nan_components(tmp_path: Path) -> None:
    config = with_overrides(Config(), "model", variant="u", base_channels=8, latent_dim=8)
    detector = build_detector(config)
    result = export_onnx(detector, config, tmp_path / "u.onnx")
    assert result.variant == "u" and result.size_bytes == (tmp_path / "u.onnx").stat().st_size
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64), dtype=np.uint8)
    exported = OnnxScorer(result.path).score_pixels(pixels)
    reference = score_pixels(detector, pixels, config)
    assert np.all(np.isnan(exported.adversarial)) and np.all(np.isnan(exported.latent))
    assert np.all(np.isnan(exported.code_distance))  # a fresh detector stores no training codes
    np.testing.assert_allclose(exported.raw, reference.raw, atol=1e-4, rtol=0)


def test_code_knn_score_is_exported(tiny_nih_model: object, tmp_path: Path) -> None:
    loaded = load_checkpoint(tiny_nih_model.checkpoint)
    config = with_overrides(loaded.config, "score", method="code_knn")
    result = export_onnx(loaded.detector, config, tmp_path / "knn.onnx")
    pixels = real_test_films(tiny_nih_model.nih1000, 8)
    exported = OnnxScorer(result.path).score_pixels(pixels)
    reference = score_pixels(loaded.detector, pixels, config)
    assert np.all(np.isfinite(exported.raw))
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

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ExportError, match="not a cxr-anomaly scoring graph"):
        OnnxScorer(path)
