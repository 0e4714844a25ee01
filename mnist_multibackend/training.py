"""Training and evaluation: the original recipe, timed, and recorded in a run folder.

Import this module only after ``runtime.start()`` has chosen the backend.

A run folder holds ``model.keras``, ``history.csv`` (one row per epoch) and
``metrics.json`` (what ran where, how fast, and how well); with
``legacy_artifacts`` also the original's three Keras 2 files.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import io
import json
import time
from pathlib import Path

import keras
import numpy as np

from . import data, legacy
from .atomic import atomic_path, write_text
from .distribute import Replicas, data_parallel
from .errors import InputError
from .jax_cpu import speed_up
from .model import compile_model, load_saved_model
from .recipes import (DEFAULT_RECIPE, RECIPES, TARGET_ACCURACY, learning_rate_schedule, random_affine,
                      steps_per_epoch)
from .runtime import Runtime, machine, make_deterministic

EVAL_BATCH_SIZE = 500  # evaluation only: larger batches run faster and change no result
# Batches per call of the compiled training step. On TensorFlow/CPU one call per batch hands control
# back to Python and tf.data between every two steps; with EpochBatches, 32 per call trained 1.41x
# faster than plain Keras here (README, "Performance"); on JAX it made no difference, and 1 keeps
# the progress bar per batch.
STEPS_PER_EXECUTION = {"tensorflow": 32, "jax": 1}


@dataclasses.dataclass
class TrainConfig:
    """One training run: a recipe (default: the original 2017 one), whose epochs, batch size and
    (peak) learning rate may be overridden."""

    recipe: str = DEFAULT_RECIPE
    epochs: int | None = None  # None: the recipe's
    batch_size: int | None = None
    learning_rate: float | None = None
    limit: int | None = None  # train on the first N training images only
    seed: int | None = None  # None: a fresh random run; an int: a repeatable one
    data: str | None = None  # see data.load_dataset for the search order
    out: str = "runs/latest"
    validate: bool = True  # score the test set after each epoch, as the original did
    legacy_artifacts: bool = False  # also write the original's Keras 2 files (see legacy.write_legacy_artifacts)
    distribute: bool = False  # data-parallel over every visible device of the run's kind (see distribute.py)
    checkpoint_dir: str | None = None  # save the training state here at every epoch end
    resume: bool = False  # continue from the state in checkpoint_dir
    steps_per_execution: int | None = None  # None: STEPS_PER_EXECUTION for the backend

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise InputError("--recipe", f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        for name in ("epochs", "batch_size", "learning_rate"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(RECIPES[self.recipe], name))

    def check(self) -> None:
        if self.resume and not self.checkpoint_dir:
            raise InputError("--resume", "needs --checkpoint-dir DIR, the folder the interrupted run saved its state in")
        if self.checkpoint_dir and self.distribute:
            raise InputError("--checkpoint-dir", "not supported with --distribute yet: the checkpoint is written "
                                                 "and restored by a single process")
        if self.distribute and RECIPES[self.recipe].augmentation:
            raise InputError("--distribute", f"not supported with --recipe {self.recipe} yet: its augmented "
                                             "batches are made by one process for one device")
        for name in ("epochs", "batch_size", "steps_per_execution"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')}", f"must be at least 1. Received: {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise InputError("--learning-rate", f"must be positive. Received: {self.learning_rate}")


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds of each epoch's training steps, without its validation pass.

    JAX dispatches steps asynchronously (and Keras then runs batch callbacks
    in a thread pool), so the clock is read only after one of the model's
    weights has been copied to the host: that waits for every queued step.
    """

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def _stop(self):
        if self._start is not None:
            keras.ops.convert_to_numpy(self.model.trainable_variables[-1].value)
            self.seconds.append(time.perf_counter() - self._start)
            self._start = None

    def on_test_begin(self, logs=None):  # fit's validation pass starts: training steps are over
        self._stop()

    def on_epoch_end(self, epoch, logs=None):
        self._stop()


class ElapsedClock(keras.callbacks.Callback):
    """Seconds from ``origin`` (a ``time.perf_counter()`` reading) to the end of each epoch, its
    validation pass included: with the test set as validation data, the time to each test accuracy."""

    def __init__(self, origin: float):
        super().__init__()
        self.origin = origin
        self.seconds: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.origin)


