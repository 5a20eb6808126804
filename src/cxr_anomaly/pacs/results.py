"""The DICOM objects sent back to the PACS for one scored film.

Each film gets two new instances in the film's own study, each in a new series of its own:

* a Comprehensive SR holding a TID 1500 Measurement Report (highdicom): one measurement group
  for the whole film, referencing the source image, with the algorithm's name and version, the raw
  anomaly score, the calibrated (standardised) score and the percentile among normal validation
  films as numbers, and the decision, the operating point and the scope as text. A film outside the
  model's scope gets the decision ``not assessed: <reason>`` whatever the caller decided;
* a Secondary Capture (RGB) of the heatmap over the film, with a colour scale strip below it whose
  ends are labelled with the map values painted transparent and at full colour.

UIDs derive from the source's SOP Instance UID and the model version (:func:`result_uids`), so a
film scored twice by the same model gives the same instances: a resend overwrites the earlier
result in the PACS instead of adding a second one.

Concepts without a standard code use the private coding scheme ``99CXRA``, declared in the SR's
Coding Scheme Identification Sequence. Patient and study attributes come from the source film
(highdicom copies them); none of them is logged.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..dicom import silence_pydicom
from ..errors import CxrAnomalyError, OutputPathError
from ..explain import colour_bar as default_colour_bar
from ..files import atomic_write
from ..scope import IN_SCOPE
from ..scope import SCOPE_REASONS as SCOPES

if TYPE_CHECKING:
    from pydicom import Dataset

logger = logging.getLogger(__name__)

PACS_EXTRA_HINT = "pip install 'cxr-anomaly[pacs]'"
DECISIONS: tuple[str, ...] = ("flagged", "not flagged", "not assessed")
NOT_FOR_DIAGNOSIS = "not for diagnosis"
MANUFACTURER = "cxr-anomaly"
SR_SERIES_NUMBER = 9901  # high numbers sort the machine's series after the acquired ones
SC_SERIES_NUMBER = 9902
PRIVATE_SCHEME = "99CXRA"
PRIVATE_SCHEME_NAME = "cxr-anomaly result concepts"
# changing it changes every result UID, so a resend after an upgrade would add a second result
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cxr-anomaly:pacs-results:v1")


class PacsExtraMissingError(CxrAnomalyError, ImportError):
    """highdicom (or pynetdicom) is not installed; the message names the extra to install."""


@dataclass(frozen=True)
class FilmResult:
    """What the listener knows after scoring one film.

    Attributes:
        raw_score: the detector's anomaly score.
        calibrated_score: the score standardised against the normal validation films (a z value);
            None when the model has no calibration.
        percentile: percentile of the score among normal validation films, 0-100; None without one.
        decision: ``"flagged"``, ``"not flagged"`` or ``"not assessed"``.
        operating_point: how the decision threshold was chosen, in words; None without one.
        scope: ``"in_scope"`` or why the film is outside the model's scope (see :data:`SCOPES`).
        model_name: the detector family, written into the SR as the algorithm's name.
        model_version: the model's version string, written as the algorithm's version.
    """

    raw_score: float
    calibrated_score: float | None
    percentile: float | None
    decision: str
    operating_point: str | None
    scope: str
    model_name: str
    model_version: str

    def __post_init__(self) -> None:
        if not math.isfinite(self.raw_score):
            raise ValueError(f"raw_score={self.raw_score}: the score must be a finite number")
        if self.calibrated_score is not None and not math.isfinite(self.calibrated_score):
            raise ValueError(f"calibrated_score={self.calibrated_score}: must be finite or None")
        if self.percentile is not None and not 0.0 <= self.percentile <= 100.0:
            raise ValueError(f"percentile={self.percentile}: must lie in [0, 100] or be None")
        if self.decision not in DECISIONS:
            raise ValueError(f"decision={self.decision!r}: expected one of {DECISIONS}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope={self.scope!r}: expected one of {SCOPES}")
        if not self.model_name.strip() or not self.model_version.strip():
            raise ValueError(
                f"model_name={self.model_name!r}, model_version={self.model_version!r}: both must be non-empty"
            )

    @property
    def reported_decision(self) -> str:
        """The decision as written: ``not assessed: <scope>`` for a film outside the model's scope."""
        if self.scope != IN_SCOPE:
            return f"not assessed: {self.scope}"
        return self.decision


