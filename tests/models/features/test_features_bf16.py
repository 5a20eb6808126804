"""Score precision: ``auto`` (bf16 where native) is what score_films uses for both families, and bf16
changes the features detector's ranking of real films little."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from cxr_anomaly import inference
from cxr_anomaly.config import Config, with_overrides
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.models.base import AnomalyOutput
from cxr_anomaly.models.registry import build_detector, fit_detector
from cxr_anomaly.models.tang2019.config import tang2019_config
from cxr_anomaly.scoring import score_films


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("make_config", [Config, tang2019_config], ids=["features", "tang2019"])
def test_score_films_scores_in_bf16_exactly_where_it_is_native(
    monkeypatch: pytest.MonkeyPatch, native: bool, make_config: type
) -> None:
    """The default precision of score_films is 'auto': bf16 autocast where the CPU has bf16, fp32 elsewhere."""
    config = make_config()
    detector = build_detector(config, pretrained=False)
    seen: list[tuple[bool, torch.dtype]] = []

    def forward(images: torch.Tensor) -> AnomalyOutput:  # records the autocast state, computes nothing
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        count = len(images)
        return AnomalyOutput(
            torch.zeros(count),
            {name: torch.zeros(count) for name in detector.component_names},
            torch.zeros(count, 1, 2, 2),
        )

    detector.forward = forward  # type: ignore[method-assign]
    monkeypatch.setattr(inference, "native_bf16", lambda device: native)
    size = config.data.image_size
    score_films(detector, np.zeros((3, size, size), np.uint8))
    if native:
        assert seen == [(True, torch.bfloat16)]
    else:
        assert [enabled for enabled, _ in seen] == [False]


def test_pooled_scores_are_fp32_under_bf16_autocast() -> None:
    """Under bf16 autocast the Gaussian and pooled kNN read the pooled features in fp32.

    In bf16 a cosine similarity near 1 moves in steps of 2^-8; computed so, the default score took
    43 distinct values over 200 NIH films, and a worklist tied whole groups of them.
    """
    generator = torch.Generator().manual_seed(0)
    detector = build_detector(Config(), pretrained=False).eval()
    images = torch.rand(6, 3, 64, 64, generator=generator) * 2.0 - 1.0  # (N, 3, S, S) model inputs
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = detector.pooled_features(images).float()  # (N, D)
    dim = pooled.shape[1]
    # normals near the films' own direction, so that similarities sit near 1 as in real use
    bank = pooled.mean(dim=0) + 0.02 * pooled.norm(dim=1).mean() * torch.randn(500, dim, generator=generator)
    detector.pooled_bank = bank / bank.norm(dim=1, keepdim=True)
    detector.gaussian_mean = pooled.mean(dim=0)
    detector.gaussian_precision = torch.eye(dim) / pooled.var(dim=0).mean()
    detector.patch_bank = torch.randn(50, detector.patch_bank.shape[1], generator=generator)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = detector(images)
    exact = pooled.double()
    unit = exact / exact.norm(dim=1, keepdim=True)
    similarity = unit @ detector.pooled_bank.double().T  # (N, K)
    neighbours = detector.config.features.neighbours
    expected_knn = 1.0 - similarity.topk(neighbours, dim=1).values.mean(dim=1)
    centred = exact - detector.gaussian_mean.double()
    expected_gaussian = ((centred @ detector.gaussian_precision.double()) * centred).sum(dim=1).sqrt()
    assert output.components["pooled_knn"].dtype == torch.float32
    torch.testing.assert_close(output.components["pooled_knn"].double(), expected_knn, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(output.components["gaussian"].double(), expected_gaussian, rtol=1e-4, atol=1e-6)


def test_tang2019_components_do_not_collapse_into_ties_in_bf16() -> None:
    """The paper's components are taken from its networks' outputs in fp32 under bf16 autocast.

    Computed in bf16, the adversarial term took 2 distinct values over these 64 films; each
    component of distinct films should be distinct.
    """
    config = tang2019_config()
    with torch.random.fork_rng():  # seeds the untrained networks' weights, leaves the global RNG as it was
        torch.manual_seed(0)
        detector = build_detector(config, pretrained=False)
    size = config.data.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (64, size, size), dtype=np.uint8)
    scores = score_films(detector, pixels, precision="bf16")
    for name, values in scores.components.items():
        values = values[np.isfinite(values)]
        if len(values):
            assert len(np.unique(values)) >= 0.9 * len(pixels), name


@pytest.mark.slow
def test_bf16_changes_the_features_auc_little(shared_data: Path) -> None:
    """Fitted in fp32 on rsna_normal224, NIH1000 test films ranked in bf16 and fp32 agree.

    On a CPU without native bf16 the bf16 pass is emulated (seconds per film), so 8 + 8 films are
    scored there and 50 + 50 where bf16 is native.
    """
    config = with_overrides(
        Config(), "features", memory_bank_size=256, pooled_bank_size=64, batch_size=16, finetune_epochs=0
    )  # the scoring precision is under test, not the fit
    per_class = 50 if inference.native_bf16("cpu") else 8
    train = load_inputs(shared_data / "rsna_normal224" / "manifest.csv").iloc[:64]
    nih = load_inputs(shared_data / "nih1000" / "manifest.csv")
    test = pd.concat([nih[(nih["split"] == "test") & (nih["label"] == label)].head(per_class) for label in (0, 1)])
    labels = test["label"].to_numpy().astype(int)
    detector = fit_detector(config, load_images(train, config.data, workers=1).pixels, progress=False).detector
    pixels = load_images(test, config.data, workers=1).pixels
    fp32 = score_films(detector, pixels, precision="fp32")
    bf16 = score_films(detector, pixels, precision="bf16")
    pairs = per_class * per_class
    for name, full, half in [("raw", fp32.raw, bf16.raw)] + [
        (name, fp32.components[name], bf16.components[name]) for name in fp32.components
    ]:
        assert np.all(np.isfinite(half)), name
        assert len(np.unique(half)) >= 0.95 * len(half), name  # no collapse into ties
        change = abs(roc_auc_score(labels, half) - roc_auc_score(labels, full))
        assert change <= 2.0 / pairs + 0.03, (name, change)  # a few near-tied pairs may swap
        assert spearmanr(full, half)[0] >= 0.9, name
        assert np.median(np.abs(half - full) / np.abs(full).clip(1e-6)) < 0.05, name
