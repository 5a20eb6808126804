"""The tensor preprocessing gives the Pillow path's pixels bit for bit, on the CPU and on a GPU."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_anomaly.config import Config, DataConfig
from cxr_anomaly.data.dataset import crop_borders, limit_detail, load_images, preprocess_films
from cxr_anomaly.data.manifest import read_manifest_csv
from cxr_anomaly.data.resample import preprocess_on, preprocess_tensor, resampling_matrix, resize

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def real_films(shared_data: Path) -> np.ndarray:
    """24 RSNA normals and 24 NIH films (normal and pneumonia) at 224 px, as the features detector reads them."""
    config = Config().data
    rsna = read_manifest_csv(shared_data / "rsna_normal224" / "manifest.csv").head(24)
    nih = read_manifest_csv(shared_data / "nih_pneumonia256" / "manifest.csv").groupby("label").head(12)
    return np.concatenate([load_images(rsna, config).pixels, load_images(nih, config).pixels])  # (48, 224, 224)


@pytest.mark.parametrize("device", DEVICES)
def test_resizing_matches_pillow_bit_for_bit(real_films: np.ndarray, device: str) -> None:
    films = torch.from_numpy(real_films).double().to(device)
    margin = 45  # the default border crop at 224 px
    cropped = resize(films, 224, "bilinear", margin, 224 - margin).to(torch.uint8).cpu().numpy()
    assert np.array_equal(cropped, crop_borders(real_films, 0.2))
    shrunk = resize(films, 64, "lanczos").to(torch.uint8).cpu().numpy()
    expected = np.stack(
        [np.asarray(Image.fromarray(film).resize((64, 64), Image.Resampling.LANCZOS)) for film in real_films]
    )
    assert np.array_equal(shrunk, expected)
    assert np.array_equal(resize(films, 224, "bilinear").cpu(), films.cpu())  # the identity stays one


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "settings",
    [
        {},  # the features detector's default: border crop 0.2, detail 64 px, equalisation
        {"border_crop": 0.1, "detail_size": 112, "intensity": "none"},
        {"border_crop": 0.0, "detail_size": 0, "intensity": "equalize"},
    ],
)
def test_tensor_preprocessing_gives_the_pillow_pixels(
    real_films: np.ndarray, device: str, settings: dict[str, object]
) -> None:
    config = replace(Config().data, **settings)
    expected = preprocess_films(real_films, config)
    got = preprocess_tensor(torch.from_numpy(real_films).to(device), config)
    assert got.device.type == device and got.dtype == torch.float32
    assert np.array_equal(got.cpu().numpy(), expected)
    assert np.array_equal(limit_detail(real_films, 0), real_films)


@pytest.mark.parametrize("device", DEVICES)
def test_per_image_standardisation_agrees_to_float_rounding(real_films: np.ndarray, device: str) -> None:
    config = DataConfig(image_size=224, intensity="per_image")
    got = preprocess_on(real_films, config, device).cpu().numpy()
    assert np.allclose(got, preprocess_films(real_films, config), atol=1e-5)


def test_matrices_are_pillow_fixed_point_rows_that_sum_to_one() -> None:
    for resample, size in (("bilinear", 224), ("lanczos", 64)):
        matrix = resampling_matrix(224, size, resample)
        assert matrix.shape == (size, 224) and np.array_equal(matrix, np.round(matrix))
        assert np.all(np.abs(matrix.sum(axis=1) - 2**22) <= matrix.shape[1])  # rounding per weight
    with pytest.raises(ValueError, match="'bicubic'"):
        resampling_matrix(224, 64, "bicubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="span 100:50"):
        resampling_matrix(224, 64, "bilinear", 100, 50)


def test_features_model_input_is_the_same_on_every_device(real_films: np.ndarray) -> None:
    from cxr_anomaly.models.features.torch_model import FeatureDetector

    detector = FeatureDetector(Config(), pretrained=False)
    on_cpu = detector.model_input(real_films[:16])  # Pillow's path
    for device in DEVICES:
        assert torch.equal(detector.model_input(real_films[:16], device).cpu(), on_cpu)
    assert torch.equal(
        preprocess_tensor(torch.from_numpy(real_films[:16]), Config().data) * 2.0 - 1.0, on_cpu[:, 0]
    )  # the tensor path on a CPU too


@pytest.mark.parametrize(
    ("size", "out_size", "resample", "margin"),
    [
        (100, 37, "lanczos", 0),
        (37, 100, "bilinear", 0),
        (97, 97, "bilinear", 11),
        (256, 224, "lanczos", 3),
    ],
)
def test_other_sizes_and_boxes_match_pillow(size: int, out_size: int, resample: str, margin: int) -> None:
    films = np.random.default_rng(size).integers(0, 256, (4, size, size), dtype=np.uint8)
    filters = {"bilinear": Image.Resampling.BILINEAR, "lanczos": Image.Resampling.LANCZOS}
    box = (margin, margin, size - margin, size - margin)
    expected = np.stack(
        [np.asarray(Image.fromarray(film).resize((out_size, out_size), filters[resample], box=box)) for film in films]
    )
    got = resize(torch.from_numpy(films).double(), out_size, resample, margin, size - margin)  # type: ignore[arg-type]
    assert np.array_equal(got.to(torch.uint8).numpy(), expected)


def test_an_empty_batch_and_a_flat_film_come_out_as_on_the_pillow_path() -> None:
    config = Config().data
    empty = np.zeros((0, 224, 224), np.uint8)
    assert preprocess_tensor(torch.from_numpy(empty), config).shape == preprocess_films(empty, config).shape
    flat = np.full((2, 224, 224), 7, np.uint8)  # one grey level: equalisation has nothing to spread
    assert np.array_equal(preprocess_tensor(torch.from_numpy(flat), config).numpy(), preprocess_films(flat, config))
