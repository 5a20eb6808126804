"""Reading a DICOM data set only once its header has passed the reading limits.

pydicom inflates a deflated data set (Deflated Explicit VR Little Endian, PS3.5 A.5) whole before
it parses a single element, even with ``stop_before_pixels``: a 1 MB upload of deflated zeros
becomes gigabytes. Here the file meta information is read first; a deflated data set has its
header inflated alone (at most :data:`DEFLATED_HEADER_BYTES`), its declared Rows, Columns,
NumberOfFrames, SamplesPerPixel and BitsAllocated checked against the
:class:`~cxr_anomaly.read_limits.ReadLimits`, and only then the rest inflated, never beyond what
the header declares. Other transfer syntaxes hold their pixel data as stored, bounded by the
file's size; their header is checked before the pixel data is read too, and compressed pixel
data is decoded only after the same check (in :mod:`cxr_anomaly.dicom`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, BinaryIO

from .errors import DicomError
from .read_limits import (
    DeclaredImage,
    ReadLimits,
    bounded_inflate,
    check_declared,
    inflate_prefix,
)

# The inflated bytes of a deflated data set read before its image size is known: headers of real
# films (overlays and ICC profiles included) are far smaller.
DEFLATED_HEADER_BYTES = 4 * 1024 * 1024
_FILE_META_GROUP = 0x0002
_IMAGE_PIXEL_GROUP = 0x0028  # Rows, Columns, NumberOfFrames, SamplesPerPixel, BitsAllocated
_PIXEL_DATA_GROUP = 0x7FE0


def frame_count(path: str | Path, dataset: Any) -> int:
    """NumberOfFrames: 1 when absent, empty or 0 (as pydicom reads 0; an empty value is set to 1
    on ``dataset`` so that pydicom's decoders agree); other values that are not a positive
    integer are refused with a :class:`DicomError`."""
    value = dataset.get("NumberOfFrames")
    if value is None:
        return 1
    if str(value).strip() == "":
        dataset.NumberOfFrames = 1
        return 1
    try:
        frames = int(value)
    except (TypeError, ValueError):
        raise DicomError(path, f"NumberOfFrames={str(value)[:32]!r} is not an integer") from None
    if frames < 0:
        raise DicomError(path, f"NumberOfFrames={frames}; a film has at least one frame")
    return max(frames, 1)


def declared_by_header(path: str | Path, header: Any) -> DeclaredImage:
    """Rows, Columns, NumberOfFrames, SamplesPerPixel and BitsAllocated of a header (sides 0 when absent).

    Raises:
        DicomError: one of them is not an integer.
    """
    try:
        rows = int(header.get("Rows", 0) or 0)
        columns = int(header.get("Columns", 0) or 0)
        samples = int(header.get("SamplesPerPixel", 1) or 1)
        bits = int(header.get("BitsAllocated", 8) or 8)
    except (TypeError, ValueError):
        raise DicomError(path, "Rows, Columns, SamplesPerPixel or BitsAllocated is not an integer") from None
    return DeclaredImage(
        width=max(columns, 0),
        height=max(rows, 0),
        frames=frame_count(path, header),
        samples=max(samples, 1),
        bytes_per_sample=max((bits + 7) // 8, 1),
    )


def _file_meta(stream: BinaryIO, head: bytes) -> Any | None:
    """The file meta information group (0002), leaving ``stream`` at the data set after it; None
    when the file has none (a bare data set, which cannot be deflated)."""
    from pydicom.filereader import read_dataset

    has_preamble = head[128:132] == b"DICM"
    if not has_preamble and int.from_bytes(head[0:2], "little") != _FILE_META_GROUP:
        return None
    stream.seek(132 if has_preamble else 0)
    return read_dataset(
        stream,
        is_implicit_VR=False,
        is_little_endian=True,
        stop_when=lambda tag, vr, length: tag.group != _FILE_META_GROUP,
    )


def _is_deflated(file_meta: Any | None) -> bool:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    return file_meta is not None and str(file_meta.get("TransferSyntaxUID", "")) == DeflatedExplicitVRLittleEndian


def _deflated_header(path: str | Path, compressed: bytes) -> DeclaredImage:
    """What a deflated data set declares, from its first :data:`DEFLATED_HEADER_BYTES` inflated."""
    from pydicom.filereader import read_dataset

    probe = inflate_prefix(compressed, DEFLATED_HEADER_BYTES)
    header = read_dataset(
        io.BytesIO(probe),
        is_implicit_VR=False,
        is_little_endian=True,
        stop_when=lambda tag, vr, length: tag.group > _IMAGE_PIXEL_GROUP,
    )
    if ("Rows" not in header or "Columns" not in header) and len(probe) >= DEFLATED_HEADER_BYTES:
        raise DicomError(
            path, f"the deflated header is longer than {DEFLATED_HEADER_BYTES} bytes; refused before inflating the rest"
        )
    return declared_by_header(path, header)


def read_dicom_header(
    source: str | Path | BinaryIO, *, specific_tags: list[Any] | None = None, force: bool = False
) -> Any:
    """The data set of a DICOM file or seekable stream without its pixel data, as
    ``dcmread(stop_before_pixels=True)`` gives it, but inflating at most
    :data:`DEFLATED_HEADER_BYTES` of a deflated one.

    Raises:
        OSError: the file cannot be read.
        pydicom's errors: the header cannot be parsed (as ``dcmread`` raises them).
    """
    if isinstance(source, (str, Path)):
        with Path(source).open("rb") as stream:
            return read_dicom_header(stream, specific_tags=specific_tags, force=force)
    import pydicom
    from pydicom.filereader import read_dataset
    from pydicom.tag import Tag

    head = source.read(132)
    file_meta = _file_meta(source, head) if head[128:132] == b"DICM" else None
    if _is_deflated(file_meta):
        probe = inflate_prefix(source.read(), DEFLATED_HEADER_BYTES)
        tags = None if specific_tags is None else [Tag(tag) for tag in specific_tags]  # keywords too
        return read_dataset(
            io.BytesIO(probe),
            is_implicit_VR=False,
            is_little_endian=True,
            stop_when=lambda tag, vr, length: tag.group == _PIXEL_DATA_GROUP,
            specific_tags=tags,
        )
    source.seek(0)
    return pydicom.dcmread(source, stop_before_pixels=True, specific_tags=specific_tags, force=force)


def declared_dicom(path: str | Path, stream: BinaryIO) -> DeclaredImage:
    """What a DICOM stream (at its start) declares, read from its header alone.

    Raises:
        DicomError: the header cannot be parsed (pydicom's own errors propagate unwrapped).
    """
    import pydicom

    head = stream.read(132)
    file_meta = _file_meta(stream, head)
    if _is_deflated(file_meta):
        return _deflated_header(path, stream.read())
    stream.seek(0)
    header = pydicom.dcmread(stream, force=head[128:132] != b"DICM", stop_before_pixels=True)
    return declared_by_header(path, header)


def read_within_limits(path: str | Path, stream: BinaryIO, head: bytes, limits: ReadLimits) -> Any:
    """The data set of a DICOM stream, read only once its header has passed ``limits``.

    Raises:
        DecompressionBombError: the header declares more than ``limits``, or deflated data
            inflates beyond what the header declares.
        DicomError: a deflated header is longer than :data:`DEFLATED_HEADER_BYTES`.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset

    # Without the preamble pydicom needs force=True; sniff_format has already seen a data set's
    # first element there, so force does not open arbitrary bytes.
    force = head[128:132] != b"DICM"
    file_meta = _file_meta(stream, head)
    if _is_deflated(file_meta):
        compressed = stream.read()
        declared = _deflated_header(path, compressed)
        check_declared(path, declared, limits)
        inflated = bounded_inflate(path, compressed, DEFLATED_HEADER_BYTES + declared.decoded_bytes)
        del compressed
        dataset = read_dataset(inflated, is_implicit_VR=False, is_little_endian=True)
        dataset.file_meta = FileMetaDataset(file_meta)
        dataset.set_original_encoding(False, True)
        return dataset
    stream.seek(0)
    header = pydicom.dcmread(stream, force=force, stop_before_pixels=True)
    check_declared(path, declared_by_header(path, header), limits)
    stream.seek(0)
    return pydicom.dcmread(stream, force=force)
