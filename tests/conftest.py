"""Test set-up: the backend comes from KERAS_BACKEND (tox sets it), chosen before Keras loads.

Markers: ``@pytest.mark.tensorflow`` / ``@pytest.mark.jax`` run a test only on
that backend; unmarked tests run on every backend. ``@pytest.mark.slow`` marks
the long trainings and benchmark runs, which ``tox`` leaves out unless given
pytest arguments (``tox -- tests`` runs everything).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_multibackend.runtime import BACKENDS, start

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if os.environ.get("MNIST_DATA_DIR"):  # a relative path must survive the subprocesses' own working folders
    os.environ["MNIST_DATA_DIR"] = str(Path(os.environ["MNIST_DATA_DIR"]).resolve())
RUNTIME = start(os.environ.get("KERAS_BACKEND"), device="cpu")
BACKEND = RUNTIME.backend
OTHER_BACKEND = next(b for b in BACKENDS if b != BACKEND)


def pytest_report_header(config):
    return f"mnist-multibackend: {RUNTIME.describe()}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        wanted = [b for b in BACKENDS if b in item.keywords]
        if wanted and BACKEND not in wanted:
            item.add_marker(pytest.mark.skip(reason=f"needs the {' or '.join(wanted)} backend, running {BACKEND}"))


@pytest.fixture(scope="session", autouse=True)
def _own_cache(tmp_path_factory):
    """The benchmarks the tests run must not replace the user's last-bench summary (mnist-mb doctor reads it)."""
    os.environ["MNIST_MB_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)


def missing(message: str):
    """Skip for want of ``message``'s thing on a developer's machine; fail under CI, whose set-up provides it."""
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI installs it: a missing one is a broken set-up, not a skip)")
    pytest.skip(message)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        missing(f"{what} not found at {path}; set MNIST_DATA_DIR or put ../shared beside the repository")
    return path


def import_tf_keras():
    """Real Keras 2 (``tf_keras``), the reference that legacy files must load in."""
    try:
        import tf_keras
    except ImportError as err:
        missing(f"tf_keras is not installed ({err}); pip install '.[keras2-reference]'")
    return tf_keras


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST IDX files (``$MNIST_DATA_DIR``, else ``../shared/data/mnist``)."""
    return _require(Path(os.environ.get("MNIST_DATA_DIR") or SHARED / "data" / "mnist"), "MNIST data")


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from mnist_multibackend.data import load_folder

    return load_folder(mnist_dir)


@pytest.fixture(scope="session")
def seed_dir() -> Path:
    """The original project's Keras 2 files."""
    return _require(SHARED / "data" / "keras2-seed", "the Keras 2 seed models")


def cli(*args, env=None, backend=BACKEND, timeout=900, cwd=None) -> subprocess.CompletedProcess:
    """Run ``mnist-mb ARGS`` in a fresh process, as a user would."""
    full_env = {**os.environ, "KERAS_BACKEND": backend, **(env or {})}
    return subprocess.run([sys.executable, "-m", "mnist_multibackend", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=cwd)


# Runs a command as its only child and reports that child's peak resident memory (kB) in a file.
_PEAK_RSS = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[2:]).returncode; "
             "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
             "sys.exit(code)")


def cli_peak_rss(*args, env=None, backend=BACKEND, timeout=900, cwd=None) -> tuple[subprocess.CompletedProcess, float]:
    """``cli(ARGS)``, and the command's peak resident memory in MiB, measured by a parent process of its own."""
    import tempfile

    full_env = {**os.environ, "KERAS_BACKEND": backend, **(env or {})}
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
        result = subprocess.run([sys.executable, "-c", _PEAK_RSS, report.name, sys.executable, "-m",
                                 "mnist_multibackend", *map(str, args)], capture_output=True, text=True,
                                env=full_env, timeout=timeout, cwd=cwd)
        peak_kib = float(report.read() or "nan")
    return result, peak_kib / 1024


def start_cli(*args, backend=BACKEND):
    """Start ``mnist-mb ARGS`` in the background: ``(process, output, reader)``, where ``output``
    collects its stdout and stderr as they come (bytes chunks) and ``reader`` is the collecting thread."""
    import threading

    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "mnist_multibackend", *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    output = []
    reader = threading.Thread(target=lambda: output.extend(iter(lambda: process.stdout.read1(4096), b"")),
                              daemon=True)
    reader.start()
    return process, output, reader


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.startswith("mnist-mb: error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# Generator states of the right form, for hand-made checkpoints: checkpoint.read_state validates
# them before any training.
RANDOM_STATE = {"python": [3, [0] * 624 + [624], None], "numpy": ["MT19937", [0] * 624, 624, 0, 0.0],
                "seed_generators": []}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, mnist_dir):
    """One short real training run through the CLI on this backend (shared by several tests).

    Three epochs of batch 16 on 4,000 images give 750 steps: the batch-norm
    moving statistics (momentum 0.99) have settled and every class is learnt
    well enough for confident predictions (after 250 steps test accuracy is
    about 12 %; after 500, 90 %, with some runs still unsure of 8s and 9s). It also
    writes the original's Keras 2 files (``--legacy-artifacts``).
    """
    out = tmp_path_factory.mktemp("run")
    result = cli("train", "--data", mnist_dir, "--epochs", 3, "--batch-size", 16, "--limit", 4000,
                 "--seed", 0, "--out", out, "--legacy-artifacts")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result
