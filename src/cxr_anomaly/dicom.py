"""DICOM reading with pydicom: grey float images in [0, 1] where bright means dense.

The display pipeline of DICOM PS3.3 C.11 is applied in order:

1. stored values, masked to ``BitsStored`` by pydicom's decoders (12 of 16 allocated bits, say);
2. the Modality LUT: ``RescaleSlope`` / ``RescaleIntercept``, or a Modality LUT Sequence;
3. the VOI LUT: a VOI LUT Sequence, or the first ``WindowCenter`` / ``WindowWidth`` pair with
   its ``VOILUTFunction`` (LINEAR, LINEAR_EXACT or SIGMOID); without either, the full range that
   the stored bits and the rescale can produce maps to [0, 1] (not the film's own min and max,
   so exposure differences survive as they do for PNG input);
4. ``MONOCHROME1`` films (where low values are white) are inverted so that bone is white.

Compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, HTJ2K) need one of pydicom's optional
pixel data handlers; install them with ``pip install 'cxr-anomaly[dicom]'`` (pylibjpeg,
pylibjpeg-libjpeg, pylibjpeg-openjpeg). A missing handler is reported as a :class:`DicomError`
naming the file, the transfer syntax and the packages to install. RLE Lossless and the
uncompressed syntaxes need nothing extra.

Privacy: no patient-identifying header value (name, id, birth date, accession number,
institution, physicians...) is put in the returned metadata, in a log record or in an error
message; pydicom's own warnings are silenced while reading because they quote element values,
and messages of errors are scrubbed of identifying values as a second line of defence.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DecompressionBombError, DicomError, MissingFileError
from .io import DEFAULT_MAX_PIXELS, ImageRead

logger = logging.getLogger(__name__)

DICOM_HANDLER_HINT = (
    "install a pixel data handler: pip install 'cxr-anomaly[dicom]' "
    "(pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg)"
)

# Header keywords whose values identify a patient, a visit or a person; their values are
# removed from any text this module emits (DICOM PS3.15 Annex E basic profile, abridged).
IDENTIFYING_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthDate",
    "PatientBirthTime", "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName",
    "IssuerOfPatientID", "MedicalRecordLocator", "AccessionNumber", "StudyID",
    "InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName",
    "OperatorsName", "NameOfPhysiciansReadingStudy", "RequestingPhysician", "StationName",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "DeviceSerialNumber",
    "StudyDate", "StudyTime", "AcquisitionDateTime", "ContentDate",
)


def read_dicom(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageRead:
    """Read a DICOM file as a grey float32 image of shape (rows, columns) in [0, 1].

    Multi-frame files give their first frame (the count is in the metadata). Colour files
    (RGB, YBR) are converted to luma.

    Raises:
        MissingFileError: the file does not exist.
        DecompressionBombError: Rows x Columns exceeds ``max_pixels``; checked before decoding.
        DicomError: the header cannot be parsed, pixel data is missing or corrupt, or the
            transfer syntax needs a handler that is not installed.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "file does not exist")
    dataset = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings quote header values
            dataset = pydicom.dcmread(path)
            return _decode(path, dataset, max_pixels)
    except (DicomError, DecompressionBombError):
        raise
    except InvalidDicomError as error:
        raise DicomError(path, f"not a valid DICOM file: {_scrub(str(error), dataset)}") from None
    except (MemoryError, RecursionError):
        raise
    except Exception as error:  # pydicom raises many types for damaged files
        reason = f"cannot decode DICOM: {type(error).__name__}: {_scrub(str(error), dataset)}"
        raise DicomError(path, reason) from None


def _decode(path: Path, dataset: Any, max_pixels: int) -> ImageRead:
    from pydicom.pixels import get_decoder

    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        raise DicomError(path, "no pixel data element (7FE0,0010)")
    rows = int(dataset.get("Rows", 0) or 0)
    columns = int(dataset.get("Columns", 0) or 0)
    if rows <= 0 or columns <= 0:
        raise DicomError(path, f"Rows={rows}, Columns={columns}; the image has no pixels")
    if rows * columns > max_pixels:
        raise DecompressionBombError(
            path, f"{columns}x{rows} = {rows * columns} pixels exceeds the limit of {max_pixels}"
        )
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
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    stored = np.asarray(dataset.pixel_array)
    if frames > 1:
        stored = stored[0]  # (frames, rows, columns[, samples]) -> first frame
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if stored.ndim == 3:  # (rows, columns, 3) colour: pydicom has converted YBR to RGB
        grey = stored[..., 0] * 0.299 + stored[..., 1] * 0.587 + stored[..., 2] * 0.114
        top = float(2 ** int(dataset.get("BitsStored", 8)) - 1)
        array = np.clip(grey / top, 0.0, 1.0).astype(np.float32)
        return ImageRead(array, _metadata(dataset, transfer_syntax, frames, "none", "none"))
    if stored.ndim != 2:
        raise DicomError(path, f"unexpected pixel array shape {stored.shape}")
    values, low, high, modality_step = _modality(stored, dataset)
    values, low, high, voi_step = _voi(values, low, high, dataset)
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    array = np.clip(scaled, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        array = 1.0 - array  # low values are white in MONOCHROME1
    metadata = _metadata(dataset, transfer_syntax, frames, modality_step, voi_step)
    return ImageRead(array.astype(np.float32), metadata)


def _stored_range(dataset: Any) -> tuple[float, float]:
    bits_stored = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 16)))
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        return float(-(2 ** (bits_stored - 1))), float(2 ** (bits_stored - 1) - 1)
    return 0.0, float(2**bits_stored - 1)


def _modality(stored: np.ndarray, dataset: Any) -> tuple[np.ndarray, float, float, str]:
    """Apply the Modality LUT; return values and the range they can take."""
    low, high = _stored_range(dataset)
    if "ModalityLUTSequence" in dataset and len(dataset.ModalityLUTSequence):
        from pydicom.pixels import apply_modality_lut

        item = dataset.ModalityLUTSequence[0]
        output_bits = int(item.LUTDescriptor[2])
        values = apply_modality_lut(stored, dataset).astype(np.float64)
        return values, 0.0, float(2**output_bits - 1), "modality_lut_sequence"
    slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    values = stored.astype(np.float64) * slope + intercept
    ends = sorted((low * slope + intercept, high * slope + intercept))
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
        function = str(dataset.get("VOILUTFunction", "LINEAR")).upper()
        if width is not None and center is not None and width > 0:
            return _window(values, center, width, function), 0.0, 1.0, f"window_{function.lower()}"
    return values, low, high, "none"


def _first_number(value: Any) -> float | None:
    """WindowCenter/WindowWidth may be multi-valued; the first pair is the default view."""
    try:
        if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
            value = list(value)[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Windowing of DICOM PS3.3 C.11.2.1.2, mapped to [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - (center - width / 2.0)) / width, 0.0, 1.0)
    if width < 1:  # LINEAR requires width >= 1; treat a narrower one as a threshold
        return (values > center - 0.5).astype(np.float64)
    return np.clip(((values - (center - 0.5)) / (width - 1.0)) + 0.5, 0.0, 1.0)


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
        "modality": str(dataset.get("Modality", "")),
        "view": str(dataset.get("ViewPosition", "")) or None,
        "modality_lut": modality_step,
        "voi_lut": voi_step,
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
