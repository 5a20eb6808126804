"""DICOM reading with pydicom: grey float images in [0, 1] where bright means dense.

The display pipeline of DICOM PS3.3 C.11 is applied in order:

1. stored values of the **first frame only** (a multi-frame file is never decoded whole: the
   size limit counts every frame, and the metadata says how many there were), masked to
   ``BitsStored`` by pydicom's decoders (12 of 16 allocated bits, say);
2. the Modality LUT: ``RescaleSlope`` / ``RescaleIntercept``, or a Modality LUT Sequence;
3. the VOI LUT: a VOI LUT Sequence, or the first ``WindowCenter`` / ``WindowWidth`` pair with
   its ``VOILUTFunction`` (LINEAR, LINEAR_EXACT or SIGMOID, computed by pydicom's
   ``apply_windowing``; a LINEAR window of width 1 is the standard's threshold); without
   either, the full range that the stored bits and the rescale can produce maps to [0, 1] (not
   the film's own min and max, so exposure differences survive as they do for PNG input),
   unless the film spans less than a quarter of that range (12-bit data declared as 16 bits,
   say): then its own min and max, since the 8-bit copy every film is stored as would keep only
   a few dozen of its grey levels (:func:`cxr_anomaly.image_base.stretch_narrow_range`);
4. ``MONOCHROME1`` films (where low values are white), and films whose
   ``PresentationLUTShape`` is ``INVERSE``, are inverted so that bone is white.

``PALETTE COLOR`` films go through their palette (pydicom's ``apply_color_lut``) and then to
luma, like RGB and YBR films. Files without the 128-byte preamble and ``DICM`` prefix (older
writers) are read once :func:`cxr_anomaly.image_base.sniff_format` has recognised a DICOM data set at
their first byte.

Compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, HTJ2K) need one of pydicom's optional
pixel data handlers; install them with ``pip install 'cxr-anomaly[dicom]'`` (pylibjpeg,
pylibjpeg-libjpeg, pylibjpeg-openjpeg). A missing handler is reported as a :class:`DicomError`
naming the file, the transfer syntax and the packages to install. RLE Lossless and the
uncompressed syntaxes need nothing extra. pydicom 3 or newer is required (``pixel_array`` with
a frame index); an older one is reported as a :class:`DicomError` naming both versions.
pydicom is a required dependency of the package, yet it is imported inside the functions that
use it, on purpose: an older pydicom then fails the read of a DICOM file with that error instead
of failing ``import cxr_anomaly`` for everyone, and runs without DICOM input skip its import
time.

Privacy: no patient-identifying header value (name, id, birth date, accession number,
institution, physicians...) is put in the returned metadata, in a log record or in an error
message. pydicom's own warnings and log records quote element values, so
:func:`silence_pydicom` keeps them out of every output: it is installed once per process (the
service calls it at start-up, before any request thread runs; ``warnings.catch_warnings`` is not
thread-safe, so no per-read filter is used). Messages of errors are scrubbed of identifying
values as a second line of defence.
"""

from __future__ import annotations

import io
import logging
import math
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .dicom_bounds import declared_by_header, frame_count, read_dicom_header, read_within_limits
from .errors import DecompressionBombError, DicomError, MissingFileError
from .image_base import DEFAULT_MAX_PIXELS, ImageRead, sniff_format, stretch_narrow_range
from .read_limits import ReadLimits, check_declared

logger = logging.getLogger(__name__)

DICOM_HANDLER_HINT = (
    "install a pixel data handler: pip install 'cxr-anomaly[dicom]' (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg)"
)
MIN_PYDICOM_VERSION: tuple[int, int] = (3, 0)

# Header keywords whose values identify a patient, a visit or a person; their values are
# removed from any text this module emits (DICOM PS3.15 Annex E basic profile, abridged).
IDENTIFYING_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "IssuerOfPatientID",
    "MedicalRecordLocator",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "StationName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "DeviceSerialNumber",
    "StudyDate",
    "StudyTime",
    "AcquisitionDateTime",
    "ContentDate",
)
WINDOW_FUNCTIONS: tuple[str, ...] = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

# Warnings raised in pydicom, or attributed by pydicom's stacklevel to this module (its caller).
_PYDICOM_WARNING_MODULES = r"(pydicom|cxr_anomaly\.dicom)(\.|$)"
_silence_lock = threading.Lock()


