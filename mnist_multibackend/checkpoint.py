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
import math
import random
import re
import sys
from pathlib import Path

import keras
import numpy as np

from . import keras_private
from .atomic import atomic_path, write_text
from .errors import InputError, first_line
from .legacy.safety import check_h5_file

CHECKPOINT_FILE = "checkpoint.json"
_WEIGHTS_NAME = re.compile(r"epoch-(\d{4,})\.weights\.h5")


def weights_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.weights.h5"


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
        self._refuse_foreign_weights()
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

    def _refuse_foreign_weights(self) -> None:
        """Refuse a folder holding a weights file that this run would overwrite and no checkpoint names.

        ``epoch-N+1`` beside a checkpoint of epoch N is this checkpoint's own, written just before a
        kill that came ahead of its commit: the resumed run writes it again.
        """
        if not self.directory.is_dir():
            return
        done = self.state["epoch"] if self.state else 0
        ours = set(self.state.get("files", [])) if self.state else set()
        if self.state:
            ours |= {self.state["weights"], weights_name(done + 1)}
        for path in sorted(self.directory.iterdir()):
            match = _WEIGHTS_NAME.fullmatch(path.name)
            if match and path.name not in ours and done < int(match.group(1)) <= self.settings.get("epochs", 0):
                raise InputError(path, "was not written by this folder's checkpoint, and this run would overwrite "
                                       "it; move it away or choose another --checkpoint-dir")

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
        weights = weights_name(epoch)
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
        for tmp in self.directory.glob(f".{CHECKPOINT_FILE}.*.tmp.json"):
            tmp.unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:
            pass  # holds other files, or is gone already


def read_state(path: Path) -> dict | None:
    """The committed checkpoint in ``path`` (``checkpoint.json``), validated; ``None`` when there is none.

    Everything a resumed run reads is checked here, before any training: a bad value ends
    in one line, not in a traceback after the resumed epochs (whose work would be lost).
    """
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as err:
        raise InputError(path, f"not a readable checkpoint ({type(err).__name__}: {first_line(err, 200)})") from None
    problem = _state_problem(state)
    if problem:
        raise InputError(path, f"not a valid checkpoint: {problem}")
    if not (path.parent / state["weights"]).is_file():
        raise InputError(path, f"names {state['weights']}, which is missing from {path.parent}")
    return state


def _no_constant(name):
    raise ValueError(f"{name} is not a number a checkpoint holds")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and abs(value) < 1e300)


def _state_problem(state) -> str | None:
    """What is wrong with a checkpoint's contents, or None."""
    if not isinstance(state, dict):
        return "not a JSON object"
    missing = [key for key in ("epoch", "weights", "settings", "history", "epoch_seconds", "random")
               if key not in state]
    if missing:
        return f"{', '.join(missing)} missing"
    epoch, settings = state["epoch"], state["settings"]
    if not isinstance(settings, dict):
        return "settings is not an object"
    epochs = settings.get("epochs")
    if not (_is_int(epochs) and 2 <= epochs < 10**6):
        return f"settings.epochs {epochs!r} is not a whole number of epochs above 1"
    if not (_is_int(epoch) and 1 <= epoch < epochs):
        return f"epoch {epoch!r} of {epochs} (a checkpoint is of an unfinished run: 1 <= epoch < {epochs})"
    if state["weights"] != weights_name(epoch):
        return f"weights {state['weights']!r} is not {weights_name(epoch)!r}"
    files = state.get("files", [state["weights"]])
    if not (isinstance(files, list) and all(isinstance(f, str) and _WEIGHTS_NAME.fullmatch(f) for f in files)):
        return "files is not a list of epoch-N.weights.h5 names"
    history, seconds = state["history"], state["epoch_seconds"]
    if not isinstance(history, dict) or not history:
        return "history is not an object of per-epoch values"
    for key, values in history.items():
        if not (isinstance(values, list) and len(values) == epoch and all(map(_is_finite, values))):
            return f"history[{key!r}] is not a list of {epoch} finite numbers"
    if not (isinstance(seconds, list) and len(seconds) == epoch and all(_is_finite(s) and s >= 0 for s in seconds)):
        return f"epoch_seconds is not a list of {epoch} finite numbers of seconds"
    return _random_problem(state["random"])


def _random_problem(saved) -> str | None:
    """What is wrong with the saved generator states, or None (the model's seed count is checked at restore)."""
    if not isinstance(saved, dict):
        return "random is not an object"
    try:
        version, mersenne, gauss = saved["python"]
        if not (_is_int(version) and isinstance(mersenne, list) and len(mersenne) == 625
                and all(_is_int(v) and 0 <= v < 2**32 for v in mersenne[:624]) and _is_int(mersenne[624])
                and 0 <= mersenne[624] <= 624 and (gauss is None or _is_finite(gauss))):
            return "random.python is not a Mersenne Twister state"
        name, keys, position, has_gauss, cached_gauss = saved["numpy"]
        if not (name == "MT19937" and isinstance(keys, list) and len(keys) == 624
                and all(_is_int(k) and 0 <= k < 2**32 for k in keys) and _is_int(position) and 0 <= position <= 624
                and _is_int(has_gauss) and has_gauss in (0, 1) and _is_finite(cached_gauss)):
            return "random.numpy is not a Mersenne Twister state"
        seeds = saved["seed_generators"]
        if not (isinstance(seeds, list) and all(isinstance(s, list) and all(_is_int(v) and abs(v) < 2**63 for v in s)
                                                for s in seeds)):
            return "random.seed_generators is not a list of lists of whole numbers"
    except (KeyError, TypeError, ValueError):
        return "random is not the generators' saved states"
    return None


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
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise InputError(source, f"not a valid checkpoint: bad random state ({first_line(err, 200)})") from None
