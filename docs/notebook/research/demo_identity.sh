#!/bin/bash
# Issue 30's identity check: make demo's job before the restructuring (4758662) and after it
# (ec208af), each on one thread and 600 normals, from the repository root:
#   bash docs/notebook/research/demo_identity.sh OUT
# then compare OUT/before and OUT/after (report.md tables, run/model.pt tensors, eval/*/scores.csv).
set -euo pipefail
out=$(realpath "${1:?usage: demo_identity.sh OUT}")
data=$(realpath "${CXR_ANOMALY_DATA:-../shared/data}")
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for pair in before:4758662:cxr_anomaly.demo after:ec208af:cxr_anomaly.jobs.demo; do
    IFS=: read -r name commit module <<<"$pair"
    git worktree add --detach "$out/src-$name" "$commit" >/dev/null
    (cd "$out/src-$name" && XDG_CACHE_HOME="$out/cache-$name" PYTHONPATH=src "$OLDPWD/.venv/bin/python" \
        -m "$module" --data "$data" --out "$out/$name" --max-train-normals 600 > "$out/$name.log" 2>&1)
    git worktree remove --force "$out/src-$name"
done
