"""The films of a benchmark: the training and calibration normals and each test collection's films,
decoded at every input size the benchmark needs (:mod:`.benchmark`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config, DataConfig, with_overrides
from ..data.copies import film_signatures, matching_signatures
from ..data.dataset import OnBadFile, SkippedFile, load_images
from ..data.manifest import fill_from_dicom_headers, load_inputs
from ..data.selection import choose_evaluation_rows, require_both_classes, select_training_rows, warn_on_patient_overlap
from ..errors import ManifestError
from ..evaluation import VIEW_ORDER
from .cells import paths_fingerprint

logger = logging.getLogger(__name__)


@dataclass
class FilmSet:
    """Labelled films of one set, decoded at every input size the benchmark needs.

    Attributes:
        name: ``train``, ``calibration`` or a test collection's name.
        manifest: the N rows that could be read, in the order of every pixel array.
        pixels: data config -> uint8 (N, S, S) films decoded with it.
        fingerprint: hash of the rows' paths.
    """

    name: str
    manifest: pd.DataFrame
    pixels: dict[DataConfig, np.ndarray]
    fingerprint: str
    skipped: list[SkippedFile] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        """0/1 labels (N,)."""
        return self.manifest["label"].to_numpy().astype(int)

    @property
    def views(self) -> np.ndarray | None:
        """View of each film (N,) (None where unknown), or None when no film has one."""
        return self.manifest["view"].to_numpy() if self.manifest["view"].notna().any() else None

    @property
    def ages(self) -> np.ndarray | None:
        """Age of each film's patient (N,), or None when the manifest has no ages."""
        if "age" in self.manifest and self.manifest["age"].notna().any():
            return self.manifest["age"].to_numpy()
        return None

    @property
    def view_names(self) -> list[str]:
        """The views present, PA and AP first."""
        present = {str(view) for view in self.manifest["view"].dropna() if str(view)}
        return sorted(
            present, key=lambda view: (VIEW_ORDER.index(view) if view in VIEW_ORDER else len(VIEW_ORDER), view)
        )


def load_film_set(
    name: str,
    manifest: pd.DataFrame,
    data_configs: Sequence[DataConfig],
    *,
    on_bad_file: OnBadFile,
    cache_dir: str | Path | None,
    progress: bool,
) -> FilmSet:
    """Decode a set's films at each data config (the preprocessing cache keys on each).

    Raises:
        ManifestError: skipped files left different films at two sizes (the rows must align).
    """
    pixels: dict[DataConfig, np.ndarray] = {}
    kept: pd.DataFrame | None = None
    skipped: list[SkippedFile] = []
    for data_config in dict.fromkeys(data_configs):  # each config once, in order
        images = load_images(manifest, data_config, on_bad_file=on_bad_file, cache_dir=cache_dir, progress=progress)
        if kept is None:
            kept, skipped = images.manifest, images.skipped
        elif images.manifest["path"].tolist() != kept["path"].tolist():
            raise ManifestError(
                name,
                f"the films readable at {data_config.image_size} px differ from those "
                "read at another size; fix or remove the unreadable files",
            )
        pixels[data_config] = images.pixels  # (N, S, S) uint8
    assert kept is not None  # data_configs is never empty
    return FilmSet(
        name, kept.reset_index(drop=True), pixels, paths_fingerprint(kept["path"].astype(str).tolist()), skipped
    )


def choose_training_films(
    data: Sequence[str | Path], config: Config, *, max_train_normals: int | None, selection_seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Training normals and calibration normals, as ``train`` chooses them; then at most
    ``max_train_normals`` training normals (a draw seeded by ``selection_seed``). Returns (train
    rows, calibration rows, source)."""
    manifest = load_inputs(list(data))
    warn_on_patient_overlap(manifest)
    selection = with_overrides(config, "train", seed=selection_seed)
    chosen = select_training_rows(manifest, selection, ", ".join(map(str, data)))
    train = chosen.train
    if max_train_normals is not None and len(train) > max_train_normals:
        order = np.random.default_rng(selection_seed).permutation(len(train))
        train = train.iloc[np.sort(order[:max_train_normals])]
    logger.info(
        "training on %d normal films of %s (ignored: %s); calibrating on %d (%s)",
        len(train),
        ", ".join(map(str, data)),
        chosen.ignored_counts,
        len(chosen.calibration),
        chosen.calibration_source,
    )
    return train, chosen.calibration, chosen.calibration_source


def choose_test_films(name: str, source: Path) -> tuple[pd.DataFrame, str]:
    """The labelled films of a test collection's ``test`` split, or of every row without one.

    Raises:
        ManifestError: no labelled film, or one class only.
    """
    chosen = choose_evaluation_rows(load_inputs([source]), "auto")
    require_both_classes(chosen.manifest, f"{name}={source}", "label", chosen.split)
    labelled = chosen.manifest[chosen.manifest["label"].notna()]
    return fill_from_dicom_headers(labelled), chosen.split  # per-view and adult AUCs for DICOM films


def warn_on_shared_films(
    train: FilmSet, collection: FilmSet, data_config: DataConfig, train_signatures: np.ndarray
) -> None:
    """Warn when a test collection holds training films (by path, or by content: the same film
    through another pipeline, :mod:`cxr_anomaly.data.copies`, from the ``data_config`` pixels;
    ``train_signatures`` are the training films' signatures, computed once for every collection)
    or films of training patients."""
    shared_paths = set(train.manifest["path"]) & set(collection.manifest["path"])
    train_patients = set(train.manifest["patient_id"].dropna())
    shared_patients = train_patients & set(collection.manifest["patient_id"].dropna())
    if shared_paths or shared_patients:
        logger.warning(
            "test collection %s shares %d films and %d patients with the training films: its "
            "results will be optimistic",
            collection.name,
            len(shared_paths),
            len(shared_patients),
        )
    copies = matching_signatures(film_signatures(collection.pixels[data_config]), train_signatures)
    if copies:
        logger.warning(
            "test collection %s: %d film(s) are copies of training films (the same film through "
            "another pipeline; a normal one makes the results optimistic): %s",
            collection.name,
            len(copies),
            [Path(str(collection.manifest["path"].iloc[copy.film])).name for copy in copies],
        )