def silence_pydicom() -> None:
    """Keep pydicom's warnings and log records out of every output; idempotent.

    pydicom reports invalid header values both as a warning and as a record of its ``pydicom``
    logger, quoting the value (a patient name written into a code string, say). This adds one
    ``ignore`` warning filter for pydicom's modules and raises the ``pydicom`` logger's level above
    CRITICAL (its children inherit it). It changes process-wide state on purpose: per-read
    ``warnings.catch_warnings()`` is not thread-safe, so under concurrent reads it lets warnings
    through. Both are set again if something undid them (pytest restores the warning filters
    after each test; ``pydicom.config.debug()`` resets the level).
    """
    with _silence_lock:
        installed = any(
            action == "ignore" and module is not None and module.pattern == _PYDICOM_WARNING_MODULES
            for action, _, _, module, _ in warnings.filters
        )
        if not installed:
            warnings.filterwarnings("ignore", module=_PYDICOM_WARNING_MODULES)
        # Above CRITICAL, pydicom and its child loggers create no record at all, so no handler
        # (the application's, or one attached to pydicom's logger directly) can receive one.
        pydicom_logger = logging.getLogger("pydicom")
        if pydicom_logger.level <= logging.CRITICAL:
            pydicom_logger.setLevel(logging.CRITICAL + 1)
            logger.debug("pydicom's warnings and log records are silenced: they quote header values")


def check_pydicom_version(path: str | Path) -> None:
    """Raise :class:`DicomError` when the installed pydicom is older than 3.0.

    pydicom 2.x lacks ``pydicom.pixels`` and the frame index of ``pixel_array``; without this
    check every DICOM would fail with a misleading import error.
    """
    import pydicom

    installed = str(getattr(pydicom, "__version__", "0"))
    try:
        major_minor = tuple(int(part) for part in installed.split(".")[:2])
    except ValueError:  # not two leading numbers: treat as too old rather than guess
        major_minor = (0, 0)
    if major_minor < MIN_PYDICOM_VERSION:
        needed = ".".join(str(part) for part in MIN_PYDICOM_VERSION)
        raise DicomError(
            path,
            f"reading DICOM needs pydicom >= {needed}, but pydicom {installed} is installed; "
            f"pip install 'pydicom>={needed}'",
        )


@dataclass(frozen=True)
class FilmHeader:
    """What a DICOM header says of a film that a manifest may lack.

    Attributes:
        view: ``ViewPosition`` upper-case (``"PA"``, ``"AP"``, ``"LL"``...), None when absent or empty.
        age: ``PatientAge`` in years (``"042Y"`` -> 42.0, ``"006M"`` -> 0.5), None when absent or
            not of the standard's ``nnnD/W/M/Y`` form.
        body_part: ``BodyPartExamined`` upper-case (``"CHEST"``, ``"HAND"``...), None when absent or empty.
        presentation_intent: ``PresentationIntentType`` upper-case (``"FOR PRESENTATION"`` or
            ``"FOR PROCESSING"``), None when absent.
        sop_class_uid: ``SOPClassUID`` (a For Processing storage class marks raw detector data), None when absent.
        patient_orientation: ``PatientOrientation`` upper-case, e.g. ``("L", "F")``: the patient directions
            of the rows and columns; None when absent or not two values.
    """

    view: str | None
    age: float | None
    body_part: str | None = None
    presentation_intent: str | None = None
    sop_class_uid: str | None = None
    patient_orientation: tuple[str, str] | None = None


# The tags of FilmHeader: read without pixel data, none of them identifies a patient.
FILM_HEADER_TAGS: tuple[str, ...] = (
    "ViewPosition",
    "PatientAge",
    "BodyPartExamined",
    "PresentationIntentType",
    "SOPClassUID",
    "PatientOrientation",
)


_AGE_UNITS_PER_YEAR = {"Y": 1.0, "M": 12.0, "W": 52.0, "D": 365.0}


def parse_patient_age(value: object) -> float | None:
    """Years from a DICOM Age String (``nnnD``, ``nnnW``, ``nnnM`` or ``nnnY``); None otherwise."""
    text = str(value or "").strip().upper()
    if len(text) != 4 or not text[:3].isdigit() or text[3] not in _AGE_UNITS_PER_YEAR:
        return None
    return int(text[:3]) / _AGE_UNITS_PER_YEAR[text[3]]


