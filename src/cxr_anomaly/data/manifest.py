"""Manifests from folders, manifest CSVs and npz files: :func:`load_inputs`.

The table itself (its columns, :func:`normalise_manifest`) is defined in :mod:`.table` and
re-exported here.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..dicom import read_film_headers
from ..errors import ManifestError, MissingFileError
from ..image_base import is_dicom_file
from ..io import IMAGE_SUFFIXES, sniff_format
from .kermany import build_kermany_manifest, is_kermany_folder
from .table import MANIFEST_COLUMNS, SPLIT_ALIASES, SPLITS, normalise_manifest

__all__ = [
    "ABNORMAL_FOLDERS",
    "MANIFEST_COLUMNS",
    "NORMAL_FOLDERS",
    "NPZ_SEPARATOR",
    "SPLITS",
    "FolderLabel",
    "folder_label",
    "load_inputs",
    "looks_like_image",
    "normalise_manifest",
    "read_manifest_csv",
    "read_npz_manifest",
    "scan_folder",
]

logger = logging.getLogger(__name__)

# Text labels accepted in manifest CSVs (case-insensitive), e.g. the Kermany copy's NORMAL/PNEUMONIA.
_LABEL_ALIASES = {"normal": "0", "no finding": "0", "abnormal": "1", "pneumonia": "1"}
# Other names of the patient column in shipped manifests.
_PATIENT_ALIASES = ("patient_key", "patientid", "patient id")
# The folder names README documents as labels (case-insensitive), and no others: a PACS series
# folder named "1" or a study folder named "positive" says nothing about the film.
NORMAL_FOLDERS: frozenset[str] = frozenset({"normal", "0_normal"})
ABNORMAL_FOLDERS: frozenset[str] = frozenset({"abnormal", "1_abnormal", "pneumonia"})
# Names other tools read as labels; seeing one is logged, so a user who expected a label knows why.
_NOT_LABELS = frozenset({"0", "1", "negative", "positive", "no_finding", "opacity"})
NPZ_SEPARATOR = "#"


def read_manifest_csv(csv_path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV; relative ``path`` values are resolved against the CSV's folder.

    Labels may be 0/1 or the words normal / "no finding" (0) and abnormal / pneumonia (1), in
    any case. A ``patient_key`` or ``patientId`` column serves as ``patient_id`` when that is absent.

    Raises:
        MissingFileError: the CSV does not exist.
        ManifestError: the CSV cannot be parsed, or lacks ``path``, or has bad labels or splits.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise MissingFileError(csv_path, "manifest CSV does not exist")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ManifestError(csv_path, f"cannot parse CSV: {error}") from error
    table.columns = [str(column).strip() for column in table.columns]
    duplicated = sorted({column for column in table.columns if list(table.columns).count(column) > 1})
    if duplicated:
        raise ManifestError(csv_path, f"duplicate column name(s) {duplicated}")
    if "path" not in table.columns:
        raise ManifestError(csv_path, f"missing required column 'path' (columns are {list(table.columns)})")
    if "label" not in table.columns:
        table["label"] = ""
    table["label"] = table["label"].map(lambda value: _LABEL_ALIASES.get(value.strip().lower(), value))
    if "patient_id" not in table.columns:
        alias = next((column for column in table.columns if column.lower() in _PATIENT_ALIASES), None)
        if alias is not None:
            table["patient_id"] = table[alias]
    if table["path"].str.strip().eq("").any():
        row = int(np.flatnonzero(table["path"].str.strip().eq("").to_numpy())[0])
        raise ManifestError(csv_path, f"row {row + 1}: empty path")
    base = csv_path.resolve().parent
    table["path"] = [_resolve(base, value.strip()) for value in table["path"]]
    return normalise_manifest(table, csv_path)


def _resolve(base: Path, value: str) -> str:
    file_part, hash_sign, member = value.partition(NPZ_SEPARATOR)
    resolved = Path(file_part) if Path(file_part).is_absolute() else base / file_part
    return str(resolved) + (hash_sign + member if hash_sign and file_part.endswith(".npz") else "")


def looks_like_image(path: Path) -> bool:
    """Whether a file's leading bytes are those of a PNG, JPEG, DICOM, BMP or TIFF file."""
    try:
        with path.open("rb") as handle:
            return sniff_format(handle.read(132)) is not None
    except OSError:
        return False


@dataclass(frozen=True)
class FolderLabel:
    """The label that a film's folders give.

    Attributes:
        label: 0, 1, or None when no folder names a label.
        source: the folder name the label came from (as written), or None.
    """

    label: int | None
    source: str | None


