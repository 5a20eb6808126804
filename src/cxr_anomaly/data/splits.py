"""Patient-disjoint splits: the paper's exact-size splits and a general re-split.

Films of one patient look alike (same anatomy, often the same scanner), so a patient whose
films sit in both training and test inflates every metric. Every split here keeps each patient
in one split. Rows without a patient id each count as their own patient.

- :func:`paper_split` with :data:`NIH_PAPER_SIZES` (:func:`nih_paper_split`) or
  :data:`RSNA_PAPER_SIZES` (:func:`rsna_paper_split`) builds the exact split sizes of Tang et
  al. (ICASSP 2019) from an official label table:

  ========== =============== ===================== =====================
  experiment train (normal)  validation (N + A)    test (N + A)
  ========== =============== ===================== =====================
  1: NIH     4,479           849 + 857             677 + 667
  2: RSNA    6,000           1,025 + 1,025         1,000 + 1,000
  ========== =============== ===================== =====================

  with a view filter (``PA``, ``AP`` or ``all``) and changeable sizes (:class:`PaperSplitSizes`).
- :func:`patient_disjoint_split` re-assigns the ``split`` column of any manifest by patient,
  roughly stratified by label; :func:`resplit_manifest` is the file-to-file command behind
  ``cxr-anomaly split`` for sets that ship a split sharing patients (NIH1000, the Kermany copy).

All randomness comes from ``numpy.random.default_rng(seed)``: the same table and seed give the
same split on every machine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ..errors import ConfigError, ManifestError
from .manifest import SPLITS, load_inputs, normalise_manifest
from .nih import build_nih_manifest
from .rsna import build_rsna_manifest

logger = logging.getLogger(__name__)

View = Literal["PA", "AP", "all"]
VIEWS: tuple[str, ...] = ("PA", "AP", "all")


@dataclass(frozen=True)
class PaperSplitSizes:
    """Number of films per split and label; training holds normal films only."""

    train_normal: int
    val_normal: int
    val_abnormal: int
    test_normal: int
    test_abnormal: int

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 0:
                raise ConfigError(f"split size {name}={value}; must be >= 0")

    def needs(self) -> dict[tuple[str, int], int]:
        """(split, label) -> films wanted."""
        return {
            ("test", 0): self.test_normal,
            ("test", 1): self.test_abnormal,
            ("val", 0): self.val_normal,
            ("val", 1): self.val_abnormal,
            ("train", 0): self.train_normal,
            ("train", 1): 0,
        }

    def scaled(self, factor: float) -> PaperSplitSizes:
        """Every size multiplied by ``factor`` and rounded (for quick runs on a subset)."""
        return PaperSplitSizes(**{name: int(round(value * factor)) for name, value in vars(self).items()})


NIH_PAPER_SIZES = PaperSplitSizes(
    train_normal=4479, val_normal=849, val_abnormal=857, test_normal=677, test_abnormal=667
)
RSNA_PAPER_SIZES = PaperSplitSizes(
    train_normal=6000, val_normal=1025, val_abnormal=1025, test_normal=1000, test_abnormal=1000
)


@dataclass(frozen=True)
class SplitSummary:
    """Counts of a split manifest.

    Attributes:
        films: (split, label) -> number of films; label -1 means unlabelled.
        patients: split -> number of distinct patients.
        crossing_patients: patients found in more than one split (empty when disjoint).
    """

    films: dict[tuple[str, int], int]
    patients: dict[str, int]
    crossing_patients: list[str]


@dataclass(frozen=True)
class ResplitReport:
    """What :func:`resplit_manifest` wrote."""

    input_path: str
    output_csv: str
    seed: int
    summary: SplitSummary
    original_crossing_patients: int


def patient_groups(manifest: pd.DataFrame, group_column: str = "patient_id") -> pd.Series:
    """The patient key of every row; rows without one get a key of their own."""
    if group_column not in manifest.columns:
        raise ManifestError("<manifest>", f"no column {group_column!r} to group patients by")
    keys = manifest[group_column].astype("string")
    own = pd.Series([f"<row {index}>" for index in range(len(manifest))], index=manifest.index, dtype="string")
    return keys.fillna(own).astype(str)


def summarise_split(manifest: pd.DataFrame, group_column: str = "patient_id") -> SplitSummary:
    """Count films per split and label, patients per split, and patients crossing splits."""
    labels = manifest["label"].astype("Int64").fillna(-1).astype(int)
    splits = manifest["split"].astype("string").fillna("<none>")
    films = {
        (str(split), int(label)): int(count)
        for (split, label), count in pd.crosstab(splits, labels).stack().items()
        if count
    }
    groups = patient_groups(manifest, group_column)
    per_patient = pd.DataFrame({"group": groups, "split": splits}).drop_duplicates()
    patients = {str(split): int(count) for split, count in per_patient["split"].value_counts().items()}
    crossing = per_patient["group"][per_patient["group"].duplicated()].unique().tolist()
    return SplitSummary(films, patients, sorted(str(key) for key in crossing))


def _filter_view(manifest: pd.DataFrame, view: str) -> pd.DataFrame:
    if view not in VIEWS:
        raise ConfigError(f"view={view!r}; expected one of {VIEWS}")
    if view == "all":
        return manifest
    return manifest[(manifest["view"].astype("string").str.upper() == view).fillna(False).to_numpy()]


def _visiting_order(
    table: pd.DataFrame, groups: pd.Series, rng: np.random.Generator, max_images_per_patient: int | None
) -> pd.DataFrame:
    """The films in the order :func:`paper_split` visits them: patients in a random order, each
    patient's films by label, then in a random order, at most ``max_images_per_patient`` a label.

    Returns a frame indexed by ``table``'s rows with columns rank (the patient's place), label, draw.
    """
    unique_groups = np.array(sorted(groups.unique()), dtype=object)
    patient_rank = pd.Series(rng.permutation(len(unique_groups)), index=unique_groups)
    # Sorting by a random draw first makes the sort (and so the choice) independent of the
    # table's own order; the path breaks no ties because draws are distinct.
    order = pd.DataFrame(
        {
            "rank": groups.map(patient_rank).to_numpy(),
            "label": table["label"].astype(int).to_numpy(),
            "draw": rng.permutation(len(table)),
        }
    )
    order = order.sort_values(["rank", "label", "draw"], kind="stable")
    if max_images_per_patient is not None:
        order = order[order.groupby(["rank", "label"]).cumcount() < max_images_per_patient]
    return order


def _assign_patients(order: pd.DataFrame, needs: dict[tuple[str, int], int]) -> dict[int, str]:
    """Give each patient, in ``order``, whole to the first split (test, val, train) that still
    needs a film of a label the patient has; ``needs`` counts down as films are taken.

    Returns the split of each chosen row of the table.
    """
    remaining = sum(needs.values())
    assigned: dict[int, str] = {}
    ranks = order["rank"].to_numpy()
    order_labels = order["label"].to_numpy()
    order_rows = order.index.to_numpy()
    starts = np.concatenate([[0], np.flatnonzero(np.diff(ranks)) + 1])  # first row of each patient
    ends = np.concatenate([starts[1:], [len(ranks)]])
    for start, end in zip(starts, ends):
        if remaining == 0:
            break
        patient_labels = order_labels[start:end]
        patient_rows = order_rows[start:end]
        by_label = {label: patient_rows[patient_labels == label] for label in (0, 1) if (patient_labels == label).any()}
        split = next(
            (name for name in ("test", "val", "train") if any(needs[(name, label)] > 0 for label in by_label)), None
        )
        if split is None:
            continue
        for label, rows in by_label.items():
            take = min(needs[(split, label)], len(rows))
            for row in rows[:take]:
                assigned[int(row)] = split
            needs[(split, label)] -= take
            remaining -= take
    return assigned


def paper_split(
    manifest: pd.DataFrame,
    sizes: PaperSplitSizes,
    *,
    seed: int,
    view: View = "all",
    max_images_per_patient: int | None = 1,
    group_column: str = "patient_id",
    origin: str | Path = "<manifest>",
) -> pd.DataFrame:
    """Select exactly ``sizes`` films, patient-disjoint, and label their split.

    Patients are visited in a seeded random order; each goes whole to the first split (test,
    then validation, then training) that still needs a film of a label the patient has, and
    gives it up to ``max_images_per_patient`` films of each label (randomly chosen). One film
    per patient (the default) keeps the films of a split independent; None allows all.
    Patients not chosen are left out, as in the paper, which used a subset of each set.

    Returns:
        The chosen rows (a copy) with ``split`` set, ordered train, val, test.

    Raises:
        ManifestError: the table (after the view filter) cannot fill ``sizes``; the message
            says which split and label fell short.
    """
    if max_images_per_patient is not None and max_images_per_patient < 1:
        raise ConfigError(f"max_images_per_patient={max_images_per_patient}; must be >= 1 or None")
    if view != "all" and manifest["view"].isna().all():
        raise ManifestError(
            origin,
            f"view={view} asked for, but the table has no view information "
            "(for RSNA pass the DICOM header table or the image folder)",
        )
    table = _filter_view(manifest, view)
    table = table[table["label"].isin([0, 1]).fillna(False).to_numpy()]
    # A canonical row order makes the split depend on the table's content, not its order.
    table = table.sort_values("path", kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    groups = patient_groups(table, group_column)
    order = _visiting_order(table, groups, rng, max_images_per_patient)
    needs = sizes.needs()
    assigned = _assign_patients(order, needs)  # fills ``needs`` down, as far as the patients allow
    remaining = sum(needs.values())
    if remaining:
        short = {
            f"{split}/{'abnormal' if label else 'normal'}": count for (split, label), count in needs.items() if count
        }
        raise ManifestError(
            origin,
            f"view={view}: not enough patients to fill the split; still missing {short} "
            f"(from {len(table)} labelled films of {len(groups.unique())} patients, at most "
            f"{max_images_per_patient} film(s) per patient and label)",
        )
    chosen = table.loc[sorted(assigned)].copy()
    chosen["split"] = [assigned[row] for row in chosen.index]
    split_order = {name: position for position, name in enumerate(SPLITS)}
    chosen = chosen.assign(_split_order=chosen["split"].map(split_order))
    chosen = chosen.sort_values(["_split_order", "label", "path"], kind="stable").drop(columns="_split_order")
    return normalise_manifest(chosen, origin)


def nih_paper_split(
    table: pd.DataFrame,
    *,
    seed: int,
    view: View = "all",
    sizes: PaperSplitSizes = NIH_PAPER_SIZES,
    max_images_per_patient: int | None = 1,
) -> pd.DataFrame:
    """Experiment 1 of Tang et al.: NIH ChestX-ray14, see :func:`paper_split`.

    ``table`` is a manifest from :func:`cxr_anomaly.data.nih.read_nih_table` or
    :func:`~cxr_anomaly.data.nih.build_nih_manifest`.
    """
    return paper_split(
        table, sizes, seed=seed, view=view, max_images_per_patient=max_images_per_patient, origin="NIH ChestX-ray14"
    )


def rsna_paper_split(
    table: pd.DataFrame,
    *,
    seed: int,
    view: View = "all",
    sizes: PaperSplitSizes = RSNA_PAPER_SIZES,
    max_images_per_patient: int | None = 1,
) -> pd.DataFrame:
    """Experiment 2 of Tang et al.: RSNA pneumonia (Normal vs Lung Opacity), see :func:`paper_split`.

    ``table`` is a manifest from :func:`cxr_anomaly.data.rsna.build_rsna_manifest` (with the
    default exclusion of "No Lung Opacity / Not Normal").
    """
    return paper_split(
        table, sizes, seed=seed, view=view, max_images_per_patient=max_images_per_patient, origin="RSNA pneumonia"
    )


def patient_disjoint_split(
    manifest: pd.DataFrame,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    group_column: str = "patient_id",
) -> pd.DataFrame:
    """Return a copy of ``manifest`` whose ``split`` column puts each patient in one split.

    Patients are split by film count: about ``test_fraction`` of the films go to ``test`` and
    ``val_fraction`` to ``val``, separately among patients with an abnormal film, patients with
    only normal films and unlabelled patients, so each split gets a similar label mix.
    Abnormal films of training patients keep split ``train``; one-class training uses only the
    label-0 training rows, so they are never learnt from. The previous split is kept in
    ``original_split`` when the manifest had one.

    Raises:
        ConfigError: a fraction outside [0, 1) or fractions summing to 1 or more.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name}={value}; must be in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(f"val_fraction={val_fraction} + test_fraction={test_fraction} leaves nothing to train on")
    result = manifest.copy()
    if "split" in result.columns and result["split"].notna().any() and "original_split" not in result.columns:
        result["original_split"] = result["split"]
    groups = patient_groups(result, group_column)
    labels = result["label"].astype("Int64").fillna(-1).astype(int)
    per_group = pd.DataFrame({"group": groups.to_numpy(), "label": labels.to_numpy()})
    group_table = per_group.groupby("group", sort=True).agg(stratum=("label", "max"), films=("label", "size"))
    rng = np.random.default_rng(seed)
    split_of_group: dict[str, str] = {}
    for _, stratum in group_table.groupby("stratum", sort=True):
        shuffled = stratum.iloc[rng.permutation(len(stratum))]
        total = int(shuffled["films"].sum())
        # A group goes to test while the films placed so far are short of the target count.
        placed_before = shuffled["films"].cumsum().to_numpy() - shuffled["films"].to_numpy()
        test_target = test_fraction * total
        val_target = (test_fraction + val_fraction) * total
        for group, before in zip(shuffled.index, placed_before):
            split_of_group[group] = "test" if before < test_target else "val" if before < val_target else "train"
    result["split"] = groups.map(split_of_group).to_numpy()
    return normalise_manifest(result, "<patient_disjoint_split>")


