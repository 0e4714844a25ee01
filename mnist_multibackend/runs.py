"""A run folder as later commands read it back: what ``train`` recorded beside ``model.keras``."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from .errors import InputError, not_regular

METRICS_FILE = "metrics.json"
# metrics.json, history.csv and checkpoint.json as train writes them are a few KB (a history.csv of
# 100,000 epochs is about 10 MB); a record beyond this is refused before it is read.
MAX_RECORD_BYTES = 16 * 2**20


def read_record(path, limit: int = MAX_RECORD_BYTES) -> str:
    """The UTF-8 text of a record that ``train`` wrote in a run or checkpoint folder.

    Only a regular file of at most ``limit`` bytes is read: a FIFO in its place would block
    the command for ever and ``/dev/zero`` would fill the memory, so the file is opened without
    blocking and checked (``fstat``) before a byte is read. ``InputError`` otherwise.
    """
    path = Path(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except OSError as err:
        raise InputError(path, f"cannot read: {err.strerror or err}") from None
    with os.fdopen(descriptor, "rb") as handle:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise InputError(path, not_regular(status.st_mode))
        if status.st_size > limit:
            raise InputError(path, f"is {status.st_size:,} bytes; a run record of more than {limit:,} is refused "
                                   "(a cap of this tool: mnist_multibackend.runs.MAX_RECORD_BYTES)")
        data = handle.read(limit + 1)  # the file may have grown since fstat
    if len(data) > limit:
        raise InputError(path, f"is more than {limit:,} bytes; refused as a run record")
    try:  # newlines as a text-mode read gives them: a lone "\r" too ends a line (the csv module needs it)
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as err:
        raise InputError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def recorded_data_source(model_path) -> str | None:
    """The data source recorded in ``metrics.json`` beside ``model_path``, when it still exists.

    ``None`` for a model outside a run folder, an unreadable record, or data that has moved.
    """
    metrics = Path(model_path).parent / METRICS_FILE
    try:
        source = json.loads(read_record(metrics)).get("data_source")
    except (InputError, ValueError, AttributeError, RecursionError):
        return None
    if not isinstance(source, str) or not source:
        return None
    # a CSV pair is recorded as TRAIN.csv,TEST.csv
    return source if all(Path(part).exists() for part in source.split(",")) else None
