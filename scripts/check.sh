#!/usr/bin/env bash
# The full local check CI runs: the test suite on both backends, in tox's own environments.
# About 15 min on an idle AVX-512 host, 35 min on an AVX2 one. Extra arguments go to pytest,
# e.g. scripts/check.sh -m "not slow" for the quick subset.
source "$(dirname "$0")/_common.sh"
python3 -m pip install --quiet tox
python3 -m tox -- "$@"