@dataclass(frozen=True)
class ResultUids:
    """The UIDs of one film's results; the same film and model version always give the same ones."""

    sr_series: str
    sr_instance: str
    sc_series: str
    sc_instance: str
    tracking: str
    device: str


@dataclass(frozen=True)
class ResultObjects:
    """The two DICOM instances sent back for one film (highdicom subclasses of ``pydicom.Dataset``)."""

    structured_report: Dataset  # a highdicom.sr.ComprehensiveSR
    secondary_capture: Dataset  # a highdicom.sc.SCImage


def _highdicom() -> Any:
    """Import highdicom, or raise :class:`PacsExtraMissingError` naming the extra to install."""
    try:
        import highdicom
    except ImportError as error:
        raise PacsExtraMissingError(f"DICOM results need highdicom: {PACS_EXTRA_HINT}") from error
    return highdicom


def derived_uid(*parts: str) -> str:
    """A UID under the ``2.25`` arc from a name-based (version 5) UUID of ``parts``: the same parts, the same UID.

    (pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy and is random.)
    """
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, chr(31).join(parts)).int}"


_HIGHDICOM_WARNING_MODULES = r"highdicom(\.|$)"
_silence_lock = threading.Lock()


def silence_highdicom() -> None:
    """Keep highdicom's warnings and log records out of every output; idempotent.

    highdicom quotes header values in them (a patient name without a caret, say). Like
    :func:`cxr_anomaly.dicom.silence_pydicom`, this changes process-wide state on purpose: a
    per-call ``warnings.catch_warnings()`` is not thread-safe, and the listener builds results on
    several association threads.
    """
    with _silence_lock:
        installed = any(
            action == "ignore" and module is not None and module.pattern == _HIGHDICOM_WARNING_MODULES
            for action, _, _, module, _ in warnings.filters
        )
        if not installed:
            warnings.filterwarnings("ignore", module=_HIGHDICOM_WARNING_MODULES)
        highdicom_logger = logging.getLogger("highdicom")
        if highdicom_logger.level <= logging.CRITICAL:
            highdicom_logger.setLevel(logging.CRITICAL + 1)


def result_uids(source_sop_instance_uid: str, model_version: str) -> ResultUids:
    """The deterministic UIDs of the results for one source film and model version.

    Args:
        source_sop_instance_uid: the SOP Instance UID of the scored film.
        model_version: the model's version string; another version gives other UIDs, so results of
            two models sit side by side instead of overwriting each other.
    """
    if not source_sop_instance_uid or not model_version:
        raise ValueError(
            f"source_sop_instance_uid={source_sop_instance_uid!r}, model_version={model_version!r}: "
            "both must be non-empty"
        )

    return ResultUids(
        sr_series=derived_uid("sr series", source_sop_instance_uid, model_version),
        sr_instance=derived_uid("sr instance", source_sop_instance_uid, model_version),
        sc_series=derived_uid("sc series", source_sop_instance_uid, model_version),
        sc_instance=derived_uid("sc instance", source_sop_instance_uid, model_version),
        tracking=derived_uid("tracking", source_sop_instance_uid, model_version),
        device=derived_uid("device", model_version),
    )


# Type 2 patient and study attributes that highdicom copies into the results; empty when the film lacks them
_COPIED_TYPE_2: tuple[str, ...] = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_REQUIRED: tuple[str, ...] = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def evidence_header(source: Dataset) -> Dataset:
    """A header-only copy of the scored film that highdicom can copy patient and study data from.

    The pixel data is left out; the type 2 patient and study attributes a film may lack are set empty.

    Raises:
        ValueError: the film lacks one of the UIDs the results reference (the message names the keyword).
    """
    from pydicom.dataset import Dataset

    missing = [keyword for keyword in _REQUIRED if not source.get(keyword)]
    if missing:
        raise ValueError(f"the film lacks {', '.join(missing)}; results cannot reference it")
    header = Dataset()
    for element in source:
        if element.tag.group != 0x7FE0:  # pixel data (and float/double variants)
            header.add(element)
    for keyword in _COPIED_TYPE_2:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _image_library(header: Dataset) -> list[Dataset]:
    """``[header]`` when highdicom can describe the film in the SR's image library, else ``[]``.

    Its projection radiography descriptors need two-valued PatientOrientation and ImagerPixelSpacing,
    which a CR film may leave empty; the measurement group references the film either way.
    """
    hd = _highdicom()
    try:
        hd.sr.ImageLibraryEntryDescriptors(header)
    except (AttributeError, IndexError) as error:
        logger.debug("film %s left out of the SR's image library: %s", header.SOPInstanceUID, type(error).__name__)
        return []
    return [header]


