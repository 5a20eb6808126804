#!/bin/bash
# interleaved make-bench features part: base (c7f3c6e) then new (34d07a1), twice
set -e
for i in 1 2; do
  for tree in base main; do
    cd /work/$tree
    echo "== $tree run $i $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
    PYTHONPATH=/work/$tree/src:/work/$tree /work/main/.venv/bin/python -m benchmarks.bench_features --data ../shared/data --fit-films 128 --repeats 3 --output /work/scratch/bench_${tree}_$i.json > /work/scratch/bench_${tree}_$i.log 2>&1
    echo "   done $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
  done
done
