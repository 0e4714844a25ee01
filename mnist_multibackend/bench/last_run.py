"""The last benchmark on this machine, in a small per-user file: ``mnist-mb bench`` writes it, ``doctor`` reads it.

The file (``last-bench.json`` in ``$MNIST_MB_CACHE_DIR``, else
``$XDG_CACHE_HOME/mnist-multibackend``, else ``~/.cache/mnist-multibackend``)
holds when the bench ran, on what CPU (its model and features, and TensorFlow's
oneDNN state), where its results are, and per mode (training, inference) the
fastest Keras row: backend, device, batch size and images/s. Only Keras rows
count: the raw references are yardsticks, not something ``mnist-mb`` runs.
With both backends measured, it also holds their ratio per mode and batch size
from the windows alternated in time (``side_by_side``), the fairer comparison
on a host whose speed moves.

A home folder may be shared by machines with different CPUs, so the reader
compares the recorded CPU with this one and does not offer another CPU's
answer as this machine's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mnist_multibackend.atomic import write_text
from mnist_multibackend.errors import InputError, one_line
from mnist_multibackend.runs import read_record

FILE_NAME = "last-bench.json"
CACHE_VARIABLE = "MNIST_MB_CACHE_DIR"
SCHEMA = 1
MODES = ("train", "infer")
# What makes two records the same CPU kind: the speeds measured on one say nothing certain about another.
SAME_CPU_KEYS = ("cpu", "cpu_features")


def cache_path() -> Path:
    """Where the summary lives: ``$MNIST_MB_CACHE_DIR`` (tests), else the XDG cache folder."""
    folder = os.environ.get(CACHE_VARIABLE)
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        folder = Path(base) / "mnist-multibackend"
    return Path(folder) / FILE_NAME


def summarise(results: dict, out) -> dict:
    """The summary of a bench's ``results`` (as ``matrix.run_benchmarks`` returns them) written into ``out``."""
    machine = results["machine"]
    fastest = {}
    for mode in MODES:
        rows = [r for r in results["rows"] if r["status"] == "ok" and r["impl"] == "keras" and r["mode"] == mode]
        best = max(rows, key=lambda r: r["images_per_second"], default=None)
        fastest[mode] = None if best is None else {key: best[key] for key in (
            "backend", "device", "batch_size", "replicas", "images_per_second")}
    return {"schema": SCHEMA, "finished_at": results["finished_at"], "command": results["command"],
            "quick": results["quick"], "results": str(Path(out).resolve()),
            "machine": {key: machine.get(key) for key in (
                "cpu", "cpu_features", "cores", "system", "tensorflow_onednn", "TF_ENABLE_ONEDNN_OPTS",
                "ONEDNN_MAX_CPU_ISA")},
            "fastest": fastest, "side_by_side": _side_by_side(results.get("side_by_side"))}


def _side_by_side(side: dict | None) -> dict | None:
    """The backends' ratios from their windows alternated in time (``side_by_side``), per mode and batch size."""
    if not side or side.get("status") != "ok":
        return None
    base, other = side["backends"]
    return {"base": base, "other": other, "ratios": {mode: [
        {"batch_size": r["batch_size"], "ratio": r["ratio"], "ratio_min": r["ratio_min"], "ratio_max": r["ratio_max"]}
        for r in side["rows"] if r["mode"] == mode] for mode in MODES}}


def record(results: dict, out) -> Path | None:
    """Write the summary of ``results`` to ``cache_path()``, whole or not at all; the path, or None when the
    cache folder cannot be written (a read-only home must not fail the bench that just measured)."""
    path = cache_path()
    try:
        write_text(path, json.dumps(summarise(results, out), indent=2) + "\n")
    except OSError:
        return None
    return path


def read(here: dict) -> dict:
    """The last bench's summary as it concerns the machine ``here`` (``runtime.machine()``).

    ``status`` is ``"this machine"`` (with the summary), ``"other cpu"`` (recorded on another CPU kind:
    the summary is kept under ``recorded`` only, not offered as this machine's answer), ``"missing"`` or
    ``"unreadable"`` (a damaged or foreign file: a notice, never an error). ``message`` says it in words.
    """
    path = cache_path()
    found = {"path": str(path)}
    try:
        summary = json.loads(read_record(path))  # a regular file of a few KB, or it is not ours
    except InputError as err:
        if not path.exists() and not path.is_symlink():
            return {**found, "status": "missing",
                    "message": "no benchmark run on this machine yet: mnist-mb bench --quick"}
        return _unreadable(found, err.problem)
    except (json.JSONDecodeError, ValueError, RecursionError) as err:
        return _unreadable(found, f"{type(err).__name__}: {err}")
    problem = _problem(summary)
    if problem:
        return _unreadable(found, problem)
    recorded = summary["machine"]
    if any(recorded.get(key) != here.get(key) for key in SAME_CPU_KEYS):
        features = recorded.get("cpu_features")
        features = "not recorded" if features is None else ", ".join(features) or "none of note"
        return {**found, "status": "other cpu", "recorded": summary,
                "message": f"the last benchmark ran on another CPU ({recorded.get('cpu')}, features: {features}), "
                           "so it says nothing about this one: mnist-mb bench --quick"}
    return {**found, "status": "this machine", **summary,  # the file's words, never a terminal's escapes
            "message": one_line(f"measured {summary['finished_at']} by `{summary['command']}`; results in "
                                f"{summary['results']}")}


def _unreadable(found: dict, reason: str) -> dict:
    return {**found, "status": "unreadable",
            "message": f"cannot read {found['path']} ({reason}); mnist-mb bench --quick writes it anew"}


def _problem(summary) -> str | None:
    """What makes ``summary`` not a summary this module wrote, or None."""
    if not isinstance(summary, dict) or summary.get("schema") != SCHEMA:
        return f"not a schema {SCHEMA} summary"
    machine, fastest = summary.get("machine"), summary.get("fastest")
    if not isinstance(machine, dict) or not isinstance(fastest, dict):
        return "no machine or no fastest entry"
    features = machine.get("cpu_features")
    if features is not None and not (isinstance(features, list) and all(isinstance(f, str) for f in features)):
        return "damaged CPU features"
    for mode in MODES:
        best = fastest.get(mode)
        if best is not None and not (isinstance(best, dict) and isinstance(best.get("images_per_second"), (int, float))
                                     and isinstance(best.get("backend"), str) and isinstance(best.get("device"), str)
                                     and isinstance(best.get("batch_size"), int)
                                     and isinstance(best.get("replicas", 1), int)):
            return f"a damaged {mode} entry"
    if not all(isinstance(summary.get(key), str) for key in ("finished_at", "command", "results")):
        return "no date, command or results folder"
    side = summary.get("side_by_side")
    if side is not None and not (
            isinstance(side, dict) and all(isinstance(side.get(key), str) for key in ("base", "other"))
            and isinstance(side.get("ratios"), dict)
            and all(isinstance(side["ratios"].get(mode), list) and all(
                isinstance(r, dict) and isinstance(r.get("batch_size"), int)
                and isinstance(r.get("ratio"), (int, float)) for r in side["ratios"][mode]) for mode in MODES)):
        return "a damaged side-by-side entry"
    return None
