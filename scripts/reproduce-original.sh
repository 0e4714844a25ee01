#!/usr/bin/env bash
# The original 2017 recipe (12 epochs, Adam 1e-3, batch 128) on one backend, seeded as in docs/original-recipe/.
# Usage: scripts/reproduce-original.sh [tensorflow|jax] [OUT] [more mnist-mb train flags]
# About 5 min on TensorFlow and 9 on JAX on the AVX-512 host (docs/recipes.md); several times that on AVX2.
source "$(dirname "$0")/_common.sh"
backend="${1:-tensorflow}"
out="${2:-runs/original-$backend-seed2017}"
mnist-mb train --backend "$backend" --seed 2017 --out "$out" "${@:3}"
