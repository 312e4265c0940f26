#!/usr/bin/env bash
# Outputs to compare across a refactoring (scripts/same_output.py): the README's quick-start
# file, the other storage choices, a render with its gallery, top, info and export, and a 4-task
# job array merged both ways, from the same inputs every time. Runs
# `python -m pipeline`, so PYTHONPATH=OTHER_CHECKOUT makes them with another version.
#   bash scripts/make_reference_outputs.sh DIR      # then: python scripts/same_output.py DIR_BEFORE DIR_AFTER --ignore images_root
set -euo pipefail
dir=${1:?usage: make_reference_outputs.sh DIR}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir"
cd "$dir"
python - <<'PY'
import numpy as np
from pathlib import Path
from PIL import Image
rng = np.random.default_rng(7)
folder = Path("images")
folder.mkdir(exist_ok=True)
for i in range(37):
    suffix = ".png" if i % 3 else ".jpg"
    Image.fromarray(rng.integers(0, 256, (40 + i, 56, 3), dtype=np.uint8)).save(folder / f"im{i:03d}{suffix}")
(folder / "broken.jpg").write_bytes(b"not an image")
PY
# the sample photos copied in, so the recorded images path is the same from any checkout
rm -rf sample && cp -r "$repo/data/images" sample
python -m pipeline -q extract sample quickstart.h5 --overwrite
for choice in "uint8 --dtype uint8" "keepbits --keep-bits 7" "pooled --pool 7x7 --dtype uint8"; do
    set -- $choice
    name=$1
    shift
    python -m pipeline -q extract sample "$name.h5" --overwrite "$@"
done
python -m pipeline -q render quickstart.h5 --stage 2 --top-k 4 --html --out rendered
python -m pipeline -q render uint8.h5 --stage 1 --layout both --top-k 3 --out rendered-uint8
python -m pipeline -q top quickstart.h5 --stage 3 --channel 5 --json > top.json
python -m pipeline -q info quickstart.h5 | grep -v timings > info.txt
python -m pipeline -q export pooled.h5 exported --stage 2
opts=(--model resnet18 --random-init --size 64 --batch-size 4 --workers 0 --device cpu)
for i in 0 1 2 3; do
    python -m pipeline -q extract images array.h5 "${opts[@]}" --shard-index "$i" --num-shards 4
done
python -m pipeline -q merge array.h5 --overwrite
cp -r array.h5.shards copied.h5.shards
python -m pipeline -q merge copied.h5 --copy --overwrite
rm -rf copied.h5.shards
