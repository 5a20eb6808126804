"""The ranked worklist CSV and the self-contained HTML report, from real NIH1000 runs."""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_anomaly.cli import main
from cxr_anomaly.report import add_dicom_links, rank_table


class ReportParser(HTMLParser):
    """Collects the image sources, the worklist rows and their cells."""

    def __init__(self) -> None:
        super().__init__()
        self.image_sources: list[str] = []
        self.rows: list[list[str]] = []
        self.links: list[str] = []
        self.scripts = 0
        self._in_row = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.image_sources.append(values.get("src") or "")
        if tag in ("link", "script", "iframe"):
            self.scripts += 1
        if tag == "a":
            self.links.append(values.get("href") or "")
        if tag == "tr" and values.get("class") == "film-row":
            self._in_row = True
            self.rows.append([])
        if tag == "td" and self._in_row:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr":
            self._in_row = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def nih_test_manifest(nih1000: Path, path: Path, per_class: int) -> Path:
    manifest = pd.read_csv(nih1000 / "manifest.csv")
    manifest["path"] = [str(nih1000 / name) for name in manifest["path"]]
    manifest[manifest["split"] == "test"].groupby("label").head(per_class).to_csv(path, index=False)
    return path


def test_rank_table_sorts_by_raw_score_and_keeps_ties_in_input_order() -> None:
    table = pd.DataFrame({"path": list("abcd"), "score_raw": [1.0, 3.0, 1.0, 2.0]})
    ranked = rank_table(table)
    assert ranked.table["path"].tolist() == ["b", "d", "a", "c"]
    assert ranked.table["rank"].tolist() == [1, 2, 3, 4]
    assert ranked.order.tolist() == [1, 3, 0, 2]


def test_score_report_on_nih1000_ranks_films_and_writes_a_self_contained_html(
    tiny_nih_model, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = nih_test_manifest(tiny_nih_model.nih1000, tmp_path / "test.csv", per_class=20)
    csv_path, html_path = tmp_path / "worklist.csv", tmp_path / "report.html"
    assert (
        main(
            [
                "score",
                "--model",
                str(tiny_nih_model.checkpoint),
                str(manifest),
                "--out",
                str(csv_path),
                "--report",
                str(html_path),
                "--no-progress",
            ]
        )
        == 0
    )
    worklist = pd.read_csv(csv_path)
    assert len(worklist) == 40
    assert worklist["rank"].tolist() == list(range(1, 41))
    assert np.all(np.diff(worklist["score_raw"].to_numpy()) <= 0)
    assert set(worklist["decision"]) <= {"flag", "normal"}
    flagged = int((worklist["decision"] == "flag").sum())
    # the decision follows the stored operating point: flagged films outrank the others
    assert worklist["decision"].tolist() == ["flag"] * flagged + ["normal"] * (40 - flagged)
    assert f"({flagged} of 40 flagged)" in capsys.readouterr().out

    document = html_path.read_text(encoding="utf-8")
    parser = ReportParser()
    parser.feed(document)
    assert len(parser.rows) == 40
    # thumbnail, reconstruction (tang2019 reconstructs), heatmap per film, and the colour-scale legend
    assert len(parser.image_sources) == 3 * 40 + 1
    assert "<th>reconstruction</th>" in document and 'id="colour-scale"' in document
    assert all(source.startswith("data:image/png;base64,") for source in parser.image_sources)
    assert parser.scripts == 0 and parser.links == []  # nothing fetched from elsewhere
    assert f"<b>{flagged}</b> of 40 films would be flagged" in document
    for row, (_, expected) in zip(parser.rows, worklist.iterrows()):
        assert int(row[0]) == expected["rank"]
        assert float(row[5]) == pytest.approx(expected["score_raw"], abs=1e-4)
        assert float(row[6]) == pytest.approx(expected["percentile"], abs=0.05)
        assert row[7] == expected["decision"]
        assert row[8] == expected["path"]


def test_dicom_worklist_keeps_uids_and_drops_patient_identifiers_unless_asked(
    tiny_nih_model, tmp_path: Path, dicom_writer: Callable[..., Path]
) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    films = sorted((tiny_nih_model.nih1000 / "test" / "1_abnormal").glob("*.png"))[:3]
    for index, film in enumerate(films):
        pixels = np.asarray(Image.open(film).convert("L"))
        # no .dcm suffix: the format must be recognised from the bytes
        dicom_writer(
            pixels,
            folder / f"IM{index:04d}",
            study_uid="1.2.826.0.1.3680043.8.498.1",
            sop_uid=f"1.2.826.0.1.3680043.8.498.1.{index + 1}",
            view=("AP", "PA", None)[index],
            age="052Y",
        )
    series = [str(path) for path in sorted(folder.iterdir())]  # a series of files, as a PACS export gives
    out = tmp_path / "default"
    assert (
        main(
            [
                "score",
                "--model",
                str(tiny_nih_model.checkpoint),
                *series,
                "--out",
                str(out / "w.csv"),
                "--report",
                str(out / "r.html"),
                "--no-progress",
            ]
        )
        == 0
    )
    worklist = pd.read_csv(out / "w.csv", dtype=str)
    assert set(worklist["sop_instance_uid"]) == {f"1.2.826.0.1.3680043.8.498.1.{i}" for i in (1, 2, 3)}
    assert set(worklist["study_instance_uid"]) == {"1.2.826.0.1.3680043.8.498.1"}
    # the view column comes from ViewPosition; the film without the tag has none
    views = dict(zip(worklist["sop_instance_uid"], worklist["view"]))
    assert [views[f"1.2.826.0.1.3680043.8.498.1.{i}"] for i in (1, 2)] == ["AP", "PA"]
    assert pd.isna(views["1.2.826.0.1.3680043.8.498.1.3"])
    assert "age" not in worklist  # a patient attribute the worklist does not need
    for text in ((out / "w.csv").read_text(), (out / "r.html").read_text()):
        text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)  # base64 may spell anything
        for secret in ("Doe", "Jane", "PID-93417", "19610203"):
            assert secret not in text
        assert "1.2.826.0.1.3680043.8.498.1.2" in text

    kept = tmp_path / "kept"
    assert (
        main(
            [
                "score",
                "--model",
                str(tiny_nih_model.checkpoint),
                *series,
                "--out",
                str(kept / "w.csv"),
                "--report",
                str(kept / "r.html"),
                "--keep-patient-identifiers",
                "--no-progress",
            ]
        )
        == 0
    )
    worklist = pd.read_csv(kept / "w.csv", dtype=str)
    assert set(worklist["patient_name"]) == {"Doe^Jane"}
    assert set(worklist["patient_id_dicom"]) == {"PID-93417"}
    assert "19610203" in (kept / "r.html").read_text()


