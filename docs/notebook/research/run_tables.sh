#!/usr/bin/env bash
# The three reproduction tables of docs/notebook/2026-11-results-history.md, one after the other (resumable: run again
# after an interruption and finished cells are skipped). Outputs go to $OUT (not committed).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-/tmp/cxr_research/runs}
SEEDS=${SEEDS:-5}
export OMP_NUM_THREADS=1
CLI=".venv/bin/cxr-anomaly"
CONFIG=docs/notebook/research/reduced.toml
mkdir -p "$OUT"
( time $CLI reproduce --data ../shared/data/nih1000/manifest.csv --out "$OUT/nih_all" --seeds "$SEEDS" \
    --config $CONFIG --no-progress ) > "$OUT/nih_all.log" 2>&1
( time $CLI reproduce --data ../shared/data/nih1000/manifest.csv --out "$OUT/nih_pa" --seeds "$SEEDS" \
    --view PA --config $CONFIG --no-progress ) > "$OUT/nih_pa.log" 2>&1
( time $CLI reproduce --data /tmp/cxr_research/kermany_manifest.csv --out "$OUT/kermany" --seeds "$SEEDS" \
    --val-fraction 0.1 --test-fraction 0.2 --max-train-normals 500 --config $CONFIG --no-progress ) \
    > "$OUT/kermany.log" 2>&1
