"""Metrics and figures: AUC within and across views, the view shortcut, ROC curves, film grids.

AUC and average precision need both classes; where one is missing they are reported as None
with the reason, never as a made-up number.

View position (PA/AP) carries much of the label in chest X-ray collections (portable AP films
are taken of sicker patients), so an overall AUC alone can reward a detector for recognising how
a film was taken. :func:`compute_metrics` therefore reports, beside the overall AUC:

- ``auc_per_view``: the AUC within each view;
- ``auc_view_balanced``: the mean of the per-view AUCs (views that hold both classes);
- ``auc_view_only``: the AUC of the view alone as a score (AP = 1) on the same films, the
  number a detector that only recognises the view would get;
- ``auc_score_predicts_ap_in_normals``: how well the score separates AP from PA among normal
  films (0.5: the score ignores the view; far from 0.5: it encodes it);
- the same for adults (age >= 18) where ages are known (``adults``), since children's films
  look unusual to a model of adult normals for reasons unrelated to disease;

each with a 95% stratified-bootstrap interval (``intervals``). A detector beats a baseline only
when it does within each view.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from .calibration import Interval, auc_from_ranks, auc_interval
from .explain import overlay_heatmap, to_uint8_grey

if TYPE_CHECKING:
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)


VIEW_ORDER: tuple[str, ...] = ("PA", "AP")
ADULT_AGE = 18


@dataclass
class Metrics:
    """Ranking quality of one score against labels (1 = abnormal).

    Attributes:
        auc: area under the ROC curve, or None when a class is missing.
        average_precision: area under the precision-recall curve, or None likewise.
        num_normal: labelled normal films scored.
        num_abnormal: labelled abnormal films scored.
        auc_per_view: AUC within each view position (None where a class is missing).
        auc_view_balanced: mean of the per-view AUCs that are defined; None without views.
        auc_view_only: AUC of "view is AP" as the score on the same films; None without views.
        auc_score_predicts_ap_in_normals: AUC of the score for AP against PA among normals.
        component_auc: AUC of each score component on its own.
        adults: the same metrics on films of patients aged 18 or more, when ages are known.
        intervals: 95% stratified-bootstrap intervals, keyed like the metrics above
            (``auc``, ``auc_view_balanced``, ``auc_view_only``, ``auc_score_predicts_ap_in_normals``,
            ``auc_view_PA``, ...).
        note: why a metric is missing, if one is.
    """

    auc: float | None
    average_precision: float | None
    num_normal: int
    num_abnormal: int
    auc_per_view: dict[str, float | None] = field(default_factory=dict)
    auc_view_balanced: float | None = None
    auc_view_only: float | None = None
    auc_score_predicts_ap_in_normals: float | None = None
    component_auc: dict[str, float | None] = field(default_factory=dict)
    adults: dict[str, object] | None = None
    intervals: dict[str, Interval] = field(default_factory=dict)
    num_per_view: dict[str, dict[str, int]] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        """Plain values for JSON."""
        return asdict(self)

    def interval(self, key: str) -> Interval:
        """The interval of a metric key, or an undefined one."""
        return self.intervals.get(key, Interval(None, None, None))


def safe_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None when only one class is present or a score is not finite."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    if len(np.unique(labels)) < 2 or not np.all(np.isfinite(scores)):
        return None
    return float(roc_auc_score(labels, scores))


def balanced_auc_interval(
    labels: np.ndarray,
    scores: np.ndarray,
    balanced_over: np.ndarray,
    *,
    num_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """The mean of the AUCs within each value of ``balanced_over`` (a view per film) that holds
    both classes, with a percentile interval from a bootstrap stratified by view and class.

    Resampling within each (view, class) cell keeps every cell's size, so no resample loses a
    class. (The plain AUCs use :func:`cxr_anomaly.calibration.auc_interval`, BCa with a bound
    where the bootstrap collapses; a mean of AUCs has no such closed-form bound.)
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(balanced_over, dtype=object)

    def statistic(chosen: np.ndarray) -> float | None:
        values = []
        for group in _defined_groups(labels[chosen], groups[chosen]):
            mask = groups[chosen] == group
            values.append(
                float(
                    auc_from_ranks(
                        scores[chosen][mask][labels[chosen][mask] == 1], scores[chosen][mask][labels[chosen][mask] == 0]
                    )
                )
            )
        return float(np.mean(values)) if values else None

    everything = np.arange(len(labels))
    if not np.all(np.isfinite(scores)):
        return Interval(None, None, None)
    estimate = statistic(everything)
    if estimate is None or num_resamples == 0:
        return Interval(estimate, None, None)
    cells = np.asarray([f"{group}|{label}" for group, label in zip(groups, labels)], dtype=object)
    members = [np.flatnonzero(cells == cell) for cell in np.unique(cells)]
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(num_resamples):
        chosen = np.concatenate([rng.choice(member, size=len(member), replace=True) for member in members])
        value = statistic(chosen)
        if value is not None:
            samples.append(value)
    if not samples:  # num_resamples = 0: the estimate alone
        return Interval(estimate, None, None)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.asarray(samples), [tail, 1.0 - tail])
    return Interval(estimate, float(low), float(high), "percentile_bootstrap")


