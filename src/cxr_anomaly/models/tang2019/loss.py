"""Training objectives of Tang et al. as weighted modules (the anomalib convention).

Generator objective (eq. 5): L = λ1·L_R + λ2·L_A + λ3·L_E + L_F with

- L_R = mean |x - x'| (reconstruction);
- L_A = BCE(D(x'), real) (the generator's adversarial term);
- L_E = mean (UE(x) - E(x'))² (latent consistency);
- L_F = Σ_l mean (F_l(UE(x)) - F_l(E(x')))² over the four encoder feature maps.

The "||·||_2" of the paper is taken as the mean squared difference, as GANomaly's l2 loss is.
Terms whose network the variant lacks are zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from .config import LossConfig
from .torch_model import DetectorOutput, Discriminator


@dataclass
class GeneratorLossOutput:
    """The weighted total and each unweighted term (detached terms for logging)."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    adversarial: torch.Tensor
    latent: torch.Tensor
    feature: torch.Tensor


class GeneratorLoss(nn.Module):
    """λ1·L_R + λ2·L_A + λ3·L_E + L_F for U (and E)."""

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.weight_reconstruction = config.weight_reconstruction  # λ1
        self.weight_adversarial = config.weight_adversarial  # λ2
        self.weight_latent = config.weight_latent  # λ3
        self.weight_feature = config.weight_feature

    def forward(
        self,
        images: torch.Tensor,
        output: DetectorOutput,
        discriminator: Discriminator | None,
    ) -> GeneratorLossOutput:
        """Compute the objective for clean targets ``images`` (N, 1, 64, 64)."""
        zero = images.new_zeros(())
        reconstruction = functional.l1_loss(output.reconstruction.float(), images.float())
        adversarial = zero
        if discriminator is not None:
            logit = discriminator(output.reconstruction).logit.float()
            adversarial = functional.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
        latent = zero
        feature = zero
        if output.second_latent is not None and output.second_features is not None:
            latent = functional.mse_loss(output.second_latent.float(), output.latent.float())
            feature = sum(
                (
                    functional.mse_loss(second.float(), first.float())
                    for first, second in zip(output.encoder_features, output.second_features)
                ),
                zero,
            )
        total = (
            self.weight_reconstruction * reconstruction
            + self.weight_adversarial * adversarial
            + self.weight_latent * latent
            + self.weight_feature * feature
        )
        return GeneratorLossOutput(
            total, reconstruction.detach(), adversarial.detach(), latent.detach(), feature.detach()
        )


def discriminator_loss_from_logits(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    """BCE of D's logits on real films (target 1) and on reconstructions (target 0), each (N,)."""
    real, fake = real_logit.float(), fake_logit.float()
    return 0.5 * (
        functional.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        + functional.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    )


class DiscriminatorLoss(nn.Module):
    """BCE of D on real images (target 1) and on reconstructions (target 0)."""

    def forward(self, discriminator: Discriminator, images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Loss of D; ``reconstruction`` should be detached from U's graph."""
        return discriminator_loss_from_logits(discriminator(images).logit, discriminator(reconstruction).logit)
