"""Reading an uploaded film from a request body, holding one copy of it.

The body streams into one growing buffer, refused with 413 as soon as it passes the limit; a
multipart form is parsed as it streams (python-multipart's push parser), keeping the bytes of the
``file`` field only, so neither the raw form nor a spooled copy nor a temporary file is held
beside the film. Timeouts of slow bodies are enforced by the server's protocol
(:mod:`cxr_anomaly.serve.protocol`); a client that goes away mid-upload raises starlette's
``ClientDisconnect``, which the service logs in one line.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from .errors import ApiError

MULTIPART_OVERHEAD_BYTES = 64 * 1024  # form boundaries, headers and small fields around the file
MAX_FORM_PARTS = 8


def declared_length(request: Request) -> int | None:
    """The request's ``Content-Length`` as a number; None when absent or not a plain number."""
    declared = request.headers.get("content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


def is_multipart(request: Request) -> bool:
    """Whether the body is a multipart form (else it is the file itself)."""
    return request.headers.get("content-type", "").startswith("multipart/form-data")


def body_limit(request: Request, max_upload_bytes: int) -> int:
    """The most body bytes accepted for a file of at most ``max_upload_bytes``."""
    return max_upload_bytes + (MULTIPART_OVERHEAD_BYTES if is_multipart(request) else 0)


class _FormFile:
    """python-multipart callbacks keeping the bytes of the form's ``file`` field only."""

    def __init__(self, max_file_bytes: int) -> None:
        self.max_file_bytes = max_file_bytes
        self.data = io.BytesIO()
        self.found = False
        self.parts = 0
        self.other_bytes = 0
        self._in_file = False
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_FORM_PARTS:
            raise ApiError(400, "malformed_form", f"the multipart form has more than {MAX_FORM_PARTS} parts")
        self._headers, self._in_file = {}, False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        # As starlette does: a part with a file name is a file; the field must be named 'file'.
        if options.get(b"name") == b"file" and b"filename" in options:
            if self.found:
                raise ApiError(400, "malformed_form", "the multipart form holds more than one file")
            self._in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            if self.data.tell() + (end - start) > self.max_file_bytes:
                raise ApiError(413, "upload_too_large", f"upload exceeds the limit of {self.max_file_bytes} bytes")
            self.data.write(data[start:end])
        else:
            self.other_bytes += end - start
            if self.other_bytes > MULTIPART_OVERHEAD_BYTES:
                raise ApiError(
                    413, "upload_too_large", f"the form's other fields exceed {MULTIPART_OVERHEAD_BYTES} bytes"
                )

    def _part_end(self) -> None:
        if self._in_file:
            self.found, self._in_file = True, False


async def read_upload(request: Request, max_upload_bytes: int) -> bytes:
    """The uploaded file's bytes: form field ``file`` of a multipart body, or the raw body.

    Raises:
        ApiError: 413 over the limit (declared or streamed), 400 for an empty upload, a malformed
            form or one without a ``file`` field.
        starlette.requests.ClientDisconnect: the client went away before the body ended.
    """
    limit = body_limit(request, max_upload_bytes)
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise ApiError(413, "upload_too_large", f"upload of {declared} bytes exceeds the limit of {limit}")
    if not is_multipart(request):
        body = io.BytesIO()
        async for chunk in request.stream():
            if body.tell() + len(chunk) > limit:
                raise ApiError(413, "upload_too_large", f"upload exceeds the limit of {limit} bytes")
            body.write(chunk)
        if not body.tell():
            raise ApiError(
                400,
                "empty_upload",
                "the request carries no file: send it as multipart field 'file' or as the raw request body",
            )
        return body.getvalue()  # CPython hands over the buffer itself, shrunk in place: no copy
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(400, "malformed_form", "the multipart content type has no boundary")
    form = _FormFile(max_upload_bytes)
    parser = MultipartParser(boundary, form.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise ApiError(413, "upload_too_large", f"upload exceeds the limit of {limit} bytes")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as error:
        raise ApiError(400, "malformed_form", f"cannot parse the multipart form: {type(error).__name__}") from None
    if not form.found:
        raise ApiError(400, "missing_file", "the multipart form has no file field named 'file'")
    if not form.data.tell():
        raise ApiError(400, "empty_upload", "the uploaded file is empty")
    return form.data.getvalue()
