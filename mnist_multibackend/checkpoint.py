"""Resumable training: the whole training state after every epoch, safe against ``kill -9``.

Import this module only after ``runtime.start()`` has chosen the backend.

Keras's ``BackupAndRestore`` callback is the mechanism: at every epoch end it saves
the model's weights with its optimizer's variables, and at the start of ``fit`` it
loads them and makes ``fit`` start from the saved epoch. Its writes are not atomic,
though: it rewrites ``latest.weights.h5`` in place and then ``training_metadata.json``,
so a kill during the first leaves a truncated checkpoint, and a kill between the two
pairs epoch N+1's weights with epoch number N (the resumed run trains that epoch
twice). ``TrainingCheckpoint`` keeps Keras's loading and epoch hand-over but writes
each epoch's weights to a new file and then commits them by atomically replacing
``checkpoint.json``, which names that file and holds what Keras does not keep: every
epoch's logs and training seconds (for ``history.csv``), the random generators' states,
and the settings that a resumed run must share.

A resumed run continues with the saved weights, optimizer state, dropout seeds and
Python's and NumPy's generators. On JAX, Keras shuffles the training images with
NumPy's generator, so a resumed seeded run repeats the uninterrupted one exactly
(tested). A seeded TensorFlow run, and any augmented run, is fed by
``feeding.EpochBatches``, whose order and distortions are drawn from the seed and
the epoch number alone, so the resumed run draws what the interrupted one would have.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import keras
import numpy as np

from . import keras_private
from .atomic import atomic_path, write_text
from .errors import InputError, first_line

CHECKPOINT_FILE = "checkpoint.json"
_WEIGHTS_PATTERN = "epoch-*.weights.h5"


class TrainingCheckpoint(keras_private.BackupAndRestoreHooks):
    """Save the training state into ``directory`` at every epoch end; restore it when ``fit`` starts.

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
        return self.directory / CHECKPOINT_FILE

    def resolve(self, resume: bool) -> None:
        """Read an existing checkpoint and decide: continue it (``resume``) or refuse to overwrite it."""
        if self.directory.exists() and not self.directory.is_dir():
            raise InputError(self.directory, "is not a directory (--checkpoint-dir needs a folder)")
        self.state = read_state(self.state_file)
        if self.state is None:
            if resume:
                print(f"no checkpoint in {self.directory} yet: starting at epoch 1", file=sys.stderr)
            return
        done, total = self.state["epoch"], self.state["settings"].get("epochs")
        if not resume:
            raise InputError(self.directory, f"holds the checkpoint of an unfinished run (epoch {done} of "
                                             f"{total} done); add --resume to continue it, or remove the folder "
                                             "to start afresh")
        differences = [f"{key} {self.state['settings'].get(key)!r} there, {value!r} now"
                       for key, value in self.settings.items() if self.state["settings"].get(key) != value]
        if differences:
            raise InputError(self.state_file, "saved by a run with other settings (" + "; ".join(differences)
                             + "); resume with the same ones")
        self.resumed_after_epoch = done
        self.history = {key: list(values) for key, values in self.state["history"].items()}
        self.epoch_seconds = list(self.state["epoch_seconds"])
        print(f"resuming from {self.state_file}: epoch {done} of {total} done", file=sys.stderr)

    # ---------------------------------------------------------------- Keras's hooks

    def restore(self):
        if self.state is None:
            return
        # Point Keras's own loader at the committed files: it builds the optimizer, loads the
        # weights and optimizer variables, and sets the epoch that fit() starts from.
        weights_path = self.directory / self.state["weights"]
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
        weights = f"epoch-{epoch:04d}.weights.h5"
        with atomic_path(self.directory / weights) as tmp:
            self.model.save_weights(tmp)
        self.state = {"epoch": epoch, "weights": weights, "settings": self.settings, "history": self.history,
                      "epoch_seconds": self.epoch_seconds, "random": _random_state(self.model)}
        write_text(self.state_file, json.dumps(self.state) + "\n")  # the commit point
        for old in self.directory.glob(_WEIGHTS_PATTERN):
            if old.name != weights:
                old.unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete this checkpoint's files (only those), and the folder if that leaves it empty."""
        self.state_file.unlink(missing_ok=True)  # first: without it the weights are no checkpoint
        # The weights, and the temporary files that a killed write left behind.
        for pattern in (_WEIGHTS_PATTERN, f".{_WEIGHTS_PATTERN}.*", f".{CHECKPOINT_FILE}.*"):
            for path in self.directory.glob(pattern):
                path.unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:
            pass  # holds other files, or is gone already


def read_state(path: Path) -> dict | None:
    """The committed checkpoint in ``path`` (``checkpoint.json``), validated; ``None`` when there is none."""
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
        epoch, weights = state["epoch"], state["weights"]
        valid = (isinstance(epoch, int) and epoch >= 1 and isinstance(weights, str) and "/" not in weights
                 and isinstance(state["settings"], dict) and isinstance(state["history"], dict)
                 and len(state["epoch_seconds"]) == epoch
                 and all(len(values) == epoch for values in state["history"].values())
                 and isinstance(state["random"], dict))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputError(path, f"not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not valid:
        raise InputError(path, "not a valid checkpoint (its epoch, weights, history or random state is malformed)")
    if not (path.parent / weights).is_file():
        raise InputError(path, f"names {weights}, which is missing from {path.parent}")
    return state


# --------------------------------------------------------------------------- random generators

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
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(source, f"not a valid checkpoint: bad random state ({err})") from None
