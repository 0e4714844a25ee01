"""Every Keras 2 optimizer's training config and state, read and written as Keras 2 does.

The reference is ``tf_keras`` 2.21 (real Keras 2): its legacy optimizers
(``tf_keras.optimizers.legacy``, what its ``load_model`` builds from a Keras 2
``training_config``) train a tiny Conv2D + BatchNormalization + Dense model for a
few steps and save it. The file loads here with every slot of the optimizer
state; three more steps here and three in tf_keras from the same file give the
same weights; and what ``save_legacy_h5`` writes, tf_keras loads with that state.
Older dialects (Keras 2.0-2.2's numbered variables, TF 2.0's saved
hyperparameters, Keras 2.1.3's amsgrad placeholders) are forged from those files
with h5py, as their Keras releases wrote them.
"""

import json
import re
import shutil
from dataclasses import dataclass

import h5py
import keras
import numpy as np
import pytest

from conftest import import_tf_keras
from mnist_multibackend import keras_private, legacy
from mnist_multibackend.errors import InputError

# case -> (tf_keras legacy class, its arguments, Keras 3 class here, Keras 3 slots in tf_keras's get_weights order).
# Epsilons are large enough that where it is added (inside or outside a square root) shows in the weights.
CASES = {
    "sgd": ("SGD", dict(learning_rate=0.05, decay=0.02), keras.optimizers.SGD, ()),
    "sgd_momentum": ("SGD", dict(learning_rate=0.05, momentum=0.8, decay=0.02), keras.optimizers.SGD,
                     ("momentum",)),
    "sgd_nesterov": ("SGD", dict(learning_rate=0.05, momentum=0.7, nesterov=True), keras.optimizers.SGD,
                     ("momentum",)),
    "rmsprop": ("RMSprop", dict(learning_rate=0.01, rho=0.8, epsilon=1e-3, decay=0.02), legacy.Keras2RMSprop,
                ("velocity",)),
    "rmsprop_momentum": ("RMSprop", dict(learning_rate=0.01, rho=0.8, momentum=0.5, epsilon=1e-3),
                         legacy.Keras2RMSprop, ("velocity", "momentum")),
    "rmsprop_centered": ("RMSprop", dict(learning_rate=0.01, centered=True, epsilon=1e-3), legacy.Keras2RMSprop,
                         ("velocity", "average_gradient")),
    "rmsprop_centered_momentum": ("RMSprop", dict(learning_rate=0.01, momentum=0.5, centered=True, epsilon=1e-3),
                                  legacy.Keras2RMSprop, ("velocity", "momentum", "average_gradient")),
    "adagrad": ("Adagrad", dict(learning_rate=0.05, initial_accumulator_value=0.01, epsilon=1e-2, decay=0.02),
                legacy.Keras2Adagrad, ("accumulator",)),
    "adadelta": ("Adadelta", dict(learning_rate=0.5, rho=0.9, epsilon=1e-4, decay=0.02), keras.optimizers.Adadelta,
                 ("accumulated_grad", "accumulated_delta_var")),
    "adam": ("Adam", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-4, decay=0.02),
             keras.optimizers.Adam, ("momentum", "velocity")),
    "adam_amsgrad": ("Adam", dict(learning_rate=0.01, amsgrad=True), keras.optimizers.Adam,
                     ("momentum", "velocity", "velocity_hat")),
    "adamax": ("Adamax", dict(learning_rate=0.01, beta_1=0.8, epsilon=1e-4, decay=0.02), keras.optimizers.Adamax,
               ("momentum", "norm")),
    "nadam": ("Nadam", dict(learning_rate=0.01, beta_1=0.85, epsilon=1e-4), legacy.Keras2Nadam,
              ("momentum", "velocity")),
}
SAVED_STEPS, MORE_STEPS = 3, 3
RNG = np.random.default_rng(7)
BATCHES = [(RNG.normal(size=(8, 6, 6, 1)).astype("float32"), np.eye(4, dtype="float32")[RNG.integers(0, 4, 8)])
           for _ in range(SAVED_STEPS + MORE_STEPS + 1)]


