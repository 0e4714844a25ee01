"""Training: a recipe, timed, and recorded in a run folder.

Import this module only after ``runtime.start()`` has chosen the backend.

This module orchestrates; the batches come from ``feeding``, the timing and
progress callbacks from ``callbacks``, the score from ``evaluation``.
A run folder holds ``model.keras``, ``history.csv`` (one row per epoch) and
``metrics.json`` (what ran where, how fast, and how well); with
``legacy_artifacts`` also the original's three Keras 2 files.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import math
import time
from pathlib import Path

import keras
import numpy as np

from . import data, legacy
from .atomic import atomic_folder, atomic_path, write_text
from .callbacks import ElapsedClock, EpochTimer, StepProgbar
from .distribute import Replicas, data_parallel
from .errors import InputError
from .evaluation import score
from .feeding import EpochBatches
from . import jax_cpu, tf_cpu
from .model import first_non_finite, plain_copy
from .recipes import PRECISIONS, RECIPES, TARGET_ACCURACY, TrainConfig, learning_rate_schedule, steps_per_epoch
from .runtime import Runtime, keras_config, machine, make_deterministic
# Batches per call of the compiled training step. On TensorFlow/CPU one call per batch hands control
# back to Python and tf.data between every two steps; with EpochBatches, 32 per call trained 1.41x
# faster than plain Keras here (docs/performance.md); on JAX it made no difference, and 1 keeps
# the progress bar per batch.
STEPS_PER_EXECUTION = {"tensorflow": 32, "jax": 1}


def train(config: TrainConfig, runtime: Runtime, callbacks=(), dataset: data.Dataset | None = None) -> dict:
    """Train the model as ``config`` says, write the run folder, and return its metrics.

    ``dataset``: the data ``config.data`` names, when the caller has loaded it
    already (the command line does, before the backend starts). In a
    multi-process run every process trains and returns the metrics; only
    process 0 writes the run folder.
    """
    config.check()
    started = time.perf_counter()  # data loading (unless the caller did it) and compilation count: part of the wait
    if config.seed is not None:
        make_deterministic(config.seed, runtime.backend)
    replicas = data_parallel(runtime) if config.distribute else Replicas()
    if dataset is None:
        dataset = data.load_dataset(config.data)
    dataset = dataset.limit(config.limit)
    x_train, y_train = data.as_model_input(dataset.x_train), data.one_hot(dataset.y_train)
    x_test, y_test = data.as_model_input(dataset.x_test), data.one_hot(dataset.y_test)
    x_train, y_train, batch_size = replicas.local_share(x_train, y_train, config.batch_size)
    x_val, y_val, _ = replicas.local_share(x_test, y_test, config.batch_size)

    recipe = RECIPES[config.recipe]
    total_steps = config.epochs * steps_per_epoch(len(x_train), batch_size)
    learning_rate = learning_rate_schedule(recipe, config.learning_rate, total_steps)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISIONS[config.precision])
    try:
        model = replicas.build_model(learning_rate)
    finally:  # only this model trains under it: the float32 copy and every later model are float32
        keras.config.set_dtype_policy(previous_policy)
    speed_up(model)
    timer, clock = EpochTimer(), ElapsedClock(started)
    steps_per_execution = 1  # the data-parallel paths keep Keras's default: measured with it only
    if replicas.count == 1 and replicas.processes == 1:
        steps_per_execution = config.steps_per_execution or STEPS_PER_EXECUTION[runtime.backend]
        # How this process runs, not part of the model: set on it rather than compiled in, so
        # saved files keep Keras's default.
        model.steps_per_execution = steps_per_execution
        batches = EpochBatches(x_train, y_train, batch_size, config.seed, recipe.augmentation)
        feed = {"x": batches}
        callbacks = [batches.follow_epochs(), *callbacks]
    else:  # the data-parallel engines split Keras's own batches of arrays across the replicas
        feed = {"x": x_train, "y": y_train, "batch_size": batch_size}
    checkpoint = None
    if config.checkpoint_dir:
        from .callbacks import TrainingCheckpoint
        from .checkpoint import resumable_settings

        checkpoint = TrainingCheckpoint(config.checkpoint_dir, resumable_settings(config, dataset), timer.seconds)
        checkpoint.resolve(config.resume)
        callbacks = [checkpoint, *callbacks]  # after the timer: it reads the epoch's seconds
    with replicas.scope():
        history = model.fit(**feed, epochs=config.epochs,
                            validation_data=(x_val, y_val) if config.validate else None,
                            callbacks=[timer, clock, StepProgbar(), keras.callbacks.TerminateOnNaN(),
                                       *replicas.callbacks, *callbacks], verbose=1)
    wall_seconds = time.perf_counter() - started
    _refuse_divergence(history.history, model, config)
    model = replicas.single_device_copy(model, learning_rate)
    logs, epoch_seconds = history.history, timer.seconds
    if checkpoint:  # every epoch, those of the interrupted process included
        logs, epoch_seconds = checkpoint.history, checkpoint.epoch_seconds
    mixed_precision_score = None
    if config.precision != "float32":
        # Scored as trained, then saved and scored as the float32 model that the files hold.
        mixed_precision_score = score(model, dataset)
        model = plain_copy(model, learning_rate)
    test_loss, test_accuracy = score(model, dataset)

    train_seconds = sum(epoch_seconds)
    images = len(x_train) * replicas.data_shards  # over all processes
    metrics = {
        **runtime.as_dict(),
        "keras_config": keras_config(),  # the settings that change every number (runtime.start pins them)
        "machine": machine(),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data_source": dataset.source,
        "train_images": images,
        "test_images": len(x_test),
        "recipe": config.recipe,
        "epochs": config.epochs,
        "batch_size": config.batch_size,  # global: split across the replicas
        "replicas": replicas.count,
        "processes": replicas.processes,
        "learning_rate": config.learning_rate,  # the peak, under a schedule
        "steps_per_execution": steps_per_execution,
        "feed": "arrays" if isinstance(feed["x"], np.ndarray) else type(feed["x"]).__name__,
        "learning_rate_schedule": "warm-up, cosine decay" if recipe.warmup_cosine else "constant",
        "augmentation": dataclasses.asdict(recipe.augmentation) if recipe.augmentation else None,
        "seed": config.seed,
        "train_seconds": round(train_seconds, 3),
        "train_images_per_second": round(images * config.epochs / train_seconds, 1),
        # The first epoch includes tracing and compilation; the rest is the steady state.
        "first_epoch_seconds": round(epoch_seconds[0], 3),
        "steady_images_per_second": (round(images * (config.epochs - 1) / sum(epoch_seconds[1:]), 1)
                                     if config.epochs > 1 else None),
        "wall_seconds": round(wall_seconds, 3),  # from loading the data to the end of the last epoch
        "precision": config.precision,  # of training; the saved model is float32 either way
        "test_accuracy": float(test_accuracy),  # of the saved model
        "test_loss": float(test_loss),
    }
    if mixed_precision_score:
        metrics["mixed_precision_test_accuracy"] = float(mixed_precision_score[1])
        metrics["mixed_precision_test_loss"] = float(mixed_precision_score[0])
    if checkpoint:
        metrics["resumed_after_epoch"] = checkpoint.resumed_after_epoch
    elif config.validate:  # the test set scored after each epoch, timed from the start of this call
        metrics["time_to_accuracy"] = time_to_accuracy(logs["val_accuracy"], clock.seconds)
    report = None
    if replicas.is_chief:
        # Built whole in a temporary folder beside --out and renamed into place: a failure or a
        # signal leaves no model without its history, and no earlier run's files beside this one's.
        with atomic_folder(config.out, config.overwrite) as building:
            write_run(building, model, logs, epoch_seconds, metrics)
            if config.legacy_artifacts:
                legacy.write_legacy_artifacts(model, building)
            if config.report:
                from .report import write_report

                report = write_report(building, config.data)
                report["files"] = [str(Path(config.out) / Path(f).relative_to(building)) for f in report["files"]]
    if checkpoint:
        checkpoint.remove()  # the run folder is complete: nothing is left to resume
    return {**metrics, "process_index": replicas.process_index, **({"report": report} if report else {})}


def speed_up(model: keras.Model) -> list[str]:
    """Faster forms of the same math for training on this backend's CPU, rebound on ``model``'s layers (their
    configs and saved files unchanged); returns the layers' names. JAX: ``jax_cpu``; TensorFlow: ``tf_cpu``."""
    return jax_cpu.speed_up(model) + tf_cpu.speed_up(model)


