"""Keras 2 files through the command line and across backends, in fresh processes."""

import json
import os
import subprocess
import sys
import textwrap

import h5py
import keras
import numpy as np
import pytest

from conftest import BACKEND, OTHER_BACKEND, assert_clean_error, cli, import_tf_keras
from mnist_multibackend import data, legacy
from mnist_multibackend.model import load_saved_model

H5, YAML, WEIGHTS = legacy.H5_NAME, legacy.YAML_NAME, legacy.WEIGHTS_NAME
STEPS = 750  # trained_run: 3 epochs of 4,000 images in batches of 16


def predictions(model, images):
    return model.predict(data.as_model_input(images), batch_size=500, verbose=0)


@pytest.fixture(scope="module")
def images(mnist):
    return mnist.x_test[:2000]


@pytest.fixture(scope="module")
def run_predictions(trained_run, images):
    """What the trained run's own model.keras predicts here."""
    out, _ = trained_run
    return predictions(load_saved_model(out / "model.keras"), images)


OTHER_BACKEND_SNIPPET = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from mnist_multibackend.runtime import start
    start(device="cpu")
    from mnist_multibackend import data, legacy
    run, mnist_dir, out = map(Path, sys.argv[1:4])
    images = data.as_model_input(data.load_folder(mnist_dir).x_test[:2000])
    full = legacy.load_legacy_h5(run / legacy.H5_NAME)
    arch = legacy.load_weights_h5(legacy.load_yaml_file(run / legacy.YAML_NAME), run / legacy.WEIGHTS_NAME)
    np.savez(out / "there.npz", full=full.predict(images, verbose=0), arch=arch.predict(images, verbose=0),
             iterations=int(full.optimizer.iterations))
    legacy.write_legacy_artifacts(full, out)
""")


@pytest.fixture(scope="module")
def other_backend(trained_run, mnist_dir, tmp_path_factory):
    """The run's Keras 2 files read on the other backend, and written again there."""
    out = tmp_path_factory.mktemp(f"legacy-{OTHER_BACKEND}")
    run, _ = trained_run
    done = subprocess.run([sys.executable, "-c", OTHER_BACKEND_SNIPPET, run, mnist_dir, out],
                          env={**os.environ, "KERAS_BACKEND": OTHER_BACKEND}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, dict(np.load(out / "there.npz"))


def test_train_legacy_artifacts_hold_the_trained_model(trained_run, images, run_predictions):
    out, result = trained_run
    assert "and the Keras 2 files" in result.stdout
    full = legacy.load_legacy_h5(out / H5)
    np.testing.assert_array_equal(predictions(full, images), run_predictions)
    assert int(full.optimizer.iterations) == STEPS
    keras_file = load_saved_model(out / "model.keras")
    for a, b in zip(full.optimizer.variables, keras_file.optimizer.variables):
        if a.path.endswith(("momentum", "velocity")):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), err_msg=a.path)
    arch = legacy.load_weights_h5(legacy.load_yaml_file(out / YAML), out / WEIGHTS)
    np.testing.assert_array_equal(predictions(arch, images), run_predictions)


def test_legacy_files_predict_the_same_on_the_other_backend(other_backend, run_predictions):
    _, there = other_backend
    assert int(there["iterations"]) == STEPS
    for name in ("full", "arch"):
        assert np.array_equal(there[name].argmax(1), run_predictions.argmax(1)), name
        np.testing.assert_allclose(there[name], run_predictions, atol=1e-5, err_msg=name)


def test_files_written_on_the_other_backend_load_here_unchanged(other_backend, trained_run, images, run_predictions):
    out, _ = other_backend
    run, _ = trained_run
    full = legacy.load_legacy_h5(out / H5)
    np.testing.assert_array_equal(predictions(full, images), run_predictions)
    with h5py.File(out / H5, "r") as theirs, h5py.File(run / H5, "r") as ours:
        assert theirs.attrs["model_config"] == ours.attrs["model_config"]
        assert theirs.attrs["training_config"] == ours.attrs["training_config"]
        for group in ("model_weights", "optimizer_weights"):
            names = []
            ours[group].visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            assert len(names) > 20
            for name in names:
                np.testing.assert_array_equal(theirs[group][name][()], ours[group][name][()], err_msg=name)
    assert (out / YAML).read_text() == (run / YAML).read_text()


