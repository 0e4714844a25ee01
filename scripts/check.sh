#!/usr/bin/env bash
# The check CI runs: the test suite on both backends at once, in tox's own environments,
# without the tests marked slow. Extra arguments go to pytest instead of `-m "not slow"`:
# scripts/check.sh tests runs everything, scripts/check.sh -m slow only the slow ones.
source "$(dirname "$0")/_common.sh"
python3 -m pip install --quiet tox
if [ $# -eq 0 ]; then
    python3 -m tox -p 2          # `tox --` with nothing after it would run every test
else
    python3 -m tox -p 2 -- "$@"
fi
