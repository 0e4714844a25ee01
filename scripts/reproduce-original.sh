#!/usr/bin/env bash
# The original 2017 recipe (12 epochs, Adam 1e-3, batch 128) on one backend, seeded as in docs/original-recipe/.
# Usage: scripts/reproduce-original.sh [tensorflow|jax] [OUT]   (about 5 min on TensorFlow, 9 on JAX, AVX-512 host)
source "$(dirname "$0")/_common.sh"
backend="${1:-tensorflow}"
mnist-mb train --backend "$backend" --seed 2017 --out "${2:-runs/original-$backend-seed2017}"
