"""The service's refusal: an HTTP status, a stable machine-readable code and a message."""

from __future__ import annotations


class ApiError(Exception):
    """A refusal with an HTTP status, a stable machine-readable code and a message for people.

    Attributes:
        status_code: the HTTP status.
        code: stable machine-readable reason, e.g. ``unsupported_format``.
        message: what was wrong, for people; never a path or a header value of the film.
        headers: extra response headers (``WWW-Authenticate``, ``Retry-After``).
    """

    def __init__(self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers
