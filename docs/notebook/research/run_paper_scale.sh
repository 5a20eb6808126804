#!/usr/bin/env bash
# Issue 11: the paper's four variants at its data scale, trained on rsna_normal224 and tested on
# NIH1000 test and the test half (by patient) of nih_pneumonia256, then more seeds, the learning
# curve of U+D+E and the skip/latent options (on U, the autoencoder they act on). Resumable: finished cells are reused. Outputs go to
# $OUT (not committed); docs/notebook/2026-11-results-history.md quotes the tables.
#
# On a GPU machine (the 64-channel runs; paper_scale64/README.md): DATA names a folder of the
# three collections at 64 px (pack_for_device.py), CLI and PYTHON the interpreter there, CONFIG
# and OPTIONS the 64-channel configs, and stages run side by side, one invocation each.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-runs/paper_scale}
DATA=${DATA:-../shared/data}
PYTHON=${PYTHON:-.venv/bin/python}
CLI=${CLI:-.venv/bin/cxr-anomaly}
CONFIG=${CONFIG:-docs/notebook/research/paper_scale.toml}
OPTIONS=${OPTIONS:-"docs/notebook/research/paper_scale_*.toml"}
STAGES=${STAGES-"variants options curve seeds useeds seed2 options_full"}
EXTRA=${EXTRA:-}  # more benchmark arguments for every run, e.g. a smoke test's "--epochs 1"
mkdir -p "$OUT"
# The demo's test part of nih_pneumonia256: the half of its patients that settings were not chosen on.
HALVES="$OUT/nih_pneumonia256_halves.csv"
[ -e "$HALVES" ] || $PYTHON - "$DATA/nih_pneumonia256/manifest.csv" "$HALVES" <<'PY'
import sys
from pathlib import Path
from cxr_anomaly.data.splits import split_patients_in_halves
from cxr_anomaly.data.manifest import load_inputs
manifest = split_patients_in_halves(load_inputs(Path(sys.argv[1])), seed=0)
manifest["path"] = [str(Path(p).resolve()) for p in manifest["path"]]
manifest.to_csv(sys.argv[2], index=False)
PY
TESTS=(--test nih1000_test="$DATA/nih1000/manifest.csv" nih_pneumonia256_test_half="$HALVES")
TRAIN=(--train "$DATA/rsna_normal224/manifest.csv")
run() {  # run NAME ARGS...: one benchmark invocation, timed, logged to $OUT/NAME.log
    local name=$1; shift
    echo "$(date -u +%FT%TZ) start $name, config $CONFIG (commit $(git rev-parse --short HEAD 2>/dev/null || echo none))" >> "$OUT/progress.log"
    # shellcheck disable=SC2086  # CLI and EXTRA are word lists
    ( time $CLI benchmark "${TRAIN[@]}" "${TESTS[@]}" --config "$CONFIG" --no-progress $EXTRA "$@" ) \
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
    all_seed1|all_seed2) run "$stage" --out "$OUT/$stage" --first-seed "${stage#all_seed}" --seeds 1 \
        --methods tang2019:u,tang2019:u+e,tang2019:u+d,tang2019:u+d+e ;;
    seeds:*)  # seeds:VARIANT:FIRST:COUNT[:OPTION], OPTION a config beside CONFIG (without .toml)
        IFS=: read -r _ variant first count option <<< "$stage"
        name="${variant}_seeds${first}-$((first + count - 1))${option:+_$option}"
        config=$CONFIG; [ -z "$option" ] || config="$(dirname "$CONFIG")/$option.toml"
        CONFIG=$config run "$name" --out "$OUT/$name" --first-seed "$first" --seeds "$count" --methods "tang2019:$variant" ;;
    seeds34) run seeds34 --out "$OUT/seeds34" --first-seed 3 --seeds 2 --methods tang2019:u,tang2019:u+d+e ;;
    options_full) CONFIG=docs/notebook/research/paper_scale_no_skip32.toml run no_skip32_full \
        --out "$OUT/no_skip32_full" --seeds 1 --methods tang2019:u+d+e ;;
    curve) for count in 500 1000 2000; do
        run "curve$count" --out "$OUT/curve$count" --seeds 1 --max-train-normals $count --methods tang2019:u+d+e
    done ;;
    curve_seeds) for count in 500 1000 2000; do
        run "curve${count}_seeds12" --out "$OUT/curve${count}_seeds12" --first-seed 1 --seeds 2 \
            --max-train-normals $count --methods tang2019:u+d+e
    done ;;
    options) for option in $OPTIONS; do
        [ -e "$option" ] || continue
        CONFIG=$option run "$(basename "$option" .toml)" --out "$OUT/$(basename "$option" .toml)" --seeds 1 \
            --methods tang2019:u
    done ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
    esac
done
