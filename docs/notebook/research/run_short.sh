#!/usr/bin/env bash
# The "stop early" rows (short.toml: one epoch), U and U+D+E, 5 seeds, on the three splits of
# run_tables.sh. Outputs go to $OUT (not committed).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-/tmp/cxr_research/runs}
export OMP_NUM_THREADS=1
CLI=".venv/bin/cxr-anomaly"
CONFIG=docs/notebook/research/short.toml
( time $CLI reproduce --data ../shared/data/nih1000/manifest.csv --out "$OUT/nih_all_short" \
    --variants u,u+d+e --config $CONFIG --no-progress ) > "$OUT/nih_all_short.log" 2>&1
( time $CLI reproduce --data ../shared/data/nih1000/manifest.csv --out "$OUT/nih_pa_short" --view PA \
    --variants u,u+d+e --config $CONFIG --no-progress ) > "$OUT/nih_pa_short.log" 2>&1
( time $CLI reproduce --data /tmp/cxr_research/kermany_manifest.csv --out "$OUT/kermany_short" \
    --variants u,u+d+e --val-fraction 0.1 --test-fraction 0.2 --max-train-normals 500 --config $CONFIG \
    --no-progress ) > "$OUT/kermany_short.log" 2>&1