@dataclass
class Reference:
    path: object  # the .h5 tf_keras saved after SAVED_STEPS steps
    state: list  # its optimizer's get_weights(): iterations, (Nadam's momentum cache), slots
    config: dict  # its optimizer's get_config()
    continued: dict  # {layer/weight: array} after MORE_STEPS more steps in tf_keras from the file


def tf_keras_model(tf_keras):
    # The convolution's ReLU gives its bias a real gradient: straight into batch normalisation it would be
    # round-off, which Adam-like optimizers amplify differently in each implementation.
    layers = tf_keras.layers
    return tf_keras.Sequential([layers.Conv2D(3, 3, activation="relu", input_shape=(6, 6, 1), name="conv"),
                                layers.BatchNormalization(name="norm"), layers.Flatten(name="flat"),
                                layers.Dense(4, activation="softmax", name="out")])


def weights_by_name(model) -> dict:
    """The trainable weights, which the optimizer moves. (Batch normalisation's moving variance differs by
    design: tf_keras's fused kernel averages the unbiased batch variance, Keras 3 the biased one.)"""
    return {f"{layer.name}/{i}": keras.ops.convert_to_numpy(w) for layer in model.layers
            for i, w in enumerate(layer.trainable_weights)}


def train(model, batches):
    model.run_eagerly = True  # a few steps of a tiny model: tracing would take most of the time
    for x, y in batches:
        model.train_on_batch(x, y)


@pytest.fixture(scope="module")
def tf_keras():
    return import_tf_keras()


@pytest.fixture(scope="module")
def reference(tf_keras, tmp_path_factory):
    """``reference(case)``: the tf_keras file of ``case`` and what tf_keras makes of it, built once per module."""
    built = {}

    def get(case):
        if case not in built:
            name, arguments, _, _ = CASES[case]
            tf_keras.utils.set_random_seed(0)
            model = tf_keras_model(tf_keras)
            model.compile(optimizer=getattr(tf_keras.optimizers.legacy, name)(**arguments),
                          loss="categorical_crossentropy", metrics=["accuracy"])
            train(model, BATCHES[:SAVED_STEPS])
            path = tmp_path_factory.mktemp(case) / f"{case}.h5"
            model.save(path)
            theirs = tf_keras.models.load_model(path)
            train(theirs, BATCHES[SAVED_STEPS:SAVED_STEPS + MORE_STEPS])
            built[case] = Reference(path, [np.asarray(w) for w in model.optimizer.get_weights()],
                                    model.optimizer.get_config(), weights_by_name(theirs))
        return built[case]

    return get


def keras2_state(model, case) -> list:
    """Our optimizer's state in tf_keras's ``get_weights`` order, by the slot order CASES gives for ``case``."""
    optimizer = model.optimizer
    slots = keras_private.optimizer_slots(optimizer)
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    weights = [w for layer in model.layers for w in layer.trainable_weights]
    kinds = CASES[case][3]
    state = [keras.ops.convert_to_numpy(optimizer.iterations)]
    if isinstance(optimizer, legacy.Keras2Nadam):
        state.append(keras.ops.convert_to_numpy(keras_private.nadam_momentum_product(optimizer)))
    return state + [keras.ops.convert_to_numpy(slots[kind][index[id(w)]]) for kind in kinds for w in weights]


def assert_state_equal(ours: list, theirs: list, exact=True):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert np.shape(a) == np.shape(b), i
        if exact:
            np.testing.assert_array_equal(a, b, err_msg=str(i))
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=str(i))