def _private_code(value: str, meaning: str) -> Any:
    """A concept of the private ``99CXRA`` scheme."""
    return _highdicom().sr.CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


def _concepts() -> dict[str, Any]:
    """The concept names and units of the SR's items."""
    hd = _highdicom()
    ucum = {"score": ("{score}", "score"), "z": ("{Z-score}", "Z-score"), "percent": ("%", "percent")}
    return {
        "raw_score": _private_code("CXRA001", "Anomaly score"),
        "calibrated_score": _private_code("CXRA002", "Calibrated anomaly score"),
        "percentile": hd.sr.CodedConcept("121415", "DCM", "Percentile Ranking of measurement"),
        "decision": _private_code("CXRA010", "Decision"),
        "operating_point": _private_code("CXRA011", "Operating point"),
        "scope": _private_code("CXRA012", "Scope"),
        "procedure": hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray"),
        **{f"unit_{key}": hd.sr.CodedConcept(code, "UCUM", meaning) for key, (code, meaning) in ucum.items()},
    }


def _measurement_group(source: Dataset, result: FilmResult, uids: ResultUids) -> Any:
    """The TID 1501 group of the whole film: algorithm, numbers, source image and text items."""
    hd = _highdicom()
    concepts = _concepts()
    numbers = [
        ("raw_score", result.raw_score, "unit_score"),
        ("calibrated_score", result.calibrated_score, "unit_z"),
        ("percentile", result.percentile, "unit_percent"),
    ]
    measurements = [
        hd.sr.Measurement(name=concepts[name], value=float(value), unit=concepts[unit])
        for name, value, unit in numbers
        if value is not None
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.tracking, identifier="whole film"),
        algorithm_id=hd.sr.AlgorithmIdentification(name=result.model_name, version=result.model_version),
        measurements=measurements,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    texts = [
        ("decision", result.reported_decision),
        ("operating_point", result.operating_point),
        ("scope", result.scope),
    ]
    for name, value in texts:
        if value is not None:
            group[0].ContentSequence.append(
                hd.sr.TextContentItem(
                    name=concepts[name], value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
                )
            )
    return group


def build_structured_report(source: Dataset, result: FilmResult, uids: ResultUids) -> Dataset:
    """The Comprehensive SR (TID 1500 Measurement Report) of one scored film.

    Args:
        source: the scored film's header, from :func:`evidence_header`.
        result: what the listener found.
        uids: from :func:`result_uids`.

    Returns:
        A ``highdicom.sr.ComprehensiveSR`` in the source's study.
    """
    hd = _highdicom()
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uids.device, name=result.model_name, manufacturer_name=MANUFACTURER, model_name=result.model_version
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"), observer_identifying_attributes=device
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=_concepts()["procedure"],
        imaging_measurements=[_measurement_group(source, result, uids)],
        referenced_images=_image_library(source) or None,
    )
    scheme = hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME, name=PRIVATE_SCHEME_NAME, responsible_organization=MANUFACTURER
    )
    return hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=f"{MANUFACTURER} score; {NOT_FOR_DIAGNOSIS}",
        manufacturer_model_name=result.model_name[:64],
        software_versions=result.model_version[:64],
        coding_schemes=[scheme],
    )


