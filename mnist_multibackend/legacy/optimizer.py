"""Training config and optimizer state both ways, for every Keras 2 optimizer.

Keras 2's ``training_config`` (an optimizer with ``lr`` and ``decay``, loss,
metrics) becomes ``model.compile`` arguments, and its ``optimizer_weights``
(the iteration count, then each kind of per-weight state for all weights in
turn) the state of a Keras 3 optimizer that takes the same steps (Keras 3's own,
or one of ``keras2_optimizers``), so training resumes where it stopped; and back
again, in Keras 2.1.2's layout. One ``Keras2Optimizer`` entry per optimizer in
``OPTIMIZERS`` holds all that differs between them.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Callable

import h5py
import keras
import numpy as np

from .. import keras_private
from ..errors import InputError, first_line, notice
from .architecture import ANY
from .keras2_optimizers import Keras2Adagrad, Keras2Nadam, Keras2RMSprop
from .safety import get_dataset, read_array, read_names
from .weights import names_attribute

# Keras 2 defaults: an epsilon of `None` meant K.epsilon().
KERAS2_EPSILON = 1e-7


# Optimizer options other Keras 2 releases recorded that change nothing at these values (the EMA ones: use_ema is off).
NEUTRAL_OPTIMIZER_OPTIONS = {
    "name": ANY, "jit_compile": ANY, "is_legacy_optimizer": ANY, "weight_decay": None, "use_ema": False,
    "ema_momentum": ANY, "ema_overwrite_frequency": ANY, "global_clipnorm": None, "clipnorm": None,
    "clipvalue": None, "amsgrad": False, "loss_scale_factor": None, "gradient_accumulation_steps": None,
}


_FLOAT32_MAX = float(np.finfo(np.float32).max)  # a Python float: against an np.float32, 1e300 would be cast


def _as_float32_value(value: float) -> float:
    """Keras 2 stored lr and betas in float32 (0.8999999761581421); give back the number that was meant (0.9)."""
    value = float(value)
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        return value  # no float32 holds it, so Keras 2 did not write it as one (and the cast would overflow)
    single = np.float32(value)
    return float(str(single)) if float(single) == value else value


def _epsilon(value) -> float:
    return KERAS2_EPSILON if value is None else float(value)


@dataclass(frozen=True)
class Keras2Optimizer:
    """What one Keras 2 optimizer is in Keras 3 and how its state is laid out.

    ``slots(optimizer)`` gives the Keras 3 slot names (``keras_private.optimizer_slots``)
    in the order Keras 2 saved them, each kind for all weights in turn, for the
    settings of a built ``optimizer``; ``names`` the further names files give each
    slot (tf.keras legacy ``SGD/dense/kernel/momentum:0``, tf.keras's newer
    optimizers ``SGD/m/dense/kernel:0``); ``leftover`` a slot Keras 2.0-2.2 saved
    even when a setting left it unused, and the shape it then had (``None``: the
    weight's).
    """

    name: str
    keras3: type  # takes Keras 2's (legacy tf.keras's) steps
    builtin: type  # Keras 3's own: what tf.keras's newer optimizers (is_legacy_optimizer false) compute
    options: dict  # Keras 2 option (the Keras 3 argument's name too) -> conversion
    slots: Callable
    names: dict
    leftover: tuple | None = None
    steps_always_saved: bool = True  # False: Keras 2.0-2.2 saved no iteration count for it
    decays_lr: bool = True  # False: "decay" is not lr / (1 + decay * iterations) (Nadam)
    writes: dict = field(default_factory=dict)  # Keras 2 option -> its value that Keras 2.1.2 did not write

    def slot_names(self, slot: str) -> tuple:
        return (*self.names.get(slot, ()), slot)


def _when(flag, *slots) -> tuple:
    return slots if flag else ()


_BETAS = {"beta_1": _as_float32_value, "beta_2": _as_float32_value, "epsilon": _epsilon}
OPTIMIZERS = {spec.name: spec for spec in (
    Keras2Optimizer("SGD", keras.optimizers.SGD, keras.optimizers.SGD,
                    {"momentum": _as_float32_value, "nesterov": bool},
                    lambda o: _when(o.momentum, "momentum"), {"momentum": ("m",)},
                    leftover=("momentum", None)),  # Keras 2.0-2.2 kept moments at momentum 0 (never read)
    Keras2Optimizer("RMSprop", Keras2RMSprop, keras.optimizers.RMSprop,
                    {"rho": _as_float32_value, "momentum": _as_float32_value, "epsilon": _epsilon, "centered": bool},
                    lambda o: ("velocity",) + _when(o.momentum > 0, "momentum") + _when(o.centered, "average_gradient"),
                    {"velocity": ("rms",), "average_gradient": ("mg",)}, steps_always_saved=False,
                    writes={"momentum": 0.0, "centered": False}),
    Keras2Optimizer("Adagrad", Keras2Adagrad, keras.optimizers.Adagrad,
                    {"initial_accumulator_value": float, "epsilon": _epsilon},
                    lambda o: ("accumulator",), {}, steps_always_saved=False,
                    writes={"initial_accumulator_value": 0.1}),  # tf_keras's value when a config lacks it
    Keras2Optimizer("Adadelta", keras.optimizers.Adadelta, keras.optimizers.Adadelta,
                    {"rho": _as_float32_value, "epsilon": _epsilon},
                    lambda o: ("accumulated_grad", "accumulated_delta_var"),
                    {"accumulated_grad": ("accum_grad",), "accumulated_delta_var": ("accum_var",)},
                    steps_always_saved=False),
    Keras2Optimizer("Adam", keras.optimizers.Adam, keras.optimizers.Adam, {**_BETAS, "amsgrad": bool},
                    lambda o: ("momentum", "velocity") + _when(o.amsgrad, "velocity_hat"),
                    {"momentum": ("m",), "velocity": ("v",), "velocity_hat": ("vhat",)},
                    leftover=("velocity_hat", (1,)),  # Keras 2.1.3-2.2 kept (1,) placeholders without amsgrad
                    writes={"amsgrad": False}),
    Keras2Optimizer("Adamax", keras.optimizers.Adamax, keras.optimizers.Adamax, _BETAS,
                    lambda o: ("momentum", "norm"), {"momentum": ("m",), "norm": ("v", "u")}),
    Keras2Optimizer("Nadam", Keras2Nadam, keras.optimizers.Nadam, {**_BETAS, "schedule_decay": float},
                    lambda o: ("momentum", "velocity"), {"momentum": ("m",), "velocity": ("v",)},
                    decays_lr=False),
)}


def keras2_optimizer_name(class_name) -> str:
    """``Adam`` for ``Adam``, ``adam``, ``keras.optimizers>Adam`` or ``keras.optimizers.legacy.Adam``."""
    short = re.split(r"[>.]", str(class_name))[-1]
    return next((name for name in OPTIMIZERS if name.lower() == short.lower()), short)


def optimizer_from_keras2(optimizer_config, source) -> keras.optimizers.Optimizer:
    """The Keras 3 optimizer that takes the steps of a Keras 2 ``optimizer_config``'s optimizer.

    ``lr`` (or ``learning_rate``) becomes ``learning_rate``, and ``decay`` the
    schedule Keras 2 applied, ``lr / (1 + decay * iterations)``:
    ``InverseTimeDecay(lr, decay_steps=1, decay_rate=decay)``. An ``epsilon`` of
    ``None`` is Keras 2's ``K.epsilon()``, 1e-7. Nadam's ``decay`` is its
    ``schedule_decay`` (tf.keras wrote it so; Keras 2.1 as ``schedule_decay``).
    """
    if not isinstance(optimizer_config, dict) or not isinstance(optimizer_config.get("config"), dict):
        raise InputError(source, "training_config has no optimizer_config {class_name, config}")
    class_name = optimizer_config.get("class_name")
    spec = OPTIMIZERS.get(keras2_optimizer_name(class_name))
    if spec is None:
        raise InputError(source, f"optimizer {class_name!r} is not one of Keras 2's {', '.join(OPTIMIZERS)}; "
                                 "load with compile=False and compile the model yourself")
    config = dict(optimizer_config["config"])
    cls = spec.builtin if config.get("is_legacy_optimizer") is False else spec.keras3
    lr = config.pop("learning_rate", None)
    lr = config.pop("lr", None) if lr is None else lr
    lr = inspect.signature(cls).parameters["learning_rate"].default if lr is None else lr
    if isinstance(lr, dict):
        raise InputError(source, f"learning-rate schedule {lr.get('class_name')!r} is not supported")
    try:
        decay = config.pop("decay", None)
        if not spec.decays_lr:
            if cls is spec.keras3:
                config.setdefault("schedule_decay", 0.004 if decay is None else decay)
            decay = None
        decay = float(decay or 0.0)
        settings = {option: convert(config.pop(option)) for option, convert in spec.options.items()
                    if option in config}
        # tf.keras clips each gradient to clipnorm, as Keras 3 does (Keras 2.1 clipped their global norm)
        for clip in ("clipnorm", "clipvalue"):
            if config.get(clip) is not None:
                settings[clip] = float(config.pop(clip))
        for option, neutral in NEUTRAL_OPTIMIZER_OPTIONS.items():
            if option in config and (neutral is ANY or config[option] == neutral):
                del config[option]
        if config:
            raise InputError(source, f"{spec.name} options {sorted(config)} are not supported")
        if decay < 0 or not math.isfinite(decay):
            raise InputError(source, f"{spec.name} decay must be a non-negative number. Received: {decay}")
        learning_rate = _as_float32_value(lr)
        if decay:
            learning_rate = keras.optimizers.schedules.InverseTimeDecay(learning_rate, decay_steps=1,
                                                                        decay_rate=_as_float32_value(decay))
        return cls(learning_rate=learning_rate, **settings)
    except (TypeError, ValueError, ArithmeticError) as err:  # ArithmeticError: 10**400 is no float
        raise InputError(source, f"{spec.name} settings not usable ({first_line(err, limit=300)})") from None

def _builtin(kind: str, name: str) -> bool:
    """Whether Keras 3 knows the loss or metric ``name`` (``"accuracy"``/``"acc"`` are compile's own)."""
    if name.lower() in (("accuracy", "acc") if kind == "metric" else ("crossentropy", "ce")):
        return True
    try:
        (keras.metrics.get if kind == "metric" else keras.losses.get)(name)
    except (ValueError, TypeError):
        return False
    return True


def _keras2_metric(metric, source, dropped: list):
    """A Keras 2 metric as ``compile`` takes it; ``None`` (and its name in ``dropped``) if it is not built in."""
    if isinstance(metric, dict) and metric.get("class_name") == "MeanMetricWrapper":
        config = metric.get("config") or {}  # tf.keras wrapped the metric function it resolved
        if config.get("name") in ("accuracy", "acc"):
            metric = config["name"]
        elif isinstance(config.get("fn"), str):
            metric = config["fn"]
    if isinstance(metric, str):
        if _builtin("metric", metric):
            return metric
        dropped.append(metric)
        return None
    if isinstance(metric, list):
        return [m for m in (_keras2_metric(m, source, dropped) for m in metric) if m is not None]
    if isinstance(metric, dict) and "class_name" not in metric:
        kept = {k: _keras2_metric(v, source, dropped) for k, v in metric.items()}
        return {k: v for k, v in kept.items() if v is not None}
    if isinstance(metric, dict) and isinstance(metric.get("class_name"), str):
        dropped.append(metric["class_name"])  # a metric class not built in (tf.keras serialized it whole)
        return None
    raise InputError(source, f"metric {str(metric)[:80]} is not a metric name; load with compile=False")


def compile_args_from_keras2(training_config, model: keras.Model, source) -> dict:
    """``model.compile`` arguments from a Keras 2 ``training_config`` (optimizer, loss, metrics, loss_weights).

    Metrics that are not Keras built-ins (a notebook's ``fmeasure`` function, a
    custom class) are left out and named in one notice on stderr; the rest,
    and the optimizer with its state, still load. A loss that is not built in
    is refused: the model could not train without it.
    """
    if not isinstance(training_config, dict):
        raise InputError(source, "training_config is not a mapping")
    if training_config.get("sample_weight_mode") is not None:
        raise InputError(source, f"sample_weight_mode {training_config['sample_weight_mode']!r} has no Keras 3 "
                                 "equivalent; load with compile=False")
    loss = training_config.get("loss")
    flat_losses = loss.values() if isinstance(loss, dict) else loss if isinstance(loss, list) else [loss]
    if not all(isinstance(name, str) for name in flat_losses):
        raise InputError(source, f"loss {str(loss)[:80]} is not a built-in loss name; load with compile=False")
    custom = [name for name in flat_losses if not _builtin("loss", name)]
    if custom:
        raise InputError(source, f"loss {custom[0]!r} is not one of Keras's built-in losses (custom code is not "
                                 "loaded); load with compile=False and compile the model with that loss yourself")
    args = {"optimizer": optimizer_from_keras2(training_config.get("optimizer_config"), source), "loss": loss,
            "loss_weights": training_config.get("loss_weights")}
    dropped = []
    for key in ("metrics", "weighted_metrics"):
        metrics = training_config.get(key)
        if metrics is not None:
            metrics = _keras2_metric(metrics, source, dropped)
            if len(model.outputs) == 1 and isinstance(metrics, list) and len(metrics) == 1 \
                    and isinstance(metrics[0], list):
                metrics = metrics[0]  # tf.keras wrote one list per output
            args[key] = metrics
    if dropped:
        notice(source, f"metrics {', '.join(map(repr, dropped))} are not Keras built-ins and were left out; "
                       "the rest of the training config, and the optimizer state, loaded")
    return args


def compile_from_keras2(model: keras.Model, training_config, source) -> keras.Model:
    """Compile ``model`` as a Keras 2 ``training_config`` says (see ``compile_args_from_keras2``)."""
    args = compile_args_from_keras2(training_config, model, source)
    try:
        # jit_compile as the model was set to run (architecture.runnable_on_this_backend); compile resets it.
        model.compile(**args, jit_compile=model.jit_compile)
    except (TypeError, ValueError) as err:
        raise InputError(source, f"training_config not usable ({first_line(err, limit=300)})") from None
    return model


# ---------------------------------------------------------------------------
# Optimizer state: Keras 2's `optimizer_weights`
# ---------------------------------------------------------------------------

# Names Keras 2 releases gave their optimizer variables ("iterations_4:0" when a session held several).
ITERATIONS = re.compile(r"(^|/)iter(ation|ations)?(_\d+)?(:0)?$")
_MOMENTUM_SCHEDULE = re.compile(r"(^|/)(m_schedule|momentum_cache)(_\d+)?(:0)?$")  # Nadam's
_HYPERPARAMETER_NAMES = ("lr", "learning_rate", "beta_1", "beta_2", "decay", "epsilon", "rho", "momentum",
                         "schedule_decay", "initial_accumulator_value")
_HYPERPARAMETER = re.compile(rf"(^|/)({'|'.join(_HYPERPARAMETER_NAMES)})(_\d+)?(:0)?$")
_NUMBERED = re.compile(r"Variable(?:_(\d+))?(:0)?$")


def _slot_pattern(names) -> re.Pattern:
    """A slot's variables: tf.keras legacy ``.../dense/kernel/m:0``, newer tf.keras ``Adam/m/dense/kernel:0``,
    Keras 3 ``adam/dense_kernel_momentum`` (its own name last in ``names``)."""
    alternatives = "|".join(map(re.escape, names))
    return re.compile(rf"(/({alternatives})(:0)?$|/({alternatives})/|_{re.escape(names[-1])}$)")


def _keras2_weights(model: keras.Model) -> list:
    # Keras 2's order of trainable weights: layer by layer, as its optimizer saw them.
    return [w for layer in model.layers for w in layer.trainable_weights]


def _slot_arrays(spec: Keras2Optimizer, used: tuple, entries, n: int, source) -> dict:
    """Keras 2's per-weight state arrays by Keras 3 slot, ``{slot: [dataset per weight]}``, in weight order.

    ``entries`` are ``(name, dataset)`` pairs; only names and declared shapes
    are looked at. Named variables go by name; numbered ones (Keras 2.0-2.2's
    ``training/Adam/Variable_N:0``) by number, each kind for all weights in
    turn, in Keras 2's order of kinds.
    """
    kinds = used + ((spec.leftover[0],) if spec.leftover and spec.leftover[0] not in used else ())
    patterns = {kind: _slot_pattern(spec.slot_names(kind)) for kind in kinds}
    matches = [[kind for kind, pattern in patterns.items() if pattern.search(name)] for name, _ in entries]
    if all(len(match) == 1 for match in matches):
        by_kind = {kind: [d for match, (_, d) in zip(matches, entries) if match == [kind]] for kind in kinds}
    else:
        numbers = [_NUMBERED.search(name) for name, _ in entries]
        if all(numbers):  # sort numerically: Variable_10 comes after Variable_9, not after Variable_1
            entries = [e for _, e in sorted(zip([int(m.group(1) or 0) for m in numbers], entries),
                                            key=lambda p: p[0])]
        arrays = [d for _, d in entries]
        counts = {len(used) * n: used, len(kinds) * n: kinds}
        if n == 0 or len(arrays) not in counts:
            keras2 = [spec.slot_names(kind)[0] for kind in used]
            raise InputError(source, f"optimizer_weights holds {len(arrays)} state arrays; {spec.name} over {n} "
                                     f"trainable weights needs {len(used) * n} ({', '.join(keras2) or 'none'} for "
                                     "each)")
        by_kind = {kind: arrays[i * n:(i + 1) * n] for i, kind in enumerate(counts[len(arrays)])}
    if spec.leftover and spec.leftover[0] not in used and by_kind.get(spec.leftover[0]):
        leftover, shape = spec.leftover
        if shape is not None and not all(d.shape == shape for d in by_kind[leftover]):
            raise InputError(source, f"optimizer_weights holds {spec.name} '{spec.slot_names(leftover)[0]}' "
                                     "state that the config's settings do not use")
        del by_kind[leftover]  # Keras 2.0-2.2 kept it for settings that never read it
    return by_kind


def restore_optimizer_state(model: keras.Model, group: h5py.Group, source) -> None:
    """Put a Keras 2 optimizer's state (iteration count, per-weight slots, Nadam's momentum schedule) into
    ``model.optimizer`` (from ``optimizer_from_keras2``), building it first.

    Names, counts and every array's shape are checked against the model's
    trainable weights before any array is read (``safety.read_array``).
    """
    optimizer = model.optimizer
    spec = next(s for s in OPTIMIZERS.values() if isinstance(optimizer, (s.keras3, s.builtin)))
    names = read_names(group, "weight_names", source)
    weights = _keras2_weights(model)
    optimizer.build(model.trainable_variables)
    used = spec.slots(optimizer)
    most = 2 + (len(used) + 1) * len(weights) + len(_HYPERPARAMETER_NAMES)
    if len(names) > most:
        raise InputError(source, f"optimizer_weights lists {len(names)} arrays; {spec.name} over {len(weights)} "
                                 f"trainable weights has at most {most}")
    entries = [(name, get_dataset(group, name, source, "optimizer_weights")) for name in names]
    if not entries:
        return
    steps = [(name, d) for name, d in entries if ITERATIONS.search(name)]
    if len(steps) > 1 or (steps and steps[0][0] != entries[0][0]) or (not steps and spec.steps_always_saved):
        raise InputError(source, f"optimizer_weights does not start with {spec.name}'s iteration count: "
                                 f"{names[:3]}")
    schedule = [(name, d) for name, d in entries if _MOMENTUM_SCHEDULE.search(name)]
    if len(schedule) > (spec.name == "Nadam"):
        raise InputError(source, f"optimizer_weights holds {len(schedule)} momentum schedules; {spec.name} has "
                                 f"{int(spec.name == 'Nadam')}")
    state = [(name, d) for name, d in entries[len(steps):] if not _MOMENTUM_SCHEDULE.search(name)
             and not (d.shape == () and _HYPERPARAMETER.search(name))]
    plan = _slot_plan(spec, used, state, model, source) if state else []  # none: saved before a step
    count = read_array(steps[0][1], (), source, _where(group, steps[0][1])) if steps else 0
    # the variable is an int64: a count it cannot hold (2**64 - 1) is a damaged file; read_array refused
    # NaN and infinity
    if not -2**63 <= count < 2**63:
        raise InputError(source, f"optimizer_weights holds an iteration count no int64 holds: {count}")
    iteration_count = int(count)
    product = read_array(schedule[0][1], (), source, _where(group, schedule[0][1])) if schedule else None
    for target, dataset in plan:
        target.assign(read_array(dataset, target.shape, source, _where(group, dataset)))
    if iteration_count < 0:
        raise InputError(source, f"optimizer_weights holds a negative iteration count: {iteration_count}")
    if spec.name == "Nadam":
        if product is None:  # Keras 2.1 did not save it: the product of the schedule over the steps taken
            product = _keras2_nadam_schedule(optimizer, iteration_count)
        keras_private.nadam_momentum_product(optimizer).assign(np.float32(product))
    optimizer.iterations.assign(iteration_count)


def _where(group: h5py.Group, dataset: h5py.Dataset) -> str:
    return f"optimizer_weights{dataset.name[len(group.name):]}"


def _slot_plan(spec: Keras2Optimizer, used: tuple, state, model: keras.Model, source) -> list:
    """``[(optimizer slot variable, dataset)]`` for every used slot of every weight, shapes checked."""
    weights = _keras2_weights(model)
    by_kind = _slot_arrays(spec, used, state, len(weights), source)
    targets = keras_private.optimizer_slots(model.optimizer)
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    plan = []
    for kind in used:
        datasets = by_kind.get(kind, [])
        if len(datasets) != len(weights):
            raise InputError(source, f"optimizer_weights holds {len(datasets)} {spec.name} "
                                     f"'{spec.slot_names(kind)[0]}' arrays for {len(weights)} trainable weights")
        for weight, dataset in zip(weights, datasets):
            if tuple(dataset.shape) != tuple(weight.shape):
                raise InputError(source, f"{spec.name} '{spec.slot_names(kind)[0]}' for {weight.path} has "
                                         f"shape {dataset.shape}; the weight has {tuple(weight.shape)}")
            plan.append((targets[kind][index[id(weight)]], dataset))
    return plan


def _keras2_nadam_schedule(optimizer, steps: int) -> np.float32:
    """Keras 2's ``m_schedule`` after ``steps``: the product of ``beta_1 * (1 - 0.5 * 0.96 ** (t * decay))``."""
    decay = getattr(optimizer, "schedule_decay", 1.0)  # Keras 3's own Nadam: 0.96 ** t
    product = np.float32(1.0)
    for t in range(1, steps + 1):
        if product == 0:  # beta_1 ** t reaches float32's zero within a few thousand steps; a file may say 1e18
            break
        product *= np.float32(optimizer.beta_1) * (1 - np.float32(0.5) * np.float32(0.96) ** np.float32(t * decay))
    return product


def _keras2_config(spec: Keras2Optimizer, optimizer, where: str) -> dict:
    """The optimizer's Keras 2.1.2 ``optimizer_config`` ``config``: ``lr``, its options, ``decay``."""
    config = optimizer.get_config()
    lr, decay = config.pop("learning_rate"), 0.0
    if isinstance(lr, dict):
        schedule = keras.optimizers.schedules.deserialize(lr)
        if not (spec.decays_lr and isinstance(schedule, keras.optimizers.schedules.InverseTimeDecay)
                and schedule.decay_steps == 1 and not schedule.staircase):
            raise InputError(where, f"learning-rate schedule {type(schedule).__name__} has no Keras 2 form "
                                    f"for {spec.name} (only lr / (1 + decay * iterations) has)")
        lr, decay = schedule.initial_learning_rate, schedule.decay_rate
    keras2 = {"lr": float(lr)}
    for option in spec.options:
        value = config.pop(option, None)
        if option not in spec.writes or value != spec.writes[option]:
            keras2[option] = value if isinstance(value, bool) else float(value)
    if spec.decays_lr:
        keras2["decay"] = float(decay)
    for clip in ("clipnorm", "clipvalue"):
        if config.get(clip) is not None:
            keras2[clip] = float(config.pop(clip))
    leftover = {k: v for k, v in config.items() if not (k in NEUTRAL_OPTIMIZER_OPTIONS and (
        NEUTRAL_OPTIMIZER_OPTIONS[k] is ANY or v == NEUTRAL_OPTIMIZER_OPTIONS[k]))}
    if leftover:
        raise InputError(where, f"uses {leftover}, which Keras 2's {spec.name} lacks")
    return keras2


def _written_spec(optimizer, where: str) -> Keras2Optimizer:
    """The Keras 2 optimizer that takes ``optimizer``'s steps (Keras 3's own Adam, SGD, Adadelta and Adamax do)."""
    for spec in OPTIMIZERS.values():
        if type(optimizer) is spec.keras3:
            return spec
    names = ", ".join(sorted({spec.keras3.__name__ for spec in OPTIMIZERS.values()}))
    raise InputError(where, f"is {type(optimizer).__name__}; only optimizers that take Keras 2's steps are written "
                            f"in the Keras 2 layout ({names}; the Keras2* ones are in "
                            "mnist_multibackend.legacy.keras2_optimizers)")


def keras2_training_config(model: keras.Model) -> dict | None:
    """The compiled model's training config as Keras 2.1.2 wrote it (``lr``, ``decay``, the optimizer's options
    by their Keras 2 names); ``None`` if the model is not compiled."""
    if not getattr(model, "compiled", False) or model.optimizer is None:
        return None
    where = f"optimizer of model {model.name!r}"
    spec = _written_spec(model.optimizer, where)
    config = _keras2_config(spec, model.optimizer, where)
    compile_config = model.get_compile_config() or {}
    loss, metrics = compile_config.get("loss"), compile_config.get("metrics")
    for what, value in (("loss", loss), ("metrics", metrics)):
        if not _only_names(value):
            raise InputError(where.replace("optimizer", what), f"{str(value)[:80]} is not a built-in name; Keras 2 "
                                                               "files record losses and metrics by name")
    return {"optimizer_config": {"class_name": spec.name, "config": config}, "loss": loss, "metrics": metrics or [],
            "loss_weights": compile_config.get("loss_weights"), "sample_weight_mode": None}


def _only_names(value) -> bool:
    if value is None or isinstance(value, str):
        return True
    if isinstance(value, (list, tuple)):
        return all(_only_names(v) for v in value)
    if isinstance(value, dict) and "class_name" not in value:
        return all(_only_names(v) for v in value.values())
    return False


def write_optimizer_state(f: h5py.File, model: keras.Model) -> None:
    """Keras 2.1.2's ``optimizer_weights``: ``<Optimizer>/iterations:0`` (Nadam: then ``Nadam/m_schedule:0``),
    then ``training/<Optimizer>/Variable_N:0`` holding each kind of state for all weights in turn, in the
    order tf.keras's legacy optimizers (``get_weights``) read them."""
    optimizer = model.optimizer
    if not optimizer.built:
        return  # no step taken yet: Keras 2 wrote no optimizer weights either
    spec = _written_spec(optimizer, f"optimizer of model {model.name!r}")
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    state = keras_private.optimizer_slots(optimizer)
    slots = [state[kind] for kind in spec.slots(optimizer)]
    if any(len(slot) != len(index) for slot in slots):
        raise InputError(f"optimizer of model {model.name!r}", "was built for other weights than the model's")
    arrays = [keras.ops.convert_to_numpy(slot[index[id(w)]]) for slot in slots for w in _keras2_weights(model)]
    scalars = [(f"{spec.name}/iterations:0", np.int64(keras.ops.convert_to_numpy(optimizer.iterations)))]
    if spec.name == "Nadam":
        product = keras_private.nadam_momentum_product(optimizer)
        scalars.append(("Nadam/m_schedule:0", np.float32(keras.ops.convert_to_numpy(product))))
    names = [name for name, _ in scalars] + [f"training/{spec.name}/Variable{'' if i == 0 else f'_{i}'}:0"
                                             for i in range(len(arrays))]
    group = f.create_group("optimizer_weights")
    names_attribute(group, "weight_names", names)
    for name, array in zip(names, [value for _, value in scalars] + arrays):
        group.create_dataset(name, data=array)
