"""The scoring service: a FastAPI app (:mod:`.app`) with micro-batched scoring (:mod:`.batching`)."""

from .app import (ApiError, BackgroundServer, ServiceSettings, create_app, decode_upload, model_version,
                  run_server, start_background_server)
from .batching import BatchScorer, BatchStatistics

__all__ = ["ApiError", "BackgroundServer", "BatchScorer", "BatchStatistics", "ServiceSettings", "create_app",
           "decode_upload", "model_version", "run_server", "start_background_server"]
