#!/usr/bin/env bash
# Ablation rows for the BatchNorm re-estimation (5 seeds, U and U+D+E), on the splits of
# run_tables.sh. Outputs go to $OUT (not committed).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-/tmp/cxr_research/runs}
export OMP_NUM_THREADS=1
CLI=".venv/bin/cxr-anomaly"
CONFIG=docs/notebook/research/reduced_no_recalibration.toml
( time $CLI reproduce --data ../shared/data/nih1000/manifest.csv --out "$OUT/nih_all_no_recalibration" \
    --variants u,u+d+e --config $CONFIG --no-progress ) > "$OUT/nih_all_no_recalibration.log" 2>&1
( time $CLI reproduce --data /tmp/cxr_research/kermany_manifest.csv --out "$OUT/kermany_no_recalibration" \
    --variants u,u+d+e --val-fraction 0.1 --test-fraction 0.2 --max-train-normals 500 --config $CONFIG \
    --no-progress ) > "$OUT/kermany_no_recalibration.log" 2>&1