def read_film_headers(paths: list[str]) -> list[FilmHeader]:
    """The :class:`FilmHeader` of each DICOM file (view, age, body part...), read without its pixel data.

    A header that cannot be read gives an empty :class:`FilmHeader` and a warning naming the file
    and the error's type (never its text, which may quote header values); the pixel read reports
    it in full later.
    """
    silence_pydicom()
    headers: list[FilmHeader] = []
    for path in paths:
        try:
            dataset = read_dicom_header(path, specific_tags=list(FILM_HEADER_TAGS))  # a deflated one: bounded
        except Exception as error:  # pydicom raises many types for damaged headers
            logger.warning("cannot read the header of %s: %s", path, type(error).__name__)
            headers.append(FilmHeader(None, None))
            continue
        headers.append(film_header_from_dataset(dataset))
    return headers


def _upper_text(dataset: Any, keyword: str) -> str | None:
    """A header value as stripped upper-case text; None when absent, empty or unreadable."""
    try:
        value = dataset.get(keyword)
    except Exception:  # a damaged element reads as absent here; the pixel read reports it
        return None
    text = str(value if value is not None else "").strip().upper()
    return text or None


def film_header_from_dataset(dataset: Any) -> FilmHeader:
    """The :class:`FilmHeader` of a pydicom ``Dataset`` (a file's, or one received over the network)."""
    try:
        orientation_value = dataset.get("PatientOrientation")
        parts = [orientation_value] if isinstance(orientation_value, str) else list(orientation_value or [])
        orientation = [str(part).strip().upper() for part in parts]
    except Exception:  # a damaged element reads as absent
        orientation = []
    try:
        age = parse_patient_age(dataset.get("PatientAge"))
    except Exception:  # a damaged element reads as absent
        age = None
    sop_class = _upper_text(dataset, "SOPClassUID")
    return FilmHeader(
        view=_upper_text(dataset, "ViewPosition"),
        age=age,
        body_part=_upper_text(dataset, "BodyPartExamined"),
        presentation_intent=_upper_text(dataset, "PresentationIntentType"),
        sop_class_uid=sop_class,
        patient_orientation=(orientation[0], orientation[1]) if len(orientation) == 2 else None,
    )


def read_view_positions(paths: list[str]) -> list[str | None]:
    """``ViewPosition`` of each DICOM file, upper-case, None where absent (see :func:`read_film_headers`)."""
    return [header.view for header in read_film_headers(paths)]


def read_dicom(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, limits: ReadLimits | None = None
) -> ImageRead:
    """Read a DICOM file as a grey float32 image of shape (rows, columns) in [0, 1].

    Multi-frame files give their first frame, and only that frame is decoded; the metadata's
    ``frames`` holds the count and ``multi_frame`` says whether there were several. Colour files
    (RGB, YBR, PALETTE COLOR) are converted to luma. The header is checked against ``limits``
    (default: :class:`ReadLimits` with ``max_pixels``) before any pixel data is read or inflated.

    Raises:
        MissingFileError: the file does not exist.
        DecompressionBombError: the header declares a side, a pixel count (Rows x Columns x
            NumberOfFrames) or decoded bytes over the limits, or deflated data inflates beyond
            what the header declares; checked before decoding.
        DicomError: the file is not DICOM, the header cannot be parsed, pixel data is missing
            or corrupt, the transfer syntax needs a handler that is not installed, or pydicom
            is older than 3.0.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "file does not exist")
    try:
        with path.open("rb") as stream:
            return read_dicom_stream(stream, path, limits=limits or ReadLimits(max_pixels=max_pixels))
    except OSError as error:
        raise DicomError(path, f"cannot read the file: {error.strerror or error}") from None


def read_dicom_bytes(data: bytes, *, label: str = "upload", limits: ReadLimits | None = None) -> ImageRead:
    """:func:`read_dicom` of a file held in memory (an upload, a received object); errors name ``label``."""
    return read_dicom_stream(io.BytesIO(data), label, limits=limits or ReadLimits())


def read_dicom_stream(stream: BinaryIO, label: str | Path, *, limits: ReadLimits) -> ImageRead:
    """:func:`read_dicom` of a seekable binary stream at its start; errors name ``label``."""
    check_pydicom_version(label)
    from pydicom.errors import InvalidDicomError

    silence_pydicom()
    head = stream.read(132)
    stream.seek(0)
    if sniff_format(head) != "dicom":
        raise DicomError(label, f"not a DICOM file (starts with {head[:8]!r})")
    has_preamble = head[128:132] == b"DICM"
    dataset = None
    try:
        dataset = read_within_limits(label, stream, head, limits)
        if not has_preamble:
            _set_transfer_syntax_from_encoding(label, dataset)
        return _decode(label, dataset, limits)
    except (DicomError, DecompressionBombError):
        raise
    except InvalidDicomError as error:
        raise DicomError(label, f"not a valid DICOM file: {_scrub(str(error), dataset)}") from None
    except (MemoryError, RecursionError):
        raise
    except Exception as error:  # pydicom raises many types for damaged files
        reason = f"cannot decode DICOM: {type(error).__name__}: {_scrub(str(error), dataset)}"
        raise DicomError(label, reason) from None


def _set_transfer_syntax_from_encoding(path: str | Path, dataset: Any) -> None:
    """A data set without file meta information has no transfer syntax; pydicom's decoders need
    one, so take the encoding pydicom detected while parsing (always native, never compressed)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if getattr(dataset, "file_meta", None) is None:
        dataset.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" in dataset.file_meta:
        return
    implicit, little = dataset.original_encoding
    syntaxes = {
        (True, True): ImplicitVRLittleEndian,
        (False, True): ExplicitVRLittleEndian,
        (False, False): ExplicitVRBigEndian,
    }
    if (implicit, little) not in syntaxes:
        raise DicomError(
            path, "no file meta information and an implicit VR big endian encoding, which DICOM does not define"
        )
    dataset.file_meta.TransferSyntaxUID = syntaxes[(implicit, little)]


