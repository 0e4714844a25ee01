"""Training config and Adam state both ways.

Keras 2's ``training_config`` (Adam with ``lr`` and ``decay``, loss, metrics)
becomes ``model.compile`` arguments, and its ``optimizer_weights`` (Adam's
``iterations``, then all first moments, then all second moments) the state of
the Keras 3 Adam, so training resumes where it stopped; and back again, in
Keras 2.1.2's layout.
"""

from __future__ import annotations

import math
import re

import h5py
import keras
import numpy as np

from .. import keras_private
from ..errors import InputError, first_line
from .architecture import ANY
from .safety import get_dataset, read_array, read_names
from .weights import names_attribute

# Keras 2 defaults: Adam's epsilon `None` meant K.epsilon().
KERAS2_EPSILON = 1e-7


# Optimizer options other Keras 2 releases recorded that change nothing at these values.
NEUTRAL_OPTIMIZER_OPTIONS = {
    "name": ANY, "jit_compile": ANY, "is_legacy_optimizer": ANY, "weight_decay": None, "use_ema": False,
    "ema_momentum": ANY, "ema_overwrite_frequency": None, "global_clipnorm": None, "clipnorm": None,
    "clipvalue": None, "amsgrad": False, "loss_scale_factor": None, "gradient_accumulation_steps": None,
}


def _as_float32_value(value: float) -> float:
    """Keras 2 stored lr and betas in float32 (0.8999999761581421); give back the number that was meant (0.9)."""
    value = float(value)
    single = np.float32(value)
    return float(str(single)) if float(single) == value and np.isfinite(single) else value


def adam_from_keras2(optimizer_config, source) -> keras.optimizers.Adam:
    """Keras 3 Adam from a Keras 2 ``optimizer_config``: ``lr`` -> ``learning_rate``, ``decay`` -> a schedule.

    Keras 2 decayed Adam's rate as ``lr / (1 + decay * iterations)``, which is
    ``InverseTimeDecay(lr, decay_steps=1, decay_rate=decay)`` in Keras 3.
    """
    if not isinstance(optimizer_config, dict) or not isinstance(optimizer_config.get("config"), dict):
        raise InputError(source, "training_config has no optimizer_config {class_name, config}")
    class_name = str(optimizer_config.get("class_name"))
    if re.split(r"[>.]", class_name)[-1] != "Adam":
        raise InputError(source, f"optimizer {class_name!r}: only Adam's configuration and state are restored; "
                                 "load with compile=False and compile the model yourself")
    config = dict(optimizer_config["config"])
    lr = config.pop("learning_rate", None)
    lr = config.pop("lr", 0.001) if lr is None else lr
    if isinstance(lr, dict):
        raise InputError(source, f"learning-rate schedule {lr.get('class_name')!r} is not supported")
    try:
        decay = float(config.pop("decay", None) or 0.0)
        epsilon = config.pop("epsilon", None)
        settings = {"beta_1": _as_float32_value(config.pop("beta_1", 0.9)),
                    "beta_2": _as_float32_value(config.pop("beta_2", 0.999)),
                    "epsilon": KERAS2_EPSILON if epsilon is None else float(epsilon),
                    "amsgrad": bool(config.pop("amsgrad", False))}
        for clip in ("clipnorm", "clipvalue"):
            if config.get(clip) is not None:
                settings[clip] = float(config.pop(clip))
        for option, neutral in NEUTRAL_OPTIMIZER_OPTIONS.items():
            if option in config and (neutral is ANY or config[option] == neutral):
                del config[option]
        if config:
            raise InputError(source, f"Adam options {sorted(config)} are not supported")
        if decay < 0 or not math.isfinite(decay):
            raise InputError(source, f"Adam decay must be a non-negative number. Received: {decay}")
        learning_rate = _as_float32_value(lr)
        if decay:
            learning_rate = keras.optimizers.schedules.InverseTimeDecay(learning_rate, decay_steps=1,
                                                                        decay_rate=_as_float32_value(decay))
        return keras.optimizers.Adam(learning_rate=learning_rate, **settings)
    except (TypeError, ValueError) as err:
        raise InputError(source, f"Adam settings not usable ({first_line(err, limit=300)})") from None


