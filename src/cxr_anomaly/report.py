"""The worklist: films ranked by score, as a CSV and as a self-contained HTML report.

The paper's promise is a shorter queue for radiologists: suspicious films first, normal-looking
ones last. :func:`rank_table` orders a score table by raw score (every normalisation is
monotone in it) and numbers the rows; :func:`write_html_report` writes one HTML file with every
image embedded as a base64 PNG (thumbnail, heatmap, and the reconstruction for families that
make one), so it can be mailed or archived without its inputs.

DICOM linking: :func:`add_dicom_links` adds the StudyInstanceUID and SOPInstanceUID of DICOM
inputs so a worklist row can be matched to the study in a PACS. Patient name, ID and birth date
are never written unless the caller asks for them explicitly (``keep_patient_identifiers``).
"""

from __future__ import annotations

import datetime
import html
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .calibration import Calibration
from .errors import InputFileError
from .explain import Explanation, colour_bar, explain_film, png_data_uri
from .image_base import is_dicom_file
from .io import read_image
from .version import __version__

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 192  # pixels of the longer side of each image in the HTML report
LINK_TAGS = {"study_instance_uid": "StudyInstanceUID", "sop_instance_uid": "SOPInstanceUID"}
PATIENT_TAGS = {
    "patient_name": "PatientName",
    "patient_id_dicom": "PatientID",
    "patient_birth_date": "PatientBirthDate",
}


