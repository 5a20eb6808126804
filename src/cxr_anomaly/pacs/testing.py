"""Synthetic DICOM films built from real chest X-ray PNG/JPEG files, for tests of the PACS side.

The header is that of a plausible digital radiograph (DX "for presentation", or CR): the
modules the IOD requires are filled with fixed, obviously fake values (no real person is named),
so the files are accepted by Orthanc and pass ``dciodvfy``. UIDs derive from the inputs, so the
same PNG, patient and study always give the same film (a resend is the same instance).
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io import read_image
from .results import derived_uid

if TYPE_CHECKING:
    from pydicom import Dataset

logger = logging.getLogger(__name__)

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SUPPORTED_MODALITIES: dict[str, str] = {"DX": DX_FOR_PRESENTATION, "CR": CR_IMAGE_STORAGE}
SUPPORTED_VIEWS: tuple[str, ...] = ("PA", "AP", "LL", "RL", "LATERAL")
IMAGER_PIXEL_SPACING_MM = 0.143  # a typical flat-panel detector; the films are resized, so this is nominal


def _uid(*parts: str) -> str:
    """A ``2.25.`` UID derived from ``parts``: the same inputs always give the same UID."""
    return derived_uid("test film", *parts)


def film_dataset_from_png(
    path: str | Path,
    *,
    patient_id: str,
    study_uid: str | None,
    bits: int = 12,
    modality: str = "DX",
    view_position: str = "PA",
    patient_age: str | None = None,
    patient_sex: str = "O",
) -> Dataset:
    """A DICOM film (``pydicom.Dataset`` with file meta) holding the grey pixels of an image file.

    Args:
        path: a PNG, JPEG or other image that :func:`cxr_anomaly.io.read_image` reads.
        patient_id: the fake patient ID; the patient name is ``TEST^<patient_id>``.
        study_uid: the Study Instance UID; None derives one from ``patient_id`` (one study per patient).
        bits: bits stored (8 to 16); 8 allocates 8 bits, more allocate 16.
        modality: ``"DX"`` (Digital X-Ray Image Storage - For Presentation) or ``"CR"``.
        view_position: DICOM ViewPosition (``PA``, ``AP``, ``LL``, ``RL``, ``LATERAL``).
        patient_age: DICOM age string such as ``"045Y"``, or None to leave it out.
        patient_sex: ``M``, ``F`` or ``O``.

    Returns:
        The data set, MONOCHROME2, explicit VR little endian; save it with
        ``dataset.save_as(path, enforce_file_format=True)``.

    Raises:
        ValueError: ``bits``, ``modality`` or ``view_position`` is not supported.
    """
    if not 8 <= bits <= 16:
        raise ValueError(f"bits={bits}: bits stored must be between 8 and 16")
    if modality not in SUPPORTED_MODALITIES:
        raise ValueError(f"modality={modality!r}: expected one of {sorted(SUPPORTED_MODALITIES)}")
    if view_position not in SUPPORTED_VIEWS:
        raise ValueError(f"view_position={view_position!r}: expected one of {SUPPORTED_VIEWS}")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    path = Path(path)
    grey = read_image(path).array  # float32 (H, W) in [0, 1]
    top = (1 << bits) - 1
    pixels = np.rint(grey * top).astype(np.uint8 if bits == 8 else np.uint16)
    study_uid = study_uid or _uid("study", patient_id)
    sop_class = SUPPORTED_MODALITIES[modality]
    sop_uid = _uid("instance", study_uid, path.name, str(bits), modality, view_position)
    now = datetime.datetime.now()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SpecificCharacterSet = "ISO_IR 100"
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = sop_uid
    _patient_and_study(
        dataset, patient_id=patient_id, study_uid=study_uid, patient_age=patient_age, patient_sex=patient_sex, now=now
    )
    _series_and_equipment(dataset, modality=modality, study_uid=study_uid, view_position=view_position)
    lossy_source = path.suffix.lower() in (".jpg", ".jpeg")
    _image(
        dataset, pixels, bits=bits, modality=modality, view_position=view_position, now=now, lossy_source=lossy_source
    )
    logger.debug("built a %s test film %s from %s", modality, sop_uid, path.name)
    return dataset


def _patient_and_study(
    dataset: Dataset,
    *,
    patient_id: str,
    study_uid: str,
    patient_age: str | None,
    patient_sex: str,
    now: datetime.datetime,
) -> None:
    """Patient and General Study modules, with fake identifiers."""
    dataset.PatientName = f"TEST^{patient_id}"
    dataset.PatientID = patient_id
    dataset.PatientBirthDate = ""
    dataset.PatientSex = patient_sex
    if patient_age is not None:
        dataset.PatientAge = patient_age
    dataset.StudyInstanceUID = study_uid
    dataset.StudyDate = now.strftime("%Y%m%d")
    dataset.StudyTime = now.strftime("%H%M%S")
    dataset.ReferringPhysicianName = ""
    dataset.StudyID = "1"
    dataset.AccessionNumber = ""
    dataset.StudyDescription = "XR CHEST (cxr-anomaly test film)"


def _series_and_equipment(dataset: Dataset, *, modality: str, study_uid: str, view_position: str) -> None:
    """General/DX/CR Series and General Equipment modules."""
    dataset.Modality = modality
    dataset.SeriesInstanceUID = _uid("series", study_uid, modality, view_position)
    dataset.SeriesNumber = 1
    dataset.SeriesDescription = f"CHEST {view_position}"
    dataset.BodyPartExamined = "CHEST"
    dataset.Manufacturer = "cxr-anomaly test films"
    if modality == "DX":
        dataset.PresentationIntentType = "FOR PRESENTATION"
    else:
        dataset.ViewPosition = view_position


def _image(
    dataset: Dataset,
    pixels: np.ndarray,
    *,
    bits: int,
    modality: str,
    view_position: str,
    now: datetime.datetime,
    lossy_source: bool,
) -> None:
    """General Image, Image Pixel, DX/CR Image, DX Anatomy, Detector and Positioning, VOI LUT."""
    from pydicom.dataset import Dataset

    dataset.InstanceNumber = 1
    dataset.ContentDate = now.strftime("%Y%m%d")
    dataset.ContentTime = now.strftime("%H%M%S")
    dataset.AcquisitionDate = dataset.ContentDate
    dataset.AcquisitionTime = dataset.ContentTime
    dataset.PatientOrientation = ["L", "F"] if view_position in ("PA", "AP") else ["P", "F"]
    dataset.ImageType = ["ORIGINAL", "PRIMARY"]
    dataset.BurnedInAnnotation = "NO"
    dataset.LossyImageCompression = "01" if lossy_source else "00"
    dataset.set_pixel_data(
        np.ascontiguousarray(pixels),
        photometric_interpretation="MONOCHROME2",
        bits_stored=bits,
        generate_instance_uid=False,
    )
    dataset.RescaleIntercept = 0
    dataset.RescaleSlope = 1
    dataset.RescaleType = "US"
    dataset.WindowCenter = (1 << bits) // 2
    dataset.WindowWidth = 1 << bits
    dataset.PresentationLUTShape = "IDENTITY"
    dataset.ImagerPixelSpacing = [IMAGER_PIXEL_SPACING_MM, IMAGER_PIXEL_SPACING_MM]
    dataset.ViewPosition = view_position
    if modality == "DX":
        dataset.ImageType = ["ORIGINAL", "PRIMARY", ""]
        dataset.PixelIntensityRelationship = "LIN"
        dataset.PixelIntensityRelationshipSign = 1
        dataset.ImageLaterality = "U"
        dataset.DetectorType = "SCINTILLATOR"
        dataset.DetectorConfiguration = "AREA"
        region = Dataset()
        region.CodeValue = "51185008"
        region.CodingSchemeDesignator = "SCT"
        region.CodeMeaning = "Thorax"
        dataset.AnatomicRegionSequence = [region]
        view = Dataset()
        view.CodeValue = {"PA": "399348003", "AP": "399182004"}.get(view_position, "399067008")
        view.CodingSchemeDesignator = "SCT"
        view.CodeMeaning = {"PA": "postero-anterior", "AP": "antero-posterior"}.get(view_position, "lateral")
        view.ViewModifierCodeSequence = []
        dataset.ViewCodeSequence = [view]
        dataset.PositionerType = ""
        dataset.AcquisitionContextSequence = []
    else:
        dataset.PhotometricInterpretation = "MONOCHROME2"
