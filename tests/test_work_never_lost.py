"""Work that took minutes is never lost or mixed up (issue 12), and settings that change numbers are visible.

Bad inputs (an --out that cannot be written, an earlier run without --overwrite, a malformed
checkpoint) are rows of tests/test_bad_input.py; here is the behaviour that is not a refusal.
"""

import json
import signal
import time

import pytest

from conftest import BACKEND, cli, start_cli
from mnist_multibackend import atomic

TINY = ("--limit", "64", "--epochs", "1")


def _leftovers(folder):
    """Temporary files and folders of atomic writes (.NAME.RANDOM.tmp..., .NAME.RANDOM.old)."""
    return sorted(str(p) for p in folder.rglob(".*") if ".tmp" in p.name or p.name.endswith(".old"))


def test_a_failure_inside_the_build_leaves_the_run_folder_as_it_was(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_text("the earlier run")
    with pytest.raises(RuntimeError):
        with atomic.atomic_folder(run, overwrite=True) as building:
            (building / "model.keras").write_text("half of a new run")
            raise RuntimeError("the disk filled up before history.csv")
    assert sorted(p.name for p in run.iterdir()) == ["model.keras"]
    assert (run / "model.keras").read_text() == "the earlier run"
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces_the_earlier_run_whole(tmp_path, mnist_dir):
    run = tmp_path / "run"
    for name in ("model.keras", "history.csv", "metrics.json", "MNIST_keras_CNN.h5", "MNIST_keras_CNN.yaml",
                 "report/misclassified.png"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("the earlier run's")
    result = cli("train", "--data", mnist_dir, *TINY, "--out", run, "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in run.iterdir()) == ["history.csv", "metrics.json", "model.keras"]
    assert len((run / "history.csv").read_text().splitlines()) == 2  # header and the one epoch
    assert _leftovers(tmp_path) == []


def test_the_checkpoint_deletes_only_what_it_wrote(tmp_path, mnist_dir):
    checkpoint = tmp_path / "ck"
    checkpoint.mkdir()
    # Not this run's: a later epoch's name it never writes, and a file of the user's.
    (checkpoint / "epoch-0099.weights.h5").write_bytes(b"someone else's")
    (checkpoint / "notes.txt").write_text("mine")
    result = cli("train", "--data", mnist_dir, "--limit", "64", "--epochs", "2", "--out", tmp_path / "run",
                 "--checkpoint-dir", checkpoint)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in checkpoint.iterdir()) == ["epoch-0099.weights.h5", "notes.txt"]
    assert (checkpoint / "epoch-0099.weights.h5").read_bytes() == b"someone else's"


def _train_and_signal(args, signum, wait_for: bytes, timeout=600):
    """Start ``mnist-mb ARGS``, send ``signum`` once its output shows ``wait_for``; (output, exit code, seconds)."""
    process, output, reader = start_cli(*args)
    deadline = time.monotonic() + timeout
    try:
        while wait_for not in b"".join(output):
            assert process.poll() is None, b"".join(output).decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, f"never saw {wait_for!r}"
            time.sleep(0.01)
        sent = time.monotonic()
        process.send_signal(signum)
        code = process.wait(timeout=30)
        seconds = time.monotonic() - sent
    finally:
        process.kill()
        process.wait()
        reader.join(timeout=10)
    return b"".join(output).decode(errors="replace"), code, seconds


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_training_at_once_cleanly_and_says_how_to_resume(tmp_path, mnist_dir, signum, code):
    checkpoint, out = tmp_path / "ck", tmp_path / "run"
    args = ("train", "--data", mnist_dir, "--limit", "2048", "--epochs", "20", "--batch-size", "32",
            "--no-validate", "--out", out, "--checkpoint-dir", checkpoint)
    output, exit_code, seconds = _train_and_signal(args, signum, b"Epoch 2/20")  # after the first epoch's save
    assert exit_code == code, output[-3000:]
    assert seconds < 3, f"took {seconds:.1f} s to stop"
    lines = [line for line in output.splitlines() if line.startswith("mnist-mb: interrupted")]
    assert len(lines) == 1, output[-3000:]
    assert f"interrupted by {signal.Signals(signum).name}" in lines[0]
    assert "epoch 1 of 20 saved in" in lines[0]
    resume = "mnist-mb " + " ".join(map(str, args)) + " --resume"
    assert lines[0].endswith(f"resume with: {resume}"), lines[0]
    assert "Traceback" not in output
    assert _leftovers(tmp_path) == []
    assert not out.exists()
    assert json.loads((checkpoint / "checkpoint.json").read_text())["epoch"] >= 1


def test_a_float16_keras_json_is_overridden_and_said_and_recorded(tmp_path, mnist_dir):
    home = tmp_path / "keras-home"
    home.mkdir()
    (home / "keras.json").write_text(json.dumps({"floatx": "float16", "epsilon": 1e-07, "backend": BACKEND,
                                                 "image_data_format": "channels_first"}))
    result = cli("train", "--data", mnist_dir, *TINY, "--out", tmp_path / "run", env={"KERAS_HOME": str(home)})
    assert result.returncode == 0, result.stderr[-3000:]
    said = [line for line in result.stderr.splitlines() if "overriding Keras settings" in line]
    assert len(said) == 1, result.stderr[-3000:]
    assert "floatx float16 -> float32" in said[0] and "image_data_format channels_first -> channels_last" in said[0]
    assert str(home / "keras.json") in said[0]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["keras_config"] == {"backend": BACKEND, "floatx": "float32", "image_data_format": "channels_last",
                                       "epsilon": 1e-07}
    import keras

    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert {w.dtype for w in model.weights} == {"float32"}