def _decode(path: str | Path, dataset: Any, limits: ReadLimits) -> ImageRead:
    from pydicom.pixels import get_decoder, pixel_array

    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        raise DicomError(path, "no pixel data element (7FE0,0010)")
    rows = int(dataset.get("Rows", 0) or 0)
    columns = int(dataset.get("Columns", 0) or 0)
    if rows <= 0 or columns <= 0:
        raise DicomError(path, f"Rows={rows}, Columns={columns}; the image has no pixels")
    frames = frame_count(path, dataset)
    # Every frame counts: a small file of many compressed frames is a decompression bomb even
    # though only the first frame is ever decoded here.
    check_declared(path, declared_by_header(path, dataset), limits)
    file_meta = getattr(dataset, "file_meta", None)
    transfer_syntax = getattr(file_meta, "TransferSyntaxUID", None) if file_meta else None
    if transfer_syntax is not None and transfer_syntax.is_compressed:
        try:
            decoder = get_decoder(transfer_syntax)
        except NotImplementedError:
            raise DicomError(
                path, f"transfer syntax {transfer_syntax.name} ({transfer_syntax}) is not supported by pydicom"
            ) from None
        if not decoder.is_available:
            raise DicomError(
                path,
                f"compressed transfer syntax {transfer_syntax.name} ({transfer_syntax}) cannot "
                f"be decoded: no pixel data handler is installed; {DICOM_HANDLER_HINT}",
            )
    if frames > 1:
        logger.info("%s holds %d frames; only the first is decoded and scored", path, frames)
    stored = np.asarray(pixel_array(dataset, index=0))  # (rows, columns[, samples]), frame 0 only
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR" and stored.ndim == 2:
        array = _palette_to_grey(stored, dataset)
        return ImageRead(array, _metadata(dataset, transfer_syntax, frames, "none", "palette_color"))
    if stored.ndim == 3:  # (rows, columns, 3) colour: pydicom has converted YBR to RGB
        grey = stored[..., 0] * 0.299 + stored[..., 1] * 0.587 + stored[..., 2] * 0.114
        top = float(2 ** int(dataset.get("BitsStored", 8)) - 1)
        array = np.clip(grey / top, 0.0, 1.0).astype(np.float32)
        return ImageRead(array, _metadata(dataset, transfer_syntax, frames, "none", "none"))
    if stored.ndim != 2:
        raise DicomError(path, f"unexpected pixel array shape {stored.shape}")
    values, low, high, modality_step = _modality(path, stored, dataset)
    values, low, high, voi_step = _voi(values, low, high, dataset)
    if high > low:
        values -= low  # in place: `values` is always a fresh array of this function's own
        values /= high - low
        array = np.clip(values, 0.0, 1.0, out=values)
    else:
        array = np.zeros_like(values)
    used_fraction = None
    if voi_step == "none":  # a window or VOI LUT says how to show the film: never second-guessed
        stretch = stretch_narrow_range(array, levels=int(high - low) + 1)
        array, used_fraction = stretch.array, stretch.used_fraction
    if photometric == "MONOCHROME1" or _presentation_shape(dataset) == "INVERSE":
        # Low values are white in MONOCHROME1. PS3.3 C.8.11.7 pairs MONOCHROME1 with INVERSE,
        # which names the same inversion, so the two together still invert once.
        array = 1.0 - array
    metadata = _metadata(dataset, transfer_syntax, frames, modality_step, voi_step)
    if used_fraction is not None:
        metadata["range_stretched_from"] = round(used_fraction, 4)
        logger.info(
            "%s: its values span %.1f%% of the range of %d stored bits and it has no window; "
            "stretched to its own minimum and maximum",
            path,
            100 * used_fraction,
            metadata.get("bits_stored", 0),
        )
    return ImageRead(array.astype(np.float32, copy=False), metadata)


