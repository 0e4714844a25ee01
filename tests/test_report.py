"""Reports: training curves, confusion matrix and misclassified digits as PNG, through the CLI."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import cli
from mnist_multibackend import report
from mnist_multibackend.errors import InputError

TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _picture(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("L"))


def test_report_of_a_run(trained_run, mnist_dir, tmp_path):
    out, _ = trained_run
    result = cli("report", out, "--data", mnist_dir, "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    rows = list(csv.reader((tmp_path / "report" / report.CONFUSION_CSV).open()))
    matrix = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    assert rows[0][0] == "true\\predicted" and matrix.shape == (10, 10)
    assert matrix.sum(axis=1).tolist() == TEST_COUNTS  # every test digit once, in its true row
    assert np.trace(matrix) / 10000 == pytest.approx(metrics["test_accuracy"], abs=2e-4)
    mistakes = 10000 - int(np.trace(matrix))
    assert f"{mistakes} misclassified" in result.stdout
    sizes = {}
    for name in (report.CURVES_FILE, report.CONFUSION_FILE, report.MISTAKES_FILE):
        pixels = _picture(tmp_path / "report" / name)
        sizes[name] = pixels.shape
        assert pixels.std() > 10, name  # something is drawn
    assert sizes[report.CURVES_FILE] == (360, 900) and sizes[report.CONFUSION_FILE] == (560, 640)
    assert sizes[report.MISTAKES_FILE] == (5 * 115 + 50, 950)  # 50 of the mistakes, 5 rows of 10


def test_report_of_the_original_keras2_model(seed_dir, mnist_dir, tmp_path):
    """The 2017 model from its .h5 file: 99.25 % (9,925 of 10,000), as the original project measured."""
    result = cli("report", seed_dir / "MNIST_keras_CNN.h5", "--data", mnist_dir, "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.reader((tmp_path / report.CONFUSION_CSV).open()))
    matrix = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    assert np.trace(matrix) == 9925 and matrix.sum(axis=1).tolist() == TEST_COUNTS
    assert "75 misclassified" in result.stdout
    assert not (tmp_path / report.CURVES_FILE).exists()  # a lone model file has no history.csv
    assert _picture(tmp_path / report.MISTAKES_FILE).shape == (625, 950)


def test_report_default_folder_is_inside_the_run(trained_run, mnist_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    result = cli("report", run / "model.keras", "--data", mnist_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (run / "report").iterdir()) == sorted(
        [report.CURVES_FILE, report.CONFUSION_FILE, report.CONFUSION_CSV, report.MISTAKES_FILE])


def test_a_model_outside_a_run_reports_into_the_current_folder(tmp_path):
    model = tmp_path / "reference-models" / "mine.keras"
    model.parent.mkdir()
    model.write_bytes(b"")  # where the report goes is decided before the model is read
    assert report.locate(model) == (model, None, Path("mine-report"))


def test_history_is_read_and_checked(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,accuracy,loss,train_seconds\n1,0.5,1.2,3.0\n2,0.8,0.5,2.9\n")
    history = report.read_history(path)
    assert history["loss"].tolist() == [1.2, 0.5] and history["epoch"].tolist() == [1, 2]
    report.plot_training_curves(history, tmp_path / "curves.png")  # no test-set columns: one line each
    assert _picture(tmp_path / "curves.png").shape == (360, 900)
    for text, problem in [("", "empty file"), ("epoch,loss\n", "holds no epochs"),
                          ("step,loss\n1,2\n", "lacks epoch and loss"),
                          ("epoch,loss\n1,0.5\n1,0.4\n", "epochs are [1, 1], expected 1 to 2"),
                          ("epoch,loss\n1,abc\n", "line 2: loss 'abc' is not a number"),
                          ("epoch,loss\n1,0.5,7\n", "line 2 has 3 values, the header has 2")]:
        path.write_text(text)
        with pytest.raises(InputError, match=re.escape(problem)):
            report.read_history(path)


def test_no_mistakes_and_few_mistakes_draw_cleanly(tmp_path, mnist):
    labels = mnist.y_test[:30]
    right = np.eye(10, dtype=np.float32)[labels]
    assert report.plot_misclassified(mnist.x_test[:30], labels, right, tmp_path / "none.png") == 0
    wrong = np.roll(right, 1, axis=1)[:3]
    assert report.plot_misclassified(mnist.x_test[:3], labels[:3], wrong, tmp_path / "three.png") == 3
    assert _picture(tmp_path / "three.png").shape == (165, 950)


def test_confusion_matrix_counts_pairs():
    matrix = report.confusion_matrix(np.array([0, 0, 3, 9]), np.array([0, 5, 3, 3]))
    assert matrix[0, 0] == 1 and matrix[0, 5] == 1 and matrix[3, 3] == 1 and matrix[9, 3] == 1
    assert matrix.sum() == 4
