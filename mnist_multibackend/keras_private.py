"""Every Keras-private name the package relies on, behind small named functions.

Keras promises nothing about these names; a release may rename or remove any of
them. No other module of the package touches them (``tests/test_keras_private.py``
checks that, and checks each one's behaviour on the installed Keras), so a Keras
upgrade that breaks one breaks here, and ``check()`` says which.

Checked on Keras 3.15.1 (TensorFlow 2.21.0 and JAX 0.10.2 backends); ``CHECKED_ON`` lists
the releases.

Each name, what it is needed for, and why no public API serves:

- ``keras.src.legacy.saving.legacy_h5_format``: ``save_attributes_to_hdf5_group``.
  Writing Keras 2 name lists (split into chunks beyond HDF5's 64 KB header limit),
  in ``legacy.weights`` and ``legacy.optimizer``. No public API writes Keras 2 files.
  (Reading them is ``legacy.safety``'s own: Keras's reader reads each array before
  it compares its shape with the model's.)
- ``keras.src.saving.serialization_lib.SafeModeScope`` (and ``in_safe_mode``, for
  ``check``). Building a model from an untrusted Keras 2 config in safe mode even
  when the process enabled unsafe deserialization, in ``legacy.architecture``.
  Public ``keras.saving.deserialize_keras_object(config, safe_mode=True)`` gives
  way to a process-wide ``keras.config.enable_unsafe_deserialization()`` (Keras
  3.15 lets the global flag win), so it does not promise that.
- ``keras.src.backend.common.global_state``: the list of uninitialised variables
  (``get_global_attribute`` / ``set_global_attribute("uninitialized_variables")``).
  Counting the parameters an untrusted config asks for by building it inside
  ``keras.StatelessScope(initialize_variables=False)`` (variables get shapes but
  no memory), then forgetting those variables, so that the next stateless scope
  does not allocate them after all; in ``legacy.architecture``. No public API
  builds a model without allocating its weights.
- ``keras.src.initializers.random_initializers.RandomInitializer`` and the backend
  variable's ``_initialize_with_initializer``. Building a model
  whose every weight is then read from a file with placeholder zeros for the random
  initial values (``weights_from_a_file``), in ``loading`` and ``legacy.files``: on
  JAX each random initializer compiles an XLA program per shape, 2-4 s of every
  load of this CNN for values thrown away. No public API builds a model without
  drawing its initial values.
- The per-weight state lists of the built-in optimizers (``Adam._momentums``,
  ``_velocities``, ``_velocity_hats``; ``RMSprop._average_gradients``;
  ``Adagrad._accumulators``; ``Adadelta._accumulated_grads``,
  ``_accumulated_delta_vars``; ``Adamax._m``, ``_u``), ``Nadam._u_product`` and
  ``Optimizer._get_variable_index``. Reading and writing Keras 2's optimizer
  state (per trainable weight), in ``legacy.optimizer``, and the Keras 2 updates
  of ``legacy.keras2_optimizers``. ``optimizer.variables`` holds them, but not by
  kind or weight.
- ``Optimizer._backend_update_step``, the hook Keras calls once per step before
  the per-weight ``update_step`` calls (Keras's Nadam updates its momentum product
  there): ``StepStartHook`` overrides it for Keras 2's Nadam schedule. No public
  hook runs once per step on every backend.
- ``BackupAndRestore._load_model`` and ``_save_model`` (the hooks it calls),
  ``_weights_path``, ``_training_metadata_path``, ``_current_epoch``. Atomic
  per-epoch checkpoints that still use Keras's own restore and epoch hand-over,
  in ``callbacks.TrainingCheckpoint``. No public hook exists.
- The ``SeedGenerator`` states (dropout's) are the ``model.variables`` that are
  not ``model.weights``: public names, undocumented behaviour. Saving and
  restoring the dropout seeds, in ``callbacks.TrainingCheckpoint``.
- JAX backend: ``model._get_jax_state``. The state tuple ``model.train_step``
  takes on JAX, in ``benchmarks/profile_jax.py`` and
  ``benchmarks/jax_cpu_remedies.py`` (``jax_train_state``).
- TensorFlow-private, not Keras's, but kept here so that one module holds every
  private name: ``tensorflow.python.util._pywrap_util_port.IsMklEnabled``, whether
  TensorFlow's oneDNN kernels are on in this process (``tensorflow_onednn_enabled``),
  recorded with every result (``runtime.onednn_state``) and shown by ``mnist-mb doctor``.
  TensorFlow decides it at import from ``TF_ENABLE_ONEDNN_OPTS`` and the CPU's
  features; no public API tells.

Import this module only after ``runtime.start()`` has chosen the backend.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import tempfile
import threading

import keras
import numpy as np

from .errors import first_line

CHECKED_ON = ("3.15.1",)

_LEGACY_H5 = "keras.src.legacy.saving.legacy_h5_format"
_SERIALIZATION = "keras.src.saving.serialization_lib"
_GLOBAL_STATE = "keras.src.backend.common.global_state"
_RANDOM_INITIALIZERS = "keras.src.initializers.random_initializers"


class KerasPrivateError(RuntimeError):
    """A Keras-private name the package needs is missing or behaves differently in the installed Keras."""

    def __init__(self, problems):
        problems = [problems] if isinstance(problems, str) else list(problems)
        self.problems = problems
        super().__init__(
            f"Keras {keras.__version__} breaks what mnist_multibackend relies on: {'; '.join(problems)}. "
            f"It was checked on Keras {', '.join(CHECKED_ON)}: install that (pip install 'keras=={CHECKED_ON[-1]}') "
            "or update mnist_multibackend/keras_private.py for this release.")


def _private(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise KerasPrivateError(f"{module}.{name} is missing") from None


def _attribute(obj, name: str):
    try:
        return getattr(obj, name)
    except AttributeError:
        raise KerasPrivateError(f"{type(obj).__name__}.{name} is missing") from None


# --------------------------------------------------------------------------- Keras 2 HDF5 groups

def save_attributes_to_hdf5_group(group, name: str, data) -> None:
    """Write an attribute list, split into chunks as Keras 2 did when it exceeds HDF5's 64 KB header limit."""
    _private(_LEGACY_H5, "save_attributes_to_hdf5_group")(group, name, data)


