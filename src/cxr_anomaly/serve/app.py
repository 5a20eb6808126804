"""The scoring REST service: a FastAPI app that scores one film per request.

Endpoints:

- ``POST /v1/score``: a PNG, JPEG or DICOM file, as multipart form field ``file`` or as the raw
  request body. Returns JSON with the score, its components, the percentile among normal
  validation films, the decision at the stored operating point and the model version;
  ``?heatmap=true`` adds the residual heatmap as a base64 PNG, ``?format=png`` returns the heatmap
  PNG itself (score and decision in ``X-`` headers).
- ``GET /healthz``: liveness, with batching statistics.
- ``GET /v1/model``: what is being served (method, detector, versions, operating point, limits).
- ``GET /``: a web page to drop a film on; ``GET /openapi.json`` and ``/docs``: the schema.

The model is a checkpoint (``model.pt``, scored with PyTorch) or its exported graph (``*.onnx``,
scored with onnxruntime on the CPU, 1.4-1.7x as fast for the features family on a 2-core CPU);
both answer the same.

Inputs are checked before any decoding the service can avoid: the upload size while it streams
in, the format from the file's first bytes (the name and the declared type are not trusted), the
declared image dimensions before pixels are decoded. Every refusal is a 4xx JSON body
``{"error": {"code": ..., "message": ...}}``. With a bearer token configured (``--token`` or the
``CXR_ANOMALY_TOKEN`` environment variable) every scoring request must carry
``Authorization: Bearer TOKEN``. Concurrent requests are scored together (see
:mod:`cxr_anomaly.serve.batching`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import importlib.resources
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..calibration import Calibration
from ..checkpoint import LoadedModel
from ..dicom import silence_pydicom
from ..errors import DecompressionBombError, InputFileError
from ..explain import explain_film, heatmap_range, png_bytes, with_legend
from ..io import read_image, resize_grey, sniff_format
from ..pipeline import load_scoring_model
from ..scope import fitted_on_adults, upload_scope
from .batching import BatchScorer

if TYPE_CHECKING:  # onnxruntime is optional: imported only to serve an .onnx graph
    from ..export import OnnxScorer

logger = logging.getLogger(__name__)

TOKEN_ENVIRONMENT_VARIABLE = "CXR_ANOMALY_TOKEN"
ACCEPTED_FORMATS = ("png", "jpeg", "dicom")
MIN_IMAGE_SIDE = 16  # smaller uploads are icons or mistakes, not chest films
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # form boundaries and headers around the file


@dataclass(frozen=True)
class ServiceSettings:
    """Limits and options of the service.

    Attributes:
        token: bearer token required on scoring requests; None leaves them open.
        max_upload_bytes: largest accepted file.
        max_image_side: largest accepted width or height in pixels (checked before decoding).
        max_batch_size: the most concurrent films scored in one forward pass.
        batch_wait_seconds: how long the first film of a batch waits for others.
        heatmap_max_side: longer side of returned heatmaps (the original resolution, shrunk to this).
    """

    token: str | None = None
    max_upload_bytes: int = 32 * 1024 * 1024
    max_image_side: int = 8192
    max_batch_size: int = 32
    batch_wait_seconds: float = 0.005
    heatmap_max_side: int = 1024

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1:
            raise ValueError(f"max_upload_bytes={self.max_upload_bytes}; expected a positive number")
        if self.max_image_side < MIN_IMAGE_SIDE:
            raise ValueError(f"max_image_side={self.max_image_side}; expected at least {MIN_IMAGE_SIDE}")
        if self.token is not None and not self.token.strip():
            raise ValueError("token is empty; pass a non-empty token or none")

    @classmethod
    def from_environment(cls, *, token: str | None = None, **values: Any) -> ServiceSettings:
        """Settings whose token defaults to the ``CXR_ANOMALY_TOKEN`` environment variable."""
        return cls(token=token if token is not None else (os.environ.get(TOKEN_ENVIRONMENT_VARIABLE) or None),
                   **values)


class ApiError(Exception):
    """A refusal with an HTTP status, a stable machine-readable code and a message for people."""

    def __init__(self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable reason, e.g. unsupported_format")
    message: str = Field(description="what was wrong, for people")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ImageInfo(BaseModel):
    format: str
    width: int
    height: int


class ScoreResponse(BaseModel):
    score: float = Field(description="robust z-score against normal validation films "
                                     "(the raw score when the model has no calibration)")
    score_kind: Literal["calibrated", "raw"]
    score_raw: float = Field(description="the detector's raw score (features: the configured feature score; "
                                         "tang2019: eq. 6)")
    components: dict[str, float | None] = Field(
        description="the family's score components by name; null where the model lacks one "
                    "(features: gaussian, pooled_knn, patch_knn; tang2019: reconstruction, adversarial, "
                    "latent, code_distance)")
    percentile: float | None = Field(description="percentile (0-100) among normal validation films")
    decision: Literal["flag", "normal"] | None = Field(description="at the stored operating point")
    threshold: float | None = Field(description="raw-score threshold of the stored operating point")
    model_version: str = Field(description="sha256 prefix of the checkpoint file")
    package_version: str = Field(description="cxr-anomaly version that wrote the checkpoint")
    image: ImageInfo
    heatmap_png: str | None = Field(default=None, description="base64 PNG of the heatmap overlay "
                                                              "(with ?heatmap=true)")
    scope: str = Field(default="in_scope", description="in_scope, or why the model was not made for this film "
                                                       "(lateral_view, not_chest, for_processing, rotated, paediatric, "
                                                       "unknown_view): its score then means nothing")


class HealthResponse(BaseModel):
    status: Literal["ok"]
    batches: int
    films_scored: int
    largest_batch: int


class ModelResponse(BaseModel):
    model_version: str
    package_version: str
    server_version: str
    method: str
    detector: str
    image_size: int
    checkpoint: str
    calibration: dict[str, Any] | None
    training: dict[str, Any]
    auth_required: bool
    limits: dict[str, Any]


@dataclass
class FilmScore:
    """The detector's output for one film."""

    raw: float
    components: dict[str, float | None]
    anomaly_map: np.ndarray  # float32 (h, w)


