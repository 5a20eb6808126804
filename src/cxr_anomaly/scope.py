"""Is a film what the model was made for? A frontal adult chest film, meant for display.

The detector learnt what a normal frontal chest film looks like, so any other film (a lateral
view, another body part, raw detector data, a film rotated a quarter turn, a child's film for a
model fitted on adults) scores as "unusual" for reasons that have nothing to do with disease.
:func:`decide_scope` gives each film a :class:`FilmScope`: :data:`IN_SCOPE`, or the first rule
that puts it out of scope, in this order:

* :data:`FOR_PROCESSING`: ``PresentationIntentType`` is ``FOR PROCESSING`` or the ``SOPClassUID``
  is a For Processing storage class (raw detector data, not meant for display);
* :data:`NOT_CHEST`: ``BodyPartExamined`` is given and is not a chest term;
* :data:`LATERAL_VIEW`: ``ViewPosition`` (or the manifest's ``view``) is a lateral view;
* :data:`UNKNOWN_VIEW`: a DICOM film whose ``ViewPosition`` is missing, or is neither frontal
  (PA, AP) nor lateral (decubitus and oblique views, say). Films without a DICOM header (PNG,
  JPEG) carry no view at all, the normal case in this package: they are not flagged for it;
* :data:`ROTATED`: ``PatientOrientation`` says the rows run head-to-feet, or, without it, the
  pixels do (:func:`rotation_evidence`);
* :data:`PAEDIATRIC`: the age is known (header or manifest), under :data:`ADULT_AGE`, and the
  model was fitted on adults (:func:`fitted_on_adults`).

The header decides where it says something; the pixels only where it is silent. There is no
pixel rule for lateral views or other body parts: no such films are at hand to measure one on
(docs/results.md, "Scope rules").
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .dicom import (
    FilmHeader,
    film_header_from_dataset,
    read_film_headers,
    silence_pydicom,
)
from .dicom_bounds import read_dicom_header
from .image_base import SIXTEEN_BIT_TOP, is_dicom_file
from .io import resize_grey

logger = logging.getLogger(__name__)

IN_SCOPE = "in_scope"
LATERAL_VIEW = "lateral_view"
NOT_CHEST = "not_chest"
FOR_PROCESSING = "for_processing"
ROTATED = "rotated"
PAEDIATRIC = "paediatric"
UNKNOWN_VIEW = "unknown_view"
SCOPE_REASONS: tuple[str, ...] = (IN_SCOPE, FOR_PROCESSING, NOT_CHEST, LATERAL_VIEW, UNKNOWN_VIEW, ROTATED, PAEDIATRIC)

FRONTAL_VIEWS = frozenset({"PA", "AP"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT", "LEFT LATERAL", "RIGHT LATERAL"})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_LAT", "CHEST PA", "CHEST AP"})
# DICOM PS3.4 storage SOP classes whose images are raw detector data, not meant for display
FOR_PROCESSING_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
        "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography X-Ray Image Storage - For Processing
        "1.2.840.10008.5.1.4.1.1.1.3.1",  # Digital Intra-Oral X-Ray Image Storage - For Processing
    }
)
ADULT_AGE = 18.0
# the share of known training ages under ADULT_AGE above which a model counts as fitted on children too
CHILD_SHARE_FOR_MIXED_MODEL = 0.05
ROTATION_SIDE = 64  # the pixel rule's working size: it reads the film's coarse layout only
# a margin below zero so that borderline upright films stay in scope (docs/results.md, "Scope rules")
ROTATION_MARGIN = -0.1


@dataclass(frozen=True)
class FilmScope:
    """Whether a film is one the model was made for.

    Attributes:
        reason: :data:`IN_SCOPE` or the rule that put the film out of scope (one of :data:`SCOPE_REASONS`).
        detail: one line saying what the rule saw (a header value, a measured margin); no patient identifier.
    """

    reason: str
    detail: str

    @property
    def in_scope(self) -> bool:
        """Whether the film can be ranked with the others."""
        return self.reason == IN_SCOPE


def rotation_evidence(image: np.ndarray) -> float:
    """How much more the film's bright central band runs top-to-bottom than left-to-right.

    A frontal chest film has the mediastinum and spine as a bright vertical band between the two
    dark lung fields: the mean column profile peaks at the centre and dips a quarter width to
    each side, while the mean row profile does not. The result is that peak-minus-dip of the
    column profile less the same of the row profile, in units of the film's standard deviation:
    positive for an upright film, the same magnitude negative once it is turned a quarter turn
    (180-degree turns and mirror images keep its sign: this rule does not see them).
    """
    top = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): float(SIXTEEN_BIT_TOP)}.get(image.dtype, 1.0)
    small = resize_grey(np.asarray(image, dtype=np.float32) / top, ROTATION_SIDE).astype(np.float64)
    spread = small.std()
    if not np.isfinite(spread) or spread == 0:
        return 0.0
    standardised = (small - small.mean()) / spread
    return _central_peak(standardised.mean(axis=0)) - _central_peak(standardised.mean(axis=1))


def _central_peak(profile: np.ndarray) -> float:
    """The profile's mean over its central 16% less its mean over the two bands a quarter width out."""
    size = len(profile)
    centre = profile[int(0.42 * size) : int(0.58 * size)].mean()
    sides = np.r_[profile[int(0.2 * size) : int(0.35 * size)], profile[int(0.65 * size) : int(0.8 * size)]].mean()
    return float(centre - sides)


def _header_rule(header: FilmHeader) -> FilmScope | None:
    """The first header rule a DICOM film breaks, or None."""
    if header.presentation_intent == "FOR PROCESSING" or header.sop_class_uid in FOR_PROCESSING_SOP_CLASSES:
        return FilmScope(FOR_PROCESSING, "DICOM header: raw detector data (FOR PROCESSING), not meant for display")
    if header.body_part is not None and header.body_part not in CHEST_BODY_PARTS:
        return FilmScope(NOT_CHEST, f"DICOM BodyPartExamined is {header.body_part!r}, not CHEST")
    if header.view in LATERAL_VIEWS:
        return FilmScope(LATERAL_VIEW, f"DICOM ViewPosition is {header.view!r}")
    if header.view not in FRONTAL_VIEWS:
        shown = "missing" if header.view is None else repr(header.view)
        return FilmScope(UNKNOWN_VIEW, f"DICOM ViewPosition is {shown}, neither frontal (PA, AP) nor lateral")
    if header.patient_orientation is not None and header.patient_orientation[0][:1] in ("H", "F"):
        return FilmScope(
            ROTATED, f"DICOM PatientOrientation {'/'.join(header.patient_orientation)}: the rows run head-to-feet"
        )
    return None


def decide_scope(
    header: FilmHeader | None,
    image: np.ndarray,
    *,
    fitted_on_adults: bool,
    manifest_view: str | None = None,
    manifest_age: float | None = None,
    check_rotation: bool = True,
) -> FilmScope:
    """Whether a film is a frontal chest film of the population the model was fitted on.

    Args:
        header: the film's DICOM header (:func:`cxr_anomaly.dicom.read_film_headers` or
            :func:`cxr_anomaly.dicom.film_header_from_dataset`); None for PNG/JPEG input.
        image: the film, grey (H, W): float in [0, 1], or uint8 or uint16 codes.
        fitted_on_adults: whether the model learnt from adults' films (:func:`fitted_on_adults`).
        manifest_view, manifest_age: what a manifest says, used where the header is silent.
        check_rotation: run the pixel rule for rotation where the header gives no orientation.
    """
    if header is not None:
        broken = _header_rule(header)
        if broken is not None:
            return broken
    elif manifest_view is not None and str(manifest_view).strip().upper() in LATERAL_VIEWS:
        return FilmScope(LATERAL_VIEW, f"the manifest's view is {str(manifest_view).strip()!r}")
    if check_rotation and (header is None or header.patient_orientation is None):
        evidence = rotation_evidence(image)
        if evidence < ROTATION_MARGIN:
            return FilmScope(
                ROTATED,
                f"pixels: the bright central band runs across the film (margin {evidence:.2f} < {ROTATION_MARGIN})",
            )
    age = header.age if header is not None and header.age is not None else manifest_age
    if fitted_on_adults and age is not None and np.isfinite(age) and age < ADULT_AGE:
        return FilmScope(PAEDIATRIC, f"age under {ADULT_AGE:g} and the model was fitted on adults")
    return FilmScope(IN_SCOPE, "")