def _keras2_metric(metric, source):
    if isinstance(metric, str):
        return metric
    if isinstance(metric, dict) and metric.get("class_name") == "MeanMetricWrapper":
        config = metric.get("config") or {}  # tf.keras wrapped the metric function it resolved
        if config.get("name") in ("accuracy", "acc"):
            return config["name"]
        if isinstance(config.get("fn"), str):
            return config["fn"]
    if isinstance(metric, list):
        return [_keras2_metric(m, source) for m in metric]
    if isinstance(metric, dict) and "class_name" not in metric:
        return {k: _keras2_metric(v, source) for k, v in metric.items()}
    raise InputError(source, f"metric {str(metric)[:80]} is not supported; load with compile=False")


def compile_args_from_keras2(training_config, model: keras.Model, source) -> dict:
    """``model.compile`` arguments from a Keras 2 ``training_config`` (optimizer, loss, metrics, loss_weights)."""
    if not isinstance(training_config, dict):
        raise InputError(source, "training_config is not a mapping")
    if training_config.get("sample_weight_mode") is not None:
        raise InputError(source, f"sample_weight_mode {training_config['sample_weight_mode']!r} has no Keras 3 "
                                 "equivalent; load with compile=False")
    loss = training_config.get("loss")
    flat_losses = loss.values() if isinstance(loss, dict) else loss if isinstance(loss, list) else [loss]
    if not all(isinstance(name, str) for name in flat_losses):
        raise InputError(source, f"loss {str(loss)[:80]} is not a built-in loss name; load with compile=False")
    args = {"optimizer": adam_from_keras2(training_config.get("optimizer_config"), source), "loss": loss,
            "loss_weights": training_config.get("loss_weights")}
    for key in ("metrics", "weighted_metrics"):
        metrics = training_config.get(key)
        if metrics is not None:
            metrics = _keras2_metric(metrics, source)
            if len(model.outputs) == 1 and isinstance(metrics, list) and len(metrics) == 1 \
                    and isinstance(metrics[0], list):
                metrics = metrics[0]  # tf.keras wrote one list per output
            args[key] = metrics
    return args


def compile_from_keras2(model: keras.Model, training_config, source) -> keras.Model:
    """Compile ``model`` as a Keras 2 ``training_config`` says (see ``compile_args_from_keras2``)."""
    args = compile_args_from_keras2(training_config, model, source)
    try:
        model.compile(**args)
    except (TypeError, ValueError) as err:
        raise InputError(source, f"training_config not usable ({first_line(err, limit=300)})") from None
    return model


# Names Keras 2 releases gave their optimizer variables.
_ITERATIONS = re.compile(r"(^|/)iter(ation|ations)?(:0)?$")
_HYPERPARAMETER_NAMES = ("lr", "learning_rate", "beta_1", "beta_2", "decay", "epsilon")
_HYPERPARAMETER = re.compile(rf"(^|/)({'|'.join(_HYPERPARAMETER_NAMES)})(:0)?$")
_SLOTS = (("vhat", re.compile(r"(/vhat(:0)?$|/vhat/|_velocity_hat$)")),
          ("m", re.compile(r"(/m(:0)?$|/m/|_momentum$)")),
          ("v", re.compile(r"(/v(:0)?$|/v/|_velocity$)")))
_NUMBERED = re.compile(r"Variable(?:_(\d+))?(:0)?$")


