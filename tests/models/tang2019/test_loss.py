"""The weighted training objective of eq. 5 and the discriminator's loss."""

from __future__ import annotations

import pytest
import torch

from cxr_anomaly.models.tang2019 import DiscriminatorLoss, GeneratorLoss, OneClassDetector
from cxr_anomaly.models.tang2019.config import LossConfig, ModelConfig


def batch() -> torch.Tensor:
    return torch.rand((4, 1, 64, 64), generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_total_is_the_weighted_sum_of_the_terms() -> None:
    detector = OneClassDetector(ModelConfig(variant="u+d+e"))
    images = batch()
    loss = GeneratorLoss(LossConfig(weight_reconstruction=20, weight_adversarial=4, weight_latent=8))
    result = loss(images, detector(images), detector.discriminator)
    expected = 20 * result.reconstruction + 4 * result.adversarial + 8 * result.latent + result.feature
    assert result.total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert all(term.item() > 0 for term in (result.reconstruction, result.adversarial, result.latent, result.feature))


def test_reconstruction_term_is_mean_absolute_error() -> None:
    detector = OneClassDetector(ModelConfig(variant="u"))
    images = batch()
    output = detector(images)
    result = GeneratorLoss(LossConfig())(images, output, None)
    assert result.reconstruction.item() == pytest.approx((images - output.reconstruction).abs().mean().item(), rel=1e-5)


@pytest.mark.parametrize(
    ("variant", "adversarial_zero", "latent_zero"), [("u", True, True), ("u+e", True, False), ("u+d", False, True)]
)
def test_terms_of_absent_networks_are_zero(variant: str, adversarial_zero: bool, latent_zero: bool) -> None:
    detector = OneClassDetector(ModelConfig(variant=variant))
    images = batch()
    result = GeneratorLoss(LossConfig())(images, detector(images), detector.discriminator)
    assert (result.adversarial.item() == 0) == adversarial_zero
    assert (result.latent.item() == 0) == latent_zero
    assert (result.feature.item() == 0) == latent_zero


def test_generator_loss_gives_gradients_to_u_and_e() -> None:
    detector = OneClassDetector(ModelConfig(variant="u+d+e"))
    images = batch()
    GeneratorLoss(LossConfig())(images, detector(images), detector.discriminator).total.backward()
    assert detector.unet.encoder.to_code.weight.grad is not None
    assert detector.second_encoder.to_code.weight.grad is not None


def test_discriminator_loss_is_binary_cross_entropy_of_real_and_fake() -> None:
    detector = OneClassDetector(ModelConfig(variant="u+d"))
    images = batch()
    fake = detector(images).reconstruction.detach()
    value = DiscriminatorLoss()(detector.discriminator, images, fake)
    real_logit = detector.discriminator(images).logit
    fake_logit = detector.discriminator(fake).logit
    expected = 0.5 * (
        torch.nn.functional.softplus(-real_logit).mean() + torch.nn.functional.softplus(fake_logit).mean()
    )
    assert value.item() == pytest.approx(expected.item(), rel=1e-4)
