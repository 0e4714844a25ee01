"""What a new user sees: a quiet start, an honest progress bar, run folders that remember their data."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from conftest import BACKEND, assert_clean_error, cli
from mnist_multibackend import native_logs

# The lines TensorFlow 2.21 printed at every start on a CPU-only machine, whatever TF_CPP_MIN_LOG_LEVEL said.
START_UP_NOISE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796122491.760175    3541 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    b"GPU will not be used.\n",
    b"E0000 00:00:1796122496.347805    3541 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    b"Failed call to cuInit: UNKNOWN ERROR (303)\n",
    b"W0000 00:00:1796122496.347805    3541 cpu_feature_guard.cc:20] oneDNN custom operations are on.\n",
]
KEPT = [
    b"E0000 00:00:1796122496.347805    3541 op_kernel.cc:1830] OP_REQUIRES failed: out of memory\n",
    b"F0000 00:00:1796122496.347805    3541 check.cc:12] Check failed: a == b\n",
    b"Traceback (most recent call last):\n",
    b"mnist-mb: error: x.keras: no such file\n",
]


@pytest.mark.parametrize("line", START_UP_NOISE)
def test_native_start_up_lines_are_dropped(line):
    assert native_logs.NOISE.match(line)


@pytest.mark.parametrize("line", KEPT)
def test_native_errors_and_everything_else_pass(line):
    assert not native_logs.NOISE.match(line)


def _quiet_env():
    # tox sets TF_CPP_MIN_LOG_LEVEL for the test process; a user who has not set it gets the filter
    return {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}


def _cli_without_log_level(*args, backend=BACKEND):
    import subprocess
    import sys

    env = {**_quiet_env(), "KERAS_BACKEND": backend}
    return subprocess.run([sys.executable, "-m", "mnist_multibackend", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


# ids that are not marker names: a "jax" id would make conftest run the case on JAX only
@pytest.mark.parametrize("backend", ["tensorflow", "jax"], ids=["started-tensorflow", "started-jax"])
def test_bad_input_after_the_backend_started_is_one_line(backend, tmp_path):
    model = tmp_path / "not-a-model.keras"
    model.write_bytes(b"PK\x03\x04 truncated")
    digits = tmp_path / "digits.npy"
    np.save(digits, np.zeros((1, 28, 28), np.uint8))
    # --device cpu makes TensorFlow probe CUDA and absl print its notice: both used to reach stderr
    result = _cli_without_log_level("predict", model, digits, "--device", "cpu", backend=backend)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("mnist-mb: error: ")


def test_a_flag_error_is_one_line_without_usage():
    result = _cli_without_log_level("train", "--epochs", "zero")
    assert_clean_error(result, "--epochs", "not a whole number")
    assert result.stderr.count("\n") == 1 and "usage:" not in result.stderr


def test_a_checked_flag_is_refused_before_the_backend_starts():
    result = _cli_without_log_level("train", "--epochs", "0")
    assert_clean_error(result, "--epochs", "must be at least 1")
    assert result.stderr.count("\n") == 1


def test_verbose_keeps_tensorflow_s_own_lines(seed_dir, mnist_dir):
    # A file that loads: a bad one is refused before the backend starts, and then TensorFlow says nothing.
    result = _cli_without_log_level("evaluate", seed_dir / "MNIST_keras_CNN.h5", "--data", mnist_dir,
                                    "--backend", "tensorflow", "--verbose")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "backend tensorflow" in result.stderr
    if shutil.which("nvidia-smi") is None:  # on a CPU-only machine TensorFlow says why it uses no GPU
        assert "cuda" in result.stderr.lower()


def test_the_progress_bar_never_passes_the_epoch(mnist_dir, tmp_path):
    # 1,000 images in batches of 64: 16 steps, run 5 per execution, so the last call runs only 1
    result = cli("train", "--data", mnist_dir, "--epochs", 1, "--limit", 1000, "--batch-size", 64,
                 "--steps-per-execution", 5, "--no-validate", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-2000:]
    counts = [(int(a), int(b)) for a, b in re.findall(r"(\d+)/(\d+)(?:\x1b\[0m)? ", result.stdout)]
    assert counts and all(total == 16 and 1 <= seen <= 16 for seen, total in counts), counts
    assert counts[-1] == (16, 16)
    assert not re.search(r"(?<![\w.])-\d+m?s\b", result.stdout), "a negative time left"


def test_evaluate_and_report_use_the_data_the_run_recorded(trained_run, mnist_dir, tmp_path):
    out, _ = trained_run
    recorded = json.loads((out / "metrics.json").read_text())["data_source"]
    assert recorded == str(mnist_dir)
    # no --data, no MNIST_DATA_DIR, and an empty Keras home: only the run's record can supply the data
    env = {"MNIST_DATA_DIR": "", "KERAS_HOME": str(tmp_path / "keras-home")}
    result = cli("evaluate", out / "model.keras", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"test data from {mnist_dir}" in result.stderr and "--data overrides" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads(result.stdout)["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-4)
    result = cli("report", out, "--out", tmp_path / "report", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"test data from {mnist_dir}" in result.stderr


def test_an_explicit_data_flag_wins_over_the_record(trained_run, tmp_path):
    out, _ = trained_run
    result = cli("evaluate", out / "model.keras", "--data", tmp_path / "missing")
    assert_clean_error(result, "missing")
    assert "test data from" not in result.stderr
