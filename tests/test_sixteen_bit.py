"""Films of more than 256 grey levels are equalised at their own depth; 8-bit films are untouched.

A real 10- to 16-bit film keeps 16-bit codes from decoding through the cache to histogram
equalisation (:func:`cxr_anomaly.io.reduce_film`, :mod:`cxr_anomaly.data.wide`), in the NumPy path
and the tensor path alike. Every 8-bit film, and every 8-bit film in a 12- or 16-bit DICOM, must
still give the model inputs it gave before (the reported AUCs rest on them): they are pinned here
by digests of what commit ec208af (before this change) produced.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxr_anomaly.config import Config, DataConfig, with_overrides
from cxr_anomaly.data.dataset import apply_intensity, load_images, preprocess_films
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.image_base import (
    EIGHT_TO_SIXTEEN,
    canonical_film,
    eight_bit_rows,
    stack_films,
    stretch_to_own_range,
)
from cxr_anomaly.io import read_image, reduce_film, resize_grey

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ is not a package
from test_bit_depth import ENCODINGS, _dicom, twelve_bit_film  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FEATURES_DATA = with_overrides(Config(), "features").data  # 224 px, equalize, border crop 0.2, detail 64
PINNED_ENCODINGS = ("png", "dicom_12bit_x16", "dicom_16bit_x257", "dicom_16bit_full_range", "dicom_12bit_monochrome1")


def eight_bit_model_inputs(shared_data: Path, folder: Path) -> dict[str, str]:
    """Digests of the codes and the model inputs of real 8-bit films, per data config and encoding.

    Uses only what commit ec208af already had, so that the same function, run against that commit,
    gave :data:`MAIN_DIGESTS`.
    """
    fullres = load_inputs(shared_data / "nih_fullres" / "manifest.csv")["path"].iloc[:3]
    paths: dict[str, list[str]] = {name: [] for name in PINNED_ENCODINGS}
    for index, source in enumerate(fullres):
        film = np.asarray(Image.open(source).convert("L"))
        Image.fromarray(film).save(folder / f"film{index}.png")
        paths["png"].append(str(folder / f"film{index}.png"))
        for name in PINNED_ENCODINGS[1:]:
            paths[name].append(str(ENCODINGS[name](film, folder / f"film{index}_{name}.dcm")))
    collections = [
        load_inputs(shared_data / "nih_pneumonia256" / "manifest.csv")["path"].iloc[:4].tolist(),
        load_inputs(shared_data / "rsna_normal224" / "manifest.csv")["path"].iloc[:4].tolist(),
    ]
    paths["collections"] = [path for collection in collections for path in collection]
    digests = {}
    for config_name, data_config in (("64px_none", DataConfig(image_size=64)), ("features", FEATURES_DATA)):
        for name, files in paths.items():
            pixels = load_images(pd.DataFrame({"path": files}), data_config, workers=1).pixels
            inputs = preprocess_films(pixels, data_config)
            digest = hashlib.sha256(str(pixels.dtype).encode() + pixels.tobytes() + inputs.tobytes())
            digests[f"{config_name}:{name}"] = digest.hexdigest()[:16]
    return digests


# eight_bit_model_inputs run against commit ec208af's package (before films kept 16 bits), NumPy 2.4.6,
# Pillow 13.0.0: another Pillow may resize differently, and then these fail until they are remade there
MAIN_DIGESTS = {
    "64px_none:png": "aeca504e04d0bb24",
    "64px_none:dicom_12bit_x16": "aeca504e04d0bb24",
    "64px_none:dicom_16bit_x257": "aeca504e04d0bb24",
    "64px_none:dicom_16bit_full_range": "aeca504e04d0bb24",
    "64px_none:dicom_12bit_monochrome1": "a921a93559880608",
    "64px_none:collections": "9aa530413b7f0fef",
    "features:png": "2a31570ba8aaac61",
    "features:dicom_12bit_x16": "2a31570ba8aaac61",
    "features:dicom_16bit_x257": "2a31570ba8aaac61",
    "features:dicom_16bit_full_range": "2a31570ba8aaac61",
    "features:dicom_12bit_monochrome1": "fa9208fccf9bde08",
    "features:collections": "be5e486f1adc4d09",
}


def test_eight_bit_films_give_the_model_inputs_of_before(shared_data: Path, tmp_path: Path) -> None:
    assert eight_bit_model_inputs(shared_data, tmp_path) == MAIN_DIGESTS


def _equalised_at_twelve_bits(stored: np.ndarray) -> np.ndarray:
    """Histogram equalisation of 12-bit values, computed here on their own 4096-bin histogram."""
    histogram = np.bincount(stored.reshape(-1), minlength=4096)
    cdf = np.cumsum(histogram).astype(np.float32)
    lowest = cdf[stored.min()]
    return np.clip((cdf - lowest) / (cdf[-1] - lowest), 0.0, 1.0)[stored]


@pytest.fixture(scope="module")
def twelve_bit_films(shared_data: Path) -> np.ndarray:
    """Four 224² 12-bit films (uint16, about 2,000 grey levels) made from real NIH films."""
    sources = load_inputs(shared_data / "nih_pneumonia256" / "manifest.csv")["path"].iloc[:4]
    return np.stack([twelve_bit_film(np.asarray(Image.open(path).convert("L")))[16:240, 16:240] for path in sources])


def test_a_twelve_bit_film_is_equalised_at_its_own_depth(twelve_bit_films: np.ndarray, tmp_path: Path) -> None:
    """Equalised on its 16-bit codes, a 12-bit film gives the equalisation of its 12-bit values; reduced
    to 8 bits first (as before), merged grey levels move it."""
    config = DataConfig(image_size=224, intensity="equalize")  # no crop, no detail limit: equalisation alone
    paths = [
        str(_dicom(film, tmp_path / f"film{index}.dcm", bits_stored=12)) for index, film in enumerate(twelve_bit_films)
    ]
    pixels = load_images(pd.DataFrame({"path": paths}), config, workers=1).pixels
    assert pixels.dtype == np.uint16 and not eight_bit_rows(pixels).any()
    inputs = preprocess_films(pixels, config)
    for path, stored, got in zip(paths, twelve_bit_films, inputs):
        assert np.unique(stored).size > 1000
        expected = _equalised_at_twelve_bits(stored)
        assert np.array_equal(got, expected)
        # before: the same film reduced to 8-bit codes, then equalised on 256 bins
        reduced_first = apply_intensity(
            resize_grey(stretch_to_own_range(read_image(path).array).array, 224)[None], "equalize"
        )[0]
        assert np.abs(reduced_first - expected).max() > 2e-3


def test_a_twelve_bit_film_keeps_its_levels_through_resizing(twelve_bit_films: np.ndarray, tmp_path: Path) -> None:
    """Shrunk to the cache size, a 12-bit film keeps 16-bit codes: the 8-bit codes it got before,
    to within their rounding, with many more grey levels between them."""
    film = np.kron(twelve_bit_films[0], np.ones((4, 4), np.uint16))  # 896²
    image = read_image(_dicom(film, tmp_path / "big.dcm", bits_stored=12))
    codes = reduce_film(image, 224)
    eight_bit = resize_grey(stretch_to_own_range(image.array).array, 224)  # the reduction before this change
    assert codes.dtype == np.uint16 and np.unique(codes).size > 8 * np.unique(eight_bit).size
    assert np.abs(codes / EIGHT_TO_SIXTEEN - eight_bit).max() <= 0.5 + 1 / EIGHT_TO_SIXTEEN


@pytest.mark.parametrize("device", DEVICES)
def test_tensor_path_gives_the_numpy_path_for_sixteen_bit_films(twelve_bit_films: np.ndarray, device: str) -> None:
    from cxr_anomaly.data.resample import preprocess_on, preprocess_wide_tensor

    wide = twelve_bit_films * np.uint16(16) + np.uint16(3)  # 16-bit codes, not multiples of 257
    eight = np.asarray(Image.fromarray(np.uint8(twelve_bit_films[1] // 16)))  # an 8-bit film beside them
    pixels = stack_films([wide[0], eight, wide[1], wide[2]])
    for settings in ({}, {"border_crop": 0.1, "detail_size": 112, "intensity": "none"}, {"detail_size": 0}):
        config = replace(FEATURES_DATA, **settings)
        expected = preprocess_films(pixels, config)
        got = preprocess_wide_tensor(torch.from_numpy(wide[:3].astype(np.int32)).to(device), config)
        assert np.array_equal(got.cpu().numpy(), expected[[0, 2, 3]])
        assert np.array_equal(preprocess_on(pixels, config, device).cpu().numpy(), expected)
        assert np.array_equal(expected[1], preprocess_films(eight[None], config)[0])  # the 8-bit path
    per_image = replace(FEATURES_DATA, intensity="per_image")
    got = preprocess_on(pixels, per_image, device).cpu().numpy()
    assert np.allclose(got, preprocess_films(pixels, per_image), atol=1e-5)


def test_eight_bit_films_held_at_sixteen_bits_take_the_eight_bit_path(shared_data: Path) -> None:
    """An 8-bit film stacked beside a 16-bit one (as 257 v) gives its own model input, in every mode,
    and through the baselines' intensity step alone."""
    rows = load_inputs(shared_data / "rsna_normal224" / "manifest.csv").head(6)
    eight = load_images(rows, FEATURES_DATA, workers=1).pixels
    assert eight.dtype == np.uint8
    wide = (eight[0].astype(np.uint16) * 200 + 7)[None]
    mixed = stack_films([*eight, wide[0]])
    assert mixed.dtype == np.uint16 and eight_bit_rows(mixed).tolist() == [True] * 6 + [False]
    assert np.array_equal(mixed[:6], eight.astype(np.uint16) * EIGHT_TO_SIXTEEN)
    for intensity in ("none", "per_image", "equalize"):
        config = replace(FEATURES_DATA, intensity=intensity)
        assert np.array_equal(preprocess_films(mixed, config, threads=2)[:6], preprocess_films(eight, config))
        assert np.array_equal(apply_intensity(mixed[:6], intensity), apply_intensity(eight, intensity))
    assert [canonical_film(film).dtype for film in mixed] == [np.uint8] * 6 + [np.uint16]
    with pytest.raises(TypeError, match="float32"):
        stack_films([eight[0].astype(np.float32)])


