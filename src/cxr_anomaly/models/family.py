"""What a detector family tells the rest of the package: one :class:`DetectorFamily` record.

Each family folder (``models/<family>/``) exports its record as ``FAMILY`` from its
``__init__.py``; :mod:`cxr_anomaly.models.registry` lists the records and finds one by name.
Jobs, checkpoints, the export and the service reach a family only through its record, so none
of them names a family.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config, FamilySettings
from ..errors import ConfigError
from .base import AnomalyDetector

# The score key of a family whose benchmark rows read the detector's own score (``raw``).
RAW_SCORE = "raw"
# What the record of an ``add_normals`` refit says about the refit itself: films added, films the
# model held before, seconds.
REFIT_RECORD_KEYS = ("films_added", "previous_num_train_images", "seconds")


@dataclass(frozen=True)
class FitOptions:
    """Where and how a fit runs, the same for every family.

    Attributes:
        device: where the fit computes.
        progress: show progress bars.
        run_dir: the run folder, for families that keep resumable training states there.
        resume: continue from the training state in ``run_dir`` (families that have one).
    """

    device: torch.device | str = "cpu"
    progress: bool = True
    run_dir: str | Path | None = None
    resume: bool = False


@dataclass
class FitResult:
    """A fitted detector and a plain-value record of the fit for the checkpoint.

    Attributes:
        detector: the fitted detector, in eval mode.
        record: JSON-serialisable facts of the fit (films used, seconds, history, ...); stored
            as the checkpoint's ``training`` field.
        world_size: processes that took part (several only for families that train under torchrun).
    """

    detector: AnomalyDetector
    record: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1


def no_resume(run_dir: str | Path, config: Config) -> Config:
    """The configuration of a resumed run for a family fitted in one pass: the given one."""
    return config


def no_setting(spec: str, setting: str) -> None:
    """A benchmark row of a family without settings (``NAME``) accepts no ``NAME:SETTING``."""
    if setting:
        raise ConfigError(f"method {spec!r}: this family takes no setting after ':'")


@dataclass(frozen=True)
class BenchmarkCells:
    """How ``cxr-anomaly benchmark`` turns ``--methods NAME[:SETTING]`` rows into fits and scores.

    Attributes:
        spec_help: the row forms the family accepts, for error messages (``NAME:VARIANT``).
        check_setting: ``(spec, setting)``: raise :class:`~cxr_anomaly.errors.ConfigError` for a
            setting the family does not know.
        setting_refits: whether rows with different settings need different fits (a network
            variant) or read one fit (a score component).
        cell_config: ``(config, setting, seed)`` -> the configuration of the fit behind a row;
            ``train.seed`` is set by the caller.
        score_key: ``(config, setting)`` -> the stored array a row reads: :data:`RAW_SCORE` or a
            component name.
        score_label: ``(config, setting)`` -> what the row's score is, for the table.
        unfingerprinted: ``section.key`` settings that do not change a fit's stored scores.
        variant: ``config`` -> the variant recorded in a cell's ``result.json`` (empty: none).
    """

    spec_help: str
    check_setting: Callable[[str, str], None] = no_setting
    setting_refits: bool = False
    cell_config: Callable[[Config, str, int], Config] = lambda config, setting, seed: config
    score_key: Callable[[Config, str], str] = lambda config, setting: RAW_SCORE
    score_label: Callable[[Config, str], str] = lambda config, setting: RAW_SCORE
    unfingerprinted: tuple[str, ...] = ()
    variant: Callable[[Config], str] = lambda config: ""


@dataclass(frozen=True)
class DetectorFamily:
    """One detector family, as the registry lists it.

    Attributes:
        name: ``config.method`` of its configurations and checkpoints.
        detector_class: its :class:`AnomalyDetector` subclass.
        build: ``(config, pretrained)`` -> an unfitted detector; ``pretrained=False`` skips
            reading pretrained weights that a checkpoint will overwrite.
        fit: ``(config, uint8 normal films (N, S, S), options)`` -> a :class:`FitResult`.
        config_sections: the configuration sections its fit and scores read, besides ``data``
            (and so the checkpoint fields a change of which needs a new fit).
        describe: ``config`` -> its settings in a few words, for table headers.
        benchmark: its rows of ``cxr-anomaly benchmark``.
        resume_config: ``(run_dir, config)`` -> the configuration a resumed fit must use.
        score_from_components: ``(config, {component: scores or None})`` -> the raw score, for
            families whose score can be recomputed from stored components (absent: None).
        add_normals: ``(fitted detector, its config, uint8 normal films (N, S, S), options)`` ->
            the detector refitted on its normals and these, in time proportional to them, for
            families that can (absent: None). The record holds the union's facts and
            :data:`REFIT_RECORD_KEYS`, this refit's.
        settings: its configuration sections (name -> dataclass), data defaults, presets and
            checks, registered with :mod:`cxr_anomaly.config` by the registry.
    """

    name: str
    detector_class: type[AnomalyDetector]
    build: Callable[[Config, bool], AnomalyDetector]
    fit: Callable[[Config, np.ndarray, FitOptions], FitResult]
    config_sections: tuple[str, ...]
    describe: Callable[[Config], str]
    benchmark: BenchmarkCells
    resume_config: Callable[[str | Path, Config], Config] = no_resume
    score_from_components: Callable[[Config, Mapping[str, np.ndarray | None]], np.ndarray] | None = None
    add_normals: Callable[[AnomalyDetector, Config, np.ndarray, FitOptions], FitResult] | None = None
    settings: FamilySettings = field(default_factory=FamilySettings)