def assert_weights_close(ours: dict, theirs: dict):
    """Float32 training of a few steps in two implementations: same to 1e-5 of each weight's scale."""
    assert ours.keys() == theirs.keys()
    for name, a in ours.items():
        scale = max(1.0, float(np.abs(theirs[name]).max()))
        np.testing.assert_allclose(a, theirs[name], rtol=0, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_a_tf_keras_file_loads_with_its_optimizer_and_every_slot(case, reference):
    """tf.keras 2.x's legacy dialect (tf_keras 2.21 writes it): ``learning_rate``, ``SGD/iter:0``, slots named
    after their weight (``RMSprop/conv/kernel/rms:0``)."""
    _, arguments, expected_class, _ = CASES[case]
    ref = reference(case)
    ours = legacy.load_legacy_h5(ref.path)
    optimizer = ours.optimizer
    assert type(optimizer) is expected_class
    config = optimizer.get_config()
    for option, value in arguments.items():
        if option == "learning_rate" and arguments.get("decay"):
            schedule = keras.optimizers.schedules.deserialize(config["learning_rate"])
            assert (schedule.initial_learning_rate, schedule.decay_rate) == pytest.approx((value, arguments["decay"]))
        elif option != "decay":
            assert config[option] == pytest.approx(value), option
    if isinstance(optimizer, legacy.Keras2Nadam):
        assert optimizer.schedule_decay == pytest.approx(0.004)
    assert int(optimizer.iterations) == SAVED_STEPS
    assert_state_equal(keras2_state(ours, case), ref.state)
    assert len(ref.state) == 1 or any(np.any(a != 0) for a in ref.state[1:])  # SGD without momentum: none


@pytest.mark.parametrize("case", CASES)
def test_training_continues_on_keras_2s_trajectory(case, reference):
    """Three more steps here and in tf_keras, both from tf_keras's file, give the same weights."""
    ref = reference(case)
    ours = legacy.load_legacy_h5(ref.path)
    before = weights_by_name(ours)
    train(ours, BATCHES[SAVED_STEPS:SAVED_STEPS + MORE_STEPS])
    assert int(ours.optimizer.iterations) == SAVED_STEPS + MORE_STEPS
    after = weights_by_name(ours)
    assert max(np.abs(after[k] - before[k]).max() for k in after) > 1e-3  # the steps moved the weights
    assert_weights_close(after, ref.continued)


@pytest.mark.parametrize("case", CASES)
def test_what_we_write_tf_keras_loads_with_the_state_and_continues_alike(case, reference, tf_keras, tmp_path):
    """``save_legacy_h5`` writes Keras 2.1.2's layout (``SGD/iterations:0``, ``training/SGD/Variable_N:0``);
    tf_keras's ``load_model`` reads every slot, and one more step on each side agrees."""
    ref = reference(case)
    ours = legacy.load_legacy_h5(ref.path)
    train(ours, BATCHES[SAVED_STEPS:SAVED_STEPS + 1])
    legacy.save_legacy_h5(ours, tmp_path / "ours.h5")
    with h5py.File(tmp_path / "ours.h5", "r") as f:
        names = [n.decode() for n in f["optimizer_weights"].attrs["weight_names"]]
        optimizer_config = json.loads(f.attrs["training_config"])["optimizer_config"]
    name = CASES[case][0]
    assert names[0] == f"{name}/iterations:0" and all(re.fullmatch(rf"training/{name}/Variable(_\d+)?:0", n)
                                                       for n in names[1 + (name == "Nadam"):])
    assert optimizer_config["class_name"] == name and "lr" in optimizer_config["config"]
    theirs = tf_keras.models.load_model(tmp_path / "ours.h5")
    assert type(theirs.optimizer).__name__ == name and "legacy" in type(theirs.optimizer).__module__
    for option in ("momentum", "nesterov", "rho", "centered", "epsilon", "beta_1", "beta_2", "amsgrad",
                   "initial_accumulator_value", "decay"):
        if option in ref.config:
            assert theirs.optimizer.get_config()[option] == pytest.approx(ref.config[option]), option
    assert_state_equal([np.asarray(w) for w in theirs.optimizer.get_weights()], keras2_state(ours, case))
    train(theirs, BATCHES[-1:])
    train(ours, BATCHES[-1:])
    assert_weights_close(weights_by_name(ours), weights_by_name(theirs))


@pytest.mark.parametrize("case", ["rmsprop", "adagrad", "nadam"])
def test_keras_2_optimizers_round_trip_through_a_keras_file(case, reference, tmp_path):
    """The Keras2* optimizers are registered: a ``.keras`` saved after loading loads again in safe mode."""
    ours = legacy.load_legacy_h5(reference(case).path)
    ours.save(tmp_path / "model.keras")
    again = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert type(again.optimizer) is type(ours.optimizer)
    assert again.optimizer.get_config() == ours.optimizer.get_config()


# --- older dialects, forged from tf_keras's files ----------------------------------------------------------

def forge(source, target, case, *, iterations="{name}/iterations:0", schedule=True, hyperparameters=(),
          placeholders=False, lexical=False, keys=None, indexed=(), steps_dtype=None):
    """Rewrite tf_keras's ``optimizer_weights`` as Keras 2.0-2.2 saved them: ``training/<Opt>/Variable_N:0``
    numbered in Keras 2's order, ``iterations`` (or none when ``iterations`` is None), Nadam's ``m_schedule``
    (or none), scalar hyperparameters after the iteration count, amsgrad's (1,) placeholders; ``lexical`` lists
    the names as h5py sorts them (``Variable_10`` after ``Variable_1``); ``keys`` renames config keys;
    ``indexed`` names each kind of slot as Keras 2.3 did, ``training/Adam/m_0:0`` ... ``v_0:0`` ...;
    ``steps_dtype`` stores the iteration count in another type (Keras 2.0.0-2.0.6: float32)."""
    name = CASES[case][0]
    shutil.copy(source, target)
    with h5py.File(target, "r+") as f:
        group = f["optimizer_weights"]
        values = [np.asarray(group[n]) for n in group.attrs["weight_names"]]
        del f["optimizer_weights"]
        steps, values = values[0], values[1:]
        scalars = []
        if iterations:
            scalars.append((iterations.format(name=name), steps.astype(steps_dtype or steps.dtype)))
        if name == "Nadam":
            cache, values = values[0], values[1:]
            if schedule:
                scalars.append(("Nadam/m_schedule:0", cache))
        scalars += [(f"{name}/{h}:0", np.float32(0.5)) for h in hyperparameters]
        if placeholders:
            values += [np.zeros(1, "float32") for _ in range(len(values) // 2)]
        numbered = [f"training/{name}/Variable{'' if i == 0 else f'_{i}'}:0" for i in range(len(values))]
        if indexed:
            per_kind = len(values) // len(indexed)
            numbered = [f"training/{name}/{kind}_{i}:0" for kind in indexed for i in range(per_kind)]
        group = f.create_group("optimizer_weights")
        for n, v in scalars + list(zip(numbered, values)):
            group.create_dataset(n, data=v)
        listed = [n for n, _ in scalars] + (sorted(numbered) if lexical else numbered)
        group.attrs["weight_names"] = np.array([n.encode() for n in listed], dtype="S")
        config = json.loads(f.attrs["training_config"])
        for old, new in (keys or {"learning_rate": "lr"}).items():
            optimizer = config["optimizer_config"]["config"]
            optimizer[new] = optimizer.pop(old)
        f.attrs["training_config"] = json.dumps(config).encode()
    return target


DIALECTS = {
    # Keras 2.1.2 (the original project's): Adam/iterations:0 then Variable .. Variable_11, here listed as h5py
    # sorts them, so only the numbers give the order
    "keras_2_1_adam_lexical": ("adam", dict(lexical=True)),
    # Keras 2.0-2.1's RMSprop, Adagrad and Adadelta saved no iteration count
    "keras_2_1_rmsprop_no_iterations": ("rmsprop", dict(iterations=None)),
    "keras_2_1_adagrad_no_iterations": ("adagrad", dict(iterations=None)),
    "keras_2_1_adadelta_no_iterations": ("adadelta", dict(iterations=None)),
    # Keras 2 numbered variable names per session: iterations_4:0 in a later model of the same session
    "keras_2_sgd_numbered_iterations": ("sgd_momentum", dict(iterations="iterations_4:0")),
    # Keras 2.1's Nadam saved no m_schedule: it is the product of the schedule over the steps taken
    "keras_2_1_nadam_no_schedule": ("nadam", dict(schedule=False)),
    "keras_2_3_nadam_with_schedule": ("nadam", dict(schedule=True)),
    # Keras 2.1.3-2.2's Adam kept (1,) placeholders for amsgrad's maxima when amsgrad was off
    "keras_2_1_3_adam_placeholders": ("adam", dict(placeholders=True)),
    # Keras 2.0.0-2.0.6 kept the iteration count in a float32 variable, unnamed moments after it
    "keras_2_0_adam_float_iterations": ("adam", dict(iterations="iterations:0", steps_dtype="float32")),
    # Keras 2.3 named each kind of slot with the weight's index: m_0 .. m_N, v_0 .., and vhat_0 .. placeholders
    "keras_2_3_adam_indexed": ("adam", dict(placeholders=True, indexed=("m", "v", "vhat"))),
    "keras_2_3_rmsprop_indexed": ("rmsprop", dict(indexed=("accumulator",))),
    # TF 2.0-2.1's tf.keras saved the hyperparameters as scalars after the iteration count
    "tf_2_0_adamax_hyperparameters": ("adamax", dict(iterations="{name}/iter:0",
                                                     hyperparameters=("beta_1", "beta_2", "decay", "learning_rate"),
                                                     keys={})),
}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_older_dialects_load_the_same_state(dialect, reference, tmp_path):
    """Each dialect (the Keras release that wrote it is in DIALECTS) gives the state tf_keras's file holds."""
    case, how = DIALECTS[dialect]
    ref = reference(case)
    ours = legacy.load_legacy_h5(forge(ref.path, tmp_path / "forged.h5", case, **how))
    state = keras2_state(ours, case)
    expected = list(ref.state)
    if how.get("iterations", "") is None:
        expected[0] = np.int64(0)  # what Keras 2 itself restarted from
    exact = how.get("schedule", True)
    assert_state_equal(state, expected, exact=exact)  # a recomputed schedule agrees to float32 round-off


@pytest.mark.parametrize("change, fragment", [
    ("drop_one", "optimizer_weights holds 11 state arrays; Adam over 6 trainable weights needs 12 (m, v for each)"),
    ("reshape_one", "has shape (4,); the weight has (3, 3, 1, 3)"),
    ("second_iterations", "does not start with Adam's iteration count"),
    ("unknown_optimizer", "optimizer 'Ftrl' is not one of Keras 2's SGD, RMSprop"),
    ("custom_loss", "loss 'my_loss' is not one of Keras's built-in losses"),
    ("amsgrad_state_without_amsgrad", "state that the config's settings do not use"),
])
def test_bad_optimizer_state_is_one_clear_error(change, fragment, reference, tmp_path):
    """A Keras 2.1.2-layout Adam file (forged from tf_keras's) with its state or config damaged: one
    ``InputError`` line naming the file, before any array is read; without the training config it loads."""
    path = forge(reference("adam").path, tmp_path / "bad.h5", "adam")
    with h5py.File(path, "r+") as f:
        group = f["optimizer_weights"]
        names = [n.decode() for n in group.attrs["weight_names"]]
        config = json.loads(f.attrs["training_config"])
        if change == "drop_one":
            names = names[:-1]
        elif change == "reshape_one":
            del group[names[1]]
            group.create_dataset(names[1], data=np.zeros(4, "float32"))
        elif change == "second_iterations":
            group.create_dataset("Adam/iterations_1:0", data=np.int64(3))
            names.append("Adam/iterations_1:0")
        elif change == "unknown_optimizer":
            config["optimizer_config"]["class_name"] = "Ftrl"
        elif change == "custom_loss":
            config["loss"] = "my_loss"
        elif change == "amsgrad_state_without_amsgrad":
            for i, n in enumerate(names[1:7]):
                group.create_dataset(f"training/Adam/Variable_{12 + i}:0", data=np.asarray(group[n]))
                names.append(f"training/Adam/Variable_{12 + i}:0")
        group.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")
        f.attrs["training_config"] = json.dumps(config).encode()
    with pytest.raises(InputError) as caught:
        legacy.load_legacy_h5(path)
    message = str(caught.value)
    assert fragment in message and "\n" not in message and message.startswith(str(path))
    if change in ("unknown_optimizer", "custom_loss"):
        assert "compile=False" in message
        assert not legacy.load_legacy_h5(path, compile=False).compiled


def test_custom_metrics_are_left_out_with_one_notice(reference, tmp_path, capfd):
    """A notebook's own metric function (Keras 2.0's ``fmeasure``, removed in 2.0.7) or class: the model
    compiles with the built-in metrics and the optimizer state; one stderr line names what was left out."""
    path = tmp_path / "custom.h5"
    shutil.copy(reference("adam").path, path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["training_config"])
        config["metrics"] = ["accuracy", "fmeasure", {"class_name": "MyRecall", "config": {"name": "recall"}}]
        f.attrs["training_config"] = json.dumps(config).encode()
    capfd.readouterr()
    model = legacy.load_legacy_h5(path)
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: ")
    assert "'fmeasure'" in lines[0] and "'MyRecall'" in lines[0]
    assert int(model.optimizer.iterations) == SAVED_STEPS
    logs = model.train_on_batch(*BATCHES[0], return_dict=True)
    assert "accuracy" in logs and "fmeasure" not in logs


@pytest.mark.parametrize("name, arguments", [("RMSprop", dict(learning_rate=0.01, momentum=0.5, epsilon=1e-3)),
                                             ("Adagrad", dict(learning_rate=0.05, epsilon=1e-2)),
                                             ("Nadam", dict(learning_rate=0.01, epsilon=1e-4))])
def test_newer_tf_keras_optimizers_load_as_keras_3s_own(name, arguments, tf_keras, tmp_path):
    """tf.keras 2.11+'s newer optimizers (``is_legacy_optimizer: false``, slots named ``RMSprop/velocity/...``)
    take Keras 3's steps, so they load as Keras 3's own optimizers and continue as tf_keras does."""
    tf_keras.utils.set_random_seed(0)
    model = tf_keras_model(tf_keras)
    model.compile(optimizer=getattr(tf_keras.optimizers, name)(**arguments), loss="categorical_crossentropy")
    train(model, BATCHES[:SAVED_STEPS])
    model.save(tmp_path / "newer.h5")
    ours = legacy.load_legacy_h5(tmp_path / "newer.h5")
    assert type(ours.optimizer) is getattr(keras.optimizers, name)
    assert int(ours.optimizer.iterations) == SAVED_STEPS
    train(model, BATCHES[SAVED_STEPS:SAVED_STEPS + MORE_STEPS])
    train(ours, BATCHES[SAVED_STEPS:SAVED_STEPS + MORE_STEPS])
    assert_weights_close(weights_by_name(ours), weights_by_name(model))


@pytest.mark.filterwarnings("error")  # a value no float32 holds used to overflow the cast, with a RuntimeWarning
@pytest.mark.parametrize("stored,meant", [(0.8999999761581421, 0.9), (0.0010000000474974513, 0.001), (0.9, 0.9),
                                          (1e300, 1e300), (-1e39, -1e39), (float("inf"), float("inf"))])
def test_keras2_float32_settings_give_back_the_number_meant(stored, meant):
    from mnist_multibackend.legacy.optimizer import _as_float32_value

    assert _as_float32_value(stored) == meant
