"""The mnist-mb command, end to end on real MNIST, in fresh processes."""

import csv
import json
import textwrap

import keras
import numpy as np
import pytest

from conftest import BACKEND, OTHER_BACKEND, assert_clean_error, cli
from mnist_multibackend import data

METRIC_KEYS = {"backend", "backend_version", "keras_version", "device", "devices", "epochs", "batch_size",
               "train_seconds", "train_images_per_second", "test_accuracy", "test_loss", "machine"}


def test_train_smoke_writes_a_complete_run(trained_run):
    out, result = trained_run
    assert f"backend {BACKEND}" in result.stderr and "device cpu" in result.stderr
    assert "Epoch 3/3" in result.stdout and "250/250" in result.stdout  # Keras's progress bar
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= metrics.keys()
    assert (metrics["backend"], metrics["device"], metrics["epochs"], metrics["batch_size"]) == (BACKEND, "cpu", 3, 16)
    assert metrics["train_images"] == 4000 and metrics["test_images"] == 10000
    assert metrics["train_images_per_second"] > 0 and metrics["train_seconds"] > 0
    # 500 real steps of the original recipe already classify most digits
    assert 0.8 < metrics["test_accuracy"] <= 1.0
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "train_seconds"} <= rows[0].keys()
    assert float(rows[-1]["val_accuracy"]) == pytest.approx(metrics["test_accuracy"], abs=1e-4)


def test_evaluate_prints_json(trained_run, mnist_dir):
    out, _ = trained_run
    result = cli("evaluate", out / "model.keras", "--data", mnist_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["backend"] == BACKEND
    metrics = json.loads((out / "metrics.json").read_text())
    assert report["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-4)
    assert report["loss"] == pytest.approx(metrics["test_loss"], rel=1e-3)


PREDICT_SNIPPET = textwrap.dedent("""
    import sys, numpy as np
    from mnist_multibackend.runtime import start
    start(device="cpu")
    from mnist_multibackend import data, model, predict
    images = data.load_folder(sys.argv[2]).x_test
    np.save(sys.argv[3], predict.predict_digits(model.load_saved_model(sys.argv[1]), images))
""")


def test_model_trained_here_predicts_the_same_on_the_other_backend(trained_run, mnist, mnist_dir, tmp_path):
    import subprocess
    import os
    import sys

    from mnist_multibackend.model import load_saved_model
    from mnist_multibackend.predict import predict_digits

    out, _ = trained_run
    here = predict_digits(load_saved_model(out / "model.keras"), mnist.x_test)
    env = {**os.environ, "KERAS_BACKEND": OTHER_BACKEND}
    done = subprocess.run([sys.executable, "-c", PREDICT_SNIPPET, out / "model.keras", mnist_dir,
                           tmp_path / "there.npy"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    there = np.load(tmp_path / "there.npy")
    agreement = np.mean(here.argmax(1) == there.argmax(1))
    assert agreement >= 0.999, agreement
    np.testing.assert_allclose(here, there, atol=1e-4)


@pytest.mark.slow
def test_fixed_seed_repeats_the_run(tmp_path, mnist_dir):
    runs = []
    for name in ("a", "b"):
        result = cli("train", "--data", mnist_dir, "--epochs", 2, "--limit", 512, "--seed", 7,
                     "--no-validate", "--out", tmp_path / name)
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(keras.saving.load_model(tmp_path / name / "model.keras"))
    for a, b in zip(runs[0].weights, runs[1].weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), err_msg=a.path)
    losses = [[row["loss"] for row in csv.DictReader((tmp_path / n / "history.csv").open())] for n in "ab"]
    assert losses[0] == losses[1]


def test_convert_writes_the_original_csv(tmp_path, mnist_dir, mnist):
    out = tmp_path / "test.csv"
    result = cli("convert", mnist_dir / "t10k-images-idx3-ubyte.gz", mnist_dir / "t10k-labels-idx1-ubyte.gz",
                 "-o", out)
    assert result.returncode == 0, result.stderr
    images, labels = data.read_csv(out)
    np.testing.assert_array_equal(images, mnist.x_test)
    np.testing.assert_array_equal(labels, mnist.y_test)


def test_convert_bad_idx_is_exit_2_and_writes_nothing(tmp_path, mnist_dir):
    bad = tmp_path / "images"
    bad.write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x05")  # header cut short
    out = tmp_path / "out.csv"
    result = cli("convert", bad, mnist_dir / "t10k-labels-idx1-ubyte.gz", "-o", out)
    assert_clean_error(result, str(bad), "truncated IDX header")
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]


def test_train_without_data_says_how_to_provide_it(tmp_path):
    result = cli("train", "--data", tmp_path / "missing", "--epochs", 1, "--out", tmp_path / "run")
    assert_clean_error(result, "missing", "no such file or directory")
    assert not (tmp_path / "run").exists()


def test_whole_path_never_imports_torch(tmp_path, mnist_dir):
    """A stand-in ``torch`` package on the path records any import of it; train and evaluate must not trigger it."""
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    marker = tmp_path / "torch-was-imported"
    (fake / "__init__.py").write_text(
        "import pathlib, traceback\n"
        f"pathlib.Path({str(marker)!r}).write_text(''.join(traceback.format_stack()))\n"
        "raise ImportError('torch is not allowed in this project')\n")
    env = {"PYTHONPATH": str(tmp_path / "fake")}
    train = cli("train", "--data", mnist_dir, "--epochs", 1, "--limit", 256, "--no-validate",
                "--out", tmp_path / "run", env=env)
    assert train.returncode == 0, train.stderr[-3000:]
    evaluate = cli("evaluate", tmp_path / "run" / "model.keras", "--data", mnist_dir, env=env,
                   backend=OTHER_BACKEND)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert not marker.exists(), marker.read_text()
