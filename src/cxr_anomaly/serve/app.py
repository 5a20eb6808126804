"""The scoring REST service: a FastAPI app that scores one film per request.

Endpoints:

- ``POST /v1/score``: a PNG, JPEG or DICOM file, as multipart form field ``file`` or as the raw
  request body. Returns JSON with the score, its components, the percentile among normal
  validation films, the decision at the stored operating point and the model version;
  ``?heatmap=true`` adds the residual heatmap as a base64 PNG, ``?format=png`` returns the heatmap
  PNG itself (score and decision in ``X-`` headers).
- ``GET /healthz``: liveness, with batching statistics.
- ``GET /v1/model``: what is being served (method, detector, versions, operating point, limits).
- ``GET /``: a web page to drop a film on; ``GET /openapi.json``: the schema. There is no
  ``/docs`` page: FastAPI's loads its script from a CDN, and the page serves no third-party script.

The model is a checkpoint (``model.pt``, scored with PyTorch) or its exported graph (``*.onnx``,
scored with onnxruntime on the CPU, faster on a CPU: see docs/results.md, "Serving"); both
answer the same.

Inputs are checked before any decoding the service can avoid: the upload size while it streams
in, the format from the file's first bytes (the name and the declared type are not trusted), the
declared sides, pixels and decoded bytes from the header before pixels are decoded (in memory, no
temporary file). Admission control bounds the scoring requests in flight, the films queued for
the scorer and the memory that decoding may take; beyond them a request gets 503 with
``Retry-After``. The server's protocol cuts slow headers and bodies and caps open connections
(:mod:`cxr_anomaly.serve.protocol`; docs/service-limits.md). Every refusal is a 4xx or 503 JSON
body ``{"error": {"code": ..., "message": ...}}``, whose message never holds a path. With a bearer token configured (``--token`` or the
``CXR_ANOMALY_TOKEN`` environment variable) every scoring request must carry
``Authorization: Bearer TOKEN``. Concurrent requests are scored together (see
:mod:`cxr_anomaly.serve.batching`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hmac
import importlib.resources
import logging
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
from starlette.requests import ClientDisconnect

from ..calibration import place_on_operating_point
from ..checkpoint import LoadedModel
from ..config import family_settings, methods
from ..dicom import silence_pydicom
from ..explain import HeatmapRange, explain_film, heatmap_range, png_bytes, with_legend
from ..files import model_version
from ..jobs.score import load_scoring_model
from ..scope import fitted_on_adults
from ..version import __version__
from .admission import ServiceBusyError
from .batching import BatchScorer, QueueFullError
from .errors import ApiError
from .intake import ACCEPTED_FORMATS, DecodedUpload, FilmIntake, decode_upload, probe_upload
from .settings import MIN_IMAGE_SIDE, ServiceSettings

if TYPE_CHECKING:  # onnxruntime is optional: imported only to serve an .onnx graph
    from ..export import OnnxScorer

logger = logging.getLogger(__name__)


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
    score: float = Field(
        description="robust z-score against normal validation films (the raw score when the model has no calibration)"
    )
    score_kind: Literal["calibrated", "raw"]
    score_raw: float = Field(
        description="the detector's raw score ("
        + "; ".join(f"{name}: {family_settings(name).raw_score}" for name in methods())
        + ")"
    )
    components: dict[str, float | None] = Field(
        description="the family's score components by name; null where the model lacks one "
        "(" + "; ".join(f"{name}: {', '.join(family_settings(name).components)}" for name in methods()) + ")"
    )
    percentile: float | None = Field(description="percentile (0-100) among normal validation films")
    decision: Literal["flag", "normal"] | None = Field(description="at the stored operating point")
    threshold: float | None = Field(description="raw-score threshold of the stored operating point")
    model_version: str = Field(description="sha256 prefix of the checkpoint file")
    package_version: str = Field(description="cxr-anomaly version that wrote the checkpoint")
    image: ImageInfo
    heatmap_png: str | None = Field(default=None, description="base64 PNG of the heatmap overlay (with ?heatmap=true)")
    scope: str = Field(
        default="in_scope",
        description="in_scope, or why the model was not made for this film "
        "(lateral_view, not_chest, for_processing, rotated, paediatric, "
        "unknown_view): its score then means nothing",
    )


class HealthResponse(BaseModel):
    status: Literal["ok"]
    batches: int
    films_scored: int
    largest_batch: int
    in_flight: int = Field(description="scoring requests being read, decoded or scored now")
    refused_busy: int = Field(description="scoring requests answered 503 so far")


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


def _optional(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def make_batch_scorer(model: LoadedModel | OnnxScorer) -> Callable[[np.ndarray], list[FilmScore]]:
    """A function scoring uint8 films (B, S, S) with the model, one :class:`FilmScore` each."""

    def score_batch(films: np.ndarray) -> list[FilmScore]:
        result = model.score_films(films, keep_maps=True)
        assert result.anomaly_maps is not None  # asked for above
        return [
            FilmScore(
                float(result.raw[index]),
                {name: _optional(values[index]) for name, values in result.components.items()},
                result.anomaly_maps[index],
            )
            for index in range(len(films))
        ]

    return score_batch


@functools.lru_cache(maxsize=1)
def web_page() -> str:
    """The single-page web interface (``cxr_anomaly/web/index.html``), read once."""
    return (importlib.resources.files("cxr_anomaly") / "web" / "index.html").read_text("utf-8")


SCORE_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a PNG, JPEG or DICOM file, as multipart field 'file' or as the raw body",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "application/dicom": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "no file, or a malformed form"),
        (401, "missing or wrong bearer token"),
        (413, "upload or image dimensions over the limits"),
        (415, "not a PNG, JPEG or DICOM file"),
        (422, "the file cannot be decoded, or the image is too small"),
        (503, "the service is at a limit (requests in flight, queued films, memory): retry after Retry-After"),
    )
}


def add_error_handlers(app: FastAPI) -> None:
    """Every error the service returns has one JSON shape: ``{"error": {"code", "message"}}``."""

    @app.exception_handler(ApiError)
    async def api_error_handler(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(
            {"error": {"code": error.code, "message": error.message}},
            status_code=error.status_code,
            headers=error.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error_handler(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg')}" for item in error.errors()
        )
        return JSONResponse({"error": {"code": "invalid_request", "message": problems}}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error_handler(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return JSONResponse(
            {"error": {"code": code, "message": str(error.detail)}},
            status_code=error.status_code,
            headers=getattr(error, "headers", None),
        )


def describe_model(
    model: LoadedModel | OnnxScorer, model_path: str | Path, version: str, settings: ServiceSettings
) -> ModelResponse:
    """The body of ``GET /v1/model``: method, detector, versions, operating point and limits."""
    training = {
        key: model.training.get(key)
        for key in ("num_train_images", "num_calibration_images", "calibration_source")
        if key in model.training
    }
    return ModelResponse(
        model_version=version,
        package_version=model.package_version,
        server_version=__version__,
        method=model.config.method,
        detector=model.description,
        image_size=model.config.data.image_size,
        checkpoint=Path(model_path).name,
        calibration=None if model.calibration is None else model.calibration.summary(),
        training=training,
        auth_required=settings.token is not None,
        limits={
            "max_upload_bytes": settings.max_upload_bytes,
            "max_image_side": settings.max_image_side,
            "min_image_side": MIN_IMAGE_SIDE,
            "accepted_formats": list(ACCEPTED_FORMATS),
            "max_batch_size": settings.max_batch_size,
            "max_in_flight": settings.max_in_flight,
            "max_queued_films": settings.max_queued_films,
            "memory_budget_bytes": settings.memory_budget_bytes,
            "header_timeout_seconds": settings.header_timeout_seconds,
            "body_timeout_seconds": settings.body_timeout_seconds,
            "idle_timeout_seconds": settings.idle_timeout_seconds,
            "max_connections": settings.max_connections,
        },
    )


@dataclass(frozen=True)
class ServedModel:
    """What a response is made with: the model, the settings, the heatmap range and the model version."""

    model: LoadedModel | OnnxScorer
    settings: ServiceSettings
    heat: HeatmapRange
    version: str


async def respond(
    served: ServedModel,
    decoded: DecodedUpload,
    result: FilmScore,
    heatmap: bool,
    response_format: Literal["json", "png"],
) -> Any:
    """The score of a film as JSON, or its heatmap PNG."""
    model, settings, heat, version = served.model, served.settings, served.heat, served.version
    placed = place_on_operating_point(result.raw, model.calibration)
    scope = decoded.scope
    assert scope is not None  # set by read_and_decode
    overlay_png = None
    if heatmap or response_format == "png":
        explanation = await asyncio.to_thread(
            explain_film,
            decoded.film,
            decoded.model_input,
            result.anomaly_map,
            heat.scale,
            floor=heat.floor,
            border_crop=model.config.data.border_crop,
            max_side=settings.heatmap_max_side,
        )
        overlay_png = await asyncio.to_thread(
            lambda: png_bytes(
                with_legend(explanation.overlay, floor=heat.floor, scale=heat.scale, raw_score=result.raw)
            )
        )
    height, width = decoded.film.shape
    if response_format == "png":
        assert overlay_png is not None  # made above
        headers = {
            "X-Score": f"{placed.score:.6g}",
            "X-Score-Raw": f"{result.raw:.6g}",
            "X-Model-Version": version,
            "X-Scope": scope.reason,
        }
        if placed.decision is not None:
            headers["X-Decision"] = placed.decision
            headers["X-Percentile"] = f"{placed.percentile:.3f}"
        return Response(overlay_png, media_type="image/png", headers=headers)
    return ScoreResponse(
        score=placed.score,
        score_kind=placed.kind,
        score_raw=result.raw,
        components=result.components,
        percentile=placed.percentile,
        decision=placed.decision,
        threshold=placed.threshold,
        model_version=version,
        package_version=model.package_version,
        image=ImageInfo(format=decoded.format, width=width, height=height),
        heatmap_png=None if overlay_png is None else base64.b64encode(overlay_png).decode("ascii"),
        scope=scope.reason,
    )


def check_token(token: str | None, credentials: HTTPAuthorizationCredentials | None) -> None:
    """Refuse a scoring request without the bearer ``token`` (compared in constant time); None: open.

    Raises:
        ApiError: 401 with ``WWW-Authenticate: Bearer``.
    """
    if token is None:
        return
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(401, "missing_token", "this service requires 'Authorization: Bearer TOKEN'", challenge)
    if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
        raise ApiError(401, "invalid_token", "the bearer token is not valid", challenge)


async def score_film(
    served: ServedModel,
    intake: FilmIntake,
    scorer: BatchScorer[FilmScore],
    request: Request,
    heatmap: bool,
    response_format: Literal["json", "png"],
) -> Any:
    """``POST /v1/score``: admit, read and decode the upload, score it in a batch and respond.

    Raises:
        ApiError: 4xx for the upload; 503 with ``Retry-After`` at a limit (requests in flight,
            memory budget, queued films).
    """
    try:
        with intake.in_flight.admit():
            decoded = await intake.read_and_decode(request)
            try:
                result = await scorer.score(decoded.model_input)
            except QueueFullError as full:
                intake.statistics.refused_queue += 1
                raise ServiceBusyError(str(full)) from None
            return await respond(served, decoded, result, heatmap, response_format)
    except ServiceBusyError as busy:
        raise ApiError(
            503,
            "service_busy",
            f"the service is busy ({busy.reason}); retry later",
            {"Retry-After": str(served.settings.retry_after_seconds)},
        ) from None
    except ClientDisconnect:
        logger.info("a client disconnected before its upload ended")
        return Response(status_code=400)  # nobody is left to read it


def create_app(
    model_path: str | Path,
    settings: ServiceSettings | None = None,
    *,
    device: str = "cpu",
    onnx_threads: int | None = None,
) -> FastAPI:
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
    scorer: BatchScorer[FilmScore] = BatchScorer(
        make_batch_scorer(model),
        max_batch_size=settings.max_batch_size,
        max_wait_seconds=settings.batch_wait_seconds,
        max_queued=settings.max_queued_films,
    )
    served = ServedModel(model, settings, heat, version)
    intake = FilmIntake(settings, image_size, fitted_on_adults=fitted_on_adults(model.training))
    app = new_app(model, settings, scorer, intake)
    add_routes(app, served, intake, scorer, model_path)
    return app


def new_app(
    model: LoadedModel | OnnxScorer, settings: ServiceSettings, scorer: BatchScorer[FilmScore], intake: FilmIntake
) -> FastAPI:
    """The FastAPI application with its state and error handlers, closing the scorer and intake at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        scorer.close()  # stop the batching task and its thread with the server
        intake.close()

    # No /docs or /redoc: FastAPI's pages load unpinned scripts from a CDN.
    app = FastAPI(
        title="cxr-anomaly",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Triage of chest X-rays by a detector fitted on normal films only "
        f"({model.description}). A triage aid, not a diagnosis.",
    )
    app.state.scorer = scorer
    app.state.model = model
    app.state.settings = settings
    app.state.connection_limits = settings.connection_limits  # the protocol's, bound when served
    app.state.memory_budget = intake.memory
    add_error_handlers(app)
    return app