def test_features_model_input_of_a_mixed_batch_is_each_films_own(twelve_bit_films: np.ndarray) -> None:
    """Scoring a batch cannot change a film's input: the service and the listener stack films of both kinds."""
    from cxr_anomaly.models.features.torch_model import FeatureDetector

    detector = FeatureDetector(Config(), pretrained=False)
    eight = np.uint8(twelve_bit_films[0] // 16)
    wide = twelve_bit_films[1] * np.uint16(16)
    together = detector.model_input(stack_films([eight, wide]))
    assert torch.equal(together[0], detector.model_input(eight[None])[0])
    assert torch.equal(together[1], detector.model_input(wide[None])[0])


def test_a_narrow_sixteen_bit_png_is_decoded_in_finite_time(tmp_path: Path) -> None:
    """A film whose darkest level lies far below the next one once sent the level-grid fit into an endless loop."""
    generator = np.random.default_rng(2)
    film = np.rint(generator.normal(20000, 3000, (64, 64))).clip(1000, 60000).astype(np.uint16)
    film[0, 0] = 0  # one stray dark pixel, thousands of levels below the rest
    Image.fromarray(film).save(tmp_path / "film.png")
    codes = reduce_film(read_image(tmp_path / "film.png"), 32)
    assert codes.dtype == np.uint16 and np.unique(codes).size > 256


def test_displays_and_the_scope_rule_read_sixteen_bit_codes(twelve_bit_films: np.ndarray) -> None:
    from cxr_anomaly.explain import to_uint8_grey
    from cxr_anomaly.scope import rotation_evidence

    wide = stretch_to_own_range(twelve_bit_films[0].astype(np.float32)).array
    codes = resize_grey(wide, 224, bits=16)
    assert np.abs(to_uint8_grey(codes).astype(int) - resize_grey(wide, 224).astype(int)).max() <= 1
    assert rotation_evidence(codes) == pytest.approx(rotation_evidence(codes.astype(np.float32) / 65535), abs=1e-6)
    assert rotation_evidence(codes) == pytest.approx(rotation_evidence(resize_grey(wide, 224)), abs=0.02)