def _label_font(size: int) -> Any:
    """Pillow's default font at ``size`` pixels (its bitmap font on Pillow builds without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):
        return ImageFont.load_default()


def _format_value(value: float) -> str:
    """A map value as a short label."""
    return f"{value:.3g}"


def heatmap_with_scale(
    overlay_rgb: np.ndarray, colour_bar: np.ndarray | None = None, *, scale_floor: float, scale_top: float
) -> np.ndarray:
    """The heatmap overlay with a legend strip below it: the colour bar, its end values and a caveat.

    Args:
        overlay_rgb: RGB uint8 (H, W, 3), the heatmap blended over the film.
        colour_bar: RGB uint8 (h, w, 3) legend, weakest colour on the left; None draws
            :func:`cxr_anomaly.explain.colour_bar`.
        scale_floor: the map value painted transparent (the bar's left end).
        scale_top: the map value painted at full colour (the bar's right end).

    Returns:
        RGB uint8 (H + strip, W, 3); the strip is about a tenth of the width high, at least 40 rows.
    """
    overlay_rgb = np.asarray(overlay_rgb)
    if overlay_rgb.ndim != 3 or overlay_rgb.shape[2] != 3 or overlay_rgb.dtype != np.uint8:
        raise ValueError(
            f"overlay_rgb has shape {overlay_rgb.shape} and dtype {overlay_rgb.dtype}; expected uint8 (H, W, 3)"
        )
    if not (math.isfinite(scale_floor) and math.isfinite(scale_top) and scale_top > scale_floor):
        raise ValueError(f"scale_floor={scale_floor}, scale_top={scale_top}: the top must exceed the floor")
    width = overlay_rgb.shape[1]
    strip_height = max(40, round(width * 0.1))
    margin = max(4, round(width * 0.04))
    bar_box = (margin, round(strip_height * 0.12), width - margin, round(strip_height * 0.45))
    bar_size = (max(1, bar_box[2] - bar_box[0]), max(1, bar_box[3] - bar_box[1]))
    legend = (
        default_colour_bar(width=bar_size[0], height=bar_size[1])
        if colour_bar is None
        else np.asarray(
            Image.fromarray(np.ascontiguousarray(colour_bar, dtype=np.uint8)).resize(
                bar_size, Image.Resampling.BILINEAR
            )
        )
    )
    strip = Image.new("RGB", (width, strip_height), (0, 0, 0))
    strip.paste(Image.fromarray(legend), bar_box[:2])
    draw = ImageDraw.Draw(strip)
    font = _label_font(max(8, round(strip_height * 0.36)))
    text_top = bar_box[3] + round(strip_height * 0.08)
    draw.text((margin, text_top), _format_value(scale_floor), fill=(255, 255, 255), font=font)
    draw.text((width - margin, text_top), _format_value(scale_top), fill=(255, 255, 255), font=font, anchor="ra")
    draw.text((width // 2, text_top), NOT_FOR_DIAGNOSIS, fill=(200, 200, 200), font=font, anchor="ma")
    return np.concatenate([overlay_rgb, np.asarray(strip, dtype=np.uint8)], axis=0)


def build_secondary_capture(source: Dataset, image_rgb: np.ndarray, result: FilmResult, uids: ResultUids) -> Dataset:
    """The Secondary Capture of the heatmap (with its scale) in the source's study.

    Args:
        source: the scored film's header, from :func:`evidence_header`.
        image_rgb: RGB uint8 (H, W, 3), from :func:`heatmap_with_scale`.
        result: the film's result (for the model's name and version).
        uids: from :func:`result_uids`.
    """
    hd = _highdicom()
    from pydicom.dataset import Dataset

    orientation = list(source.get("PatientOrientation") or [])
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(image_rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uids.sc_series,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids.sc_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=tuple(orientation) if len(orientation) == 2 else ("L", "F"),
        series_description=f"{MANUFACTURER} heatmap; {NOT_FOR_DIAGNOSIS}",
        manufacturer_model_name=result.model_name[:64],
        software_versions=result.model_version[:64],
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    if len(orientation) != 2:
        image.PatientOrientation = ""  # Type 2: unknown orientation is left empty, not guessed
    if source.get("BodyPartExamined"):
        image.BodyPartExamined = source.BodyPartExamined  # an unpaired part: Laterality stays absent
    else:
        image.Laterality = ""  # Type 2C: empty where the part, hence its laterality, is unknown
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    image.SourceImageSequence = [reference]
    image.ImageComments = f"heatmap of {result.model_name} {result.model_version}; {NOT_FOR_DIAGNOSIS}"[:10240]
    image.BurnedInAnnotation = "NO"  # the legend strip carries map values only, nothing identifying
    return image


def build_results(
    source: Dataset,
    result: FilmResult,
    overlay_rgb: np.ndarray,
    colour_bar: np.ndarray | None = None,
    *,
    scale_floor: float,
    scale_top: float,
) -> ResultObjects:
    """The SR and the heatmap Secondary Capture for one scored film.

    Args:
        source: the scored film's ``pydicom.Dataset`` (with or without pixel data); its patient and
            study attributes are copied (empty where absent), its Study, Series, SOP Instance and
            SOP Class UIDs are required.
        result: the film's scores and decision.
        overlay_rgb: RGB uint8 (H, W, 3): the heatmap blended over the film.
        colour_bar: the legend to draw under the overlay; None draws the default inferno bar.
        scale_floor: the map value painted transparent, labelled at the bar's left end.
        scale_top: the map value painted at full colour, labelled at the bar's right end.

    Raises:
        PacsExtraMissingError: highdicom is not installed.
        ValueError: a value of ``result`` or of the scale is invalid, the overlay is not RGB uint8, or
            the film lacks a UID the results reference.
    """
    silence_pydicom()
    silence_highdicom()
    header = evidence_header(source)
    uids = result_uids(str(header.SOPInstanceUID), result.model_version)
    report = build_structured_report(header, result, uids)
    image = heatmap_with_scale(overlay_rgb, colour_bar, scale_floor=scale_floor, scale_top=scale_top)
    capture = build_secondary_capture(header, image, result, uids)
    logger.info(
        "built results %s (SR) and %s (heatmap) of film %s", uids.sr_instance, uids.sc_instance, source.SOPInstanceUID
    )
    return ResultObjects(structured_report=report, secondary_capture=capture)


def write_results(objects: ResultObjects, folder: Path) -> list[Path]:
    """Write both objects as DICOM files named ``<modality>_<SOP Instance UID>.dcm``; atomic per file.

    A second write of the same results replaces the files (the names come from the deterministic UIDs).

    Raises:
        OutputPathError: the folder cannot be created or a file cannot be written.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputPathError(folder, f"cannot create the folder: {error.strerror or error}") from error
    paths = []
    for dataset in (objects.structured_report, objects.secondary_capture):
        path = folder / f"{dataset.Modality}_{dataset.SOPInstanceUID}.dcm"
        try:
            atomic_write(path, lambda stream, dataset=dataset: dataset.save_as(stream, enforce_file_format=True))
        except OSError as error:
            raise OutputPathError(path, f"cannot write the file: {error.strerror or error}") from error
        paths.append(path)
    logger.debug("wrote %d result files to %s", len(paths), folder)
    return paths


@dataclass(frozen=True)
class ReportedResult:
    """What an SR written by :func:`build_structured_report` says, read back.

    Attributes:
        raw_score, calibrated_score, percentile: the numbers (None where the item is absent).
        decision: the decision as written (``not assessed: <reason>`` outside the scope).
        operating_point, scope: the text items (None where absent).
        model_name, model_version: the algorithm's identification.
        source_sop_class_uid, source_sop_instance_uid: the image the measurement group references.
        study_instance_uid: the SR's study.
    """

    raw_score: float | None
    calibrated_score: float | None
    percentile: float | None
    decision: str | None
    operating_point: str | None
    scope: str | None
    model_name: str | None
    model_version: str | None
    source_sop_class_uid: str | None
    source_sop_instance_uid: str | None
    study_instance_uid: str


def read_structured_report(dataset: Dataset) -> ReportedResult:
    """Read the values of a result SR (a ``pydicom.Dataset`` as received or read from a file) with highdicom.

    Raises:
        ValueError: the data set is not a Comprehensive SR holding one measurement group.
    """
    hd = _highdicom()
    report = hd.sr.ComprehensiveSR.from_dataset(dataset)
    groups = report.content.get_image_measurement_groups()
    if len(groups) != 1:
        raise ValueError(f"SR {dataset.SOPInstanceUID} holds {len(groups)} measurement groups; expected 1")
    group, concepts = groups[0], _concepts()

    def number(name: str) -> float | None:
        found = group.get_measurements(name=concepts[name])
        return float(found[0].value) if found else None

    def text(name: Any, root: Any = group[0]) -> str | None:
        found = hd.sr.utils.find_content_items(root, name=name, value_type=hd.sr.ValueTypeValues.TEXT)
        return str(found[0].TextValue) if found else None

    source_images = group.source_images
    reference = source_images[0].ReferencedSOPSequence[0] if source_images else None
    return ReportedResult(
        raw_score=number("raw_score"),
        calibrated_score=number("calibrated_score"),
        percentile=number("percentile"),
        decision=text(concepts["decision"]),
        operating_point=text(concepts["operating_point"]),
        scope=text(concepts["scope"]),
        model_name=text(hd.sr.CodedConcept("111001", "DCM", "Algorithm Name")),
        model_version=text(hd.sr.CodedConcept("111003", "DCM", "Algorithm Version")),
        source_sop_class_uid=None if reference is None else str(reference.ReferencedSOPClassUID),
        source_sop_instance_uid=None if reference is None else str(reference.ReferencedSOPInstanceUID),
        study_instance_uid=str(dataset.StudyInstanceUID),
    )
