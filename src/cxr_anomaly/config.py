"""Frozen configuration dataclasses, saved in full with every checkpoint.

A configuration is a tree of frozen dataclasses. It round-trips through plain dictionaries
(:func:`config_to_dict` / :func:`config_from_dict`) so that it can live in a JSON or TOML file
(``--config FILE``) and inside a checkpoint without pickling any code.

This module holds the sections every family shares (``train``, ``data``, ``score``'s operating
point). Each detector family declares its own sections in its folder (a :class:`FamilySettings`);
:mod:`cxr_anomaly.models.registry` registers them here when it is imported (the package's
``__init__`` imports it), since this bottom layer may not import the families.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from .errors import ConfigError

logger = logging.getLogger(__name__)

Intensity = Literal["none", "per_image", "equalize"]
Precision = Literal["auto", "fp32", "bf16"]
# The family of Config() and of `--method` left out: the one name of a family this module holds.
DEFAULT_METHOD = "features"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; the defaults are the paper's."""

    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 5e-4
    beta1: float = 0.5
    beta2: float = 0.999
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    # "auto": bf16 autocast where the device computes bf16 natively (AVX512-BF16, AMX, most
    # CUDA GPUs), fp32 elsewhere, where bf16 is emulated and slower; the record names the one used.
    precision: Precision = "auto"
    calibration_fraction: float = 0.1  # normals held out by patient when no val split exists
    # Robustness (issue 7). A training state is written to the run folder after every epoch and,
    # when checkpoint_every_steps > 0, also every that many optimisation steps.
    checkpoint_every_steps: int = 0
    # Under DDP, BatchNorm normalises with each rank's own batch statistics unless this is set:
    # SyncBatchNorm then pools them over the global batch, as a single-process run would (CUDA only).
    sync_batchnorm: bool = False
    # GAN guard: stop when D(x') stays below collapse_threshold for every image of the global
    # batch for collapse_patience_steps consecutive steps (0 disables the guard).
    collapse_patience_steps: int = 500
    collapse_threshold: float = 1e-3
    # Re-estimate BatchNorm running statistics over the training normals after training: after
    # few steps they still remember their initial values and eval-mode reconstructions come out
    # flat grey (see docs/notebook/2026-11-results-history.md#what-moves-the-auc-issue-4-research).
    recalibrate_batchnorm: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs={self.epochs}; must be >= 1")
        if self.batch_size < 2:
            raise ConfigError(f"train.batch_size={self.batch_size}; BatchNorm needs >= 2")
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate={self.learning_rate}; must be > 0")
        if self.precision not in get_args(Precision):
            raise ConfigError(f"train.precision={self.precision!r}; expected {get_args(Precision)}")
        if not 0.0 <= self.calibration_fraction < 1.0:
            raise ConfigError(f"train.calibration_fraction={self.calibration_fraction}; must be in [0, 1)")
        if self.checkpoint_every_steps < 0 or self.collapse_patience_steps < 0:
            raise ConfigError(
                f"train.checkpoint_every_steps={self.checkpoint_every_steps}, "
                f"train.collapse_patience_steps={self.collapse_patience_steps}; both must be >= 0"
            )
        if not 0.0 < self.collapse_threshold < 1.0:
            raise ConfigError(f"train.collapse_threshold={self.collapse_threshold}; must be in (0, 1)")


@dataclass(frozen=True)
class DataConfig:
    """Preprocessing applied identically at training and scoring time."""

    image_size: int = 64
    intensity: Intensity = "none"  # per-film normalisation before the model sees it
    max_image_pixels: int = 100_000_000  # larger images are refused as decompression bombs
    # Fraction of each side cut away before the model sees the film (exporters differ in their
    # borders, labels and collimation; the lungs are in the middle). 0 keeps the whole film.
    border_crop: float = 0.0
    # Shrink every film to this side and back before the model sees it, so that films from a
    # 64 px exporter and a 1024 px one carry the same detail. 0 keeps the input's detail.
    detail_size: int = 0

    def __post_init__(self) -> None:
        if self.intensity not in get_args(Intensity):
            raise ConfigError(f"data.intensity={self.intensity!r}; expected {get_args(Intensity)}")
        if self.image_size < 8:
            raise ConfigError(f"data.image_size={self.image_size}; must be >= 8")
        if not 0.0 <= self.border_crop < 0.5:
            raise ConfigError(f"data.border_crop={self.border_crop}; must be in [0, 0.5)")
        if self.detail_size < 0 or (0 < self.detail_size < 8):
            raise ConfigError(f"data.detail_size={self.detail_size}; must be 0 (off) or >= 8")


