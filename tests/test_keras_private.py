"""The Keras-private names the package relies on still exist and behave as it expects, on the installed Keras.

When a Keras release renames or changes one, these tests fail with a
``KerasPrivateError`` that names the Keras version and the name; the fix is to
pin Keras or to update ``mnist_multibackend/keras_private.py``, the only module
allowed to touch them (checked here too).
"""

import json
import re

import h5py
import keras
import numpy as np
import pytest

from conftest import REPO
from mnist_multibackend import keras_private, legacy

# What only keras_private.py may mention in the package's source.
PRIVATE_PATTERNS = [r"\bkeras\.src",  # not tf_keras.src, a module name Keras 2 configs carry
                    r"global_state", r"uninitialized_variables", r"\._momentums", r"\._velocit",
                    r"_load_model", r"_save_model", r"_get_jax_state",
                    r"SafeModeScope", r"_weights_path", r"_training_metadata_path", r"_current_epoch",
                    r"_get_variable_index", r"_u_product", r"_backend_update_step", r"_accumulators",
                    r"_average_gradients", r"_accumulated_grads", r"_accumulated_delta_vars",
                    r"_pywrap_util_port", r"IsMklEnabled"]


def small_model(units=2) -> keras.Model:
    inputs = keras.Input((3,), name="x")
    hidden = keras.layers.Dropout(0.5, seed=1, name="dropout")(inputs)
    return keras.Model(inputs, keras.layers.Dense(units, name="dense")(hidden))


def batch(n=8):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")


def test_check_passes_on_the_installed_keras():
    keras_private.check()  # raises KerasPrivateError naming every name that is missing or changed


def test_a_missing_name_is_reported_with_the_keras_version_and_what_to_do():
    with pytest.raises(keras_private.KerasPrivateError) as caught:
        keras_private._private("keras.src.no_such_module", "load_weights_from_hdf5_group")
    message = str(caught.value)
    assert f"Keras {keras.__version__}" in message
    assert "keras.src.no_such_module.load_weights_from_hdf5_group is missing" in message
    assert "keras_private.py" in message and f"keras=={keras_private.CHECKED_ON[-1]}" in message
    with pytest.raises(keras_private.KerasPrivateError, match=r"Adam\._no_such_slots is missing"):
        keras_private._attribute(keras.optimizers.Adam(), "_no_such_slots")


def test_the_h5_attribute_writer_splits_long_lists_that_the_reader_joins(tmp_path):
    names = [f"layer_{i:05d}_with_a_long_name_{'x' * 40}" for i in range(2000)]  # > HDF5's 64 KB header limit
    with h5py.File(tmp_path / "names.h5", "w") as f:
        keras_private.save_attributes_to_hdf5_group(f, "layer_names", np.array([n.encode() for n in names], "S"))
        assert "layer_names" not in f.attrs and "layer_names0" in f.attrs  # written in chunks
    with h5py.File(tmp_path / "names.h5", "r") as f:
        assert legacy.safety.read_names(f, "layer_names", "names.h5") == names


def test_placeholder_initial_values_stay_in_their_scope_and_thread():
    import threading

    def kernel_of_a_new_dense():
        layer = keras.layers.Dense(3, kernel_initializer="glorot_uniform", bias_initializer="ones")
        layer.build((None, 2))
        return keras.ops.convert_to_numpy(layer.kernel), keras.ops.convert_to_numpy(layer.bias)

    other = {}
    with keras_private.weights_from_a_file():
        with keras_private.weights_from_a_file():  # nested: the outer scope still holds afterwards
            pass
        thread = threading.Thread(target=lambda: other.update(kernel=kernel_of_a_new_dense()[0]))
        thread.start()
        thread.join()
        inside, bias = kernel_of_a_new_dense()
    after, _ = kernel_of_a_new_dense()
    assert not inside.any() and (bias == 1).all()  # random values replaced; ones kept
    assert other["kernel"].any() and after.any()  # another thread, and after the scope: drawn as usual


def test_unallocated_builds_count_parameters_and_allocate_nothing():
    before = len(keras.src.backend.common.global_state.get_global_attribute("uninitialized_variables", None) or [])
    count = keras_private.count_unallocated_parameters(lambda: keras.Sequential(
        [keras.Input((1000,)), keras.layers.Dense(1_000_000)]))  # 4 GB if allocated
    assert count == 1000 * 1_000_000 + 1_000_000
    after = keras.src.backend.common.global_state.get_global_attribute("uninitialized_variables", None) or []
    assert len(after) == before
    with keras.StatelessScope():  # closing it would allocate whatever is still registered
        pass