def fitted_on_adults(training: dict[str, Any]) -> bool:
    """Whether a model's training record says it learnt from adults.

    Trained with known ages (``training_ages``, written since this field exists): adults when at
    most :data:`CHILD_SHARE_FOR_MIXED_MODEL` of them are under :data:`ADULT_AGE`. Without
    recorded ages (older checkpoints, manifests without ages) the model is taken as fitted on
    adults: the collections this package trains on (RSNA, NIH) are adult films.
    """
    ages = training.get("training_ages")
    if not isinstance(ages, dict) or not ages.get("known"):
        return True
    return float(ages.get("under_adult_age", 0)) / float(ages["known"]) <= CHILD_SHARE_FOR_MIXED_MODEL


def training_age_record(manifest: pd.DataFrame) -> dict[str, int]:
    """How many training films had a known age, and how many of those were under :data:`ADULT_AGE`."""
    if "age" not in manifest:
        return {"known": 0, "under_adult_age": 0}
    ages = pd.to_numeric(manifest["age"], errors="coerce").dropna()
    return {"known": len(ages), "under_adult_age": int((ages < ADULT_AGE).sum())}


def scope_column(manifest: pd.DataFrame, pixels: np.ndarray, *, fitted_on_adults: bool) -> list[str]:
    """:func:`decide_scope`'s reason for each manifest row (``pixels[i]`` is row i's film), reading
    DICOM headers where the path is a DICOM file and the manifest's ``view`` and ``age`` elsewhere."""
    paths = manifest["path"].astype(str).tolist()
    dicom_rows = [row for row, path in enumerate(paths) if is_dicom_file(path)]
    headers: dict[int, FilmHeader] = dict(zip(dicom_rows, read_film_headers([paths[row] for row in dicom_rows])))
    views = manifest["view"].tolist() if "view" in manifest else [None] * len(paths)
    ages = pd.to_numeric(manifest["age"], errors="coerce").tolist() if "age" in manifest else [None] * len(paths)
    reasons = []
    for row in range(len(paths)):
        view = views[row] if isinstance(views[row], str) else None
        age = None if ages[row] is None or pd.isna(ages[row]) else float(ages[row])
        reasons.append(
            decide_scope(
                headers.get(row), pixels[row], fitted_on_adults=fitted_on_adults, manifest_view=view, manifest_age=age
            ).reason
        )
    outside = len(reasons) - reasons.count(IN_SCOPE)
    if outside:
        logger.warning(
            "%d of %d film(s) are outside the model's scope (not a frontal adult chest film "
            "for display); they are listed apart, unranked",
            outside,
            len(reasons),
        )
    return reasons


def upload_scope(data: bytes, kind: str, image: np.ndarray, *, fitted_on_adults: bool) -> FilmScope:
    """:func:`decide_scope` of an uploaded film: its bytes (for a DICOM header), the format that
    :func:`cxr_anomaly.image_base.sniff_format` found (``dicom``, ``png``, ``jpeg``) and its pixels."""
    header = None
    if kind == "dicom":
        silence_pydicom()
        try:
            dataset = read_dicom_header(io.BytesIO(data), force=True)  # a deflated one: bounded
            header = film_header_from_dataset(dataset)
        except Exception as error:  # pydicom raises many types for damaged headers; the pixels were read
            logger.warning("cannot read the uploaded DICOM header: %s", type(error).__name__)
            header = FilmHeader(None, None)
    return decide_scope(header, image, fitted_on_adults=fitted_on_adults)
