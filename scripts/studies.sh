#!/usr/bin/env bash
# The studies behind docs/performance.md's per-CPU decisions, from a checkout (benchmarks/ is not installed):
# run it on a CPU kind not measured yet, and compare with the page's "Choices per CPU".
# Usage: scripts/studies.sh [OUT]   (about 17 min idle on the AVX-512 host)
source "$(dirname "$0")/_common.sh"
out="${1:-runs/studies}"
python3 -m benchmarks.overhead --paths project,best --rounds 3 --epochs 3 --images 12800 --out "$out/overhead"
python3 -m benchmarks.tf_cpu_options --out "$out/tf-cpu-options"
# JAX/CPU's convolution forms (jax_cpu.conv_forms), each against the others in one process.
python3 -m benchmarks.jax_cpu_remedies --rounds 6 --steps 6 --no-fit \
    --variants "plain,pool mask gradient,pool mask + sliced weight gradients,pool mask + oneDNN convolutions,all matmul + pool mask,kept" \
    --out "$out/jax-forms.json"
# Each convolution's passes alone on both backends: where a step's time goes on this CPU.
python3 -m benchmarks.conv_passes --out "$out/conv-passes"