def _presentation_shape(dataset: Any) -> str:
    """``PresentationLUTShape`` (IDENTITY or INVERSE), upper case; empty when absent."""
    return str(dataset.get("PresentationLUTShape", "") or "").strip().upper()


def _palette_to_grey(stored: np.ndarray, dataset: Any) -> np.ndarray:
    """A PALETTE COLOR frame through its red, green and blue tables, then to luma in [0, 1]."""
    from pydicom.pixels import apply_color_lut

    colour = np.asarray(apply_color_lut(stored, dataset))[..., :3]  # an alpha table is dropped
    # apply_color_lut returns uint8 for 8-bit tables and uint16 for 16-bit ones (the descriptor's
    # third value), so the dtype is the range.
    top = 255.0 if colour.dtype == np.uint8 else 65535.0
    colour = colour.astype(np.float64)
    grey = colour[..., 0] * 0.299 + colour[..., 1] * 0.587 + colour[..., 2] * 0.114
    return np.clip(grey / top, 0.0, 1.0).astype(np.float32)


def _stored_range(dataset: Any) -> tuple[float, float]:
    bits_stored = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 16)))
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        return float(-(2 ** (bits_stored - 1))), float(2 ** (bits_stored - 1) - 1)
    return 0.0, float(2**bits_stored - 1)


def _finite(path: str | Path, keyword: str, value: Any, default: float) -> float:
    """A header number, refused with a DicomError naming the key when it is not finite."""
    if value is None or str(value).strip() == "":
        return default
    number = float(value)
    if not math.isfinite(number):
        raise DicomError(path, f"{keyword}={number} is not a finite number")
    return number


def _modality(path: str | Path, stored: np.ndarray, dataset: Any) -> tuple[np.ndarray, float, float, str]:
    """Apply the Modality LUT; return values and the range they can take."""
    low, high = _stored_range(dataset)
    if "ModalityLUTSequence" in dataset and len(dataset.ModalityLUTSequence):
        from pydicom.pixels import apply_modality_lut

        item = dataset.ModalityLUTSequence[0]
        output_bits = int(item.LUTDescriptor[2])
        values = apply_modality_lut(stored, dataset).astype(np.float64)
        return values, 0.0, float(2**output_bits - 1), "modality_lut_sequence"
    # A slope of 0 would erase the film; writers that store it mean "no rescale".
    slope = _finite(path, "RescaleSlope", dataset.get("RescaleSlope"), 1.0) or 1.0
    intercept = _finite(path, "RescaleIntercept", dataset.get("RescaleIntercept"), 0.0)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    # Each full-size temporary costs page faults that rival the arithmetic, so the rescale works
    # in place, and in float32 where that is exact (integers below 2**24: 8- to 16-bit values
    # under an integer rescale, the usual case). A fractional rescale stays in float64, so the
    # pixels are the same as before either way.
    exact_in_float32 = (
        stored.dtype.itemsize <= 2
        and slope.is_integer()
        and intercept.is_integer()
        and max(abs(ends[0]), abs(ends[1])) < 2**24
    )
    values = stored.astype(np.float32 if exact_in_float32 else np.float64)
    if slope != 1.0:
        values *= slope
    if intercept != 0.0:
        values += intercept
    step = "rescale" if (slope, intercept) != (1.0, 0.0) else "none"
    return values, ends[0], ends[1], step


