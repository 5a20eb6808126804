"""MedMNIST chest sets: PneumoniaMNIST and ChestMNIST as npz archives.

Source: MedMNIST v2/v3 (https://medmnist.com, files on Zenodo, record 10519652). Each set is
one npz with ``{train,val,test}_images`` (N, S, S) uint8 and ``{train,val,test}_labels``;
sizes S = 28 (``pneumoniamnist.npz``) and, in MedMNIST+, 64/128/224
(``pneumoniamnist_64.npz``...).

- PneumoniaMNIST: the Kermany pediatric films (5,856: train 4,708, val 524, test 624);
  label 0 normal, 1 pneumonia. No patient ids.
- ChestMNIST: NIH ChestX-ray14 (112,120: train 78,468, val 11,219, test 22,433), 14 binary
  finding labels per film; the official NIH patient-disjoint train/test split, with val carved
  from train by patient. label 0 = no finding (all 14 zero), 1 = any finding. ChestMNIST-64 is
  NIH at the paper's resolution. Finding columns ``finding_<name>`` are added. No patient ids
  in the npz (the split is already patient-disjoint).

Manifest rows name images as ``FILE.npz#SPLIT/INDEX`` (see :mod:`cxr_anomaly.data.manifest`);
``medmnist_flag`` records the set.

:func:`build_medmnist_manifest` takes a local npz (works offline) or a flag such as
``"chestmnist"``; with a flag it looks for the file under ``root`` and, with ``download=True``,
fetches it through the ``medmnist`` package (``pip install 'cxr-anomaly[medmnist]'``), which
downloads the official Zenodo files and checks their MD5.

Citation: Yang J, Shi R, Wei D, et al. MedMNIST v2 - A large-scale lightweight benchmark for
2D and 3D biomedical image classification. Scientific Data 2023;10:41. Cite also the source
sets: Kermany et al., Cell 2018 (PneumoniaMNIST); Wang et al., CVPR 2017 (ChestMNIST).

Licence: PneumoniaMNIST CC BY 4.0; ChestMNIST CC BY 4.0 (MedMNIST's terms), with the NIH
terms of ChestX-ray14 (public, cite Wang et al.).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, ManifestError, MissingFileError
from .manifest import normalise_manifest, read_npz_manifest

logger = logging.getLogger(__name__)

MEDMNIST_FLAGS: tuple[str, ...] = ("pneumoniamnist", "chestmnist")
MEDMNIST_SIZES: tuple[int, ...] = (28, 64, 128, 224)
CHESTMNIST_FINDINGS: tuple[str, ...] = (
    "atelectasis",
    "cardiomegaly",
    "effusion",
    "infiltration",
    "mass",
    "nodule",
    "pneumonia",
    "pneumothorax",
    "consolidation",
    "edema",
    "emphysema",
    "fibrosis",
    "pleural",
    "hernia",
)
ZENODO_RECORD = "https://zenodo.org/records/10519652"


def medmnist_file_name(flag: str, size: int = 28) -> str:
    """The official file name: ``chestmnist.npz`` at 28, ``chestmnist_64.npz`` at 64."""
    _check_flag(flag, size)
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def _check_flag(flag: str, size: int) -> None:
    if flag not in MEDMNIST_FLAGS:
        raise ConfigError(f"MedMNIST flag {flag!r}; expected one of {MEDMNIST_FLAGS}")
    if size not in MEDMNIST_SIZES:
        raise ConfigError(f"MedMNIST size {size}; expected one of {MEDMNIST_SIZES}")


def download_medmnist(flag: str, *, root: str | Path, size: int = 28) -> Path:
    """Fetch the official npz into ``root`` through the ``medmnist`` package; return its path.

    Raises:
        MissingFileError: the ``medmnist`` package is not installed (the message says how to
            install it or where to download the file by hand).
    """
    _check_flag(flag, size)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / medmnist_file_name(flag, size)
    try:
        import medmnist
    except ImportError:
        raise MissingFileError(
            target,
            "not present and the 'medmnist' package is not installed: pip install "
            f"'cxr-anomaly[medmnist]', or download {target.name} from {ZENODO_RECORD} into {root}",
        ) from None
    dataset_class = getattr(medmnist, medmnist.INFO[flag]["python_class"])
    logger.info("downloading %s through medmnist into %s", target.name, root)
    keyword = {} if size == 28 else {"size": size}
    dataset_class(split="train", download=True, root=str(root), **keyword)
    if not target.is_file():
        raise MissingFileError(target, "medmnist reported success but the file is not there")
    return target


def build_medmnist_manifest(
    npz_or_flag: str | Path, *, download: bool = False, root: str | Path | None = None, size: int = 28
) -> pd.DataFrame:
    """The manifest of a MedMNIST chest set, from a local npz or a flag.

    Args:
        npz_or_flag: a path to a ``.npz`` file, or ``"pneumoniamnist"`` / ``"chestmnist"``.
        download: with a flag, fetch the file when it is not under ``root``.
        root: folder of the npz files for a flag (default ``~/.medmnist``, medmnist's own).
        size: image size of the file a flag refers to (28, 64, 128 or 224).

    Raises:
        MissingFileError: the npz is absent (and not downloaded).
        ManifestError: the npz lacks MedMNIST's arrays or its labels do not fit the set.
    """
    candidate = Path(npz_or_flag)
    if str(npz_or_flag).lower() in MEDMNIST_FLAGS and not candidate.suffix:
        flag = str(npz_or_flag).lower()
        folder = Path(root) if root is not None else Path.home() / ".medmnist"
        path = folder / medmnist_file_name(flag, size)
        if not path.is_file():
            if not download:
                raise MissingFileError(
                    path, f"MedMNIST file not found; pass download=True or download it from {ZENODO_RECORD}"
                )
            path = download_medmnist(flag, root=folder, size=size)
    else:
        path = candidate
        flag = next((name for name in MEDMNIST_FLAGS if path.name.lower().startswith(name)), "unknown")
    manifest = read_npz_manifest(path)
    manifest["medmnist_flag"] = flag
    if flag == "chestmnist":
        manifest = _add_chest_findings(manifest, path)
    elif flag == "pneumoniamnist":
        _check_binary_labels(path)
    return normalise_manifest(manifest, path)


def _check_binary_labels(path: Path) -> None:
    with np.load(path, allow_pickle=False) as archive:
        for key in archive.files:
            if key.endswith("_labels"):
                labels = archive[key]
                if labels.reshape(len(labels), -1).shape[1] != 1 or not np.isin(labels, (0, 1)).all():
                    raise ManifestError(path, f"{key}: PneumoniaMNIST labels must be one 0/1 column")


def _add_chest_findings(manifest: pd.DataFrame, path: Path) -> pd.DataFrame:
    """One 0/1 column per ChestMNIST finding, in manifest row order."""
    columns: dict[str, list[int]] = {f"finding_{name}": [] for name in CHESTMNIST_FINDINGS}
    with np.load(path, allow_pickle=False) as archive:
        label_arrays = {key.removesuffix("_labels"): archive[key] for key in archive.files if key.endswith("_labels")}
    for member in manifest["path"].str.rsplit("#", n=1).str[1]:
        split_name, _, index = member.partition("/")
        labels = label_arrays.get(split_name)
        if labels is None or labels.ndim != 2 or labels.shape[1] != len(CHESTMNIST_FINDINGS):
            raise ManifestError(path, f"{split_name}_labels must have shape (N, 14) for ChestMNIST")
        for position, name in enumerate(CHESTMNIST_FINDINGS):
            columns[f"finding_{name}"].append(int(labels[int(index), position]))
    result = manifest.copy()
    for column, values in columns.items():
        result[column] = values
    return result
