"""The scope rule the listener applies to each received film (see :mod:`cxr_anomaly.scope`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..dicom import film_header_from_dataset
from ..scope import decide_scope, fitted_on_adults
from .worker import ScopeRule


def scope_rule_for(model: Any) -> ScopeRule:
    """A rule (header data set, grey film) -> ``in_scope`` or the reason, for this model's training."""
    adults = fitted_on_adults(getattr(model, "training", {}) or {})

    def scope_of(header: Any, film: np.ndarray) -> str:
        return decide_scope(film_header_from_dataset(header), film, fitted_on_adults=adults).reason

    return scope_of
