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
from cxr_anomaly.config import Config, tang2019_config, with_overrides
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.models.base import AnomalyOutput
from cxr_anomaly.models.registry import build_detector, fit_detector
from cxr_anomaly.scoring import score_films


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("make_config", [Config, tang2019_config], ids=["features", "tang2019"])
def test_score_films_scores_in_bf16_exactly_where_it_is_native(monkeypatch: pytest.MonkeyPatch, native: bool,
                                                               make_config: type) -> None:
    """The default precision of score_films is 'auto': bf16 autocast where the CPU has bf16, fp32 elsewhere."""
    config = make_config()
    detector = build_detector(config, pretrained=False)
    seen: list[tuple[bool, torch.dtype]] = []

    def forward(images: torch.Tensor) -> AnomalyOutput:  # records the autocast state, computes nothing
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        count = len(images)
        return AnomalyOutput(torch.zeros(count), {name: torch.zeros(count) for name in detector.component_names},
                             torch.zeros(count, 1, 2, 2))

    detector.forward = forward  # type: ignore[method-assign]
    monkeypatch.setattr(inference, "native_bf16", lambda device: native)
    size = config.data.image_size
    score_films(detector, np.zeros((3, size, size), np.uint8))
    if native:
        assert seen == [(True, torch.bfloat16)]
    else:
        assert [enabled for enabled, _ in seen] == [False]


@pytest.mark.slow
def test_bf16_changes_the_features_auc_little(shared_data: Path) -> None:
    """Fitted in fp32 on rsna_normal224, NIH1000 test films ranked in bf16 and fp32 agree.

    On a CPU without native bf16 the bf16 pass is emulated (seconds per film), so 8 + 8 films are
    scored there and 50 + 50 where bf16 is native.
    """
    config = with_overrides(Config(), "features", memory_bank_size=256, pooled_bank_size=64, batch_size=16,
                            finetune_epochs=0)  # the scoring precision is under test, not the fit
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
            (name, fp32.components[name], bf16.components[name]) for name in fp32.components]:
        assert np.all(np.isfinite(half)), name
        change = abs(roc_auc_score(labels, half) - roc_auc_score(labels, full))
        assert change <= 2.0 / pairs + 0.03, (name, change)  # a few near-tied pairs may swap
        assert spearmanr(full, half)[0] >= 0.9, name
        assert np.median(np.abs(half - full) / np.abs(full).clip(1e-6)) < 0.05, name