def _defined_groups(labels: np.ndarray, groups: np.ndarray) -> list[object]:
    """Groups that hold both classes."""
    return [group for group in dict.fromkeys(groups.tolist()) if len(np.unique(labels[groups == group])) == 2]


def _known_views(views: np.ndarray | None, count: int) -> np.ndarray | None:
    """Views as an object array with "" for unknown, or None when no film has a view."""
    if views is None:
        return None
    values = np.asarray([value if isinstance(value, str) else "" for value in views], dtype=object)
    if len(values) != count or not any(values):
        return None
    return values


def _interval_of(
    labels: np.ndarray,
    values: np.ndarray,
    balanced_over: np.ndarray | None,
    *,
    num_resamples: int,
    seed: int,
) -> Interval:
    """AUC of ``values`` with its bootstrap interval (view-balanced when ``balanced_over`` is given)."""
    if balanced_over is not None:
        return balanced_auc_interval(labels, values, balanced_over, num_resamples=num_resamples, seed=seed)
    if num_resamples:
        return auc_interval(labels, values, num_resamples=num_resamples, seed=seed)
    return Interval(safe_auc(labels, values), None, None)


def _adult_figures(
    labels: np.ndarray,
    scores: np.ndarray,
    view_values: np.ndarray | None,
    ages: np.ndarray,
    *,
    num_resamples: int,
    seed: int,
) -> dict[str, object] | None:
    """The metrics of adult films only (``None`` when there is none), with the count left out."""
    age_values = np.asarray(pd.to_numeric(pd.Series(ages), errors="coerce"), dtype=np.float64)
    adult = age_values >= ADULT_AGE
    if not adult.any():  # computed also when every film is an adult, so that tables have no hole
        return None
    adult_metrics = compute_metrics(
        labels[adult],
        scores[adult],
        views=None if view_values is None else view_values[adult],
        num_resamples=num_resamples,
        seed=seed,
    )
    adults = {
        key: value
        for key, value in adult_metrics.to_dict().items()
        if key not in ("adults", "component_auc", "average_precision", "note")
    }
    adults["num_excluded_minors_or_unknown_age"] = int((~adult).sum())
    return adults


