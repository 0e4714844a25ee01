"""What every benchmark worker process shares: its environment, and its one JSON answer on stdout.

A process can hold only one Keras backend, and threads or oneDNN are fixed when
TensorFlow starts, so the benchmarks run each measurement in a fresh worker
process and read its answer from stdout.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable

from mnist_multibackend.errors import InputError

ERROR_PREFIX = "mnist-mb: error: "


def worker_env() -> dict:
    """The environment for a worker: this very code first on the path, TensorFlow's start-up chatter off."""
    env = dict(os.environ)
    # The workers must import this very code, even when another copy of the project is installed.
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def answer_json(compute: Callable[[], dict]) -> int:
    """Run ``compute`` and print its result as one JSON line on stdout; the exit status.

    While it runs, stdout is stderr: whatever a library prints (Keras's progress
    bar) must not corrupt the answer. Bad input is one ``ERROR_PREFIX`` line and
    exit status 2, which the parent passes on.
    """
    answer, sys.stdout = sys.stdout, sys.stderr
    try:
        result = compute()
    except InputError as err:
        print(f"{ERROR_PREFIX}{err}", file=sys.stderr)
        return 2
    finally:
        sys.stdout = answer
    print(json.dumps(result), flush=True)
    return 0
