#!/usr/bin/env bash
# Issue 11 at the paper's width (64 base channels) on a lent GPU machine, all stages side by side.
#
# Usage, from the repository root on that machine:
#   bash docs/notebook/research/paper_scale64/run_on_gpu.sh PACK RESULT_DIR [DEADLINE_S]
# PACK is the folder pack_for_device.py wrote (the three collections at 64 px, bit for bit the
# pixels the cache holds). The stages run in ROUNDS (default "1 2 3"), the stages of a round side
# by side, each given DEADLINE_S seconds (default 470); a stage cut off keeps its finished cells.
# On one H200 the rounds took 187, 137 and 107 s. RESULT_DIR receives machine.txt, tables.tgz (tables, logs, cell records, ROC
# curves) and the cells' scores in scores_*.tgz: the weights and film grids stay behind, since the
# device tool brings back at most 16 MB a file.
set -uo pipefail
cd "$(dirname "$0")/../../../.."
mkdir -p "$2"
PACK=$(cd "$1" && pwd); RESULT=$(cd "$2" && pwd); DEADLINE=${3:-470}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export DATA="$PACK" PYTHON="${PYTHON:-python3}" OUT=runs/paper_scale64
export CLI="$PYTHON -m cxr_anomaly.cli" CONFIG=docs/notebook/research/paper_scale64/paper.toml
export OPTIONS="docs/notebook/research/paper_scale64/option_*.toml"
# six benchmark processes share the CPU's cores for decoding, baselines and bootstraps
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
{
    date -u +%FT%TZ; nvidia-smi 2>&1 | head -15
    $PYTHON -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
    lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-300
} > "$RESULT/machine.txt" 2>&1
STAGES="" bash docs/notebook/research/run_paper_scale.sh  # writes the nih_pneumonia256 halves once
# 1: the four variants, seeds 0-2 of each, U and U+D+E to seed 4, the learning curve (3 seeds)
#    and the options on U; 2: more seeds; 3: more seeds of the options, and two of them on U+D+E
declare -A ROUND_STAGES=(
    [1]="variants all_seed1 all_seed2 curve curve_seeds options seeds34"
    [2]="seeds:u+d+e:5:3 seeds:u:5:3 seeds:u+e:3:2 seeds:u+d:3:2 seeds:u+d+e:8:2 seeds:u:8:2"
    [3]="seeds:u:1:2:option_no_skip32 seeds:u:1:2:option_no_skips seeds:u:1:2:option_no_skips_latent4
         seeds:u+d+e:0:2:option_no_skip32 seeds:u+d+e:2:1:option_no_skip32 seeds:u+d+e:0:2:option_no_skips_latent4"
)
for round in ${ROUNDS:-1 2 3}; do
    started=$(date +%s)
    for stage in ${ROUND_STAGES[$round]}; do
        STAGES=$stage timeout --kill-after=10 "$DEADLINE" bash docs/notebook/research/run_paper_scale.sh &
    done
    wait
    echo "round $round took $(( $(date +%s) - started )) s" >> "$RESULT/machine.txt"
done
cd runs
find paper_scale64 -type f \( -name '*.md' -o -name '*.csv' -o -name '*.json' -o -name '*.log' -o -name 'roc_*.png' \) \
    -print0 | tar czf "$RESULT/tables.tgz" --null -T -
find paper_scale64/variants paper_scale64/all_seed* paper_scale64/*_seeds* -name '*.npz' -print0 \
    | tar czf "$RESULT/scores_seeds.tgz" --null -T -
find paper_scale64 -name '*.npz' ! -path '*/variants/*' ! -path '*/all_seed*' ! -path '*_seeds*' -print0 \
    | tar czf "$RESULT/scores_other.tgz" --null -T -
ls -l "$RESULT"
