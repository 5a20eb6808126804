"""Limits a film must meet before it is decoded, checked against its header alone.

A small upload can declare a huge image (a PNG of 65535 x 1024 pixels compresses to 130 KB; a
deflated DICOM of zeros inflates a thousand-fold). Every reader therefore reads the declared
width, height, frames and bits from the header, checks them against a :class:`ReadLimits`, and
only then decodes; deflated DICOM data is inflated by :func:`bounded_inflate`, which stops at the
size the header allows. Nothing here needs Pillow or pydicom.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import DecompressionBombError
from .image_base import DEFAULT_MAX_PIXELS

# Longer than any chest film (about 4300 pixels) or mammogram (about 5000) a reader meets.
DEFAULT_MAX_SIDE = 16384
# Decoded bytes a film may declare: a 100-megapixel film of 16-bit samples, or RGB at 8 bits.
DEFAULT_MAX_DECODED_BYTES = 3 * DEFAULT_MAX_PIXELS
_INFLATE_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ReadLimits:
    """What a film may declare before any of its pixels are decoded.

    Attributes:
        max_pixels: the most pixels, all frames counted (width x height x frames).
        max_side: the longest accepted width or height.
        max_decoded_bytes: the most bytes its pixel data may hold once decompressed, all frames,
            samples and bits counted (a 16-bit film holds 2 bytes a pixel, RGB 3).
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int = DEFAULT_MAX_SIDE
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_side", "max_decoded_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; expected a positive number")

    @classmethod
    def for_side(cls, max_side: int) -> ReadLimits:
        """Limits of a service that accepts films up to ``max_side`` a side: one such 16-bit grey
        film, or an 8-bit RGB one, fits the byte budget."""
        return cls(max_pixels=max_side * max_side, max_side=max_side, max_decoded_bytes=3 * max_side * max_side)


@dataclass(frozen=True)
class DeclaredImage:
    """What a header says of the image it precedes.

    Attributes:
        width: columns.
        height: rows.
        frames: frames (1 for PNG and JPEG).
        samples: samples (channels) a pixel.
        bytes_per_sample: bytes of one decoded sample (1 for 8 bits, 2 for 9 to 16 bits).
    """

    width: int
    height: int
    frames: int = 1
    samples: int = 1
    bytes_per_sample: int = 1

    @property
    def pixels(self) -> int:
        """Pixels of every frame."""
        return self.width * self.height * self.frames

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the decompressed pixel data, every frame."""
        return self.pixels * self.samples * self.bytes_per_sample


def check_declared(path: str | Path, declared: DeclaredImage, limits: ReadLimits) -> None:
    """Refuse an image whose header declares more than ``limits`` allow.

    Raises:
        DecompressionBombError: a side, the pixel count or the decoded bytes exceed the limits;
            the message gives the declared size and the limit.
    """
    size = f"{declared.width}x{declared.height}"
    if declared.frames > 1:
        size += f" x {declared.frames} frames"
    if max(declared.width, declared.height) > limits.max_side:
        raise DecompressionBombError(path, f"{size}: a side of more than {limits.max_side} pixels exceeds the limit")
    if declared.pixels > limits.max_pixels:
        raise DecompressionBombError(
            path, f"{size} = {declared.pixels} pixels exceeds the limit of {limits.max_pixels}"
        )
    if declared.decoded_bytes > limits.max_decoded_bytes:
        raise DecompressionBombError(
            path,
            f"{size} of {declared.samples} sample(s) at {8 * declared.bytes_per_sample} bits = "
            f"{declared.decoded_bytes} bytes decoded exceeds the limit of {limits.max_decoded_bytes}",
        )


def bounded_inflate(path: str | Path, compressed: bytes, max_bytes: int) -> io.BytesIO:
    """Inflate raw deflate data (no zlib header: DICOM PS3.5 A.5), refusing more than ``max_bytes``.

    The output, returned as a stream at its start, never grows past ``max_bytes`` plus one chunk
    of 1 MiB, whatever the input would inflate to.

    Raises:
        DecompressionBombError: the data inflates to more than ``max_bytes``.
        zlib.error: the data is not valid deflate data.
    """
    decompressor = zlib.decompressobj(-zlib.MAX_WBITS)
    # One growing buffer, not a list of pieces joined at the end: the join would double the peak.
    inflated = io.BytesIO()
    produced = 0
    pending = compressed
    while pending and not decompressor.eof:
        piece = decompressor.decompress(pending, _INFLATE_CHUNK_BYTES)
        pending = decompressor.unconsumed_tail
        produced += len(piece)
        if produced > max_bytes:
            raise DecompressionBombError(
                path, f"the deflated data inflates to more than {max_bytes} bytes, the most its header allows"
            )
        inflated.write(piece)
    tail = decompressor.flush()
    if produced + len(tail) > max_bytes:
        raise DecompressionBombError(
            path, f"the deflated data inflates to more than {max_bytes} bytes, the most its header allows"
        )
    inflated.write(tail)
    inflated.seek(0)
    return inflated


def inflate_prefix(compressed: bytes, max_bytes: int) -> bytes:
    """The first ``max_bytes`` (at most) of raw deflate data, inflating nothing beyond them.

    Raises:
        zlib.error: the data is not valid deflate data.
    """
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(compressed, max_bytes)
