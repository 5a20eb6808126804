"""Fill results_template.md / results_research.md with the tables of the finished runs.

Usage: ``python docs/notebook/research/assemble_results.py [RUNS_DIR]``; the prose (reading, verdict)
is in ``results_fields.json``.

Prints the two docs/notebook/2026-11-results-history.md sections of issue 4. Numbers come from the run folders' table.md
files (never typed by hand); the prose beside them is in the templates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/cxr_research/runs")


def table(name: str, keep_ensembles: bool = True) -> str:
    """A run's table.md: its header line in italics, then the table (ensemble rows optional)."""
    lines = (RUNS / name / "table.md").read_text().strip().splitlines()
    if not keep_ensembles:
        lines = [line for line in lines if not (line.startswith("|") and "ensemble of" in line)]
    header, rest = lines[0], [line for line in lines[1:] if line]
    return f"*{header}*\n\n" + "\n".join(rest)


def wall_time(name: str) -> str:
    """The `time` of a run's log (the first ``real`` line)."""
    for line in (RUNS / f"{name}.log").read_text().splitlines():
        if line.startswith("real"):
            return line.split()[1]
    return "n/a"


def epoch_values(json_name: str, key: str, part: str = "val") -> str:
    record = json.loads((HERE / "logs" / json_name).read_text())
    return ", ".join(f"{epoch[part][key]:.3f}" for epoch in record["runs"][0]["epochs"])


def main() -> None:
    fields = json.loads((HERE / "results_fields.json").read_text())  # the prose around the tables
    research = (
        (HERE / "results_research.md")
        .read_text()
        .format(
            table_short="\n\n".join(
                f"{title}\n\n{table(name, keep_ensembles=False)}"
                for title, name in (
                    ("NIH1000, all views:", "nih_all_short"),
                    ("NIH1000, PA only:", "nih_pa_short"),
                    ("Kermany:", "kermany_short"),
                )
            ),
            table_ablation="\n\n".join(
                f"{title}\n\n{table(name, keep_ensembles=False)}"
                for title, name in (
                    ("NIH1000, all views, without re-estimation:", "nih_all_no_recalibration"),
                    ("Kermany, without re-estimation:", "kermany_no_recalibration"),
                )
            ),
            v3_code=epoch_values("kermany_all_u_none_e10_c16_n0.05_b16_v3.json", "code_knn"),
            v3_nih_code=epoch_values("nih1000_all_u_none_e10_c16_n0.05_b16_v3.json", "code_knn"),
            **{key: fields[key] for key in ("v4_l1", "v4_code", "k_ue_code", "k_u_code", "n_ue_code", "verdict")},
        )
    )
    text = (
        (HERE / "results_template.md")
        .read_text()
        .format(
            render_commit=fields["render_commit"],
            time_nih_all=wall_time("nih_all"),
            time_nih_pa=wall_time("nih_pa"),
            time_kermany=wall_time("kermany"),
            table_nih_all=table("nih_all"),
            table_nih_pa=table("nih_pa"),
            table_kermany=table("kermany"),
            reading=fields["reading"],
            research=research,
        )
    )
    print(text)


if __name__ == "__main__":
    main()
