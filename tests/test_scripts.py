"""scripts/: every script is valid shell, and the ones that reproduce a figure run end to end, cut short."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BACKEND, REPO

SCRIPTS = sorted((REPO / "scripts").glob("*.sh"))


def run_script(name: str, *args, mnist_dir=None, timeout=900) -> subprocess.CompletedProcess:
    # the scripts call mnist-mb and python3 as a user's shell finds them: this environment's
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
           "KERAS_BACKEND": BACKEND}
    if mnist_dir:
        env["MNIST_DATA_DIR"] = str(mnist_dir)
    return subprocess.run(["bash", str(REPO / "scripts" / name), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_the_scripts_are_there():
    names = {script.name for script in SCRIPTS}
    assert {"reproduce-original.sh", "bench.sh", "time-to-accuracy.sh", "studies.sh", "gpu-smoke.sh",
            "check.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_every_script_is_valid_shell(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_reproduce_original_trains_with_the_original_recipe(mnist_dir, tmp_path):
    out = tmp_path / "original"
    result = run_script("reproduce-original.sh", BACKEND, out, "--epochs", 1, "--limit", 256, "--no-validate",
                        mnist_dir=mnist_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.startswith("cpu: ") and "features:" in result.stderr.splitlines()[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["recipe"], metrics["seed"], metrics["backend"]) == ("original", 2017, BACKEND)


@pytest.mark.slow
def test_time_to_accuracy_writes_both_tables(mnist_dir, tmp_path):
    result = run_script("time-to-accuracy.sh", tmp_path, "--backends", BACKEND, "--runs", 1, "--epochs", 1,
                        "--limit", 256, mnist_dir=mnist_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    for recipe in ("fast", "original"):
        results = json.loads((tmp_path / recipe / "results.json").read_text())
        assert [row["recipe"] for row in results["summary"]] == [recipe]


def test_gpu_smoke_stops_in_one_line_without_a_gpu(tmp_path):
    if subprocess.run(["sh", "-c", "nvidia-smi -L"], capture_output=True).returncode == 0:
        pytest.skip("this machine has an NVIDIA GPU: the no-GPU path cannot be shown here")
    result = run_script("gpu-smoke.sh", tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("gpu-smoke: error: no NVIDIA GPU")
    assert not any(tmp_path.iterdir()), "nothing is installed or written without a GPU"