def time_to_accuracy(accuracies, elapsed_seconds, target: float = TARGET_ACCURACY) -> dict:
    """When the test accuracy, scored after each epoch, first reached ``target``: epoch and seconds."""
    for epoch, (accuracy, seconds) in enumerate(zip(accuracies, elapsed_seconds), start=1):
        if accuracy >= target:
            return {"target": target, "epoch": epoch, "seconds": round(seconds, 3), "accuracy": float(accuracy)}
    return {"target": target, "epoch": None, "seconds": None, "accuracy": None}


def _refuse_divergence(history: dict, model: keras.Model, config: TrainConfig) -> None:
    """A loss of NaN or infinity (Keras's TerminateOnNaN stops there), or weights of them after the last step:
    a run folder of them would be refused by every other command. So nothing is written, and the line says why."""
    said = f"at a learning rate of {config.learning_rate:g} ({config.recipe} recipe); nothing was written. Try a " \
           "lower --learning-rate"
    for epoch, loss in enumerate(history.get("loss", []), start=1):
        if not math.isfinite(loss):
            raise InputError("--learning-rate", f"training diverged: the loss became {loss} in epoch {epoch} {said}")
    weight = first_non_finite(model.trainable_weights)
    if weight is not None:
        raise InputError("--learning-rate", f"training diverged: {weight.path} became NaN or infinite {said}")


def write_run(out: Path, model: keras.Model, history: dict, epoch_seconds, metrics: dict) -> None:
    """Write ``model.keras``, ``history.csv`` and ``metrics.json`` into ``out`` (``train`` gives it a folder
    that becomes the run folder only once everything is in it)."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.keras") as tmp:
        model.save(tmp)
    write_text(out / "history.csv", history_csv(history, epoch_seconds))
    write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def history_csv(history: dict, epoch_seconds) -> str:
    """One row per epoch (numbered from 1): Keras's logged metrics and the epoch's training seconds."""
    columns = sorted(history, key=lambda k: (k.startswith("val_"), k))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", *columns, "train_seconds"])
    for i in range(len(history[columns[0]])):
        writer.writerow([i + 1, *(f"{history[c][i]:.6g}" for c in columns), f"{epoch_seconds[i]:.3f}"])
    return buffer.getvalue()


def __getattr__(name):
    # ``training.evaluate`` was this module's until evaluation got its own module.
    if name == "evaluate":
        from .evaluation import evaluate

        return evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
