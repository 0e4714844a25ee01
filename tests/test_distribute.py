"""Data-parallel training on each backend's own engine, on logical CPU devices and loopback processes.

Device counts are fixed when a backend initialises, so every run with two
replicas happens in a fresh process (``--cpu-devices 2``).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import BACKEND, OTHER_BACKEND, REPO, assert_clean_error, cli
from mnist_multibackend import cli as cli_module
from mnist_multibackend.distribute import even_share
from mnist_multibackend.errors import InputError

# A run small enough for a test, with a partial last batch in both sets:
# 520 = 8 x 64 + 8 training images, 10,000 = 156 x 64 + 16 test images.
SMALL_RUN = ("--limit", 520, "--batch-size", 64, "--epochs", 1, "--seed", 0)

COMPARE = textwrap.dedent("""
    import json, sys
    from mnist_multibackend.runtime import start
    runtime = start(device="cpu", cpu_devices=2)
    import keras
    from mnist_multibackend import data
    from mnist_multibackend.distribute import Replicas, data_parallel

    mnist_dir, dropout = sys.argv[1], sys.argv[2] == "on"
    dataset = data.load_folder(mnist_dir)
    x, y = data.as_model_input(dataset.x_train[:256]), data.one_hot(dataset.y_train[:256])
    x_test, y_test = data.as_model_input(dataset.x_test[:500]), data.one_hot(dataset.y_test[:500])

    class StepLosses(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.losses = []
        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))  # Keras logs the mean over the epoch's steps so far

    def copies(variable):  # on how many devices a variable lives
        value = variable.value
        if hasattr(value, "sharding"):  # a jax.Array
            return len(value.sharding.device_set)
        return len(getattr(value, "values", [value]))  # a tf.distribute MirroredVariable: one per replica

    def run(replicas):
        keras.utils.set_random_seed(0)
        model = replicas.build_model()
        if not dropout:
            for layer in model.layers:
                if isinstance(layer, keras.layers.Dropout):
                    layer.rate = 0.0
        initial = [w.tolist() for w in model.get_weights()[:2]]
        steps = StepLosses()
        with replicas.scope():
            model.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0, callbacks=[steps, *replicas.callbacks])
        saved = replicas.single_device_copy(model)
        loss, _ = saved.evaluate(x_test, y_test, batch_size=500, verbose=0)
        return {"replicas": replicas.count, "copies": copies(model.weights[0]),
                "saved_copies": copies(saved.weights[0]), "initial": initial,
                "synchronized": saved.get_layer("bn0").get_config()["synchronized"],
                "losses": steps.losses, "test_loss": float(loss)}

    print(json.dumps({"one": run(Replicas()), "two": run(data_parallel(runtime))}))
