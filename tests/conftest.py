"""Shared pytest fixtures.

Real-data tests read the public chest X-ray collections from ``../shared/data`` beside the
repository root (present in CI); they skip with a clear message only where that folder is absent.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPOSITORY_ROOT.parent / "shared" / "data"

# The suite changes nothing outside the checkout: onnxruntime writes a device id
# (Microsoft/DeveloperTools/.onnxruntime) and matplotlib its font list under $XDG_CACHE_HOME
# (~/.cache by default) as soon as they are imported, so both go to a temporary folder removed
# at the end of the session. Playwright's browsers stay where `make browser` put them.
_USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
os.environ.setdefault("PLAYWRIGHT_BROWSERS_PATH", str(_USER_CACHE / "ms-playwright"))
TEST_CACHE_HOME = Path(tempfile.mkdtemp(prefix="cxr-anomaly-test-cache-"))
os.environ["XDG_CACHE_HOME"] = str(TEST_CACHE_HOME)
os.environ["MPLCONFIGDIR"] = str(TEST_CACHE_HOME / "matplotlib")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the session's temporary cache folder."""
    shutil.rmtree(TEST_CACHE_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Return the folder of real chest X-ray data, or skip the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"../shared/data not found (looked for {SHARED_DATA}); real-data tests need the "
            "public chest X-ray collections beside the repository checkout"
        )
    return SHARED_DATA


@dataclass(frozen=True)
class TinyModel:
    """A tang2019 detector trained for one epoch on 64 NIH1000 training normals, for tests that need one.

    Attributes:
        checkpoint: the calibrated ``model.pt`` (calibrated on 24 validation normals).
        manifest: CSV of the training rows plus 24 normal and 24 abnormal validation rows.
        nih1000: the NIH1000 folder.
    """

    checkpoint: Path
    manifest: Path
    nih1000: Path


@pytest.fixture(scope="session")
def tiny_nih_model(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Train a small real tang2019 detector once per test session (1 epoch, 64 normals, 16 base channels)."""
    import pandas as pd

    from cxr_anomaly.config import with_overrides
    from cxr_anomaly.jobs.train import train_job
    from cxr_anomaly.models.tang2019.config import tang2019_config

    nih1000 = shared_data / "nih1000"
    manifest = pd.read_csv(nih1000 / "manifest.csv")
    manifest["path"] = [str(nih1000 / path) for path in manifest["path"]]
    train = manifest[(manifest["split"] == "train") & (manifest["label"] == 0)].head(64)
    validation = manifest[manifest["split"] == "valid"].groupby("label").head(24)
    folder = tmp_path_factory.mktemp("tiny_nih_model")
    manifest_path = folder / "manifest.csv"
    pd.concat([train, validation]).to_csv(manifest_path, index=False)
    config = with_overrides(tang2019_config(), "model", base_channels=16, latent_dim=32)
    config = with_overrides(config, "train", epochs=1, batch_size=32, seed=0, device="cpu")
    outcome = train_job([manifest_path], folder / "run", config, progress=False)
    return TinyModel(outcome.checkpoint, manifest_path, nih1000)


PATIENT_IDENTIFIERS = {"PatientName": "Doe^Jane", "PatientID": "PID-93417", "PatientBirthDate": "19610203"}


def write_dicom_film(
    pixels: object, path: Path, *, study_uid: str, sop_uid: str, view: str | None = None, age: str | None = None
) -> Path:
    """Save uint8 pixels (rows, columns) as a DICOM DX film carrying fake patient identifiers
    (and ``ViewPosition`` = ``view``, ``PatientAge`` = ``age`` when given)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = sop_uid
    dataset.StudyInstanceUID = study_uid
    dataset.Modality = "DX"
    if view is not None:
        dataset.ViewPosition = view
    if age is not None:
        dataset.PatientAge = age
    for keyword, value in PATIENT_IDENTIFIERS.items():
        setattr(dataset, keyword, value)
    dataset.set_pixel_data(
        np.ascontiguousarray(pixels, dtype=np.uint8), photometric_interpretation="MONOCHROME2", bits_stored=8
    )
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = sop_uid  # set_pixel_data made a new one
    dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def dicom_writer() -> Callable[..., Path]:
    """:func:`write_dicom_film`, for tests in other folders that cannot import this module."""
    return write_dicom_film


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run a module's tests on one PyTorch thread: tiny networks train several times faster on
    one thread than on two contended ones. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def nih_train_normals(shared_data: Path) -> np.ndarray:
    """The first 40 normal films of NIH1000's train split, 64x64 uint8 (40, 64, 64)."""
    import pandas as pd

    from cxr_anomaly.io import read_image, resize_grey

    folder = shared_data / "nih1000"
    manifest = pd.read_csv(folder / "manifest.csv")
    rows = manifest[(manifest["split"] == "train") & (manifest["label"] == 0)].head(40)
    return np.stack([resize_grey(read_image(folder / path).array, 64) for path in rows["path"]])