@dataclass
class DecodedUpload:
    """An uploaded film, decoded."""

    film: np.ndarray  # float32 (H0, W0) in [0, 1], original resolution
    model_input: np.ndarray  # uint8 (S, S)
    format: str


def model_version(path: str | Path) -> str:
    """``sha256:`` and the first 12 hex digits of the checkpoint file's hash."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:12]


def _optional(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def make_batch_scorer(model: LoadedModel | OnnxScorer) -> Callable[[np.ndarray], list[FilmScore]]:
    """A function scoring uint8 films (B, S, S) with the model, one :class:`FilmScore` each."""

    def score_batch(films: np.ndarray) -> list[FilmScore]:
        result = model.score_films(films, keep_maps=True)
        assert result.anomaly_maps is not None  # asked for above
        return [FilmScore(float(result.raw[index]),
                          {name: _optional(values[index]) for name, values in result.components.items()},
                          result.anomaly_maps[index]) for index in range(len(films))]

    return score_batch


def decode_upload(data: bytes, settings: ServiceSettings, image_size: int) -> DecodedUpload:
    """Sniff, size-check and decode uploaded bytes.

    Raises:
        ApiError: 415 for a format other than PNG, JPEG or DICOM; 413 for too many pixels; 422 for
            a file that cannot be decoded or an image smaller than 16 pixels a side.
    """
    kind = sniff_format(data[:132])
    if kind not in ACCEPTED_FORMATS:
        raise ApiError(415, "unsupported_format",
                       f"the upload is not a PNG, JPEG or DICOM file (detected: {kind or 'unknown'}, "
                       f"first bytes {data[:8]!r}); the file name and declared type are not trusted")
    suffix = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}[kind]
    handle, temporary = tempfile.mkstemp(prefix="cxr-upload-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        try:
            image = read_image(temporary, max_pixels=settings.max_image_side ** 2)
        except DecompressionBombError as error:
            raise ApiError(413, "image_too_large", f"image dimensions exceed the limit: {error.reason}") from None
        except InputFileError as error:
            raise ApiError(422, "unreadable_image", f"cannot decode the {kind.upper()} upload: {error.reason}") from None
    finally:
        Path(temporary).unlink(missing_ok=True)
    height, width = image.array.shape
    if max(height, width) > settings.max_image_side:
        raise ApiError(413, "image_too_large",
                       f"image is {width}x{height}; the largest accepted side is {settings.max_image_side} pixels")
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ApiError(422, "image_too_small",
                       f"image is {width}x{height}; the smallest accepted side is {MIN_IMAGE_SIDE} pixels")
    return DecodedUpload(image.array, resize_grey(image.array, image_size), kind)


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it grows beyond ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "upload_too_large", f"upload of {int(declared)} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise ApiError(413, "upload_too_large", f"upload exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def extract_file(request: Request, settings: ServiceSettings) -> bytes:
    """The uploaded file's bytes: form field ``file`` of a multipart body, or the raw body."""
    content_type = request.headers.get("content-type", "")
    is_form = content_type.startswith("multipart/form-data")
    body = await read_limited_body(request, settings.max_upload_bytes + (MULTIPART_OVERHEAD_BYTES if is_form else 0))
    if not is_form:
        if not body:
            raise ApiError(400, "empty_upload", "the request carries no file: send it as multipart field "
                                                "'file' or as the raw request body")
        return body
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except Exception as error:  # malformed multipart bodies raise several types
        raise ApiError(400, "malformed_form", f"cannot parse the multipart form: {error}") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "missing_file", "the multipart form has no file field named 'file'")
    data = await upload.read()
    await form.close()
    if len(data) > settings.max_upload_bytes:
        raise ApiError(413, "upload_too_large",
                       f"upload of {len(data)} bytes exceeds the limit of {settings.max_upload_bytes}")
    if not data:
        raise ApiError(400, "empty_upload", "the uploaded file is empty")
    return data