def compute_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    views: np.ndarray | None = None,
    components: dict[str, np.ndarray] | None = None,
    ages: np.ndarray | None = None,
    num_resamples: int = 1000,
    seed: int = 0,
) -> Metrics:
    """Metrics of ``scores`` (higher = more abnormal) against 0/1 ``labels``; see the module docstring.

    ``num_resamples = 0`` skips the bootstrap intervals.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    num_abnormal = int((labels == 1).sum())
    num_normal = int((labels == 0).sum())
    note = ""
    if num_abnormal == 0 or num_normal == 0:
        note = f"AUC undefined: {num_normal} normal and {num_abnormal} abnormal films"
    auc = safe_auc(labels, scores)
    average_precision = float(average_precision_score(labels, scores)) if auc is not None else None
    view_values = _known_views(views, len(labels))

    def with_interval(
        key: str, values_labels: np.ndarray, values: np.ndarray, balanced_over: np.ndarray | None = None
    ) -> float | None:
        intervals[key] = _interval_of(values_labels, values, balanced_over, num_resamples=num_resamples, seed=seed)
        return intervals[key].estimate

    intervals: dict[str, Interval] = {}
    with_interval("auc", labels, scores)
    per_view: dict[str, float | None] = {}
    num_per_view: dict[str, dict[str, int]] = {}
    balanced = view_only = view_from_score = None
    if view_values is not None:
        present = sorted({str(v) for v in view_values if v}, key=lambda v: (VIEW_ORDER + (v,)).index(v))
        for view in present:
            mask = view_values == view
            num_per_view[view] = {"normal": int((labels[mask] == 0).sum()), "abnormal": int((labels[mask] == 1).sum())}
            per_view[view] = with_interval(f"auc_view_{view}", labels[mask], scores[mask])
        known = view_values != ""
        balanced = with_interval("auc_view_balanced", labels[known], scores[known], balanced_over=view_values[known])
        is_ap = (view_values == "AP").astype(np.float64)
        view_only = with_interval("auc_view_only", labels[known], is_ap[known])
        normal_known = known & (labels == 0)
        view_from_score = with_interval(
            "auc_score_predicts_ap_in_normals", is_ap[normal_known].astype(int), scores[normal_known]
        )
    component_auc = {
        name: safe_auc(labels, values) for name, values in (components or {}).items() if not np.all(np.isnan(values))
    }
    adults = None
    if ages is not None:
        adults = _adult_figures(labels, scores, view_values, ages, num_resamples=num_resamples, seed=seed)
    return Metrics(
        auc,
        average_precision,
        num_normal,
        num_abnormal,
        per_view,
        balanced,
        view_only,
        view_from_score,
        component_auc,
        adults,
        intervals,
        num_per_view,
        note,
    )


def metrics_by_name(
    labels: np.ndarray, named_scores: dict[str, np.ndarray], films: pd.DataFrame, *, num_resamples: int, seed: int = 0
) -> dict[str, dict[str, object]]:
    """:meth:`Metrics.to_dict` of each named score of the same ``films`` (their ``view`` and, when
    present, ``age`` columns give the per-view and adult figures), as the detector's are computed."""
    views = films["view"].to_numpy()
    ages = films["age"].to_numpy() if "age" in films else None
    return {
        name: compute_metrics(labels, scores, views=views, ages=ages, num_resamples=num_resamples, seed=seed).to_dict()
        for name, scores in named_scores.items()
    }


def save_figure(figure: object, path: str | Path, *, layout: bool = True) -> Path:
    """Lay out a matplotlib figure (unless the caller did: ``layout=False``), write it (creating
    the folder) and close it."""
    import matplotlib.pyplot as plt

    if layout:
        figure.tight_layout()  # type: ignore[attr-defined]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)  # type: ignore[attr-defined]
    plt.close(figure)  # type: ignore[arg-type]
    return path


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "ROC") -> Path:
    """Write one ROC plot with a curve per name; ``curves`` maps name -> (labels, scores)."""
    return plot_roc_panels({title: curves}, path)


def plot_roc_panels(
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], path: str | Path, title: str = ""
) -> Path:
    """Write ROC plots side by side, one panel per title (e.g. all films, PA films, AP films).

    ``panels`` maps a panel title -> curves, each curve name -> (labels, scores).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.5), dpi=110, squeeze=False)
    for axis, (panel_title, curves) in zip(axes[0], panels.items()):
        for name, (labels, scores) in curves.items():
            auc = safe_auc(labels, scores)
            if auc is None:
                logger.warning("no ROC curve for %s in %s: one class only", name, panel_title)
                continue
            false_positive, true_positive, _ = roc_curve(np.asarray(labels).astype(int), scores)
            axis.plot(false_positive, true_positive, label=f"{name} (AUC {auc:.3f})")
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel("false positive rate (1 - specificity)")
        axis.set_ylabel("true positive rate (sensitivity)")
        axis.set_title(panel_title)
        axis.legend(loc="lower right", fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)


def reconstruction_grid(
    rows: list[tuple[str, np.ndarray, np.ndarray]], path: str | Path, per_row: int = 8, title: str = ""
) -> Path:
    """Write a grid like the paper's Figure 2: for each titled group, inputs above reconstructions.

    Args:
        rows: (title, inputs uint8 or uint16 (N, H, W), reconstructions uint8 (N, H, W)) per group.
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
        shown = [to_uint8_grey(film) for film in inputs]  # 16-bit codes rounded to 8 bits for the picture
        mosaic = np.concatenate([np.concatenate(shown, axis=1), np.concatenate(list(outputs), axis=1)])
        axis.imshow(mosaic, cmap="gray", vmin=0, vmax=255)
        axis.set_title(f"{name}: input (top), reconstruction (bottom)", fontsize=9, loc="left")
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)


