"""Operating points: what a raw score means among normal films, and where to draw the line.

A raw score (eq. 6) has no unit: its scale changes with every trained model. A
:class:`Calibration`, fitted on validation films and stored in the checkpoint, turns it into
numbers that mean the same thing film by film:

- the **percentile** of a film among the normal validation films (95 means "higher than 95% of
  normal films"), and a robust z-score against them;
- a **decision threshold** chosen for a stated operating point:

  * from normal films alone, the ``target_specificity`` quantile of their scores (a film above it
    is flagged; about ``1 - target_specificity`` of normal films will be flagged too);
  * when the validation set also holds abnormal films and a ``target_sensitivity`` is asked
    for, the highest threshold that flags at least that fraction of them, with the specificity
    it costs on the validation normals.

Thresholds are never guessed from a criterion that needs both classes when only one is there
(anomalib's F1-adaptive threshold picks an absurd value on normal-only validation sets, issues
#2433 and #3357): without abnormal films a sensitivity target falls back, with a logged
warning and a note in the calibration, to the specificity target, and every threshold is a
finite value inside the range of the validation scores.

:func:`bootstrap_intervals` gives 95% confidence intervals on a labelled test set: Wilson
intervals for sensitivity and specificity, and a stratified BCa bootstrap for the AUC that falls
back to Bamber's variance bound where the bootstrap collapses (AUC 0 or 1, a class of a few films).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy.stats import bootstrap as stats_bootstrap
from scipy.stats import norm, rankdata

logger = logging.getLogger(__name__)

NUM_STORED_QUANTILES = 1001
MIN_RELIABLE_ABNORMALS = 20  # below this a sensitivity threshold is fitted but a warning is logged


@dataclass
class Calibration:
    """Where a raw score lies among the scores of normal validation films, and the threshold.

    Attributes:
        normal_quantiles: quantiles 0, 0.001, ..., 1 of the normal films' raw scores.
        median: median of those scores.
        scale: 1.4826 x their median absolute deviation (a robust standard deviation).
        threshold: raw score above which a film is flagged (the operating point in use).
        target_specificity: the fraction of normal films meant to fall below
            ``specificity_threshold``.
        num_normals: how many normal films the calibration saw.
        operating_point: ``"specificity"`` when ``threshold`` was chosen for
            ``target_specificity``, ``"sensitivity"`` when chosen for ``target_sensitivity``.
        target_sensitivity: the fraction of abnormal validation films meant to be flagged, if
            one was asked for.
        specificity_threshold: the ``target_specificity`` quantile of the normal scores (equal
            to ``threshold`` under the specificity operating point).
        validation_specificity: fraction of normal validation films at or below ``threshold``.
        validation_sensitivity: fraction of abnormal validation films above ``threshold``; None
            when the validation set held none.
        num_abnormals: how many abnormal validation films were seen.
        note: why the operating point differs from the one asked for, if it does.
        map_floor: anomaly-map value of a typical normal location (the median over the normal
            validation films' maps): heatmaps are transparent at and below it.
        map_ceiling: the 99.9th percentile of those values: heatmaps are opaque at and above it.
            Both None for calibrations made without maps.
    """

    normal_quantiles: list[float]
    median: float
    scale: float
    threshold: float
    target_specificity: float
    num_normals: int
    operating_point: str = "specificity"
    target_sensitivity: float | None = None
    specificity_threshold: float | None = None
    validation_specificity: float | None = None
    validation_sensitivity: float | None = None
    num_abnormals: int = 0
    note: str = ""
    map_floor: float | None = None
    map_ceiling: float | None = None

    def with_map_range(self, normal_maps: np.ndarray) -> Calibration:
        """A copy whose heatmap range comes from the anomaly maps (N, h, w) of normal validation films.

        A fixed range per model, learnt from normal films, makes a colour mean the same on every
        film: a normal film stays nearly transparent, and only locations more unusual than almost
        every normal location are painted at full strength.
        """
        values = np.asarray(normal_maps, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            return self
        floor, ceiling = float(np.median(values)), float(np.quantile(values, 0.999))
        if not ceiling > floor:
            ceiling = floor + max(abs(floor), 1.0) * 1e-3
        return dataclasses.replace(self, map_floor=floor, map_ceiling=ceiling)

    def standardise(self, raw: np.ndarray) -> np.ndarray:
        """Robust z-score of raw scores against the normal films: 0 is a typical normal."""
        return (np.asarray(raw, dtype=np.float64) - self.median) / self.scale

    def percentile(self, raw: np.ndarray) -> np.ndarray:
        """Percentile (0-100) of raw scores among the normal films, by interpolation."""
        levels = np.linspace(0.0, 100.0, len(self.normal_quantiles))
        quantiles = np.maximum.accumulate(np.asarray(self.normal_quantiles, dtype=np.float64))
        return np.interp(np.asarray(raw, dtype=np.float64), quantiles, levels)

    def flag(self, raw: np.ndarray) -> np.ndarray:
        """True where a raw score exceeds the stored threshold."""
        return np.asarray(raw) > self.threshold

    def summary(self) -> dict[str, object]:
        """The operating point without the stored quantiles, for reports and the API."""
        values = self.to_dict()
        values.pop("normal_quantiles")
        return values

    def to_dict(self) -> dict[str, object]:
        """Plain values for a checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> Calibration:
        """Inverse of :meth:`to_dict`; also reads calibrations written before fields were added.

        Keys this version does not know (from a newer writer) are ignored with a warning.
        """
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            logger.warning("ignoring unknown calibration fields %s (written by a newer version?)", unknown)
        calibration = cls(**{key: value for key, value in values.items() if key in known})  # type: ignore[arg-type]
        if calibration.specificity_threshold is None and calibration.operating_point == "specificity":
            calibration.specificity_threshold = calibration.threshold
        return calibration


def _check_scores(scores: np.ndarray, what: str, minimum: int) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size < minimum:
        raise ValueError(f"calibration needs at least {minimum} {what} scores, got {scores.size}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"calibration {what} scores contain NaN or infinity")
    return scores


def sensitivity_threshold(abnormal_scores: np.ndarray, normal_scores: np.ndarray, target_sensitivity: float) -> float:
    """The highest threshold t with mean(abnormal > t) >= ``target_sensitivity``.

    t sits halfway between the k-th highest abnormal score (k = ceil(target x count)) and the
    next lower validation score of either class, so it does not hug a single film's score.
    """
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity={target_sensitivity}; expected a value in (0, 1]")
    abnormal = np.sort(_check_scores(abnormal_scores, "abnormal", 1))[::-1]  # highest first
    needed = max(1, math.ceil(target_sensitivity * abnormal.size - 1e-9))
    kth = float(abnormal[needed - 1])
    everything = np.concatenate([abnormal, np.asarray(normal_scores, dtype=np.float64)])
    lower = everything[everything < kth]
    if lower.size:
        return (kth + float(lower.max())) / 2.0
    return float(np.nextafter(kth, -np.inf))


def fit_calibration(
    normal_raw_scores: np.ndarray,
    target_specificity: float,
    *,
    abnormal_raw_scores: np.ndarray | None = None,
    target_sensitivity: float | None = None,
) -> Calibration:
    """Fit a :class:`Calibration` on raw scores of validation films.

    Args:
        normal_raw_scores: raw scores of normal validation films (at least 2).
        target_specificity: quantile of the normal scores used as the threshold when no
            sensitivity target applies, in (0, 1).
        abnormal_raw_scores: raw scores of abnormal validation films, if any.
        target_sensitivity: when given and abnormal films exist, the threshold flags at least
            this fraction of them; without abnormal films this falls back to the specificity
            target (logged, and recorded in ``note``).

    Raises:
        ValueError: fewer than 2 normal scores, a non-finite score, or a target outside (0, 1).
    """
    if not 0.0 < target_specificity < 1.0:
        raise ValueError(f"target_specificity={target_specificity}; expected a value in (0, 1)")
    scores = _check_scores(normal_raw_scores, "normal", 2)
    abnormal = np.zeros(0) if abnormal_raw_scores is None else _check_scores(abnormal_raw_scores, "abnormal", 0)
    median = float(np.median(scores))
    scale = 1.4826 * float(np.median(np.abs(scores - median)))
    if scale <= 0.0:  # identical scores: fall back to the standard deviation, then to 1
        scale = float(scores.std()) or 1.0
    quantiles = np.quantile(scores, np.linspace(0.0, 1.0, NUM_STORED_QUANTILES))
    specificity_cut = float(np.quantile(scores, target_specificity))
    threshold, operating_point, note = specificity_cut, "specificity", ""
    if target_sensitivity is not None:
        if abnormal.size == 0:
            note = (
                f"target sensitivity {target_sensitivity} asked for, but the validation set holds "
                f"no abnormal films: using the specificity target {target_specificity} instead"
            )
            logger.warning("%s", note)
        else:
            threshold = sensitivity_threshold(abnormal, scores, target_sensitivity)
            operating_point = "sensitivity"
            if abnormal.size < MIN_RELIABLE_ABNORMALS:
                note = (
                    f"sensitivity threshold fitted on only {abnormal.size} abnormal films; "
                    "its sensitivity on new films is uncertain"
                )
                logger.warning("%s", note)
    validation_specificity = float(np.mean(scores <= threshold))
    validation_sensitivity = float(np.mean(abnormal > threshold)) if abnormal.size else None
    if operating_point == "sensitivity":
        logger.info(
            "threshold %.4g for sensitivity %.3f costs specificity %.3f on %d validation normals",
            threshold,
            validation_sensitivity,
            validation_specificity,
            scores.size,
        )
    return Calibration(
        normal_quantiles=[float(value) for value in quantiles],
        median=median,
        scale=scale,
        threshold=float(threshold),
        target_specificity=target_specificity,
        num_normals=int(scores.size),
        operating_point=operating_point,
        target_sensitivity=target_sensitivity,
        specificity_threshold=specificity_cut,
        validation_specificity=validation_specificity,
        validation_sensitivity=validation_sensitivity,
        num_abnormals=int(abnormal.size),
        note=note,
    )


MIN_FILMS_FOR_AUC_BOOTSTRAP = 10  # per class; fewer give too few distinct resamples to trust BCa


@dataclass
class Interval:
    """A point estimate with its confidence interval; all None when undefined.

    Attributes:
        estimate: the value measured on the films.
        low: lower end of the interval.
        high: upper end of the interval.
        method: how the interval was computed: ``wilson`` (a binomial proportion),
            ``bca_bootstrap`` (the AUC, by bias-corrected and accelerated stratified bootstrap) or
            ``bamber_wilson`` (the AUC, where the bootstrap cannot resolve it; see
            :func:`bootstrap_intervals`); empty when undefined.
    """

    estimate: float | None
    low: float | None
    high: float | None
    method: str = ""

    def describe(self, digits: int = 3) -> str:
        """``estimate [low, high]``, the estimate alone without an interval, or ``n/a``."""
        if self.estimate is None:
            return "n/a"
        if self.low is None or self.high is None:
            return f"{self.estimate:.{digits}f}"
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass
class BootstrapIntervals:
    """Confidence intervals of ranking and decision quality on a labelled set.

    Attributes:
        auc: ROC AUC of the raw score.
        sensitivity: fraction of abnormal films above the threshold.
        specificity: fraction of normal films at or below the threshold.
        threshold: the raw-score threshold the decisions used.
        confidence: the interval's coverage (0.95 for 95%).
        num_resamples: bootstrap resamples drawn for the AUC.
        seed: seed of the resampling generator.
    """

    auc: Interval
    sensitivity: Interval
    specificity: Interval
    threshold: float
    confidence: float
    num_resamples: int
    seed: int

    def to_dict(self) -> dict[str, object]:
        """Plain values for JSON."""
        return asdict(self)


def auc_from_ranks(abnormal: np.ndarray, normal: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mann-Whitney AUC (ties count one half) of abnormal versus normal scores along ``axis``.

    Leading dimensions broadcast, so one call scores a whole batch of bootstrap or jackknife
    resamples.
    """
    abnormal = np.moveaxis(np.asarray(abnormal, dtype=np.float64), axis, -1)
    normal = np.moveaxis(np.asarray(normal, dtype=np.float64), axis, -1)
    leading = np.broadcast_shapes(abnormal.shape[:-1], normal.shape[:-1])
    abnormal = np.broadcast_to(abnormal, leading + abnormal.shape[-1:])
    normal = np.broadcast_to(normal, leading + normal.shape[-1:])
    count_abnormal, count_normal = abnormal.shape[-1], normal.shape[-1]
    ranks = rankdata(np.concatenate([abnormal, normal], axis=-1), axis=-1)
    rank_sum = ranks[..., :count_abnormal].sum(axis=-1)
    return (rank_sum - count_abnormal * (count_abnormal + 1) / 2.0) / (count_abnormal * count_normal)


def wilson_interval(estimate: float, count: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a proportion ``estimate`` observed on ``count`` trials.

    Unlike the normal approximation or a percentile bootstrap, it does not collapse to a point
    at 0 or 1: 30 of 30 gives [0.886, 1] at 95%.
    """
    z = float(norm.ppf(0.5 + confidence / 2.0))
    denominator = 1.0 + z * z / count
    centre = (estimate + z * z / (2.0 * count)) / denominator
    half = z / denominator * math.sqrt(max(estimate * (1.0 - estimate), 0.0) / count + z * z / (4.0 * count * count))
    # At 0 and 1 an end equals the estimate exactly; rounding would leave 0.9999999999999999.
    low = 0.0 if estimate <= 0.0 else max(0.0, centre - half)
    high = 1.0 if estimate >= 1.0 else min(1.0, centre + half)
    return low, high


def _proportion(hits: np.ndarray, confidence: float) -> Interval:
    if hits.size == 0:
        return Interval(None, None, None)
    estimate = float(np.mean(hits))
    low, high = wilson_interval(estimate, int(hits.size), confidence)
    return Interval(estimate, low, high, "wilson")


def _auc_interval(
    abnormal: np.ndarray, normal: np.ndarray, confidence: float, num_resamples: int, rng: np.random.Generator
) -> Interval:
    """BCa bootstrap of the AUC, or Bamber's bound where the bootstrap cannot resolve it."""
    estimate = float(auc_from_ranks(abnormal, normal))
    smaller = min(abnormal.size, normal.size)
    # At AUC 0 or 1, or with one score for every film, every resample gives the same AUC: the
    # bootstrap distribution has collapsed and BCa would return NaN (with a warning).
    collapsed = estimate in (0.0, 1.0) or float(np.ptp(np.concatenate([abnormal, normal]))) == 0.0
    low = high = math.nan
    if smaller >= MIN_FILMS_FOR_AUC_BOOTSTRAP and not collapsed:
        result = stats_bootstrap(
            (abnormal, normal),
            auc_from_ranks,
            n_resamples=num_resamples,
            batch=100,
            vectorized=True,
            confidence_level=confidence,
            method="BCa",
            rng=rng,
        )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if math.isfinite(low) and math.isfinite(high) and high > low:
        # BCa can shift the interval past the estimate on very skewed resamples; keep it inside.
        return Interval(estimate, min(low, estimate), max(high, estimate), "bca_bootstrap")
    # Bamber (1975): var(AUC) <= AUC (1 - AUC) / min(n_abnormal, n_normal). Inverting that bound as
    # Wilson inverts the binomial variance gives an interval that stays open at AUC 0 or 1 and
    # with a class of one film, where every bootstrap resample is the same.
    low, high = wilson_interval(estimate, smaller, confidence)
    return Interval(estimate, low, high, "bamber_wilson")


def auc_interval(
    labels: np.ndarray, scores: np.ndarray, *, num_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """The AUC of ``scores`` against 0/1 ``labels`` with the interval of :func:`bootstrap_intervals`.

    An undefined interval (all None) when a class is missing or a score is not finite.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    abnormal, normal = scores[labels == 1], scores[labels == 0]
    if not abnormal.size or not normal.size or not np.all(np.isfinite(scores)):
        return Interval(None, None, None)
    return _auc_interval(abnormal, normal, confidence, num_resamples, np.random.default_rng(seed))


def bootstrap_intervals(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    *,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapIntervals:
    """Confidence intervals for AUC, sensitivity and specificity at ``threshold``.

    Sensitivity and specificity are binomial proportions and get Wilson score intervals, which
    stay honest at 0 and 1 and on small classes (a percentile bootstrap reports 1.000
    [1.000, 1.000] for 30 normal films all below the threshold; Wilson gives [0.886, 1]). The AUC
    gets a BCa interval from ``scipy.stats.bootstrap``, resampling normal and abnormal films
    within their class so every resample holds both classes in their original numbers. Where
    that bootstrap cannot resolve the AUC (its resamples all agree, as at AUC 0 or 1, or the
    smaller class has fewer than 10 films), the interval comes from Bamber's variance bound
    (see ``Interval.method``). Metrics that need a missing class are reported as None.

    Args:
        labels: 0 (normal) / 1 (abnormal) per film.
        scores: raw scores, higher is more abnormal.
        threshold: films with a score above it are flagged.
        num_resamples: bootstrap resamples for the AUC.
        confidence: coverage of the intervals, in (0, 1).
        seed: seed of the resampling generator.

    Raises:
        ValueError: a confidence outside (0, 1), fewer than 1 resample, labels and scores of
            different shapes, or non-finite scores.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}; expected a value in (0, 1)")
    if num_resamples < 1:
        raise ValueError(f"num_resamples={num_resamples}; expected at least 1")
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in shape")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinity")
    abnormal, normal = scores[labels == 1], scores[labels == 0]
    rng = np.random.default_rng(seed)
    auc = (
        _auc_interval(abnormal, normal, confidence, num_resamples, rng)
        if abnormal.size and normal.size
        else Interval(None, None, None)
    )
    return BootstrapIntervals(
        auc=auc,
        sensitivity=_proportion(abnormal > threshold, confidence),
        specificity=_proportion(normal <= threshold, confidence),
        threshold=float(threshold),
        confidence=confidence,
        num_resamples=num_resamples,
        seed=seed,
    )


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
    return PlacedScore(
        float(calibration.standardise(raw)[0]),
        "calibrated",
        percentile=float(calibration.percentile(raw)[0]),
        decision="flag" if bool(calibration.flag(raw)[0]) else "normal",
        threshold=calibration.threshold,
    )
