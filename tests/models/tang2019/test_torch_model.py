"""Shapes, variants and score components of the Tang et al. networks."""

from __future__ import annotations

import pytest
import torch

from cxr_anomaly.errors import ConfigError
from cxr_anomaly.models.tang2019 import Discriminator, Encoder, OneClassDetector, UNet
from cxr_anomaly.models.tang2019.config import VARIANTS, ModelConfig
from cxr_anomaly.models.tang2019.torch_model import initialise_weights


def images(count: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand((count, 1, 64, 64), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_encoder_goes_64_32_16_8_4_1_with_latent_100() -> None:
    output = Encoder(100)(images())
    assert output.code.shape == (4, 100, 1, 1)
    assert [tuple(f.shape[1:]) for f in output.features] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]


def test_encoder_layers_are_4x4_with_batchnorm_except_first_and_last() -> None:
    encoder = Encoder(100)
    convolutions = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convolutions) == 5
    assert all(c.kernel_size == (4, 4) for c in convolutions)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.blocks[0].modules())
    assert all(any(isinstance(m, torch.nn.BatchNorm2d) for m in block.modules()) for block in encoder.blocks[1:])


def test_unet_reconstructs_in_range_with_five_transposed_convolutions_and_concat_skips() -> None:
    unet = UNet(100)
    output = unet(images())
    assert output.reconstruction.shape == (4, 1, 64, 64)
    assert output.reconstruction.abs().max() <= 1.0
    transposed = [m for m in unet.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(transposed) == 5
    # Concatenated skips double the input width of the last four transposed convolutions.
    assert [t.in_channels for t in transposed] == [100, 1024, 512, 256, 128]


def test_skips_carry_information() -> None:
    unet = UNet(100).eval()
    first, second = images(2, seed=1), images(2, seed=2)
    encoding = unet.encoder(first)
    other = unet.encoder(second)
    # Same code, different skips: the decoder output must change.
    with torch.no_grad():
        a = unet.decoder(encoding.code, encoding.features)
        b = unet.decoder(encoding.code, other.features)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("sides, widths", [((16, 8, 4), [100, 1024, 512, 256, 64]), ((), [100, 512, 256, 128, 64])])
def test_left_out_skips_narrow_their_convolution_and_cut_the_path(sides: tuple[int, ...], widths: list[int]) -> None:
    unet = UNet(100, skip_sides=sides).eval()
    transposed = [m for m in unet.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [t.in_channels for t in transposed] == widths
    encoding = unet.encoder(images(2, seed=1))
    other = unet.encoder(images(2, seed=2)).features
    # Only the 32 px map differs: without the 32 px skip the output must not change.
    mixed = [other[0], *encoding.features[1:]]
    with torch.no_grad():
        same = unet.decoder(encoding.code, encoding.features)
        swapped = unet.decoder(encoding.code, mixed)
    assert torch.equal(same, swapped)
    assert unet(images(2)).reconstruction.shape == (2, 1, 64, 64)


@pytest.mark.parametrize("sides", [(64,), (32, 32), (7,)])
def test_skip_connections_outside_the_four_sides_are_refused(sides: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match="skip_connections"):
        ModelConfig(skip_connections=sides)


def test_skip_connections_from_a_list_build_the_networks() -> None:
    config = ModelConfig(variant="u", skip_connections=[8, 4], latent_dim=4, base_channels=8)  # type: ignore[arg-type]
    assert config.skip_connections == (8, 4)
    detector = OneClassDetector(config)
    assert detector.unet.decoder.skip_sides == (8, 4)
    assert detector(images(2)).latent.shape == (2, 4, 1, 1)


def test_discriminator_gives_one_logit_per_image() -> None:
    output = Discriminator()(images(3))
    assert output.logit.shape == (3,)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_build_only_their_networks(variant: str) -> None:
    detector = OneClassDetector(ModelConfig(variant=variant))
    assert (detector.discriminator is not None) == ("d" in variant.split("+"))
    assert (detector.second_encoder is not None) == ("e" in variant.split("+"))
    components = detector.eval().score_components(images())
    assert components.reconstruction.shape == (4,)
    assert (components.adversarial is None) == (detector.discriminator is None)
    assert (components.latent is None) == (detector.second_encoder is None)
    if components.adversarial is not None:
        assert ((components.adversarial >= 0) & (components.adversarial <= 1)).all()
    if components.latent is not None:
        assert (components.latent >= 0).all()


def test_u_variant_has_no_discriminator_parameters_in_state_dict() -> None:
    state = OneClassDetector(ModelConfig(variant="u")).state_dict()
    assert not any(key.startswith(("discriminator.", "second_encoder.")) for key in state)


@pytest.mark.parametrize(("scheme", "expected_std"), [("dcgan", 0.02), ("standard_normal", 1.0)])
def test_initialisation_scheme_sets_weight_scale(scheme: str, expected_std: float) -> None:
    encoder = Encoder(100)
    initialise_weights(encoder, scheme, torch.Generator().manual_seed(0))
    weight = encoder.blocks[2][0].weight
    assert weight.std().item() == pytest.approx(expected_std, rel=0.05)


def test_initialisation_is_seeded() -> None:
    first, second = Encoder(100), Encoder(100)
    initialise_weights(first, "dcgan", torch.Generator().manual_seed(3))
    initialise_weights(second, "dcgan", torch.Generator().manual_seed(3))
    assert torch.equal(first.to_code.weight, second.to_code.weight)


def test_unknown_initialisation_is_refused() -> None:
    with pytest.raises(ValueError, match="xavier"):
        initialise_weights(Encoder(100), "xavier", torch.Generator())
