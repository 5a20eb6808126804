"""Loading pixels of a manifest: every hostile file errors by name, or is skipped and reported."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_anomaly.config import Config, DataConfig
from cxr_anomaly.data.dataset import PARALLEL_FROM_FILMS, load_images, preprocess_films, to_model_tensor
from cxr_anomaly.errors import (
    DecompressionBombError,
    DicomError,
    InputFileError,
    MissingFileError,
    NoNormalImagesError,
    UnreadableImageError,
)

CONFIG = DataConfig(image_size=32)


@pytest.fixture()
def hostile_manifest(shared_data: Path, tmp_path: Path) -> tuple[pd.DataFrame, dict[str, type]]:
    """20 real films followed by one file of each hostile kind, with the error each must give."""
    films = sorted((shared_data / "nih1000" / "test" / "0_normal").glob("*.png"))[:20]
    full = (shared_data / "nih_fullres" / "00000427_000.png").read_bytes()
    bad: dict[str, type] = {}

    def add(name: str, content: bytes, error: type) -> None:
        path = tmp_path / name
        path.write_bytes(content)
        bad[str(path)] = error

    add("empty.png", b"", UnreadableImageError)
    add("truncated.png", full[:40_000], UnreadableImageError)
    add("corrupt.png", full[:100] + bytes(5000) + full[5100:], UnreadableImageError)
    add("notes.png", b"this is a radiology report, not an image\n", UnreadableImageError)
    add("bad.dcm", b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 10, DicomError)
    bad[str(tmp_path / "absent.png")] = MissingFileError
    paths = [str(path) for path in films] + list(bad)
    manifest = pd.DataFrame(
        {"path": paths, "label": [0] * len(paths), "patient_id": [str(i) for i in range(len(paths))]}
    )
    return manifest, bad


def test_error_mode_stops_at_the_first_bad_file_naming_it(hostile_manifest: tuple[pd.DataFrame, dict]) -> None:
    manifest, bad = hostile_manifest
    with pytest.raises(UnreadableImageError) as caught:
        load_images(manifest, CONFIG, workers=1)
    assert caught.value.path == next(iter(bad))


@pytest.mark.parametrize("workers", [1, 2])
def test_skip_mode_reports_every_bad_file_with_its_reason(
    hostile_manifest: tuple[pd.DataFrame, dict], workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    manifest, bad = hostile_manifest
    caplog.set_level(logging.WARNING)
    loaded = load_images(manifest, CONFIG, on_bad_file="skip", workers=workers)
    assert loaded.pixels.shape == (20, 32, 32)
    assert loaded.manifest["path"].tolist() == manifest["path"].tolist()[:20]
    assert [item.path for item in loaded.skipped] == list(bad)
    for item in loaded.skipped:
        assert item.reason
        assert any(item.path in record.getMessage() for record in caplog.records)


def test_each_hostile_file_gets_its_own_error_type(hostile_manifest: tuple[pd.DataFrame, dict]) -> None:
    manifest, bad = hostile_manifest
    for path, error_type in bad.items():
        with pytest.raises(error_type) as caught:
            load_images(manifest[manifest["path"] == path], CONFIG)
        assert isinstance(caught.value, InputFileError) and caught.value.path == path


def test_pixel_limit_is_a_decompression_bomb(shared_data: Path) -> None:
    manifest = pd.DataFrame({"path": [str(shared_data / "nih_fullres" / "00000427_000.png")], "label": [0]})
    with pytest.raises(DecompressionBombError):
        load_images(manifest, DataConfig(image_size=32, max_image_pixels=500_000))


def test_cache_gives_the_same_pixels(shared_data: Path, tmp_path: Path) -> None:
    films = sorted((shared_data / "nih1000" / "valid" / "1_abnormal").glob("*.png"))[:20]
    manifest = pd.DataFrame({"path": [str(path) for path in films], "label": [1] * 20})
    plain = load_images(manifest, CONFIG, workers=1)
    cached = load_images(manifest, CONFIG, cache_dir=tmp_path / "cache", workers=2)
    again = load_images(manifest, CONFIG, cache_dir=tmp_path / "cache", workers=2)
    np.testing.assert_array_equal(plain.pixels, cached.pixels)
    np.testing.assert_array_equal(plain.pixels, again.pixels)


def test_model_tensor_shape_and_range(shared_data: Path) -> None:
    films = sorted((shared_data / "nih1000" / "test" / "1_abnormal").glob("*.png"))[:3]
    loaded = load_images(pd.DataFrame({"path": [str(path) for path in films]}), DataConfig())
    tensor = to_model_tensor(loaded.pixels, DataConfig())
    assert tensor.shape == (3, 1, 64, 64) and tensor.dtype == torch.float32
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0 and tensor.std() > 0.1


def test_training_set_without_normal_images_is_refused(shared_data: Path) -> None:
    from cxr_anomaly.data.selection import select_training_rows

    manifest = pd.read_csv(shared_data / "nih1000" / "manifest.csv")
    abnormal_only = manifest[manifest["label"] == 1].assign(path=lambda table: table["path"].astype(str))
    with pytest.raises(NoNormalImagesError, match="nih1000-abnormal"):
        select_training_rows(abnormal_only.reset_index(drop=True), Config(), "nih1000-abnormal")


@pytest.mark.parametrize("threads", [2, 3, 64])
def test_threaded_preprocessing_gives_every_film_the_same_pixels(threads: int) -> None:
    rng = np.random.default_rng(0)
    films = (rng.random((PARALLEL_FROM_FILMS + 5, 96, 96)) * 255).astype(np.uint8)
    config = Config().data  # the features detector's: border crop, detail limit, equalisation
    alone = preprocess_films(films, config)
    threaded = preprocess_films(films, config, threads=threads)
    assert threaded.dtype == np.float32 and np.array_equal(threaded, alone)
    assert np.array_equal(preprocess_films(films[:3], config, threads=threads), alone[:3])  # small: one thread
