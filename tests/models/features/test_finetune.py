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
from cxr_anomaly.models.features.finetune import augment, augment_maps, mean_shifted_contrastive_loss
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
    finetune_trunk_stride=0,  # the whole backbone; the default's cached trunk is tested below
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
    # the default, chosen on validation films: 2 epochs of the stages after stride 16, on 1,000 normals
    defaults = Config().features
    assert (defaults.finetune_epochs, defaults.finetune_trunk_stride, defaults.finetune_films) == (2, 16, 1000)


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


def test_trunk_and_head_together_are_the_whole_backbone() -> None:
    backbone, _ = build_backbone("efficientnet_lite0")
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    whole = backbone(images)
    trunk = backbone.forward_trunk(images, 16)
    assert set(trunk) == {8, 16}
    head = backbone.forward_head(trunk, 16)
    assert set(head) == {32} and torch.equal(head[32], whole[32]) and torch.equal(trunk[16], whole[16])
    tuned = {id(parameter) for parameter in backbone.head_parameters(16)}
    stem_and_trunk = [p for name, p in backbone.named_parameters() if name.startswith(("_conv_stem", "_blocks.0."))]
    assert tuned and not tuned & {id(parameter) for parameter in stem_and_trunk}


def test_augment_maps_is_seeded_and_changes_the_maps() -> None:
    maps = torch.randn(3, 16, 14, 14)
    first = augment_maps(maps, torch.Generator().manual_seed(1), 0.1)
    assert torch.equal(first, augment_maps(maps, torch.Generator().manual_seed(1), 0.1))
    assert first.shape == maps.shape and float((first - maps).abs().mean()) > 0.01


def test_config_refuses_a_cached_trunk_for_a_timm_backbone() -> None:
    with pytest.raises(ConfigError, match="finetune_trunk_stride=16 needs an EfficientNet-Lite"):
        with_overrides(Config(), "features", backbone="timm:resnet18", finetune_trunk_stride=16)
    with pytest.raises(ConfigError, match="features.finetune_films=-1"):
        with_overrides(Config(), "features", finetune_films=-1)
    with pytest.raises(ConfigError, match="finetune_trunk_stride=4"):
        with_overrides(Config(), "features", finetune_trunk_stride=4)


def test_cached_trunk_fine_tuning_moves_only_the_later_stages_and_fits_what_it_scores(shared_data: Path) -> None:
    config = with_overrides(FINETUNED, "features", finetune_trunk_stride=16, finetune_films=16)
    train = load_inputs(shared_data / "rsna_normal224" / "manifest.csv").iloc[:24]
    pixels = load_images(train, config.data, workers=1).pixels
    result = fit_detector(config, pixels, progress=False)
    assert len(result.record["finetune_losses"]) == 2
    pretrained, _ = build_backbone("efficientnet_lite0")
    tuned = result.detector.backbone.state_dict()
    changed = {name for name, value in pretrained.state_dict().items() if not torch.equal(value, tuned[name])}
    head = {f"_blocks.{index}." for index in range(result.detector.backbone.stage_ends[4] + 1, 16)}
    assert changed and all(name.startswith(tuple(head)) for name in changed)
    # the banks were fitted on the features the tuned backbone gives the films themselves
    detector = result.detector
    with torch.inference_mode():
        pooled, _ = detector.embed(detector.model_input(pixels, "cpu"))
    unit = pooled / pooled.norm(dim=1, keepdim=True)  # 24 films, fewer than the bank's 32: all kept, in order
    assert torch.allclose(detector.pooled_bank, unit, atol=1e-5)
    assert torch.allclose(detector.gaussian_mean, pooled.mean(dim=0), atol=1e-4)
