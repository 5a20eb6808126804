"""The default fit (issue 31): the frozen trunk passed once and only the later stages fine-tuned
must score the validation films as well as the whole backbone fine-tuned did, to 0.01 AUC.

The reference figures are those of the whole-backbone default (``finetune_trunk_stride = 0``, 2
epochs) fitted on the same 1,000 normals, measured once with ``python -m benchmarks.rsna_sweep
--out OUT --normals 1000 --settings default`` (docs/results.md, "Fitting in minutes"): fitting it
again here would take most of the suite's time on a 2-core CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the benchmarks package

import torch  # noqa: E402
from benchmarks import rsna_sweep  # noqa: E402

from cxr_anomaly.config import Config, with_overrides  # noqa: E402

# the rule's two figures on the validation films, whole backbone fine-tuned, 1,000 normals
WHOLE_BACKBONE_RSNA_WORST_VIEW = 0.724
WHOLE_BACKBONE_NIH_WORST_VIEW = 0.620
TOLERANCE = 0.01


def test_the_default_fit_scores_the_validation_films_as_well_as_the_whole_backbone_fine_tuned(
    shared_data: Path,
) -> None:
    config = with_overrides(Config(), "train", precision="fp32")
    assert config.features.finetune_trunk_stride > 0, "the default fit no longer passes a cached trunk"
    sets = [collection for collection in rsna_sweep.collections(shared_data) if collection.name.endswith(" val")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the float order of the measurement above, so that this fit repeats its figures
    try:
        scored = rsna_sweep.score_setting(config, None, sets, shared_data, normals=1000)
    finally:
        torch.set_num_threads(threads)
    row: dict[str, float | None] = {}
    for collection in sets:
        row.update(rsna_sweep.auc_rows(scored["scores"]["raw"], collection))
    judged = rsna_sweep.judged(row, "val")
    assert judged["rsna worst view val"] >= WHOLE_BACKBONE_RSNA_WORST_VIEW - TOLERANCE, judged
    assert judged["nih worst view val"] >= WHOLE_BACKBONE_NIH_WORST_VIEW - TOLERANCE, judged
