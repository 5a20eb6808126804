"""The pretrained-feature detector: backbone, fitting, scoring, checkpoint, ONNX, heatmaps, CLI."""

from __future__ import annotations

import base64
import io
import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cxr_anomaly import inference
from cxr_anomaly.checkpoint import load_checkpoint, save_checkpoint
from cxr_anomaly.config import Config, config_from_dict, with_overrides
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.errors import CheckpointError, ConfigError, NoNormalImagesError
from cxr_anomaly.explain import legend_height
from cxr_anomaly.models.features.backbone import (
    EfficientNetLite,
    SamePadConv2d,
    _load_weights,
    build_backbone,
    packaged_weights_path,
)
from cxr_anomaly.models.features.fitting import greedy_coreset
from cxr_anomaly.models.features.torch_model import GPU_SCORING_BATCH_SIZE
from cxr_anomaly.models.registry import build_detector, fit_detector
from cxr_anomaly.scoring import fit_calibration, score_films

# Frozen backbone: fine-tuning (on by default) has its own tests in test_finetune.py, and the CLI
# test at the end of this file fits the default, fine-tuning included.
SMALL = with_overrides(
    Config(), "features", memory_bank_size=256, pooled_bank_size=64, batch_size=16, finetune_epochs=0
)


@dataclass(frozen=True)
class FittedFeatures:
    """A features detector fitted on 48 rsna_normal224 films, and NIH1000 test films to score."""

    detector: torch.nn.Module
    config: Config
    train_pixels: np.ndarray
    test_pixels: np.ndarray
    test_labels: np.ndarray


@pytest.fixture(scope="module")
def fitted(shared_data: Path) -> FittedFeatures:
    train = load_inputs(shared_data / "rsna_normal224" / "manifest.csv").iloc[:48]
    nih = load_inputs(shared_data / "nih1000" / "manifest.csv")
    test = pd.concat([nih[(nih["split"] == "test") & (nih["label"] == label)].head(8) for label in (0, 1)])
    train_pixels = load_images(train, SMALL.data, workers=1).pixels
    test_pixels = load_images(test, SMALL.data, workers=1).pixels
    result = fit_detector(SMALL, train_pixels, progress=False)
    return FittedFeatures(result.detector, SMALL, train_pixels, test_pixels, test["label"].to_numpy().astype(int))


def test_backbone_gives_three_scales_and_folding_keeps_outputs() -> None:
    folded, weights = build_backbone("efficientnet_lite0")
    assert weights.num_tensors > 250 and "efficientnet-lite0" in weights.source
    plain = EfficientNetLite("efficientnet_lite0")
    _load_weights(plain, packaged_weights_path("efficientnet_lite0"), "efficientnet_lite0")
    plain.eval()
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        ours, reference = folded(images), plain(images)
    assert {stride: tuple(value.shape) for stride, value in ours.items()} == {
        8: (2, 40, 28, 28),
        16: (2, 112, 14, 14),
        32: (2, 320, 7, 7),
    }
    for stride in ours:  # BatchNorm folded into the convolutions changes nothing but rounding
        assert torch.allclose(ours[stride], reference[stride], atol=1e-3, rtol=1e-4)
    assert not any(parameter.requires_grad for parameter in folded.parameters())


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("size", [(224, 224), (112, 57), (7, 8)])
def test_same_padding_without_a_padded_copy_is_tensorflows_to_the_bit(kernel: int, size: tuple[int, int]) -> None:
    convolution = SamePadConv2d(6, 6, kernel, stride=2, groups=6, bias=True)
    generator = torch.Generator().manual_seed(kernel)
    with torch.no_grad():
        convolution.weight.copy_(torch.randn(convolution.weight.shape, generator=generator))
        convolution.bias.copy_(torch.randn(6, generator=generator))
    images = torch.randn(2, 6, *size, generator=generator, requires_grad=True)
    # TensorFlow's "SAME": ceil(size / 2) outputs, the odd zero after the input
    pads = []
    for length in (size[1], size[0]):
        total = max((math.ceil(length / 2) - 1) * 2 + kernel - length, 0)
        pads += [total // 2, total - total // 2]
    reference = F.conv2d(F.pad(images, pads), convolution.weight, convolution.bias, 2, 0, 1, 6)
    with torch.no_grad():  # scoring: a window of a symmetrically padded convolution
        windowed = convolution(images)
    assert windowed.shape == reference.shape == (2, 6, math.ceil(size[0] / 2), math.ceil(size[1] / 2))
    assert torch.equal(windowed, reference)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(
            convolution(images), F.conv2d(F.pad(images, pads), convolution.weight, convolution.bias, 2, 0, 1, 6)
        )
    # fine-tuning: the padded input, so the gradients of earlier commits to the bit
    (reference_grad,) = torch.autograd.grad(reference.square().sum(), images)
    (our_grad,) = torch.autograd.grad(convolution(images).square().sum(), images)
    assert torch.equal(our_grad, reference_grad)


def test_backbone_errors_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="features.backbone='resnet9'"):
        build_backbone("resnet9")
    with pytest.raises(ConfigError, match="does not exist"):
        build_backbone("efficientnet_lite0", str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"layer.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ConfigError, match="do not fit"):
        build_backbone("efficientnet_lite0", str(wrong))
    with pytest.raises(ConfigError, match="timm"):
        build_backbone("timm:resnet18", str(wrong))


def test_a_local_weights_file_is_used(tmp_path: Path) -> None:
    state = torch.load(packaged_weights_path("efficientnet_lite0"), weights_only=True)
    state["_conv_stem.weight"] = torch.zeros_like(state["_conv_stem.weight"])
    local = tmp_path / "local.pth"
    torch.save({"state_dict": state}, local)
    backbone, weights = build_backbone("efficientnet_lite0", str(local))
    assert weights.source == str(local)
    assert float(backbone._conv_stem.weight.abs().sum()) == 0.0


def test_greedy_coreset_covers_every_cluster() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [50.0, 50.0]])
    # one big cluster and three small ones: random sampling of 4 would likely miss a small one
    points = torch.cat(
        [centres[0] + torch.randn(2000, 2, generator=generator)]
        + [centre + torch.randn(5, 2, generator=generator) for centre in centres[1:]]
    )
    chosen = points[greedy_coreset(points, 4, generator)]
    nearest_centre = torch.cdist(chosen, centres).argmin(dim=1)
    assert sorted(nearest_centre.tolist()) == [0, 1, 2, 3]


