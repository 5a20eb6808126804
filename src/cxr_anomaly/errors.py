"""Exception types raised by cxr-anomaly.

Every error that concerns a file names that file, so a nightly job that fails can be traced to
the one input that caused it. All of them derive from :class:`CxrAnomalyError`, so callers can
catch the project's documented errors without catching programming mistakes.
"""

from __future__ import annotations

from pathlib import Path


class CxrAnomalyError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(CxrAnomalyError, ValueError):
    """A configuration value is invalid; the message names the key and the value."""


class InputFileError(CxrAnomalyError):
    """A single input file cannot be used.

    Attributes:
        path: the offending file.
        reason: a short description of the problem, without the path.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MissingFileError(InputFileError, FileNotFoundError):
    """An input file does not exist."""


class UnreadableImageError(InputFileError):
    """A file exists but is not a decodable image (empty, truncated, corrupt or not an image)."""


class DecompressionBombError(InputFileError):
    """An image declares more pixels than the configured limit."""


class DicomError(InputFileError):
    """A DICOM file cannot be decoded (bad header, missing pixel data, missing codec)."""


class ManifestError(CxrAnomalyError, ValueError):
    """A manifest table is malformed: missing or wrong columns, bad labels or splits."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class NoNormalImagesError(CxrAnomalyError, ValueError):
    """Training was asked for, but the data holds no image labelled normal (label 0)."""


class RefitError(CxrAnomalyError, ValueError):
    """Normal films cannot be added to a fitted model: its family has no incremental refit, or the
    model was fitted before it could; the message says so and how to train again."""


class CheckpointError(CxrAnomalyError):
    """A checkpoint cannot be loaded: unsafe content, wrong format or an incompatible version."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class OutputPathError(CxrAnomalyError):
    """An output file or folder cannot be written; the message names it and the problem."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class TrainingDivergedError(CxrAnomalyError, RuntimeError):
    """Training stopped because the losses became non-finite or the GAN collapsed."""
