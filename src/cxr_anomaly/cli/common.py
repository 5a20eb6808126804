"""Options and configuration shared by the commands that read images or fit a detector."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from ..config import (
    DEFAULT_METHOD,
    Config,
    FamilySettings,
    family_settings,
    load_config,
    methods,
    preset_config,
    with_overrides,
)
from ..errors import ConfigError

logger = logging.getLogger("cxr_anomaly")


def method_list(text: Callable[[str, FamilySettings], str], default: str = " (default)") -> str:
    """``text(name, settings)`` for each registered family, the default's name followed by
    ``default``, joined by "; "; families without a text are left out."""
    parts = []
    for name in methods():
        part = text(name, family_settings(name))
        if part:
            parts.append(part.replace(name, name + default, 1) if name == DEFAULT_METHOD else part)
    return "; ".join(parts)


def introduction() -> str:
    """The first paragraph of ``cxr-anomaly --help``: what it does, with which methods."""
    return (
        "Find abnormal chest X-rays with a detector fitted on normal films only. The methods (--method): "
        + method_list(lambda name, settings: f"{name}, {settings.help}")
        + "."
    )


def variant_families() -> list[str]:
    """The families with network variants (``model.variant``)."""
    return [name for name in methods() if family_settings(name).variants]


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that reads images."""
    parser.add_argument(
        "--on-bad-file",
        choices=("error", "skip"),
        default="error",
        help="what to do with an unreadable file: stop with an error naming it "
        "(default), or skip it and list it with its reason in skipped_files.csv "
        "(score: CSV_skipped.csv beside its CSV)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="folder for the preprocessing cache (decoded, resized films); "
        "a second run with the same files and settings reuses it",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def training_config(args: argparse.Namespace) -> Config:
    """The config file (or defaults) with command-line overrides applied."""
    base = preset_config(args.method or DEFAULT_METHOD)
    config = load_config(args.config, base=base) if args.config else base
    if args.method is not None and config.method != args.method:
        raise ConfigError(f"--method {args.method} but {args.config} sets method = {config.method!r}")
    if args.variant is not None:
        from ..models.registry import family_of  # after parsing, so --help stays fast

        if "model" not in family_of(config.method).config_sections:
            raise ConfigError(
                f"--variant {args.variant} applies to a family with network variants "
                f"(a [model] section), not {config.method}"
            )
        config = with_overrides(config, "model", variant=args.variant)
    train_changes = {
        key: value
        for key, value in (
            ("epochs", args.epochs),
            ("seed", args.seed),
            ("device", args.device),
            ("precision", args.precision),
            ("checkpoint_every_steps", args.checkpoint_every_steps),
            ("sync_batchnorm", True if args.sync_batchnorm else None),
        )
        if value is not None
    }
    if train_changes:
        config = with_overrides(config, "train", **train_changes)
    return config
