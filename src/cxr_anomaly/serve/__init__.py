"""The scoring service: a FastAPI app (:mod:`.app`) with micro-batched scoring (:mod:`.batching`),
admission control (:mod:`.admission`), a guarded HTTP protocol (:mod:`.protocol`), run by :mod:`.server`."""

from .app import ApiError, ServiceSettings, create_app, decode_upload, model_version
from .batching import BatchScorer, BatchStatistics, QueueFullError
from .server import BackgroundServer, run_server, start_background_server

__all__ = [
    "ApiError",
    "BackgroundServer",
    "BatchScorer",
    "BatchStatistics",
    "QueueFullError",
    "ServiceSettings",
    "create_app",
    "decode_upload",
    "model_version",
    "run_server",
    "start_background_server",
]
