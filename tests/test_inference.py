"""Tests of cxr_anomaly.inference and of score_films' precision and layout handling."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_anomaly.config import with_overrides
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.errors import ConfigError
from cxr_anomaly.evaluation import safe_auc
from cxr_anomaly.inference import (
    SCORE_PRECISIONS,
    inference_autocast,
    native_bf16,
    resolve_device,
    resolve_precision,
    to_channels_last,
    to_device,
)
from cxr_anomaly.models.tang2019 import Tang2019Detector
from cxr_anomaly.models.tang2019.config import tang2019_config
from cxr_anomaly.models.tang2019.training import build_detector, train_detector
from cxr_anomaly.scoring import score_films


def test_resolve_device_maps_auto_to_what_is_there() -> None:
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device='gpu0' is not a device torch knows"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda:1', but torch sees no CUDA device here"):
            resolve_device("cuda:1")


def test_auto_precision_follows_native_bf16_support() -> None:
    expected = "bf16" if native_bf16("cpu") else "fp32"
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32"


def test_explicit_bf16_is_kept_and_warned_about_where_emulated(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cxr_anomaly.inference"):
        assert resolve_precision("bf16", "cpu") == "bf16"
    assert ("emulated" in caplog.text) == (not native_bf16("cpu"))


def test_unknown_precision_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="fp16"):
        resolve_precision("fp16", "cpu")
    assert "fp16" not in SCORE_PRECISIONS


def test_autocast_only_for_bf16() -> None:
    layer = torch.nn.Linear(4, 4)
    inputs = torch.ones(2, 4)
    with inference_autocast("cpu", "bf16"):
        assert layer(inputs).dtype == torch.bfloat16
    with inference_autocast("cpu", "fp32"):
        assert layer(inputs).dtype == torch.float32


def test_autocast_refuses_an_unresolved_precision() -> None:
    """'auto' must be resolved first: taken as it is, it would silently mean fp32."""
    with pytest.raises(ValueError, match="precision='auto'"):
        inference_autocast("cpu", "auto")


def test_channels_last_keeps_weight_values() -> None:
    detector = build_detector(tang2019_config())
    before = {name: value.clone() for name, value in detector.state_dict().items()}
    to_channels_last(detector)
    weight = detector.unet.encoder.blocks[1][0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()
    for name, value in detector.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_to_device_on_cpu_is_a_plain_copy() -> None:
    batch = torch.arange(6.0).reshape(1, 1, 2, 3)
    moved = to_device(batch, "cpu")
    assert moved.device.type == "cpu" and torch.equal(moved, batch)


def test_fp32_scores_do_not_depend_on_the_layout() -> None:
    """score_films switches the detector to channels_last; fp32 scores stay those of NCHW."""
    config = tang2019_config()
    networks = build_detector(config).eval()
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 64, 64), dtype=np.uint8)
    images = torch.from_numpy(pixels / 127.5 - 1.0).float().unsqueeze(1)  # (N, 1, 64, 64)
    with torch.no_grad():
        reference = networks.score_components(images)  # NCHW weights
    result = score_films(Tang2019Detector(config, networks), pixels, precision="fp32")
    assert networks.unet.encoder.blocks[1][0].weight.is_contiguous(memory_format=torch.channels_last)
    components = result.components
    np.testing.assert_allclose(components["reconstruction"], reference.reconstruction.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(components["adversarial"], reference.adversarial.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(components["latent"], reference.latent.numpy(), rtol=1e-4, atol=1e-9)


def nih_split(nih1000: Path, split: str, label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 films (N, 64, 64) and labels of one NIH1000 split."""
    manifest = load_inputs(nih1000 / "manifest.csv")
    rows = manifest[manifest["split"] == split]
    if label is not None:
        rows = rows[rows["label"] == label]
    loaded = load_images(rows.reset_index(drop=True), tang2019_config().data, workers=1)
    return loaded.pixels, loaded.manifest["label"].to_numpy(dtype=int)


@pytest.mark.slow
def test_bf16_scores_match_fp32_auc_on_real_films(shared_data: Path) -> None:
    """bf16 autocast changes the AUC on the 200 NIH1000 test films by at most 0.005.

    A detector of the paper's layout at a quarter of its width (16 base channels, so that the
    emulated bf16 of an AVX2 CPU stays within CI's time) is trained for two epochs on the 300
    training normals; then the same weights score the test films in fp32 and in bf16.
    """
    nih1000 = shared_data / "nih1000"
    train_pixels, _ = nih_split(nih1000, "train", label=0)
    test_pixels, test_labels = nih_split(nih1000, "test")
    config = with_overrides(tang2019_config(), "model", base_channels=16)
    config = with_overrides(config, "train", epochs=2, seed=0, device="cpu")
    detector = Tang2019Detector(config, train_detector(config, train_pixels).detector)
    fp32 = score_films(detector, test_pixels, precision="fp32")
    bf16 = score_films(detector, test_pixels, precision="bf16")
    assert not np.allclose(fp32.raw, bf16.raw, rtol=0, atol=0)  # bf16 really ran
    np.testing.assert_allclose(bf16.raw, fp32.raw, rtol=0.05)
    auc_fp32 = safe_auc(test_labels, fp32.raw)
    auc_bf16 = safe_auc(test_labels, bf16.raw)
    assert auc_fp32 is not None and auc_bf16 is not None
    assert abs(auc_bf16 - auc_fp32) <= 0.005, (auc_fp32, auc_bf16)


def test_fp32_on_cuda_turns_tf32_convolutions_off_for_the_block_only() -> None:
    before = torch.backends.cudnn.allow_tf32
    with inference_autocast("cuda", "fp32"):  # sets a flag only: runs without a GPU too
        assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 == before
    with inference_autocast("cpu", "fp32"):
        assert torch.backends.cudnn.allow_tf32 == before
