#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: install the CUDA builds, then train one short epoch and predict on the GPU
# with each backend, and run the quick benchmark, which adds GPU rows. Fails, with one line, where a
# backend sees no GPU. Usage: scripts/gpu-smoke.sh [OUT]
source "$(dirname "$0")/_common.sh"
out="${1:-runs/gpu-smoke}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >&2
python -m pip install --quiet '.[gpu]'
for backend in tensorflow jax; do
    mnist-mb train --backend "$backend" --device gpu --recipe fast --epochs 1 --out "$out/$backend"
    mnist-mb evaluate "$out/$backend/model.keras" --backend "$backend" --device gpu
    mnist-mb train --backend "$backend" --device gpu --distribute --epochs 1 --limit 12800 --out "$out/$backend-all-gpus"
done
mnist-mb bench --quick --out "$out/bench"