def folder_label(folder: str | Path, relative_parts: tuple[str, ...]) -> FolderLabel:
    """The label that the folders of a path (relative to the scanned ``folder``) give.

    Only the names README documents count, case-insensitively: ``normal``/``0_normal`` give 0,
    ``abnormal``/``1_abnormal``/``pneumonia`` give 1, at any depth below the scanned folder.

    Raises:
        ManifestError: two folders of the path name different labels (``normal/.../abnormal``).
    """
    found: list[tuple[int, str]] = []
    for part in relative_parts:
        name = part.lower()
        if name in NORMAL_FOLDERS:
            found.append((0, part))
        elif name in ABNORMAL_FOLDERS:
            found.append((1, part))
    if not found:
        return FolderLabel(None, None)
    if len({label for label, _ in found}) > 1:
        names = ", ".join(repr(part) for _, part in found)
        raise ManifestError(folder, f"{Path(*relative_parts)}: folders {names} name different labels")
    return FolderLabel(*found[-1])


def scan_folder(folder: str | Path) -> pd.DataFrame:
    """List the image files under ``folder`` recursively, inferring labels and splits from folders.

    A folder below ``folder`` named ``normal``/``0_normal`` gives label 0, ``abnormal``/
    ``1_abnormal``/``pneumonia`` label 1 (see :func:`folder_label`); no other name does, so a
    PACS series folder ``1/`` leaves its films unlabelled. ``train``/``val``/``valid``/``test`` give
    the split. Where each folder's labels come from is logged at INFO, once per folder. A file
    with another suffix, or none (DICOM series from a PACS often have none), is listed when its
    leading bytes are those of an image; otherwise it is left out with a WARNING naming it, never
    silently.

    Raises:
        MissingFileError: ``folder`` does not exist.
        ManifestError: it holds no image, or a path's folders name two different labels.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(folder, "folder does not exist")
    rows = []
    labels: dict[Path, FolderLabel] = {}
    films_per_folder: Counter[Path] = Counter()
    for file in sorted(folder.rglob("*")):
        if not file.is_file() or file.name.startswith("."):
            continue
        if file.suffix.lower() not in IMAGE_SUFFIXES and not looks_like_image(file):
            if file.suffix.lower() not in (".csv", ".txt", ".md", ".json"):
                logger.warning(
                    "ignoring %s: neither its suffix %r nor its first bytes are those of an image", file, file.suffix
                )
            continue
        parts = file.relative_to(folder).parts[:-1]
        if file.parent not in labels:
            labels[file.parent] = folder_label(folder, parts)
        films_per_folder[file.parent] += 1
        label = labels[file.parent].label
        split = pd.NA
        for part in parts:
            split = SPLIT_ALIASES.get(part.lower(), split)
        rows.append({"path": str(file.resolve()), "label": pd.NA if label is None else label, "split": split})
    if not rows:
        raise ManifestError(folder, "folder holds no image files (.png, .jpg, .jpeg, .dcm, ...)")
    for parent, found in labels.items():
        _log_label_source(folder, parent, found, films_per_folder[parent])
    return normalise_manifest(pd.DataFrame(rows), folder)


def _log_label_source(root: Path, parent: Path, found: FolderLabel, count: int) -> None:
    """One INFO line per folder: which label its films got and from which folder name."""
    relative = parent.relative_to(root).as_posix()
    if found.label is not None:
        logger.info(
            "%s/%s: %d film(s) labelled %d from the folder name %r", root, relative, count, found.label, found.source
        )
        return
    lookalikes = sorted({part for part in parent.relative_to(root).parts if part.lower() in _NOT_LABELS})
    reason = f"; {', '.join(map(repr, lookalikes))} is not read as a label" if lookalikes else ""
    logger.info(
        "%s/%s: %d film(s) without a label (no folder named %s)%s",
        root,
        relative,
        count,
        "/".join(sorted(NORMAL_FOLDERS | ABNORMAL_FOLDERS)),
        reason,
    )


def read_npz_manifest(npz_path: str | Path) -> pd.DataFrame:
    """List the images of a MedMNIST-style npz (``{split}_images`` and ``{split}_labels`` arrays).

    The label is 0 when every label column is 0 (normal, "no finding") and 1 otherwise, which is
    PneumoniaMNIST's label and ChestMNIST's "any of the 14 findings".
    """
    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise MissingFileError(npz_path, "npz file does not exist")
    try:
        archive = np.load(npz_path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ManifestError(npz_path, f"cannot open as npz: {error}") from error
    rows = []
    with archive:
        found = [key for key in archive.files if key.endswith("_images")]
        if not found:
            raise ManifestError(npz_path, f"no '*_images' arrays (keys are {archive.files})")
        for key in found:
            split_name = key.removesuffix("_images")
            labels_key = f"{split_name}_labels"
            count = archive[key].shape[0]
            labels = archive[labels_key].reshape(count, -1) if labels_key in archive.files else None
            split = SPLIT_ALIASES.get(split_name, pd.NA)
            for index in range(count):
                label = pd.NA if labels is None else int(labels[index].any())
                rows.append(
                    {"path": f"{npz_path.resolve()}{NPZ_SEPARATOR}{split_name}/{index}", "label": label, "split": split}
                )
    return normalise_manifest(pd.DataFrame(rows), npz_path)


def load_inputs(sources: list[str | Path] | str | Path) -> pd.DataFrame:
    """Build one manifest from files, folders, manifest CSVs and npz archives.

    A folder holding a ``manifest.csv`` is read through that manifest (which carries patient
    ids and views, as NIH1000's does); a Kermany-style folder (``NORMAL``/``PNEUMONIA``) through
    :func:`cxr_anomaly.data.kermany.build_kermany_manifest`, which derives patient keys from
    the file names; any other folder is scanned with :func:`scan_folder`.

    Raises:
        MissingFileError: a source does not exist.
        ManifestError: a source is malformed or holds no images.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    tables = []
    for source in sources:
        source = Path(source)
        if source.is_dir() and (source / "manifest.csv").is_file():
            logger.info("reading %s through its manifest.csv", source)
            tables.append(read_manifest_csv(source / "manifest.csv"))
        elif source.is_dir():
            tables.append(build_kermany_manifest(source) if is_kermany_folder(source) else scan_folder(source))
        elif source.suffix.lower() == ".csv":
            tables.append(read_manifest_csv(source))
        elif source.suffix.lower() == ".npz":
            tables.append(read_npz_manifest(source))
        elif source.is_file():
            tables.append(normalise_manifest(pd.DataFrame({"path": [str(source.resolve())]}), source))
        else:
            raise MissingFileError(source, "input does not exist")
    if not tables:
        raise ManifestError("<inputs>", "no input given")
    return normalise_manifest(pd.concat(tables, ignore_index=True), "<inputs>")


def fill_from_dicom_headers(manifest: pd.DataFrame, *, ages: bool = True) -> pd.DataFrame:
    """Fill the empty ``view`` and (with ``ages``) ``age`` cells of DICOM rows from each file's
    ``ViewPosition`` and ``PatientAge`` headers.

    A folder of DICOM films, or a manifest without those columns, then gets the same per-view and
    adult AUCs as a manifest that names them. A value the manifest gives is kept, also where the
    header says otherwise. Rows that are not DICOM files (by their first bytes), or whose header
    lacks the tag, keep an empty cell. Only headers are read; a missing file is left for the pixel
    read to report. An ``age`` column is added when the table has none and a header gives an age.
    """
    age_column = manifest["age"] if "age" in manifest else pd.Series(pd.NA, index=manifest.index)
    known_ages = pd.to_numeric(age_column, errors="coerce").astype("Float64")
    lacking = manifest["view"].isna().to_numpy() | (known_ages.isna().to_numpy() if ages else False)
    dicom_rows = [row for row in np.flatnonzero(lacking) if is_dicom_file(str(manifest["path"].iloc[row]))]
    if not dicom_rows:
        return manifest
    headers = read_film_headers([str(manifest["path"].iloc[row]) for row in dicom_rows])
    filled = manifest.copy()
    views = filled["view"].copy()
    for row, header in zip(dicom_rows, headers):
        if pd.isna(views.iat[row]) and header.view is not None:
            views.iat[row] = header.view
        if ages and pd.isna(known_ages.iat[row]) and header.age is not None:
            known_ages.iat[row] = header.age
    filled["view"] = views
    if ages and ("age" in filled or known_ages.notna().any()):
        filled["age"] = known_ages
    logger.info(
        "from the headers of %d DICOM film(s) lacking a view%s in the manifest: views %s%s",
        len(dicom_rows),
        " or an age" if ages else "",
        dict(Counter(header.view for header in headers if header.view is not None)),
        f", {sum(header.age is not None for header in headers)} age(s)" if ages else "",
    )
    return filled
