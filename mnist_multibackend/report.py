"""Pictures of a trained model: training curves, the test-set confusion matrix, the digits it gets wrong.

``write_report`` needs the backend started (``runtime.start()``); ``check_inputs``, which it
calls first, does not, so the command line refuses a bad target before a backend starts. Figures are
drawn by matplotlib's Agg renderer straight into PNG files (no display, no pyplot state).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from . import data
from .atomic import atomic_path, check_folder_target, write_text
from .errors import InputError
from .model_files import check_model_file
from .predict import check_classifier, predict_digits
from .runs import read_record

CURVES_FILE = "training-curves.png"
CONFUSION_FILE = "confusion-matrix.png"
CONFUSION_CSV = "confusion-matrix.csv"
MISTAKES_FILE = "misclassified.png"
MISTAKE_COLUMNS = 10
MAX_MISTAKES = 50  # the most confident ones: a grid of them all would be unreadable
DPI = 100


def locate(target) -> tuple[Path, Path | None, Path]:
    """A run folder or a model file -> ``(model, history.csv or None, default output folder)``.

    A run folder (or a model file beside a ``history.csv``) gets ``RUN/report``;
    any other model file ``STEM-report`` in the current folder, so that a report
    never lands among someone's reference models.
    """
    target = Path(target)
    if not target.exists():
        raise InputError(target, "no such file or directory")
    if target.is_dir():
        model, run = target / "model.keras", target
        if not model.is_file():
            raise InputError(target, "not a run folder: it has no model.keras")
    else:
        model, run = target, target.parent if (target.parent / "history.csv").is_file() else None
    history = run / "history.csv" if run else None
    return model, (history if history and history.is_file() else None), (run / "report" if run
                                                                            else Path(f"{model.stem}-report"))


def read_history(path) -> dict[str, np.ndarray]:
    """``history.csv`` -> one ``float64 (epochs,)`` array per column; the epochs must count 1, 2, ..."""
    text = read_record(path)
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or not rows[0]:
        raise InputError(path, "empty file")
    header, body = rows[0], rows[1:]
    if "epoch" not in header or "loss" not in header:
        raise InputError(path, f"not a history.csv: its header {','.join(header)!r} lacks epoch and loss")
    if not body:
        raise InputError(path, "holds no epochs")
    columns = {name: [] for name in header}
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise InputError(path, f"line {line} has {len(row)} values, the header has {len(header)}")
        for name, value in zip(header, row):
            try:
                columns[name].append(float(value))
            except ValueError:
                raise InputError(path, f"line {line}: {name} {value!r} is not a number") from None
    history = {name: np.asarray(values) for name, values in columns.items()}
    if history["epoch"].tolist() != list(range(1, len(body) + 1)):
        raise InputError(path, f"epochs are {history['epoch'].astype(int).tolist()}, expected 1 to {len(body)}")
    return history


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """``int64 (10, 10)``: row = true class, column = predicted class."""
    return np.bincount(labels.astype(np.int64) * data.NUM_CLASSES + predicted,
                       minlength=data.NUM_CLASSES ** 2).reshape(data.NUM_CLASSES, data.NUM_CLASSES)


# --------------------------------------------------------------------------- figures

def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)


def plot_training_curves(history: dict[str, np.ndarray], path) -> None:
    """Loss and accuracy per epoch, training and (when logged) test set, side by side."""
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    epochs = history["epoch"].astype(int)
    for axes, metric, title in zip(figure.subplots(1, 2), ("loss", "accuracy"), ("Loss", "Accuracy")):
        for key, label, style in ((metric, "training", "o-"), (f"val_{metric}", "test set", "s--")):
            if key in history:
                axes.plot(epochs, history[key], style, label=label, markersize=4)
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.set_xticks(epochs if len(epochs) <= 15 else np.linspace(1, epochs[-1], 8).round().astype(int))
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(f"Training, {len(epochs)} epoch{'s' if len(epochs) != 1 else ''}")
    _save(figure, path)


def plot_confusion_matrix(matrix: np.ndarray, path) -> None:
    """Counts per (true, predicted) class; a log colour scale so that single mistakes show."""
    total, right = int(matrix.sum()), int(np.trace(matrix))
    figure = Figure(figsize=(6.4, 5.6), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(np.ma.masked_equal(matrix, 0), cmap="Blues", norm=LogNorm(vmin=1, vmax=max(matrix.max(), 2)))
    classes = range(data.NUM_CLASSES)
    for true in classes:
        for predicted in classes:
            count = int(matrix[true, predicted])
            if count:
                dark = count > math.sqrt(matrix.max())  # upper half of the log scale
                axes.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                          color="white" if dark else "black")
    axes.set_xticks(classes)
    axes.set_yticks(classes)
    axes.set_xlabel("predicted digit")
    axes.set_ylabel("true digit")
    axes.set_title(f"{right:,} of {total:,} test digits right ({right / max(total, 1):.2%})")
    figure.colorbar(image, ax=axes, shrink=0.8, label="digits (log scale)")
    _save(figure, path)


def plot_misclassified(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, path,
                       limit: int = MAX_MISTAKES) -> int:
    """A grid of the most confident mistakes, each titled ``true -> predicted (probability)``; returns their count."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    shown = wrong[np.argsort(-confidence, kind="stable")][:limit]
    rows = max(1, math.ceil(len(shown) / MISTAKE_COLUMNS))
    figure = Figure(figsize=(MISTAKE_COLUMNS * 0.95, rows * 1.15 + 0.5), layout="constrained")
    grid = np.atleast_1d(figure.subplots(rows, MISTAKE_COLUMNS, squeeze=False).ravel())
    for axes in grid:
        axes.set_axis_off()
    for axes, index in zip(grid, shown):
        axes.imshow(images[index], cmap="gray_r", vmin=0, vmax=255)
        axes.set_title(f"{labels[index]} → {predicted[index]} ({probabilities[index, predicted[index]]:.0%})",
                       fontsize=9)
    if len(wrong) == 0:
        grid[0].text(0, 0.5, "no mistakes", fontsize=12)
    what = f"the {len(shown)} most confident" if len(wrong) > len(shown) else "all"
    figure.suptitle(f"{len(wrong):,} of {len(labels):,} test digits misclassified; {what} shown "
                    "(true → predicted, probability)", fontsize=11)
    _save(figure, path)
    return len(wrong)


