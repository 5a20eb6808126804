"""Where :func:`load_scoring_model` used to live: ``serve/`` and ``pacs/`` still import it from here.

The jobs behind the CLI are in :mod:`cxr_anomaly.jobs` (``train``, ``score``, ``evaluate``,
``calibrate``) and the choice of manifest rows in :mod:`cxr_anomaly.data.selection`. Remove this
module once ``serve/`` and ``pacs/`` import :mod:`cxr_anomaly.jobs.score`.
"""

from .jobs.score import load_scoring_model

__all__ = ["load_scoring_model"]