def test_fit_stores_banks_and_scores_real_films(fitted: FittedFeatures) -> None:
    detector = fitted.detector
    assert detector.is_fitted and len(detector.patch_bank) == 256 and len(detector.pooled_bank) == 48
    assert float(detector.patch_radius) > 0
    result = score_films(detector, fitted.test_pixels, keep_maps=True, precision="fp32")
    assert result.raw.shape == (16,) and np.all(np.isfinite(result.raw))
    assert set(result.components) == {"gaussian", "pooled_knn", "patch_knn"}
    assert np.array_equal(result.raw, result.components[SMALL.features.score])
    assert result.anomaly_maps is not None and result.anomaly_maps.shape == (16, 14, 14)
    assert result.reconstructions is None  # this family does not reconstruct
    # the film's patch score is its worst patch
    assert np.allclose(result.components["patch_knn"], result.anomaly_maps.reshape(16, -1).max(axis=1), atol=1e-5)
    # a film scored alone gets the same score as inside a batch
    alone = score_films(detector, fitted.test_pixels[3:4], precision="fp32").raw
    assert np.allclose(alone, result.raw[3:4], atol=1e-5)
    # training normals lie nearer their own banks than the NIH films of another pipeline
    train = score_films(detector, fitted.train_pixels[:16], precision="fp32")
    assert np.median(train.components["pooled_knn"]) < np.median(result.components["pooled_knn"])


def test_scoring_batch_is_the_detectors_for_the_device(fitted: FittedFeatures, monkeypatch: pytest.MonkeyPatch) -> None:
    detector = fitted.detector
    assert detector.scoring_batch_size(torch.device("cuda")) == GPU_SCORING_BATCH_SIZE
    # 64 on a CPU only with both 12 threads or more and native bf16, where it was measured faster
    for native, threads, expected in [(False, 2, 16), (True, 8, 16), (False, 16, 16), (True, 12, 64), (True, 16, 64)]:
        with monkeypatch.context() as patch:
            patch.setattr(inference, "native_bf16", lambda device, native=native: native)
            patch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
            assert detector.scoring_batch_size(torch.device("cpu")) == expected, (native, threads)
    monkeypatch.setattr(inference, "native_bf16", lambda device: False)  # the batches below are the 16 of a CPU
    sizes: list[int] = []
    real_input = detector.model_input
    monkeypatch.setattr(
        detector, "model_input", lambda pixels, device: (sizes.append(len(pixels)), real_input(pixels, device))[1]
    )
    films = np.concatenate([fitted.test_pixels, fitted.test_pixels[:4]])  # 20 films
    default = score_films(detector, films, precision="fp32").raw
    assert sizes == [16, 4]
    sizes.clear()
    assert np.allclose(score_films(detector, films, batch_size=7, precision="fp32").raw, default, atol=1e-5)
    assert sizes == [7, 7, 6]
    with pytest.raises(ValueError, match="batch_size=0"):
        score_films(detector, films, batch_size=0)