def check_target_specificity(target_specificity: float) -> None:
    """Raise :class:`ConfigError` unless the operating point is in (0, 1)."""
    if not 0.0 < target_specificity < 1.0:
        raise ConfigError(f"score.target_specificity={target_specificity}; must be in (0, 1)")


@dataclass(frozen=True)
class ScoreConfig:
    """The operating point every family's calibration reads; a family may extend the section
    with settings of its own score (a dataclass with these fields and more)."""

    target_specificity: float = 0.95  # operating point fitted on normal validation films

    def __post_init__(self) -> None:
        check_target_specificity(self.target_specificity)


@dataclass(frozen=True)
class FamilySettings:
    """What a detector family adds to the configuration, declared in its folder.

    Attributes:
        sections: section name -> its frozen dataclass. A name shared with :data:`SHARED_SECTIONS`
            (``score``) extends that section: its dataclass has the shared fields and more.
        data_defaults: ``data`` keys the family's configurations take when a file does not say.
        stored_key_defaults: ``section -> {key: value}`` for keys added after files were written:
            a stored configuration lacking one was made with that value, not today's default.
        presets: named configurations besides the family's own name, as values for
            :func:`config_from_dict`.
        check: ``config`` -> raise :class:`ConfigError` for settings the family cannot run.
        linked_keys: groups of ``section.key`` that :func:`with_overrides` changes together.
        help: the family in a few words, for help texts.
        raw_score: what its detector's raw score is, in a few words, for help texts.
        components: the names of its detector's score components, for help texts.
        variants: the network variants of its ``model.variant`` (``--variant``), if it has any.
        benchmark_rows: the ``--methods`` rows of ``cxr-anomaly benchmark``, each with a note in
            parentheses where it needs one, for help texts.
        paper: whether it is the paper's method, whose Table 1 ``cxr-anomaly reproduce`` reproduces.
    """

    sections: Mapping[str, type] = field(default_factory=dict)
    data_defaults: Mapping[str, Any] = field(default_factory=dict)
    stored_key_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    check: Callable[[Config], None] = lambda config: None
    linked_keys: tuple[tuple[str, ...], ...] = ()
    help: str = ""
    raw_score: str = ""
    components: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()
    benchmark_rows: tuple[str, ...] = ()
    paper: bool = False


# Sections every configuration has, whatever its family.
SHARED_SECTIONS: dict[str, type] = {"train": TrainConfig, "data": DataConfig, "score": ScoreConfig}


@dataclass
class _Registered:
    """The families' settings, filled by :func:`register_families`."""

    families: dict[str, FamilySettings] = field(default_factory=dict)
    sections: dict[str, type] = field(default_factory=lambda: dict(SHARED_SECTIONS))


_REGISTERED = _Registered()


def register_families(families: Mapping[str, FamilySettings], section_order: Sequence[str] = ()) -> None:
    """Make the families' sections, defaults and presets known to the configuration.

    Called by :mod:`cxr_anomaly.models.registry`. ``section_order`` orders the sections of a
    stored configuration (others follow in registration order), so that files keep their layout.

    Raises:
        ConfigError: two families declare one section, a family's section drops shared fields,
            or no family is :data:`DEFAULT_METHOD`.
    """
    sections: dict[str, type] = dict(SHARED_SECTIONS)
    owners: dict[str, str] = {}
    for name, settings in families.items():
        for section, section_type in settings.sections.items():
            if section in owners:
                raise ConfigError(f"config section {section!r} is declared by {owners[section]!r} and {name!r}")
            if section in ("method", "train", "data"):
                raise ConfigError(f"family {name!r} declares section {section!r}, which is not a family's")
            shared = SHARED_SECTIONS.get(section)
            missing = shared and {f.name for f in dataclasses.fields(shared)} - {
                f.name for f in dataclasses.fields(section_type)
            }
            if missing:
                raise ConfigError(f"family {name!r}: section {section!r} lacks the shared field(s) {sorted(missing)}")
            owners[section] = name
            sections[section] = section_type
    if DEFAULT_METHOD not in families:
        raise ConfigError(f"DEFAULT_METHOD={DEFAULT_METHOD!r} is not among the families {list(families)}")
    ordered = {name: sections[name] for name in section_order if name in sections}
    _REGISTERED.sections = {**ordered, **sections}
    _REGISTERED.families = dict(families)