def _voi(values: np.ndarray, low: float, high: float, dataset: Any) -> tuple[np.ndarray, float, float, str]:
    """Apply the VOI LUT or the first window; return values and the range they can take."""
    if "VOILUTSequence" in dataset and len(dataset.VOILUTSequence):
        from pydicom.pixels import apply_voi  # reads LUTData in any of its VRs (US, OW)

        item = dataset.VOILUTSequence[0]
        output_bits = int(item.LUTDescriptor[2])
        table = apply_voi(np.rint(values).astype(np.int64), dataset, index=0).astype(np.float64)
        # The descriptor's bit depth is the LUT's range; some writers get it wrong, so fall back
        # to the largest entry when it is implausible.
        top = float(2**output_bits - 1) if 8 <= output_bits <= 16 else max(float(table.max()), 1.0)
        return table, 0.0, top, "voi_lut_sequence"
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        center = _first_number(dataset.WindowCenter)
        width = _first_number(dataset.WindowWidth)
        function = str(dataset.get("VOILUTFunction", "") or "LINEAR").strip().upper()
        if function not in WINDOW_FUNCTIONS:
            logger.debug(
                "VOILUTFunction %r is not one of %s; using LINEAR, the standard's default",
                function[:16],
                WINDOW_FUNCTIONS,
            )
            function = "LINEAR"
        if center is not None and width is not None and width > 0:
            return _window(values, center, width, function), 0.0, 1.0, f"window_{function.lower()}"
    return values, low, high, "none"


def _first_number(value: Any) -> float | None:
    """WindowCenter/WindowWidth may be multi-valued; the first pair is the default view.

    None when the value is missing, not a number, or not finite.
    """
    try:
        if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
            value = list(value)[0]
        number = float(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Windowing of DICOM PS3.3 C.11.2.1.2 by pydicom's ``apply_windowing``, mapped to [0, 1]."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_windowing

    if function == "LINEAR" and width < 1.0:
        width = 1.0  # the standard requires >= 1 and pydicom refuses less; 1 is its threshold limit
    # apply_windowing maps onto the output range it derives from BitsStored and the rescale. A
    # proxy holding the window and a 1-bit unsigned range makes that range exactly [0, 1]; the
    # file's own bits and rescale are accounted for by the caller (a negative slope would turn
    # pydicom's range upside down).
    proxy = Dataset()
    proxy.PhotometricInterpretation = "MONOCHROME2"
    proxy.PixelRepresentation = 0
    proxy.BitsStored = 1
    proxy.add_new(0x00281050, "FD", center)  # WindowCenter, as a float (no DS formatting)
    proxy.add_new(0x00281051, "FD", width)  # WindowWidth
    proxy.VOILUTFunction = function
    return np.asarray(apply_windowing(values, proxy), dtype=np.float64)


def _metadata(dataset: Any, transfer_syntax: Any, frames: int, modality_step: str, voi_step: str) -> dict[str, Any]:
    """Only technical, non-identifying tags."""
    return {
        "format": "dicom",
        "transfer_syntax": str(transfer_syntax) if transfer_syntax is not None else None,
        "photometric_interpretation": str(dataset.get("PhotometricInterpretation", "")),
        "bits_allocated": int(dataset.get("BitsAllocated", 0) or 0),
        "bits_stored": int(dataset.get("BitsStored", 0) or 0),
        "width": int(dataset.Columns),
        "height": int(dataset.Rows),
        "frames": frames,
        "multi_frame": frames > 1,
        "frame_decoded": 0,
        "modality": str(dataset.get("Modality", "")),
        "view": str(dataset.get("ViewPosition", "")) or None,
        "modality_lut": modality_step,
        "voi_lut": voi_step,
        "presentation_lut_shape": _presentation_shape(dataset) or None,
    }


def _scrub(message: str, dataset: Any) -> str:
    """Remove identifying header values from a message (pydicom's texts may quote them)."""
    if dataset is None:
        return message
    for keyword in IDENTIFYING_KEYWORDS:
        try:
            value = dataset.get(keyword)
        except Exception:  # a damaged element must not stop the error report
            continue
        if value is None:
            continue
        for text in {str(value), str(getattr(value, "original_string", "") or "")}:
            if len(text.strip()) >= 2:
                message = message.replace(text, "<redacted>")
    return message
