#!/usr/bin/env bash
# Preprocessing on the GPU and the CPU batch switch (issue 10, point 5): the checks that need the
# lent GPU machine (one NVIDIA GPU, 16 Xeon cores with native bf16), in one call.
#
# Run there from the repository root, with .devpack/ carried beside it (see device_checks.sh for
# what it holds; here nih_pneumonia256 is cut to its first 32 normal and 32 pneumonia films).
# Each part has its own time limit and log under $OUT. A dry run on a machine without CUDA:
#   OUT=/tmp/out SMOKE=1 bash docs/notebook/research/device_preprocessing.sh
set -u
source "$(dirname "$0")/device_env.sh"

if [ "$SMOKE" = 1 ]; then
    gpu_sizes="--device cpu --fit-films 16 --films 32 --repeats 1 --batches 16"
    cpu_sizes="--threads 2 --batches 16 --films 32 --fit-films 16 --repeats 1"
else
    gpu_sizes="--fit-films 128 --films 1024 --repeats 3 --batches 16 128 256"
    cpu_sizes="--threads 8 12 16 --batches 16 64 --films 192 --repeats 5 --precisions bf16"
fi

# 1. the tensor preprocessing gives Pillow's pixels bit for bit, on the CPU and on the GPU
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/data/test_resample.py >"$OUT/resample_tests.log" 2>&1
echo "resample tests: exit $?" >>"$OUT/machine.txt"

# 2. the features detector on the GPU, preprocessing there against preprocessing on the CPU's threads
timeout 240 python3 -m benchmarks.bench_features_gpu --data .devpack/data $gpu_sizes \
    --output "$OUT/features_gpu.json" >"$OUT/features_gpu.log" 2>&1
echo "features_gpu: exit $?" >>"$OUT/machine.txt"

# 3. which CPU batch between 8 and 16 threads, in bf16 (GPU hidden)
CUDA_VISIBLE_DEVICES= timeout 200 python3 -m docs.notebook.research.cpu_scoring_batch --data .devpack/data $cpu_sizes \
    --output "$OUT/cpu_scoring_batch.json" >"$OUT/cpu_scoring_batch.log" 2>&1
echo "cpu_scoring_batch: exit $?" >>"$OUT/machine.txt"
cat "$OUT/machine.txt" | tail -3