def methods() -> tuple[str, ...]:
    """The registered families' names (``method`` values), in the registry's order."""
    return tuple(_REGISTERED.families)


def family_settings(method: str) -> FamilySettings:
    """The registered settings of family ``method``.

    Raises:
        ConfigError: no family of that name is registered.
    """
    if method not in _REGISTERED.families:
        raise ConfigError(f"method={method!r}; expected one of {methods()}")
    return _REGISTERED.families[method]


def paper_method() -> str:
    """The name of the paper's family (:attr:`FamilySettings.paper`).

    Raises:
        ConfigError: no registered family, or more than one, is the paper's.
    """
    papers = [name for name, settings in _REGISTERED.families.items() if settings.paper]
    if len(papers) != 1:
        raise ConfigError(f"expected one registered family to be the paper's method, found {papers}")
    return papers[0]


def _default_sections() -> dict[str, Any]:
    return {
        name: section_type() for name, section_type in _REGISTERED.sections.items() if name not in ("train", "data")
    }


def _default_data() -> DataConfig:
    return DataConfig(**family_settings(DEFAULT_METHOD).data_defaults)


@dataclass(frozen=True)
class Config:
    """The whole configuration of one run.

    ``method`` names the detector family (one of :func:`methods`). ``train`` and ``data`` apply
    to every family; ``sections`` holds ``score`` and every registered family's sections (all of
    them, whatever the method, so that a stored configuration keeps one layout), read as
    attributes: ``config.score``, ``config.model``.
    """

    method: str = DEFAULT_METHOD
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=_default_data)
    sections: Mapping[str, Any] = field(default_factory=_default_sections, hash=False)

    def __post_init__(self) -> None:
        settings = family_settings(self.method)
        sections = _default_sections()
        for name, section in self.sections.items():
            if name not in sections or not isinstance(section, _REGISTERED.sections[name]):
                raise ConfigError(f"config section {name!r} is not a registered section or has the wrong type")
            sections[name] = section
        object.__setattr__(self, "sections", sections)
        settings.check(self)

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__!r} has no attribute or config section {name!r}")


def config_to_dict(config: Config) -> dict[str, Any]:
    """Return the configuration as plain values: ``method`` and one dictionary per section, in the
    registered order.

    Tuples become lists, so the result is JSON- and TOML-serialisable and loads with
    ``torch.load(weights_only=True)`` inside a checkpoint.
    """

    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    values: dict[str, Any] = {"method": config.method}
    for name in _REGISTERED.sections:
        values[name] = plain(dataclasses.asdict(getattr(config, name)))
    return values