class EpochBatches(keras.utils.PyDataset):
    """Training batches in a fresh order each epoch, drawn from ``seed`` and the epoch number, and
    randomly distorted when the recipe augments. Every single-device run is fed by it.

    Why not Keras's own shuffling of arrays: on TensorFlow, with a seed, it
    repeats one order every epoch, and these batches with 32 steps per execution
    trained 1.41x faster than it on this 2-core CPU (README, "Performance").
    The order depends on the epoch number alone (not on how many epochs this
    object has served), so a resumed run draws what the interrupted one would
    have; ``fit`` tells the epoch through the ``follow_epochs`` callback.
    """

    def __init__(self, x, y, batch_size: int, seed: int | None, augmentation=None):
        super().__init__()
        self.x, self.y, self.batch_size, self.augmentation = x, y, batch_size, augmentation
        self.seed = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self.epoch = 0
        self._order = None

    def __len__(self):
        return steps_per_epoch(len(self.x), self.batch_size)

    def _epoch_order(self):
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, np.random.default_rng([self.seed, self.epoch]).permutation(len(self.x)))
        return self._order[1]

    def __getitem__(self, index):
        chosen = np.sort(self._epoch_order()[index * self.batch_size:(index + 1) * self.batch_size])
        images = self.x[chosen]
        if self.augmentation is not None:  # one generator per batch: any fetching order draws the same images
            images = random_affine(images, np.random.default_rng([self.seed, self.epoch, index]), self.augmentation)
        return images, self.y[chosen]

    def follow_epochs(self) -> keras.callbacks.Callback:
        batches = self

        class FollowEpochs(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                batches.epoch = epoch

        return FollowEpochs()


def train(config: TrainConfig, runtime: Runtime, callbacks=()) -> dict:
    """Train the model as ``config`` says, write the run folder, and return its metrics.

    In a multi-process run every process trains and returns the metrics; only
    process 0 writes the run folder.
    """
    config.check()
    started = time.perf_counter()  # data loading and compilation count: they are part of the wait
    if config.seed is not None:
        make_deterministic(config.seed, runtime.backend)
    replicas = data_parallel(runtime) if config.distribute else Replicas()
    dataset = data.load_dataset(config.data).limit(config.limit)
    x_train, y_train = data.as_model_input(dataset.x_train), data.one_hot(dataset.y_train)
    x_test, y_test = data.as_model_input(dataset.x_test), data.one_hot(dataset.y_test)
    x_train, y_train, batch_size = replicas.local_share(x_train, y_train, config.batch_size)
    x_val, y_val, _ = replicas.local_share(x_test, y_test, config.batch_size)

    recipe = RECIPES[config.recipe]
    total_steps = config.epochs * steps_per_epoch(len(x_train), batch_size)
    learning_rate = learning_rate_schedule(recipe, config.learning_rate, total_steps)
    model = replicas.build_model(learning_rate)
    speed_up(model)  # JAX/CPU: faster forms of the same math for training (config and files unchanged)
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
        from .checkpoint import TrainingCheckpoint

        checkpoint = TrainingCheckpoint(config.checkpoint_dir, _resumable_settings(config, dataset), timer.seconds)
        checkpoint.resolve(config.resume)
        callbacks = [checkpoint, *callbacks]  # after the timer: it reads the epoch's seconds
    with replicas.scope():
        history = model.fit(**feed, epochs=config.epochs,
                            validation_data=(x_val, y_val) if config.validate else None,
                            callbacks=[timer, clock, *replicas.callbacks, *callbacks], verbose=1)
    wall_seconds = time.perf_counter() - started
    model = replicas.single_device_copy(model, learning_rate)
    logs, epoch_seconds = history.history, timer.seconds
    if checkpoint:  # every epoch, those of the interrupted process included
        logs, epoch_seconds = checkpoint.history, checkpoint.epoch_seconds
    test_loss, test_accuracy = model.evaluate(x_test, y_test, batch_size=EVAL_BATCH_SIZE, verbose=0)

    train_seconds = sum(epoch_seconds)
    images = len(x_train) * replicas.data_shards  # over all processes
    metrics = {
        **runtime.as_dict(),
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
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
    }
    if checkpoint:
        metrics["resumed_after_epoch"] = checkpoint.resumed_after_epoch
    elif config.validate:  # the test set scored after each epoch, timed from the start of this call
        metrics["time_to_accuracy"] = time_to_accuracy(logs["val_accuracy"], clock.seconds)
    if replicas.is_chief:
        write_run(Path(config.out), model, logs, epoch_seconds, metrics)
        if config.legacy_artifacts:
            legacy.write_legacy_artifacts(model, config.out)
    if checkpoint:
        checkpoint.remove()  # the run folder is complete: nothing is left to resume
    return {**metrics, "process_index": replicas.process_index}


def _resumable_settings(config: TrainConfig, dataset: data.Dataset) -> dict:
    """What a resumed run must share with the interrupted one (the data by content, not by path)."""
    digest = hashlib.sha256(dataset.x_train.tobytes())
    digest.update(dataset.y_train.tobytes())
    return {"recipe": config.recipe, "epochs": config.epochs, "batch_size": config.batch_size, "learning_rate": config.learning_rate,
            "seed": config.seed, "validate": config.validate, "train_images": len(dataset.x_train),
            "train_data_sha256": digest.hexdigest()[:16]}


def time_to_accuracy(accuracies, elapsed_seconds, target: float = TARGET_ACCURACY) -> dict:
    """When the test accuracy, scored after each epoch, first reached ``target``: epoch and seconds."""
    for epoch, (accuracy, seconds) in enumerate(zip(accuracies, elapsed_seconds), start=1):
        if accuracy >= target:
            return {"target": target, "epoch": epoch, "seconds": round(seconds, 3), "accuracy": float(accuracy)}
    return {"target": target, "epoch": None, "seconds": None, "accuracy": None}


def write_run(out: Path, model: keras.Model, history: dict, epoch_seconds, metrics: dict) -> None:
    """Write ``model.keras``, ``history.csv`` and ``metrics.json`` into ``out``, each atomically."""
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


def evaluate(model_path, data_path=None, runtime: Runtime | None = None) -> dict:
    """Score a saved model on the MNIST test set: ``accuracy``, ``loss`` and what ran it."""
    model = load_saved_model(model_path)
    if not model.compiled:  # e.g. a model saved before it was compiled
        compile_model(model)
    dataset = data.load_dataset(data_path)
    x_test, y_test = data.as_model_input(dataset.x_test), data.one_hot(dataset.y_test)
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=EVAL_BATCH_SIZE, verbose=0)
    return {"model": str(model_path), "accuracy": float(accuracy), "loss": float(loss),
            "test_images": len(x_test), "backend": keras.backend.backend(),
            **({"device": runtime.device} if runtime else {})}
