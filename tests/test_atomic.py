"""No partial files: a failed or killed write leaves the old file whole and no truncated file behind."""

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from conftest import BACKEND
from mnist_multibackend import atomic, data


def _temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_write_that_fails_midway_keeps_the_old_file(tmp_path, mnist, monkeypatch):
    path = tmp_path / "mnist_test.csv"
    data.write_csv(path, mnist.x_test[:10], mnist.y_test[:10])
    good = path.read_bytes()
    blocks = []
    real_format = data.format_csv_rows

    def fail_on_the_second_block(table):  # the first block is already written when this raises
        blocks.append(len(table))
        if len(blocks) == 2:
            raise OSError(28, "No space left on device")
        return real_format(table)

    monkeypatch.setattr(data, "format_csv_rows", fail_on_the_second_block)
    with pytest.raises(OSError, match="No space left"):
        data.write_csv(path, mnist.x_test, mnist.y_test)  # 10,000 rows: three blocks
    assert len(blocks) == 2
    assert path.read_bytes() == good and _temporaries(tmp_path) == []


def test_killed_convert_leaves_the_old_csv_whole(tmp_path, mnist_dir, mnist):
    """SIGKILL while the 60,000-row CSV is being written: the old file stays, the new one is never half there."""
    out = tmp_path / "mnist_train.csv"
    data.write_csv(out, mnist.x_test[:100], mnist.y_test[:100])
    good = out.read_bytes()
    process = subprocess.Popen([sys.executable, "-m", "mnist_multibackend", "convert",
                                mnist_dir / "train-images-idx3-ubyte.gz", mnist_dir / "train-labels-idx1-ubyte.gz",
                                "-o", out], env={**os.environ, "KERAS_BACKEND": BACKEND},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not any(p.stat().st_size > 0 for p in tmp_path.glob(".mnist_train.csv.*")):
            assert process.poll() is None, "convert finished before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert out.read_bytes() == good
    [partial] = tmp_path.glob(".mnist_train.csv.*.tmp.csv")  # the half-written file never took the name
    assert partial.stat().st_size > 0


def test_new_files_get_the_usual_mode_and_old_files_keep_theirs(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    atomic.write_text(tmp_path / "new.txt", "x")
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o666 & ~umask
    (tmp_path / "old.txt").write_text("old")
    os.chmod(tmp_path / "old.txt", 0o640)
    atomic.write_text(tmp_path / "old.txt", "new")
    assert (tmp_path / "old.txt").read_text() == "new"
    assert stat.S_IMODE((tmp_path / "old.txt").stat().st_mode) == 0o640