def _adam_slots(entries, n: int, source) -> dict:
    """Split Keras 2 optimizer weights into ``{"m": [...], "v": [...], "vhat": [...]}``, each in weight order.

    ``entries`` are ``(name, dataset)`` pairs; only names and declared shapes
    are looked at. Keras 2.0-2.2 numbered the moments
    (``training/Adam/Variable_N:0``: all first moments, then all second ones,
    then amsgrad's); tf.keras named them after the weight (``.../m:0``,
    ``Adam/m/...``).
    """
    named = {kind: [a for name, a in entries if pattern.search(name)] for kind, pattern in _SLOTS}
    if sum(map(len, named.values())) == len(entries):
        return named
    numbers = [_NUMBERED.search(name) for name, _ in entries]
    if all(numbers):  # sort numerically: Variable_10 comes after Variable_9, not after Variable_1
        entries = [e for _, e in sorted(zip([int(m.group(1) or 0) for m in numbers], entries), key=lambda p: p[0])]
    arrays = [a for _, a in entries]
    if n == 0 or len(arrays) not in (2 * n, 3 * n):
        raise InputError(source, f"optimizer_weights holds {len(arrays)} moment arrays; Adam over {n} trainable "
                                 f"weights needs {2 * n} (or {3 * n} with amsgrad)")
    return {"m": arrays[:n], "v": arrays[n:2 * n], "vhat": arrays[2 * n:]}


def restore_adam_state(model: keras.Model, group: h5py.Group, source) -> None:
    """Put the Keras 2 Adam state (iterations and moments) into ``model.optimizer``, building it first.

    Names, counts and every array's shape and dtype are checked against the
    model's trainable weights before any array is read (``safety.read_array``).
    """
    optimizer = model.optimizer
    names = read_names(group, "weight_names", source)
    # Keras 2's order of trainable weights: layer by layer, as the optimizer saw them.
    weights = [w for layer in model.layers for w in layer.trainable_weights]
    if len(names) > 1 + 3 * len(weights) + len(_HYPERPARAMETER_NAMES):
        raise InputError(source, f"optimizer_weights lists {len(names)} arrays; Adam over {len(weights)} trainable "
                                 f"weights has at most {1 + 3 * len(weights)} (iterations, then 2 or 3 moments each)")
    entries = [(name, get_dataset(group, name, source, "optimizer_weights")) for name in names]
    if not entries:
        return
    iterations = [d for name, d in entries if _ITERATIONS.search(name)]
    if len(iterations) != 1 or iterations[0].shape != () or not _ITERATIONS.search(entries[0][0]):
        raise InputError(source, f"optimizer_weights does not start with Adam's iteration count: {names[:3]}")
    iteration_count = read_array(iterations[0], (), source, f"optimizer_weights/{entries[0][0]}")
    moments = [(name, d) for name, d in entries[1:] if not (d.shape == () and _HYPERPARAMETER.search(name))]
    optimizer.build(model.trainable_variables)
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    if not moments:  # saved before the optimizer took a step
        optimizer.iterations.assign(int(iteration_count))
        return
    slots = _adam_slots(moments, len(weights), source)
    targets = keras_private.adam_slots(optimizer)
    if slots["vhat"] and all(d.shape == (1,) for d in slots["vhat"]):
        slots["vhat"] = []  # Keras 2.1.3+ kept (1,) placeholders when amsgrad was off
    if slots["vhat"] and not optimizer.amsgrad:
        raise InputError(source, "optimizer_weights holds amsgrad state but the config has amsgrad off")
    plan = []
    for kind in ("m", "v") + (("vhat",) if optimizer.amsgrad else ()):
        datasets = slots[kind]
        if len(datasets) != len(weights):
            raise InputError(source, f"optimizer_weights holds {len(datasets)} '{kind}' arrays for "
                                     f"{len(weights)} trainable weights")
        for weight, dataset in zip(weights, datasets):
            if tuple(dataset.shape) != tuple(weight.shape):
                raise InputError(source, f"Adam '{kind}' for {weight.path} has shape {dataset.shape}; the weight "
                                         f"has {tuple(weight.shape)}")
            plan.append((targets[kind][index[id(weight)]], dataset, weight))
    for target, dataset, weight in plan:
        target.assign(read_array(dataset, weight.shape, source, f"optimizer_weights{dataset.name[len(group.name):]}"))
    optimizer.iterations.assign(int(iteration_count))


