#!/usr/bin/env bash
# Issue 10's closing check, rehearsed with the author's own commands: train the default with
#   cxr-anomaly train --data ../shared/data/rsna_normal224/manifest.csv --out RUN
# then evaluate RUN/model.pt per view, beside the pixel baselines, on two NIH collections that
# were never trained on: NIH1000's test split (a PNG manifest) and all 959 films of
# nih_pneumonia256 written as a DICOM folder with no manifest (views and ages only in the
# headers), which is the scope of the issue's probe table; and the demo's test half of it, the
# half no setting was chosen on. Outputs go to $OUT (not committed); docs/notebook/2026-11-results-history.md quotes them.
#
# Usage: docs/notebook/research/author_check.sh   (OUT=runs/author_check by default; about 40 min on
# a 2-core CPU, nearly all of it the fit). A finished RUN/model.pt is reused.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-runs/author_check}
DATA=${DATA:-../shared/data}
PYTHON=${PYTHON:-.venv/bin/python}
CLI=${CLI:-.venv/bin/cxr-anomaly}
mkdir -p "$OUT"
stamp() { echo "$(date -u +%FT%TZ) $* (commit $(git rev-parse --short HEAD 2>/dev/null || echo none); load $(cut -d' ' -f1-3 /proc/loadavg))" >> "$OUT/progress.log"; }
if [ ! -e "$OUT/RUN/model.pt" ]; then
    stamp "start train"
    ( time $CLI train --data "$DATA/rsna_normal224/manifest.csv" --out "$OUT/RUN" --no-progress ) > "$OUT/train.log" 2>&1
    stamp "done train"
fi
[ -d "$OUT/pneumonia_all/dicom" ] || $PYTHON -m docs.notebook.research.dicom_collection --data "$DATA" --part all \
    --write-only --out "$OUT/pneumonia_all"
[ -d "$OUT/pneumonia_test/dicom" ] || $PYTHON -m docs.notebook.research.dicom_collection --data "$DATA" --part test \
    --write-only --out "$OUT/pneumonia_test"
evaluate() {  # evaluate NAME DATA: one evaluate command, timed, logged to $OUT/eval_NAME.log
    stamp "start evaluate $1"
    ( time $CLI evaluate --model "$OUT/RUN/model.pt" --data "$2" --out "$OUT/eval_$1" --no-progress ) \
        > "$OUT/eval_$1.log" 2>&1
    stamp "done evaluate $1"
}
evaluate nih1000_test "$DATA/nih1000/manifest.csv"
evaluate pneumonia_all_dicom "$OUT/pneumonia_all/dicom"
evaluate pneumonia_test_dicom "$OUT/pneumonia_test/dicom"
