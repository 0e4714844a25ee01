"""Resumable training: kill -9 a real training in the middle of epoch 2, resume it, lose and repeat nothing."""

import csv
import json
import re
import signal
import time

import numpy as np
import pytest

from conftest import cli, start_cli
from mnist_multibackend import report

EPOCHS, BATCH, LIMIT = 3, 32, 1024
STEPS = LIMIT // BATCH
# One step per execution: the kill waits for the progress bar to show a step inside epoch 2.
TRAIN = ("train", "--epochs", EPOCHS, "--batch-size", BATCH, "--limit", LIMIT, "--seed", 3, "--no-validate",
         "--steps-per-execution", 1)


def _kill_in_epoch_2(args, timeout=600) -> str:
    """Run ``mnist-mb ARGS`` and SIGKILL it once its progress bar shows a step inside epoch 2."""
    process, output, reader = start_cli(*args)
    def inside_epoch_2() -> bool:  # the progress bar shows step N/STEPS with 0 < N < STEPS
        text = b"".join(output).decode(errors="replace").partition(f"Epoch 2/{EPOCHS}")[2]
        return any(0 < int(step) < STEPS for step in re.findall(rf"(\d+)/{STEPS}\b", text))

    deadline = time.monotonic() + timeout
    try:
        while not inside_epoch_2():
            assert process.poll() is None, b"".join(output).decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "training never reached epoch 2"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        reader.join(timeout=10)
    assert process.returncode == -signal.SIGKILL
    return b"".join(output).decode(errors="replace")


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, mnist_dir):
    folder = tmp_path_factory.mktemp("resume")
    checkpoint, out = folder / "checkpoint", folder / "run"
    args = (*TRAIN, "--data", mnist_dir, "--out", out, "--checkpoint-dir", checkpoint)
    killed_output = _kill_in_epoch_2(args)
    state_after_kill = json.loads((checkpoint / "checkpoint.json").read_text())
    files_after_kill = sorted(p.name for p in checkpoint.iterdir())
    resumed = cli(*args, "--resume", "--report")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"folder": folder, "out": out, "checkpoint": checkpoint, "killed_output": killed_output,
            "state_after_kill": state_after_kill, "files_after_kill": files_after_kill, "resumed": resumed}


def test_killed_in_epoch_2_the_checkpoint_holds_epoch_1(resumed_run):
    state = resumed_run["state_after_kill"]
    assert state["epoch"] == 1 and state["weights"] == "epoch-0001.weights.h5"
    assert "epoch-0001.weights.h5" in resumed_run["files_after_kill"]
    assert [len(v) for v in state["history"].values()] == [1] * len(state["history"])
    assert f"Epoch 2/{EPOCHS}" in resumed_run["killed_output"]


def test_resume_continues_after_the_last_completed_epoch(resumed_run):
    resumed = resumed_run["resumed"]
    assert f"epoch 1 of {EPOCHS} done" in resumed.stderr
    assert "Epoch 1/" not in resumed.stdout and f"Epoch 2/{EPOCHS}" in resumed.stdout
    assert f"Epoch {EPOCHS}/{EPOCHS}" in resumed.stdout
    rows = list(csv.DictReader((resumed_run["out"] / "history.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]  # each epoch exactly once
    assert rows[0]["loss"] == f"{resumed_run['state_after_kill']['history']['loss'][0]:.6g}"
    assert all(float(row["train_seconds"]) > 0 for row in rows)
    metrics = json.loads((resumed_run["out"] / "metrics.json").read_text())
    assert metrics["epochs"] == EPOCHS and metrics["resumed_after_epoch"] == 1
    assert not resumed_run["checkpoint"].exists()  # the run is complete: nothing left to resume


def test_the_resumed_model_is_valid_and_reported(resumed_run, mnist):

    from mnist_multibackend.model import load_saved_model
    from mnist_multibackend.predict import predict_digits

    model = load_saved_model(resumed_run["out"] / "model.keras")
    assert int(model.optimizer.iterations) == EPOCHS * STEPS  # the optimizer state was carried over
    probabilities = predict_digits(model, mnist.x_test[:200])
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    for name in (report.CURVES_FILE, report.CONFUSION_FILE, report.MISTAKES_FILE):  # train --report
        assert (resumed_run["out"] / "report" / name).stat().st_size > 10_000


def test_the_resumed_run_repeats_the_uninterrupted_one(resumed_run, mnist_dir):
    """The same order of images (JAX: NumPy's generator, which the checkpoint restores; TensorFlow:
    EpochBatches, drawn from the seed and the epoch number) and the same dropout: the run is the same."""
    import keras

    reference = resumed_run["folder"] / "reference"
    result = cli(*TRAIN, "--data", mnist_dir, "--out", reference)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [[row["loss"] for row in csv.DictReader((run / "history.csv").open())]
              for run in (reference, resumed_run["out"])]
    assert losses[0] == losses[1]
    models = [keras.saving.load_model(run / "model.keras") for run in (reference, resumed_run["out"])]
    for a, b in zip(models[0].weights, models[1].weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a.value), keras.ops.convert_to_numpy(b.value),
                                      err_msg=a.path)