def keras2_training_config(model: keras.Model) -> dict | None:
    """The compiled model's training config as Keras 2.1.2 wrote it (Adam with ``lr`` and ``decay``); ``None``
    if the model is not compiled."""
    if not getattr(model, "compiled", False) or model.optimizer is None:
        return None
    optimizer = model.optimizer
    where = f"optimizer of model {model.name!r}"
    if type(optimizer) is not keras.optimizers.Adam:
        raise InputError(where, f"is {type(optimizer).__name__}; only Adam is written in the Keras 2 layout")
    config = optimizer.get_config()
    lr, decay = config.pop("learning_rate"), 0.0
    if isinstance(lr, dict):
        schedule = keras.optimizers.schedules.deserialize(lr)
        if not (isinstance(schedule, keras.optimizers.schedules.InverseTimeDecay) and schedule.decay_steps == 1
                and not schedule.staircase):
            raise InputError(where, f"learning-rate schedule {type(schedule).__name__} has no Keras 2 form "
                                    "(only lr / (1 + decay * iterations) has)")
        lr, decay = schedule.initial_learning_rate, schedule.decay_rate
    adam = {"lr": float(lr), "beta_1": float(config.pop("beta_1")), "beta_2": float(config.pop("beta_2")),
            "epsilon": float(config.pop("epsilon")), "decay": float(decay)}
    if config.pop("amsgrad"):
        adam["amsgrad"] = True  # Keras 2.1.2 had no amsgrad option, so it appears only when on
    for clip in ("clipnorm", "clipvalue"):
        if config.get(clip) is not None:
            adam[clip] = float(config.pop(clip))
    leftover = {k: v for k, v in config.items() if not (k in NEUTRAL_OPTIMIZER_OPTIONS and (
        NEUTRAL_OPTIMIZER_OPTIONS[k] is ANY or v == NEUTRAL_OPTIMIZER_OPTIONS[k]))}
    if leftover:
        raise InputError(where, f"uses {leftover}, which Keras 2's Adam lacks")
    compile_config = model.get_compile_config() or {}
    loss, metrics = compile_config.get("loss"), compile_config.get("metrics")
    for what, value in (("loss", loss), ("metrics", metrics)):
        if not _only_names(value):
            raise InputError(where.replace("optimizer", what), f"{str(value)[:80]} is not a built-in name; Keras 2 "
                                                               "files record losses and metrics by name")
    return {"optimizer_config": {"class_name": "Adam", "config": adam}, "loss": loss, "metrics": metrics or [],
            "loss_weights": compile_config.get("loss_weights"), "sample_weight_mode": None}


def _only_names(value) -> bool:
    if value is None or isinstance(value, str):
        return True
    if isinstance(value, (list, tuple)):
        return all(_only_names(v) for v in value)
    if isinstance(value, dict) and "class_name" not in value:
        return all(_only_names(v) for v in value.values())
    return False


def write_adam_state(f: h5py.File, model: keras.Model) -> None:
    """Keras 2.1.2's ``optimizer_weights``: ``Adam/iterations:0``, then ``training/Adam/Variable_N:0`` holding
    all first moments, then all second moments (then amsgrad's maxima), in trainable-weight order."""
    optimizer = model.optimizer
    if not optimizer.built:
        return  # no step taken yet: Keras 2 wrote no optimizer weights either
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    weights = [w for layer in model.layers for w in layer.trainable_weights]
    state = keras_private.adam_slots(optimizer)
    slots = [state["m"], state["v"]] + ([state["vhat"]] if optimizer.amsgrad else [])
    if any(len(slot) != len(index) for slot in slots):
        raise InputError(f"optimizer of model {model.name!r}", "was built for other weights than the model's")
    arrays = [keras.ops.convert_to_numpy(slot[index[id(w)]]) for slot in slots for w in weights]
    names = ["Adam/iterations:0"] + [f"training/Adam/Variable{'' if i == 0 else f'_{i}'}:0"
                                     for i in range(len(arrays))]
    group = f.create_group("optimizer_weights")
    names_attribute(group, "weight_names", names)
    group.create_dataset(names[0], data=np.int64(keras.ops.convert_to_numpy(optimizer.iterations)))
    for name, array in zip(names[1:], arrays):
        group.create_dataset(name, data=array)
