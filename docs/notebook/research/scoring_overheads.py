"""Two overheads of features scoring on a CPU, before and after commit 34d07a1, in one process.

Usage::

    python -m docs.notebook.research.scoring_overheads [--batch 16] [--rounds 7] [--precision auto]

What it times, each variant in turn within every round (so that a noisy host slows both alike),
medians over ``--rounds``:

- **the backbone** (EfficientNet-Lite0, BatchNorm folded, channels_last, 224 px) on a batch of
  random inputs: TensorFlow's "SAME" padding of the five stride-2 convolutions as an explicit
  padded copy of the input (before) against a window of a symmetrically padded convolution
  (:class:`~cxr_anomaly.models.features.backbone.SamePadConv2d` without gradients, after);
- **the patch search**: a batch's patches (``batch`` x 196, 432 channels) against a bank of
  4,096 random patches, as one block with ``min(dim=1).values`` (before) against blocks of
  :data:`~cxr_anomaly.models.features.torch_model.CPU_NEAREST_CHUNK` queries with ``amin``
  (after).

- **score_films end to end** on decoded ``rsna_normal224`` films (``--films``, default 256), with
  a frozen detector of the default settings fitted on 64 other films (``--data``): both overheads
  as before (patched back in) against the library as it is.

Each pair is also checked to give the same numbers bit for bit. Milliseconds a batch; the ratio
before/after is the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from benchmarks.bench_features import rsna_rows
from benchmarks.common import git_commit, machine_facts

from cxr_anomaly.config import Config, with_overrides
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.inference import inference_autocast, resolve_precision, to_channels_last
from cxr_anomaly.models.features import backbone as backbone_module
from cxr_anomaly.models.features import torch_model
from cxr_anomaly.models.features.backbone import SamePadConv2d, build_backbone
from cxr_anomaly.models.features.fitting import fit_features
from cxr_anomaly.models.features.torch_model import CPU_NEAREST_CHUNK, nearest_distances, squared_distances
from cxr_anomaly.scoring import score_films


def padded_forward(self: SamePadConv2d, images: torch.Tensor) -> torch.Tensor:
    """The forward of SamePadConv2d before 34d07a1: always a padded copy of the input."""
    if not self.explicit_padding:
        return torch.nn.Conv2d.forward(self, images)
    rows, columns = self.same_padding(int(images.shape[-2]), int(images.shape[-1]))
    return torch.nn.Conv2d.forward(self, F.pad(images, [columns.before, columns.after, rows.before, rows.after]))


def one_block_nearest(queries: torch.Tensor, bank: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """The patch search before 34d07a1 for up to 4,096 queries: one block, ``min(dim=1).values``."""
    return squared_distances(queries, bank).min(dim=1).values.sqrt()


def time_rounds(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each variant per round, the variants run in turn within a round, after a warm-up."""
    for run in variants.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def report(title: str, seconds: dict[str, list[float]]) -> None:
    """Median ms of each variant and before/after."""
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    before, after = medians["before"], medians["after"]
    print(
        f"{title}: before {1000 * before:.1f} ms, after {1000 * after:.1f} ms a batch, "
        f"{before / after:.2f}x (rounds before {[round(1000 * value, 1) for value in seconds['before']]}, "
        f"after {[round(1000 * value, 1) for value in seconds['after']]})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--films", type=int, default=256)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()
    precision = resolve_precision(args.precision, "cpu")
    print(
        f"commit {git_commit()}; {machine_facts()}; precision {precision}, batch {args.batch}, "
        f"{torch.get_num_threads()} threads"
    )
    generator = torch.Generator().manual_seed(0)

    backbone, _ = build_backbone("efficientnet_lite0")
    to_channels_last(backbone.eval())
    images = (torch.rand(args.batch, 3, 224, 224, generator=generator) * 2 - 1).contiguous(
        memory_format=torch.channels_last
    )  # (B, 3, 224, 224)
    windowed_forward = SamePadConv2d.forward

    def run_backbone(forward: Callable[[SamePadConv2d, torch.Tensor], torch.Tensor]) -> dict[int, torch.Tensor]:
        backbone_module.SamePadConv2d.forward = forward  # type: ignore[method-assign]
        try:
            with torch.inference_mode(), inference_autocast("cpu", precision):
                return backbone(images)
        finally:
            backbone_module.SamePadConv2d.forward = windowed_forward  # type: ignore[method-assign]

    same = all(
        torch.equal(old, new)
        for old, new in zip(run_backbone(padded_forward).values(), run_backbone(windowed_forward).values())
    )
    print(f"backbone features equal bit for bit: {same}")
    report(
        "backbone",
        time_rounds(
            {"before": lambda: run_backbone(padded_forward), "after": lambda: run_backbone(windowed_forward)},
            args.rounds,
        ),
    )

    queries = torch.randn(args.batch * 196, 432, generator=generator)  # (B*14*14, C)
    bank = torch.randn(4096, 432, generator=generator)  # (M, C)

    def search(new: bool) -> torch.Tensor:
        with torch.inference_mode(), inference_autocast("cpu", precision):
            if new:
                return nearest_distances(queries, bank, CPU_NEAREST_CHUNK)
            return squared_distances(queries, bank).min(dim=1).values.sqrt()

    print(f"patch distances equal bit for bit: {torch.equal(search(False), search(True))}")
    report(
        f"patch search ({args.batch * 196} queries, bank 4,096)",
        time_rounds({"before": lambda: search(False), "after": lambda: search(True)}, args.rounds),
    )

    config = with_overrides(Config(), "features", finetune_epochs=0)
    pixels = load_images(rsna_rows(args.data, 64 + args.films), config.data).pixels  # (N, 224, 224) uint8
    detector = fit_features(config, pixels[:64], precision=precision, progress=False).detector
    films = pixels[64:]

    def score(old: bool) -> torch.Tensor:
        if not old:
            return torch.from_numpy(score_films(detector, films, precision=precision, batch_size=args.batch).raw)
        backbone_module.SamePadConv2d.forward = padded_forward  # type: ignore[method-assign]
        torch_model.nearest_distances = one_block_nearest  # type: ignore[assignment]
        try:
            return torch.from_numpy(score_films(detector, films, precision=precision, batch_size=args.batch).raw)
        finally:
            backbone_module.SamePadConv2d.forward = windowed_forward  # type: ignore[method-assign]
            torch_model.nearest_distances = nearest_distances

    print(f"score_films raw scores equal bit for bit: {torch.equal(score(True), score(False))}")
    seconds = time_rounds({"before": lambda: score(True), "after": lambda: score(False)}, args.rounds)
    report(f"score_films on {len(films)} decoded films (times for all of them)", seconds)
    print(
        f"score_films films/s: before {len(films) / statistics.median(seconds['before']):.1f}, "
        f"after {len(films) / statistics.median(seconds['after']):.1f}"
    )


if __name__ == "__main__":
    main()