def _check_field_types(section_type: type, values: dict[str, Any], section_name: str) -> None:
    """Check each value of ``values`` against the declared type of its field in ``section_type``.

    Driven by :func:`dataclasses.fields` and :func:`typing.get_type_hints`, so sections and fields
    added later are checked without changes here. TOML and JSON give the right Python types, so
    nothing is coerced: ``"false"`` is not a bool (it would be true), ``2.5`` and ``"3"`` are not
    ints. A bool is neither an int nor a float; an int is accepted where a float is declared.
    Literal types accept only their listed values; tuples and lists are checked item by item.
    Keys that are not fields of ``section_type`` are left to the caller's unknown-key check.

    Raises:
        ConfigError: naming the key (``section.key``, or ``key`` at the top level), the value,
            its type and the declared type.
    """
    import numbers
    import types
    import typing

    def matches(value: Any, hint: Any) -> bool:
        origin = typing.get_origin(hint)
        arguments = typing.get_args(hint)
        if hint is Any:
            return True
        if origin is Literal:  # 1 == True, so the type must match as well as the value
            return any(type(value) is type(option) and value == option for option in arguments)
        if origin in (typing.Union, types.UnionType):
            return any(matches(value, option) for option in arguments)
        if hint is type(None):
            return value is None
        if hint is bool:
            return isinstance(value, bool)
        if hint is int:
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if hint is float:
            return isinstance(value, numbers.Real) and not isinstance(value, bool)
        if origin in (tuple, list):
            if not isinstance(value, (tuple, list)):
                return False
            if origin is tuple and arguments and arguments[-1] is not Ellipsis:
                return len(value) == len(arguments) and all(map(matches, value, arguments))
            return all(matches(item, arguments[0]) for item in value) if arguments else True
        if origin is dict:
            return isinstance(value, dict) and (
                not arguments
                or all(matches(key, arguments[0]) and matches(item, arguments[1]) for key, item in value.items())
            )
        if isinstance(hint, type):
            return isinstance(value, hint)
        return True  # a typing construct not used in the config yet: accept rather than refuse

    def describe(hint: Any) -> str:
        origin = typing.get_origin(hint)
        arguments = typing.get_args(hint)
        if origin is Literal:
            return "one of " + ", ".join(repr(option) for option in arguments)
        if origin in (typing.Union, types.UnionType):
            return " or ".join(describe(option) for option in arguments)
        if hint is float:
            return "float (or int)"
        if origin in (tuple, list):
            return f"a list of {describe(arguments[0])}" if arguments else "a list"
        if hint is type(None):
            return "None"
        return getattr(hint, "__name__", str(hint))

    hints = typing.get_type_hints(section_type)
    for item in dataclasses.fields(section_type):
        if item.name not in values:
            continue
        value, hint = values[item.name], hints[item.name]
        if not matches(value, hint):
            key = f"{section_name}.{item.name}" if section_name else item.name
            raise ConfigError(f"{key}={value!r} has type {type(value).__name__}; expected {describe(hint)}")


# Keys that configurations and checkpoints written by earlier versions hold but that no longer
# change anything, with why: read and ignored, so that those files still load.
RETIRED_KEYS: dict[str, dict[str, str]] = {
    "train": {"num_workers": "films are decoded in threads (data.cache), not by DataLoader workers"},
}


