#!/usr/bin/env bash
# The command line end to end on the lent GPU machine: `train` and `score` as a user runs them,
# with --device auto (the GPU), the features detector preprocessing there; then the same
# checkpoint scored on the CPU and on the GPU in fp32, compared film by film.
#
# Run from the repository root with .devpack/ carried (device_env.sh says what it needs). Dry run
# without CUDA: OUT=/tmp/out bash docs/notebook/research/device_cli_gpu.sh (both "GPU" runs then
# take the CPU).
set -u
source "$(dirname "$0")/device_env.sh"
cli() { python3 -m cxr_anomaly.cli "$@"; }
timed() { local name=$1; shift; local started=$(date +%s.%N); "$@" >"$OUT/$name.log" 2>&1; local code=$?;
          echo "$name: exit $code, $(echo "$(date +%s.%N) $started" | awk '{printf "%.1f", $1 - $2}') s" >>"$OUT/machine.txt"; }
RUN=/tmp/cli_run
FILMS=".devpack/data/nih_pneumonia256/manifest.csv .devpack/data/nih_fullres"

timed train cli train --data .devpack/data/rsna_normal224/manifest.csv --out $RUN --no-progress
timed score_auto cli score --model $RUN/model.pt $FILMS --out "$OUT/scores_auto.csv" --report /tmp/worklist.html \
    --no-progress
timed score_cpu_fp32 cli score --model $RUN/model.pt $FILMS --out /tmp/scores_cpu_fp32.csv --device cpu \
    --precision fp32 --no-progress
timed score_gpu_fp32 cli score --model $RUN/model.pt $FILMS --out /tmp/scores_gpu_fp32.csv --precision fp32 \
    --no-progress
python3 - "$OUT" >"$OUT/compare.txt" 2>&1 <<'PY'
import sys
import pandas as pd
from scipy.stats import spearmanr
out = sys.argv[1]
cpu = pd.read_csv("/tmp/scores_cpu_fp32.csv").sort_values("path").reset_index(drop=True)
gpu = pd.read_csv("/tmp/scores_gpu_fp32.csv").sort_values("path").reset_index(drop=True)
auto = pd.read_csv(f"{out}/scores_auto.csv").sort_values("path").reset_index(drop=True)
assert list(cpu["path"]) == list(gpu["path"]) == list(auto["path"]), "different films"
print(f"{len(cpu)} films")
for name, other in (("gpu fp32", gpu), ("gpu auto (bf16)", auto)):
    for column in ("score_raw", "gaussian", "pooled_knn", "patch_knn"):
        difference = (other[column] - cpu[column]).abs()
        relative = difference / cpu[column].abs().clip(lower=1e-12)
        print(f"{name} vs cpu fp32, {column}: max abs {difference.max():.3g}, max rel {relative.max():.3g}, "
              f"spearman {spearmanr(other[column], cpu[column]).statistic:.6f}")
    print(f"{name}: same decisions {int((other['decision'] == cpu['decision']).sum())}/{len(cpu)}")
PY
# the service on the GPU (serve's default device), film by film, against score's table of the same films;
# it needs fastapi, which the lent machine's image lacks (carry its wheels in .devpack/whl to run it)
if ! python3 -c "import fastapi, multipart" 2>/dev/null; then
    echo "serve: skipped, fastapi or python-multipart is not installed here" >>"$OUT/machine.txt"
else
timed serve python3 - "$OUT" <<'PY'
import sys
from pathlib import Path
import pandas as pd
from fastapi.testclient import TestClient
from cxr_anomaly.serve import ServiceSettings, create_app
table = pd.read_csv(f"{sys.argv[1]}/scores_auto.csv").set_index("path")
films = sorted(Path(".devpack/data/nih_fullres").glob("*.png"))
worst = 0.0
with TestClient(create_app("/tmp/cli_run/model.pt", ServiceSettings(), device="auto")) as client:
    print(client.get("/v1/model").json().get("detector"))
    for film in films:
        body = client.post("/v1/score", files={"file": (film.name, film.read_bytes())}).json()
        expected = table.loc[str(film.resolve()), "score_raw"] if str(film.resolve()) in table.index else None
        if expected is None:
            expected = table[[str(p).endswith(film.name) for p in table.index]]["score_raw"].iloc[0]
        worst = max(worst, abs(body["score_raw"] - expected) / abs(expected))
print(f"{len(films)} films served; largest relative difference from score's table: {worst:.3g}")
PY
cat "$OUT/serve.log" >>"$OUT/compare.txt"
fi
tail -n 6 "$OUT/machine.txt"