def test_fit_refuses_too_few_normals() -> None:
    with pytest.raises(NoNormalImagesError, match="at least 6"):
        fit_detector(SMALL, np.zeros((3, 224, 224), np.uint8), progress=False)


def test_fit_computes_in_the_training_precision_and_records_it(fitted: FittedFeatures) -> None:
    fp32 = fit_detector(with_overrides(SMALL, "train", precision="fp32"), fitted.train_pixels[:12], progress=False)
    assert fp32.record["precision"] == "fp32"
    default = fit_detector(SMALL, fitted.train_pixels[:12], progress=False)
    assert default.record["precision"] == ("bf16" if inference.native_bf16("cpu") else "fp32")  # auto


def test_checkpoint_round_trip_and_pickle_refused(fitted: FittedFeatures, tmp_path: Path) -> None:
    before = score_films(fitted.detector, fitted.test_pixels, precision="fp32")
    calibration = fit_calibration(score_films(fitted.detector, fitted.train_pixels, precision="fp32").raw, 0.95)
    path = save_checkpoint(tmp_path / "model.pt", fitted.detector, fitted.config, calibration=calibration)
    loaded = load_checkpoint(path)
    assert loaded.config == fitted.config and loaded.detector.family == "features"
    after = score_films(loaded.detector, fitted.test_pixels, precision="fp32")
    assert np.array_equal(before.raw, after.raw)
    payload = torch.load(path, weights_only=True)
    assert all(isinstance(value, torch.Tensor) for value in payload["state_dict"].values())

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(pickle.dumps({"format": "cxr-anomaly-checkpoint", "x": Payload()}))
    with pytest.raises(CheckpointError, match="refused|not a readable"):
        load_checkpoint(hostile)


def test_a_checkpoint_from_before_fine_tuning_loads_as_frozen(fitted: FittedFeatures, tmp_path: Path) -> None:
    """Fine-tuning became the default after checkpoints without its keys were written: those held
    ImageNet's weights, so they load with ``finetune_epochs = 0``, while a config file without the
    key still gets today's default."""
    path = save_checkpoint(tmp_path / "model.pt", fitted.detector, fitted.config)
    payload = torch.load(path, weights_only=True)
    for key in ("finetune_epochs", "finetune_learning_rate", "finetune_temperature"):
        del payload["config"]["features"][key]
    torch.save(payload, tmp_path / "older.pt")
    older = load_checkpoint(tmp_path / "older.pt")
    assert older.config.features.finetune_epochs == 0 and "fine-tuned" not in older.description
    assert older.config == fitted.config
    assert np.array_equal(
        score_films(older.detector, fitted.test_pixels[:4], precision="fp32").raw,
        score_films(fitted.detector, fitted.test_pixels[:4], precision="fp32").raw,
    )
    assert config_from_dict({"features": payload["config"]["features"]}).features.finetune_epochs == 2


def test_onnx_export_matches_torch_on_real_films(fitted: FittedFeatures, tmp_path: Path) -> None:
    from cxr_anomaly.export import OnnxScorer, export_onnx

    exported = export_onnx(fitted.detector, fitted.config, tmp_path / "model.onnx")
    assert exported.output_names == ("score", "gaussian", "pooled_knn", "patch_knn", "anomaly_map")
    torch_scores = score_films(fitted.detector, fitted.test_pixels, precision="fp32")
    onnx_scores = OnnxScorer(exported.path).score_films(fitted.test_pixels)
    assert np.max(np.abs(onnx_scores.raw - torch_scores.raw)) <= 1e-4
    for name, values in torch_scores.components.items():
        scale = max(1.0, float(np.abs(values).max()))
        assert np.max(np.abs(onnx_scores.components[name] - values)) <= 1e-4 * scale, name


