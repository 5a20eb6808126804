"""MedMNIST source: the real PneumoniaMNIST npz offline, a ChestMNIST-layout npz, download errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from cxr_anomaly.config import DataConfig
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.medmnist import build_medmnist_manifest, download_medmnist, medmnist_file_name
from cxr_anomaly.errors import ConfigError, ManifestError, MissingFileError


def test_local_pneumoniamnist_offline(shared_data: Path) -> None:
    manifest = build_medmnist_manifest(shared_data / "medmnist" / "pneumoniamnist.npz")
    assert len(manifest) == 5030
    assert manifest.groupby(["split", "label"]).size().to_dict() == {
        ("test", 0): 234,
        ("test", 1): 390,
        ("train", 0): 388,
        ("train", 1): 3494,
        ("val", 0): 135,
        ("val", 1): 389,
    }
    assert set(manifest["medmnist_flag"]) == {"pneumoniamnist"}
    loaded = load_images(manifest.iloc[[0, 1, 4000]], DataConfig(image_size=64))
    assert loaded.pixels.shape == (3, 64, 64) and loaded.pixels.std() > 10


def test_flag_with_local_root(shared_data: Path) -> None:
    manifest = build_medmnist_manifest("pneumoniamnist", root=shared_data / "medmnist")
    assert len(manifest) == 5030


def test_chestmnist_normal_means_no_finding(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros((6, 14), dtype=np.uint8)
    labels[1, 3] = 1  # infiltration
    labels[2, [0, 13]] = 1  # atelectasis and hernia
    path = tmp_path / "chestmnist_64.npz"
    np.savez(
        path,
        train_images=rng.integers(0, 255, (6, 64, 64), dtype=np.uint8),
        train_labels=labels,
        test_images=rng.integers(0, 255, (2, 64, 64), dtype=np.uint8),
        test_labels=labels[:2],
    )
    manifest = build_medmnist_manifest(path)
    assert manifest["label"].tolist() == [0, 1, 1, 0, 0, 0, 0, 1]
    assert manifest["finding_infiltration"].tolist()[:3] == [0, 1, 0]
    assert manifest["finding_hernia"].tolist()[:3] == [0, 0, 1]
    assert set(manifest["medmnist_flag"]) == {"chestmnist"}


def test_wrong_chestmnist_label_shape(tmp_path: Path) -> None:
    path = tmp_path / "chestmnist.npz"
    np.savez(path, train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros((2, 3), np.uint8))
    with pytest.raises(ManifestError, match=r"\(N, 14\)"):
        build_medmnist_manifest(path)


def test_absent_file_offline_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="download") as caught:
        build_medmnist_manifest("chestmnist", root=tmp_path, size=64)
    assert caught.value.path.endswith("chestmnist_64.npz")


def test_download_without_the_package_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "medmnist", None)  # makes `import medmnist` fail
    with pytest.raises(MissingFileError, match=r"cxr-anomaly\[medmnist\]"):
        download_medmnist("pneumoniamnist", root=tmp_path)


def test_file_names_and_bad_flags() -> None:
    assert medmnist_file_name("chestmnist", 28) == "chestmnist.npz"
    assert medmnist_file_name("pneumoniamnist", 224) == "pneumoniamnist_224.npz"
    with pytest.raises(ConfigError):
        medmnist_file_name("pathmnist")
    with pytest.raises(ConfigError):
        medmnist_file_name("chestmnist", 32)