@functools.lru_cache(maxsize=1)
def web_page() -> str:
    """The single-page web interface (``cxr_anomaly/web/index.html``), read once."""
    return (importlib.resources.files("cxr_anomaly") / "web" / "index.html").read_text("utf-8")


SCORE_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a PNG, JPEG or DICOM file, as multipart field 'file' or as the raw body",
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                               "properties": {"file": {"type": "string", "format": "binary"}}}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "application/dicom": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description} for status, description in (
        (400, "no file, or a malformed form"), (401, "missing or wrong bearer token"),
        (413, "upload or image dimensions over the limits"), (415, "not a PNG, JPEG or DICOM file"),
        (422, "the file cannot be decoded, or the image is too small"))
}


def add_error_handlers(app: FastAPI) -> None:
    """Every error the service returns has one JSON shape: ``{"error": {"code", "message"}}``."""

    @app.exception_handler(ApiError)
    async def api_error_handler(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse({"error": {"code": error.code, "message": error.message}},
                            status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error_handler(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg')}"
                             for item in error.errors())
        return JSONResponse({"error": {"code": "invalid_request", "message": problems}}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error_handler(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(error.detail)}},
                            status_code=error.status_code, headers=getattr(error, "headers", None))


@dataclass(frozen=True)
class PlacedScore:
    """A raw score read against the model's operating point (all but ``score`` None without one).

    Attributes:
        score: the calibrated score (standardised on the calibration normals), or the raw one.
        kind: ``calibrated`` or ``raw``.
        percentile: the share of calibration normals scoring below the film.
        decision: ``flag`` above the stored threshold, else ``normal``.
        threshold: the stored threshold on the calibrated scale.
    """

    score: float
    kind: Literal["calibrated", "raw"]
    percentile: float | None = None
    decision: Literal["flag", "normal"] | None = None
    threshold: float | None = None


def place_on_operating_point(raw_score: float, calibration: Calibration | None) -> PlacedScore:
    """Calibrate one raw score, or pass it through when the model has no operating point."""
    if calibration is None:
        return PlacedScore(raw_score, "raw")
    raw = np.asarray([raw_score])
    return PlacedScore(float(calibration.standardise(raw)[0]), "calibrated",
                       percentile=float(calibration.percentile(raw)[0]),
                       decision="flag" if bool(calibration.flag(raw)[0]) else "normal",
                       threshold=calibration.threshold)


def describe_model(model: LoadedModel | OnnxScorer, model_path: str | Path, version: str,
                   settings: ServiceSettings) -> ModelResponse:
    """The body of ``GET /v1/model``: method, detector, versions, operating point and limits."""
    training = {key: model.training.get(key) for key in
                ("num_train_images", "num_calibration_images", "calibration_source") if key in model.training}
    return ModelResponse(
        model_version=version, package_version=model.package_version, server_version=__version__,
        method=model.config.method, detector=model.description, image_size=model.config.data.image_size,
        checkpoint=Path(model_path).name,
        calibration=None if model.calibration is None else model.calibration.summary(),
        training=training, auth_required=settings.token is not None,
        limits={"max_upload_bytes": settings.max_upload_bytes, "max_image_side": settings.max_image_side,
                "min_image_side": MIN_IMAGE_SIDE, "accepted_formats": list(ACCEPTED_FORMATS),
                "max_batch_size": settings.max_batch_size},
    )


def create_app(model_path: str | Path, settings: ServiceSettings | None = None, *,
               device: str = "cpu", onnx_threads: int | None = None) -> FastAPI:
    """Build the service for a checkpoint (``model.pt``) or an exported graph (``*.onnx``).

    A checkpoint scores on ``device`` (``auto``: CUDA when available). An ONNX graph is scored
    with onnxruntime on the CPU (``onnx_threads`` intra-op threads; None: its default); the
    service behaves the same either way.

    Raises:
        CheckpointError: the checkpoint cannot be loaded.
        ExportError: the ONNX graph cannot be opened, or onnxruntime is not installed.
    """
    settings = settings or ServiceSettings()
    # Once, before any request thread exists: pydicom's warnings and log records quote header
    # values (patient names), and per-read warnings.catch_warnings() is not thread-safe.
    silence_pydicom()
    model = load_scoring_model(model_path, device=device, onnx_threads=onnx_threads)
    version = model_version(model_path)
    image_size = model.config.data.image_size
    heat = heatmap_range(model.calibration, model.anomaly_map_scale)
    scorer: BatchScorer[FilmScore] = BatchScorer(make_batch_scorer(model), max_batch_size=settings.max_batch_size,
                                                 max_wait_seconds=settings.batch_wait_seconds)
    bearer = HTTPBearer(auto_error=False, description="required when the service runs with a token")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        scorer.close()  # stop the batching task and its thread with the server

    app = FastAPI(title="cxr-anomaly", version=__version__, lifespan=lifespan,
                  description="Triage of chest X-rays by a detector fitted on normal films only "
                              f"({model.description}). A triage aid, not a diagnosis.")
    app.state.scorer = scorer
    app.state.model = model
    app.state.settings = settings

    add_error_handlers(app)

    async def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if settings.token is None:
            return
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None:
            raise ApiError(401, "missing_token", "this service requires 'Authorization: Bearer TOKEN'", challenge)
        if not hmac.compare_digest(credentials.credentials.encode(), settings.token.encode()):
            raise ApiError(401, "invalid_token", "the bearer token is not valid", challenge)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(web_page())

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz() -> HealthResponse:
        """Liveness and batching statistics."""
        statistics = scorer.statistics
        return HealthResponse(status="ok", batches=statistics.batches, films_scored=statistics.films,
                              largest_batch=statistics.largest_batch)

    @app.get("/v1/model", response_model=ModelResponse)
    async def model_info() -> ModelResponse:
        """What is being served: method, detector, versions, operating point and limits."""
        return describe_model(model, model_path, version, settings)

    @app.post("/v1/score", response_model=ScoreResponse, responses={
        **ERROR_RESPONSES, 200: {"content": {"image/png": {}},
                                 "description": "the score as JSON, or the heatmap PNG with ?format=png"}},
        openapi_extra=SCORE_REQUEST_BODY, dependencies=[Depends(require_token)])
    async def score(
        request: Request,
        heatmap: bool = Query(False, description="add the heatmap overlay as a base64 PNG to the JSON"),
        response_format: Literal["json", "png"] = Query(
            "json", alias="format", description="json (default), or png: the heatmap overlay image itself"),
    ) -> Any:
        """Score one chest film (PNG, JPEG or DICOM)."""
        data = await extract_file(request, settings)
        decoded = await asyncio.to_thread(decode_upload, data, settings, image_size)
        result = await scorer.score(decoded.model_input)
        placed = place_on_operating_point(result.raw, model.calibration)
        scope = upload_scope(data, decoded.format, decoded.model_input,
                             fitted_on_adults=fitted_on_adults(model.training))
        overlay_png = None
        if heatmap or response_format == "png":
            explanation = await asyncio.to_thread(
                explain_film, decoded.film, decoded.model_input, result.anomaly_map, heat.scale,
                floor=heat.floor, border_crop=model.config.data.border_crop, max_side=settings.heatmap_max_side)
            overlay_png = await asyncio.to_thread(lambda: png_bytes(with_legend(
                explanation.overlay, floor=heat.floor, scale=heat.scale, raw_score=result.raw)))
        height, width = decoded.film.shape
        if response_format == "png":
            assert overlay_png is not None  # made above
            headers = {"X-Score": f"{placed.score:.6g}", "X-Score-Raw": f"{result.raw:.6g}",
                       "X-Model-Version": version, "X-Scope": scope.reason}
            if placed.decision is not None:
                headers["X-Decision"] = placed.decision
                headers["X-Percentile"] = f"{placed.percentile:.3f}"
            return Response(overlay_png, media_type="image/png", headers=headers)
        return ScoreResponse(
            score=placed.score, score_kind=placed.kind, score_raw=result.raw,
            components=result.components,
            percentile=placed.percentile, decision=placed.decision, threshold=placed.threshold,
            model_version=version,
            package_version=model.package_version, image=ImageInfo(format=decoded.format, width=width, height=height),
            heatmap_png=None if overlay_png is None else base64.b64encode(overlay_png).decode("ascii"),
            scope=scope.reason,
        )

    return app


@dataclass
class BackgroundServer:
    """A uvicorn server running in a thread on a loopback port (for tests and load tests)."""

    url: str
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_background_server(app: FastAPI, *, host: str = "127.0.0.1", startup_timeout: float = 20.0) -> BackgroundServer:
    """Serve ``app`` with uvicorn in a daemon thread on a free port; return when it accepts requests.

    Raises:
        RuntimeError: the server did not start within ``startup_timeout`` seconds.
    """
    import uvicorn

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True,
                              name=f"uvicorn:{port}")
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start on {host}:{port} within {startup_timeout} s")
        time.sleep(0.02)
    return BackgroundServer(f"http://{host}:{port}", server, thread)


def run_server(model_path: str | Path, settings: ServiceSettings, *, host: str = "127.0.0.1",
               port: int = 8000, threads: int | None = None, device: str = "auto") -> None:
    """Load the checkpoint or ONNX graph and serve it with uvicorn until interrupted.

    Args:
        device: where a checkpoint scores (``auto``: CUDA when available, else the CPU); an
            ONNX graph always runs on the CPU.
        threads: intra-op threads of this server process, for PyTorch (``torch.set_num_threads``)
            and for onnxruntime when serving a graph; None keeps their defaults (one per core).
            One thread is faster on a machine whose cores are shared with other busy processes,
            where spinning OpenMP threads wait on each other.
    """
    import torch
    import uvicorn

    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads={threads}; expected at least 1")
        torch.set_num_threads(threads)
    app = create_app(model_path, settings, device=device, onnx_threads=threads)
    if settings.token is None and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s without a bearer token: anyone who can reach it can score films", host)
    logger.info("serving %s (%s) on http://%s:%d", model_path, model_version(model_path), host, port)
    uvicorn.run(app, host=host, port=port, log_level="info")


__all__ = ["ApiError", "BackgroundServer", "ServiceSettings", "create_app", "decode_upload", "model_version",
           "run_server", "start_background_server"]