@pytest.mark.tensorflow
def test_tf_keras_loads_files_written_on_the_other_backend(other_backend, images, run_predictions):
    tf_keras = import_tf_keras()
    out, _ = other_backend
    theirs = tf_keras.models.load_model(out / H5)
    assert int(theirs.optimizer.iterations.numpy()) == STEPS
    np.testing.assert_allclose(predictions(theirs, images), run_predictions, atol=1e-5)


def test_evaluate_accepts_the_original_keras2_h5(seed_dir, mnist_dir):
    result = cli("evaluate", seed_dir / H5, "--data", mnist_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["accuracy"] == pytest.approx(0.9925, abs=1e-6) and report["backend"] == BACKEND


def test_import_keeps_the_adam_state_and_export_writes_keras2_again(seed_dir, tmp_path):
    model_file = tmp_path / "original.keras"
    result = cli("legacy", "import", seed_dir / H5, "--out", model_file)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Adam at step 5628" in result.stdout
    model = load_saved_model(model_file)
    assert int(model.optimizer.iterations) == 5628
    result = cli("legacy", "export", model_file, "--h5", tmp_path / "again.h5", "--weights", tmp_path / "w.h5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.h5", "original.keras", "w.h5"]
    with h5py.File(tmp_path / "again.h5", "r") as ours, h5py.File(seed_dir / H5, "r") as original:
        for name in original["optimizer_weights"].attrs["weight_names"]:
            np.testing.assert_array_equal(ours["optimizer_weights"][name][()], original["optimizer_weights"][name][()])


def test_import_yaml_with_weights_scores_like_the_original(seed_dir, tmp_path, mnist):
    model_file = tmp_path / "from_yaml.keras"
    result = cli("legacy", "import", seed_dir / YAML, "--weights", seed_dir / WEIGHTS, "--out", model_file)
    assert result.returncode == 0, result.stderr[-2000:]
    probabilities = predictions(load_saved_model(model_file), mnist.x_test)
    assert int(np.sum(probabilities.argmax(1) == mnist.y_test)) == 9925


def test_hostile_files_are_exit_2_and_run_nothing(seed_dir, tmp_path):
    marker = tmp_path / "code-ran"
    hostile_yaml = tmp_path / "hostile.yaml"
    hostile_yaml.write_text((seed_dir / YAML).read_text().replace(
        "name: conv0\n", f'name: !!python/object/apply:os.system ["touch {marker}"]\n', 1))
    result = cli("legacy", "import", hostile_yaml, "--weights", seed_dir / WEIGHTS, "--out", tmp_path / "x.keras")
    assert_clean_error(result, str(hostile_yaml), "refused YAML tag", "python/object/apply:os.system")

    with h5py.File(seed_dir / H5, "r") as f:
        config = json.loads(f.attrs["model_config"])
    config["config"]["layers"][-1]["class_name"] = "Lambda"
    config["config"]["layers"][-1]["config"]["function"] = ["ZXZpbA==", None, None]
    hostile_h5 = tmp_path / "hostile.h5"
    with h5py.File(hostile_h5, "w") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
    result = cli("evaluate", hostile_h5)
    assert_clean_error(result, str(hostile_h5), "layer 'fco' names class 'Lambda'")
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.h5", "hostile.yaml"]


def test_bad_legacy_command_lines_are_exit_2(tmp_path, seed_dir):
    assert_clean_error(cli("legacy", "export", tmp_path / "m.keras"), "name at least one file")
    assert_clean_error(cli("legacy", "import", seed_dir / H5, "--out", tmp_path / "m.h5"), "must name a .keras file")
    truncated = tmp_path / "cut.h5"
    truncated.write_bytes((seed_dir / H5).read_bytes()[:4096])
    assert_clean_error(cli("legacy", "import", truncated, "--out", tmp_path / "m.keras"), str(truncated), "HDF5")
    assert not (tmp_path / "m.keras").exists()