# --------------------------------------------------------------------------- the whole report

def check_inputs(target, out=None) -> tuple[Path, dict | None, Path]:
    """What ``write_report`` reads and writes, checked without Keras: ``(model file, history or None,
    output folder)``. A run folder without a model, a damaged history or model file, and an output
    folder that cannot be written are refused here, before any scoring."""
    model_path, history_path, default_out = locate(target)
    out = Path(out) if out else default_out
    check_folder_target(out)
    history = read_history(history_path) if history_path else None
    check_model_file(model_path)
    return model_path, history, out


def write_report(target, data_path=None, out=None, dataset: data.Dataset | None = None) -> dict:
    """Score ``target`` (a run folder or a model file) on the test set and write the report's files;
    ``dataset``: the data ``data_path`` names, when the caller has loaded it already.

    Returns what was found and written: ``accuracy``, ``mistakes``, ``test_images``, ``files``.
    """
    from .loading import load_saved_model  # imports Keras: only once the backend is chosen

    model_path, history, out = check_inputs(target, out)
    model = load_saved_model(model_path, compile=False)  # scoring needs no optimizer
    check_classifier(model, model_path)
    test = dataset if dataset is not None else data.load_dataset(data_path)
    probabilities = predict_digits(model, test.x_test)
    matrix = confusion_matrix(test.y_test, probabilities.argmax(axis=1))

    files = []
    if history is not None:
        plot_training_curves(history, out / CURVES_FILE)
        files.append(out / CURVES_FILE)
    plot_confusion_matrix(matrix, out / CONFUSION_FILE)
    table = "true\\predicted," + ",".join(map(str, range(data.NUM_CLASSES))) + "\n" + "".join(
        f"{true}," + ",".join(map(str, row)) + "\n" for true, row in enumerate(matrix))
    write_text(out / CONFUSION_CSV, table)
    mistakes = plot_misclassified(test.x_test, test.y_test, probabilities, out / MISTAKES_FILE)
    files += [out / CONFUSION_FILE, out / CONFUSION_CSV, out / MISTAKES_FILE]
    return {"model": str(model_path), "accuracy": float(np.trace(matrix) / matrix.sum()), "mistakes": mistakes,
            "test_images": int(matrix.sum()), "files": [str(f) for f in files]}