def add_routes(
    app: FastAPI, served: ServedModel, intake: FilmIntake, scorer: BatchScorer[FilmScore], model_path: str | Path
) -> None:
    """``/``, ``/healthz``, ``/v1/model`` and ``/v1/score``."""
    settings = served.settings
    bearer = HTTPBearer(auto_error=False, description="required when the service runs with a token")

    async def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        check_token(settings.token, credentials)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(web_page())

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz() -> HealthResponse:
        """Liveness and batching statistics."""
        statistics = scorer.statistics
        return HealthResponse(
            status="ok",
            batches=statistics.batches,
            films_scored=statistics.films,
            largest_batch=statistics.largest_batch,
            in_flight=intake.in_flight.active,
            refused_busy=intake.statistics.refused,
        )

    @app.get("/v1/model", response_model=ModelResponse)
    async def model_info() -> ModelResponse:
        """What is being served: method, detector, versions, operating point and limits."""
        return describe_model(served.model, model_path, served.version, settings)

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        responses={
            **ERROR_RESPONSES,
            200: {
                "content": {"image/png": {}},
                "description": "the score as JSON, or the heatmap PNG with ?format=png",
            },
        },
        openapi_extra=SCORE_REQUEST_BODY,
        dependencies=[Depends(require_token)],
    )
    async def score(
        request: Request,
        heatmap: bool = Query(False, description="add the heatmap overlay as a base64 PNG to the JSON"),
        response_format: Literal["json", "png"] = Query(
            "json", alias="format", description="json (default), or png: the heatmap overlay image itself"
        ),
    ) -> Any:
        """Score one chest film (PNG, JPEG or DICOM)."""
        return await score_film(served, intake, scorer, request, heatmap, response_format)


__all__ = ["ApiError", "ServiceSettings", "create_app", "decode_upload", "model_version", "probe_upload"]
