#!/usr/bin/env bash
# The two studies behind docs/performance.md's decisions, from a checkout (benchmarks/ is not installed).
# Usage: scripts/studies.sh [OUT]   (about 12 min idle on the AVX-512 host)
source "$(dirname "$0")/_common.sh"
out="${1:-runs/studies}"
python3 -m benchmarks.overhead --paths project,best --rounds 3 --epochs 3 --images 12800 --out "$out/overhead"
python3 -m benchmarks.tf_cpu_options --out "$out/tf-cpu-options"
