#!/usr/bin/env bash
# The benchmark tables of docs/performance.md: every backend, device and batch size (about 7 min idle, AVX-512).
# Usage: scripts/bench.sh [OUT] [extra mnist-mb bench flags, e.g. --quick]
source "$(dirname "$0")/_common.sh"
out="${1:-runs/bench}"
shift || true
mnist-mb bench --out "$out" "$@"