def test_safe_mode_scope_refuses_a_lambda_even_when_unsafe_outside():
    text = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda x: x + 1)]).to_json()  # Python bytecode
    with keras_private.safe_mode_scope(False):  # as keras.config.enable_unsafe_deserialization() would
        assert isinstance(keras.models.model_from_json(text).layers[-1], keras.layers.Lambda)
        with keras_private.safe_mode_scope():
            with pytest.raises(ValueError, match="lambda"):
                keras.models.model_from_json(text)
    with pytest.raises(ValueError, match="lambda"):  # the outer scope ended: Keras's default, safe, again
        keras.models.model_from_json(text)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_slots_hold_one_moment_per_trainable_variable(amsgrad):
    model = small_model()
    model.compile(optimizer=keras.optimizers.Adam(amsgrad=amsgrad), loss="mse")
    model.train_on_batch(*batch())
    slots = keras_private.adam_slots(model.optimizer)
    kinds = ["m", "v", "vhat"] if amsgrad else ["m", "v"]
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    optimizer_variables = {id(v) for v in model.optimizer.variables}
    for kind in kinds:
        assert [tuple(s.shape) for s in slots[kind]] == shapes, kind
        assert all(id(s) in optimizer_variables for s in slots[kind])
        assert all(np.any(keras.ops.convert_to_numpy(s) != 0) for s in slots[kind]), f"{kind} not updated"
    assert amsgrad or slots["vhat"] == []
    # One step from zero: m = (1 - beta_1) g and v = (1 - beta_2) g**2, so m and v are not swapped when
    # v = m**2 (1 - beta_2) / (1 - beta_1)**2; amsgrad's maximum of v is v itself.
    m, v = ([keras.ops.convert_to_numpy(s) for s in slots[kind]] for kind in ("m", "v"))
    for first, second in zip(m, v):
        np.testing.assert_allclose(second, first ** 2 * 0.001 / 0.1 ** 2, rtol=1e-3)
    for vhat, second in zip(slots["vhat"], v):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(vhat), second, rtol=1e-6)


class Recorder(keras_private.BackupAndRestoreHooks):
    """Saves each epoch under its own name; restores the epoch named by ``resume_from``."""

    def __init__(self, directory, resume_from=None):
        super().__init__(backup_dir=str(directory), save_freq="epoch", delete_checkpoint=False)
        self.directory, self.resume_from = directory, resume_from
        self.restores, self.backups, self.restored_iterations = 0, [], None

    def restore(self):
        self.restores += 1
        if self.resume_from is not None:
            epoch = self.resume_from
            self.load_backup(self.directory / f"{epoch}.weights.h5", self.directory / f"{epoch}.json")
            self.restored_iterations = int(self.model.optimizer.iterations)

    def backup(self):
        epoch = self.epochs_done
        self.model.save_weights(self.directory / f"{epoch}.weights.h5")
        (self.directory / f"{epoch}.json").write_text(json.dumps({"epoch": epoch}))
        self.backups.append(epoch)


def test_backup_and_restore_calls_the_hooks_and_restores_through_keras(tmp_path):
    x, y = batch(16)
    model = small_model()
    model.compile(optimizer="adam", loss="mse")
    first = Recorder(tmp_path)
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[first], verbose=0)
    assert first.restores == 1 and first.backups == [1, 2, 3]

    again = small_model()
    again.compile(optimizer="adam", loss="mse")
    second = Recorder(tmp_path, resume_from=1)
    history = again.fit(x, y, batch_size=8, epochs=3, callbacks=[second], verbose=0)
    assert second.restored_iterations == 2  # epoch 1's two steps, with the weights and moments
    assert history.epoch == [1, 2] and second.backups == [2, 3]  # fit started after the restored epoch


def test_the_seed_generator_states_are_what_dropout_draws_from():
    model = small_model()
    (state,) = keras_private.seed_generator_states(model)
    assert tuple(state.shape) == (2,)
    x = np.ones((4, 3), "float32")
    start = keras.ops.convert_to_numpy(state.value)
    first = keras.ops.convert_to_numpy(model(x, training=True))
    assert not np.array_equal(keras.ops.convert_to_numpy(state.value), start)  # drawing advanced it
    state.assign(start)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x, training=True)), first)


@pytest.mark.jax
def test_jax_train_state_is_what_train_step_takes():
    import jax

    model = small_model()
    model.compile(optimizer="adam", loss="mse")
    x, y = batch()
    model.train_on_batch(x, y)
    state = keras_private.jax_train_state(model)
    groups = (model.trainable_variables, model.non_trainable_variables, model.optimizer.variables,
              model.metrics_variables)
    assert len(state) == 4
    for values, variables in zip(state, groups):
        assert len(values) == len(variables)
        for value, variable in zip(values, variables):
            np.testing.assert_array_equal(np.asarray(value), keras.ops.convert_to_numpy(variable))
    logs, new_state = jax.jit(model.train_step)(state, (x, y, None))
    assert jax.tree.structure(new_state) == jax.tree.structure(state) and np.isfinite(float(logs["loss"]))


@pytest.mark.tensorflow
def test_the_onednn_state_is_what_tensorflow_decided_at_import():
    import os

    from tensorflow.python.framework import test_util  # TensorFlow's own test helper over the same call

    assert keras_private.tensorflow_onednn_enabled() is test_util.IsMklEnabled()
    chosen = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    if chosen in ("0", "1"):
        assert keras_private.tensorflow_onednn_enabled() is (chosen == "1")


def test_no_other_module_touches_keras_private_names():
    package = REPO / "mnist_multibackend"
    sources = {path: path.read_text() for path in package.rglob("*.py")}
    gate = package / "keras_private.py"
    assert gate in sources and package / "legacy" / "files.py" in sources
    offenders = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
                 for path, text in sources.items() if path != gate
                 for number, line in enumerate(text.splitlines(), 1)
                 if any(re.search(pattern, line) for pattern in PRIVATE_PATTERNS)]
    assert offenders == [], "only mnist_multibackend/keras_private.py may use Keras-private names"
    # The list is not stale: keras_private.py names every one (as a string where it reaches it with getattr).
    names = [p.replace("\\b", "").replace("\\", "").lstrip(".") for p in PRIVATE_PATTERNS]
    assert [name for name in names if name not in sources[gate]] == []