def dicom_link_fields(path: str | Path, *, keep_patient_identifiers: bool = False) -> dict[str, str | None]:
    """StudyInstanceUID and SOPInstanceUID of a DICOM file (and patient tags only when asked).

    Only the header is read. Values that are absent are None.
    """
    from .dicom_bounds import read_dicom_header  # bounds a deflated header

    tags = dict(LINK_TAGS)
    if keep_patient_identifiers:
        tags.update(PATIENT_TAGS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warnings quote header values
        dataset = read_dicom_header(path, specific_tags=list(tags.values()))
    fields: dict[str, str | None] = {}
    for column, keyword in tags.items():
        value = dataset.get(keyword)
        fields[column] = None if value is None or str(value) == "" else str(value)
    return fields


def add_dicom_links(table: pd.DataFrame, *, keep_patient_identifiers: bool = False) -> pd.DataFrame:
    """Add DICOM linking columns to a score table whose ``path`` column names files.

    Nothing is added when no input is DICOM. An unreadable header leaves the row's values empty
    and logs a warning naming the file.
    """
    dicom_rows = [index for index, path in enumerate(table["path"].astype(str)) if is_dicom_file(path)]
    if not dicom_rows:
        return table
    table = table.copy()
    columns = list(LINK_TAGS) + (list(PATIENT_TAGS) if keep_patient_identifiers else [])
    values: dict[str, list[str | None]] = {column: [None] * len(table) for column in columns}
    for index in dicom_rows:
        path = str(table["path"].iloc[index])
        try:
            fields = dicom_link_fields(path, keep_patient_identifiers=keep_patient_identifiers)
        except Exception as error:  # pydicom raises many types for damaged headers
            logger.warning("%s: cannot read DICOM UIDs (%s)", path, type(error).__name__)
            continue
        for column in columns:
            values[column][index] = fields.get(column)
    for column in columns:
        table[column] = values[column]
    return table


@dataclass
class RankedTable:
    """A score table in worklist order.

    Attributes:
        table: the in-scope rows sorted by ``score_raw``, highest first, with a 1-based ``rank``
            column; then the films outside the model's scope (a ``scope`` column other than
            ``in_scope``), grouped by reason in input order, with an empty rank.
        order: ``table`` row i is row ``order[i]`` of the unsorted table (to reorder images).
    """

    table: pd.DataFrame
    order: np.ndarray


def rank_table(table: pd.DataFrame) -> RankedTable:
    """Sort a score table by ``score_raw``, highest (most suspicious) first; ties keep input order.

    Films outside the model's scope (:mod:`cxr_anomaly.scope`) are never ranked among the
    others: they follow the ranked films, unranked, grouped by their reason.
    """
    in_scope = (table["scope"] == "in_scope").to_numpy() if "scope" in table else np.ones(len(table), dtype=bool)
    inside = np.flatnonzero(in_scope)
    inside = inside[np.argsort(-table["score_raw"].to_numpy(dtype=np.float64)[inside], kind="stable")]
    outside = np.flatnonzero(~in_scope)
    if len(outside):
        outside = outside[np.argsort(table["scope"].to_numpy()[outside].astype(str), kind="stable")]
    order = np.concatenate([inside, outside]).astype(np.int64)
    ranked = table.iloc[order].reset_index(drop=True)
    ranks = pd.array([*range(1, len(inside) + 1), *([pd.NA] * len(outside))], dtype="Int64")
    ranked.insert(0, "rank", ranks)
    return RankedTable(ranked, order)


def explain_rows(
    table: pd.DataFrame,
    pixels: np.ndarray,
    anomaly_maps: np.ndarray,
    scale: float,
    *,
    floor: float = 0.0,
    border_crop: float = 0.0,
    reconstructions: np.ndarray | None = None,
    max_image_pixels: int = 100_000_000,
    max_side: int = THUMBNAIL_SIDE,
) -> list[Explanation]:
    """One :class:`~cxr_anomaly.explain.Explanation` per row, in the table's order.

    Args:
        table: rows with a ``path`` column; row i belongs to ``pixels[i]`` and ``anomaly_maps[i]``.
        pixels: the films as the detector read them, uint8 (N, S, S).
        anomaly_maps: the detector's maps, float (N, h, w).
        scale: the map value painted at full colour; ``floor``: the value painted transparent
            (:func:`cxr_anomaly.explain.heatmap_range`).
        reconstructions: uint8 (N, S, S) for families that reconstruct, else None.
        max_image_pixels: decompression-bomb limit when re-reading a film.
        max_side: longer side of the thumbnails.

    The heatmap is laid over the film re-read at its original resolution (then shrunk to
    ``max_side``); a row whose file cannot be re-read (an .npz member, say) uses the model
    input instead.
    """
    explanations = []
    for index, path in enumerate(table["path"].astype(str)):
        try:
            film = read_image(path, max_pixels=max_image_pixels).array  # (H0, W0) float
        except InputFileError:
            film = pixels[index]
        explanations.append(
            explain_film(
                film,
                pixels[index],
                anomaly_maps[index],
                scale,
                floor=floor,
                border_crop=border_crop,
                max_side=max_side,
                reconstruction=None if reconstructions is None else reconstructions[index],
            )
        )
    return explanations


@dataclass
class ReportSummary:
    """Counts shown at the top of the report."""

    num_films: int
    num_flagged: int | None
    threshold: float | None
    operating_point: str


def _format(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    return html.escape(str(value))


def summarise(table: pd.DataFrame, calibration: Calibration | None) -> ReportSummary:
    """How many films the stored operating point flags, and which point that is."""
    if calibration is None or "decision" not in table:
        return ReportSummary(len(table), None, None, "none (the checkpoint has no calibration)")
    flagged = int((table["decision"] == "flag").sum())
    if calibration.operating_point == "sensitivity":
        point = (
            f"target sensitivity {calibration.target_sensitivity:.0%} on validation abnormal films "
            f"(validation specificity {_format(calibration.validation_specificity)})"
        )
    else:
        point = f"target specificity {calibration.target_specificity:.0%} on {calibration.num_normals} normal validation films"
    return ReportSummary(len(table), flagged, calibration.threshold, point)


PAGE_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}table{border-collapse:collapse}
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:middle;font-size:.9em}
th{background:#f3f3f3;position:sticky;top:0}
img{display:block;width:128px;height:auto;image-rendering:auto}
.flag{color:#fff;background:#b3261e;padding:2px 6px;border-radius:3px;font-weight:600}
.normal{color:#1b5e20;background:#e3f2e5;padding:2px 6px;border-radius:3px}
.summary{background:#f7f7fa;border:1px solid #ddd;padding:.8em 1em;margin-bottom:1em;max-width:60em}
.path{max-width:18em;word-break:break-all;font-family:monospace;font-size:.8em}
"""


def film_row(row: pd.Series, explanation: Explanation, show_reconstruction: bool, extra_columns: list[str]) -> str:
    """One film's row of the worklist table: its images, scores, decision, file and extra columns."""
    decision = row.get("decision")
    decision_cell = (
        f'<span class="{html.escape(str(decision))}">{html.escape(str(decision))}</span>'
        if isinstance(decision, str)
        else "—"
    )
    cells = [
        f"<td>{int(row['rank'])}</td>",
        f'<td><img alt="film" src="{png_data_uri(explanation.original)}"></td>',
        *(
            (f'<td><img alt="reconstruction" src="{png_data_uri(explanation.reconstruction)}"></td>',)
            if show_reconstruction and explanation.reconstruction is not None
            else ()
        ),
        f'<td><img alt="heatmap" src="{png_data_uri(explanation.overlay)}"></td>',
        f"<td>{_format(row.get('score_calibrated'), 2)}</td>",
        f"<td>{_format(row['score_raw'], 4)}</td>",
        f"<td>{_format(row.get('percentile'), 1)}</td>",
        f'<td class="decision">{decision_cell}</td>',
        f'<td class="path">{html.escape(str(row["path"]))}</td>',
        *(f"<td>{_format(row[column])}</td>" for column in extra_columns),
    ]
    return f'<tr class="film-row">{"".join(cells)}</tr>'


def out_of_scope_row(row: pd.Series, explanation: Explanation) -> str:
    """One row of the films outside the model's scope: the film, why, its (unranked) raw score and file."""
    cells = [
        f'<td><img alt="film" src="{png_data_uri(explanation.original)}"></td>',
        f'<td class="scope">{html.escape(str(row.get("scope")))}</td>',
        f"<td>{_format(row['score_raw'], 4)}</td>",
        f'<td class="path">{html.escape(str(row["path"]))}</td>',
    ]
    return f'<tr class="out-of-scope-row">{"".join(cells)}</tr>'


def out_of_scope_section(ranked: pd.DataFrame, explanations: list[Explanation]) -> str:
    """The report's section of films the model was not made for, listed apart and unranked ('' when none)."""
    if "scope" not in ranked:
        return ""
    rows = [
        out_of_scope_row(row, explanation)
        for (_, row), explanation in zip(ranked.iterrows(), explanations)
        if row["scope"] != "in_scope"
    ]
    if not rows:
        return ""
    return f"""<h2 id="out-of-scope-title">Outside the model's scope: {len(rows)} film(s), not ranked</h2>
<p>The model learnt from frontal adult chest films meant for display; its score means nothing for
these films (a lateral view, another body part, raw detector data, a rotated film, a child's film
for a model fitted on adults, or a DICOM film without a usable view). Read them in the usual way.</p>
<table id="out-of-scope"><thead><tr><th>film</th><th>why</th><th>raw score (unranked)</th><th>file</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
"""


def _flagged_text(summary: ReportSummary, in_scope: np.ndarray) -> str:
    """The summary's sentence on how many films would be flagged, and how many are out of scope."""
    flagged_text = (
        "no operating point stored: scores only"
        if summary.num_flagged is None
        else f"<b>{summary.num_flagged}</b> of {summary.num_films} films would be flagged "
        f"({summary.num_flagged / max(summary.num_films, 1):.0%}); "
        f"{summary.num_films - summary.num_flagged} go to the back of the queue"
    )
    if not in_scope.all():
        flagged_text += (
            f"; {int((~in_scope).sum())} film(s) outside the model's scope are listed apart at the end, unranked"
        )
    return flagged_text


def _header_cells(show_reconstruction: bool, extra_columns: list[str]) -> str:
    """The ``<th>`` cells of the worklist table's header row."""
    return "".join(
        f"<th>{html.escape(column)}</th>"
        for column in (
            "rank",
            "film",
            *(("reconstruction",) if show_reconstruction else ()),
            "heatmap",
            "score (z)",
            "raw score",
            "percentile",
            "decision",
            "file",
            *extra_columns,
        )
    )


def write_html_report(
    path: str | Path,
    ranked: pd.DataFrame,
    explanations: list[Explanation],
    *,
    calibration: Calibration | None,
    model_description: str,
    title: str = "cxr-anomaly worklist",
) -> Path:
    """Write the self-contained HTML worklist for a ranked table (see :func:`rank_table`).

    Args:
        path: HTML file to write.
        ranked: the ranked score table; row i is explained by ``explanations[i]``.
        explanations: thumbnail, reconstruction and heatmap of each row.
        calibration: the checkpoint's operating point, for the summary.
        model_description: which checkpoint scored the films (shown in the summary).
        title: the page title.
    """
    if len(ranked) != len(explanations):
        raise ValueError(f"{len(ranked)} rows but {len(explanations)} explanations")
    in_scope = (ranked["scope"] == "in_scope").to_numpy() if "scope" in ranked else np.ones(len(ranked), dtype=bool)
    summary = summarise(ranked[in_scope], calibration)
    flagged_text = _flagged_text(summary, in_scope)
    generated = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    extra_columns = [column for column in ("label", "view", *LINK_TAGS, *PATIENT_TAGS) if column in ranked]
    show_reconstruction = bool(explanations) and explanations[0].reconstruction is not None
    header_cells = _header_cells(show_reconstruction, extra_columns)
    floor, scale = (explanations[0].floor, explanations[0].scale) if explanations else (0.0, 1.0)
    rows = [
        film_row(row, explanation, show_reconstruction, extra_columns)
        for (_, row), explanation, inside in zip(ranked.iterrows(), explanations, in_scope)
        if inside
    ]
    threshold_text = "—" if summary.threshold is None else f"{summary.threshold:.4g}"
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{PAGE_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<div class="summary" id="summary">
<p id="flagged-summary">{flagged_text}.</p>
<p>Operating point: {html.escape(summary.operating_point)}; raw-score threshold {threshold_text}.
Films are sorted by score, most suspicious first. The percentile is the film's place among normal
validation films; the heatmap shows where the model found the film unlike the normal films it
learnt from, laid over the film at its original resolution.</p>
<p id="colour-scale">Heatmap colours: <img alt="colour scale" style="display:inline;width:256px;height:12px;vertical-align:middle"
src="{png_data_uri(colour_bar())}"> from {floor:.3g} (transparent: a typical location of a normal validation
film) to {scale:.3g} and above (opaque: more unusual than 99.9% of normal locations); the scale is fixed for
this model, so a colour means the same on every film.</p>
<p>Model: {html.escape(model_description)}. Generated {generated} by cxr-anomaly {__version__}.
This is a triage aid for prioritising reading, not a diagnosis.</p>
</div>
<table id="worklist"><thead><tr>{header_cells}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
{out_of_scope_section(ranked, explanations)}</body></html>
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    logger.info("wrote worklist report of %d films -> %s", len(ranked), path)
    return path
