"""The data path: IDX -> CSV conversion and CSV loading, the project's ``data.py`` against the old ways.

The reference for conversion is the original project's per-byte loop,
re-implemented here (and only here) as it was published: read the 16- and
8-byte headers, then one ``f.read(1)`` per label and per pixel, then
``",".join(str(pix) ...)`` per row. The reference for loading is
``numpy.loadtxt``, the usual one-line way to read such a CSV. Both pairs must
agree: the CSVs byte for byte, the loaded arrays value for value.

NumPy only: this runs in the orchestrating process, which never imports Keras.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mnist_multibackend import data


def original_convert(imgf, labelf, outf, n):
    """The original project's IDX -> CSV loop (the classic ``convert``), kept only as a reference."""
    f = open(imgf, "rb")
    o = open(outf, "w")
    l = open(labelf, "rb")  # noqa: E741 - the original's name

    f.read(16)
    l.read(8)
    images = []

    for i in range(n):
        image = [ord(l.read(1))]
        for j in range(28 * 28):
            image.append(ord(f.read(1)))
        images.append(image)

    for image in images:
        o.write(",".join(str(pix) for pix in image) + "\n")
    f.close()
    o.close()
    l.close()


def _timed(fn, repeats: int = 1):
    """``(median wall seconds of repeats calls of fn, the last call's result)``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def measure(dataset: data.Dataset, images: int | None = None, repeats: int = 3) -> dict:
    """Time conversion and loading of the first ``images`` training images (default: the whole split).

    The project's functions run ``repeats`` times (the median counts); the slow
    references run once. Also times the project converting both whole splits,
    the figure the foundation asked to be about a second. The inputs are
    uncompressed IDX files, as the original read them, in a temporary folder.
    """
    n = len(dataset.x_train) if images is None else min(images, len(dataset.x_train))
    with tempfile.TemporaryDirectory(prefix="mnist-bench-") as tmp:
        tmp = Path(tmp)

        def idx_pair(name, x, y):
            pair = tmp / f"{name}-images-idx3-ubyte", tmp / f"{name}-labels-idx1-ubyte"
            data.write_idx(pair[0], x)
            data.write_idx(pair[1], y)
            return pair

        train = idx_pair("train", dataset.x_train, dataset.y_train)
        test = idx_pair("t10k", dataset.x_test, dataset.y_test)
        compared = train if n == len(dataset.x_train) else idx_pair("first", dataset.x_train[:n], dataset.y_train[:n])
        project_csv, original_csv = tmp / "project.csv", tmp / "original.csv"

        convert_project, _ = _timed(lambda: data.idx_to_csv(*compared, project_csv), repeats)
        convert_original, _ = _timed(lambda: original_convert(*compared, original_csv, n))
        identical = project_csv.read_bytes() == original_csv.read_bytes()
        csv_bytes = os.path.getsize(project_csv)

        load_project, (images_read, labels_read) = _timed(lambda: data.read_csv(project_csv), repeats)
        load_reference, table = _timed(lambda: np.loadtxt(original_csv, delimiter=",", dtype=np.uint8, ndmin=2))
        same_arrays = (np.array_equal(images_read, dataset.x_train[:n]) and np.array_equal(labels_read, dataset.y_train[:n])
                       and np.array_equal(table[:, 1:], images_read.reshape(n, -1))
                       and np.array_equal(table[:, 0], labels_read))

        both_splits, _ = _timed(lambda: (data.idx_to_csv(*train, tmp / "mnist_train.csv"),
                                         data.idx_to_csv(*test, tmp / "mnist_test.csv")), repeats)
    return {
        "images": n,
        "csv_megabytes": csv_bytes / 1e6,
        "convert_seconds_project": convert_project,
        "convert_seconds_original": convert_original,
        "convert_speedup": convert_original / convert_project,
        "csv_identical": identical,
        "load_seconds_project": load_project,
        "load_seconds_reference": load_reference,
        "load_reference": "numpy.loadtxt(delimiter=',', dtype=uint8)",
        "load_speedup": load_reference / load_project,
        "loaded_arrays_identical": bool(same_arrays),
        "convert_both_splits_seconds": both_splits,
        "both_splits_images": len(dataset.x_train) + len(dataset.x_test),
        "repeats": repeats,
        "load_average_1min": os.getloadavg()[0],
    }
