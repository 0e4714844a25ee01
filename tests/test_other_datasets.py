"""Any IDX data set of MNIST's shape goes through the same pipeline: Fashion-MNIST, when installed."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import cli, missing
from mnist_multibackend import data

# Debian's dataset-fashion-mnist package; the file names are MNIST's.
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def fashion_dir() -> Path:
    if not (FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").is_file():
        missing(f"Fashion-MNIST is not installed in {FASHION_MNIST} (apt-get install dataset-fashion-mnist)")
    return FASHION_MNIST


def test_fashion_mnist_loads_like_mnist(fashion_dir, mnist):
    fashion = data.load_dataset(fashion_dir)
    assert fashion.x_train.shape == (60000, 28, 28) and fashion.x_test.shape == (10000, 28, 28)
    assert np.bincount(fashion.y_train).tolist() == [6000] * 10  # balanced, unlike MNIST
    assert np.bincount(fashion.y_test).tolist() == [1000] * 10
    assert not np.array_equal(fashion.x_test[:100], mnist.x_test[:100])


@pytest.mark.slow
def test_the_same_command_trains_and_predicts_on_fashion_mnist(fashion_dir, tmp_path):
    out = tmp_path / "fashion"
    result = cli("train", "--data", fashion_dir, "--epochs", 1, "--batch-size", 16, "--limit", 2000, "--seed", 0,
                 "--no-validate", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data_source"] == str(fashion_dir) and metrics["train_images"] == 2000
    [epoch] = list(csv.DictReader((out / "history.csv").open()))
    assert float(epoch["accuracy"]) > 0.5  # it learns clothes: chance is 0.1
    predicted = cli("predict", out / "model.keras", fashion_dir / "t10k-images-idx3-ubyte.gz", "--json")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert len(predicted.stdout.splitlines()) == 10000
