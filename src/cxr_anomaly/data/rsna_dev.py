"""``rsna_dev256``: RSNA challenge films whose labels radiologists read, for choosing and testing.

Source: the RSNA Pneumonia Detection Challenge (2018) training films, exported from the
challenge's DICOMs to 256x256 grey JPEG by a third party (not the pipeline of ``rsna_normal224``,
the training pool). ``manifest.csv`` columns: ``path``, ``label``, ``class``, ``lung_opacity``,
``patient_id`` (the challenge's ``patientId``; one film per patient), ``view`` (PA/AP), ``age``,
``sex``.

Counts: 735 films, 735 patients, none of them in any other collection of ``../shared/data``:

- 226 "Normal" (185 PA, 41 AP): ``label`` 0, ``lung_opacity`` 0;
- 184 "Lung Opacity" (38 PA, 146 AP): ``label`` 1, ``lung_opacity`` 1;
- 325 "No Lung Opacity / Not Normal" (157 PA, 168 AP): ``label`` 1, ``lung_opacity`` empty.

Two tasks (:data:`TASKS`): normal against lung opacity (``lung_opacity``; the Not Normal films
take no part), the task published one-class results on RSNA use most, and normal against any
abnormality (``label``). Lung opacity films are 79% AP and normals 82% PA, so the view alone
scores about 0.80 on the first task: judge within each view.

:func:`validation_and_test_halves` splits the films once, seeded, by patient and within each
class and view: settings are chosen on the ``val`` half and reported on the ``test`` half.

Citation: Shih G, Wu CC, Halabi SS, et al. Augmenting the National Institutes of Health chest
radiograph dataset with expert annotations of possible pneumonia. Radiology: AI 2019;1(1).
Licence: the challenge data are for research use under the Kaggle competition rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import ManifestError
from .splits import patient_groups
from .table import normalise_manifest

NAME = "rsna_dev256"
SPLIT_SEED = 0


@dataclass(frozen=True)
class Task:
    """One labelled question asked of the collection: which column holds 0 (normal) and 1 (abnormal)."""

    name: str
    label_column: str
    description: str


TASKS: tuple[Task, ...] = (
    Task("lung_opacity", "lung_opacity", "normal vs lung opacity"),
    Task("any_abnormality", "label", "normal vs any abnormality"),
)


def validation_and_test_halves(manifest: pd.DataFrame, *, seed: int = SPLIT_SEED) -> pd.DataFrame:
    """A copy of the manifest whose ``split`` puts half of the patients of each (class, view) in
    ``val`` and the rest in ``test``; no patient is in both.

    Within each stratum the sorted patient ids are shuffled by ``numpy.random.default_rng(seed)``
    and the first half (rounded down) goes to ``val``, so the few PA lung-opacity films are shared
    out evenly rather than by chance.

    Raises:
        ManifestError: a column the split needs (``class``, ``view``) is missing.
    """
    missing = [column for column in ("class", "view") if column not in manifest.columns]
    if missing:
        raise ManifestError(f"<{NAME}>", f"no column {', '.join(missing)} to split by")
    result = manifest.copy()
    patients = patient_groups(result).astype(str)
    strata = result["class"].astype(str) + "|" + result["view"].astype(str)
    rng = np.random.default_rng(seed)
    validation: set[str] = set()
    for stratum in sorted(strata.unique()):
        members = np.array(sorted(patients[strata == stratum].unique()))
        validation.update(rng.permutation(members)[: len(members) // 2])
    result["split"] = np.where(patients.isin(validation), "val", "test")
    return normalise_manifest(result, f"<{NAME} halves>")
