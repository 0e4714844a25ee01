#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: install the CUDA builds, then train one short epoch, evaluate, and train
# data-parallel on the GPU(s) with each backend, and run the quick benchmark, which adds GPU rows.
# Usage: scripts/gpu-smoke.sh [OUT]. Without a GPU it stops at once with one line and exit status 2.
source "$(dirname "$0")/_common.sh"
out="${1:-runs/gpu-smoke}"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-smoke: error: no NVIDIA GPU on this machine (nvidia-smi finds none); nothing to check" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >&2
python3 -m pip install --quiet '.[gpu]'
for backend in tensorflow jax; do
    mnist-mb train --backend "$backend" --device gpu --recipe fast --epochs 1 --out "$out/$backend"
    mnist-mb evaluate "$out/$backend/model.keras" --backend "$backend" --device gpu
    mnist-mb train --backend "$backend" --device gpu --distribute --epochs 1 --limit 12800 --out "$out/$backend-all-gpus"
done
mnist-mb bench --quick --out "$out/bench"