def test_tables_without_dicom_inputs_get_no_link_columns(tmp_path: Path) -> None:
    png = tmp_path / "film.png"
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(png)
    table = pd.DataFrame({"path": [str(png)], "score_raw": [1.0]})
    assert list(add_dicom_links(table).columns) == ["path", "score_raw"]


def test_report_without_calibration_says_so(tmp_path: Path) -> None:
    from cxr_anomaly.explain import explain_film
    from cxr_anomaly.report import write_html_report

    pixels = np.full((64, 64), 90, dtype=np.uint8)
    anomaly_map = np.full((8, 8), 0.1, dtype=np.float32)
    ranked = rank_table(pd.DataFrame({"path": ["x.png"], "score_raw": [2.5]})).table
    explanation = explain_film(pixels, pixels, anomaly_map, 0.4)
    path = write_html_report(tmp_path / "r.html", ranked, [explanation], calibration=None, model_description="test")
    document = path.read_text()
    assert "no operating point stored" in document
    assert re.search(r"would be flagged", document) is None
    # a family without reconstructions gets no reconstruction column; the legend names the model's scale
    parser = ReportParser()
    parser.feed(document)
    assert "reconstruction" not in document and len(parser.image_sources) == 2 + 1
    assert 'id="colour-scale"' in document and "to 0.4 and above" in document
    assert float(parser.rows[0][4]) == pytest.approx(2.5)  # rank, film, heatmap, score (z), raw score
    with_reconstruction = explain_film(pixels, pixels, anomaly_map, 0.4, reconstruction=pixels)
    document = write_html_report(
        tmp_path / "t.html", ranked, [with_reconstruction], calibration=None, model_description="test"
    ).read_text()
    assert "<th>reconstruction</th>" in document and 'alt="reconstruction"' in document
    with pytest.raises(ValueError, match="1 rows but 0 explanations"):
        write_html_report(tmp_path / "s.html", ranked, [], calibration=None, model_description="test")


def test_rows_that_cannot_be_reread_are_explained_on_the_model_input(tmp_path: Path) -> None:
    from cxr_anomaly.report import explain_rows

    pixels = np.full((1, 64, 64), 90, dtype=np.uint8)
    anomaly_maps = np.zeros((1, 8, 8), dtype=np.float32)
    table = pd.DataFrame({"path": [f"{tmp_path}/pneumoniamnist.npz#test/0"]})  # an npz member, not a file
    (explanation,) = explain_rows(table, pixels, anomaly_maps, 0.5)
    assert explanation.original.shape == (64, 64) and explanation.overlay.shape == (64, 64, 3)
    assert explanation.reconstruction is None and explanation.scale == 0.5
    (explanation,) = explain_rows(table, pixels, anomaly_maps, 0.5, reconstructions=pixels)
    assert explanation.reconstruction is not None and explanation.reconstruction.shape == (64, 64)
