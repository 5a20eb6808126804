#!/usr/bin/env bash
# Issue 11: the paper's four variants at its data scale, trained on rsna_normal224 and tested on
# NIH1000 test and the test half (by patient) of nih_pneumonia256, then more seeds, the learning
# curve of U+D+E and the skip/latent options (on U, the autoencoder they act on). Resumable: finished cells are reused. Outputs go to
# $OUT (not committed); docs/results.md quotes the tables.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/paper_scale}
CLI=".venv/bin/cxr-anomaly"
CONFIG=${CONFIG:-benchmarks/research/paper_scale.toml}
STAGES=${STAGES:-"variants options curve seeds useeds seed2 options_full"}
mkdir -p "$OUT"
# The demo's test part of nih_pneumonia256: the half of its patients that settings were not chosen on.
HALVES="$OUT/nih_pneumonia256_halves.csv"
.venv/bin/python - "$HALVES" <<'PY'
import sys
from pathlib import Path
from cxr_anomaly.data.splits import split_patients_in_halves
from cxr_anomaly.data.manifest import load_inputs
manifest = split_patients_in_halves(load_inputs(Path("../shared/data/nih_pneumonia256/manifest.csv")), seed=0)
manifest["path"] = [str(Path(p).resolve()) for p in manifest["path"]]
manifest.to_csv(sys.argv[1], index=False)
PY
TESTS=(--test nih1000_test=../shared/data/nih1000/manifest.csv nih_pneumonia256_test_half="$HALVES")
TRAIN=(--train ../shared/data/rsna_normal224/manifest.csv)
run() {  # run NAME ARGS...: one benchmark invocation, timed, logged to $OUT/NAME.log
    local name=$1; shift
    echo "$(date -u +%FT%TZ) start $name (commit $(git rev-parse --short HEAD))" >> "$OUT/progress.log"
    ( time $CLI benchmark "${TRAIN[@]}" "${TESTS[@]}" --config "$CONFIG" --no-progress "$@" ) \
        > "$OUT/$name.log" 2>&1
    echo "$(date -u +%FT%TZ) done $name" >> "$OUT/progress.log"
}
for stage in $STAGES; do
    case $stage in
    variants) run variants --out "$OUT/variants" --seeds 1 \
        --methods tang2019:u,tang2019:u+e,tang2019:u+d,tang2019:u+d+e ;;
    seeds) run seed1 --out "$OUT/seed1" --first-seed 1 --seeds 1 --methods tang2019:u+d+e ;;
    useeds) run useeds --out "$OUT/useeds" --first-seed 1 --seeds 2 --methods tang2019:u ;;
    seed2) run seed2 --out "$OUT/seed2" --first-seed 2 --seeds 1 --methods tang2019:u+d+e ;;
    options_full) CONFIG=benchmarks/research/paper_scale_no_skip32.toml run no_skip32_full \
        --out "$OUT/no_skip32_full" --seeds 1 --methods tang2019:u+d+e ;;
    curve) for count in 500 1000 2000; do
        run "curve$count" --out "$OUT/curve$count" --seeds 1 --max-train-normals $count --methods tang2019:u+d+e
    done ;;
    options) for option in benchmarks/research/paper_scale_*.toml; do
        [ -e "$option" ] || continue
        CONFIG=$option run "$(basename "$option" .toml)" --out "$OUT/$(basename "$option" .toml)" --seeds 1 \
            --methods tang2019:u
    done ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
    esac
done