@dataclass
class FilmGroup:
    """Films of one kind for :func:`explanation_grid`.

    Attributes:
        title: e.g. "normal" or "abnormal".
        pixels: (N, S, S) codes of the films as the detector read them (uint8, or uint16).
        anomaly_maps: float (N, h, w) maps of the detector.
        scores: raw scores (N,).
        reconstructions: uint8 (N, S, S) for families that reconstruct, else None.
    """

    title: str
    pixels: np.ndarray
    anomaly_maps: np.ndarray
    scores: np.ndarray
    reconstructions: np.ndarray | None = None


def _label_row(axis: Axes, text: str) -> None:
    """Write ``text`` sideways to the left of ``axis``, naming the row of the grid it starts."""
    axis.text(-0.1, 0.5, text, transform=axis.transAxes, rotation=90, va="center", ha="right", fontsize=7)


def explanation_grid(
    groups: list[FilmGroup],
    path: str | Path,
    *,
    scale: float,
    floor: float = 0.0,
    border_crop: float = 0.0,
    per_row: int = 6,
    title: str = "",
) -> Path:
    """Write a figure of films per group, highest scores first: each film with its score above,
    its heatmap below it, and its reconstruction where the family makes one (the paper's Figure 2
    layout, with the residual map that the paper's figure leaves implicit).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [group for group in groups if len(group.pixels)]
    if not groups:
        raise ValueError("explanation_grid: no films to show")
    rows_per_group = 3 if any(group.reconstructions is not None for group in groups) else 2
    figure, axes = plt.subplots(
        rows_per_group * len(groups),
        per_row,
        squeeze=False,
        figsize=(1.5 * per_row, 1.65 * rows_per_group * len(groups)),
        dpi=100,
    )
    for group_index, group in enumerate(groups):
        order = np.argsort(-group.scores, kind="stable")[:per_row]
        for column in range(per_row):
            cells = axes[group_index * rows_per_group : (group_index + 1) * rows_per_group, column]
            for axis in cells:
                axis.axis("off")
            if column >= len(order):
                continue
            index = order[column]
            cells[0].imshow(to_uint8_grey(group.pixels[index]), cmap="gray", vmin=0, vmax=255)
            cells[0].set_title(f"{group.title}\nraw score {group.scores[index]:.3g}", fontsize=7)
            cells[1].imshow(
                overlay_heatmap(
                    group.pixels[index], group.anomaly_maps[index], scale=scale, floor=floor, border_crop=border_crop
                )
            )
            if group.reconstructions is not None:
                cells[2].imshow(group.reconstructions[index], cmap="gray", vmin=0, vmax=255)
        _label_row(axes[group_index * rows_per_group + 1, 0], "heatmap")
        if group.reconstructions is not None:
            _label_row(axes[group_index * rows_per_group + 2, 0], "reconstruction")
    figure.suptitle(title or "Highest-scoring films per group (raw scores: the detector's own scale)", fontsize=8)
    # the colour bar's own axes sit below the laid-out grid: tight_layout cannot place such axes
    bar_band = 0.75 / figure.get_figheight()  # three quarters of an inch, whatever the number of groups
    figure.tight_layout(rect=(0.0, bar_band, 1.0, 1.0))
    mappable = plt.cm.ScalarMappable(norm=matplotlib.colors.Normalize(vmin=floor, vmax=scale), cmap="inferno")
    bar_axis = figure.add_axes((0.1, bar_band * 0.62, 0.8, bar_band * 0.15))
    bar = figure.colorbar(mappable, cax=bar_axis, orientation="horizontal")
    bar.set_label(
        f"heatmap: anomaly map value, clear at {floor:.3g} and below, full colour at {scale:.3g} and above", fontsize=7
    )
    bar.ax.tick_params(labelsize=6)
    return save_figure(figure, path, layout=False)
