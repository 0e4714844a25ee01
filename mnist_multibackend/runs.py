"""A run folder as later commands read it back: what ``train`` recorded beside ``model.keras``."""

from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.json"


def recorded_data_source(model_path) -> str | None:
    """The data source recorded in ``metrics.json`` beside ``model_path``, when it still exists.

    ``None`` for a model outside a run folder, an unreadable record, or data that has moved.
    """
    metrics = Path(model_path).parent / METRICS_FILE
    try:
        source = json.loads(metrics.read_text()).get("data_source")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(source, str) or not source:
        return None
    # a CSV pair is recorded as TRAIN.csv,TEST.csv
    return source if all(Path(part).exists() for part in source.split(",")) else None
