"""The project's callbacks: epoch timing, time to accuracy, an honest progress bar, which every
training run uses, and the checkpoint that makes a run resumable.

Import this module only after ``runtime.start()`` has chosen the backend.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import keras
import numpy as np

from . import checkpoint, keras_private
from .atomic import atomic_path, write_text
from .errors import InputError, first_line
from .legacy.safety import check_h5_file


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


class StepProgbar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar, with counts that never pass the epoch's steps.

    With N steps per execution Keras reports each call of the compiled step
    as its last batch, ``begin + N - 1``, even when the epoch's last call runs
    fewer: at 469 steps and N = 32 the bar read ``480/469`` with a negative
    time left. The count is clamped to the epoch's steps.
    """

    def _clamped(self, batch: int) -> int:
        return batch if self.target is None else min(batch, self.target - 1)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(self._clamped(batch), logs)

    def on_test_batch_end(self, batch, logs=None):
        super().on_test_batch_end(self._clamped(batch), logs)

    def on_predict_batch_end(self, batch, logs=None):
        super().on_predict_batch_end(self._clamped(batch), logs)


class TrainingCheckpoint(keras_private.BackupAndRestoreHooks):
    """Save the training state into ``directory`` at every epoch end; restore it when ``fit`` starts
    (the mechanism, and why it is not Keras's ``BackupAndRestore`` alone: ``checkpoint``).

    ``settings`` (JSON-able) describe the run; a resumed run must have the same.
    ``epoch_seconds`` is the list an ``EpochTimer`` fills, read at each epoch end.
    After ``resolve(resume)``, ``history`` and ``epoch_seconds`` hold every epoch
    so far, restored ones included.
    """

    def __init__(self, directory, settings: dict, epoch_seconds: list[float]):
        super().__init__(backup_dir=str(directory), save_freq="epoch", delete_checkpoint=False)
        self.directory = Path(directory)
        self.settings = settings
        self._timer_seconds = epoch_seconds
        self.state: dict | None = None
        self.resumed_after_epoch = 0
        self.history: dict[str, list[float]] = {}
        self.epoch_seconds: list[float] = []

    @property
    def state_file(self) -> Path:
        return self.directory / checkpoint.CHECKPOINT_FILE

    def resolve(self, resume: bool) -> None:
        """Continue the checkpoint in the folder (``resume``), or start afresh; refuses what
        ``checkpoint.resolve`` refuses."""
        found = checkpoint.resolve(self.directory, self.settings, resume)
        self.state, self.history, self.epoch_seconds = found.state, found.history, found.epoch_seconds
        self.resumed_after_epoch = found.epochs_done
        if self.state is None:
            if resume:
                print(f"no checkpoint in {self.directory} yet: starting at epoch 1", file=sys.stderr)
            return
        print(f"resuming from {self.state_file}: epoch {found.epochs_done} of {self.state['settings'].get('epochs')} "
              "done", file=sys.stderr)

    # ---------------------------------------------------------------- Keras's hooks

    def restore(self):
        if self.state is None:
            return
        # Point Keras's own loader at the committed files: it builds the optimizer, loads the
        # weights and optimizer variables, and sets the epoch that fit() starts from.
        weights_path = self.directory / self.state["weights"]
        # The weights file is untrusted like any other HDF5 file: links, external storage and sizes
        # beyond this model's are refused before Keras reads a byte (outside the try: its own line).
        check_h5_file(weights_path, expected_parameters=self.model.count_params())
        try:
            self.load_backup(weights_path, self.state_file)
        except Exception as err:  # noqa: BLE001 - whatever Keras or h5py raise, the file is unusable
            detail = first_line(err)
            raise InputError(weights_path, f"not a readable checkpoint ({detail})") from None
        _set_random_state(self.model, self.state["random"], self.state_file)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.epoch_seconds.append(self._timer_seconds[-1])
        super().on_epoch_end(epoch, logs)  # calls backup

    def backup(self):
        epoch = self.epochs_done  # epochs completed, counted from 1
        weights = checkpoint.weights_name(epoch)
        with atomic_path(self.directory / weights) as tmp:
            self.model.save_weights(tmp)
        # "files": every weights file this checkpoint wrote and has not deleted yet, so that a kill
        # between this commit and the deletions below leaves nothing unnamed behind.
        earlier = [] if self.state is None else [self.state["weights"], *self.state.get("files", [])]
        self.state = {"epoch": epoch, "weights": weights, "files": list(dict.fromkeys([weights, *earlier])),
                      "settings": self.settings, "history": self.history, "epoch_seconds": self.epoch_seconds,
                      "random": _random_state(self.model)}
        write_text(self.state_file, json.dumps(self.state) + "\n")  # the commit point
        for name in self.state["files"][1:]:
            (self.directory / name).unlink(missing_ok=True)
        self.state["files"] = [weights]

    def remove(self) -> None:
        """Delete this checkpoint's files (only those its state names), and the folder if that leaves it empty."""
        names = set(self.state.get("files", [])) | {self.state["weights"]} if self.state else set()
        self.state_file.unlink(missing_ok=True)  # first: without it the weights are no checkpoint
        for name in names:
            (self.directory / name).unlink(missing_ok=True)
            # a killed write's temporary file: atomic_path names it .NAME.RANDOM.tmp.h5
            for tmp in self.directory.glob(f".{name}.*.tmp.h5"):
                tmp.unlink(missing_ok=True)
        for tmp in self.directory.glob(f".{checkpoint.CHECKPOINT_FILE}.*.tmp.json"):
            tmp.unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:
            pass  # holds other files, or is gone already


def _random_state(model: keras.Model) -> dict:
    version, mersenne, gauss = random.getstate()
    name, keys, position, has_gauss, cached_gauss = np.random.get_state(legacy=True)
    seeds = keras_private.seed_generator_states(model)
    return {"python": [version, list(mersenne), gauss],
            "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached_gauss)],
            "seed_generators": [keras.ops.convert_to_numpy(v.value).tolist() for v in seeds]}


def _set_random_state(model: keras.Model, state: dict, source: Path) -> None:
    try:
        version, mersenne, gauss = state["python"]
        random.setstate((version, tuple(mersenne), gauss))
        name, keys, position, has_gauss, cached_gauss = state["numpy"]
        np.random.set_state((name, np.asarray(keys, np.uint32), position, has_gauss, cached_gauss))
        variables = keras_private.seed_generator_states(model)
        if len(variables) != len(state["seed_generators"]):
            raise ValueError(f"{len(state['seed_generators'])} seed generators saved, the model has {len(variables)}")
        for variable, value in zip(variables, state["seed_generators"]):
            variable.assign(np.asarray(value, dtype=variable.dtype))
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise InputError(source, f"not a valid checkpoint: bad random state ({first_line(err, 200)})") from None
