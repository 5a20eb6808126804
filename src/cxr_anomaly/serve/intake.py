"""From a request to a decoded film, within the service's admission limits.

:class:`FilmIntake` holds the bound on requests in flight, the memory budget of decoding and the
decoding pool: an upload is read once (:func:`~cxr_anomaly.serve.upload.read_upload`), its header
probed without decoding (:func:`probe_upload`), room for its decoding reserved in the budget from
what the header declares, then decoded from memory in the pool (:func:`decode_upload`).
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from starlette.requests import Request

from ..errors import DecompressionBombError, InputFileError
from ..io import ProbedImage, probe_image_bytes, read_image_bytes, reduce_film, sniff_format
from ..scope import FilmScope, upload_scope
from .admission import AdmissionStatistics, InFlightLimit, MemoryBudget
from .errors import ApiError
from .settings import MIN_IMAGE_SIDE, ServiceSettings
from .upload import read_upload

ACCEPTED_FORMATS = ("png", "jpeg", "dicom")
# Peak bytes a decoded pixel of the first frame may cost while a film is read, resized and kept
# for the heatmap: about twice the peaks measured in docs/results.md, since DICOM windowing
# computes in float64.
DECODE_BYTES_PER_PIXEL = 16


@dataclass
class DecodedUpload:
    """An uploaded film, decoded."""

    film: np.ndarray  # float32 (H0, W0) in [0, 1], original resolution
    model_input: np.ndarray  # (S, S) codes: uint8, or uint16 for a film of more than 256 grey levels
    format: str
    scope: FilmScope | None = None  # set once decoded, from the header and the pixels


def _accepted_format(data: bytes) -> str:
    """The upload's format sniffed from its bytes; 415 unless PNG, JPEG or DICOM."""
    kind = sniff_format(data[:132])
    if kind not in ACCEPTED_FORMATS:
        raise ApiError(
            415,
            "unsupported_format",
            f"the upload is not a PNG, JPEG or DICOM file (detected: {kind or 'unknown'}, "
            f"first bytes {data[:8]!r}); the file name and declared type are not trusted",
        )
    return kind


def probe_upload(data: bytes, settings: ServiceSettings) -> ProbedImage:
    """Sniff the upload and check what its header declares, decoding no pixel.

    Raises:
        ApiError: 415 for a format other than PNG, JPEG or DICOM; 413 for a side, pixel count or
            decoded size over the limits; 422 for a header that cannot be read.
    """
    kind = _accepted_format(data)
    try:
        return probe_image_bytes(data, limits=settings.read_limits)
    except DecompressionBombError as error:
        raise ApiError(413, "image_too_large", f"image dimensions exceed the limit: {error.reason}") from None
    except InputFileError as error:
        raise ApiError(422, "unreadable_image", f"cannot decode the {kind.upper()} upload: {error.reason}") from None


def decode_bytes_needed(probed: ProbedImage) -> int:
    """Peak bytes that decoding a probed film may take: its first frame's pixels at
    :data:`DECODE_BYTES_PER_PIXEL`, plus every frame's bytes for a DICOM (inflated or stored)."""
    declared = probed.declared
    first_frame = declared.width * declared.height * DECODE_BYTES_PER_PIXEL
    return first_frame + (declared.decoded_bytes if probed.format == "dicom" else 0)


def decode_upload(data: bytes, settings: ServiceSettings, image_size: int) -> DecodedUpload:
    """Sniff, size-check and decode uploaded bytes, in memory.

    Raises:
        ApiError: 415 for a format other than PNG, JPEG or DICOM; 413 for a side, pixel count or
            decoded size over the limits (checked on the header, before decoding); 422 for a file
            that cannot be decoded or an image smaller than 16 pixels a side.
    """
    kind = _accepted_format(data)
    try:
        image = read_image_bytes(data, limits=settings.read_limits)
    except DecompressionBombError as error:
        raise ApiError(413, "image_too_large", f"image dimensions exceed the limit: {error.reason}") from None
    except InputFileError as error:
        raise ApiError(422, "unreadable_image", f"cannot decode the {kind.upper()} upload: {error.reason}") from None
    height, width = image.array.shape
    if max(height, width) > settings.max_image_side:  # an EXIF rotation cannot grow it; a second line
        raise ApiError(
            413,
            "image_too_large",
            f"image is {width}x{height}; the largest accepted side is {settings.max_image_side} pixels",
        )
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ApiError(
            422, "image_too_small", f"image is {width}x{height}; the smallest accepted side is {MIN_IMAGE_SIDE} pixels"
        )
    return DecodedUpload(image.array, reduce_film(image, image_size), kind)


class FilmIntake:
    """The admission limits and the decoding pool of one service.

    Args:
        settings: the limits.
        image_size: the model's input side.
        fitted_on_adults: whether the model was fitted on adults only (for the film's scope).
    """

    def __init__(self, settings: ServiceSettings, image_size: int, *, fitted_on_adults: bool) -> None:
        self.settings = settings
        self.image_size = image_size
        self.fitted_on_adults = fitted_on_adults
        self.statistics = AdmissionStatistics()
        self.in_flight = InFlightLimit(settings.max_in_flight, self.statistics)
        self.memory = MemoryBudget(settings.memory_budget_bytes, settings.admission_wait_seconds, self.statistics)
        self.pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="cxr-decode")

    async def read_and_decode(self, request: Request) -> DecodedUpload:
        """The upload, read once, its header checked, decoded in the pool within the memory budget.

        Raises:
            ApiError: 4xx for the upload (see :func:`read_upload`, :func:`decode_upload`).
            ServiceBusyError: no room in the memory budget came in time.
        """
        data = await read_upload(request, self.settings.max_upload_bytes)
        loop = asyncio.get_running_loop()
        probed = await loop.run_in_executor(self.pool, probe_upload, data, self.settings)
        async with self.memory.reserve(decode_bytes_needed(probed)):
            decoded = await loop.run_in_executor(self.pool, decode_upload, data, self.settings, self.image_size)
        # in the pool too: a DICOM header is parsed there, off the event loop
        decoded.scope = await loop.run_in_executor(
            self.pool,
            functools.partial(
                upload_scope, data, decoded.format, decoded.model_input, fitted_on_adults=self.fitted_on_adults
            ),
        )
        return decoded

    def close(self) -> None:
        """Stop the decoding threads."""
        self.pool.shutdown(wait=False, cancel_futures=True)
