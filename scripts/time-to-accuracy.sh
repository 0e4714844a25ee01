#!/usr/bin/env bash
# Seconds to 99.25 % test accuracy: the fast recipe 3 times and the original once, on each backend.
# Usage: scripts/time-to-accuracy.sh [OUT] [more mnist-mb time-to-accuracy flags, given to both runs]
# About 15 min idle on the AVX-512 host; far longer on AVX2 (docs/recipes.md).
source "$(dirname "$0")/_common.sh"
out="${1:-runs/time-to-accuracy}"
mnist-mb time-to-accuracy --recipes fast --runs 3 --out "$out/fast" "${@:2}"
mnist-mb time-to-accuracy --recipes original --runs 1 --out "$out/original" "${@:2}"