# --------------------------------------------------------------------------- safe mode

def safe_mode_scope(safe_mode: bool = True):
    """Context manager: Keras deserializes in ``safe_mode`` inside it, whatever the process set outside."""
    return _private(_SERIALIZATION, "SafeModeScope")(safe_mode)


# --------------------------------------------------------------------------- unallocated builds

def count_unallocated_parameters(build) -> int:
    """The number of values in the weights of the model ``build()`` returns, built without allocating them.

    ``build`` runs inside ``keras.StatelessScope(initialize_variables=False)``:
    its variables get shapes but no values, and are forgotten afterwards (Keras
    would otherwise allocate them when the next stateless scope closes). The
    model it returns is unusable; build the real one afterwards.
    """
    get, set_ = _private(_GLOBAL_STATE, "get_global_attribute"), _private(_GLOBAL_STATE, "set_global_attribute")
    before = list(get("uninitialized_variables", None) or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            model = build()
        return sum(math.prod(weight.shape) for weight in model.weights)
    finally:
        set_("uninitialized_variables", before)


# --------------------------------------------------------------------------- models whose weights come from a file

# The swapped method serves every thread; only threads inside weights_from_a_file() get placeholders.
_PLACEHOLDERS = threading.local()
_SWAP_LOCK = threading.Lock()
_swap = {"users": 0, "original": None}


@contextlib.contextmanager
def weights_from_a_file():
    """Inside, a variable whose initializer draws random numbers starts as zeros made by NumPy instead.

    For building a model whose every weight is then read from a file (the
    readers check that each one is): the random values would be thrown away,
    and on JAX drawing them compiles an XLA program per shape. Variables with
    other initializers (zeros, ones, a dropout layer's seed) start as usual, and
    so does every variable another thread makes meanwhile.
    """
    random_initializer = _private(_RANDOM_INITIALIZERS, "RandomInitializer")
    variable_class = keras.Variable
    with _SWAP_LOCK:
        if _swap["users"] == 0:
            original = _attribute(variable_class, "_initialize_with_initializer")

            def initialize(variable, initializer):
                if getattr(_PLACEHOLDERS, "depth", 0) and isinstance(initializer, random_initializer) \
                        and _numpy_dtype(variable.dtype) is not None:
                    initializer = _zeros
                return original(variable, initializer)

            _swap["original"] = original
            variable_class._initialize_with_initializer = initialize
        _swap["users"] += 1
    _PLACEHOLDERS.depth = getattr(_PLACEHOLDERS, "depth", 0) + 1
    try:
        yield
    finally:
        _PLACEHOLDERS.depth -= 1
        with _SWAP_LOCK:
            _swap["users"] -= 1
            if _swap["users"] == 0:
                variable_class._initialize_with_initializer = _swap["original"]


def _numpy_dtype(name):
    try:
        return np.dtype(name)
    except TypeError:  # bfloat16, which NumPy does not know by name: its values are drawn after all
        return None


def _zeros(shape, dtype=None):
    return np.zeros(shape, _numpy_dtype(dtype))


# --------------------------------------------------------------------------- Adam state

def adam_slots(optimizer) -> dict:
    """A built Adam's state variables: ``{"m": [...], "v": [...], "vhat": [...]}``, each in the order of
    ``model.trainable_variables`` (``vhat`` is empty without amsgrad)."""
    slots = optimizer_slots(optimizer)
    return {"m": slots["momentum"], "v": slots["velocity"], "vhat": slots["velocity_hat"]}


# Where each built-in optimizer keeps its per-weight state: {slot name given to add_optimizer_variables:
# attribute}. An attribute marked OPTIONAL is set only when its option is on (Adam's amsgrad).
OPTIONAL = "?"
_OPTIMIZER_SLOTS = {
    "SGD": {"momentum": "momentums"},
    "RMSprop": {"velocity": "_velocities", "momentum": "_momentums", "average_gradient": "_average_gradients"},
    "Adagrad": {"accumulator": "_accumulators"},
    "Adadelta": {"accumulated_grad": "_accumulated_grads", "accumulated_delta_var": "_accumulated_delta_vars"},
    "Adam": {"momentum": "_momentums", "velocity": "_velocities", "velocity_hat": "_velocity_hats" + OPTIONAL},
    "Adamax": {"momentum": "_m", "norm": "_u"},
    "Nadam": {"momentum": "_momentums", "velocity": "_velocities"},
}


def optimizer_slots(optimizer) -> dict:
    """A built optimizer's per-weight state, ``{slot name: [variables]}`` in the order of the trainable
    variables it was built on; a slot its settings leave out (SGD's momentum at 0) is ``[]``."""
    for name, slots in _OPTIMIZER_SLOTS.items():
        if isinstance(optimizer, getattr(keras.optimizers, name)):
            return {slot: list((getattr(optimizer, attribute[:-1], None) or []) if attribute.endswith(OPTIONAL)
                               else _attribute(optimizer, attribute)) for slot, attribute in slots.items()}
    raise TypeError(f"{type(optimizer).__name__} is not one of {sorted(_OPTIMIZER_SLOTS)}")


def slot_of(optimizer, slot: str, variable):
    """The ``slot`` state that a built optimizer keeps for trainable ``variable`` (as ``update_step`` sees it)."""
    return optimizer_slots(optimizer)[slot][_attribute(optimizer, "_get_variable_index")(variable)]


def nadam_momentum_product(optimizer):
    """Nadam's running product of its momentum schedule (Keras 2's ``m_schedule``), a scalar variable."""
    return _attribute(optimizer, "_u_product")


class StepStartHook:
    """Mixin for an optimizer that updates shared state once per step before the per-weight updates:
    ``at_step_start()`` runs instead of its parent's own per-step work (Keras's Nadam's momentum product)."""

    def at_step_start(self) -> None:
        raise NotImplementedError

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        self.at_step_start()
        # keras.optimizers.Optimizer's, i.e. the backend's: tf.distribute's merge call on TensorFlow
        keras.optimizers.Optimizer._backend_update_step(self, grads, trainable_variables, learning_rate)


# --------------------------------------------------------------------------- BackupAndRestore

class BackupAndRestoreHooks(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` with its private hooks under public names.

    Keras calls ``restore()`` when ``fit`` starts and ``backup()`` at every save
    (each epoch end with ``save_freq="epoch"``). ``load_backup`` runs Keras's own
    loader on the given files; ``epochs_done`` counts the epochs completed.
    """

    def restore(self) -> None:
        """Override: load the training state, if any, when ``fit`` starts."""

    def backup(self) -> None:
        """Override: save the training state."""

    @property
    def epochs_done(self) -> int:
        """Epochs completed so far in this ``fit``, counted from 1 (restored ones included)."""
        return self._current_epoch

    def load_backup(self, weights_path, metadata_path) -> None:
        """Keras's own loader: builds the optimizer, loads the weights and optimizer variables from
        ``weights_path`` and makes ``fit`` start after the epoch named in the JSON ``metadata_path``."""
        self._weights_path = str(weights_path)
        self._training_metadata_path = str(metadata_path)
        keras.callbacks.BackupAndRestore._load_model(self)

    # Keras's private hooks
    def _load_model(self):
        self.restore()

    def _save_model(self):
        self.backup()


# --------------------------------------------------------------------------- random generators

def seed_generator_states(model: keras.Model) -> list:
    """The model's random generator states (the dropout layers'), in the model's variable order."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


# --------------------------------------------------------------------------- JAX training state

def jax_train_state(model: keras.Model) -> tuple:
    """JAX backend: ``(trainable, non_trainable, optimizer, metrics)`` variable values, the state that
    ``model.train_step`` takes; build the optimizer and metrics first (one ``train_on_batch``)."""
    return _attribute(model, "_get_jax_state")(trainable_variables=True, non_trainable_variables=True,
                                               optimizer_variables=True, metrics_variables=True)


# --------------------------------------------------------------------------- TensorFlow's oneDNN

_TF_UTIL_PORT = "tensorflow.python.util._pywrap_util_port"


def tensorflow_onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN kernels in this process (imports TensorFlow if it is not loaded)."""
    return bool(_private(_TF_UTIL_PORT, "IsMklEnabled")())


# --------------------------------------------------------------------------- check

def _tiny_model() -> keras.Model:
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2, name="dense")(keras.layers.Dropout(0.5, seed=1, name="dropout")(inputs))
    return keras.Model(inputs, outputs)


def _check_h5_functions() -> None:
    import h5py

    names = [f"layer_{i:05d}_{'x' * 60}" for i in range(1200)]  # over HDF5's 64 KB header limit: chunks
    with tempfile.TemporaryFile() as handle, h5py.File(handle, "w") as f:
        save_attributes_to_hdf5_group(f, "layer_names", np.array([name.encode("utf8") for name in names]))
        chunks = [f"layer_names{i}" for i in range(len(f.attrs)) if f"layer_names{i}" in f.attrs]
        written = [bytes(n).decode("utf8") for chunk in chunks for n in f.attrs[chunk]]
    if "layer_names" in chunks or len(chunks) < 2 or written != names:
        raise KerasPrivateError(f"{_LEGACY_H5}.save_attributes_to_hdf5_group no longer writes long name lists "
                                "in chunks layer_names0, layer_names1 ...")


def _check_safe_mode() -> None:
    in_safe_mode = _private(_SERIALIZATION, "in_safe_mode")
    before = in_safe_mode()
    with safe_mode_scope(False):
        with safe_mode_scope(True):
            inside = in_safe_mode()
    if inside is not True or in_safe_mode() != before:
        raise KerasPrivateError(f"{_SERIALIZATION}.SafeModeScope no longer sets safe mode for its scope only")


def _check_unallocated_parameters() -> None:
    get = _private(_GLOBAL_STATE, "get_global_attribute")
    before = len(get("uninitialized_variables", None) or [])
    count = count_unallocated_parameters(lambda: keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    if count != 8 or len(get("uninitialized_variables", None) or []) != before:
        raise KerasPrivateError(f"a build in keras.StatelessScope(initialize_variables=False) counts {count} "
                                "parameters for Dense(2) on 3 inputs (not 8), or its variables stay registered "
                                f"in {_GLOBAL_STATE} 'uninitialized_variables'")


def _check_adam_slots() -> None:
    variables = [keras.Variable(np.zeros((2, 3)), name="a"), keras.Variable(np.zeros(4), name="b")]
    for amsgrad in (False, True):
        optimizer = keras.optimizers.Adam(amsgrad=amsgrad)
        optimizer.build(variables)
        slots = adam_slots(optimizer)
        for kind in ("m", "v") + (("vhat",) if amsgrad else ()):
            if [tuple(s.shape) for s in slots[kind]] != [tuple(v.shape) for v in variables]:
                raise KerasPrivateError(f"Adam's '{kind}' slots no longer follow the trainable variables")
        if not amsgrad and slots["vhat"]:
            raise KerasPrivateError("Adam without amsgrad has _velocity_hats")


def _check_optimizer_slots() -> None:
    variables = [keras.Variable(np.zeros((2, 3)), name="a"), keras.Variable(np.zeros(4), name="b")]
    every_option = {"SGD": {"momentum": 0.5}, "RMSprop": {"momentum": 0.5, "centered": True}, "Adam": {"amsgrad": True}}
    for name, slots in _OPTIMIZER_SLOTS.items():
        optimizer = getattr(keras.optimizers, name)(**every_option.get(name, {}))
        optimizer.build(variables)
        found = optimizer_slots(optimizer)
        state = {id(v) for v in optimizer.variables}
        for slot, held in found.items():
            if [tuple(s.shape) for s in held] != [tuple(v.shape) for v in variables] or \
                    not all(id(s) in state for s in held):
                raise KerasPrivateError(f"{name}'s '{slot}' slots no longer follow the trainable variables")
            if slot_of(optimizer, slot, variables[1]) is not held[1]:
                raise KerasPrivateError(f"{name}._get_variable_index no longer indexes its slots")
    if tuple(nadam_momentum_product(_built(keras.optimizers.Nadam(), variables)).shape) != ():
        raise KerasPrivateError("Nadam._u_product is no longer a scalar")
    if "_backend_update_step" not in vars(keras.optimizers.Nadam):
        raise KerasPrivateError("Nadam no longer updates its momentum product in _backend_update_step")

    class Counting(StepStartHook, keras.optimizers.SGD):
        starts = 0

        def at_step_start(self):
            self.starts += 1

    optimizer = Counting(learning_rate=1.0)
    optimizer.apply([np.ones((2, 3), "float32"), np.ones(4, "float32")], variables)
    if optimizer.starts != 1 or float(keras.ops.convert_to_numpy(variables[1])[0]) != -1.0:
        raise KerasPrivateError("Optimizer._backend_update_step no longer runs once per step around update_step")


def _built(optimizer, variables):
    optimizer.build(variables)
    return optimizer


def _check_weights_from_a_file() -> None:
    with weights_from_a_file():
        layer = keras.layers.Dense(3, kernel_initializer="glorot_uniform", bias_initializer="ones")
        layer.build((None, 2))
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in (layer.kernel, layer.bias))
    if kernel.any() or not (bias == 1).all():
        raise KerasPrivateError("weights_from_a_file no longer replaces random initial values, and only those")
    after = keras.layers.Dense(3, kernel_initializer="glorot_uniform")
    after.build((None, 2))
    if not keras.ops.convert_to_numpy(after.kernel).any():
        raise KerasPrivateError("weights_from_a_file left its placeholder initial values in place after it ended")


def _check_backup_and_restore() -> None:
    hooks = ("_load_model", "_save_model")
    attributes = ("_weights_path", "_training_metadata_path", "_current_epoch")
    callback = keras.callbacks.BackupAndRestore(backup_dir="unused")
    missing = ([f"BackupAndRestore.{name} is missing" for name in hooks
                if not callable(getattr(keras.callbacks.BackupAndRestore, name, None))]
               + [f"BackupAndRestore().{name} is missing" for name in attributes if not hasattr(callback, name)])
    if missing:
        raise KerasPrivateError(missing)


def _check_seed_generator_states() -> None:
    model = _tiny_model()
    states = seed_generator_states(model)
    if len(states) != 1 or tuple(states[0].shape) != (2,):
        raise KerasPrivateError(f"a model with one Dropout has {len(states)} non-weight variables "
                                f"{[v.path for v in states]}, not one SeedGenerator state of shape (2,)")


def _check_jax_state() -> None:
    if keras.backend.backend() != "jax":
        return
    model = _tiny_model()
    model.compile(optimizer="adam", loss="mse")
    model.train_on_batch(np.zeros((2, 3), "float32"), np.zeros((2, 2), "float32"))
    state = jax_train_state(model)
    expected = (len(model.trainable_variables), len(model.non_trainable_variables), len(model.optimizer.variables),
                len(model.metrics_variables))
    if len(state) != 4 or tuple(map(len, state)) != expected:
        raise KerasPrivateError(f"model._get_jax_state gives {len(state)} groups, not the 4 that train_step takes")


def _check_tensorflow_onednn() -> None:
    if keras.backend.backend() != "tensorflow":  # a JAX process does not load TensorFlow to ask
        return
    enabled = _private(_TF_UTIL_PORT, "IsMklEnabled")()
    wanted = {"1": True, "0": False}.get(os.environ.get("TF_ENABLE_ONEDNN_OPTS", ""))
    if not isinstance(enabled, bool) or wanted not in (None, enabled):
        raise KerasPrivateError(f"{_TF_UTIL_PORT}.IsMklEnabled() gives {enabled!r} with TF_ENABLE_ONEDNN_OPTS="
                                f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS')}")


CHECKS = {"legacy HDF5 groups": _check_h5_functions, "SafeModeScope": _check_safe_mode,
          "unallocated builds": _check_unallocated_parameters,
          "Adam slots": _check_adam_slots, "optimizer slots": _check_optimizer_slots,
          "BackupAndRestore hooks": _check_backup_and_restore, "weights from a file": _check_weights_from_a_file,
          "seed generator states": _check_seed_generator_states, "JAX train state": _check_jax_state,
          "TensorFlow oneDNN state": _check_tensorflow_onednn}


def check() -> None:
    """Verify every private name above on the installed Keras; raise ``KerasPrivateError`` naming each problem."""
    problems = []
    for what, check_one in CHECKS.items():
        try:
            check_one()
        except KerasPrivateError as err:
            problems += err.problems
        except Exception as err:  # noqa: BLE001 - a changed signature or behaviour: name it with its check
            problems.append(f"{what}: {type(err).__name__}: {first_line(err, limit=200)}")
    if problems:
        raise KerasPrivateError(problems)