def drop_retired_keys(values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` without the keys of :data:`RETIRED_KEYS`, each one dropped logged."""
    values = dict(values)
    for section, retired in RETIRED_KEYS.items():
        if isinstance(values.get(section), dict) and set(retired) & set(values[section]):
            kept = dict(values[section])
            for key in set(retired) & set(kept):
                logger.info(
                    "ignoring %s.%s=%r: it is no longer a setting (%s)", section, key, kept.pop(key), retired[key]
                )
            values[section] = kept
    return values


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a :class:`Config` from nested dictionaries; unknown keys raise :class:`ConfigError`.

    The top-level ``method`` picks the family; without it the configuration is the default
    family's. Keys missing from the ``data`` section take the family's defaults
    (:attr:`FamilySettings.data_defaults`: input size and preprocessing).
    """
    values = drop_retired_keys(values)
    method = values.pop("method", DEFAULT_METHOD)
    if not isinstance(method, str):
        raise ConfigError(f"method={method!r} has type {type(method).__name__}; expected one of {methods()}")
    settings = family_settings(method)
    data_values = dict(values.get("data") or {}) if isinstance(values.get("data", {}), dict) else values["data"]
    if isinstance(data_values, dict):
        for key, value in settings.data_defaults.items():
            data_values.setdefault(key, value)
        values["data"] = data_values
    sections: dict[str, Any] = {}
    for section_name, section_values in values.items():
        if section_name not in _REGISTERED.sections:
            raise ConfigError(f"unknown config section {section_name!r}; expected {list(_REGISTERED.sections)}")
        if not isinstance(section_values, dict):
            raise ConfigError(f"config section {section_name!r} must be a table, got {section_values!r}")
        section_type = _REGISTERED.sections[section_name]
        known = {f.name for f in dataclasses.fields(section_type)}
        unknown = set(section_values) - known
        if unknown:
            raise ConfigError(
                f"unknown key(s) {sorted(unknown)} in config section {section_name!r}; expected some of {sorted(known)}"
            )
        _check_field_types(section_type, section_values, section_name)
        sections[section_name] = section_type(**section_values)
    shared = {name: sections.pop(name) for name in ("train", "data") if name in sections}
    return Config(method=method, **shared, sections=sections)


# Keys added to a section after files were already being written, with the value every file
# written before them was made with. A stored configuration (checkpoint, exported graph,
# training state) lacking one of them gets that value, not today's default: a checkpoint
# fitted before fine-tuning existed holds ImageNet's weights, whatever the default is now.
def stored_config_from_dict(values: dict[str, Any]) -> Config:
    """:func:`config_from_dict` for a configuration written by the package, possibly an older one.

    Keys of the families' :attr:`FamilySettings.stored_key_defaults` missing from a stored
    section take the value they had
    before they existed; anything else as :func:`config_from_dict`.
    """
    values = dict(values)
    for settings in _REGISTERED.families.values():
        for section, defaults in settings.stored_key_defaults.items():
            if isinstance(values.get(section), dict):
                values[section] = {**defaults, **values[section]}
    return config_from_dict(values)


def config_differences(
    stored: Config, requested: Config, *, ignore: Collection[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """``section.key -> (stored, requested)`` for every setting that differs (``method`` by its
    own name), leaving out the ``section.key`` names in ``ignore``."""
    stored_values, requested_values = config_to_dict(stored), config_to_dict(requested)
    differences = {}
    for section, values in stored_values.items():
        if not isinstance(values, dict):  # a top-level key (method), not a section
            if requested_values.get(section) != values:
                differences[section] = (values, requested_values.get(section))
            continue
        for key, value in values.items():
            if f"{section}.{key}" not in ignore and requested_values[section][key] != value:
                differences[f"{section}.{key}"] = (value, requested_values[section][key])
    return differences


def with_overrides(config: Config, section: str, **changes: Any) -> Config:
    """Return a copy of ``config`` with fields of one section replaced (validated again); keys
    the family links (:attr:`FamilySettings.linked_keys`) change together."""
    if section not in _REGISTERED.sections:
        raise ConfigError(f"unknown config section {section!r}")
    values = config_to_dict(config)
    values[section].update(changes)
    for group in family_settings(config.method).linked_keys:
        for key, value in changes.items():
            if f"{section}.{key}" in group:
                for linked in group:
                    linked_section, linked_key = linked.split(".", 1)
                    values[linked_section][linked_key] = value
    return config_from_dict(values)


def presets() -> dict[str, dict[str, Any]]:
    """Every named configuration: ``default``, each family's name, and the families' own presets,
    as values for :func:`config_from_dict`."""
    named: dict[str, dict[str, Any]] = {"default": {}}
    for method, settings in _REGISTERED.families.items():
        named[method] = {"method": method}
        named.update({name: dict(values) for name, values in settings.presets.items()})
    return named


def preset_config(name: str) -> Config:
    """The configuration of a named preset (``default``, a family's name: its defaults, or a
    family's own preset)."""
    named = presets()
    if name not in named:
        raise ConfigError(f"unknown preset {name!r}; expected one of {sorted(named)}")
    return config_from_dict(named[name])


def load_config(path: str | Path, base: Config | None = None) -> Config:
    """Read a configuration from a ``.json`` or ``.toml`` file.

    Missing keys take the values of ``base`` (a preset), or the defaults when it is None.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            values = tomllib.loads(text)
        elif path.suffix == ".json":
            values = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: expected a .json or .toml suffix")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid: {error}") from error
    if base is not None:
        if values.get("method", base.method) != base.method:
            base = preset_config(values["method"]) if values["method"] in methods() else base
        merged = config_to_dict(base)
        for section, section_values in values.items():
            if section in merged and isinstance(section_values, dict):
                merged[section].update(section_values)
            else:
                merged[section] = section_values  # config_from_dict names the bad section
        values = merged
    return config_from_dict(values)
