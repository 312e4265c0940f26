#!/usr/bin/env bash
# Every GPU measurement in one call, for a lent accelerator machine (CUDA, no network).
# Runs scripts/bench_extract.py on CUDA with ResNet-50 at 224 (all stages) and the
# write-bound case, writes the tables into docs/benchmarks.md and copies results to $OUT.
#
# Prepare here first (hdf5plugin and zstandard are not installed there; torch, timm, h5py,
# pillow, typer and tqdm are):
#   echo /.whl/ >> .git/info/exclude
#   for p in hdf5plugin==7.1.0 zstandard==0.25.0; do
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$p"
#   done
# then call the device tool with carry [".whl"] and the command: bash scripts/gpu_check.sh
# Budget: under 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/fmpipe-gpu-out}"
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, h5py, hdf5plugin, zstandard, timm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
work=/tmp/fmpipe-bench
timeout 300 python3 scripts/bench_extract.py --device cuda --model resnet50 --size 224 --batch-size 128 \
    --images 2000 --skip-rss --work "$work" --json "$OUT/gpu-resnet50.json" \
    --markdown docs/benchmarks.md --section "GPU: ResNet-50 at 224" 2>&1 | tee "$OUT/gpu-resnet50.log"
timeout 150 python3 scripts/bench_extract.py --device cuda --write-bound --batch-size 64 --images 1000 --skip-rss \
    --work "$work" --json "$OUT/gpu-write-bound.json" \
    --markdown docs/benchmarks.md --section "GPU: write-bound (resnet18 at 512, stages 0-1)" 2>&1 | tee "$OUT/gpu-write-bound.log"
cp docs/benchmarks.md "$OUT/benchmarks.md"
# The stored peaks (argmax, for receptive-field crops) through the CUDA path's asynchronous host copy.
timeout 120 python3 - <<'PY' 2>&1 | tee "$OUT/gpu-argmax.log"
import numpy as np

import pipeline

out = "/tmp/fmpipe-argmax.h5"
pipeline.extract("data/images", out, model="resnet18", random_init=True, device="cuda", overwrite=True, workers=0)
with pipeline.open_store(out) as store:
    for view in store.stages:
        maps = view.data[:].astype(np.float32).reshape(*view.data.shape[:2], -1)
        at_peak = np.take_along_axis(maps, view.argmax[:][..., None].astype(np.int64), axis=2)[..., 0]
        assert np.array_equal(at_peak, maps.max(axis=2)), view.label
print("CUDA: every stored argmax holds its map's maximum")
PY
