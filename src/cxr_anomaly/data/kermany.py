"""Kermany/ZhangLab pediatric chest X-rays (Guangzhou Women and Children's Medical Center).

Source: Mendeley Data "Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for
Classification" (doi:10.17632/rscbjbr9sj.2), also on Kaggle as ``chest_xray/`` with
``{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``. Anterior-posterior films of children aged one
to five, of varying size, 8-bit JPEG.

Counts (Kaggle layout, 5,856 films): train 1,341 normal + 3,875 pneumonia, val 8 + 8, test
234 + 390. Resized copies with their own split (such as the 224² copy in ``../shared/data``,
1,583 normal + 4,273 pneumonia) keep the file names, and this module reads them too.

Labels: folder ``NORMAL`` gives label 0, ``PNEUMONIA`` label 1; ``pneumonia_type`` is
``bacteria`` or ``virus`` from the file name (pneumonia films only).

Patient keys from the file names: ``person1000_bacteria_2931.jpeg`` -> ``person1000``;
``IM-0115-0001.jpeg`` -> ``N1-IM-0115`` and ``NORMAL2-IM-0041-0001.jpeg`` -> ``N2-IM-0041``
(the two numbering series of the normal films). Keys are approximate (the data set publishes no
patient table) but group a patient's follow-up films. The shipped splits share patients (408
keys between train and test in the 224² copy): re-split with
:func:`cxr_anomaly.data.splits.resplit_manifest`.

Citation: Kermany DS, Goldbaum M, Cai W, et al. Identifying medical diagnoses and treatable
diseases by image-based deep learning. Cell 2018;172(5):1122-1131.

Licence: CC BY 4.0.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from ..errors import ManifestError, MissingFileError
from .table import normalise_manifest

logger = logging.getLogger(__name__)

CLASS_FOLDERS: dict[str, int] = {"NORMAL": 0, "PNEUMONIA": 1}
SPLIT_FOLDERS: dict[str, str] = {"train": "train", "val": "val", "test": "test"}
# Label folders of other layouts (see cxr_anomaly.data.manifest.folder_label): a tree holding one
# is not Kermany's, whatever else it holds.
OTHER_LABEL_FOLDERS: frozenset[str] = frozenset({"ABNORMAL", "0_NORMAL", "1_ABNORMAL"})
KERMANY_SUFFIXES = (".jpeg", ".jpg", ".png")
_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_NORMAL_SERIES = re.compile(r"^(?:NORMAL(\d+)-)?IM-(\d+)-\d+", re.IGNORECASE)


def kermany_patient_key(file_name: str) -> str | None:
    """The patient key of a Kermany file name, or None when the name follows neither pattern."""
    person = _PERSON.match(file_name)
    if person:
        return person.group(1).lower()
    normal = _NORMAL_SERIES.match(file_name)
    if normal:
        return f"N{normal.group(1) or '1'}-IM-{normal.group(2)}"
    return None


def is_kermany_folder(root: str | Path) -> bool:
    """Whether ``root`` is laid out as the Kermany data set, so that :func:`build_kermany_manifest`
    reads it whole: ``NORMAL`` or ``PNEUMONIA`` folders below it and no other folder named for a
    label (``abnormal``, ``0_normal``, ``1_abnormal``), every file under them a .jpeg, .jpg or .png,
    and at least one file name that gives a Kermany patient key.

    Anything else, such as a site's ``normal/`` and ``abnormal/`` folders or DICOM files, is not:
    :func:`cxr_anomaly.data.manifest.scan_folder` lists every image file of such a folder and
    leaves none out silently.
    """
    directories = [path for path in Path(root).rglob("*") if path.is_dir()]
    names = {path.name.upper() for path in directories}
    if not names & set(CLASS_FOLDERS) or names & OTHER_LABEL_FOLDERS:
        return False
    files = [
        file
        for directory in directories
        if directory.name.upper() in CLASS_FOLDERS
        for file in directory.rglob("*")
        if file.is_file() and not file.name.startswith(".")
    ]
    return (
        bool(files)
        and all(file.suffix.lower() in KERMANY_SUFFIXES for file in files)
        and any(kermany_patient_key(file.name) is not None for file in files)
    )


def build_kermany_manifest(root: str | Path) -> pd.DataFrame:
    """The Kermany manifest from a ``chest_xray``-style folder (any depth above the splits).

    Columns beyond the standard ones: ``pneumonia_type`` and ``original_split`` (the shipped
    split, also in ``split``). A file whose name gives no patient key keeps its own key (its
    name), with a warning, so it is never merged with another patient by mistake.

    Raises:
        MissingFileError: ``root`` does not exist.
        ManifestError: no image under a ``NORMAL`` or ``PNEUMONIA`` folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(root, "Kermany folder does not exist")
    rows = []
    unmatched: list[str] = []
    outside: list[str] = []  # images under no class folder: no label, so not listed
    for file in sorted(root.rglob("*")):
        if not file.is_file() or file.suffix.lower() not in KERMANY_SUFFIXES or file.name.startswith("."):
            continue
        parts = file.relative_to(root).parts[:-1]
        classes = [CLASS_FOLDERS[part.upper()] for part in parts if part.upper() in CLASS_FOLDERS]
        if not classes:
            outside.append(file.name)
            continue
        splits = [SPLIT_FOLDERS[part.lower()] for part in parts if part.lower() in SPLIT_FOLDERS]
        key = kermany_patient_key(file.name)
        if key is None:
            unmatched.append(file.name)
            key = f"file:{file.name}"
        kind = _PERSON.match(file.name)
        rows.append(
            {
                "path": str(file.resolve()),
                "label": classes[-1],
                "split": splits[-1] if splits else pd.NA,
                "patient_id": key,
                "view": "AP",  # the data set's description: anterior-posterior films
                "pneumonia_type": kind.group(2).lower() if kind else pd.NA,
                "original_split": splits[-1] if splits else pd.NA,
            }
        )
    if not rows:
        raise ManifestError(root, "no .jpeg/.jpg/.png image under a NORMAL or PNEUMONIA folder")
    if outside:
        logger.warning(
            "%d image file(s) of %s under neither a NORMAL nor a PNEUMONIA folder left out, e.g. %s",
            len(outside),
            root,
            outside[:5],
        )
    if unmatched:
        logger.warning(
            "%d Kermany file names give no patient key (each kept as its own patient), e.g. %s",
            len(unmatched),
            unmatched[:5],
        )
    return normalise_manifest(pd.DataFrame(rows), root)
