"""mnist-mb train --precision bfloat16: trains under Keras's mixed_bfloat16, saves and scores a float32 copy."""

import json
import zipfile

import keras
import numpy as np
import pytest

from conftest import cli
from mnist_multibackend import data
from mnist_multibackend.recipes import TrainConfig


@pytest.fixture(scope="module")
def bfloat16_run(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("bf16") / "run"
    # As conftest's trained_run: 750 steps, enough for the batch-norm moving statistics to settle.
    result = cli("train", "--data", mnist_dir, "--precision", "bfloat16", "--epochs", 3, "--batch-size", 16,
                 "--limit", 4000, "--seed", 0, "--out", out, "--legacy-artifacts")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.mark.slow
def test_the_saved_model_is_float32_and_scores_as_reported(bfloat16_run, mnist):
    out, result = bfloat16_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["precision"] == "bfloat16"
    # Both scores shown: as trained, in bfloat16, and of the float32 copy the folder holds.
    assert "trained in bfloat16: test accuracy" in result.stderr
    assert metrics["mixed_precision_test_accuracy"] > 0.8 and metrics["test_accuracy"] > 0.8
    assert abs(metrics["test_accuracy"] - metrics["mixed_precision_test_accuracy"]) < 0.01
    with zipfile.ZipFile(out / "model.keras") as archive:
        config = archive.read("config.json").decode()
    assert "bfloat16" not in config  # no dtype policy of training's is carried into the file
    model = keras.saving.load_model(out / "model.keras")
    assert {variable.dtype for variable in model.weights} == {"float32"}
    assert model.dtype_policy.name == "float32" and all(layer.dtype_policy.name == "float32" for layer in model.layers)
    # Its own accuracy on the test set is the one metrics.json reports for the saved model.
    x, y = data.as_model_input(mnist.x_test), mnist.y_test
    accuracy = float(np.mean(model.predict(x, batch_size=1000, verbose=0).argmax(axis=1) == y))
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=2e-4)
    # The optimizer state came along with the weights: the saved model's Adam has taken every step.
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 750  # 4,000 images / 16, 3 epochs
    assert (out / "MNIST_keras_CNN.h5").is_file() and (out / "MNIST_keras_w_CNN.h5").is_file()


def test_float32_stays_the_default():
    assert TrainConfig().precision == "float32"


@pytest.mark.parametrize("flags, message", [
    (["--precision", "float16"], "invalid choice: 'float16'"),
    (["--precision", "bfloat16", "--distribute"], "--precision: bfloat16 is not supported with --distribute yet"),
    (["--precision", "bfloat16", "--checkpoint-dir", "CKPT"],
     "--precision: bfloat16 is not supported with --checkpoint-dir yet"),
])
def test_unsupported_combinations_are_refused_in_one_line(tmp_path, mnist_dir, flags, message):
    flags = [str(tmp_path / "ckpt") if flag == "CKPT" else flag for flag in flags]
    result = cli("train", "--data", mnist_dir, "--epochs", 1, "--limit", 256, "--out", tmp_path / "run", *flags)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