def resplit_manifest(
    input_path: str | Path,
    output_csv: str | Path,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> ResplitReport:
    """Write a patient-disjoint re-split of a data set as a manifest CSV (absolute paths).

    Args:
        input_path: anything :func:`cxr_anomaly.data.manifest.load_inputs` reads: a manifest
            CSV, a folder holding ``manifest.csv`` (NIH1000, the Kermany copy), a Kermany
            ``chest_xray`` tree (patient keys from file names).
        output_csv: where to write the new manifest (its folder is created).
        seed: seed of the split.
        val_fraction: share of films for validation.
        test_fraction: share of films for testing.

    Raises:
        ManifestError: the input holds no patient ids (every row would be its own patient, so
            patient-disjointness would mean nothing) or is malformed.
    """
    manifest = load_inputs(input_path)
    if manifest["patient_id"].isna().all():
        raise ManifestError(input_path, "no patient ids (column 'patient_id'): a patient-disjoint split needs them")
    before = summarise_split(manifest) if manifest["split"].notna().any() else None
    result = patient_disjoint_split(manifest, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    summary = summarise_split(result)
    if summary.crossing_patients:  # cannot happen by construction; never write a leaky split
        raise RuntimeError(f"internal error: patients {summary.crossing_patients[:5]} cross splits")
    output_csv = Path(output_csv)
    output_csv.parent.mkdir(parents=True, exist_ok=True)
    result.to_csv(output_csv, index=False)
    crossing_before = len(before.crossing_patients) if before is not None else 0
    logger.info("wrote %s: %s; %d patients crossed splits before, none now", output_csv, summary.films, crossing_before)
    return ResplitReport(str(input_path), str(output_csv), seed, summary, crossing_before)


@dataclass(frozen=True)
class PaperSplitReport:
    """What :func:`write_paper_split` wrote."""

    experiment: str
    output_csv: str
    seed: int
    view: str
    summary: SplitSummary


def write_paper_split(
    experiment: Literal["nih", "rsna"],
    output_csv: str | Path,
    *,
    labels_csv: str | Path,
    seed: int,
    view: View = "all",
    image_root: str | Path | None = None,
    class_info_csv: str | Path | None = None,
    headers_csv: str | Path | None = None,
    sizes: PaperSplitSizes | None = None,
    on_missing: Literal["error", "skip"] = "error",
) -> PaperSplitReport:
    """Build a paper split from the official tables and write it as a manifest CSV.

    The CSV feeds ``cxr-anomaly train`` / ``evaluate`` directly (columns path, label, split,
    patient_id, view and the source's own). With ``image_root``, paths are the films found
    there; without it, bare file names (for inspecting the split before the images arrive).

    Args:
        experiment: ``"nih"`` (``labels_csv`` = ``Data_Entry_2017*.csv``) or ``"rsna"``
            (``labels_csv`` = ``stage_2_train_labels.csv``, plus ``class_info_csv``).
        output_csv: where to write.
        labels_csv: the official label table.
        seed: seed of the split.
        view: ``PA``, ``AP`` or ``all``.
        image_root: folder of the films, searched recursively.
        class_info_csv: RSNA ``stage_2_detailed_class_info.csv``.
        headers_csv: RSNA DICOM header table, for views without opening the DICOM files.
        sizes: split sizes; the paper's by default.
        on_missing: films of the table absent from ``image_root``: ``"error"``, or ``"skip"``
            (left out before the split is drawn, and logged).
    """
    if experiment == "nih":
        table = build_nih_manifest(image_root, labels_csv, on_missing=on_missing)
        result = nih_paper_split(table, seed=seed, view=view, sizes=sizes or NIH_PAPER_SIZES)
    elif experiment == "rsna":
        if class_info_csv is None:
            raise ConfigError("the RSNA split needs class_info_csv (stage_2_detailed_class_info.csv)")
        table = build_rsna_manifest(
            image_root, labels_csv, class_info_csv, headers_csv=headers_csv, on_missing=on_missing
        )
        result = rsna_paper_split(table, seed=seed, view=view, sizes=sizes or RSNA_PAPER_SIZES)
    else:
        raise ConfigError(f"experiment={experiment!r}; expected 'nih' or 'rsna'")
    output_csv = Path(output_csv)
    output_csv.parent.mkdir(parents=True, exist_ok=True)
    result.to_csv(output_csv, index=False)
    summary = summarise_split(result)
    logger.info("wrote %s: %s split, view %s, seed %d: %s", output_csv, experiment, view, seed, summary.films)
    return PaperSplitReport(experiment, str(output_csv), seed, view, summary)


def split_patients_in_halves(
    manifest: pd.DataFrame, *, seed: int = 0, group_column: str = "patient_id"
) -> pd.DataFrame:
    """A copy of ``manifest`` whose ``split`` puts half of the patients in ``val``, the rest in ``test``.

    For collections that only test a detector fitted elsewhere: settings are chosen on the
    ``val`` half and results reported on the ``test`` half, and no patient is in both. The
    ``val`` patients are ``numpy.random.default_rng(seed).choice`` of half of the sorted patient
    ids (films without a patient id count as their own patient).
    """
    result = manifest.copy()
    groups = patient_groups(result, group_column).astype(str)
    patients = np.array(sorted(groups.unique()))
    rng = np.random.default_rng(seed)
    validation = set(rng.choice(patients, size=len(patients) // 2, replace=False))
    result["split"] = np.where(groups.isin(validation), "val", "test")
    return normalise_manifest(result, "<split_patients_in_halves>")