def test_service_of_the_onnx_graph_answers_like_the_library(
    fitted: FittedFeatures, shared_data: Path, tmp_path: Path
) -> None:
    """``serve --model model.onnx`` for the features family: score, decision and a film-sized heatmap."""
    pytest.importorskip("onnxruntime")
    from fastapi.testclient import TestClient

    from cxr_anomaly.export import export_checkpoint
    from cxr_anomaly.io import read_image, resize_grey
    from cxr_anomaly.serve import ServiceSettings, create_app

    calibration = fit_calibration(score_films(fitted.detector, fitted.train_pixels, precision="fp32").raw, 0.95)
    checkpoint = save_checkpoint(tmp_path / "model.pt", fitted.detector, fitted.config, calibration=calibration)
    onnx_path = export_checkpoint(checkpoint, tmp_path / "model.onnx").path
    film = shared_data / "nih_fullres" / "00000427_000.png"
    pixels = resize_grey(read_image(film).array, fitted.config.data.image_size)[None]  # (1, 224, 224)
    expected = score_films(fitted.detector, pixels, precision="fp32")
    with TestClient(create_app(onnx_path, ServiceSettings())) as client:
        body = client.post("/v1/score?heatmap=true", files={"file": ("f.png", film.read_bytes())}).json()
    assert body["score_raw"] == pytest.approx(float(expected.raw[0]), rel=1e-4)
    assert body["decision"] == ("flag" if calibration.flag(expected.raw)[0] else "normal")
    assert set(body["components"]) == {"gaussian", "pooled_knn", "patch_knn"}
    for name, values in expected.components.items():
        assert body["components"][name] == pytest.approx(float(values[0]), rel=1e-4), name
    assert Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"]))).size == (1024, 1024 + legend_height(1024))


def test_bf16_scores_rank_like_fp32(fitted: FittedFeatures) -> None:
    fp32 = score_films(fitted.detector, fitted.test_pixels, precision="fp32").raw
    bf16 = score_films(fitted.detector, fitted.test_pixels, precision="bf16").raw
    correlation = np.corrcoef(np.argsort(np.argsort(fp32)), np.argsort(np.argsort(bf16)))[0, 1]
    assert correlation > 0.9  # bf16 rounding reorders at most near-ties


def test_config_rejects_bad_feature_settings() -> None:
    with pytest.raises(ConfigError, match="features.pooled_strides"):
        with_overrides(Config(), "features", pooled_strides=[4])
    with pytest.raises(ConfigError, match="features.score"):
        with_overrides(Config(), "features", score="median")
    with pytest.raises(ConfigError, match="multiple of 32"):
        with_overrides(Config(), "data", image_size=100)


def test_unfitted_detector_builds_without_pretrained_weights() -> None:
    detector = build_detector(SMALL, pretrained=False)
    assert detector.family == "features" and not detector.is_fitted


def test_cli_fits_on_rsna_and_scores_nih_test_with_a_report(shared_data: Path, tmp_path: Path) -> None:
    from cxr_anomaly.cli import main

    train = pd.read_csv(shared_data / "rsna_normal224" / "manifest.csv").head(200)
    train["path"] = [str(shared_data / "rsna_normal224" / path) for path in train["path"]]
    train_csv = tmp_path / "train.csv"
    train.to_csv(train_csv, index=False)
    config_file = tmp_path / "small.toml"
    config_file.write_text('method = "features"\n[features]\nmemory_bank_size = 512\n')
    assert (
        main(
            [
                "train",
                "--data",
                str(train_csv),
                "--out",
                str(tmp_path / "run"),
                "--config",
                str(config_file),
                "--no-progress",
            ]
        )
        == 0
    )
    model = tmp_path / "run" / "model.pt"
    record = load_checkpoint(model).training
    assert record["family"] == "features" and record["num_train_images"] + record["num_calibration_images"] == 200
    assert len(record["finetune_losses"]) == 2  # the default fine-tunes the backbone for 2 epochs
    nih = pd.read_csv(shared_data / "nih1000" / "manifest.csv")
    test = nih[nih["split"] == "test"].groupby("label").head(10).copy()
    test["path"] = [str(shared_data / "nih1000" / path) for path in test["path"]]
    test_csv = tmp_path / "test.csv"
    test.to_csv(test_csv, index=False)
    assert (
        main(
            [
                "score",
                "--model",
                str(model),
                str(test_csv),
                "--out",
                str(tmp_path / "scores.csv"),
                "--report",
                str(tmp_path / "worklist.html"),
                "--no-progress",
            ]
        )
        == 0
    )
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert len(scores) == 20 and {"gaussian", "pooled_knn", "patch_knn", "percentile", "decision"} <= set(scores)
    page = (tmp_path / "worklist.html").read_text()
    assert page.count('alt="heatmap"') == 20 and 'alt="reconstruction"' not in page and "colour-scale" in page
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(model),
                "--data",
                str(test_csv),
                "--out",
                str(tmp_path / "eval"),
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["method"] == "features" and set(metrics["auc_per_view"]) <= {"PA", "AP"}
    for key in ("auc_view_only", "auc_view_balanced", "auc_score_predicts_ap_in_normals", "adults", "intervals"):
        assert key in metrics
    assert (tmp_path / "eval" / "films.png").stat().st_size > 0
