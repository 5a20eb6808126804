"""Mean-shifted contrastive fine-tuning of the features backbone (features.finetune_epochs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_anomaly.checkpoint import load_checkpoint, save_checkpoint
from cxr_anomaly.config import Config, with_overrides
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.errors import ConfigError
from cxr_anomaly.models.features.backbone import build_backbone
from cxr_anomaly.models.features.finetune import augment, mean_shifted_contrastive_loss
from cxr_anomaly.models.registry import fit_detector
from cxr_anomaly.scoring import score_films

FINETUNED = with_overrides(
    Config(),
    "features",
    memory_bank_size=128,
    pooled_bank_size=32,
    batch_size=8,
    finetune_epochs=2,
    finetune_learning_rate=1e-3,
)


def test_loss_is_low_for_agreeing_views_and_high_for_unrelated_ones() -> None:
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(16, 32, generator=generator)
    centre = torch.nn.functional.normalize(torch.randn(32, generator=generator), dim=0) * 0.3
    same = mean_shifted_contrastive_loss(
        embeddings, embeddings + 0.01 * torch.randn(16, 32, generator=generator), centre, 0.25
    )
    unrelated = mean_shifted_contrastive_loss(embeddings, torch.randn(16, 32, generator=generator), centre, 0.25)
    # every film's partner is one of 2N - 1 = 31 candidates: unrelated views sit near log(31) = 3.4;
    # agreeing ones at temperature 0.25 near log(1 + 30 / e^4) = 0.4
    assert float(same) < 1.0 and float(unrelated) > 2.5


def test_augment_is_seeded_bounded_and_changes_the_film() -> None:
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    first = augment(images, torch.Generator().manual_seed(3))
    again = augment(images, torch.Generator().manual_seed(3))
    other = augment(images, torch.Generator().manual_seed(4))
    assert first.shape == images.shape and torch.equal(first, again) and not torch.equal(first, other)
    assert float(first.min()) >= -1 and float(first.max()) <= 1
    assert float((first - images).abs().mean()) > 0.01


def test_config_rejects_bad_finetune_settings() -> None:
    with pytest.raises(ConfigError, match="features.finetune_epochs=-1"):
        with_overrides(Config(), "features", finetune_epochs=-1)
    with pytest.raises(ConfigError, match="features.finetune_learning_rate=0"):
        with_overrides(Config(), "features", finetune_learning_rate=0)
    assert Config().features.finetune_epochs == 2  # the default, chosen on validation films


def test_finetuned_fit_changes_the_backbone_records_losses_and_round_trips(shared_data: Path, tmp_path: Path) -> None:
    train = load_inputs(shared_data / "rsna_normal224" / "manifest.csv").iloc[:24]
    pixels = load_images(train, FINETUNED.data, workers=1).pixels
    result = fit_detector(FINETUNED, pixels, progress=False)
    losses = result.record["finetune_losses"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert 0 < result.record["finetune_seconds"] < result.record["seconds"]
    pretrained, _ = build_backbone("efficientnet_lite0")
    tuned = result.detector.backbone.state_dict()
    changed = [name for name, value in pretrained.state_dict().items() if not torch.equal(value, tuned[name])]
    assert changed  # the weights moved ...
    assert not any(parameter.requires_grad for parameter in result.detector.parameters())  # ... and are frozen again
    scores = score_films(result.detector, pixels[:6], precision="fp32").raw
    path = save_checkpoint(tmp_path / "model.pt", result.detector, FINETUNED)
    loaded = load_checkpoint(path)  # the checkpoint carries the fine-tuned weights, not ImageNet's
    assert loaded.config.features.finetune_epochs == 2
    assert loaded.description == "features (efficientnet_lite0 fine-tuned 2 epochs (MSC), pooled_knn)"
    assert np.array_equal(score_films(loaded.detector, pixels[:6], precision="fp32").raw, scores)