""")


@pytest.mark.parametrize("dropout", [pytest.param("off", marks=pytest.mark.tensorflow),
                                     pytest.param("on", marks=pytest.mark.jax)])
def test_two_replicas_train_like_one_device(mnist_dir, dropout):
    """Two replicas on two logical CPUs follow single-device training step for step.

    Both runs start from the same seed (the test checks they start from the
    same weights), see the same 4 batches of 64 in the same order, and are
    compared by Keras's logged loss after each step and by the saved model's
    test loss. The first step's loss is the forward pass of equal weights on
    the same global batch: it matches to float32 rounding only if batch
    normalisation uses the global batch's statistics (on TensorFlow a replica
    normalising with its own half misses by 3e-3). Later steps allow 0.1 %:
    Adam's first steps move every weight by about the learning rate whatever
    its gradient's size, so rounding in near-zero gradients (the conv biases,
    cancelled by batch norm) shows up in the weights, though hardly in the loss.

    Dropout: JAX draws one mask for the global batch and shards it, so its
    replicas drop exactly what one device drops, and dropout stays on. Under
    TensorFlow's MirroredStrategy each replica draws its own mask for its half
    of the batch, so masks cannot match single-device ones; there both runs
    set the dropout rate to 0 and compute the same function, and any
    difference left comes from the distribution itself.
    """
    done = subprocess.run([sys.executable, "-c", COMPARE, mnist_dir, dropout], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env={**os.environ, "KERAS_BACKEND": BACKEND})
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.splitlines()[-1])
    one, two = runs["one"], runs["two"]
    # really distributed: two replicas, every variable on both devices; the saved copy is an ordinary model
    assert (one["replicas"], one["copies"]) == (1, 1)
    assert (two["replicas"], two["copies"], two["saved_copies"], two["synchronized"]) == (2, 2, 1, False)
    assert two["initial"] == one["initial"]
    assert len(two["losses"]) == len(one["losses"]) == 4  # 256 images in global batches of 64
    assert two["losses"][0] == pytest.approx(one["losses"][0], rel=1e-5)
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-3)
    assert two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-3)


@pytest.fixture(scope="module")
def two_replica_run(tmp_path_factory, mnist_dir):
    """``mnist-mb train --distribute --cpu-devices 2`` on this backend, validation included."""
    out = tmp_path_factory.mktemp("two-replicas")
    result = cli("train", "--distribute", "--cpu-devices", 2, "--data", mnist_dir, *SMALL_RUN, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_distribute_records_replicas_and_splits_the_global_batch(two_replica_run):
    out, result = two_replica_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["device"], len(metrics["devices"]), metrics["replicas"], metrics["processes"]) == ("cpu", 2, 2, 1)
    assert metrics["batch_size"] == 64  # the global batch: 32 per replica
    assert metrics["train_images"] == 520  # the last batch of 8 splits evenly, so nothing is dropped
    assert "9/9" in result.stdout  # 8 full steps and the partial one
    assert f"on {BACKEND}/cpu x2" in result.stdout
    assert 0 < metrics["test_accuracy"] <= 1


def test_distributed_model_evaluates_the_same_on_the_other_backend(two_replica_run, mnist_dir):
    out, _ = two_replica_run
    metrics = json.loads((out / "metrics.json").read_text())
    result = cli("evaluate", out / "model.keras", "--data", mnist_dir, backend=OTHER_BACKEND)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["backend"] == OTHER_BACKEND
    assert report["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-4)
    assert report["loss"] == pytest.approx(metrics["test_loss"], rel=1e-3)


@given(examples=st.integers(1, 5000), per_replica=st.integers(1, 64), local_devices=st.integers(1, 4),
       processes=st.integers(1, 4))
def test_even_share_splits_every_batch_evenly(examples, per_replica, local_devices, processes):
    replicas = local_devices * processes
    batch = per_replica * replicas
    share = even_share(examples, batch, replicas, processes)
    local_batch = batch // processes
    assert 0 <= examples // processes - share < local_devices  # drops only what must go
    assert share % local_batch % local_devices == 0  # the last, partial batch splits evenly too


def test_even_share_refuses_a_batch_that_does_not_split():
    with pytest.raises(InputError, match="63 does not split evenly across 2 replicas"):
        even_share(1000, 63, 2)


@pytest.mark.parametrize("args, fragments", [
    (["--cpu-devices", "2", "--device", "gpu"], ["--cpu-devices", "cannot be used with --device gpu"]),
    (["--distribute", "--coordinator", "127.0.0.1:1"], ["--coordinator", "also needs --num-processes, --process-id"]),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "0"], ["needs --distribute"]),
    (["--distribute", "--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"],
     ["--coordinator", "expected HOST:PORT", "'nohost'"]),
    (["--distribute", "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
     ["--process-id", "must be in 0..1"]),
    # Ports that str.isdigit() or int() take but JAX's C++ side crashed on (exit 139), and port 0, which hung.
    *[(["--distribute", "--coordinator", f"localhost:{port}", "--num-processes", "1", "--process-id", "0"],
       ["--coordinator", "a port from 1 to 65535", port]) for port in ("١٢٣٤", "99999", str(2**64 + 1), "0")],
    # A name that does not resolve: JAX waited for its time-out, saying nothing.
    (["--distribute", "--coordinator", "no.such.host.invalid:1234", "--num-processes", "1", "--process-id", "0"],
     ["--coordinator", "host 'no.such.host.invalid' does not resolve"]),
    (["--distribute", "--cpu-devices", "100000"], ["--cpu-devices", "at most 256 logical devices", "100000"]),
])
def test_parallel_flags_are_checked_before_the_backend_starts(capsys, args, fragments):
    assert cli_module.main(["train", *args]) == cli_module.EXIT_BAD_INPUT
    line = capsys.readouterr().err.strip()
    assert line.startswith("mnist-mb: error:") and "\n" not in line
    for fragment in fragments:
        assert fragment in line


@pytest.mark.tensorflow
def test_tensorflow_takes_its_cluster_from_tf_config(capsys):
    args = ["train", "--distribute", "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "0"]
    assert cli_module.main(args) == cli_module.EXIT_BAD_INPUT
    assert "reads its cluster from TF_CONFIG" in capsys.readouterr().err


@pytest.mark.tensorflow
@pytest.mark.parametrize("tf_config, expect", [
    ("garbage", "not a TensorFlow cluster description"),
    (json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 5}}),
     "its task (worker 5) is not one of its cluster's: worker 0, worker 1"),
])
def test_a_tf_config_that_is_not_a_cluster_description_is_one_line(mnist_dir, tmp_path, tf_config, expect):
    result = cli("train", "--distribute", "--limit", 256, "--data", mnist_dir, "--out", tmp_path / "run",
                 env={"TF_CONFIG": tf_config})
    assert_clean_error(result, "TF_CONFIG", expect)
    assert not (tmp_path / "run").exists()


def test_batch_that_does_not_split_across_replicas_is_refused(mnist_dir, tmp_path):
    result = cli("train", "--distribute", "--cpu-devices", 2, "--batch-size", 63, "--limit", 256,
                 "--data", mnist_dir, "--out", tmp_path)
    assert_clean_error(result, "--batch-size", "63 does not split evenly across 2 replicas")


def test_distributed_training_on_a_gpu_without_one_is_a_clean_error(mnist_dir, tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA GPU: the no-GPU path cannot be shown here")
    result = cli("train", "--device", "gpu", "--distribute", "--data", mnist_dir, "--out", tmp_path)
    assert_clean_error(result, f"the {BACKEND} backend sees no GPU", "mnist-multibackend[")
    assert not (tmp_path / "metrics.json").exists()


# --- several processes on one machine, over loopback -------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train_together(runs, timeout=600):
    """Start ``mnist-mb train ARGS`` for every ``(env, args)`` at once; wait for all of them."""
    procs = [subprocess.Popen([sys.executable, "-m", "mnist_multibackend", "train", *map(str, args)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "KERAS_BACKEND": BACKEND, **env}) for env, args in runs]
    try:
        outputs = [proc.communicate(timeout=timeout) for proc in procs]
    finally:
        for proc in procs:  # a peer that failed can leave the other waiting for it
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


def _summary(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("test accuracy"))


def _check_two_process_run(outputs, out_dir):
    first, second = map(_summary, outputs)
    assert "process 0 of 2" in first and "process 1 of 2" in second and "process 0 writes" in second
    assert first.split(";")[0] == second.split(";")[0]  # both processes hold the same model
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert (metrics["replicas"], metrics["processes"], metrics["train_images"]) == (2, 2, 520)
    return metrics


@pytest.mark.jax
@pytest.mark.slow  # 71 s measured on 2 busy cores
def test_jax_trains_across_two_processes_on_loopback(mnist_dir, tmp_path):
    """Two processes, one CPU device each, joined by ``jax.distributed`` over 127.0.0.1."""
    if not socket.gethostbyname(socket.gethostname()).startswith("127."):
        pytest.skip("JAX's CPU collectives (gloo) listen on the host name's address, which is not loopback here")
    port = _free_port()
    args = ["--distribute", "--coordinator", f"127.0.0.1:{port}", "--num-processes", 2, "--data", mnist_dir,
            *SMALL_RUN, "--out", tmp_path]
    env = {"JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}"}  # else it listens on every interface
    outputs = _train_together([(env, [*args, "--process-id", i]) for i in range(2)])
    _check_two_process_run(outputs, tmp_path)


@pytest.mark.tensorflow
@pytest.mark.skipif(not os.environ.get("MNIST_MB_TEST_MULTIWORKER"),
                    reason="TensorFlow's gRPC server listens on every interface (it has no bind-address option); "
                           "set MNIST_MB_TEST_MULTIWORKER=1 to run it")
def test_tensorflow_trains_across_two_workers_like_two_local_replicas(mnist_dir, tmp_path, two_replica_run):
    """Two workers named in TF_CONFIG on 127.0.0.1 train exactly as two replicas in one process.

    MultiWorkerMirroredStrategy gives each worker one CPU device; with the
    same seed, data and global batch it reproduces the single-process
    MirroredStrategy run over two logical CPUs.
    """
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    runs = [({"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})},
             ["--distribute", "--data", mnist_dir, *SMALL_RUN, "--out", tmp_path]) for i in range(2)]
    metrics = _check_two_process_run(_train_together(runs), tmp_path)
    local = json.loads((two_replica_run[0] / "metrics.json").read_text())
    assert metrics["test_loss"] == pytest.approx(local["test_loss"], rel=1e-4)
    assert metrics["test_accuracy"] == pytest.approx(local["test_accuracy"], abs=1e-4)
