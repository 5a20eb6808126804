"""Pool the finished cells of several ``cxr-anomaly benchmark`` folders into one table of mean ± std over seeds.

``benchmark --first-seed`` adds seeds to a table in a folder of its own, and stages that run side
by side on a GPU machine write one folder each; this groups every cell found under the given
folders by (variant, model settings, training normals) and prints, per test collection, the mean
± sample std over seeds of the AUC overall, within PA, within AP and view-balanced, with the
seeds pooled and the median fit time. Model settings come from each folder's ``table.md``
header, which the benchmark writes.

Usage: python docs/notebook/research/summarise_cells.py FOLDER... [--markdown]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

FIGURES = (
    ("AUC", ("auc",)),
    ("PA", ("auc_per_view", "PA")),
    ("AP", ("auc_per_view", "AP")),
    ("view-balanced", ("auc_view_balanced",)),
)


@dataclass
class Group:
    """The cells of one (variant, settings, training normals) over seeds."""

    seeds: list[int] = field(default_factory=list)
    fit_seconds: list[float] = field(default_factory=list)
    figures: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))


def settings_of(folder: Path) -> str:
    """The tang2019 settings named in the folder's table header ("base_channels 64, ... intensity none")."""
    header = (folder / "table.md").read_text().splitlines()[0]
    match = re.search(r"tang2019: \d+ epochs, (.*?)\.", header)
    if match is None:
        raise ValueError(f"{folder / 'table.md'}: no tang2019 settings in its header {header!r}")
    return match.group(1)


def lookup(metrics: dict, path: tuple[str, ...]) -> float:
    for key in path:
        metrics = metrics[key]
    return float(metrics)  # type: ignore[arg-type]


def collect(folders: list[Path]) -> dict[tuple[str, str, int], Group]:
    """Every cell's figures under ``folders``, grouped; a seed met twice in a group is an error."""
    groups: dict[tuple[str, str, int], Group] = defaultdict(Group)
    for folder in folders:
        settings = settings_of(folder)
        for result_file in sorted(folder.glob("cells/*/result.json")):
            result = json.loads(result_file.read_text())
            group = groups[(result["variant"], settings, result["num_train_films"])]
            if result["seed"] in group.seeds:
                raise ValueError(f"{result_file}: seed {result['seed']} of this group already read")
            group.seeds.append(result["seed"])
            group.fit_seconds.append(result["fit"]["seconds"])
            for test_name, by_score in result["metrics"].items():
                for label, path in FIGURES:
                    group.figures[(test_name, label)].append(lookup(by_score["raw"], path))
    return groups


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args()
    groups = collect(args.folders)
    tests = sorted({test for group in groups.values() for test, _ in group.figures})
    for test in tests:
        print(f"\n{test}\n")
        print(
            "| variant | settings | normals | seeds | "
            + " | ".join(label for label, _ in FIGURES)
            + " | fit s (median) |"
        )
        print("|---" * (5 + len(FIGURES)) + "|")
        for (variant, settings, normals), group in sorted(
            groups.items(), key=lambda item: (item[0][1], item[0][2], item[0][0])
        ):
            cells = [mean_std(group.figures[(test, label)]) for label, _ in FIGURES]
            print(
                f"| {variant} | {settings} | {normals} | {len(group.seeds)} ({','.join(map(str, sorted(group.seeds)))}) | "
                + " | ".join(cells)
                + f" | {statistics.median(group.fit_seconds):.0f} |"
            )


if __name__ == "__main__":
    main()
