"""Metrics and figures: AUC, average precision, per-view AUC, ROC curves, reconstruction grids.

AUC and average precision need both classes; where one is missing they are reported as None
with the reason, never as a made-up number. View position (PA/AP) confounds abnormality in NIH
data, so AUC is also reported per view whenever views are known.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

logger = logging.getLogger(__name__)


@dataclass
class Metrics:
    """Ranking quality of one score against labels (1 = abnormal).

    Attributes:
        auc: area under the ROC curve, or None when a class is missing.
        average_precision: area under the precision-recall curve, or None likewise.
        num_normal: labelled normal films scored.
        num_abnormal: labelled abnormal films scored.
        auc_per_view: AUC within each view position that holds both classes.
        component_auc: AUC of each score component on its own.
        note: why a metric is missing, if one is.
    """

    auc: float | None
    average_precision: float | None
    num_normal: int
    num_abnormal: int
    auc_per_view: dict[str, float | None] = field(default_factory=dict)
    component_auc: dict[str, float | None] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        """Plain values for JSON."""
        return asdict(self)


def safe_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None when only one class is present or a score is not finite."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    if len(np.unique(labels)) < 2 or not np.all(np.isfinite(scores)):
        return None
    return float(roc_auc_score(labels, scores))


def compute_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    views: np.ndarray | None = None,
    components: dict[str, np.ndarray] | None = None,
) -> Metrics:
    """Metrics of ``scores`` (higher = more abnormal) against 0/1 ``labels``."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    num_abnormal = int((labels == 1).sum())
    num_normal = int((labels == 0).sum())
    note = ""
    if num_abnormal == 0 or num_normal == 0:
        note = f"AUC undefined: {num_normal} normal and {num_abnormal} abnormal films"
    auc = safe_auc(labels, scores)
    average_precision = (
        float(average_precision_score(labels, scores)) if auc is not None else None
    )
    per_view: dict[str, float | None] = {}
    if views is not None:
        view_values = np.asarray(views, dtype=object)
        for view in sorted({str(v) for v in view_values if isinstance(v, str) and v}):
            mask = view_values == view
            per_view[view] = safe_auc(labels[mask], scores[mask])
    component_auc = {
        name: safe_auc(labels, values)
        for name, values in (components or {}).items()
        if not np.all(np.isnan(values))
    }
    return Metrics(auc, average_precision, num_normal, num_abnormal, per_view, component_auc, note)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "ROC") -> Path:
    """Write one ROC plot with a curve per name; ``curves`` maps name -> (labels, scores)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    for name, (labels, scores) in curves.items():
        auc = safe_auc(labels, scores)
        if auc is None:
            logger.warning("no ROC curve for %s: one class only", name)
            continue
        false_positive, true_positive, _ = roc_curve(np.asarray(labels).astype(int), scores)
        axis.plot(false_positive, true_positive, label=f"{name} (AUC {auc:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("false positive rate (1 - specificity)")
    axis.set_ylabel("true positive rate (sensitivity)")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def reconstruction_grid(
    rows: list[tuple[str, np.ndarray, np.ndarray]], path: str | Path, per_row: int = 8, title: str = ""
) -> Path:
    """Write a grid like the paper's Figure 2: for each titled group, inputs above reconstructions.

    Args:
        rows: (title, inputs uint8 (N, H, W), reconstructions uint8 (N, H, W)) per group.
        path: PNG to write.
        per_row: films shown per group.
        title: a line above the whole figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(name, inputs[:per_row], outputs[:per_row]) for name, inputs, outputs in rows if len(inputs)]
    if not groups:
        raise ValueError("reconstruction_grid: no images to show")
    figure, axes = plt.subplots(len(groups), 1, figsize=(8, 2.3 * len(groups)), dpi=100, squeeze=False)
    for axis, (name, inputs, outputs) in zip(axes[:, 0], groups):
        # (N, H, W) films side by side: (H, N*W); inputs stacked above outputs: (2H, N*W)
        mosaic = np.concatenate([np.concatenate(list(inputs), axis=1), np.concatenate(list(outputs), axis=1)])
        axis.imshow(mosaic, cmap="gray", vmin=0, vmax=255)
        axis.set_title(f"{name}: input (top), reconstruction (bottom)", fontsize=9, loc="left")
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
